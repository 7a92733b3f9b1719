"""ComAlign component stores (HDF5, spec §4): our own resumable cache, and a reader for the reference's files.

Our layout (one file per split; every embedding unnormalised float32, pads are zero rows with mask False):

    /<key>/global (d,)  entity (Ne, d)  entity_mask (Ne,)  relation (Nr, d)  relation_mask (Nr,)
          entity_boxes (Ne, 5)  relation_boxes (Nr, 5)      # x0, y0, x1, y1, score in image pixels; 0 = pad
          attrs: image_id, path, index (position in the annotation order), complete
    /<key>/captions/<j>/text (d,)  entity (Ne, d)  entity_mask (Ne,)  relation (Nr, d)  relation_mask (Nr,)
          attrs: string (the caption), entities, relations (JSON lists of the component strings)
    root attrs: format, base model, pretrained tag, quick_gelu, normalised=False, box provider (+ options as
          JSON), render mode, letterbox, n_entity, n_relation, spaCy model + version, max_captions, ...
          and the status: finished (set when the writer closes), images_planned (images the run embeds)

``<key>`` is the image id (a COCO decimal id stays as is); ids holding '/' or '%' (paths) are percent-escaped
(``escape_key``) and the original id is the ``image_id`` attribute.

``ComponentStoreWriter`` writes ``<path>.partial`` and renames it to ``<path>`` on ``close()``. An image group
is marked complete only after all its datasets are written (and the file is flushed after each image), so a
killed run resumes: incomplete groups are deleted, complete ones skipped. Resuming with other settings is an
error. ``ComponentStore`` reads a store (``finished``, ``images_planned`` and ``len`` tell an unfinished one
apart); ``load_arrays`` stacks it into tensors for evaluation, ``rows`` gives training row access without
loading it. ``read_reference_layout`` reads the reference's 4-file layout into the same dict.

The row index (for stores at training scale): every dataset above is one contiguous, unfiltered block of the
file, so a row is a byte range. The index records, per complete image in annotation order, the byte offsets of
its arrays and of its captions' arrays (captions flattened, ``caption_count`` per image):

    /.index/image_ids, image_paths (N,) str  image_offsets (N, F_img) int64  caption_count (N,) int64
            caption_offsets (M, F_cap) int64  caption_strings, caption_entities, caption_relations (M,) str
            attrs: format, fields (JSON: per column the field name, row shape and dtype), built (never
            ``complete``: readers take a group with that attribute for an image)

``close()`` writes it into the store (a group name no image key can take: ``escape_key`` escapes a leading
'.'); reopening a store to add images drops it. A store written before the index existed gets it as a side
file, ``<store>.index`` (same layout at its root, plus the store's size and number of root entries), from
``python -m open_clip_align.comalign.store index STORE`` (written to ``.partial`` and renamed; rerun after an
interruption to continue). ``ComponentStore`` uses a valid index (in the store, else the side file) instead of
scanning every image group; ``rows()`` then reads each row asked for with one positional read of the store
file (a plain file descriptor, opened per process, so DataLoader workers each open their own after fork;
positional reads rather than a memory map, so the rows read over an epoch do not pile up in the process's
RSS), and ``load_arrays`` reads through it. Without an index (or with one that no longer matches the store)
both read the groups as before.
"""
import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..errors import run_cli
from .annotations import ComAlignDataError

FORMAT = "open_clip_align.comalign.store/1"
STATUS_ATTRS = ("finished", "images_planned")  # root attributes that describe progress, not settings
IMAGE_ARRAYS = ("global", "entity", "entity_mask", "relation", "relation_mask")
CAPTION_ARRAYS = ("text", "entity", "entity_mask", "relation", "relation_mask")
BOX_ARRAYS = ("entity_boxes", "relation_boxes")
INDEX_FORMAT = "open_clip_align.comalign.store.index/1"
INDEX_GROUP = ".index"    # in a store: no image key starts with '.' (escape_key)
INDEX_SUFFIX = ".index"   # the side file of a store indexed after it was written
INDEX_CHUNK = 4096        # images per step when building an index (the side file's resume granularity)
REFERENCE_FILES = {"entity": "{split}_noun_yolo_emb_{tag}.h5", "relation": "{split}_rel_yolo_emb_{tag}.h5",
                   "text_entity": "{split}_att_sentence_{tag}_sep.h5",
                   "text_relation": "{split}_relation_sentence_{tag}_sep.h5"}


def escape_key(image_id: str) -> str:
    """The HDF5 group name of ``image_id``: '%', '/' and a leading '.' percent-escaped (injective)."""
    key = str(image_id).replace("%", "%25").replace("/", "%2F")
    return "%2E" + key[1:] if key.startswith(".") else key


def _attr_value(value):
    """An attribute as stored: str/int/float/bool as is; anything else (dicts, lists, None) as sorted JSON."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _read_attr(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


def read_attrs(obj) -> dict:
    return {k: _read_attr(v) for k, v in obj.attrs.items()}


class ComponentStoreWriter:
    """Writes a store to ``<path>.partial``, renamed to ``path`` by ``close()`` (see the module docstring).

    ``attrs``: the root attributes (the run's settings). ``resume=True`` continues a ``.partial`` file, or adds
    to a finished ``path``, when both were written with the same ``attrs`` (else ``ComAlignDataError``);
    ``resume=False`` starts over. ``done`` holds the image ids already complete. The file is flushed at most
    every ``flush_seconds`` (and on close), so a kill loses at most that much finished work. As a context
    manager an exception leaves the ``.partial`` file for a later resume.
    """

    def __init__(self, path, attrs: dict, resume: bool = True, flush_seconds: float = 1.0):
        self.path = Path(path)
        self.flush_seconds, self._flushed = flush_seconds, time.monotonic()
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.attrs = {"format": FORMAT, **{k: _attr_value(v) for k, v in attrs.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.partial.exists():
            self.partial.unlink()
        if resume and not self.partial.exists() and self.path.exists():
            self._check_attrs(self.path)
            os.replace(self.path, self.partial)
        if self.partial.exists():
            self._check_attrs(self.partial)
            self.file = h5py.File(self.partial, "a")
            # incomplete image groups, and the row index (images may be added: close() writes it anew)
            for key in [k for k, g in self.file.items() if not g.attrs.get("complete", False)]:
                del self.file[key]
        else:
            self.file = h5py.File(self.partial, "w")
            for key, value in self.attrs.items():
                self.file.attrs[key] = value
        self.file.attrs["finished"] = False
        self.done = {_read_attr(g.attrs["image_id"]) for g in self.file.values()}

    def plan(self, n_images: int) -> None:
        """Record how many images this run embeds in all (readers report a store short of it as unfinished)."""
        self.file.attrs["images_planned"] = int(n_images)

    def _check_attrs(self, path: Path):
        try:
            with h5py.File(path, "r") as f:
                old = read_attrs(f)
        except OSError as err:
            raise ComAlignDataError(f"cannot resume from {path}: cannot open it as HDF5 ({err}); is another run "
                                    f"writing it? If not, delete it or start over (--no-resume)") from None
        if old.get("format") != FORMAT:
            raise ComAlignDataError(f"{path} is not a ComAlign component store (format {old.get('format')!r}); "
                                    f"choose another --out or start over (--no-resume)")
        diff = {k: (old.get(k), self.attrs.get(k)) for k in (set(old) | set(self.attrs)) - set(STATUS_ATTRS)
                if old.get(k) != self.attrs.get(k)}
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items()))
            raise ComAlignDataError(f"cannot resume {path}: it was written with other settings ({shown}); choose "
                                    f"another --out or start over (--no-resume)")

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.done

    def write(self, image_id: str, path: str, index: int, image: Dict[str, np.ndarray],
              captions: Sequence[dict]) -> None:
        """Write one image group. ``image``: the ``IMAGE_ARRAYS`` (+ optional ``BOX_ARRAYS``); ``captions``: one
        dict per caption with ``string``, the ``CAPTION_ARRAYS`` and optional ``entities``/``relations`` (lists
        of component strings). Arrays may be numpy or torch; embeddings are stored as float32."""
        key = escape_key(image_id)
        if key in self.file:
            raise ComAlignDataError(f"image id {image_id!r} written twice (ids must be unique)")
        group = self.file.create_group(key)
        group.attrs.update({"image_id": str(image_id), "path": str(path), "index": int(index)})
        for name in IMAGE_ARRAYS + BOX_ARRAYS:
            if name in image:
                _write(group, name, image[name])
        for j, caption in enumerate(captions):
            sub = group.create_group(f"captions/{j}")
            sub.attrs.update({"string": str(caption["string"]),
                              "entities": json.dumps(list(caption.get("entities", []))),
                              "relations": json.dumps(list(caption.get("relations", [])))})
            for name in CAPTION_ARRAYS:
                _write(sub, name, caption[name])
        group.attrs["complete"] = True
        if time.monotonic() - self._flushed >= self.flush_seconds:
            self.file.flush()
            self._flushed = time.monotonic()
        self.done.add(str(image_id))

    def abort(self) -> None:
        """Close without finishing: ``.partial`` stays for a later resume."""
        if self.file.id.valid:
            self.file.close()

    def close(self) -> Path:
        """Finish: write the row index, mark the store finished, close the file and rename ``.partial`` to
        ``path`` (a side-file index of an earlier version of the store is removed); returns ``path``."""
        if self.file.id.valid:
            self._write_index()
            self.file.attrs["finished"] = True
            self.file.close()
            os.replace(self.partial, self.path)
            index_side_file(self.path).unlink(missing_ok=True)
        return self.path

    def _write_index(self) -> None:
        """The row index of every complete image, in the store (module docstring). A store that cannot be read
        by offset (not expected from this writer) keeps no index, with one warning: it still reads whole."""
        keys = [key for _, key in _scan(self.file)]
        if not keys:
            return
        try:
            builder = _IndexBuilder(self.file, self.file.create_group(INDEX_GROUP), str(self.path))
            for start in range(0, len(keys), INDEX_CHUNK):
                builder.append(keys[start:start + INDEX_CHUNK])
            builder.finish()
        except ComAlignDataError as err:
            del self.file[INDEX_GROUP]
            logging.warning(f"{self.path}: no row index written ({err}); training will load the store whole")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.abort() if exc_type is not None else self.close()


def _array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    return np.ascontiguousarray(value, dtype=bool if name.endswith("_mask") else np.float32)


def _write(group, name: str, value) -> None:
    """Create dataset ``name`` in ``group`` holding ``value`` (h5py's low-level API: ~2x faster for the many
    small arrays of a store than ``create_dataset``)."""
    array = _array(value, name)
    space = h5py.h5s.create_simple(array.shape)
    dtype = h5py.h5t.py_create(array.dtype, logical=True)
    h5py.h5d.create(group.id, name.encode(), dtype, space).write(h5py.h5s.ALL, h5py.h5s.ALL, array)


def _read_into(group_id, name: str, out: np.ndarray, where: str) -> None:
    """Read dataset ``name`` of the low-level group ``group_id`` into the C-contiguous ``out``."""
    dataset = h5py.h5d.open(group_id, name.encode())
    if dataset.shape != out.shape:
        raise ComAlignDataError(f"{where}/{name} has shape {dataset.shape}; expected {out.shape}")
    dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)


def _read_str_attr(object_id, name: str) -> str:
    attr = h5py.h5a.open(object_id, name.encode())
    buf = np.empty((), dtype=attr.dtype)
    attr.read(buf)
    return _read_attr(buf[()])


class ComponentStore:
    """Read access to a store written by ``ComponentStoreWriter`` (complete images only).

    ``finished`` is False for a store whose writer never closed (a ``.partial`` file: an embedding run that was
    stopped or is still running); ``images_planned`` is the number of images that run embeds (None when not
    recorded); ``len`` counts the complete images. ``index=False`` ignores a row index (reads the groups).
    """

    def __init__(self, path, index: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            partial = self.path.with_name(self.path.name + ".partial")
            if partial.is_file():
                raise ComAlignDataError(f"component store {self.path} not found, but {partial.name} is there: its "
                                        f"embedding run has not finished (rerun python -m open_clip_align.comalign"
                                        f".embed with the same flags to complete it)")
            if self.path.is_dir():
                raise ComAlignDataError(f"component store {self.path}: is a folder; expected the .h5 file written "
                                        f"by python -m open_clip_align.comalign.embed")
            raise ComAlignDataError(f"component store {self.path} not found")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise ComAlignDataError(f"{self.path}: not a readable HDF5 file ({err})") from None
        self.attrs = read_attrs(self.file)
        if self.attrs.get("format") != FORMAT:
            self.file.close()
            raise ComAlignDataError(f"{self.path} is not a ComAlign component store (format "
                                    f"{self.attrs.get('format')!r}; expected {FORMAT})")
        self._side = None
        self._index = self._open_index() if index else None
        if self._index is not None:
            self._keys = {image_id: escape_key(image_id) for image_id in self._index.image_ids}
        else:
            self._keys = dict(_scan(self.file))

    def _open_index(self) -> Optional["_RowIndex"]:
        """The store's row index (in the store, else its side file) that matches the store, else None; an index
        that does not match is one warning."""
        side = index_side_file(self.path)
        for where in ([f"{self.path}:/{INDEX_GROUP}"] if INDEX_GROUP in self.file else []) + \
                     ([str(side)] if side.is_file() else []):
            is_side = where == str(side)
            try:
                if is_side:
                    self._side = h5py.File(side, "r")
                group = self._side if is_side else self.file[INDEX_GROUP]
                problem = _index_problem(self.file, group, self.path, is_side)
                if problem is None:
                    return _RowIndex(group)
            except (KeyError, ValueError, TypeError, OSError) as err:
                problem = f"unreadable or malformed ({type(err).__name__}: {err})"
            logging.warning(f"ignoring the row index {where}: {problem}; reading the store image by image instead "
                            f"(python -m open_clip_align.comalign.store index {self.path} rebuilds it)")
            if self._side is not None:
                self._side.close()
                self._side = None
        return None

    @property
    def indexed(self) -> bool:
        """Whether a row index is in use: ``rows()`` works and ``load_arrays`` reads by offset."""
        return self._index is not None

    def ids(self) -> List[str]:
        """Image ids of the complete images, in annotation order."""
        return list(self._keys)

    @property
    def finished(self) -> bool:
        """Whether the writer closed the store (stores from before this attribute: unless named ``.partial``)."""
        return bool(self.attrs.get("finished", not self.path.name.endswith(".partial")))

    @property
    def images_planned(self) -> Optional[int]:
        planned = self.attrs.get("images_planned")
        return int(planned) if planned is not None else None

    def progress(self) -> str:
        """``"N of M images complete"`` (``"N images complete"`` when M was not recorded)."""
        planned = self.images_planned
        return f"{len(self)} of {planned} images complete" if planned is not None else f"{len(self)} images complete"

    def __len__(self) -> int:
        return len(self._keys)

    def _group(self, image_id: str):
        if image_id not in self._keys:
            raise KeyError(f"image {image_id!r} is not in {self.path}")
        return self.file[self._keys[image_id]]

    def image(self, image_id: str) -> dict:
        """``{"image_id", "path", "global" [d], "entity" [Ne, d], "entity_mask" [Ne], "relation" [Nr, d],
        "relation_mask" [Nr], "entity_boxes" [Ne, 5], "relation_boxes" [Nr, 5]}`` (tensors)."""
        group = self._group(image_id)
        out = {"image_id": image_id, "path": _read_attr(group.attrs["path"])}
        out.update({name: torch.from_numpy(group[name][()]) for name in IMAGE_ARRAYS + BOX_ARRAYS if name in group})
        return out

    def captions(self, image_id: str) -> List[dict]:
        """One dict per caption, in order: ``string``, ``entities``, ``relations`` and the ``CAPTION_ARRAYS``."""
        captions = self._group(image_id).get("captions")
        if captions is None:
            return []
        out = []
        for j in sorted(captions, key=int):
            group = captions[j]
            item = {"string": _read_attr(group.attrs["string"]),
                    "entities": json.loads(_read_attr(group.attrs["entities"])),
                    "relations": json.loads(_read_attr(group.attrs["relations"]))}
            item.update({name: torch.from_numpy(group[name][()]) for name in CAPTION_ARRAYS})
            out.append(item)
        return out

    def load_arrays(self, max_captions: Optional[int] = None) -> dict:
        """Everything stacked, images in annotation order (keys as in ``stack_arrays``). ``max_captions`` keeps
        each image's first N captions. With a row index, reads every row by offset (``rows``); otherwise
        straight into preallocated arrays (h5py's low-level API), group by group."""
        if self._index is not None:
            rows, selected = self._rows(max_captions)
            out = {k: v[:] if isinstance(v, StoredRows) else v for k, v in rows.items()}
            for name in ("caption_entities", "caption_relations"):
                values = self._index.strings(name)
                out[name] = [json.loads(values[k]) for k in selected]
            return out
        ids = list(self._keys)
        groups = [h5py.h5g.open(self.file.id, self._keys[i].encode()) for i in ids]
        counts = []
        for gid in groups:
            n = h5py.h5g.open(gid, b"captions").get_num_objs() if gid.links.exists(b"captions") else 0
            counts.append(min(n, max_captions) if max_captions is not None else n)
        n_img, n_cap = len(ids), sum(counts)
        n_e, n_r = int(self.attrs.get("n_entity", 0)), int(self.attrs.get("n_relation", 0))
        d = int(self.attrs.get("embed_dim", 0))
        if ids and (not n_e or not n_r or not d):
            first = self._group(ids[0])
            n_e, d = first["entity"].shape
            n_r = first["relation"].shape[0]
        has_boxes = bool(ids) and all(gid.links.exists(b"entity_boxes") for gid in groups)
        out = {"image_ids": ids, "image_paths": [_read_str_attr(gid, "path") for gid in groups],
               "global": np.zeros((n_img, d), np.float32), "entity": np.zeros((n_img, n_e, d), np.float32),
               "entity_mask": np.zeros((n_img, n_e), bool), "relation": np.zeros((n_img, n_r, d), np.float32),
               "relation_mask": np.zeros((n_img, n_r), bool)}
        if has_boxes:
            out["entity_boxes"] = np.zeros((n_img, n_e, 5), np.float32)
            out["relation_boxes"] = np.zeros((n_img, n_r, 5), np.float32)
        text = {"text": np.zeros((n_cap, d), np.float32), "entity": np.zeros((n_cap, n_e, d), np.float32),
                "entity_mask": np.zeros((n_cap, n_e), bool), "relation": np.zeros((n_cap, n_r, d), np.float32),
                "relation_mask": np.zeros((n_cap, n_r), bool)}
        strings, entities, relations, caption_image = [], [], [], []
        row = 0
        for i, (image_id, gid, count) in enumerate(zip(ids, groups, counts)):
            where = f"{self.path}:{self._keys[image_id]}"
            for name in IMAGE_ARRAYS + (BOX_ARRAYS if has_boxes else ()):
                _read_into(gid, name, out[name][i], where)
            for j in range(count):
                cid = h5py.h5g.open(gid, f"captions/{j}".encode())
                for name in CAPTION_ARRAYS:
                    _read_into(cid, name, text[name][row], f"{where}/captions/{j}")
                strings.append(_read_str_attr(cid, "string"))
                entities.append(json.loads(_read_str_attr(cid, "entities")))
                relations.append(json.loads(_read_str_attr(cid, "relations")))
                caption_image.append(i)
                row += 1
        result = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in out.items()}
        result.update({"caption_strings": strings, "caption_entities": entities, "caption_relations": relations,
                       "caption_image": torch.tensor(caption_image, dtype=torch.long),
                       **{("text" if k == "text" else f"text_{k}"): torch.from_numpy(v) for k, v in text.items()}})
        return result

    def rows(self, max_captions: Optional[int] = None) -> dict:
        """``load_arrays``'s keys without reading the arrays: each is a ``StoredRows`` that reads the rows asked
        for from the store file (``image_ids``, ``image_paths``, ``caption_strings`` and
        ``caption_image`` are read; ``caption_entities``/``caption_relations`` are left out). Needs the row
        index (``indexed``); the result stays valid after ``close()``."""
        if self._index is None:
            raise ComAlignDataError(f"{self.path} has no row index: build it with python -m "
                                    f"open_clip_align.comalign.store index {self.path}")
        return self._rows(max_captions)[0]

    def _rows(self, max_captions: Optional[int]) -> Tuple[dict, np.ndarray]:
        """``rows()`` and the flat caption rows it kept."""
        index = self._index
        selected, owner = _caption_rows(index.caption_count, max_captions)
        strings = index.strings("caption_strings")
        file = _RowFile(self.path)
        out = {"image_ids": list(index.image_ids), "image_paths": index.strings("image_paths"),
               "caption_strings": [strings[k] for k in selected], "caption_image": torch.from_numpy(owner)}
        for column, (name, shape, dtype) in enumerate(index.fields["image"]):
            offsets = index.image_offsets[:, column]
            if (offsets >= 0).all():  # a box field that some image lacks is left out, as load_arrays does
                out[name] = StoredRows(file, offsets, shape, dtype)
        for column, (name, shape, dtype) in enumerate(index.fields["caption"]):
            key = "text" if name == "text" else f"text_{name}"
            out[key] = StoredRows(file, index.caption_offsets[selected, column], shape, dtype)
        return out, selected

    def close(self) -> None:
        self.file.close()
        if self._side is not None:
            self._side.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _scan(file: h5py.File) -> List[Tuple[str, str]]:
    """``(image_id, group key)`` of every complete image group, in annotation order (reads every group)."""
    groups = [(int(g.attrs["index"]), _read_attr(g.attrs["image_id"]), key) for key, g in file.items()
              if g.attrs.get("complete", False)]
    return [(image_id, key) for _, image_id, key in sorted(groups)]


def _caption_rows(count: np.ndarray, max_captions: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Flat caption rows kept (each image's first ``max_captions``) and the image of each: ``count`` [N] ->
    (rows [M'], owner [M']) int64."""
    owner = np.repeat(np.arange(len(count), dtype=np.int64), count)
    rank = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    keep = np.flatnonzero(rank < max_captions) if max_captions is not None else np.arange(len(owner))
    return keep, owner[keep]


def stack_arrays(images: Sequence[dict], captions: Sequence[Sequence[dict]], n_entity: int, n_relation: int,
                 dim: Optional[int] = None) -> dict:
    """Stack per-image and per-caption dicts into the ``load_arrays`` layout:

    ``image_ids``, ``image_paths`` (lists), ``global [N, d]``, ``entity [N, Ne, d]``, ``entity_mask [N, Ne]``,
    ``relation [N, Nr, d]``, ``relation_mask [N, Nr]``, ``entity_boxes [N, Ne, 5]``, ``relation_boxes
    [N, Nr, 5]`` (when stored); ``caption_strings``, ``caption_entities``, ``caption_relations`` (lists),
    ``caption_image [M]`` long (index into the images), ``text [M, d]``, ``text_entity [M, Ne, d]``,
    ``text_entity_mask [M, Ne]``, ``text_relation [M, Nr, d]``, ``text_relation_mask [M, Nr]``.
    """
    def stack(rows: Iterable, shape, dtype) -> torch.Tensor:
        rows = list(rows)
        if not rows:
            return torch.zeros(shape, dtype=dtype)
        return torch.from_numpy(np.stack(rows))

    d = dim or next((img["global"].shape[-1] for img in images), 0)
    flat = [(i, c) for i, caps in enumerate(captions) for c in caps]
    out = {"image_ids": [img["image_id"] for img in images], "image_paths": [img["path"] for img in images],
           "global": stack((img["global"] for img in images), (0, d), torch.float32),
           "entity": stack((img["entity"] for img in images), (0, n_entity, d), torch.float32),
           "entity_mask": stack((img["entity_mask"] for img in images), (0, n_entity), torch.bool),
           "relation": stack((img["relation"] for img in images), (0, n_relation, d), torch.float32),
           "relation_mask": stack((img["relation_mask"] for img in images), (0, n_relation), torch.bool)}
    for name, n in (("entity_boxes", n_entity), ("relation_boxes", n_relation)):
        if images and all(name in img for img in images):
            out[name] = stack((img[name] for img in images), (0, n, 5), torch.float32)
    out.update({
        "caption_strings": [c["string"] for _, c in flat],
        "caption_entities": [c.get("entities") for _, c in flat],
        "caption_relations": [c.get("relations") for _, c in flat],
        "caption_image": torch.tensor([i for i, _ in flat], dtype=torch.long),
        "text": stack((c["text"] for _, c in flat), (0, d), torch.float32),
        "text_entity": stack((c["entity"] for _, c in flat), (0, n_entity, d), torch.float32),
        "text_entity_mask": stack((c["entity_mask"] for _, c in flat), (0, n_entity), torch.bool),
        "text_relation": stack((c["relation"] for _, c in flat), (0, n_relation, d), torch.float32),
        "text_relation_mask": stack((c["relation_mask"] for _, c in flat), (0, n_relation), torch.bool)})
    return out


# ------------------------------------------------------------------------------------------- the row index

def index_side_file(path) -> Path:
    """Where the row index of a store written before the index existed goes: ``<store>.index``."""
    return Path(str(path) + INDEX_SUFFIX)


def _index_fields(file: h5py.File, first_key: str) -> dict:
    """Per column: (field, row shape, dtype), from the store's slot counts and width (root attributes, else the
    first image); box columns when the first image has boxes."""
    first = file[first_key]
    n_e = int(file.attrs.get("n_entity", 0)) or first["entity"].shape[0]
    n_r = int(file.attrs.get("n_relation", 0)) or first["relation"].shape[0]
    d = int(file.attrs.get("embed_dim", 0)) or first["entity"].shape[1]
    f4, b1 = np.dtype(np.float32).str, np.dtype(bool).str
    image = [("global", [d], f4), ("entity", [n_e, d], f4), ("entity_mask", [n_e], b1), ("relation", [n_r, d], f4),
             ("relation_mask", [n_r], b1)]
    if all(name in first for name in BOX_ARRAYS):
        image += [("entity_boxes", [n_e, 5], f4), ("relation_boxes", [n_r, 5], f4)]
    caption = [("text", [d], f4), ("entity", [n_e, d], f4), ("entity_mask", [n_e], b1), ("relation", [n_r, d], f4),
               ("relation_mask", [n_r], b1)]
    return {"image": image, "caption": caption}


def _offset(group_id, name: str, shape: Sequence[int], dtype: str, where: str, optional: bool = False) -> int:
    """The byte offset in the file of dataset ``name`` of the low-level group ``group_id`` (-1: an optional one
    that is absent), after checking that it holds ``dtype`` and exactly the bytes of ``shape``, in one block.

    HDF5 gives an offset to contiguous datasets only (not chunked, hence unfiltered, nor compact), so a dataset
    with an offset and the right storage size is those bytes, row-major."""
    if not group_id.links.exists(name.encode()):
        if optional:
            return -1
        raise ComAlignDataError(f"{where}: no dataset {name!r}")
    dataset = h5py.h5d.open(group_id, name.encode())
    stored, nbytes = dataset.dtype, math.prod(shape) * np.dtype(dtype).itemsize
    if stored.str != dtype or dataset.get_storage_size() != nbytes:
        raise ComAlignDataError(f"{where}/{name} is {stored} {dataset.shape}; expected {np.dtype(dtype)} "
                                f"{tuple(shape)}")
    offset = dataset.get_offset()
    if offset is None:
        raise ComAlignDataError(f"{where}/{name} is not stored as one contiguous block (was the file repacked?), so "
                                f"it cannot be read by offset")
    return int(offset)


_IMAGE_SETS = ("image_ids", "image_paths", "image_offsets", "caption_count")
_CAPTION_SETS = ("caption_offsets", "caption_strings", "caption_entities", "caption_relations")


def _extend(group, name: str, values: np.ndarray) -> None:
    """Append ``values`` along axis 0 to the resizable dataset ``name`` (created on first use)."""
    if name not in group:
        dtype = h5py.string_dtype("utf-8") if values.dtype == object else values.dtype
        group.create_dataset(name, shape=(0, *values.shape[1:]), maxshape=(None, *values.shape[1:]), dtype=dtype,
                             chunks=(INDEX_CHUNK, *values.shape[1:]))
    dataset = group[name]
    start = dataset.shape[0]
    dataset.resize(start + len(values), axis=0)
    if len(values):
        dataset[start:] = values


class _IndexBuilder:
    """Appends images (group keys, in order) to the row index in ``group``; ``done`` counts the images there.
    Opening a partly written index first drops what a killed step appended past its ``images_done``."""

    def __init__(self, file: h5py.File, group, where: str):
        self.file, self.group, self.where = file, group, where
        self.done, self.fields = int(group.attrs.get("images_done", 0)), None
        if self.done and all(name in group for name in _IMAGE_SETS + _CAPTION_SETS):
            self.fields = json.loads(_read_attr(group.attrs["fields"]))
            captions = int(group["caption_count"][:self.done].sum())
            for name in _IMAGE_SETS + _CAPTION_SETS:
                group[name].resize(self.done if name in _IMAGE_SETS else captions, axis=0)
        else:  # nothing appended yet (or killed during the first step): start clean
            self.done = 0
            for name in _IMAGE_SETS + _CAPTION_SETS:
                if name in group:
                    del group[name]

    def append(self, keys: Sequence[str]) -> None:
        if self.fields is None:
            self.fields = _index_fields(self.file, keys[0])
            self.group.attrs["fields"] = json.dumps(self.fields)
        image_fields, caption_fields = self.fields["image"], self.fields["caption"]
        image_rows, caption_rows, count = [], [], []
        names = {"ids": [], "paths": [], "string": [], "entities": [], "relations": []}
        for key in keys:
            gid = h5py.h5g.open(self.file.id, key.encode())
            where = f"{self.where}:{key}"
            image_rows.append([_offset(gid, name, shape, dtype, where, optional=name in BOX_ARRAYS)
                               for name, shape, dtype in image_fields])
            n = h5py.h5g.open(gid, b"captions").get_num_objs() if gid.links.exists(b"captions") else 0
            for j in range(n):
                cid = h5py.h5g.open(gid, f"captions/{j}".encode())
                caption_rows.append([_offset(cid, name, shape, dtype, f"{where}/captions/{j}")
                                     for name, shape, dtype in caption_fields])
                for name in ("string", "entities", "relations"):
                    names[name].append(_read_str_attr(cid, name))
            names["ids"].append(_read_str_attr(gid, "image_id"))
            names["paths"].append(_read_str_attr(gid, "path"))
            count.append(n)
        strings = lambda values: np.array(values, dtype=object)  # noqa: E731
        _extend(self.group, "image_ids", strings(names["ids"]))
        _extend(self.group, "image_paths", strings(names["paths"]))
        _extend(self.group, "image_offsets", np.array(image_rows, np.int64).reshape(-1, len(image_fields)))
        _extend(self.group, "caption_count", np.array(count, np.int64))
        _extend(self.group, "caption_offsets", np.array(caption_rows, np.int64).reshape(-1, len(caption_fields)))
        _extend(self.group, "caption_strings", strings(names["string"]))
        _extend(self.group, "caption_entities", strings(names["entities"]))
        _extend(self.group, "caption_relations", strings(names["relations"]))
        self.done += len(keys)
        self.group.attrs["images_done"] = self.done

    def finish(self) -> None:
        self.group.attrs.update({"format": INDEX_FORMAT, "built": True})


def _index_problem(file: h5py.File, group, path: Path, side: bool) -> Optional[str]:
    """Why the index in ``group`` (``side``: a side file) does not describe the store ``file`` (None when it
    does): its format, its image count against the store's root entries, the store's size (side file), and the
    recorded offsets of the first and last images against the store."""
    attrs = read_attrs(group)
    if attrs.get("format") != INDEX_FORMAT or not attrs.get("built"):
        return f"not a finished index (format {attrs.get('format')!r})"
    n = group["image_ids"].shape[0]
    entries = len(file) - (INDEX_GROUP in file)
    if entries != n:
        return f"it lists {n} images, the store holds {entries} entries"
    if side and attrs.get("store_size") != os.path.getsize(path):
        return f"the store is {os.path.getsize(path)} bytes, the index was built for {attrs.get('store_size')}"
    fields = [name for name, _, _ in json.loads(_read_attr(attrs["fields"]))["image"]]
    column = fields.index("entity")
    for i in sorted({0, n - 1}):
        key = escape_key(group["image_ids"].asstr()[i])
        if key not in file or "entity" not in file[key]:
            return f"image {i} ({key}) is not in the store"
        dataset = h5py.h5d.open(h5py.h5g.open(file.id, key.encode()), b"entity")
        if dataset.get_offset() != group["image_offsets"][i, column]:
            return f"image {i} ({key}) is not where the index says"
    return None


class _RowIndex:
    """A loaded row index: ids, caption counts and byte offsets (small arrays); strings read on demand."""

    def __init__(self, group):
        self.group = group
        self.fields = json.loads(_read_attr(group.attrs["fields"]))
        self.image_ids = list(group["image_ids"].asstr()[()])
        self.image_offsets = group["image_offsets"][()]
        self.caption_count = group["caption_count"][()]
        self.caption_offsets = group["caption_offsets"][()]

    def strings(self, name: str) -> List[str]:
        return list(self.group[name].asstr()[()])


class _RowFile:
    """A read-only file descriptor of the store, opened on first use in each process (a forked DataLoader worker
    opens its own; pickling, for spawned workers, carries the path only)."""

    def __init__(self, path):
        self.path, self._pid, self._fd = str(path), None, None

    def fd(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self):
        return {"path": self.path, "_pid": None, "_fd": None}

    def __del__(self):
        try:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
        except (OSError, AttributeError, TypeError):  # already closed, or the interpreter is shutting down
            pass


class StoredRows:
    """One field of a store, row ``i`` read from the file at byte ``offsets[i]`` when asked for.

    ``rows[index]``: an int gives one row ``[*shape]``; a slice, list, array or tensor of ints ``[k, *shape]``;
    float32, or bool for masks (what ``load_arrays`` holds). Each row is one positional read (``preadv``) into
    the result: only the rows asked for are read, and nothing stays mapped in the process (its RSS is the
    batches it holds; the OS page cache keeps what was read for the next epoch).
    """

    def __init__(self, file: _RowFile, offsets: np.ndarray, shape: Sequence[int], dtype: str):
        self.file, self.offsets, self.shape = file, np.asarray(offsets, np.int64), tuple(shape)
        self.stored = np.dtype(dtype)
        self.nbytes = math.prod(self.shape) * self.stored.itemsize

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        single = isinstance(index, (int, np.integer))
        offsets = np.atleast_1d(self.offsets[index])
        out = np.empty((len(offsets), *self.shape), np.uint8 if self.stored.kind == "b" else self.stored)
        rows = out.reshape(len(offsets), -1).view(np.uint8)
        fd = self.file.fd()
        for row, start in enumerate(offsets.tolist()):
            if os.preadv(fd, [rows[row]], start) != self.nbytes:
                raise ComAlignDataError(f"{self.file.path}: {self.nbytes} bytes expected at offset {start}, the file "
                                        f"ends before (truncated since it was indexed?)")
        out = out.view(bool) if self.stored.kind == "b" else out.astype(np.float32, copy=False)  # HDF5 bools: 0/1
        return torch.from_numpy(out[0] if single else out)


def build_index(path, progress: bool = True) -> Optional[Path]:
    """Write the side-file row index ``<store>.index`` of the finished store ``path`` (one written before
    stores held their own); returns its path, or None when the store already has a valid index.

    Written to ``<store>.index.partial`` in steps of ``INDEX_CHUNK`` images and renamed at the end: after an
    interruption the same call continues where it stopped (a partial file built for another state of the store,
    or unreadable, is started over). The store itself is only read.
    """
    store = ComponentStore(path)
    try:
        if store.indexed:
            return None
        if not store.finished:
            raise ComAlignDataError(f"{store.path}: an unfinished store ({store.progress()}); rerun python -m "
                                    f"open_clip_align.comalign.embed with the same flags to complete it (the "
                                    f"finished store holds its index)")
        if not len(store):
            raise ComAlignDataError(f"{store.path}: holds no complete image; nothing to index")
        side = index_side_file(store.path)
        partial = side.with_name(side.name + ".partial")
        fingerprint = {"store_size": os.path.getsize(store.path), "store_links": len(store.file)}
        out, builder = _open_partial_index(partial, fingerprint, store.file, str(store.path))
        try:
            if builder is None:
                out.attrs.update(fingerprint)
                out.create_dataset("keys", data=np.array([store._keys[i] for i in store.ids()], dtype=object),
                                   dtype=h5py.string_dtype("utf-8"))
                builder = _IndexBuilder(store.file, out, str(store.path))
            keys = list(out["keys"].asstr()[()])
            with tqdm(total=len(keys), initial=builder.done, desc="comalign index", unit="img",
                      disable=not progress) as bar:
                for start in range(builder.done, len(keys), INDEX_CHUNK):
                    builder.append(keys[start:start + INDEX_CHUNK])
                    out.flush()
                    bar.update(builder.done - bar.n)
            del out["keys"]
            builder.finish()
        finally:
            out.close()
        os.replace(partial, side)
        return side
    finally:
        store.close()


def _open_partial_index(partial: Path, fingerprint: dict, store_file: h5py.File,
                        where: str) -> Tuple[h5py.File, Optional[_IndexBuilder]]:
    """The side file being built and its builder, when one was started for this state of the store (else a new
    empty file and None)."""
    if partial.exists():
        out = None
        try:
            out = h5py.File(partial, "a")
            if "keys" in out and all(_read_attr(out.attrs.get(k, -1)) == v for k, v in fingerprint.items()):
                builder = _IndexBuilder(store_file, out, where)
                logging.info(f"continuing {partial} at image {builder.done}")
                return out, builder
        except (OSError, KeyError, ValueError) as err:
            logging.info(f"{partial} is unreadable ({err})")
        if out is not None and out.id.valid:
            out.close()
        logging.info(f"starting {partial} over (left by a run on another state of the store, or unreadable)")
    return h5py.File(partial, "w"), None


def main(argv: Optional[Sequence[str]] = None) -> None:
    from ..cli_checks import console_logging

    parser = argparse.ArgumentParser(prog="python -m open_clip_align.comalign.store",
                                     description="Tools for ComAlign component stores.")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser(
        "index", help="build the row index of a store written before stores held one",
        description="Build the row index (<STORE>.index) that lets --comalign-data features and evaluation read "
                    "a store by row instead of loading every image group. Stores written by this version hold "
                    "their own. Resumable: rerun after an interruption.")
    index.add_argument("store", type=Path, help="a finished component store (.h5)")
    args = parser.parse_args(argv)
    console_logging()

    def run() -> None:
        side = build_index(args.store)
        print(f"{args.store}: already indexed" if side is None else f"wrote {side}")

    run_cli(run, f"{parser.prog} index",
            interrupted=f"run the same command again to continue from {index_side_file(args.store)}.partial")


# ------------------------------------------------------------------------------- the reference's files

def _reference_text(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``(n_cap, [1,] N, d)`` -> ``(n_cap, N, d)``."""
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise ComAlignDataError(f"{path}: key {key} has shape {array.shape}; expected (n_cap, [1,] N, d)")
    return array


def read_reference_layout(directory, split: str = "val2017", tag: str = "ViT-B-32_openai",
                          max_captions: Optional[int] = 5, image_ids: Optional[Sequence[str]] = None,
                          source: Union[None, str, os.PathLike, "ComponentStore"] = None) -> dict:
    """The reference's released embeddings (spec §4 table) as a ``load_arrays`` dict.

    Files ``<split>_{noun,rel}_yolo_emb_<tag>.h5`` (per image (10, d)) and ``<split>_{att,relation}_sentence_
    <tag>_sep.h5`` (per image (n_cap, [1,] N, d), squeezed on axis 1, first ``max_captions`` captions), one
    dataset per COCO id. Masks are True where a row is not all zero. Images follow ``image_ids`` (e.g. the
    ids of ``load_coco_captions``, the reference's order) or, by default, the numeric order of the ids.

    The files hold neither the CLIP global image embeddings nor the caption embeddings (the reference computes
    them live): ``global``, ``text``, ``image_paths`` and ``caption_strings`` come from ``source`` (one of our
    stores, or its path, holding the same ids with at least as many captions), else they are None.
    """
    directory = Path(directory)
    paths = {name: directory / pattern.format(split=split, tag=tag) for name, pattern in REFERENCE_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise ComAlignDataError(f"reference embeddings file {path} not found (the released embeddings.zip "
                                    f"unpacks to {', '.join(p.name for p in paths.values())})")
    files = {name: h5py.File(path, "r") for name, path in paths.items()}
    own = None
    try:
        if image_ids is None:
            keys = list(files["entity"].keys())
            image_ids = sorted(keys, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
        if source is not None:
            own = source if isinstance(source, ComponentStore) else ComponentStore(source)
        images, captions = [], []
        for image_id in map(str, image_ids):
            row = {}
            for name, f in files.items():
                if image_id not in f:
                    raise ComAlignDataError(f"{paths[name]}: no key {image_id!r}")
                row[name] = f[image_id][()].astype(np.float32)
            for name in ("entity", "relation"):
                if row[name].ndim != 2:
                    raise ComAlignDataError(f"{paths[name]}: key {image_id} has shape {row[name].shape}; "
                                            f"expected (N, d)")
            text_entity = _reference_text(row["text_entity"], paths["text_entity"], image_id)[:max_captions]
            text_relation = _reference_text(row["text_relation"], paths["text_relation"], image_id)[:max_captions]
            if len(text_entity) != len(text_relation):
                raise ComAlignDataError(f"key {image_id}: {len(text_entity)} captions in {paths['text_entity'].name}"
                                        f" but {len(text_relation)} in {paths['text_relation'].name}")
            image = {"image_id": image_id, "path": None, "global": None,
                     "entity": row["entity"], "entity_mask": np.any(row["entity"] != 0, axis=-1),
                     "relation": row["relation"], "relation_mask": np.any(row["relation"] != 0, axis=-1)}
            caps = [{"string": None, "text": None, "entity": e, "entity_mask": np.any(e != 0, axis=-1),
                     "relation": r, "relation_mask": np.any(r != 0, axis=-1)}
                    for e, r in zip(text_entity, text_relation)]
            if own is not None:
                _fill_from_source(own, image, caps)
            images.append(image)
            captions.append(caps)
    finally:
        for f in files.values():
            f.close()
        if own is not None and own is not source:
            own.close()
    return _stack_reference(images, captions)


def _fill_from_source(store: "ComponentStore", image: dict, caps: List[dict]):
    image_id = image["image_id"]
    if image_id not in store.ids():
        raise ComAlignDataError(f"{store.path} has no image {image_id!r} (needed for its global and caption "
                                f"embeddings)")
    mine = store.image(image_id)
    theirs = store.captions(image_id)
    if len(theirs) < len(caps):
        raise ComAlignDataError(f"{store.path}: image {image_id} has {len(theirs)} captions; the reference files "
                                f"have {len(caps)}")
    image["path"], image["global"] = mine["path"], mine["global"].numpy()
    for cap, own in zip(caps, theirs):
        cap["string"], cap["text"] = own["string"], own["text"].numpy()


def _stack_reference(images: List[dict], captions: List[List[dict]]) -> dict:
    """``stack_arrays`` of reference rows; ``global``/``text``/paths/strings are None without a source."""
    if not images:
        raise ComAlignDataError("the reference files hold no images")
    n_entity, d = images[0]["entity"].shape
    n_relation = images[0]["relation"].shape[0]
    for img in images:
        if img["entity"].shape != (n_entity, d) or img["relation"].shape != (n_relation, d):
            raise ComAlignDataError(f"reference key {img['image_id']}: entity {img['entity'].shape} / relation "
                                    f"{img['relation'].shape}, but the first image has {(n_entity, d)} / "
                                    f"{(n_relation, d)}")
    have_source = images[0]["global"] is not None
    zero = np.zeros(d, dtype=np.float32)
    n_text_entity = max((c["entity"].shape[0] for caps in captions for c in caps), default=n_entity)
    n_text_relation = max((c["relation"].shape[0] for caps in captions for c in caps), default=n_relation)
    images = [{**img, "global": img["global"] if have_source else zero} for img in images]
    captions = [[{**c, "text": c["text"] if have_source else zero,
                  "entity": _pad_rows(c["entity"], n_text_entity),
                  "entity_mask": _pad_rows(c["entity_mask"], n_text_entity),
                  "relation": _pad_rows(c["relation"], n_text_relation),
                  "relation_mask": _pad_rows(c["relation_mask"], n_text_relation)} for c in caps] for caps in captions]
    out = stack_arrays(images, captions, n_entity, n_relation, d)
    out["caption_entities"] = out["caption_relations"] = None  # the reference keeps no component strings
    if not have_source:
        out["global"] = out["image_paths"] = out["text"] = out["caption_strings"] = None
    return out


def _pad_rows(array: np.ndarray, n: int) -> np.ndarray:
    if array.shape[0] >= n:
        return array
    pad = np.zeros((n - array.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, pad])


if __name__ == "__main__":
    main()
