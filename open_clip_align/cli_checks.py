"""Command-line input checks shared by this package's own CLIs (AlignVLM, ComAlign, negatives, ShapeCrepe, export).

A user error must become one line that names the flag or file and says what was expected, before any work is
done. These helpers return that line (or None) so each CLI raises it as its own user-error class:

* ``non_finite_flags``: every float flag (or list of floats) holding NaN or ±Inf; numbers like these train or
  evaluate to NaN without any other error;
* ``range_problem``: a number outside the range its flag allows (``--batch-size 0``, ``--workers -1``);
* ``output_problem``: an output path that cannot be written (a file where a folder is needed, a read-only
  folder), checked with a probe file before an evaluation spends minutes and then fails to save;
* ``console_logging``: this package's INFO lines (e.g. the QuickGELU switch of ``models.activation``) and
  everyone's warnings on stderr, without other libraries' INFO chatter.
"""
import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Mapping, Optional, Union

__all__ = ["console_logging", "device_problem", "flag", "integer_at_least", "non_finite_flags", "output_problem",
           "range_problem", "range_problems"]

_OWN_DIRS = tuple(str(p) + os.sep for p in (Path(__file__).resolve().parent,
                                              Path(__file__).resolve().parents[1] / "training"))


def flag(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def integer_at_least(minimum: int):
    """argparse ``type``: an integer >= ``minimum`` (argparse reports "argument --flag: expected an integer >= M,
    got V" in one line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _floats(value) -> List[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, float)]
    return []


def non_finite_flags(args) -> Optional[str]:
    """One line naming the first float flag of the parsed ``args`` (a Namespace) that holds NaN or ±Inf."""
    for dest, value in vars(args).items():
        bad = [v for v in _floats(value) if not math.isfinite(v)]
        if bad:
            return f"{flag(dest)} must be a finite number, got {bad[0]}"
    return None


def range_problem(name: str, value: Union[int, float, None], minimum: Optional[float] = None,
                  maximum: Optional[float] = None, below: Optional[float] = None) -> Optional[str]:
    """``"--name must be at least M, got V"`` (or at most / below) when ``value`` is out of range; None when it
    is fine or unset. ``below`` is an exclusive upper bound."""
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if minimum is not None and v < minimum:
            return f"{name} must be at least {minimum:g}, got {v:g}"
        if maximum is not None and v > maximum:
            return f"{name} must be at most {maximum:g}, got {v:g}"
        if below is not None and v >= below:
            return f"{name} must be below {below:g}, got {v:g}"
    return None


def range_problems(args, minimums: Mapping[str, float]) -> Optional[str]:
    """The first ``range_problem`` of ``{dest: minimum}`` over the parsed ``args``."""
    for dest, minimum in minimums.items():
        problem = range_problem(flag(dest), getattr(args, dest), minimum)
        if problem:
            return problem
    return None


def device_problem(name: str, value: Optional[str]) -> Optional[str]:
    """Why ``value`` of the device flag ``name`` cannot be used here (not a torch device, or CUDA without a GPU)."""
    import torch

    if value is None:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        return f"{name} {value}: expected cpu, cuda or cuda:N"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"{name} {value} but no GPU is available; use {name} cpu"
    return None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_problem(path: Union[str, os.PathLike], name: str, directory: bool = False) -> Optional[str]:
    """Why ``path`` (given with flag ``name``) cannot be written, or None.

    ``directory=True``: the path is a folder to create or fill; else a file to create or replace. The deepest
    existing folder on the path must be a folder in which a probe file can be created (removed at once), so
    read-only places are found even for root; nothing else is created.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            return f"{name} {path}: exists and is not a folder (expected a folder for the outputs)"
        if not directory and path.is_dir():
            return f"{name} {path}: is a folder (expected a file path)"
        where = path if path.is_dir() else path.absolute().parent
    else:
        where = _existing_ancestor(path.absolute().parent)
        if not where.is_dir():
            return f"{name} {path}: {where} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".write-probe-")
    except OSError as err:
        return f"{name} {path}: cannot write in {where} ({err.strerror or err})"
    os.close(fd)
    os.unlink(probe)
    return None


class _OursOrWarnings(logging.Filter):
    """Pass this package's records at any level and everyone else's warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or os.path.realpath(record.pathname).startswith(_OWN_DIRS)


def console_logging() -> None:
    """Show this package's INFO lines and every library's warnings on stderr, when nothing set up logging yet.

    The root logger goes to INFO so that ``logging.info`` calls of this package are emitted; a filter keeps
    other libraries' INFO lines (open_clip's "Loading pretrained ...") off the console. A root logger that
    already has handlers (an application's or pytest's own set-up) is left alone.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_OursOrWarnings())
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
