"""Benchmark: what ``--loss degla`` costs, each measurement against a baseline timed in the same run.

DeGLA adds IGC, TGC and a distillation term to NegCLIP and needs an EMA teacher. Our implementation reads IGC
off the base logits, computes TGC as an (N, 1+K) gather and updates the teacher with fused ``_foreach`` ops.
These measurements check that the extra cost stays small:

(a) Loss forward+backward at N=256, K=4, D=512, s=100: ``DeGLALoss()`` (fixed TGC) against a dense masked
    formulation like the reference (``shared/spec/degla.md`` §2.3-2.4). The dense version builds a second full
    N x N(1+K) matrix for IGC and another for TGC, each with an additive -inf mask. Its masks are built once,
    outside the timing, which favours the baseline. Both are first checked to give the same values and
    gradients. The reference-mode TGC variant of ours is also reported.
(b) One fp32 training step (student forward, teacher forward, loss, backward, AdamW, EMA update through the
    optimizer step hook) with ``--loss degla``. The baseline is a NegCLIP step plus the same teacher forward
    under no_grad, so the ratio is what DeGLA costs beyond running the teacher.
(c) ``model.update_teacher()`` (fused EMA) as a share of the DeGLA step, next to an unfused per-parameter
    ``mul_/add_`` loop.

Arms alternate within each round so machine noise hits both, after warm-up rounds; medians are reported. Prints
a table (ratio, target, PASS/MISS) and writes JSON atomically (default benchmarks/results/bench_degla.json).

    python benchmarks/bench_degla.py [--threads 2] [--models degla-tiny-ViT:32 ViT-S-32-alt:8]
"""
import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import open_clip
from open_clip_align.losses import DeGLALoss, NegCLIPLoss, degla_terms
from open_clip_align.models import ema
from open_clip_align.models.hardneg import HardNegCLIP
from harness import time_arms, write_json

TARGETS = {"loss": 0.5, "step": 1.05, "ema": 0.02}
WEIGHTS = {"igc": 0.1, "tgc": 0.1, "distill": 0.005}  # DeGLALoss defaults (spec §2.5)


def _summary(samples: list) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}


# ---------------------------------------------------------------------------------------------- (a) loss


def dense_masks(n: int, k: int) -> dict:
    """Additive N x N(1+K) masks of the reference: 0 on the positive-block diagonal and on each row's K
    negative columns, -inf elsewhere. ``fixed``: row i keeps N + i*K + j (its own negatives, also the IGC
    mask). ``reference``: the tiling bug, row i keeps N + j*N + i."""
    rows = torch.arange(n)
    slots = torch.arange(k)
    masks = {}
    for mode, columns in (("fixed", n + rows[:, None] * k + slots), ("reference", n + slots * n + rows[:, None])):
        mask = torch.full((n, n * (1 + k)), float("-inf"))
        mask[rows, rows] = 0.0
        mask[rows[:, None], columns] = 0.0
        masks[mode] = mask
    return masks


def dense_degla_terms(image, text, neg, scale, teacher_image, teacher_text, teacher_neg, igc_mask, tgc_mask,
                      tgc_scale: float = 10.0) -> dict:
    """Unweighted DeGLA terms with full masked matrices (the reference's formulation)."""
    n, k, d = neg.shape
    labels = torch.arange(n)
    flat_neg = neg.reshape(n * k, d)
    pool = torch.cat([text, flat_neg])
    base = (F.cross_entropy(scale * image @ pool.T, labels) + F.cross_entropy(scale * text @ image.T, labels)) / 2
    igc = F.cross_entropy(scale * image @ pool.T + igc_mask, labels)
    candidates = torch.cat([teacher_text, flat_neg])
    tgc = F.cross_entropy(tgc_scale * text @ candidates.T + tgc_mask, labels)
    distill = ((image - teacher_image).pow(2).sum() + (text - teacher_text).pow(2).sum()
               + (neg - teacher_neg).pow(2).sum())
    return {"base": base, "igc": igc, "tgc": tgc, "distill": distill}


def _weighted(terms: dict) -> torch.Tensor:
    return terms["base"] + sum(w * terms[name] for name, w in WEIGHTS.items())


def _loss_inputs(n: int, k: int, d: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=gen), dim=-1)

    image, text, neg = unit(n, d), unit(n, d), unit(n, k, d)
    # a teacher close to the student, as after EMA training
    teacher = [F.normalize(x + 0.1 * torch.randn(x.shape, generator=gen), dim=-1) for x in (image, text, neg)]
    return {"image_features": image.requires_grad_(), "text_features": text.requires_grad_(),
            "neg_text_features": neg.requires_grad_(), "logit_scale": torch.tensor(100.0, requires_grad=True),
            "teacher_image_features": teacher[0], "teacher_text_features": teacher[1],
            "teacher_neg_text_features": teacher[2]}


def _leaves(inputs: dict) -> list:
    return [v for v in inputs.values() if v.requires_grad]


def _grads(loss: torch.Tensor, inputs: dict) -> list:
    return list(torch.autograd.grad(loss, _leaves(inputs)))


def check_dense_matches(inputs: dict, masks: dict) -> dict:
    """Assert the dense baseline equals ours (terms, weighted total, gradients) in both TGC modes."""
    x = inputs
    args = (x["image_features"], x["text_features"], x["neg_text_features"], x["logit_scale"],
            x["teacher_image_features"], x["teacher_text_features"], x["teacher_neg_text_features"])
    report = {}
    for mode in ("fixed", "reference"):
        ours = degla_terms(*args, tgc_mode=mode)
        dense = dense_degla_terms(*args, igc_mask=masks["fixed"], tgc_mask=masks[mode])
        for name in ours:
            torch.testing.assert_close(ours[name], dense[name], rtol=1e-5, atol=1e-5, msg=f"{mode} {name}")
        total = DeGLALoss(tgc_mode=mode)(**x)
        torch.testing.assert_close(total, _weighted(dense), rtol=1e-5, atol=1e-5)
        for g_ours, g_dense in zip(_grads(total, x), _grads(_weighted(dense), x)):
            torch.testing.assert_close(g_ours, g_dense, rtol=1e-4, atol=1e-6)
        report[mode] = {name: value.item() for name, value in ours.items()}
    return report


def bench_loss(n: int, k: int, d: int, repeats: int, warmup: int, inner: int) -> dict:
    inputs = _loss_inputs(n, k, d)
    masks = dense_masks(n, k)
    values = check_dense_matches(inputs, masks)
    x = inputs
    dense_args = (x["image_features"], x["text_features"], x["neg_text_features"], x["logit_scale"],
                  x["teacher_image_features"], x["teacher_text_features"], x["teacher_neg_text_features"])
    valid = torch.ones(n, k, dtype=torch.bool)
    ours_fixed, ours_reference = DeGLALoss(), DeGLALoss(tgc_mode="reference")

    def arm(compute):
        def run():
            for leaf in _leaves(inputs):
                leaf.grad = None
            compute().backward()
        return run

    arms = {
        "dense (reference formulation)": arm(lambda: _weighted(dense_degla_terms(
            *dense_args, igc_mask=masks["fixed"], tgc_mask=masks["fixed"]))),
        "ours, tgc fixed": arm(lambda: ours_fixed(**inputs)),
        "ours, tgc reference": arm(lambda: ours_reference(**inputs)),
        "ours, tgc fixed + valid mask": arm(lambda: ours_fixed(**inputs, neg_text_valid=valid)),
    }
    times = time_arms(arms, repeats, warmup, inner)
    return {"shape": {"N": n, "K": k, "D": d, "s": 100.0}, "checked_equal": values,
            "arms": {name: _summary(ts) for name, ts in times.items()}}


# ---------------------------------------------------------------------------------- (b), (c) train step


def build_model(name: str) -> HardNegCLIP:
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    if cfg is None:
        raise SystemExit(f"unknown model config {name!r}")
    cfg.pop("open_clip_align", None)
    return HardNegCLIP(**cfg, ema_teacher=True)


def unfused_ema(model: HardNegCLIP, decay: float) -> None:
    """The per-parameter alternative to ``update_teacher``'s fused ``_foreach`` ops (parameters only)."""
    teacher = dict(model.teacher.named_parameters())
    pairs = [(teacher[n], p.detach()) for n, p in model.named_parameters() if not n.startswith("teacher.")]

    @torch.no_grad()
    def run():
        for t, s in pairs:
            t.mul_(decay).add_(s, alpha=1 - decay)
    return run


def bench_step(name: str, batch: int, k: int, repeats: int, warmup: int, ema_repeats: int) -> dict:
    torch.manual_seed(0)
    degla_model = build_model(name)
    base_model = build_model(name)
    base_model.load_state_dict(degla_model.state_dict())
    size = degla_model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(batch, 3, size, size)
    texts = torch.randint(1, 49000, (batch, 1 + k, degla_model.context_length))
    degla_loss, negclip_loss = DeGLALoss(), NegCLIPLoss()

    def optimizer(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    for model, teacher_out in ((degla_model, True), (base_model, False)):
        model.train()
        model.emit_hardneg, model.emit_teacher = True, teacher_out
    opt_degla, opt_base = optimizer(degla_model), optimizer(base_model)

    def degla_step():
        out = degla_model(images, texts)
        loss = degla_loss(**out)
        opt_degla.zero_grad()
        loss.backward()
        opt_degla.step()  # the step hook runs update_teacher()

    def baseline_step():
        out = base_model(images, texts)
        with torch.no_grad():
            base_model.teacher.encode_image(images, normalize=True)
            base_model.teacher.encode_text(texts.reshape(-1, texts.shape[-1]), normalize=True)
        loss = negclip_loss(**out)
        opt_base.zero_grad()
        loss.backward()
        opt_base.step()

    ema.track(degla_model)  # base_model is not tracked: its steps do no EMA update
    handle = ema.install_step_hook()
    try:
        steps_before = degla_model.ema_steps
        times = time_arms({"negclip + teacher fwd": baseline_step, "degla": degla_step}, repeats, warmup)
        ema_updates = degla_model.ema_steps - steps_before
        if ema_updates != warmup + repeats:
            raise RuntimeError(f"step hook ran the EMA {ema_updates} times for {warmup + repeats} steps")
    finally:
        handle.remove()
    ema_times = time_arms({"update_teacher (fused)": degla_model.update_teacher,
                            "unfused mul_/add_ loop": unfused_ema(degla_model, degla_model.ema_decay)},
                           ema_repeats, warmup=2)
    n_params = sum(p.numel() for n, p in degla_model.named_parameters() if not n.startswith("teacher."))
    return {"model": name, "batch": batch, "K": k, "image_size": size, "student_params": n_params,
            "ema_updates_by_hook": ema_updates,
            "step": {arm: _summary(ts) for arm, ts in times.items()},
            "ema": {arm: _summary(ts) for arm, ts in ema_times.items()}}


# ------------------------------------------------------------------------------------------------ report


def _row(section, measurement, ours_s, baseline_name, baseline_s, target=None) -> dict:
    ratio = ours_s / baseline_s
    status = "info" if target is None else ("PASS" if ratio <= target else "MISS")
    return {"section": section, "measurement": measurement, "ours_ms": ours_s * 1e3, "baseline": baseline_name,
            "baseline_ms": baseline_s * 1e3, "ratio": ratio, "target": target, "status": status}


def build_rows(loss: dict, steps: list) -> list:
    arms = {name: r["median_s"] for name, r in loss["arms"].items()}
    dense_name = "dense (reference formulation)"
    rows = [_row("(a) loss fwd+bwd", name, arms[name], "dense", arms[dense_name],
                 TARGETS["loss"] if name == "ours, tgc fixed" else None)
            for name in arms if name != dense_name]
    for r in steps:
        step = {name: s["median_s"] for name, s in r["step"].items()}
        label = f"{r['model']} B={r['batch']}"
        rows.append(_row("(b) train step", f"degla, {label}", step["degla"], "negclip+teacher fwd",
                         step["negclip + teacher fwd"], TARGETS["step"]))
    for r in steps:
        label = f"{r['model']} B={r['batch']}"
        degla_step = r["step"]["degla"]["median_s"]
        fused, unfused = (r["ema"][name]["median_s"] for name in ("update_teacher (fused)", "unfused mul_/add_ loop"))
        rows.append(_row("(c) EMA / step", f"fused, {label}", fused, "degla step", degla_step, TARGETS["ema"]))
        rows.append(_row("(c) EMA / step", f"unfused loop, {label}", unfused, "degla step", degla_step))
    return rows


def print_table(rows: list) -> None:
    header = (f"{'section':<18}{'measurement':<38}{'ours ms':>10}  {'baseline':<21}{'base ms':>10}"
              f"{'ratio':>8}{'target':>9}  status")
    print(header)
    print("-" * len(header))
    for r in rows:
        target = "-" if r["target"] is None else f"<={r['target']:g}"
        print(f"{r['section']:<18}{r['measurement']:<38}{r['ours_ms']:>10.2f}  {r['baseline']:<21}"
              f"{r['baseline_ms']:>10.2f}{r['ratio']:>8.3f}{target:>9}  {r['status']}")


def _model_spec(text: str):
    name, _, batch = text.rpartition(":")
    if not name or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME:BATCH, got {text!r}")
    return name, int(batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--num-hardneg", type=int, default=4, help="K, for the loss and the steps")
    parser.add_argument("--loss-batch", type=int, default=256, help="N for (a)")
    parser.add_argument("--loss-dim", type=int, default=512, help="D for (a)")
    parser.add_argument("--loss-repeats", type=int, default=15)
    parser.add_argument("--loss-inner", type=int, default=5, help="calls per timed sample in (a)")
    parser.add_argument("--models", type=_model_spec, nargs="+", metavar="NAME:BATCH",
                        default=[("degla-tiny-ViT", 32), ("ViT-S-32-alt", 8)], help="models for (b) and (c)")
    parser.add_argument("--step-repeats", type=int, default=15)
    parser.add_argument("--ema-repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before each measurement")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_degla.json"))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    loss = bench_loss(args.loss_batch, args.num_hardneg, args.loss_dim, args.loss_repeats, args.warmup,
                      args.loss_inner)
    loss["wall_s"] = time.perf_counter() - start
    steps = []
    for name, batch in args.models:
        section_start = time.perf_counter()
        steps.append(bench_step(name, batch, args.num_hardneg, args.step_repeats, args.warmup, args.ema_repeats))
        steps[-1]["wall_s"] = time.perf_counter() - section_start
    rows = build_rows(loss, steps)
    config = dict(vars(args), models=[f"{name}:{batch}" for name, batch in args.models])
    result = {"config": config, "torch": torch.__version__, "open_clip": open_clip.__version__,
              "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "targets": TARGETS, "table": rows, "loss": loss, "train_step": steps,
              "wall_s": time.perf_counter() - start}
    print_table(rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {result['wall_s']:.0f} s")
    write_json(result, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
