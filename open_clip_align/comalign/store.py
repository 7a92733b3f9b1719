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
apart); ``load_arrays`` stacks it into tensors for training and evaluation.
``read_reference_layout`` reads the reference's 4-file layout into the same dict.
"""
import json
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import h5py
import numpy as np
import torch

from .annotations import ComAlignDataError

FORMAT = "open_clip_align.comalign.store/1"
STATUS_ATTRS = ("finished", "images_planned")  # root attributes that describe progress, not settings
IMAGE_ARRAYS = ("global", "entity", "entity_mask", "relation", "relation_mask")
CAPTION_ARRAYS = ("text", "entity", "entity_mask", "relation", "relation_mask")
BOX_ARRAYS = ("entity_boxes", "relation_boxes")
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
        """Finish: mark the store finished, close the file and rename ``.partial`` to ``path``; returns ``path``."""
        if self.file.id.valid:
            self.file.attrs["finished"] = True
            self.file.close()
            os.replace(self.partial, self.path)
        return self.path

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
    recorded); ``len`` counts the complete images.
    """

    def __init__(self, path):
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
        groups = [(int(g.attrs["index"]), _read_attr(g.attrs["image_id"]), key) for key, g in self.file.items()
                  if g.attrs.get("complete", False)]
        groups.sort()
        self._keys = {image_id: key for _, image_id, key in groups}

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
        each image's first N captions. Reads straight into preallocated arrays (h5py's low-level API)."""
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

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
