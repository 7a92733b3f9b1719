"""``--resume``: which checkpoint a run continues, whether its settings allow it, and restoring the trainer state
(optimizer, scheduler, grad scaler, step, RNG) so that the run continues exactly.

``--resume latest`` takes the newest checkpoint that loads: one whose files do not all read back (a torn write of
a killed run, a truncated copy) is passed over with one log line naming it and why. An explicit checkpoint path
that does not load is an error naming the file.
"""
import random
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch

from ...errors import one_line
from ..checkpoint import (CheckpointError, list_checkpoints, read_run_config, recorded_model_config,
                          resolve_checkpoint, verify_checkpoint)
from .flags import TrainingConfigError

__all__ = ["RESUME_DEFAULTS", "RESUME_KEYS", "check_resume_settings", "resolve_resume", "restore_trainer_state",
           "rng_state", "set_rng_state"]

# Flags that define the optimisation trajectory: --resume refuses a run whose values differ.
RESUME_KEYS = ("train_data", "dataset_type", "csv_img_key", "csv_caption_key", "csv_separator", "image_root",
               "train_num_samples", "batch_size", "world_size", "steps", "epochs", "lr", "w2_lr_mult", "wd",
               "warmup", "seed", "precision", "init_from", "accum_freq", "vocab_subset")
# Values of keys added after a checkpoint was written: it ran with these.
RESUME_DEFAULTS = {"accum_freq": 1, "vocab_subset": None}


def resolve_resume(spec: str, run_dir: Path) -> Tuple[Path, dict, List[str]]:
    """``(checkpoint, its trainer state, log lines for the checkpoints passed over)``.

    ``spec`` is ``"latest"`` (the newest checkpoint of ``run_dir`` that loads) or a checkpoint / run folder
    (which must load).
    """
    if spec != "latest":
        path = resolve_checkpoint(spec)
        return path, verify_checkpoint(path), []
    found = list_checkpoints(run_dir)
    if not found:
        resolve_checkpoint("latest", run_dir)  # raises: no checkpoint
    skipped, reasons = [], []
    for path in reversed(found):
        try:
            return path, verify_checkpoint(path), skipped
        except CheckpointError as err:
            reasons.append(one_line(err))
            skipped.append(f"--resume latest: skipping {path}: it does not load ({reasons[-1]})")
    raise CheckpointError(f"--resume latest: none of the {len(found)} checkpoint(s) in {run_dir / 'checkpoints'} "
                          f"loads (the newest: {reasons[0]})")


def check_resume_settings(resume: Path, training: dict, model_config: dict) -> None:
    """Refuse to resume ``resume`` with other trajectory flags or another model (one line listing them)."""
    saved = read_run_config(resume)
    saved_model = recorded_model_config(saved)
    saved_training = saved.get("training") or {}
    diff = [f"--{k.replace('_', '-')} {saved_training.get(k, RESUME_DEFAULTS.get(k))!r} -> {training.get(k)!r}"
            for k in RESUME_KEYS if saved_training.get(k, RESUME_DEFAULTS.get(k)) != training.get(k)]
    diff += [f"model setting {k}: {saved_model.get(k)!r} -> {v!r}" for k, v in model_config.items()
             if saved_model.get(k) != v]
    if diff:
        raise TrainingConfigError(f"--resume {resume}: the run used other settings ({'; '.join(diff)})")


def restore_trainer_state(resume: Path, state: dict, optimizer, scheduler, scaler) -> int:
    """Load the optimizer, scheduler, scaler and RNG states; returns the step to continue from."""
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"--resume {resume}: its trainer_state.pt does not fit this model's optimizer "
                              f"({err})") from None
    set_rng_state(state["rng"])
    return int(state["step"])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

