"""Caption evaluation of an AlignVLM checkpoint on a COCO-Karpathy-format file (spec ``alignvlm.md`` §5).

    python -m open_clip_align.vlm.evaluate --checkpoint logs/align-a --data coco_karpathy_test.json \\
        --image-root /data/coco --out results/align-a [--num-beams 3] [--max-new-tokens 30] [--meteor]

The data file is the BLIP/ALBEF Karpathy format, ``[{"image": "val2014/x.jpg", "caption": ["...", ...]}]``
(read by :func:`caption_metrics.load_karpathy_captions`; every image must exist). Captions are generated with
the checkpoint's own training prompt, greedy by default (``do_sample=False``, at most 30 new tokens, stop at
EOS), in batches; beam search with ``--num-beams``. Scores: BLEU-4, CIDEr-D and ROUGE-L from pycocoevalcap
(METEOR with ``--meteor`` when Java is on PATH), computed over the whole split.

Writes to ``--out`` (checked for writability before anything runs): ``results.json`` (metrics with the split,
prompt, decoding settings, max tokens, seed, checkpoint and step, and the tower's activation), ``captions.json``
(COCO results format: ``[{"image_id", "caption"}]``; integer ids when every file name ends in a number, as
COCO's do, else the image path from the data file) and ``results.md`` (a readable table, also printed).
"""
import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from PIL import Image
from tqdm import tqdm

from ..cli_checks import console_logging, device_problem, non_finite_flags, output_problem
from ..errors import UserError, run_cli
from ..eval.report import write_results
from ..models.activation import activation_name
from .caption_metrics import caption_scores, java_available, load_karpathy_captions, write_predictions
from .checkpoint import load_checkpoint, resolve_checkpoint

__all__ = ["EvalError", "check_args", "coco_image_ids", "decoding_settings", "generate_captions", "load_images",
           "main", "metrics_table", "score_captions", "write_text"]

METRIC_NAMES = {"bleu4": "BLEU-4", "cider": "CIDEr-D", "rouge_l": "ROUGE-L", "meteor": "METEOR"}
_NUMBERED = re.compile(r"(\d+)\.[A-Za-z]+$")


class EvalError(UserError):
    """Bad evaluation input (data file, images, flags); the message names the file or flag."""


def load_images(paths: Sequence[str], preprocess: Callable) -> torch.Tensor:
    """``[B, 3, H, W]`` from image files through the tower's preprocessing."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                images.append(preprocess(img.convert("RGB")))
        except (OSError, ValueError) as err:
            raise EvalError(f"{path}: cannot read image: {type(err).__name__}: {err}") from None
    return torch.stack(images)


def generate_captions(model, tokenizer, preprocess: Callable, paths: Sequence[str], prompt: str,
                      batch_size: int = 16, max_new_tokens: int = 30, num_beams: int = 1,
                      feature_noise: Optional[Callable[[int], Callable]] = None, progress: bool = True,
                      desc: str = "captions") -> List[str]:
    """One caption per image path, in order. ``feature_noise(batch_index)`` (optional) returns the feature
    transform for that batch (see :class:`open_clip_align.vlm.noise.FeatureNoise`)."""
    out: List[str] = []
    starts = range(0, len(paths), batch_size)
    for index, start in enumerate(tqdm(starts, desc=desc, unit="batch", disable=not progress)):
        chunk = paths[start:start + batch_size]
        images = load_images(chunk, preprocess)
        noise = feature_noise(index) if feature_noise is not None else None
        out.extend(model.generate(images, [prompt] * len(chunk), tokenizer, max_new_tokens=max_new_tokens,
                                  num_beams=num_beams, feature_noise=noise))
    return out


def coco_image_ids(paths: Sequence[str], names: Sequence[str]) -> List[Union[int, str]]:
    """COCO ``image_id`` per image: the trailing number of every file name when all have one and they are
    unique (``COCO_val2014_000000391895.jpg`` -> 391895), else ``names`` (the data file's image paths)."""
    numbers = [_NUMBERED.search(os.path.basename(p)) for p in paths]
    if all(numbers):
        ids = [int(m.group(1)) for m in numbers]
        if len(set(ids)) == len(ids):
            return ids
    return list(names)


def decoding_settings(num_beams: int, max_new_tokens: int) -> dict:
    return {"strategy": "greedy" if num_beams == 1 else "beam", "num_beams": num_beams, "do_sample": False,
            "max_new_tokens": max_new_tokens, "stop": "EOS"}


def score_captions(references: Dict[str, List[str]], predictions: Dict[str, str], meteor: bool,
                   tokenizer: str) -> dict:
    metrics = ["bleu4", "cider", "rouge_l"] + (["meteor"] if meteor else [])
    return caption_scores(references, predictions, metrics, tokenizer)


def metrics_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns``; floats with 4 decimals."""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    """Atomic text write (temp file in the same folder, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_karpathy(data: str, image_root: Optional[str], limit: Optional[int]):
    """``(paths, names, references)`` from a Karpathy file; ``names`` are the file's own image entries."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(data))
    try:
        paths, refs = load_karpathy_captions(data, image_root=root, check_images=True)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(f"{err} (--data / --image-root)") from None
    if limit is not None:
        paths = paths[:limit]
        refs = {p: refs[p] for p in paths}
    names = [os.path.relpath(p, root) for p in paths]
    return paths, names, refs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_clip_align.vlm.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (its newest)")
    p.add_argument("--data", required=True, help="Karpathy-format JSON (e.g. coco_karpathy_test.json)")
    p.add_argument("--image-root", default=None, help="folder the 'image' paths are relative to "
                                                      "(default: the data file's folder)")
    p.add_argument("--out", required=True, help="output folder for results.json, captions.json, results.md")
    p.add_argument("--split", default=None, help="split name to record (default: the data file's stem)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=30, help="generation limit (default 30)")
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy (default); >1 = beam search")
    p.add_argument("--meteor", action="store_true", help="also METEOR (needs java on PATH)")
    p.add_argument("--tokenizer", choices=("python", "ptb"), default="python",
                   help="caption tokenizer before scoring: python (no Java) or ptb (pycocoevalcap's Java PTB)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--seed", type=int, default=0, help="torch seed (recorded; greedy and beam are deterministic)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(args) -> None:
    """Flags shared by the evaluate and noise CLIs, and ``--out``, checked before any work (:class:`EvalError`)."""
    problem = non_finite_flags(args) or output_problem(args.out, "--out", directory=True)
    if problem:
        raise EvalError(problem)
    for flag in ("batch_size", "max_new_tokens", "num_beams"):
        if getattr(args, flag) < 1:
            raise EvalError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be at least 1")
    if args.meteor and not java_available():
        raise EvalError("--meteor needs a java executable on PATH")
    if args.tokenizer == "ptb" and not java_available():
        raise EvalError("--tokenizer ptb needs a java executable on PATH; use --tokenizer python")


def device_for(flag: Optional[str]) -> torch.device:
    want = flag or ("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem("--device", want)
    if problem:
        raise EvalError(problem)
    return torch.device(want)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Evaluate one checkpoint; returns the results dict (also written to ``--out/results.json``)."""
    args = build_parser().parse_args(argv)
    check_args(args)
    device = device_for(args.device)
    paths, names, refs = read_karpathy(args.data, args.image_root, args.limit)
    checkpoint = resolve_checkpoint(args.checkpoint)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, tokenizer, preprocess, run_config = load_checkpoint(checkpoint)
    model.to(device).eval()
    prompt = run_config["model"]["prompt"]
    captions = generate_captions(model, tokenizer, preprocess, paths, prompt, args.batch_size, args.max_new_tokens,
                                 args.num_beams, progress=not args.quiet)
    predictions = dict(zip(paths, captions))
    metrics = score_captions(refs, predictions, args.meteor, args.tokenizer)
    split = args.split or Path(args.data).stem
    result = {
        "checkpoint": str(checkpoint), "step": run_config.get("step"), "data": str(args.data), "split": split,
        "n_images": len(paths), "n_references": sum(len(r) for r in refs.values()), "prompt": prompt,
        "decoding": decoding_settings(args.num_beams, args.max_new_tokens), "max_new_tokens": args.max_new_tokens,
        "seed": args.seed, "metrics": metrics,
        "metric_protocol": {"package": "pycocoevalcap 1.2", "cider": "CIDEr-D (IDF over this split's references)",
                            "tokenizer": args.tokenizer, "scale": "raw (not x100)"},
        "model": run_config["model"], "activation": activation_name(model.visual),
        "force_quick_gelu": model.vision_force_quick_gelu, "time_s": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = coco_image_ids(paths, names)
    write_predictions(str(out / "captions.json"), dict(zip(ids, captions)))
    write_results(out / "results.json", result)
    row = {"split": split, "images": len(paths), **{METRIC_NAMES[k]: v for k, v in metrics.items()
                                                     if k in METRIC_NAMES}}
    table = metrics_table([row], list(row))
    decoding = result["decoding"]
    settings = (f"checkpoint {checkpoint} (step {result['step']}); prompt {prompt!r}; {decoding['strategy']} "
                f"(beams {decoding['num_beams']}), max {args.max_new_tokens} new tokens; seed {args.seed}")
    examples = "\n".join(f"- {n}: {c!r}" for n, c in list(zip(names, captions))[:5])
    write_text(out / "results.md", f"# AlignVLM captioning\n\n{settings}\n\n{table}\n\nFirst captions:\n{examples}\n")
    print(f"{settings}\n{table}\nwrote {out / 'results.json'}, {out / 'captions.json'}, {out / 'results.md'}")
    return result


def cli() -> None:
    console_logging()
    sys.exit(run_cli(lambda: main() and 0, "open_clip_align.vlm.evaluate", interrupted="nothing was written"))


if __name__ == "__main__":
    cli()
