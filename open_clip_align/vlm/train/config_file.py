"""``--config FILE.yaml``: a flat YAML mapping whose keys are the trainer's long flags, turned into argv tokens.

    # stage_a.yaml                        python -m training.alignvlm --config stage_a.yaml --lr 5e-4
    train-data: /data/pixmo/captions.tsv
    vlm: smolvlm
    vlm-path: /models/SmolVLM2-500M-Video-Instruct
    batch-size: 4
    accum-freq: 8
    grad-checkpointing: true

Keys are written as on the command line, with or without the leading ``--`` and with ``-`` or ``_``. A switch
takes ``true`` / ``false``; a list flag takes a YAML list; ``null`` leaves the flag at its default. The tokens go
*before* the command line's, so a flag given there overrides the file (a switch set to true in the file cannot
be switched off there). Every problem is one line naming the file and the key.
"""
import importlib.util
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ...errors import UserError

__all__ = ["ConfigFileError", "config_file_argv", "config_path"]


class ConfigFileError(UserError):
    """A ``--config`` file that cannot be read or holds a key that is not a flag."""


def config_path(argv: Sequence[str]) -> Optional[str]:
    """The value of ``--config`` in ``argv`` (``--config F`` or ``--config=F``; the last one wins), or None."""
    found = None
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            found = argv[i + 1]
        elif token.startswith("--config="):
            found = token.split("=", 1)[1]
    return found


def _long_flags(parser) -> Dict[str, object]:
    """``{"--train-data": action, ...}`` for every long option of ``parser`` except help and --config."""
    flags = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--config"):
                flags[option] = action
    return flags


def _load(path: Path):
    if importlib.util.find_spec("yaml") is None:
        raise ConfigFileError(f"--config {path}: reading YAML needs the PyYAML package (pip install pyyaml)")
    import yaml

    if not path.is_file():
        raise ConfigFileError(f"--config {path}: {'is a folder' if path.is_dir() else 'not found'}; expected a "
                              "YAML file whose keys are long flags (train-data: ..., lr: ...)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigFileError(f"--config {path}: not UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigFileError(f"--config {path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") \
            from None


def config_file_argv(path: str, parser) -> List[str]:
    """argv tokens for the YAML mapping in ``path`` (module docstring), checked against ``parser``'s flags."""
    path = Path(path)
    data = _load(path)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of long flags to values (train-data: ...), "
                              f"got a {type(data).__name__}")
    flags = _long_flags(parser)
    tokens: List[str] = []
    for key, value in data.items():
        name = "--" + str(key).lstrip("-").replace("_", "-")
        if name == "--config":
            raise ConfigFileError(f"--config {path}: key {key!r}: a config file cannot name another one")
        action = flags.get(name)
        if action is None:
            raise ConfigFileError(f"--config {path}: key {key!r} is not a flag of training.alignvlm (keys are "
                                  "long flags such as train-data, lr, batch-size; see --help)")
        where = f"--config {path}: key {key!r}"
        if value is None:
            continue
        if isinstance(value, dict):
            raise ConfigFileError(f"{where}: expected a value, got a mapping (the file is flat: one flag per key)")
        if action.nargs == 0:
            if not isinstance(value, bool):
                raise ConfigFileError(f"{where} is a switch: expected true or false, got {value!r}")
            tokens += [name] if value else []
        elif isinstance(value, list):
            if action.nargs not in ("+", "*") and not isinstance(action.nargs, int):
                raise ConfigFileError(f"{where} takes one value, got a list")
            tokens += [name, *map(str, value)]
        else:
            tokens += [f"{name}={value}"]
    return tokens
