"""A training run's folder ``<logs>/<name>``: its name, its creation, its log (``out.log`` + the console) and the
pruning of old checkpoints. Only rank 0 writes in it."""
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import List

from tqdm import tqdm

from ..checkpoint import list_checkpoints
from .distributed import Dist
from .flags import TrainingConfigError

__all__ = ["LOG", "close_logging", "prepare_run_dir", "prune_checkpoints", "run_name", "setup_logging"]

LOG = logging.getLogger("training.alignvlm")


def run_name(args, d: Dist) -> str:
    """``--name``, or a timestamp name agreed by all ranks (rank 0's)."""
    if args.name is not None:
        return args.name
    if args.resume == "latest":
        raise TrainingConfigError("--resume latest needs the --name of the run to continue")
    return d.broadcast(time.strftime(f"%Y_%m_%d-%H_%M_%S-alignvlm-{args.connector}-stage{args.stage}"))


def prepare_run_dir(run_dir: Path, d: Dist) -> None:
    """Create the run folder (rank 0) and drop half-written checkpoints (``step_N.tmp``) of a killed run."""
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (run_dir / "checkpoints").glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    d.barrier()


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(run_dir: Path, main: bool) -> None:
    """Rank 0 logs to ``run_dir/out.log`` and the console; other ranks log nothing."""
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    handler = logging.FileHandler(run_dir / "out.log") if main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(message)s"))
    LOG.addHandler(handler)
    if main:
        LOG.addHandler(_TqdmHandler())


def close_logging() -> None:
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
        handler.close()


def prune_checkpoints(run_dir: Path, keep: int) -> List[Path]:
    """Delete all but the newest ``keep`` checkpoints (0 keeps all); returns the deleted ones."""
    if keep <= 0:
        return []
    old = list_checkpoints(run_dir)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old
