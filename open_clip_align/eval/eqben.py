"""EqBen (Wang et al., ICCV 2023): 2 images × 2 captions with a minimal *visual* change; Winoground's scores.

Layouts read (``Wangt-CN/EqBen@ab6c79a``; every file from Google Drive / SharePoint, fetched by hand):

- **official** (the full test set as the official evaluation reads it): ``ann_json_finegrained_random.json`` (a list
  of ``{"image": "<subset>/...", "caption": "..."}``, each entry scored alone, in a random order) with the
  repository's ``src_file/private_random_idx.json`` (a permutation) and ``src_file/private_info.json`` (per
  un-shuffled position ``{"dataset", "name" ∈ c0i0|c0i1|c1i0|c1i1, "sample_cnt"}``). ``evaluate_eqben_locally.py``
  un-shuffles scores with ``argsort(private_random_idx)``: entry j of the annotation is position
  ``private_random_idx[j]``, so its 2×2 sample is ``private_info[private_random_idx[j]]``. The four entries of a
  sample are joined into one item (their images and captions must agree: c0i0 and c0i1 share caption 0, ...).
- **pairs**: a Winoground-style list of ``{"image0", "caption0", "image1", "caption1"}`` — the per-subset files read
  by ``src/eqben/eqben_utils.py`` (a list for Kubric/SD; nested dicts video → [subject →] list for AG, YouCook2,
  GEBC, where AG's captions are lists and only ``[0]`` is used), the 2023-09 "Winoground style" original
  annotation, or the third-party EqBen_Mini ``all_select.json`` (``linzhiqiu/t2v_metrics``; read by default
  when present, and named so in the protocol: never mix it with full-set numbers). ``--eqben-annotation FILE``
  names any other such file.

Image paths start with the subset folder (``eqbenkubric_attr/...``) and are resolved under the first of
``<root>/images``, ``<root>/eqben_vllm`` (EqBen_Mini) and ``<root>`` that is a folder; ``.npy`` images
(EqBen-YouCook2) are uint8 BGR arrays (``ImageRef``). Scores: text = s(c0,i0) > s(c1,i0) ∧ s(c1,i1) > s(c0,i1),
image = s(c0,i0) > s(c0,i1) ∧ s(c1,i1) > s(c1,i0), group = both, all strict (``src/eqben/eqben_acc.py`` L5-20 =
``winoground.decisions``), reported per subset; the mean over subsets and the micro over items are ours.
"""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from . import winoground
from .items import EvalDataError, ImageRef, Item, data_missing, existing_image, json_type, read_json, require_file

NAME = "eqben"
SUBSETS = ("eqbenag", "eqbenyoucook2", "eqbengebc", "eqbenkubric_loc", "eqbenkubric_attr", "eqbenkubric_cnt",
           "eqbensd")
RANDOM_ANNOTATION = "ann_json_finegrained_random.json"
RANDOM_INDEX = "private_random_idx.json"
RANDOM_INFO = "private_info.json"
MINI_ANNOTATION = "all_select.json"
IMAGE_DIRS = ("images", "eqben_vllm", "")
SLOTS = ("c0i0", "c0i1", "c1i0", "c1i1")
PAIR_KEYS = ("image0", "caption0", "image1", "caption1")
LAYOUT = (f"either the official set: <root>/{RANDOM_ANNOTATION} (a JSON list of {{'image': '<subset>/...', "
          f"'caption'}}) with <root>/{RANDOM_INDEX} and <root>/{RANDOM_INFO} (from the EqBen repository's src_file/); "
          f"or <root>/{MINI_ANNOTATION} (third-party EqBen_Mini) or the file named by --eqben-annotation: a "
          f"Winoground-style list of {{'image0', 'caption0', 'image1', 'caption1'}} (or EqBen's nested per-subset "
          f"dicts of such lists); images under <root>/images/ (or <root>/eqben_vllm/, or <root>) at the annotation's "
          f"paths, which start with the subset folder; .npy images are uint8 BGR arrays")
PROTOCOL = {
    "tie_policy": "official (strict comparisons: a tie is wrong)",
    "decision": "text = s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1); image = s(c0,i0) > s(c0,i1) and "
                "s(c1,i1) > s(c1,i0); group = both (src/eqben/eqben_acc.py)",
    "averaging": "per subset (the official report); the mean over subsets and the micro over items are ours",
    "official_precision": "fp16 (example/eqben_eval_CLIP.py loads CLIP with clip.load on CUDA)",
    "blind_baselines": "not applicable: a text-only scorer ranks the two captions alike for both images and the two "
                       "images alike for each caption, so text, image and group are 0 by construction",
}
SPLITS = {"official": "EqBen full test set (official randomized annotation un-shuffled with private_random_idx.json "
                      "and private_info.json; 251,048 samples)",
          "mini": "EqBen_Mini (third-party, linzhiqiu/t2v_metrics all_select.json): not comparable with full-set "
                  "numbers",
          "pairs": "EqBen Winoground-style annotation"}
HEADLINES = {"official": "EqBen", "mini": "EqBen_Mini", "pairs": "EqBen"}


def headline(layout: str) -> Dict[str, str]:
    """``{label: metric key}``: text, image and group means over the subsets, labelled by the layout read."""
    return {f"{HEADLINES[layout]} {score}": f"subset_mean/{score}" for score in ("text", "image", "group")}


def image_root(root) -> Path:
    root = Path(root)
    return next(root / d for d in IMAGE_DIRS if (root / d).is_dir())


def layout_of(root, annotation=None) -> str:
    """``official`` (the randomized annotation is present), ``mini`` (all_select.json) or ``pairs`` (``annotation``
    given); an error naming every layout if none is present."""
    root = Path(root)
    if annotation is not None:
        return "pairs"
    if (root / RANDOM_ANNOTATION).is_file():
        return "official"
    if (root / MINI_ANNOTATION).is_file():
        return "mini"
    raise data_missing(NAME, f"no annotation under {root}", LAYOUT, fetch=NAME, root=root)


class _Images:
    """Resolves annotation image paths under the image root, checking each file once."""

    def __init__(self, root):
        self.root, self.seen = image_root(root), set()

    def __call__(self, value, where: str) -> ImageRef:
        if not isinstance(value, str) or not value:
            raise EvalDataError(f"{where}: expected an image path string, got {json_type(value)}")
        return existing_image(self.root / value, where, seen=self.seen, hint=f"images are resolved under {self.root}")


def subset_of(image_path: str, fallback: str) -> str:
    """The subset folder an image path starts with (``eqbenkubric_attr/...``), else ``fallback``."""
    first = image_path.replace("\\", "/").split("/")[0]
    return first if first in SUBSETS else fallback


def _caption(value, where: str, key: str) -> str:
    if isinstance(value, list) and value:  # EqBen-AG: a list of captions, the official loader uses [0]
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise EvalDataError(f"{where}: {key!r} must be a non-empty caption (or a list whose first element is one), "
                            f"got {json_type(value)}")
    return value


def _records(raw, where: str) -> List[Tuple[str, dict]]:
    """Flatten a pairs annotation: a list of records, or dicts (video → [subject →] list) of such lists."""
    if isinstance(raw, list):
        return [(f"{where}[{i}]", r) for i, r in enumerate(raw)]
    if isinstance(raw, dict):
        return [rec for key, value in raw.items() for rec in _records(value, f"{where}[{key!r}]")]
    raise EvalDataError(f"{where}: expected a list of {{'image0', 'caption0', 'image1', 'caption1'}} records or "
                        f"a dict of such lists, got {json_type(raw)}")


def load_pairs(root, annotation) -> List[Item]:
    """Items from a Winoground-style annotation (``annotation`` relative to ``root`` unless absolute)."""
    path = Path(root) / annotation
    require_file(path, NAME, LAYOUT, fetch=NAME, root=root)
    raw = read_json(path, (list, dict), "records {'image0', 'caption0', 'image1', 'caption1'}")
    images, items = _Images(root), []
    for where, entry in _records(raw, str(path)):
        missing = [k for k in PAIR_KEYS if k not in (entry if isinstance(entry, dict) else ())]
        if missing:
            raise EvalDataError(f"{where} lacks {missing}")
        refs = [images(entry[k], f"{where} {k}") for k in ("image0", "image1")]
        captions = [_caption(entry[k], where, k) for k in ("caption0", "caption1")]
        group = subset_of(entry["image0"], path.stem)
        items.append(Item(id=f"{group}/{len(items)}", images=refs, captions=captions,
                          match=[[True, False], [False, True]], group=group, meta={"tags": [group]}))
    return items


def _read_list(root, name: str, what: str) -> list:
    path = Path(root) / name
    require_file(path, NAME, LAYOUT, fetch=NAME, root=root)
    return read_json(path, list, what)


def load_official(root) -> List[Item]:
    """Items of the official randomized annotation, un-shuffled into 2×2 samples (see the module docstring)."""
    entries = _read_list(root, RANDOM_ANNOTATION, "entries {'image', 'caption'}")
    order = _read_list(root, RANDOM_INDEX, "positions (a permutation)")
    info = _read_list(root, RANDOM_INFO, "records {'dataset', 'name', 'sample_cnt'}")
    n = len(entries)
    integers = all(isinstance(p, int) and not isinstance(p, bool) for p in order)
    if not integers or len(order) != n or len(info) != n or sorted(order) != list(range(n)):
        raise EvalDataError(f"{Path(root) / RANDOM_INDEX} must be a permutation of 0..{n - 1} and {RANDOM_INFO} must "
                            f"have one record per annotation entry ({n}); got {len(order)} positions and {len(info)} "
                            f"records")
    images = _Images(root)
    samples: Dict[tuple, Dict[str, Tuple[ImageRef, str]]] = {}
    for j, entry in enumerate(entries):
        where = f"{Path(root) / RANDOM_ANNOTATION}: entry {j}"
        record = info[order[j]]
        if not isinstance(record, dict) or record.get("name") not in SLOTS or "dataset" not in record \
                or not isinstance(record.get("sample_cnt"), int):
            raise EvalDataError(f"{Path(root) / RANDOM_INFO}: record {order[j]} (for entry {j}): expected "
                                f"{{'dataset', 'name' in {'|'.join(SLOTS)}, 'sample_cnt'}}, got {json_type(record)}")
        if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
            raise EvalDataError(f"{where}: expected {{'image', 'caption'}}")
        slot = samples.setdefault((str(record["dataset"]), record["sample_cnt"]), {})
        if record["name"] in slot:
            raise EvalDataError(f"{where}: sample {record['dataset']}/{record['sample_cnt']} has two {record['name']}")
        slot[record["name"]] = (images(entry["image"], where), _caption(entry["caption"], where, "caption"))
    items = []
    for (dataset, count), slot in samples.items():
        where = f"{Path(root) / RANDOM_INFO}: sample {dataset}/{count}"
        if set(slot) != set(SLOTS):
            raise EvalDataError(f"{where} has entries {sorted(slot)}; expected all of {', '.join(SLOTS)}")
        i0, i1 = slot["c0i0"][0], slot["c0i1"][0]
        c0, c1 = slot["c0i0"][1], slot["c1i0"][1]
        if (slot["c1i0"][0], slot["c1i1"][0], slot["c0i1"][1], slot["c1i1"][1]) != (i0, i1, c0, c1):
            raise EvalDataError(f"{where}: its four entries do not form a 2x2 (c0i0/c1i0 must share image 0, c0i1/c1i1 "
                                f"image 1, c0i0/c0i1 caption 0, c1i0/c1i1 caption 1)")
        items.append(Item(id=f"{dataset}/{count}", images=[i0, i1], captions=[c0, c1],
                          match=[[True, False], [False, True]], group=dataset, meta={"tags": [dataset]}))
    return items


def load(root, annotation=None) -> Tuple[List[Item], str]:
    """``(items, layout)`` for the layout found under ``root`` (``layout_of``)."""
    layout = layout_of(root, annotation)
    if layout == "official":
        return load_official(root), layout
    return load_pairs(root, annotation if layout == "pairs" else MINI_ANNOTATION), layout


def _subset_order(name: str) -> tuple:
    return (SUBSETS.index(name) if name in SUBSETS else len(SUBSETS), name)


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """Winoground text/image/group (%) per subset with tie counts, their mean over subsets and the micro over items.

    ``scores[k]``: ``[2, 2]``, rows = images (i0, i1), columns = captions (c0, c1).
    """
    overall = winoground.metrics(items, scores)  # its per-tag scores are per subset: each item's tag is its subset
    subsets = {s: overall["tags"][s] for s in sorted(overall["tags"], key=_subset_order)}
    mean = {s: sum(r[s] for r in subsets.values()) / len(subsets) for s in ("text", "image", "group")}
    return {"subsets": subsets, "subset_mean": mean,
            "micro": {s: overall[s] for s in ("text", "image", "group")},
            "n_items": overall["n_items"], "n_ties": overall["n_ties"]}


def evaluate(scorer, root, annotation=None) -> dict:
    items, _ = load(root, annotation)
    return metrics(items, scorer.score_items(items))
