"""``--import MODULE[,MODULE...]``: user modules that register methods, model configs or benchmarks.

``training.main`` (on every torchrun rank) and the evaluation CLI import them before building their parsers, so
what they register is usable by name and its flags appear in ``--help``.
"""
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import List, Sequence

from .errors import UsageError


def _import_one(spec: str) -> None:
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"--import {spec}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
        return
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    importlib.import_module(spec)


def import_user_modules(argv: Sequence[str]) -> List[str]:
    """Import the modules named by ``--import`` (before any parser is built) and return ``argv`` without them.

    A module that fails to import is one ``UsageError`` line naming it and the exception; an error raised by its
    own code keeps the exception's first line, so the user sees where to look.
    """
    argv, rest, modules = list(argv), [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--import":
            if i + 1 >= len(argv):
                raise UsageError("argument --import: expected MODULE[,MODULE...]")
            modules += argv[i + 1].split(",")
            i += 2
            continue
        if arg.startswith("--import="):
            modules += arg.split("=", 1)[1].split(",")
        else:
            rest.append(arg)
        i += 1
    for spec in filter(None, (m.strip() for m in modules)):
        try:
            _import_one(spec)
        except UsageError:
            raise
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UsageError(f"--import {spec}: {type(err).__name__}: {first}") from None
    return rest
