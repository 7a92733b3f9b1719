"""Compositional validation during training: ``training.main --val-benchmark NAME=DIR[,NAME=DIR...]``.

Every ``--val-frequency`` epochs (and after the last), rank 0 runs the named benchmarks of the evaluation suite
on the model being trained, and on its EMA teacher when it has one (``model.teacher``: logged under
``teacher/``), through the same adapters and exact scorer as ``python -m open_clip_align.eval`` (so a number
logged for epoch N is the number the CLI gives on ``epoch_N.pt``). It logs like open_clip_train's own validation:

- every headline metric as ``val/<dataset>/<metric>`` to TensorBoard and W&B (same step rule as upstream), one
  line per evaluation in ``checkpoints/results.jsonl`` (``{"epoch": N, "<dataset>/<metric>": value, ...}``) and the
  INFO log;
- the full result records (protocols, tie counts) in ``benchmarks/epoch_<N>.json`` (``--compare``-able);
- ``--save-best METRIC`` keeps ``checkpoints/best.pt`` (written to a temporary file, then renamed) whenever METRIC
  (a logged name, e.g. ``shapecrepe/iid/sugar_crepe/subsets/swap_att/acc``, or ``teacher/...``) beats the best so
  far (``checkpoints/best.json``, kept across ``--resume``).

The seam (``training_hooks``) adds the flags (``add_val_arguments``), refuses bad ones before training
(``check_val_args``: unknown benchmark, missing or malformed data, a --save-best metric no chosen benchmark
reports: the benchmarks are loaded once and scored with a zero-feature ``ProbeScorer`` to learn their metric
names), marks ``data`` so that open_clip_train calls ``evaluate`` even without ``--val-data``
(``mark_for_evaluation``), and wraps open_clip_train's ``evaluate`` (``wrap_evaluate``).
"""
import argparse
import difflib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import UsageError
from .items import EvalDataError, ImageRef
from .scoring import DualEncoderScorer

TEACHER = "teacher/"
BEST_CHECKPOINT, BEST_STATE = "best.pt", "best.json"
UPSTREAM_VAL_KEYS = ("val", "imagenet-val", "imagenet-v2")
# last path parts of logged names that are counts or ranks (lower is better): not a --save-best target
NOT_A_SCORE = ("n", "n_items", "n_ties", "ties", "tot_ties", "n_images", "n_captions", "duplicate_images",
               "mean_negatives", "mean_rank", "median_rank", "rank_std", "n_classes", "bag_identical_share")


class _BenchmarksOnly:
    """``data["val"]`` when only ``--val-benchmark`` asks for validation: makes open_clip_train call ``evaluate``
    after each epoch; ``wrap_evaluate`` removes it before upstream's evaluate sees ``data``."""

    def __repr__(self):
        return "<--val-benchmark only>"


BENCHMARKS_ONLY = _BenchmarksOnly()


def add_val_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--val-benchmark`` and ``--save-best`` (open_clip_train's own ``--val-frequency`` sets the cadence)."""
    g = parser.add_argument_group("open_clip_align: compositional validation during training")
    g.add_argument("--val-benchmark", nargs="+", default=None, metavar="NAME=DIR",
                   help="Evaluate these benchmarks of the evaluation suite (python -m open_clip_align.eval's names, "
                        "e.g. synthetic=data, sugarcrepe=/data/sugarcrepe) on rank 0 every --val-frequency epochs, "
                        "the model and its EMA teacher if it has one; headline metrics go to TensorBoard/W&B as "
                        "val/<dataset>/<metric> and to checkpoints/results.jsonl, full records to "
                        "benchmarks/epoch_<N>.json.")
    g.add_argument("--save-best", default=None, metavar="METRIC",
                   help="Keep checkpoints/best.pt, the checkpoint with the highest METRIC so far: one of the names "
                        "--val-benchmark logs, without 'val/' (e.g. shapecrepe/iid/sugar_crepe/micro, or "
                        "teacher/... for the EMA teacher's).")
    return parser


def parse_specs(entries: Optional[Sequence[str]]) -> List[Tuple[str, Path]]:
    """``[(benchmark, root)]`` from ``--val-benchmark`` entries ``NAME=DIR`` (comma-separated or repeated)."""
    if not entries:
        return []
    from .benchmarks import BENCHMARKS

    specs, seen = [], set()
    for entry in entries:
        for spec in filter(None, (s.strip() for s in entry.split(","))):
            name, sep, root = spec.partition("=")
            if not sep or not name or not root:
                raise UsageError(f"--val-benchmark {spec}: expected NAME=DIR (e.g. synthetic=data)")
            if name not in BENCHMARKS:
                raise UsageError(f"--val-benchmark {spec}: unknown benchmark {name!r}; expected one of "
                                 f"{', '.join(BENCHMARKS)}")
            if name in seen:
                raise UsageError(f"--val-benchmark: {name} is named twice")
            seen.add(name)
            specs.append((name, Path(root)))
    return specs


def benchmark_options() -> argparse.Namespace:
    """The evaluation CLI's defaults (ARO seed 1, all captions for retrieval, ...): the options every benchmark
    runs with here, so validation numbers equal ``python -m open_clip_align.eval``'s."""
    from .cli import _parser

    return _parser().parse_args([])


class _ZeroModel:
    def encode_text(self, tokens, normalize=False):
        return torch.zeros(len(tokens), 1)


class ProbeScorer(DualEncoderScorer):
    """Zero scores for every pair, without a model and without opening an image: runs a benchmark's loaders and
    metrics to check its data and learn the metric names it reports (``check_val_args``)."""

    def __init__(self):
        super().__init__(_ZeroModel(), preprocess=None, tokenizer=lambda texts: torch.zeros(len(texts), 1,
                                                                                             dtype=torch.long),
                         progress=False)

    def image_features(self, refs: Sequence[ImageRef]) -> Dict[ImageRef, torch.Tensor]:
        return {ref: torch.zeros(1) for ref in refs}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def part_metrics(part) -> Dict[str, float]:
    """``{"<dataset>/<metric key>": value}`` of a part's headline metrics: the rows of its report table
    (``report.headline_rows``) and the summary's headline (``part.headline``); undefined values are left out."""
    from .report import flatten_metrics, headline_rows

    flat = flatten_metrics(part.metrics)
    keys = [key for _, key in headline_rows(part.metrics)] + list((part.headline or {}).values())
    return {f"{part.dataset}/{key}": flat[key] for key in dict.fromkeys(keys) if _is_number(flat.get(key))}


def run_benchmarks(scorer, specs: Sequence[Tuple[str, Path]], options) -> list:
    """Every part of every ``(benchmark, root)`` scored with ``scorer``."""
    from .benchmarks import BENCHMARKS

    return [part for name, root in specs for part in BENCHMARKS[name](scorer, root, options)]


def check_val_args(args) -> None:
    """Refuse, in one line (UsageError), what validation during training cannot honour: malformed or unknown
    ``--val-benchmark`` entries, a root that is not a folder or whose data does not load, ``--val-frequency 0``,
    a ComAlign model, ``--save-best`` without ``--val-benchmark``, without ``--logs``, or naming a metric that no
    chosen benchmark reports (or a count/rank)."""
    from ..models import plugin_block

    specs = parse_specs(args.val_benchmark)
    if not specs:
        if args.save_best:
            raise UsageError("--save-best needs --val-benchmark NAME=DIR (the benchmarks whose metric it reads)")
        return
    if not args.val_frequency:
        raise UsageError("--val-benchmark needs --val-frequency >= 1 (0 turns validation off)")
    if (plugin_block(args.model) or {}).get("arch") == "comalign":
        raise UsageError(f"--val-benchmark scores dual encoders; --model {args.model} ranks with ComAlign components: "
                         f"evaluate its checkpoints with python -m open_clip_align.eval")
    for name, root in specs:
        if not root.is_dir():
            raise UsageError(f"--val-benchmark {name}={root}: not a directory")
    try:
        parts = run_benchmarks(ProbeScorer(), specs, benchmark_options())
    except EvalDataError as err:
        raise UsageError(f"--val-benchmark: {err}") from None
    if args.save_best:
        if not args.logs or str(args.logs).lower() == "none":
            raise UsageError("--save-best writes checkpoints/best.pt under --logs; give --logs DIR")
        names = [name for part in parts for name in part_metrics(part)]
        if (plugin_block(args.model) or {}).get("ema_teacher"):
            names += [TEACHER + name for name in names]
        if args.save_best not in names:
            close = difflib.get_close_matches(args.save_best, names, n=3, cutoff=0.4)
            raise UsageError(f"--save-best {args.save_best}: not a metric of --val-benchmark "
                             f"{' '.join(args.val_benchmark)} (" + (f"close: {', '.join(close)}; " if close else "")
                             + f"it reports {len(names)}, e.g. {', '.join(names[:3])})")
        if args.save_best.rsplit("/", 1)[-1] in NOT_A_SCORE:
            raise UsageError(f"--save-best {args.save_best}: a count or rank, not a score to maximise; name an "
                             f"accuracy or recall")


def mark_for_evaluation(args, data: dict) -> dict:
    """``data`` with ``BENCHMARKS_ONLY`` under ``"val"`` when ``--val-benchmark`` is given and open_clip_train has
    no validation data of its own (it calls ``evaluate`` only when ``data`` holds one of its val keys)."""
    if getattr(args, "val_benchmark", None) and not any(key in data for key in UPSTREAM_VAL_KEYS):
        data["val"] = BENCHMARKS_ONLY
    return data


def marking_get_data(get_data: Callable) -> Callable:
    """open_clip_train's ``get_data`` followed by ``mark_for_evaluation`` (for the seam)."""
    def wrapped(args, preprocess_fns, epoch=0, tokenizer=None):
        return mark_for_evaluation(args, get_data(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer))
    return wrapped


def _due(epoch: int, args) -> bool:
    """open_clip_train's validation rule: every ``--val-frequency`` epochs and after the last."""
    return bool(args.val_frequency) and (epoch % args.val_frequency == 0 or epoch == args.epochs)


def _unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _preprocess(model) -> Callable:
    """The validation transform ``create_model_and_transforms`` gives for ``model`` (its preprocess config)."""
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(model)), is_train=False)


def _write_atomic(path: Path, write: Callable) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_best(model, epoch: int, metrics: Dict[str, float], args) -> None:
    """Replace ``checkpoints/best.pt`` when ``--save-best``'s metric beats the best recorded in ``best.json``."""
    value = metrics.get(args.save_best)
    if value is None:
        logging.warning(f"--save-best {args.save_best}: not reported at epoch {epoch}; best.pt unchanged")
        return
    folder = Path(args.checkpoint_path)
    state_path = folder / BEST_STATE
    best = json.loads(state_path.read_text()) if state_path.is_file() else None
    if best is not None and best.get("metric") == args.save_best and value <= best["value"]:
        return
    checkpoint = {"epoch": epoch, "name": args.name, "state_dict": model.state_dict(),
                  "best": {"metric": args.save_best, "value": value}}
    _write_atomic(folder / BEST_CHECKPOINT, lambda tmp: torch.save(checkpoint, tmp))
    state = {"metric": args.save_best, "value": value, "epoch": epoch}
    _write_atomic(state_path, lambda tmp: Path(tmp).write_text(json.dumps(state) + "\n"))
    logging.info(f"best {args.save_best} = {value:.4f} at epoch {epoch}: saved {folder / BEST_CHECKPOINT}")


def evaluate_benchmarks(model, data, epoch: int, args, tb_writer=None, tokenizer=None) -> Dict[str, float]:
    """Run ``--val-benchmark`` on ``model`` (and ``model.teacher``) and log it like open_clip_train's evaluate;
    returns ``{"<dataset>/<metric>": value}`` (teacher's under ``teacher/``). Call on rank 0 only."""
    import open_clip

    from .report import result_record, write_results

    model = _unwrap(model)
    tokenizer = tokenizer or open_clip.get_tokenizer(args.model)
    preprocess, options = _preprocess(model), benchmark_options()
    specs = parse_specs(args.val_benchmark)
    towers = [("", model)]
    if isinstance(getattr(model, "teacher", None), torch.nn.Module):
        towers.append((TEACHER, model.teacher))
    was_training = model.training
    model.eval()
    metrics, records = {}, []
    dtype = next(model.parameters()).dtype
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    for prefix, tower in towers:
        scorer = DualEncoderScorer(tower, preprocess, tokenizer, device=args.device, batch_size=args.batch_size,
                                   workers=args.workers, progress=False)
        for part in run_benchmarks(scorer, specs, options):
            metrics.update({prefix + name: value for name, value in part_metrics(part).items()})
            records.append(result_record(prefix + part.dataset, args.model, f"{args.name}/epoch_{epoch}", part.task,
                                         part.metrics, {**part.protocol, "epoch": epoch}, precision=precision,
                                         seed=args.seed, headline=part.headline))
    model.train(was_training)
    logging.info(f"Benchmarks epoch {epoch}: " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    if args.save_logs:
        for name, value in metrics.items():
            if tb_writer is not None:
                tb_writer.add_scalar(f"val/{name}", value, epoch)
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a+") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        write_results(Path(args.checkpoint_path).parent / "benchmarks" / f"epoch_{epoch}.json", records)
        if args.save_best:
            _save_best(model, epoch, metrics, args)
    if args.wandb:
        import wandb

        step = None
        if "train" in data:
            step = data["train"].dataloader.num_batches // args.accum_freq * epoch
        wandb.log({**{f"val/{k}": v for k, v in metrics.items()}, "epoch": epoch}, step=step)
    return metrics


def wrap_evaluate(original: Callable) -> Callable:
    """open_clip_train's ``evaluate(model, data, epoch, args, tb_writer=None, tokenizer=None)`` followed, on rank 0
    when due, by ``evaluate_benchmarks``; the returned metrics hold both."""
    def evaluate(model, data, epoch, args, tb_writer=None, tokenizer=None):
        from open_clip_train.distributed import is_master

        upstream_data = {k: v for k, v in data.items() if v is not BENCHMARKS_ONLY}
        metrics = original(model, upstream_data, epoch, args, tb_writer=tb_writer, tokenizer=tokenizer)
        if getattr(args, "val_benchmark", None) and is_master(args) and _due(epoch, args):
            metrics = {**(metrics or {}), **evaluate_benchmarks(model, data, epoch, args, tb_writer, tokenizer)}
        return metrics
    return evaluate
