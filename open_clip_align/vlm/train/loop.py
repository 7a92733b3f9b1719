"""The AlignVLM training run: set-up (checks, run folder, model, data, optimizer, resume) and the step loop.

One optimizer step = ``--accum-freq`` batches of ``--batch-size`` per process: the micro-batch losses are weighted
by their caption tokens, so the step equals one batch of ``accum x batch`` (exactly, up to float rounding); under
DDP only the last micro-batch synchronises gradients. Checkpoints (rank 0) every ``--save-every`` steps and at
the end; metrics every ``--log-every`` steps.
"""
import contextlib
import random
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ...models.activation import activation_name
from ..caption_data import CaptionShardLoader, CaptionTableLoader, check_shards, read_caption_table
from ..checkpoint import checkpoint_path, list_checkpoints, resolve_checkpoint, save_checkpoint
from ..layout import IGNORE_INDEX
from ..smolvlm import SMOLVLM
from ..vocab_subset import calibrate_vocab_subset, read_vocab_subset, top_n
from .distributed import Dist
from .flags import TrainingConfigError, parse_args
from .metrics import MetricsLog, Reporters, log_line, step_record
from .model_setup import build, check_model_flags, model_config, tower_force_quick_gelu
from .optim import cosine_with_warmup, make_optimizer
from .resume import RESUME_KEYS, check_resume_settings, resolve_resume, restore_trainer_state, rng_state
from .run_dir import LOG, close_logging, prepare_run_dir, prune_checkpoints, run_name, setup_logging

__all__ = ["main", "train"]

CALIBRATION_BATCHES = 8    # --vocab-subset top-N: mean P over this many first batches of the run (per process)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run one training job; returns a summary (run_dir, checkpoint, steps, losses)."""
    args = parse_args(argv)
    d = Dist(args.device, TrainingConfigError)
    try:
        return train(args, d)
    finally:
        close_logging()
        d.close()


def _check_precision(args, device: torch.device) -> None:
    if args.precision == "amp" and device.type != "cuda":
        raise TrainingConfigError("--precision amp (fp16 autocast) needs a GPU; on CPU use --precision fp32")
    if args.precision == "amp_bf16" and device.type == "cpu":
        LOG.warning("--precision amp_bf16 on CPU: bf16 autocast is usually slower than fp32 on CPUs")


def _check_data(args, d: Dist):
    """Validate the training data before any model is built: the table's rows, or the shard list."""
    if args.dataset_type == "wds":
        check_shards(args.train_data, args.batch_size, args.train_num_samples, d.world, args.workers)
        return None
    return read_caption_table(args.train_data, args.csv_img_key, args.csv_caption_key, args.csv_separator,
                              args.image_root)


def _loader(args, records, preprocess, batcher, d: Dist):
    common = dict(batch_size=args.batch_size, world_size=d.world, rank=d.rank, seed=args.seed, workers=args.workers)
    if args.dataset_type == "wds":
        return CaptionShardLoader(args.train_data, preprocess, batcher, num_samples=args.train_num_samples, **common)
    return CaptionTableLoader(records, preprocess, batcher, **common)


def _apply_vocab_subset(args, model, loader, d: Dist) -> None:
    """``--vocab-subset``: the file's ids, or the top-N of the first batches' mean P (all ranks agree)."""
    n = top_n(args.vocab_subset)
    if n is None:
        ids = read_vocab_subset(args.vocab_subset, model.connector.vocab_size)
    else:
        loader.set_epoch(0, 0)
        batches = (b for _, b in zip(range(min(CALIBRATION_BATCHES, loader.steps_per_epoch)), loader))
        ids = calibrate_vocab_subset(model, batches, n, d.device,
                                     all_reduce=dist.all_reduce if d.world > 1 else None)
    model.connector.set_vocab_subset(ids)
    LOG.info(f"--vocab-subset {args.vocab_subset}: ALIGN's softmax over {ids.numel()} of "
             f"{model.connector.vocab_size} tokens")


def _label_tokens(batch: dict) -> int:
    """Tokens that carry the loss in a batch (labels after the LM's one-position shift)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _describe(args, config: dict, model) -> str:
    if config.get("vlm") == SMOLVLM:
        return (f"connector {args.connector} inside {config['vlm_path']} ({type(model.vlm).__name__}, pixel shuffle "
                f"x{model.scale_factor}, vision {model.vision_activation})")
    return (f"connector {args.connector}, tower {args.model} ({activation_name(model.visual)}"
            f"{', force_quick_gelu' if config['force_quick_gelu'] else ''}), lm {args.lm}")


def train(args, d: Dist) -> dict:
    _check_precision(args, d.device)
    run_dir = Path(args.logs) / run_name(args, d)
    resume, resume_state, skipped = None, None, []
    if args.resume is not None:
        resume, resume_state, skipped = resolve_resume(args.resume, run_dir)
    elif list_checkpoints(run_dir):
        raise TrainingConfigError(f"{run_dir} already has checkpoints; pass --resume latest to continue it or "
                                  "choose another --name")
    init = resolve_checkpoint(args.init_from) if args.init_from and resume is None else None
    check_model_flags(args)
    records = _check_data(args, d)
    prepare_run_dir(run_dir, d)
    setup_logging(run_dir, d.main)
    for line in skipped:
        LOG.warning(line)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    config = model_config(args, tower_force_quick_gelu(args, resume or init))
    model, tokenizer, preprocess = build(config, resume or init)
    if args.grad_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(d.device)
    loader = _loader(args, records, preprocess, model.training_collate(tokenizer, args.prompt,
                                                                       args.max_caption_tokens), d)
    accum = args.accum_freq
    steps_per_epoch = loader.steps_per_epoch // accum
    if steps_per_epoch < 1:
        raise TrainingConfigError(f"--accum-freq {accum}: an epoch has {loader.steps_per_epoch} batch(es) per "
                                  "process, fewer than one optimizer step; lower --accum-freq or --batch-size")
    if args.vocab_subset is not None and resume is None:
        _apply_vocab_subset(args, model, loader, d)
    total = args.steps or args.epochs * steps_per_epoch
    warmup = args.warmup if args.warmup is not None else max(1, round(0.03 * total))
    training = {k: getattr(args, k) for k in RESUME_KEYS if k != "world_size"}
    training.update(world_size=d.world, stage=args.stage, total_steps=total, warmup_steps=warmup,
                    steps_per_epoch=steps_per_epoch)
    run_config = {"model": config, "training": training}

    optimizer = make_optimizer(model, args.lr, args.wd, args.w2_lr_mult)
    scheduler = cosine_with_warmup(optimizer, warmup, total)
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "amp")
    metrics = MetricsLog(run_dir)
    step = 0
    if resume is not None:
        check_resume_settings(resume, training, config)
        step = restore_trainer_state(resume, resume_state, optimizer, scheduler, scaler)
        if d.main:
            metrics.trim(step)

    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    LOG.info(f"AlignVLM stage {args.stage} ({config['lm_training']} LM), {_describe(args, config, model)}: "
             f"{n_train:,} trainable parameters; {loader.num_samples} samples, "
             f"{steps_per_epoch} steps/epoch x {d.world} process(es)"
             + (f" (accumulating {accum} batches of {args.batch_size} per step)" if accum > 1 else "")
             + f", {total} steps (warm-up {warmup}), lr {args.lr:g}, device {d.device}, precision {args.precision}"
             + (", gradient checkpointing" if args.grad_checkpointing else "")
             + (f"; resumed from {resume} at step {step}" if resume else "")
             + (f"; initialised from {init}" if init else ""))
    reporters = Reporters(args.report_to, run_dir, run_config, step) if d.main else None
    try:
        losses = _loop(args, d, model, tokenizer, loader, optimizer, scheduler, scaler, metrics, reporters,
                       run_dir, run_config, step, total, steps_per_epoch)
    finally:
        if reporters is not None:
            reporters.close()
    final = checkpoint_path(run_dir, total)
    LOG.info(f"done: {total} steps; checkpoint {final}")
    return {"run_dir": str(run_dir), "checkpoint": str(final), "steps": total, "losses": losses}


def _loop(args, d: Dist, model, tokenizer, loader, optimizer, scheduler, scaler, metrics: MetricsLog,
          reporters: Optional[Reporters], run_dir: Path, run_config: dict, step: int, total: int,
          steps_per_epoch: int) -> List[float]:
    """Optimizer steps ``step+1 .. total``; returns the logged losses."""
    wrapped = model
    if d.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None, broadcast_buffers=False)
    amp_dtype = {"amp": torch.float16, "amp_bf16": torch.bfloat16}.get(args.precision)
    accum = args.accum_freq

    def micro_step(batches: List[dict]):
        """Forward + backward over the step's micro-batches; returns (loss, the last micro-batch's P)."""
        optimizer.zero_grad(set_to_none=True)
        counts = [_label_tokens(b) for b in batches] if accum > 1 else [1]
        weights = [c / sum(counts) for c in counts]
        loss_sum, probs = 0.0, None
        for i, batch in enumerate(batches):
            batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
            sync = wrapped.no_sync() if d.world > 1 and i < len(batches) - 1 else contextlib.nullcontext()
            with sync:
                with torch.autocast(d.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss, probs = wrapped(**batch, return_probs=True)
                scaler.scale(loss if accum == 1 else loss * weights[i]).backward()
            loss_sum = loss_sum + loss.detach() * weights[i]
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return loss_sum, probs

    losses = []
    model.train()
    bar = tqdm(total=total, initial=step, desc="AlignVLM", unit="step", disable=not d.main, dynamic_ncols=True)
    last_time, last_step = time.perf_counter(), step
    while step < total:
        epoch, done = divmod(step, steps_per_epoch)
        loader.set_epoch(epoch, done * accum)
        pending: List[dict] = []
        for batch in loader:
            pending.append(batch)
            if len(pending) < accum:
                continue
            loss, probs = micro_step(pending)
            pending = []
            step += 1
            bar.update(1)
            if step % args.log_every == 0 or step == total:
                now = time.perf_counter()
                record = step_record(step, epoch, d.mean(loss.item()), optimizer.param_groups[0]["lr"],
                                     (step - last_step) * args.batch_size * accum * d.world / (now - last_time), probs)
                last_time, last_step = now, step
                losses.append(record["loss"])
                if d.main:
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    LOG.info(log_line(record, total))
                    metrics.append(record)
                    if reporters is not None:
                        reporters.log(record)
            if step % args.save_every == 0 or step == total:
                if d.main:
                    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "scaler": scaler.state_dict(), "rng": rng_state()}
                    saved = save_checkpoint(checkpoint_path(run_dir, step), model, tokenizer,
                                            {**run_config, "step": step}, state)
                    prune_checkpoints(run_dir, args.keep_last)
                    LOG.info(f"saved {saved}")
                d.barrier()
            if step >= total or step % steps_per_epoch == 0:
                break
    bar.close()
    return losses
