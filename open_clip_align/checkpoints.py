"""Kill-safe checkpoints for ``training.main``: atomic saves, and a ``--resume latest`` that skips broken files.

open_clip_train saves ``epoch_N.pt`` with ``torch.save`` straight under its final name, so a process killed
during a save leaves a torn file; ``--resume latest`` (its ``get_latest_checkpoint``: the natural-sort last
``*.pt`` under the checkpoint folder) then picks that file and crashes on it. ``training_hooks`` installs
``patches(open_clip_train.main)`` for one run:

* ``atomic_save`` is the ``torch.save`` that ``open_clip_train.main`` calls (``epoch_N.pt``, ``epoch_latest.pt``
  and its ``tmp.pt``): the object goes to a hidden temp file in the same folder (``.epoch_N.pt.<pid>.<hex>.tmp``),
  which is fsync'd and renamed over the final name; the folder is fsync'd after the rename. A kill mid-save
  leaves the previous files as they were plus that temp file, which no ``*.pt`` pattern matches.
* ``latest_loadable`` replaces ``get_latest_checkpoint`` for local folders: the same candidates, newest first,
  and the first one that loads (``models.factory.unreadable_checkpoint``, memory-mapped, so probing is cheap);
  each file skipped is one warning naming it, leftover temp files one info line.
"""
import functools
import glob
import logging
import os
import secrets
import types
from typing import Callable, List, Optional

import torch

from .models.factory import unreadable_checkpoint

TEMP_SUFFIX = ".tmp"


def temp_path(path: str) -> str:
    """A fresh hidden name beside ``path`` for writing it: ``<dir>/.<name>.<pid>.<hex>.tmp``."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def fsync_path(path: str) -> None:
    """Flush ``path`` (a file or a folder) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)`` on a temp file beside ``path``, fsync it, rename it to ``path`` and fsync the folder.

    On any error (or Ctrl-C) the temp file is removed and ``path`` is untouched; a SIGKILL leaves the temp file
    (hidden, ``*.tmp``) and ``path`` untouched. The temp file is created with the usual permissions (0666 less
    the umask), as a plain ``open`` would make ``path``.
    """
    path = os.fspath(path)
    tmp = temp_path(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(os.path.dirname(os.path.abspath(path)))


def atomic_save(obj, f, *args, **kwargs) -> None:
    """``torch.save(obj, f)``, atomic when ``f`` is a path (``atomic_write``); file objects are passed through."""
    if not isinstance(f, (str, os.PathLike)):
        return torch.save(obj, f, *args, **kwargs)
    atomic_write(f, lambda tmp: torch.save(obj, tmp, *args, **kwargs))


class _TorchWithAtomicSave(types.ModuleType):
    """``torch`` as one module sees it: every attribute is torch's own, except ``save`` (``atomic_save``)."""

    def __init__(self):
        super().__init__("torch")
        self.save = atomic_save

    def __getattr__(self, name):
        return getattr(torch, name)


def leftover_temp_files(folder: str) -> List[str]:
    """Temp files of saves that never finished (killed) in ``folder``."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), f".*.pt.*{TEMP_SUFFIX}")))


def latest_loadable(original: Callable, natural_key: Callable, path: str, remote: bool) -> Optional[str]:
    """open_clip_train's ``get_latest_checkpoint(path, remote)`` that returns the newest checkpoint that loads.

    Local folders: the candidates upstream considers (``path + '**/*.pt'``, natural sort), newest first; a file
    that does not load is skipped with one warning naming it and why. Remote folders go to ``original``.
    """
    if remote:
        return original(path, remote)
    leftovers = leftover_temp_files(path)
    if leftovers:
        logging.info(f"--resume latest: ignoring {len(leftovers)} temp file(s) of interrupted saves (safe to "
                     f"delete): {', '.join(leftovers)}")
    for candidate in sorted(glob.glob(path + "**/*.pt", recursive=True), key=natural_key, reverse=True):
        problem = unreadable_checkpoint(candidate)
        if problem is None:
            return candidate
        logging.warning(f"--resume latest: skipping {problem}; trying an older checkpoint")
    return None


def patches(train_main) -> list:
    """``(owner, name, value)`` patches of ``open_clip_train.main`` for ``training_hooks``."""
    return [(train_main, "torch", _TorchWithAtomicSave()),
            (train_main, "get_latest_checkpoint", functools.partial(
                latest_loadable, train_main.get_latest_checkpoint, train_main.natural_key))]
