"""Caption evaluation of an AlignVLM checkpoint on a COCO-Karpathy-format file (spec ``alignvlm.md`` §5).

    python -m open_clip_align.vlm.evaluate --checkpoint logs/align-a --data coco_karpathy_test.json \\
        --image-root /data/coco --out results/align-a [--num-beams 3] [--max-new-tokens 30] [--meteor]
    python -m open_clip_align.vlm.evaluate --checkpoint logs/smol-a --data coco_karpathy_test.json \\
        --image-root /data/coco --shots 2 --support coco_karpathy_val.json --out results/smol-a-2shot
    python -m open_clip_align.vlm.evaluate --vlm smolvlm --vlm-path /models/SmolVLM2-500M-Video-Instruct \\
        --prompt "A short caption:" --data coco_karpathy_test.json --image-root /data/coco --out results/stock

The data file is the BLIP/ALBEF Karpathy format, ``[{"image": "val2014/x.jpg", "caption": ["...", ...]}]``
(read by :func:`caption_metrics.load_karpathy_captions`; every image must exist). The model is a training
checkpoint (``--checkpoint``: either layout, SmolVLM ones included) or a SmolVLM directory as it is
(``--vlm smolvlm --vlm-path DIR``: its own projection, e.g. the stock model as a reference). Captions are
generated with the checkpoint's own training prompt (``--prompt`` for a directory), greedy by default
(``do_sample=False``, at most 30 new tokens, stop at EOS), in batches; beam search with ``--num-beams``.
Few-shot (``--shots N --support FILE``): N image-caption examples from the support split (a Karpathy-format
file; never an evaluated image) before each image, drawn by ``--seed`` per image (:mod:`.fewshot`), in the
model's own layout. Scores: BLEU-4, CIDEr-D and ROUGE-L from pycocoevalcap (METEOR with ``--meteor`` when Java
is on PATH), computed over the whole split.

Writes to ``--out`` (checked for writability before anything runs): ``results.json`` (metrics with the split,
prompt, decoding settings, max tokens, seed, shots, checkpoint and step, and the tower's activation),
``shots.json`` (few-shot: the examples shown for every image), ``captions.json``
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
from .build import build_model
from .caption_metrics import caption_scores, java_available, load_karpathy_captions, write_predictions
from .checkpoint import load_checkpoint, resolve_checkpoint
from .fewshot import Shot, draw_shots
from .layout import DEFAULT_PROMPT
from .smolvlm import SMOLVLM

__all__ = ["EvalError", "check_args", "coco_image_ids", "decoding_settings", "generate_captions", "load_images",
           "main", "metrics_table", "score_captions", "write_text"]

METRIC_NAMES = {"bleu4": "BLEU-4", "cider": "CIDEr-D", "rouge_l": "ROUGE-L", "meteor": "METEOR"}
_NUMBERED = re.compile(r"(\d+)\.[A-Za-z]+$")


class EvalError(UserError):
    """Bad evaluation input (data file, images, flags); the message names the file or flag."""


def load_images(paths: Sequence[str], preprocess: Callable):
    """``[B, 3, H, W]`` from image files through the tower's preprocessing (a list of PIL images for a SmolVLM,
    whose processor does it)."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                images.append(preprocess(img.convert("RGB")))
        except (OSError, ValueError) as err:
            raise EvalError(f"{path}: cannot read image: {type(err).__name__}: {err}") from None
    return torch.stack(images) if isinstance(images[0], torch.Tensor) else images


def _shot_inputs(shots: Sequence[Sequence[Shot]], preprocess: Callable):
    """``(shot_images, shot_captions)`` for :meth:`generate`: ``[B, k, 3, H, W]`` (or B lists of k PIL images)."""
    k = len(shots[0])
    flat = load_images([s.path for row in shots for s in row], preprocess)
    images = flat.reshape(len(shots), k, *flat.shape[1:]) if isinstance(flat, torch.Tensor) \
        else [flat[i * k:(i + 1) * k] for i in range(len(shots))]
    return images, [[s.caption for s in row] for row in shots]


def generate_captions(model, tokenizer, preprocess: Callable, paths: Sequence[str], prompt: str,
                      batch_size: int = 16, max_new_tokens: int = 30, num_beams: int = 1,
                      feature_noise: Optional[Callable[[int], Callable]] = None, progress: bool = True,
                      desc: str = "captions", shots: Optional[Sequence[Sequence[Shot]]] = None) -> List[str]:
    """One caption per image path, in order. ``feature_noise(batch_index)`` (optional) returns the feature
    transform for that batch (see :class:`open_clip_align.vlm.noise.FeatureNoise`); ``shots`` (optional) the
    in-context examples of every image (:func:`fewshot.draw_shots`)."""
    out: List[str] = []
    starts = range(0, len(paths), batch_size)
    for index, start in enumerate(tqdm(starts, desc=desc, unit="batch", disable=not progress)):
        chunk = paths[start:start + batch_size]
        images = load_images(chunk, preprocess)
        kwargs = {}
        if feature_noise is not None:
            kwargs["feature_noise"] = feature_noise(index)
        if shots is not None and shots[start]:
            kwargs["shot_images"], kwargs["shot_captions"] = _shot_inputs(shots[start:start + batch_size], preprocess)
        out.extend(model.generate(images, [prompt] * len(chunk), tokenizer, max_new_tokens=max_new_tokens,
                                  num_beams=num_beams, **kwargs))
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
    p.add_argument("--checkpoint", default=None, help="checkpoint directory, or a run directory (its newest)")
    p.add_argument("--vlm", choices=(SMOLVLM,), default=None,
                   help="instead of --checkpoint: evaluate a SmolVLM / Idefics3 directory as it is (--vlm-path)")
    p.add_argument("--vlm-path", default=None, help="--vlm smolvlm: the local model directory")
    p.add_argument("--prompt", default=None,
                   help=f"--vlm-path only (a checkpoint uses its training prompt; default {DEFAULT_PROMPT!r})")
    p.add_argument("--shots", type=int, default=0,
                   help="few-shot: N in-context image-caption examples before every image (default 0)")
    p.add_argument("--support", default=None,
                   help="--shots: Karpathy-format JSON the examples are drawn from (evaluated images excluded)")
    p.add_argument("--support-image-root", default=None,
                   help="folder of --support's image paths (default: --image-root, else the file's folder)")
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


def _check_source(args) -> None:
    """Exactly one model source (--checkpoint or --vlm smolvlm --vlm-path) and consistent few-shot flags."""
    if (args.checkpoint is None) == (args.vlm_path is None):
        raise EvalError("pass --checkpoint (a training checkpoint or run) or --vlm smolvlm --vlm-path DIR, not "
                        + ("both" if args.checkpoint else "neither"))
    if args.vlm_path is not None and args.vlm != SMOLVLM:
        raise EvalError("--vlm-path needs --vlm smolvlm")
    if args.vlm is not None and args.vlm_path is None:
        raise EvalError("--vlm smolvlm needs --vlm-path DIR")
    if args.checkpoint is not None and args.prompt is not None:
        raise EvalError("--prompt: a checkpoint is evaluated with its own training prompt; --prompt applies to "
                        "--vlm-path")
    if args.shots < 0:
        raise EvalError(f"--shots must be at least 0, got {args.shots}")
    if args.shots and args.support is None:
        raise EvalError(f"--shots {args.shots} needs --support FILE (a Karpathy-format split to draw examples from)")
    if not args.shots and (args.support is not None or args.support_image_root is not None):
        raise EvalError("--support is only used with --shots N (N >= 1)")


def _load_model(args):
    """``(model, tokenizer, preprocess, run_config, checkpoint or None)`` from --checkpoint or --vlm-path."""
    if args.checkpoint is not None:
        checkpoint = resolve_checkpoint(args.checkpoint)
        return (*load_checkpoint(checkpoint), checkpoint)
    config = {"vlm": SMOLVLM, "vlm_path": os.path.abspath(args.vlm_path), "connector": "mlp", "connector_kwargs": {},
              "lm_training": "frozen", "prompt": args.prompt or DEFAULT_PROMPT, "max_caption_tokens": None,
              "lora": None}
    model, tokenizer, preprocess = build_model(config, trainable=False)
    return model, tokenizer, preprocess, {"model": config, "step": None}, None


def _activation(model) -> str:
    return getattr(model, "vision_activation", None) or activation_name(model.visual)


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
    _check_source(args)
    device = device_for(args.device)
    paths, names, refs = read_karpathy(args.data, args.image_root, args.limit)
    shots, few_shot = None, None
    if args.shots:
        root = args.support_image_root or args.image_root
        s_paths, s_names, s_refs = read_karpathy(args.support, root, None)
        shots, overlap = draw_shots(args.shots, paths, names, s_paths, s_names, s_refs, args.seed)
        few_shot = {"support": str(args.support), "support_images": len(s_paths), "left_out_evaluated": overlap,
                    "draw": "per image, seeded by (--seed, image name); caption: one of its references"}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, tokenizer, preprocess, run_config, checkpoint = _load_model(args)
    model.to(device).eval()
    prompt = run_config["model"]["prompt"]
    captions = generate_captions(model, tokenizer, preprocess, paths, prompt, args.batch_size, args.max_new_tokens,
                                 args.num_beams, progress=not args.quiet, shots=shots)
    predictions = dict(zip(paths, captions))
    metrics = score_captions(refs, predictions, args.meteor, args.tokenizer)
    split = args.split or Path(args.data).stem
    result = {
        "checkpoint": None if checkpoint is None else str(checkpoint), "step": run_config.get("step"),
        "data": str(args.data), "split": split,
        "n_images": len(paths), "n_references": sum(len(r) for r in refs.values()), "prompt": prompt,
        "decoding": decoding_settings(args.num_beams, args.max_new_tokens), "max_new_tokens": args.max_new_tokens,
        "seed": args.seed, "shots": args.shots, **({"few_shot": few_shot} if few_shot else {}), "metrics": metrics,
        "metric_protocol": {"package": "pycocoevalcap 1.2", "cider": "CIDEr-D (IDF over this split's references)",
                            "tokenizer": args.tokenizer, "scale": "raw (not x100)"},
        "model": run_config["model"], "activation": _activation(model),
        "force_quick_gelu": model.vision_force_quick_gelu, "time_s": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = coco_image_ids(paths, names)
    write_predictions(str(out / "captions.json"), dict(zip(ids, captions)))
    if shots is not None:
        write_results(out / "shots.json", [{"image": n, "shots": [{"image": s.name, "caption": s.caption}
                                                                   for s in row]} for n, row in zip(names, shots)])
    write_results(out / "results.json", result)
    row = {"split": split, "images": len(paths), **{METRIC_NAMES[k]: v for k, v in metrics.items()
                                                     if k in METRIC_NAMES}}
    table = metrics_table([row], list(row))
    decoding = result["decoding"]
    source = f"checkpoint {checkpoint} (step {result['step']})" if checkpoint else f"{args.vlm_path} as it is"
    settings = (f"{source}; prompt {prompt!r}; {decoding['strategy']} (beams {decoding['num_beams']}), max "
                f"{args.max_new_tokens} new tokens; {args.shots}-shot; seed {args.seed}")
    examples = "\n".join(f"- {n}: {c!r}" for n, c in list(zip(names, captions))[:5])
    write_text(out / "results.md", f"# AlignVLM captioning\n\n{settings}\n\n{table}\n\nFirst captions:\n{examples}\n")
    print(f"{settings}\n{table}\nwrote {out / 'results.json'}, {out / 'captions.json'}, {out / 'results.md'}")
    return result


def cli() -> None:
    console_logging()
    sys.exit(run_cli(lambda: main() and 0, "open_clip_align.vlm.evaluate", interrupted="nothing was written"))


if __name__ == "__main__":
    cli()
