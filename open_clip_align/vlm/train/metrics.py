"""What a run logs per logged step: ``metrics.jsonl`` (one JSON object per line: step, epoch, loss, lr, samples/s
and, for ALIGN, the entropy, max-probability and top-100 mass of P), the log line, and optionally TensorBoard
(``<run>/tensorboard``) and Weights & Biases (``--report-to``; wandb reads WANDB_PROJECT / WANDB_MODE as usual)."""
import json
import math
from pathlib import Path
from typing import Optional

import torch

from ..connector import probability_stats

__all__ = ["MetricsLog", "Reporters", "step_record"]


def step_record(step: int, epoch: int, loss: float, lr: float, samples_per_s: float,
                probs: Optional[torch.Tensor]) -> dict:
    """The metrics of one logged step; ``probs`` (ALIGN's P ``[..., S]``) adds ``p_entropy``, ``p_max_prob``,
    ``p_top100_mass``."""
    record = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "samples_per_s": samples_per_s}
    if probs is not None:
        record.update({f"p_{k}": v for k, v in probability_stats(probs).items()})
        record["p_uniform_entropy"] = math.log(probs.shape[-1])
    return record


def log_line(record: dict, total: int) -> str:
    text = ""
    if "p_entropy" in record:
        text = (f" | P entropy {record['p_entropy']:.3f} (uniform {record['p_uniform_entropy']:.3f}) "
                f"max {record['p_max_prob']:.4f} top100 {record['p_top100_mass']:.3f}")
    return (f"step {record['step']}/{total} | epoch {record['epoch']} | loss {record['loss']:.4f} | lr "
            f"{record['lr']:.3g}{text} | {record['samples_per_s']:.1f} samples/s")


def _logged_step(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """``<run>/metrics.jsonl``, appended one whole line per logged step."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: v for k, v in record.items() if k != "p_uniform_entropy"}) + "\n")

    def trim(self, step: int) -> None:
        """Drop lines after ``step`` (an interrupted run logged them; the resumed run logs them again) and a line
        torn by the interruption."""
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if (logged := _logged_step(line)) is not None and logged <= step]
            self.path.write_text("".join(line + "\n" for line in kept))


class Reporters:
    """The ``--report-to`` sinks (rank 0 only): TensorBoard scalars under ``train/<key>`` and/or a wandb run named
    after the run folder, with the run config. The packages were checked when the flags were parsed."""

    def __init__(self, names: str, run_dir: Path, run_config: dict, resumed_step: int):
        self.tensorboard = self.wandb = None
        wanted = [n for n in names.split(",") if n]
        if "tensorboard" in wanted:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resumed_step + 1
                                             if resumed_step else None)
        if "wandb" in wanted:
            import wandb

            self.wandb = wandb.init(name=Path(run_dir).name, dir=str(run_dir), config=run_config)

    def log(self, record: dict) -> None:
        scalars = {k: v for k, v in record.items() if k not in ("step", "p_uniform_entropy")
                   and isinstance(v, (int, float))}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(f"train/{key}", value, record["step"])
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
