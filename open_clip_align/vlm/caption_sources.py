"""Image-caption sources as they exist on disk, read row by row (streaming) into :class:`SourceRow` s.

* ``pixmo-cap`` (allenai/pixmo-cap): parquet or JSONL rows with ``caption`` and ``image_url`` (the release) or
  ``image_path`` (an image already on disk, e.g. the seed's download script output). URLs are fetched by the
  converter only with ``--download``.
* ``localized-narratives``: the_cauldron's ``localized_narratives`` parquet (``images``: a list of
  ``{"bytes", "path"}``; ``texts``: a list of ``{"user", "assistant", "source"}``, the caption is ``assistant``),
  or Google's Localized Narratives JSONL release (``dataset_id``, ``image_id``, ``caption``; the image file is
  found under ``--image-root`` with ``--image-pattern``, by default ``{image_id:0>12}.jpg`` for COCO ids and
  ``{image_id}.jpg`` otherwise).
* ``coco-karpathy``: Karpathy's ``dataset_coco.json`` (``images`` with ``filepath``, ``filename``, ``split``,
  ``sentences[].raw``; ``--split`` picks splits) or a BLIP-format split file (``[{"image", "caption"}]``).

A row that does not have what its format needs raises :class:`CaptionSourceError` naming the file and row (parquet
and JSON rows count from 1, JSONL rows are line numbers).
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from ..errors import UserError

__all__ = ["CaptionSourceError", "SOURCES", "SourceRow", "read_rows", "source_row"]

SOURCES = ("pixmo-cap", "localized-narratives", "coco-karpathy")


class CaptionSourceError(UserError):
    """A source file or row that is not in the expected format; the message names the file and row."""


@dataclass
class SourceRow:
    """One source row: its captions (one output sample each) and its image, given as exactly one of a file
    path, embedded bytes or a URL."""
    where: str
    captions: List[str]
    image_path: Optional[str] = None
    image_bytes: Optional[bytes] = None
    image_url: Optional[str] = None


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.txt", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    raise CaptionSourceError(f"{path}: unknown file type; expected .parquet, .jsonl or .json")


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CaptionSourceError("reading parquet files needs the pyarrow package (pip install pyarrow)") from None
    return pq


def _json_rows(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CaptionSourceError(f"{path}: not UTF-8 text") from None
    except ValueError as err:
        raise CaptionSourceError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return data["images"]                      # Karpathy's dataset_coco.json
    if isinstance(data, list):
        return data
    raise CaptionSourceError(f"{path}: expected a JSON list of rows or Karpathy's {{\"images\": [...]}}")


def read_rows(path: Path, start: int = 0) -> Iterator[Tuple[int, dict, str]]:
    """``(row index, row dict, "file, row N")`` from ``start`` on; parquet in record batches (whole row groups
    before ``start`` are not read), JSONL line by line."""
    if not path.is_file():
        raise CaptionSourceError(f"{path}: {'is a folder' if path.is_dir() else 'not found'}; expected a "
                                 ".parquet, .jsonl or .json file")
    kind = _kind(path)
    if kind == "parquet":
        pq = _parquet()
        try:
            pf = pq.ParquetFile(str(path))
        except Exception as err:  # pyarrow's ArrowInvalid and friends for a file that is not parquet
            raise CaptionSourceError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from None
        first, groups = 0, []
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n <= start and not groups:
                first += n
                continue
            groups.append(g)
        index = first
        for batch in pf.iter_batches(batch_size=256, row_groups=groups):
            for row in batch.to_pylist():
                if index >= start:
                    yield index, row, f"{path}, row {index + 1}"
                index += 1
    elif kind == "jsonl":
        with open(path, encoding="utf-8", errors="strict") as f:
            for index, line in enumerate(f):
                if index < start or not line.strip():
                    continue
                where = f"{path}, line {index + 1}"
                try:
                    row = json.loads(line)
                except ValueError as err:
                    raise CaptionSourceError(f"{where}: not a JSON object ({err})") from None
                if not isinstance(row, dict):
                    raise CaptionSourceError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield index, row, where
    else:
        for index, row in enumerate(_json_rows(path)):
            if index >= start:
                if not isinstance(row, dict):
                    raise CaptionSourceError(f"{path}, row {index + 1}: expected a JSON object, got "
                                             f"{type(row).__name__}")
                yield index, row, f"{path}, row {index + 1}"


def _text(value, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CaptionSourceError(f"{where}: {field} must be a non-empty string, got {value!r:.80}")
    return " ".join(value.split())


def _under(root: Optional[str], path: str) -> str:
    return path if root is None or os.path.isabs(path) else os.path.join(root, path)


def _pixmo(row: dict, where: str, image_root: Optional[str]) -> SourceRow:
    caption = _text(row.get("caption"), where, "caption")
    if row.get("image_path"):
        return SourceRow(where, [caption], image_path=_under(image_root, str(row["image_path"])))
    if row.get("image_url"):
        return SourceRow(where, [caption], image_url=_text(row["image_url"], where, "image_url"))
    raise CaptionSourceError(f"{where}: no image_url or image_path (PixMo-Cap rows have image_url and caption)")


def _ln_pattern(dataset_id: str, pattern: Optional[str]) -> str:
    if pattern:
        return pattern
    return "{image_id:0>12}.jpg" if dataset_id.startswith("mscoco") or dataset_id.startswith("coco") \
        else "{image_id}.jpg"


def _localized_narratives(row: dict, where: str, image_root: Optional[str], pattern: Optional[str]) -> SourceRow:
    if "texts" in row or "images" in row:                     # the_cauldron
        texts, images = row.get("texts"), row.get("images")
        if not isinstance(texts, list) or not texts:
            raise CaptionSourceError(f"{where}: texts must be a non-empty list of {{user, assistant}}")
        captions = [_text(t.get("assistant") if isinstance(t, dict) else None, where, "texts[].assistant")
                    for t in texts]
        if not isinstance(images, list) or len(images) != 1:
            raise CaptionSourceError(f"{where}: images must hold exactly one image, got "
                                     f"{len(images) if isinstance(images, list) else type(images).__name__}")
        image = images[0]
        data = image.get("bytes") if isinstance(image, dict) else None
        if isinstance(data, (bytes, bytearray)) and data:
            return SourceRow(where, captions, image_bytes=bytes(data))
        if isinstance(image, dict) and image.get("path"):
            return SourceRow(where, captions, image_path=_under(image_root, str(image["path"])))
        raise CaptionSourceError(f"{where}: images[0] has neither bytes nor a path")
    if "caption" in row and "image_id" in row:                # Google's JSONL release
        caption = _text(row["caption"], where, "caption")
        dataset = str(row.get("dataset_id") or "")
        try:
            name = _ln_pattern(dataset, pattern).format(image_id=str(row["image_id"]), dataset_id=dataset)
        except (KeyError, IndexError, ValueError) as err:
            raise CaptionSourceError(f"{where}: --image-pattern does not apply ({err})") from None
        return SourceRow(where, [caption], image_path=_under(image_root, name))
    raise CaptionSourceError(f"{where}: not a Localized Narratives row (expected the_cauldron's images + texts or "
                             "the release's dataset_id, image_id, caption)")


def _coco_karpathy(row: dict, where: str, image_root: Optional[str], splits: Optional[Sequence[str]],
                   first_only: bool) -> Optional[SourceRow]:
    if "sentences" in row or "filename" in row:               # Karpathy's dataset_coco.json
        if splits is not None and row.get("split") not in splits:
            return None
        filename = _text(row.get("filename"), where, "filename")
        sentences = row.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise CaptionSourceError(f"{where}: sentences must be a non-empty list of {{raw: ...}}")
        captions = [_text(s.get("raw") if isinstance(s, dict) else None, where, "sentences[].raw")
                    for s in sentences]
        path = os.path.join(str(row.get("filepath") or ""), filename)
    elif "image" in row and "caption" in row:                 # BLIP-format split file
        if splits is not None:
            raise CaptionSourceError(f"{where}: --split picks splits of Karpathy's dataset_coco.json; this is a "
                                     "per-split file (drop --split)")
        refs = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        captions = [_text(c, where, "caption") for c in refs]
        if not captions:
            raise CaptionSourceError(f"{where}: caption list is empty")
        path = _text(row["image"], where, "image")
    else:
        raise CaptionSourceError(f"{where}: not a COCO Karpathy row (expected filename + sentences, or image + "
                                 "caption)")
    return SourceRow(where, captions[:1] if first_only else captions, image_path=_under(image_root, path))


def source_row(source: str, row: dict, where: str, image_root: Optional[str] = None,
               image_pattern: Optional[str] = None, splits: Optional[Sequence[str]] = None,
               first_only: bool = False) -> Optional[SourceRow]:
    """The :class:`SourceRow` of one raw row of ``source`` (None: a row of another ``--split``)."""
    if source == "pixmo-cap":
        row_ = _pixmo(row, where, image_root)
    elif source == "localized-narratives":
        row_ = _localized_narratives(row, where, image_root, image_pattern)
    elif source == "coco-karpathy":
        row_ = _coco_karpathy(row, where, image_root, splits, first_only)
    else:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if row_ is not None and first_only:
        row_.captions = row_.captions[:1]
    return row_
