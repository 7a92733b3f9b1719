"""One user-error class and one console runner for every command of this package.

A ``UserError`` is a mistake of the person at the keyboard (a flag, a file, a row): the runner prints it as one
line, ``<prog>: error: <message>``, and exits with status 2, as argparse does. Everything else (a bug, a
``RuntimeError`` from torch, running out of memory) keeps its traceback: it is never dressed up as a user error.
Ctrl-C prints one line and exits 130.
"""
import logging
import sys
from typing import Callable, Optional, Tuple, Type


class UserError(ValueError):
    """Bad input from the user; the message names the flag, file or row and what was expected."""


class UsageError(UserError):
    """A flag combination a command cannot run; the message says which flags and what to do."""


def one_line(err: BaseException) -> str:
    """The error's message on one line; for one re-raised from a DataLoader worker (whose message carries the
    worker's traceback), the original error's own message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(err).__name__}: "
        text = last[last.index(prefix) + len(prefix):] if prefix in last else last
    return " ".join(text.split())


def run_cli(entry: Callable[[], Optional[int]], prog: str, interrupted: str = "",
            also: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run ``entry()`` as a console command and return its status (None = 0), for ``sys.exit``.

    ``UserError`` (and the ``also`` types, e.g. ``OSError`` for a command whose failures there are the user's
    disk or paths) becomes one line and ``SystemExit(2)``; Ctrl-C one line (``interrupted`` says what was kept)
    and ``SystemExit(130)``.
    """
    try:
        status = entry()
    except (UserError, *also) as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        sys.exit(130)
    finally:  # open_clip_train sets every logger to INFO; keep torch's exit-time stats dump off the console
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch"):
                logging.getLogger(name).setLevel(logging.WARNING)
    return status or 0
