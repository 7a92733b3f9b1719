"""The evaluation suite's internal format: every benchmark item is images × captions × a match matrix.

Adapters (SugarCrepe, ARO, VALSE, Winoground, ...) turn their official files into ``Item`` lists; a scorer
turns an item into a score matrix ``[n_images, n_captions]``; each benchmark's decision rule reads that matrix.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from ..errors import UserError


class EvalDataError(UserError):
    """Benchmark data is missing or malformed; the message names the file, item and what was expected."""


@dataclass(frozen=True)
class ImageRef:
    """An image file, optionally cropped to ``box = (x, y, w, h)`` in pixels (ARO's bbox crop)."""

    path: str
    box: Optional[Tuple[float, float, float, float]] = None

    def load(self) -> Image.Image:
        try:
            with Image.open(self.path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as err:
            raise EvalDataError(f"cannot read image {self.path}: {err}") from None
        if self.box is not None:
            x, y, w, h = self.box
            img = img.crop((x, y, x + w, y + h))
        return img

    def key(self) -> str:
        return self.path if self.box is None else f"{self.path}#{','.join(f'{v:g}' for v in self.box)}"


@dataclass
class Item:
    """One benchmark item. ``match[i][j]`` is True iff caption j is true of image i.

    ``group`` is the unit averages are taken over (SugarCrepe subset, ARO relation, VALSE instrument);
    ``meta`` keeps anything a metric or report needs (e.g. ``bag_identical``).
    """

    id: str
    images: List[ImageRef]
    captions: List[str]
    match: Sequence[Sequence[bool]]
    group: str = ""
    meta: Dict = field(default_factory=dict)


def json_type(value) -> str:
    """How a JSON value reads in an error message: ``null``, ``true``, ``number 3``, ``a list``, ``string 'x'``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    return f"{type(value).__name__} {str(value)[:60]!r}"


def text_field(entry: dict, field: str, where: str) -> str:
    """``entry[field]`` when it is a non-empty string, else EvalDataError naming ``where`` (file and item), the
    field and what it holds (a SugarCrepe caption of 3 or null must not reach the tokenizer)."""
    value = entry[field]
    if not isinstance(value, str) or not value.strip():
        raise EvalDataError(f"{where}: {field!r} must be a non-empty string, got {json_type(value)}")
    return value


def read_json(path, container: type, what: str):
    """The JSON document at ``path``, which must be a non-empty ``container`` (``list`` or ``dict``) of
    ``what``; every problem (not JSON, another type, empty) is an EvalDataError naming the file. A UTF-8
    byte-order mark is accepted."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise EvalDataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(raw, container):
        shape = "a JSON list" if container is list else "a JSON object"
        raise EvalDataError(f"{path}: expected {shape} of {what}, got {type(raw).__name__}")
    if not raw:
        raise EvalDataError(f"{path}: no {what.split(' ')[0] if what else 'items'}")
    return raw


def require_file(path, benchmark: str, expected: str) -> None:
    """Raise EvalDataError saying which file is expected where, in which official format."""
    from pathlib import Path

    if not Path(path).is_file():
        raise EvalDataError(f"{benchmark}: {path} not found; expected {expected}. Nothing is downloaded: "
                            f"place the official files there (see --help for each benchmark's layout)")
