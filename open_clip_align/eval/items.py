"""The evaluation suite's internal format: every benchmark item is images × captions × a match matrix.

Adapters (SugarCrepe, ARO, VALSE, Winoground, ...) turn their official files into ``Item`` lists; a scorer
turns an item into a score matrix ``[n_images, n_captions]`` (``score_items``) and, where a benchmark compares
captions with each other (SugarCrepe++'s text-only task), into a text-text matrix ``[n_captions, n_captions]``
(``score_text_pairs``); each benchmark's decision rule reads those matrices.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import UserError


class EvalDataError(UserError):
    """Benchmark data is missing or malformed; the message names the file, item and what was expected."""


NPY_SUFFIX = ".npy"


def load_npy_bgr(path) -> Image.Image:
    """An RGB image from a ``.npy`` file holding a ``uint8 [H, W, 3]`` array in **BGR** channel order (OpenCV's;
    EqBen-YouCook2 frames are stored so, and the official loader reads them with
    ``Image.fromarray(np.load(path)[:, :, [2, 1, 0]], "RGB")``). Anything else is an EvalDataError naming the file."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise EvalDataError(f"cannot read image array {path}: {err}") from None
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise EvalDataError(f"image array {path}: expected uint8 [H, W, 3] (BGR), got {array.dtype} "
                            f"{list(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array[:, :, [2, 1, 0]]), "RGB")


@dataclass(frozen=True)
class ImageRef:
    """An image file, optionally cropped to ``box = (x, y, w, h)`` in pixels (ARO's bbox crop).

    Any format PIL reads, converted to RGB; a ``.npy`` file is a ``uint8 [H, W, 3]`` array stored BGR
    (``load_npy_bgr``), the only kind of array image the official benchmarks ship (EqBen-YouCook2).
    """

    path: str
    box: Optional[Tuple[float, float, float, float]] = None

    def __post_init__(self):
        # one spelling per file: "a/b/../c" is "a/c" (ShapeCrepe's Winoground pairs name the SugarCrepe images
        # through "../.."), so the scorers, which key features by ImageRef, encode a file once
        object.__setattr__(self, "path", os.path.normpath(self.path))

    def load(self) -> Image.Image:
        if self.path.endswith(NPY_SUFFIX):
            img = load_npy_bgr(self.path)
        else:
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


DIRECTIONS = ("i2t", "t2i")


@dataclass
class Item:
    """One benchmark item. ``match[i][j]`` is True iff caption j is true of image i.

    ``group`` is the unit averages are taken over (SugarCrepe subset, ARO relation, VALSE instrument);
    ``meta`` keeps anything a metric or report needs (e.g. ``bag_identical``). Several captions may be true of
    one image (SugarCrepe++: two positives). An item with one query against K candidates says which side is the
    query in ``meta["direction"]``: ``"i2t"`` (1 image × K captions, the image picks a caption) or ``"t2i"``
    (K images × 1 caption, the caption picks an image); ``query_candidates`` reads it.
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
    """The JSON document at ``path``, which must be a non-empty ``container`` (``list``, ``dict`` or both) of
    ``what``; every problem (not JSON, another type, empty) is an EvalDataError naming the file. A UTF-8
    byte-order mark is accepted."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise EvalDataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(raw, container):
        shape = {list: "a JSON list", dict: "a JSON object"}.get(container, "a JSON list or object")
        raise EvalDataError(f"{path}: expected {shape} of {what}, got {type(raw).__name__}")
    if not raw:
        raise EvalDataError(f"{path}: no {what.split(' ')[0] if what else 'items'}")
    return raw


FETCH_PROGRAM = "python -m open_clip_align.eval.fetch"


def fetch_command(name: str, dest="DIR") -> str:
    """The command that fetches benchmark ``name`` into ``dest/name`` (the opt-in fetcher; never run implicitly)."""
    return f"{FETCH_PROGRAM} {name} --dest {dest}"


def data_missing(benchmark: str, missing: str, expected: str, fetch: Optional[str] = None,
                 root=None) -> EvalDataError:
    """The error for absent benchmark data: what is missing, the layout expected (official format) and how to get
    it; with ``fetch`` (the fetcher's name for the benchmark) the command that fetches it so that ``root`` is
    ``DIR/<fetch>``."""
    if fetch is None:
        how = "Nothing is downloaded: place the official files there (see --help for each benchmark's layout)"
    else:
        dest = Path(root).parent if root is not None else "DIR"
        how = (f"Nothing is downloaded implicitly: run `{fetch_command(fetch, dest)}` (it writes {dest}/{fetch}/) "
               f"or place the official files there")
    return EvalDataError(f"{benchmark}: {missing}; expected {expected}. {how}")


def chosen_subsets(subsets: Optional[Sequence[str]], present: Sequence[str], benchmark: str, missing: str,
                   layout: str, root) -> Sequence[str]:
    """``subsets`` when given, else those ``present`` under ``root``; none present is ``data_missing`` (``missing``
    says what was looked for, ``layout`` what is expected, and the fetch command for ``benchmark`` follows)."""
    if subsets is not None:
        return subsets
    if not present:
        raise data_missing(benchmark, missing, layout, fetch=benchmark, root=root)
    return present


def read_jsonl(path) -> Iterator[Tuple[int, object]]:
    """``(line number, parsed value)`` for each non-blank line of the JSON Lines file ``path`` (a UTF-8 byte-order
    mark is accepted); a line that is not JSON is an EvalDataError naming the file and line."""
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        if line.strip():
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{path}: line {line_no} is not valid JSON ({err})") from None


def existing_image(path, where: str, field: str = "image", seen: Optional[set] = None, hint: str = "") -> ImageRef:
    """``ImageRef(path)`` once the file is checked to exist (once per path when ``seen`` collects the checked ones);
    else an EvalDataError naming ``where`` (file and item), the ``field`` and the path, plus ``hint`` (where images
    are looked for)."""
    path = Path(path)
    if seen is None or path not in seen:
        if not path.is_file():
            raise EvalDataError(f"{where} names {field} {path}, which does not exist" + (f" ({hint})" if hint else ""))
        if seen is not None:
            seen.add(path)
    return ImageRef(str(path))


def require_file(path, benchmark: str, expected: str, fetch: Optional[str] = None, root=None) -> None:
    """Raise ``data_missing`` (which file is expected where, in which official format, and the fetch command when
    ``fetch`` is given) unless ``path`` is a file."""
    if not Path(path).is_file():
        raise data_missing(benchmark, f"{path} not found", expected, fetch, root)


def query_candidates(item: Item, scores) -> Tuple[object, int]:
    """``(candidate scores [K], target index)`` of a one-query item (``meta["direction"]``): ``"i2t"`` reads row 0
    of ``scores [1, K]`` and the caption true of the image; ``"t2i"`` reads column 0 of ``scores [K, 1]`` and the
    image the caption is true of. Raises ValueError unless exactly one candidate is the target."""
    direction = item.meta.get("direction")
    if direction not in DIRECTIONS:
        raise ValueError(f"item {item.id}: meta['direction'] must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "i2t":
        candidates, truth = scores[0], list(item.match[0])
    else:
        candidates, truth = scores[:, 0], [row[0] for row in item.match]
    if sum(map(bool, truth)) != 1 or len(truth) != len(candidates):
        raise ValueError(f"item {item.id}: a one-query item needs exactly one true candidate among "
                         f"{len(candidates)} scores, got match {truth}")
    return candidates, truth.index(True)
