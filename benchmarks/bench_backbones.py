"""Benchmark: hard negatives, the EMA teacher and LoRA on every open_clip model family (issue 16).

1. Per family, one optimizer step (forward, backward, AdamW) at equal batch B: the plain open_clip step (2-D text,
   upstream's own loss: ClipLoss, SigLipLoss for a model with a logit_bias, CoCaLoss for CoCa) against the
   hard-negative steps on ``[B, 1+K, L]`` text (``negclip``; ``degla`` with its EMA teacher and the step hook's
   update), on the same model. Arms alternate; medians (and minima, the least disturbed by other load) and ratios
   to the plain step.
2. Per model, LoRA (``attn,mlp``, r = 8) against full fine-tuning, both on the negclip step: step time (both arms
   in one process, alternating) and peak memory of two steps (CPU: the peak resident set above the resident set
   after building the model, each arm in its own process so freed memory of one arm cannot hide the other's; CUDA:
   ``max_memory_allocated``).
3. Frozen weights over training steps: this package's parametrization LoRA against peft's MultiheadAttention LoRA
   (merge/unmerge around every forward), fp32 and bf16: the largest change of a frozen ``in_proj_weight``.

Families: the tiny test configs (spec backbones.md §5, Hugging Face tower written offline) plus ``--large`` models
built with random weights (nothing is downloaded). Prints tables and writes JSON (default
benchmarks/results/bench_backbones.json).

    python benchmarks/bench_backbones.py [--threads 2] [--batch 8] [--k 4] [--large ViT-B-32-quickgelu] [--parts 1 2 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import open_clip  # noqa: E402
from open_clip.loss import ClipLoss, CoCaLoss, SigLipLoss  # noqa: E402

import open_clip_align  # noqa: E402,F401
from open_clip_align.models import lora  # noqa: E402
from open_clip_align.losses import DeGLALoss, NegCLIPLoss, SigmoidDeGLALoss, SigmoidNegCLIPLoss  # noqa: E402
from open_clip_align.models import ema, enable_hardneg, make_teacher  # noqa: E402
from open_clip_align.models.tiny_hf import register_tiny_hf_clip  # noqa: E402
from harness import time_arms, write_json  # noqa: E402

TINY = ["tiny-clip-ViT", "tiny-clip-RN", "tiny-clip-timm-convnext", "tiny-customtext-timm-ViT", "tiny-sigmoid-ViT",
        "tiny-captioner-ViT", "tiny-hftext-ViT"]
HF_ROOT = Path(tempfile.gettempdir()) / "bench_backbones_hf"


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` with random weights (CoCa's decoder projection, left uninitialised by open_clip 3.3, filled)."""
    if name == "tiny-hftext-ViT" and name not in open_clip.list_models():
        register_tiny_hf_clip(HF_ROOT, name)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, output_dict=True)
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None:
        torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    return model


def _context(name: str, model) -> int:
    """The token length the model's tokenizer produces (its text tower's context)."""
    try:
        return open_clip.get_tokenizer(name)(["a photo"]).shape[-1]
    except Exception:  # a hub tokenizer that is not cached: the config's context length
        return model.context_length


def plain_loss(model):
    if getattr(model, "text_decoder", None) is not None:
        return CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
    return SigLipLoss() if model.logit_bias is not None else ClipLoss()


def step_arms(name: str, batch: int, k: int) -> dict:
    """{arm: step function} on one model: plain (upstream), negclip, degla (teacher + EMA step hook)."""
    model = build(name)
    images, texts = _batch(model, name, batch, k)
    sigmoid = model.logit_bias is not None
    upstream = plain_loss(model)
    teacher = make_teacher(model)
    enable_hardneg(model).attach_teacher(teacher)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    ema.track(model)

    def step(loss_fn, hardneg, with_teacher):
        def run():
            model.configure_training(emit_hardneg=hardneg, teacher=with_teacher)
            out = model(images, texts if hardneg else texts[:, 0])
            total = loss_fn(**out, output_dict=True)
            optimizer.zero_grad()
            sum(total.values()).backward()
            optimizer.step()
        return run

    negclip = SigmoidNegCLIPLoss() if sigmoid else NegCLIPLoss()
    degla = SigmoidDeGLALoss() if sigmoid else DeGLALoss()
    return {"plain": step(upstream, False, False), "negclip": step(negclip, True, False),
            "degla": step(degla, True, True)}


def bench_steps(names, batch, k, repeats) -> dict:
    results = {}
    handle = ema.install_step_hook()
    try:
        for name in names:
            times = time_arms(step_arms(name, batch, k), repeats, warmup=1)
            med = {arm: statistics.median(ts) for arm, ts in times.items()}
            best = {arm: min(ts) for arm, ts in times.items()}  # least disturbed by other load on the machine
            results[name] = {"median_s": med, "min_s": best, "negclip_vs_plain": med["negclip"] / med["plain"],
                             "degla_vs_plain": med["degla"] / med["plain"],
                             "negclip_vs_plain_min": best["negclip"] / best["plain"],
                             "degla_vs_plain_min": best["degla"] / best["plain"]}
            r = results[name]
            print(f"  {name:28s} plain {med['plain'] * 1e3:8.1f} ms  negclip {med['negclip'] * 1e3:8.1f} ms "
                  f"(x{r['negclip_vs_plain']:.2f}, min x{r['negclip_vs_plain_min']:.2f})  degla "
                  f"{med['degla'] * 1e3:8.1f} ms (x{r['degla_vs_plain']:.2f}, min x{r['degla_vs_plain_min']:.2f})",
                  flush=True)
    finally:
        handle.remove()
    return results


# ------------------------------------------------------------------------------------------ LoRA vs full (child runs)

def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _negclip_model(name: str, mode: str, device: str = "cpu"):
    """(model, step function) for the negclip step with full fine-tuning or LoRA r=8 on attn,mlp."""
    model = build(name).to(device)
    enable_hardneg(model).configure_training(emit_hardneg=True)
    if mode == "lora":
        lora.inject(model, lora.resolve_targets(model, "attn,mlp"), r=8, alpha=16)
        lora.freeze_except_adapters(model)
    return model, SigmoidNegCLIPLoss() if model.logit_bias is not None else NegCLIPLoss()


def _negclip_step(model, loss_fn, images, texts):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    model.train()

    def run():
        out = model(images, texts)
        loss = sum(loss_fn(**out, output_dict=True).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return run


def _batch(model, name, batch, k, device="cpu"):
    size = model.visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, *size, generator=g).to(device),
            torch.randint(1, 1000, (batch, 1 + k, _context(name, model)), generator=g).to(device))


def child_memory(name: str, mode: str, batch: int, k: int) -> dict:
    """One arm in this process: the peak memory of two negclip steps above the memory after building the model
    (CPU: resident set; CUDA: allocated), and the parameter counts."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, loss_fn = _negclip_model(name, mode, device)
    images, texts = _batch(model, name, batch, k, device)
    trainable, total = lora.parameter_counts(model)
    step = _negclip_step(model, loss_fn, images, texts)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
        base = _rss_kb("VmRSS") * 1024
    for _ in range(2):  # the first step allocates gradients and the optimizer state
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kb("VmHWM") * 1024) - base
    return {"peak_bytes": peak, "trainable": trainable, "total": total, "device": device}


def bench_lora(names, batch, k, repeats) -> dict:
    """Time: both arms in this process, alternating (``time_arms``); memory: each arm in its own process."""
    results = {}
    for name in names:
        arms = {}
        for mode in ("full", "lora"):
            model, loss_fn = _negclip_model(name, mode)
            arms[mode] = _negclip_step(model, loss_fn, *_batch(model, name, batch, k))
        times = time_arms(arms, repeats, warmup=1)
        entry = {}
        for mode in ("full", "lora"):
            cmd = [sys.executable, __file__, "--child", json.dumps([name, mode, batch, k])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            entry[mode] = {**json.loads(proc.stdout.strip().splitlines()[-1]),
                           "median_s": statistics.median(times[mode]), "min_s": min(times[mode])}
        full, low = entry["full"], entry["lora"]
        results[name] = {**entry, "time_lora_vs_full": low["median_s"] / full["median_s"],
                         "time_lora_vs_full_min": low["min_s"] / full["min_s"],
                         "memory_lora_vs_full": low["peak_bytes"] / max(full["peak_bytes"], 1)}
        r = results[name]
        print(f"  {name:28s} full {full['median_s'] * 1e3:8.1f} ms {full['peak_bytes'] / 2**20:8.1f} MiB | LoRA "
              f"{low['median_s'] * 1e3:8.1f} ms {low['peak_bytes'] / 2**20:8.1f} MiB | trainable "
              f"{low['trainable']:,}/{low['total']:,} | time x{r['time_lora_vs_full']:.2f} (min "
              f"x{r['time_lora_vs_full_min']:.2f}), memory x{r['memory_lora_vs_full']:.2f}", flush=True)
    return results


# ------------------------------------------------------------------------------ frozen weights: ours vs peft

def bench_frozen_drift(steps: int) -> dict:
    """Train only LoRA on the text tower's attention of a tiny CLIP for ``steps`` steps; report how far the frozen
    ``in_proj_weight`` of block 0 moved (0 = bit-identical)."""
    from peft import LoraConfig, get_peft_model
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        for impl in ("parametrize (ours)", "peft MHA LoRA"):
            model = build("tiny-clip-ViT").to(dtype)
            if impl.startswith("peft"):
                model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["attn"]))
                inner = model.base_model.model
                weight = lambda: inner.transformer.resblocks[0].attn.base_layer.in_proj_weight  # noqa: E731
                encode = inner.encode_text
            else:
                lora.inject(model, lora.resolve_targets(model, "attn"), r=4, alpha=8)
                lora.freeze_except_adapters(model)
                attn = model.transformer.resblocks[0].attn
                weight = lambda: attn.parametrizations.in_proj_weight.original  # noqa: E731
                encode = model.encode_text
            before = weight().detach().clone()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-3)
            tokens = torch.randint(1, 1000, (4, _context("tiny-clip-ViT", None)),
                                   generator=torch.Generator().manual_seed(0))
            for _ in range(steps):
                encode(tokens).float().pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
            drift = (weight().detach().float() - before.float()).abs().max().item()
            key = f"{impl}, {str(dtype).replace('torch.', '')}"
            results[key] = {"max_abs_change": drift, "steps": steps}
            print(f"  {key:32s} frozen in_proj_weight max |change| after {steps} steps: {drift:.3g}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, default=4, help="hard negatives per image")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3],
                        help="which of the three benchmarks to run")
    parser.add_argument("--drift-steps", type=int, default=200)
    parser.add_argument("--large", nargs="*", default=["ViT-B-32-quickgelu"],
                        help="full-size models (random weights) for the LoRA comparison and the step ratios")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_backbones.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_memory(*json.loads(args.child))))
        return
    meta = {"threads": args.threads, "batch": args.batch, "k": args.k, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
            "load_average_at_start": os.getloadavg()}
    result = {"meta": meta}
    if 1 in args.parts:
        print(f"1. one optimizer step per family, B={args.batch}, K={args.k} (median of {args.repeats})")
        result["steps"] = bench_steps(TINY + args.large, args.batch, args.k, args.repeats)
    if 2 in args.parts:
        print(f"2. LoRA r=8 (attn,mlp) vs full fine-tuning, negclip step (median of {args.repeats})")
        result["lora_vs_full"] = bench_lora(TINY + args.large, args.batch, args.k, args.repeats)
    if 3 in args.parts:
        print("3. frozen weights over training steps: parametrize vs peft")
        result["frozen_drift"] = bench_frozen_drift(args.drift_steps)
    meta["load_average_at_end"] = os.getloadavg()
    write_json(result, args.out)
    print(f"wrote {args.out} (load average {meta['load_average_at_start'][0]:.1f} at start, "
          f"{meta['load_average_at_end'][0]:.1f} at the end, on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
