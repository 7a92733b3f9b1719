"""Noise robustness of AlignVLM connectors (spec ``alignvlm.md`` §1.2, §5; paper v2 Table 5).

Gaussian noise ``N(0, σ²)`` is added to the vision-tower features *before* the connector. For each checkpoint
(typically an ALIGN and an MLP connector trained alike) and each σ this reports

* the cosine distance ``1 - cos(clean, noisy)`` between the connector outputs, averaged over all visual tokens
  of all images (paper: ALIGN 0.0036 vs MLP 0.3938 at σ = 3 on SigLIP features);
* caption metrics (BLEU-4, CIDEr-D, ROUGE-L) without and with noise, and their change.

σ is given absolutely (``--sigma``) and/or relative to the standard deviation of the clean features over the
evaluated images (``--relative-sigma``; open_clip token scales differ from SigLIP's); both values are
reported. The noise of batch ``i`` is drawn from a generator seeded with ``(seed, i)``, so every checkpoint
sees the same noise for the same images.

    python -m open_clip_align.vlm.noise --checkpoint align=logs/align-a --checkpoint mlp=logs/mlp-a \\
        --data coco_karpathy_test.json --image-root /data/coco --sigma 3 --relative-sigma 0.5 1 --out results/noise
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..cli_checks import console_logging
from ..errors import run_cli
from ..eval.report import write_results
from ..models.activation import activation_name
from .checkpoint import load_checkpoint, read_run_config, resolve_checkpoint
from .evaluate import (EvalError, METRIC_NAMES, check_args, decoding_settings, device_for, generate_captions,
                       load_images, metrics_table, read_karpathy, score_captions, write_text)

__all__ = ["FeatureNoise", "connector_cosine_distance", "feature_std", "main", "noise_robustness"]


class FeatureNoise:
    """Additive Gaussian noise of std ``sigma`` on features ``[B, N, d]``; batch ``i``'s draw is seeded by
    ``(seed, i)``. ``for_batch(i)`` returns the feature transform for that batch."""

    def __init__(self, sigma: float, seed: int = 0):
        self.sigma, self.seed = float(sigma), int(seed)

    def for_batch(self, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def add(feats: torch.Tensor) -> torch.Tensor:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            noise = torch.randn(feats.shape, generator=g, dtype=torch.float32)
            return feats + (self.sigma * noise).to(device=feats.device, dtype=feats.dtype)
        return add


def cosine_distance(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` per token: ``[B, N, D], [B, N, D] -> [B, N]`` (fp32)."""
    return 1.0 - F.cosine_similarity(clean.float(), noisy.float(), dim=-1)


@torch.no_grad()
def _batched_features(model, preprocess, paths: Sequence[str], batch_size: int):
    for index, start in enumerate(range(0, len(paths), batch_size)):
        yield index, model.encode_vision(load_images(paths[start:start + batch_size], preprocess))


@torch.no_grad()
def feature_std(model, preprocess, paths: Sequence[str], batch_size: int = 16) -> float:
    """Standard deviation of all clean tower-feature entries over ``paths`` (one pass, float64 sums)."""
    total = sq = count = 0.0
    for _, feats in _batched_features(model, preprocess, paths, batch_size):
        f = feats.double()
        total += f.sum().item()
        sq += f.pow(2).sum().item()
        count += f.numel()
    mean = total / count
    return max(sq / count - mean * mean, 0.0) ** 0.5


@torch.no_grad()
def connector_cosine_distance(model, preprocess, paths: Sequence[str], noise: FeatureNoise,
                              batch_size: int = 16) -> float:
    """Mean ``1 - cos(connector(F), connector(F + noise))`` over all visual tokens of ``paths``."""
    embed = model.lm.get_input_embeddings().weight
    total, count = 0.0, 0
    for index, feats in _batched_features(model, preprocess, paths, batch_size):
        clean = model.connector(feats, embed)
        noisy = model.connector(noise.for_batch(index)(feats), embed)
        d = cosine_distance(clean, noisy)
        total += d.sum().item()
        count += d.numel()
    return total / count


def noise_robustness(model, tokenizer, preprocess, paths: Sequence[str], references: Dict[str, List[str]],
                     prompt: str, sigmas: Sequence[Tuple[float, Optional[float]]], seed: int = 0,
                     batch_size: int = 16, max_new_tokens: int = 30, num_beams: int = 1, meteor: bool = False,
                     tokenizer_name: str = "python", progress: bool = True) -> dict:
    """Clean metrics, then per noise setting the connector-output cosine distance and the noisy metrics.

    ``sigmas`` holds ``(absolute σ or None, relative σ or None)`` pairs (exactly one set); relative values are
    multiplied by :func:`feature_std`.
    """
    std = feature_std(model, preprocess, paths, batch_size)
    clean_caps = generate_captions(model, tokenizer, preprocess, paths, prompt, batch_size, max_new_tokens,
                                   num_beams, progress=progress, desc="clean")
    clean = score_captions(references, dict(zip(paths, clean_caps)), meteor, tokenizer_name)
    rows = []
    for absolute, relative in sigmas:
        sigma = absolute if absolute is not None else relative * std
        noise = FeatureNoise(sigma, seed)
        distance = connector_cosine_distance(model, preprocess, paths, noise, batch_size)
        caps = generate_captions(model, tokenizer, preprocess, paths, prompt, batch_size, max_new_tokens, num_beams,
                                 feature_noise=noise.for_batch, progress=progress, desc=f"sigma {sigma:.3g}")
        noisy = score_captions(references, dict(zip(paths, caps)), meteor, tokenizer_name)
        rows.append({"sigma": sigma, "sigma_relative": sigma / std if std > 0 else None,
                     "given_as": "absolute" if absolute is not None else "relative",
                     "cosine_distance": distance, "metrics": noisy,
                     "delta": {k: noisy[k] - clean[k] for k in clean if isinstance(clean[k], float)},
                     "example_captions": caps[:3]})
    return {"feature_std": std, "clean_metrics": clean, "clean_example_captions": clean_caps[:3], "noise": rows}


def _labelled(spec: str) -> Tuple[str, str]:
    if "=" not in spec:
        raise EvalError(f"--checkpoint {spec!r}: expected LABEL=PATH, e.g. align=logs/align-a")
    label, path = spec.split("=", 1)
    if not label or not path:
        raise EvalError(f"--checkpoint {spec!r}: expected LABEL=PATH, e.g. align=logs/align-a")
    return label, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_clip_align.vlm.noise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=PATH",
                   help="checkpoint (or run directory) to test, with a label; repeat, e.g. align=... mlp=...")
    p.add_argument("--data", required=True, help="Karpathy-format JSON")
    p.add_argument("--image-root", default=None, help="folder the 'image' paths are relative to")
    p.add_argument("--out", required=True, help="output folder for noise_results.json and noise_results.md "
                                                "(checked for writability before anything runs)")
    p.add_argument("--sigma", type=float, nargs="*", default=[], help="absolute noise std values (paper: 3)")
    p.add_argument("--relative-sigma", type=float, nargs="*", default=[],
                   help="noise std values as multiples of the clean feature std")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same noise for every checkpoint)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--meteor", action="store_true", help="also METEOR (needs java)")
    p.add_argument("--tokenizer", choices=("python", "ptb"), default="python")
    p.add_argument("--limit", type=int, default=None, help="the first N images only")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    check_args(args)
    checkpoints = [_labelled(spec) for spec in args.checkpoint]
    labels = [label for label, _ in checkpoints]
    if len(set(labels)) != len(labels):
        raise EvalError(f"--checkpoint labels must differ, got {labels}")
    sigmas = [(s, None) for s in args.sigma] + [(None, r) for r in args.relative_sigma]
    if not sigmas:
        raise EvalError("give at least one --sigma or --relative-sigma")
    if any((s if s is not None else r) < 0 for s, r in sigmas):
        raise EvalError("--sigma / --relative-sigma values must be >= 0")
    device = device_for(args.device)
    paths, names, refs = read_karpathy(args.data, args.image_root, args.limit)
    resolved = [(label, resolve_checkpoint(path)) for label, path in checkpoints]
    for label, path in resolved:
        if read_run_config(path)["model"].get("vlm") is not None:
            raise EvalError(f"--checkpoint {label}={path}: a SmolVLM checkpoint; the noise evaluation adds noise to "
                            "open_clip tower features (--vlm open_clip checkpoints) only")
    start = time.perf_counter()
    results = {}
    for label, path in resolved:
        model, tokenizer, preprocess, run_config = load_checkpoint(path)
        model.to(device).eval()
        results[label] = {"checkpoint": str(path), "step": run_config.get("step"),
                          "connector": model.connector_type, "prompt": run_config["model"]["prompt"],
                          "activation": activation_name(model.visual),
                          "force_quick_gelu": model.vision_force_quick_gelu,
                          **noise_robustness(model, tokenizer, preprocess, paths, refs, run_config["model"]["prompt"],
                                             sigmas, args.seed, args.batch_size, args.max_new_tokens,
                                             args.num_beams, args.meteor, args.tokenizer, not args.quiet)}
        del model
    result = {"data": str(args.data), "n_images": len(paths), "seed": args.seed,
              "decoding": decoding_settings(args.num_beams, args.max_new_tokens),
              "noise": "N(0, sigma^2) added to the vision-tower features before the connector",
              "cosine_distance": "mean over visual tokens of 1 - cos(connector(F), connector(F + noise))",
              "checkpoints": results, "time_s": time.perf_counter() - start}
    rows = []
    for label, r in results.items():
        for n in r["noise"]:
            row = {"checkpoint": label, "connector": r["connector"], "sigma": n["sigma"],
                   "sigma/std": n["sigma_relative"], "cos dist": n["cosine_distance"]}
            for key, name in METRIC_NAMES.items():
                if key in r["clean_metrics"]:
                    row[f"{name} clean"] = r["clean_metrics"][key]
                    row[f"{name} noisy"] = n["metrics"][key]
            rows.append(row)
    table = metrics_table(rows, list(rows[0]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / "noise_results.json", result)
    write_text(out / "noise_results.md", f"# AlignVLM noise robustness\n\n{len(paths)} images from {args.data}; "
                                         f"{result['noise']}; seed {args.seed}\n\n{table}\n")
    print(f"{table}\nwrote {out / 'noise_results.json'}, {out / 'noise_results.md'}")
    return result


def cli() -> None:
    console_logging()
    sys.exit(run_cli(lambda: main() and 0, "open_clip_align.vlm.noise", interrupted="nothing was written"))


if __name__ == "__main__":
    cli()
