"""Files of the negative-caption tool: caption readers, the resumable JSONL output, converters.

Every input format becomes a list of :class:`CaptionRow` ``(caption_id, image, caption)``. The output is
JSON lines, one per caption, in the ``--hardneg-format jsonl`` training format
(``{"id", "image", "original", "enhanced": [...], "types": [...]}``; ``types[i]`` is the type of
``enhanced[i]``). Rows are appended whole and synced one by one, so a killed run leaves at most one torn
last line: :func:`finished_rows` truncates it away and returns the rows already done. :func:`convert` turns
the JSONL into the other training formats (csv, degla-json, wds), each written atomically (tmp + rename). The
field names and the writers are the hard-negative formats' own (``open_clip_align.data.formats``).
"""
import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..cli_checks import output_problem
from ..data import formats
from ..data.formats import (JSON_CAPTION, JSON_IMAGE, JSON_NEGATIVES, JSON_TYPES, WDS_IMAGE_EXTS, ShardWriter,
                            csv_row, json_type, jsonl_line, wds_members, write_degla_json, write_tsv)
from ..errors import UserError

INPUT_FORMATS = ("coco", "csv", "tsv", "jsonl")
CONVERT_FORMATS = ("csv", "degla-json", "wds")
_EXTENSIONS = {".json": "coco", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_OUTPUT_KEYS = ("id", JSON_IMAGE, JSON_CAPTION, JSON_NEGATIVES, JSON_TYPES)


class InputError(UserError):
    """A bad input, output or conversion file; the message names the file, the row and what was expected."""


@dataclass(frozen=True)
class CaptionRow:
    """One positive caption: its id (unique in the input), its image (path or integer id) and its text."""

    caption_id: str
    image: Union[str, int]
    caption: str


# ----------------------------------------------------------------------------- input

def detect_format(path: str) -> str:
    """Input format from the file extension (.json COCO, .csv, .tsv, .jsonl/.ndjson)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise InputError(f"{path}: cannot tell the input format from the extension {ext or '(none)'!r}; "
                         f"pass --input-format {{{','.join(INPUT_FORMATS)}}}")
    return _EXTENSIONS[ext]


def _read_text(path: str) -> str:
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder; expected a captions file (COCO JSON, CSV, TSV or JSONL)")
    if not os.path.isfile(path):
        raise InputError(f"{path}: input file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text: {e}") from None


def _image_value(where: str, key: str, value) -> Union[str, int]:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: field {key!r} must be an image path or an integer id, got {json_type(value)}")
    if isinstance(value, str) and not value.strip():
        raise InputError(f"{where}: empty image in field {key!r}")
    return value


def _caption_value(where: str, key: str, value) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: caption field {key!r} must be a string, got {json_type(value)}")
    if not value.strip():
        raise InputError(f"{where}: empty caption in field {key!r}")
    return value


def _id_value(where: str, key: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: id field {key!r} must be a string or an integer, got {json_type(value)}")
    if not str(value).strip():
        raise InputError(f"{where}: empty id in field {key!r}")
    return str(value)


def _read_coco(path: str) -> Iterator[Tuple[str, CaptionRow]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"{path}: expected a COCO captions object {{\"annotations\": [{{\"id\", \"image_id\", "
                         f"\"caption\"}}, ...]}}, got {json_type(data)}"
                         + (f" with keys {sorted(data)}" if isinstance(data, dict) else ""))
    files: Optional[Dict[int, str]] = None
    if "images" in data:
        if not isinstance(data["images"], list):
            raise InputError(f"{path}: \"images\" must be an array of {{\"id\", \"file_name\"}}, "
                             f"got {json_type(data['images'])}")
        files = {}
        for i, image in enumerate(data["images"], 1):
            where = f"{path}, images entry {i}"
            if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
                raise InputError(f"{where}: expected an object with \"id\" and \"file_name\"")
            _id_value(where, "id", image["id"])
            files[image["id"]] = _image_value(where, "file_name", image["file_name"])
    for i, ann in enumerate(data["annotations"], 1):
        where = f"{path}, annotation {i}"
        if not isinstance(ann, dict):
            raise InputError(f"{where}: expected an object, got {json_type(ann)}")
        missing = [k for k in ("id", "image_id", "caption") if k not in ann]
        if missing:
            raise InputError(f"{where}: missing field(s) {missing}; available fields: {sorted(ann)}")
        image = _image_value(where, "image_id", ann["image_id"])
        if files is not None:
            if image not in files:
                raise InputError(f"{where}: image_id {image!r} is not in \"images\"")
            image = files[image]
        yield where, CaptionRow(_id_value(where, "id", ann["id"]), image,
                                _caption_value(where, "caption", ann["caption"]))


def _read_delimited(path: str, sep: str, keys: Tuple[str, str, Optional[str]]) -> Iterator[Tuple[str, CaptionRow]]:
    caption_key, image_key, id_key = keys
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=sep)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: the file is empty (expected a header row)")
        wanted = [k for k in (caption_key, image_key, id_key) if k is not None]
        missing = [k for k in wanted if k not in header]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; header columns: {header} (separator {sep!r}; "
                             f"see --caption-key/--image-key/--id-key)")
        col = {k: header.index(k) for k in wanted}
        number = 0
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            number += 1
            where = f"{path}, line {reader.line_num}"
            if len(fields) != len(header):
                raise InputError(f"{where}: {len(fields)} fields, the header has {len(header)} (separator {sep!r})")
            ident = _id_value(where, id_key, fields[col[id_key]]) if id_key else str(number)
            yield where, CaptionRow(ident, _image_value(where, image_key, fields[col[image_key]]),
                                    _caption_value(where, caption_key, fields[col[caption_key]]))
    except csv.Error as e:
        kind = "TSV" if sep == "\t" else "CSV"
        raise InputError(f"{path}, line {reader.line_num}: cannot parse as {kind}: {e}") from None


def _read_jsonl(path: str, keys: Tuple[str, str, Optional[str]]) -> Iterator[Tuple[str, CaptionRow]]:
    caption_key, image_key, id_key = keys
    for n, line in enumerate(_read_text(path).split("\n"), 1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a JSON object, got {json_type(entry)}")
        missing = [k for k in (caption_key, image_key, id_key) if k is not None and k not in entry]
        if missing:
            raise InputError(f"{where}: missing field(s) {missing}; available fields: {sorted(entry)} "
                             f"(see --caption-key/--image-key/--id-key)")
        ident = _id_value(where, id_key, entry[id_key]) if id_key else str(n)
        yield where, CaptionRow(ident, _image_value(where, image_key, entry[image_key]),
                                _caption_value(where, caption_key, entry[caption_key]))


def read_captions(path: str, fmt: str = "auto", caption_key: str = "caption", image_key: str = "image",
                  id_key: Optional[str] = None) -> List[CaptionRow]:
    """All caption rows of ``path``, in file order; raises InputError naming the file and row.

    COCO captions JSON: caption id = annotation id, image = ``file_name`` when ``images`` is present, else
    ``image_id``. CSV/TSV/JSONL: the keys name the columns/fields; without ``id_key`` the id is the data-row
    number (CSV/TSV, from 1) or the line number (JSONL). Ids must be unique: resuming relies on them.
    """
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder; expected a captions file (COCO JSON, CSV, TSV or JSONL)")
    fmt = detect_format(path) if fmt == "auto" else fmt
    keys = (caption_key, image_key, id_key)
    if fmt == "coco":
        rows = _read_coco(path)
    elif fmt in ("csv", "tsv"):
        rows = _read_delimited(path, "," if fmt == "csv" else "\t", keys)
    elif fmt == "jsonl":
        rows = _read_jsonl(path, keys)
    else:
        raise InputError(f"unknown input format {fmt!r}; expected one of {list(INPUT_FORMATS)}")
    out, first_seen = [], {}
    for where, row in rows:
        if row.caption_id in first_seen:
            raise InputError(f"{where}: caption id {row.caption_id!r} already used at {first_seen[row.caption_id]}; "
                             f"ids must be unique (see --id-key)")
        first_seen[row.caption_id] = where
        out.append(row)
    if not out:
        raise InputError(f"{path}: no caption rows")
    return out


# ----------------------------------------------------------------------------- output (JSONL, resumable)

def output_row(row: CaptionRow, negatives: Sequence[Tuple[str, str]]) -> dict:
    """The output object of one caption; ``negatives`` are ``(type, text)`` pairs in output order."""
    return {"id": row.caption_id, JSON_IMAGE: row.image, JSON_CAPTION: row.caption,
            JSON_NEGATIVES: [text for _, text in negatives], JSON_TYPES: [t for t, _ in negatives]}


def _check_output_row(where: str, obj) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {json_type(obj)}")
    missing = [k for k in _OUTPUT_KEYS if k not in obj]
    if missing:
        raise InputError(f"{where}: missing field(s) {missing}; this is not an output of "
                         f"python -m open_clip_align.negatives")
    if not isinstance(obj[JSON_NEGATIVES], list) or not isinstance(obj[JSON_TYPES], list) \
            or len(obj[JSON_NEGATIVES]) != len(obj[JSON_TYPES]):
        raise InputError(f"{where}: {JSON_NEGATIVES!r} and {JSON_TYPES!r} must be lists of the same length")
    return obj


def _split_complete(path: str) -> Tuple[List[bytes], int]:
    """Complete lines of ``path`` and the byte length they cover (a last line without newline is torn)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    return data[:end].split(b"\n")[:-1], end


def _parse_lines(path: str, lines: List[bytes]) -> Iterator[Tuple[str, dict]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: invalid JSON ({e}); the file is not an intact output of "
                             f"python -m open_clip_align.negatives") from None
        yield where, _check_output_row(where, obj)


def truncate_torn_line(path: str) -> int:
    """Cut a last line without newline (a write interrupted by a kill) off ``path``; returns the bytes removed."""
    if not os.path.exists(path):
        return 0
    _, end = _split_complete(path)
    torn = os.path.getsize(path) - end
    if torn:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return torn


def finished_rows(path: str) -> List[dict]:
    """Rows already in the output ``path`` (none if it does not exist); a torn last line is truncated away."""
    if not os.path.exists(path):
        return []
    torn = truncate_torn_line(path)
    if torn:
        logging.warning(f"{path}: removed a torn last line ({torn} bytes) left by an interrupted run; "
                        f"that caption is generated again")
    lines, _ = _split_complete(path)
    return [obj for _, obj in _parse_lines(path, lines)]


class JsonlAppender:
    """Appends one JSON object per line; each line is written whole, flushed and (by default) fsync'd."""

    def __init__(self, path: str, fsync: bool = True):
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
            self._file = open(path, "ab")
        except OSError as e:
            raise InputError(f"{path}: cannot open for appending ({e.strerror or e})") from None
        self.path = path
        self._fsync = fsync

    def write(self, obj: dict) -> None:
        self._file.write(jsonl_line(obj))
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_output(path: str) -> List[dict]:
    """Rows of a finished or interrupted output JSONL, read-only (a torn last line is skipped with a warning)."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder; expected the JSONL output of python -m open_clip_align.negatives")
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    lines, end = _split_complete(path)
    if end != os.path.getsize(path):
        logging.warning(f"{path}: ignoring a torn last line left by an interrupted run")
    rows = [obj for _, obj in _parse_lines(path, lines)]
    if not rows:
        raise InputError(f"{path}: no rows to convert")
    return rows


# ----------------------------------------------------------------------------- converters

def write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all (``formats.write_atomic``); an OS error raises InputError naming it."""
    formats.write_atomic(path, data, InputError)


def _image_path(row: dict, template: str) -> str:
    try:
        return template.format(row["image"])
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise InputError(f"row id {row['id']!r}: --image-template {template!r} cannot format image "
                         f"{row['image']!r}: {type(e).__name__}: {e}") from None


def _to_csv(rows: List[dict], out: str, image_root: Optional[str], template: str) -> dict:
    cells = []
    for row in rows:
        path = _image_path(row, template)
        cells.append(csv_row(os.path.join(image_root, path) if image_root else path, row[JSON_CAPTION],
                             row[JSON_NEGATIVES], row[JSON_TYPES]))
    write_tsv(out, cells, error=InputError)
    return {"rows": len(rows), "files": [out]}


def _to_degla_json(rows: List[dict], out: str) -> dict:
    write_degla_json(out, rows, error=InputError)
    return {"rows": len(rows), "files": [out]}


def _to_wds(rows: List[dict], out: str, image_root: str, template: str, shard_size: int) -> dict:
    """Shards of ``shard_size`` rows, KEY = the row's position; a failure leaves no shard behind."""
    with ShardWriter(out, shard_size, error=InputError) as shards:
        for index, row in enumerate(rows):
            path = os.path.join(image_root, _image_path(row, template))
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            if ext not in WDS_IMAGE_EXTS:
                raise InputError(f"row id {row['id']!r}: image {path!r} has extension {ext!r}; webdataset "
                                 f"shards need one of {list(WDS_IMAGE_EXTS)} (see --image-template)")
            try:
                with open(path, "rb") as f:
                    image = f.read()
            except OSError as e:
                raise InputError(f"row id {row['id']!r}: cannot read image {path!r}: {e.strerror} "
                                 f"(see --image-root/--image-template)") from None
            shards.add(f"{index:09d}", wds_members(ext, image, row[JSON_CAPTION], row))
    return {"rows": len(rows), "files": shards.files, "train_data": shards.pattern}


def convert(jsonl: str, out: str, fmt: str, image_root: Optional[str] = None, image_template: str = "{}",
            shard_size: int = 1000) -> dict:
    """Convert the tool's JSONL output to ``fmt``; returns ``{"rows", "files"[, "train_data"]}``.

    ``csv``: TAB-separated ``filepath``, ``title``, ``neg_caption`` and ``neg_types`` (list literals), the
    path being ``image_template`` applied to the image (joined to ``image_root`` if given). ``degla-json``:
    one JSON array of the rows, unchanged. ``wds``: ``out`` is a directory of ``shard-NNNNNN.tar`` files of
    ``shard_size`` samples, each ``KEY.<ext>`` (the image file read from ``image_root``, default the JSONL's
    directory), ``KEY.txt`` (the caption) and ``KEY.json`` (the row); KEY is the row's position.
    """
    if fmt not in CONVERT_FORMATS:
        raise InputError(f"unknown output format {fmt!r}; expected one of {list(CONVERT_FORMATS)}")
    if shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, got {shard_size}")
    if os.path.realpath(out) == os.path.realpath(jsonl):
        raise InputError(f"{out}: is the input file {jsonl}; choose another output path")
    problem = output_problem(out, "OUT", directory=fmt == "wds")
    if problem:
        raise InputError(f"{problem} (--to {fmt} writes {'a folder of shards' if fmt == 'wds' else 'a file'})")
    rows = read_output(jsonl)
    if fmt == "csv":
        return _to_csv(rows, out, image_root, image_template)
    if fmt == "degla-json":
        return _to_degla_json(rows, out)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(jsonl))
    return _to_wds(rows, out, root, image_template, shard_size)
