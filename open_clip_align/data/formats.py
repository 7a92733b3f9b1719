"""The hard-negative data formats, in one place: field names, reading a row or sample, writing the files.

Three parts of the package meet here: the training loader (``data/hardneg.py``) reads these formats, the
negative-caption tool (``negatives/io.py``) writes its JSONL output and converts it to the others, and
ShapeCrepe (``data/shapecrepe``) writes its training rows in all of them.

* ``csv``: a header, then one row per image, TAB-separated by default: the image path (``filepath``), the
  positive caption (``title``), its negatives as a Python list literal (``neg_caption``; a JSON list parses
  too) and, as written here, their types (``neg_types``, ignored by the loader).
* ``degla-json``: one JSON array of objects ``{"image", "original", "enhanced": [...], "types": [...]}``
  (DeGLA's layout; other fields such as ``id`` or ``image_id`` are carried along).
* ``jsonl``: one such object per line.
* ``wds``: webdataset shards ``shard-NNNNNN.tar``; per sample ``KEY.<png|jpg|jpeg|webp>`` (the image),
  ``KEY.txt`` (the positive caption) and ``KEY.json`` (an object holding the negatives field).
* ``ceclip-npy`` (read only): CE-CLIP's pickled ``.npy`` lists of dicts, four typed negatives and a
  ``valid_caption`` mask.

Text files are UTF-8; a byte-order mark is accepted when reading. Readers yield :class:`RawRow` and raise
:class:`HardNegDataError` naming the file, the row as the user sees it and the problem; checks that depend on
training flags (how many negatives, image paths) are the loader's. Writers write whole files or nothing:
files through a temporary file and a rename (:func:`write_atomic`), shard sets through a hidden sibling folder
moved in at the end (:class:`ShardWriter`). Writer errors are of the class the caller passes as ``error``, so
each command keeps its own user-error class.
"""
import ast
import csv
import glob
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import warnings
from typing import Dict, Iterable, Iterator, List, NamedTuple, NoReturn, Optional, Sequence, Tuple, Type

import numpy as np

from ..errors import UserError

__all__ = [
    "CECLIP_IMAGE_TEMPLATE", "CECLIP_NEGATIVE_KEYS", "CSV_CAPTION", "CSV_HEADER", "CSV_IMAGE", "CSV_NEGATIVES",
    "CSV_SEPARATOR", "CSV_TYPES", "HardNegDataError", "JSON_CAPTION", "JSON_IMAGE", "JSON_NEGATIVES", "JSON_TYPES",
    "MissingMember", "RawRow", "ShardWriter", "WDS_IMAGE_EXTS", "csv_row", "fail", "json_type", "jsonl_line",
    "parse_list_cell", "read_ceclip_npy", "read_csv", "read_degla_json", "read_jsonl", "shown", "wds_fields",
    "wds_members", "write_atomic", "write_degla_json", "write_tsv",
]

CSV_SEPARATOR = "\t"
CSV_IMAGE, CSV_CAPTION, CSV_NEGATIVES, CSV_TYPES = "filepath", "title", "neg_caption", "neg_types"
CSV_HEADER = (CSV_IMAGE, CSV_CAPTION, CSV_NEGATIVES, CSV_TYPES)
JSON_IMAGE, JSON_CAPTION, JSON_NEGATIVES, JSON_TYPES = "image", "original", "enhanced", "types"
WDS_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
WDS_CAPTION, WDS_META = "txt", "json"
SHARD_NAME = "shard-{:06d}.tar"
_SHARD_RE = re.compile(r"shard-\d+\.tar")
# CE-CLIP's negative types, in the order of its valid_caption mask after the positive (its data/dataset.py
# adds them in this order, and the mask follows the dict's key order).
CECLIP_NEGATIVE_KEYS = ("relation_aug_caption", "adj_aug_caption", "noun_aug_caption", "verb_aug_caption")
# CE-CLIP's training loader: <root>/train2014/COCO_train2014_<image_id zero-padded to 12>.jpg
CECLIP_IMAGE_TEMPLATE = "train2014/COCO_train2014_{:012d}.jpg"


class HardNegDataError(UserError):
    """Hard-negative data that cannot be read or written; the message names the file, the row and the problem."""


class MissingMember(Exception):
    """A webdataset sample without an image, caption or negatives (the loader may skip it)."""


class RawRow(NamedTuple):
    """One row as read from a file: where it is (``"<file>, line N"``), its image path or id (formatted by the
    image template for JSON formats), positive caption, negatives (None: marked invalid) and, for csv with a
    hard-image column, that cell parsed (else None). Types are checked by the loader."""
    where: str
    image: str
    caption: object
    negatives: object
    hard_images: object = None


def fail(where: str, problem: str) -> NoReturn:
    """Raise HardNegDataError('<where>: <problem>')."""
    raise HardNegDataError(f"{where}: {problem}")


def json_type(value) -> str:
    """JSON name of a parsed value's type, for messages."""
    names = {bool: "boolean", dict: "object", list: "array", str: "string", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def shown(value, limit: int = 80) -> str:
    """repr() of any parsed value, cut to ``limit`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ----------------------------------------------------------------------------- reading

def parse_list_cell(where: str, key: str, text: str, example: str = "['neg 1', 'neg 2']"):
    """A csv cell holding a Python list literal (or a JSON list); type checks are left to the caller."""
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    fail(where, f"column {key!r} is not a list literal like {example}: {_short(text)}")


def read_csv(path: str, keys: Tuple[str, ...], sep: str) -> Iterator[RawRow]:
    """One RawRow per non-blank row; ``where`` counts the header as line 1. ``keys`` = (image, caption,
    negatives[, hard images]); the 4th column, when named, is parsed as a list literal of row indices."""
    import pandas as pd  # only the loader reads csv: the negatives tool and ShapeCrepe load without pandas

    try:
        with warnings.catch_warnings():  # more fields than the header: an error, not a silent re-indexing
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                             index_col=False)
    except pd.errors.EmptyDataError:
        fail(path, "the file is empty")
    except pd.errors.ParserWarning:
        fail(path, f"the first data row has more fields than the header (separator {sep!r})")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        fail(path, f"cannot parse as CSV/TSV with separator {sep!r}: {str(e).strip()}")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        fail(path, f"missing column(s) {missing}; available columns: {list(df.columns)} "
                   f"(read with --csv-separator {sep!r}; see --csv-img-key/--csv-caption-key/--csv-hardneg-key"
                   f"{'/--csv-hardimg-key' if len(keys) > 3 else ''})")
    blank = df.apply(lambda col: col.str.strip() == "").all(axis=1)
    image_key, caption_key, hardneg_key = keys[:3]
    hard_cells = df[keys[3]] if len(keys) > 3 else [None] * len(df)
    for i, (is_blank, image, caption, negatives, hard) in enumerate(
            zip(blank, df[image_key], df[caption_key], df[hardneg_key], hard_cells)):
        if not is_blank:
            where = f"{path}, line {i + 2}"
            if hard is not None:
                hard = parse_list_cell(where, keys[3], hard, example="[12, 7]")
            yield RawRow(where, image, caption, parse_list_cell(where, hardneg_key, negatives), hard)


def _json_entry(where: str, entry, keys: Tuple[str, str, str], template: str) -> RawRow:
    """Check one JSON object and format its image field with ``template``."""
    if not isinstance(entry, dict):
        fail(where, f"expected a JSON object, got {json_type(entry)}")
    missing = [k for k in keys if k not in entry]
    if missing:
        fail(where, f"missing field(s) {missing}; available fields: {sorted(entry)} "
                    f"(see --json-image-key/--json-caption-key/--json-hardneg-key)")
    image_key, caption_key, hardneg_key = keys
    image = entry[image_key]
    where = f"{where} (image {image!r})"
    if isinstance(image, bool) or not isinstance(image, (str, int)):
        fail(where, f"field {image_key!r} must be a path or an integer id, got {json_type(image)}")
    try:
        path = template.format(image)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        fail(where, f"--json-image-template {template!r} cannot format {image!r}: {type(e).__name__}: {e}")
    return RawRow(where, path, entry[caption_key], entry[hardneg_key])


def read_degla_json(path: str, keys: Tuple[str, str, str], template: str) -> Iterator[RawRow]:
    """One RawRow per entry of a JSON array (entries numbered from 1); ``keys`` = (image, caption, negatives)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        fail(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")
    except UnicodeDecodeError as e:
        fail(path, f"not UTF-8 text: {e}")
    if not isinstance(data, list):
        fail(path, f"expected a JSON array of objects, got {json_type(data)} "
                   f"(one object per line is --hardneg-format jsonl)")
    for i, entry in enumerate(data, 1):
        yield _json_entry(f"{path}, entry {i}", entry, keys, template)


def read_jsonl(path: str, keys: Tuple[str, str, str], template: str) -> Iterator[RawRow]:
    """One RawRow per non-blank line of a JSON-lines file (lines numbered from 1)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        fail(path, f"not UTF-8 text: {e}")
    for n, line in enumerate(lines, 1):
        if line.strip():
            where = f"{path}, line {n}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                fail(where, f"invalid JSON at column {e.colno}: {e.msg}")
            yield _json_entry(where, entry, keys, template)


def _ceclip_files(path: str) -> List[str]:
    """CE-CLIP's data files: every ``*.npy`` of a directory, in name order (the release globs them), or one file."""
    if not os.path.isdir(path):
        return [path]
    files = sorted(glob.glob(os.path.join(glob.escape(path), "*.npy")))
    if not files:
        fail(path, "this directory has no .npy files (--hardneg-format ceclip-npy reads CE-CLIP's "
                   "processed_dataset*.npy files)")
    return files


def _ceclip_valid(where: str, value) -> List[bool]:
    """``valid_caption`` [positive, relation, adj, noun, verb] of 0/1 -> validity of the 4 negatives."""
    size = 1 + len(CECLIP_NEGATIVE_KEYS)
    if not (isinstance(value, (list, tuple, np.ndarray)) and len(value) == size
            and all(isinstance(v, (bool, int, np.integer, np.bool_)) and v in (0, 1) for v in value)):
        fail(where, f"key 'valid_caption' must be a list of {size} zeros/ones [positive, relation, adj, noun, "
                    f"verb], got {shown(value)}")
    if not value[0]:
        fail(where, "key 'valid_caption' marks the positive caption invalid (its first entry is 0)")
    return [bool(v) for v in value[1:]]


def read_ceclip_npy(path: str, template: Optional[str]) -> Iterator[RawRow]:
    """One RawRow per entry of CE-CLIP's pickled ``.npy`` lists (a directory of them, or one file).

    Each entry is a dict with ``image_id`` (formatted by ``template``, default CE-CLIP's COCO layout; or
    ``image_path``, the release's non-COCO variant), ``caption``, the four ``*_aug_caption`` negatives in type
    order and ``valid_caption``; a negative marked 0 is None. Entries are numbered from 0 (the list index).
    Unpickling can run code stored in the file: the caller asks the user first.
    """
    template = template or CECLIP_IMAGE_TEMPLATE
    for file in _ceclip_files(path):
        try:
            data = np.load(file, allow_pickle=True)
        except Exception as e:  # unpickling fails in many ways: not .npy, truncated, unknown classes
            fail(file, f"cannot load as a pickled .npy list: {type(e).__name__}: {e}")
        if not (isinstance(data, np.ndarray) and data.dtype == object and data.ndim == 1):
            fail(file, f"expected a saved list of dicts (a 1-D object array), got {type(data).__name__} "
                       f"{getattr(data, 'dtype', '')} of shape {getattr(data, 'shape', '?')}")
        for i, entry in enumerate(data.tolist()):
            where = f"{file}, entry {i}"
            if not isinstance(entry, dict):
                fail(where, f"expected a dict, got {type(entry).__name__}")
            missing = [k for k in ("caption", *CECLIP_NEGATIVE_KEYS, "valid_caption") if k not in entry]
            if "image_id" not in entry and "image_path" not in entry:
                missing.insert(0, "image_id")
            if missing:
                fail(where, f"missing key(s) {missing}; keys: {sorted(map(str, entry))}")
            if "image_id" in entry:
                image_id = entry["image_id"]
                where = f"{where} (image_id {image_id!r})"
                if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer, str)):
                    fail(where, f"key 'image_id' must be an integer or a string, got {type(image_id).__name__}")
                try:
                    image = template.format(image_id)
                except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
                    fail(where, f"--npy-image-template {template!r} cannot format {image_id!r}: "
                                f"{type(e).__name__}: {e}")
            else:
                image = entry["image_path"]
                if not isinstance(image, str):
                    fail(where, f"key 'image_path' must be a string, got {type(image).__name__}")
            negatives = []
            for key, ok in zip(CECLIP_NEGATIVE_KEYS, _ceclip_valid(where, entry["valid_caption"])):
                text = entry[key]
                if ok and (not isinstance(text, str) or not text.strip()):
                    fail(where, f"key {key!r} must be a non-empty string (valid_caption marks it valid), "
                                f"got {shown(text)}")
                negatives.append(text if ok else None)
            yield RawRow(where, image, entry["caption"], negatives)


def wds_fields(sample: dict, where: str, caption_key: str, hardneg_key: str) -> Tuple[bytes, str, object]:
    """``(image bytes, positive caption, negatives)`` of a raw webdataset sample (member name -> bytes).

    The caption is the ``.txt`` member, else field ``caption_key`` of the ``.json`` member; the negatives are
    field ``hardneg_key`` of the ``.json`` member (unchecked). A missing member or field raises MissingMember;
    a malformed ``.json`` or ``.txt`` raises HardNegDataError naming ``where``.
    """
    members = sorted(k for k in sample if not k.startswith("__"))
    meta = {}
    if WDS_META in sample:
        try:
            meta = json.loads(sample[WDS_META])
        except (ValueError, UnicodeDecodeError) as e:
            fail(where, f"invalid JSON in the .json member: {e}")
        if not isinstance(meta, dict):
            fail(where, f"the .json member must be an object, got {json_type(meta)}")
    ext = next((e for e in WDS_IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise MissingMember(f"no image member ({'/'.join(WDS_IMAGE_EXTS)}); members: {members}")
    if WDS_CAPTION in sample:
        try:
            caption = sample[WDS_CAPTION].decode("utf-8")
        except UnicodeDecodeError as e:
            fail(where, f"the .txt member is not UTF-8 text: {e}")
    else:
        caption = meta.get(caption_key)
    if not isinstance(caption, str) or not caption.strip():
        raise MissingMember(f"no positive caption (a non-empty .txt member or .json field {caption_key!r}); "
                            f"members: {members}")
    if hardneg_key not in meta:
        raise MissingMember(f"no negatives (.json field {hardneg_key!r}); members: {members}")
    return sample[ext], caption, meta[hardneg_key]


# ----------------------------------------------------------------------------- writing

def write_atomic(path, data: bytes, error: Type[UserError] = HardNegDataError) -> None:
    """Write ``path`` via a temporary file in the same directory, fsync and a rename: readers never see half a
    file. An OS error (a folder at ``path``, a read-only or missing place) raises ``error`` naming ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise error(f"{path}: is a folder; expected a file path to write")
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        os.makedirs(parent, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise error(f"{path}: cannot write it ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def csv_row(image: str, caption: str, negatives: Sequence[str], types: Sequence[str]) -> List[str]:
    """The ``CSV_HEADER`` cells of one row: negatives and types as Python list literals."""
    return [image, caption, repr(list(negatives)), repr(list(types))]


def write_tsv(path, rows: Iterable[Sequence[str]], header: Sequence[str] = CSV_HEADER,
              error: Type[UserError] = HardNegDataError) -> None:
    """TAB-separated ``header`` and ``rows`` (csv quoting, ``\\n`` line ends, UTF-8), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=CSV_SEPARATOR, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buf.getvalue().encode("utf-8"), error)


def write_degla_json(path, records: Sequence[dict], final_newline: bool = False,
                     error: Type[UserError] = HardNegDataError) -> None:
    """One JSON array of ``records`` (indent 1, UTF-8 text unescaped), written atomically; ``final_newline``
    ends the file with a newline (ShapeCrepe's files do, the converter's do not)."""
    text = json.dumps(list(records), ensure_ascii=False, indent=1) + ("\n" if final_newline else "")
    write_atomic(path, text.encode("utf-8"), error)


def jsonl_line(record: dict) -> bytes:
    """One ``jsonl`` line: the record as compact JSON, UTF-8 text unescaped, ending in a newline."""
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def wds_members(image_ext: str, image: bytes, caption: str, meta: dict) -> Dict[str, bytes]:
    """The members of one webdataset sample: the image, the caption (``.txt``) and ``meta`` (``.json``,
    which carries the negatives field)."""
    return {image_ext: image, WDS_CAPTION: caption.encode("utf-8"),
            WDS_META: json.dumps(meta, ensure_ascii=False).encode("utf-8")}


class ShardWriter:
    """Webdataset shards ``shard-NNNNNN.tar`` of ``shard_size`` samples each in folder ``out``, as a set.

    Shards are written into a hidden sibling folder and moved into ``out`` by :meth:`close`, so a failure
    (an exception inside ``with ShardWriter(...)``) leaves neither ``out`` nor some of its shards behind; a
    folder that already holds shards is refused. Members have fixed metadata (mode 0644, mtime 0), so the same
    samples give the same bytes. ``sizes`` maps shard names to their sample counts.
    """

    def __init__(self, out, shard_size: int, error: Type[UserError] = HardNegDataError):
        self.out, self.shard_size, self.error = os.fspath(out), shard_size, error
        stale = sorted(f for f in os.listdir(self.out) if _SHARD_RE.fullmatch(f)) if os.path.isdir(self.out) else []
        if stale:
            raise error(f"{self.out}: already holds shards ({', '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}"
                        f"); remove them or choose another output directory")
        parent = os.path.dirname(os.path.abspath(self.out))
        try:
            os.makedirs(parent, exist_ok=True)
            self.stage = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(self.out))}.tmp-")
        except OSError as e:
            raise error(f"{self.out}: cannot create the shard folder here ({e.strerror or e})") from None
        self.sizes: Dict[str, int] = {}
        self._file = self._tar = None

    def add(self, key: str, members: Dict[str, bytes]) -> None:
        """Add one sample: ``KEY.<ext>`` for each ``ext -> bytes`` of ``members``, in order."""
        name = next(reversed(self.sizes), None)
        try:
            if self._tar is None or self.sizes[name] == self.shard_size:
                self._close_shard()
                name = SHARD_NAME.format(len(self.sizes))
                self.sizes[name] = 0
                self._file = open(os.path.join(self.stage, name), "wb")
                self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                self._tar.addfile(info, io.BytesIO(data))
        except OSError as e:
            raise self.error(f"{self.out}: cannot write shard {name} ({e.strerror or e})") from None
        self.sizes[name] += 1

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._tar = self._file = None

    @property
    def files(self) -> List[str]:
        """Paths of the shards in ``out``."""
        return [os.path.join(self.out, name) for name in self.sizes]

    @property
    def pattern(self) -> str:
        """The shards as one brace pattern, as ``--train-data`` takes them."""
        last = len(self.sizes) - 1
        return os.path.join(self.out, f"shard-{{000000..{last:06d}}}.tar" if last else SHARD_NAME.format(0))

    def close(self) -> None:
        """Finish the last shard and move every shard into ``out`` (created, also when there are none)."""
        try:
            try:
                self._close_shard()
            except OSError as e:
                raise self.error(f"{self.out}: cannot write its last shard ({e.strerror or e})") from None
            try:
                os.makedirs(self.out, exist_ok=True)
                for name in self.sizes:
                    os.replace(os.path.join(self.stage, name), os.path.join(self.out, name))
            except OSError as e:
                raise self.error(f"{self.out}: cannot move the shards into it ({e.strerror or e})") from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop whatever was written (the staging folder); ``out`` is left as it was."""
        if self._file is not None:
            self._file.close()
            self._tar = self._file = None
        shutil.rmtree(self.stage, ignore_errors=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
