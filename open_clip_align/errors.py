"""One user-error class and one console runner for every command of this package.

A ``UserError`` is a mistake of the person at the keyboard (a flag, a file, a row): the runner prints it as one
line, ``<prog>: error: <message>``, and exits with status 2, as argparse does. Everything else (a bug, a
``RuntimeError`` from torch, running out of memory) keeps its traceback: it is never dressed up as a user error.
Ctrl-C prints one line and exits 130.
"""
import logging
import sys
from typing import Callable, NoReturn, Optional


class UserError(ValueError):
    """Bad input from the user; the message names the flag, file or row and what was expected."""


class UsageError(UserError):
    """A flag combination a command cannot run; the message says which flags and what to do."""


def run_cli(entry: Callable[[], Optional[int]], prog: str, interrupted: str = "") -> NoReturn:
    """Run ``entry()`` as a console command: its return value (None = 0) is the exit status."""
    try:
        status = entry()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        sys.exit(130)
    finally:  # open_clip_train sets every logger to INFO; keep torch's exit-time stats dump off the console
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch"):
                logging.getLogger(name).setLevel(logging.WARNING)
    sys.exit(status or 0)
