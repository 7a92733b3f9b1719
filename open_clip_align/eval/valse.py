"""VALSE (Parcalabescu et al., ACL 2022): 11 foiling instruments, strict ``caption > foil``, mturk-valid items.

Each ``<root>/<instrument>.json`` is a dict keyed by item id; each value has ``dataset`` (the image's source
dataset), ``image_file``, ``caption``, ``foil``, ``classes``, ``classes_foil`` and ``mturk: {caption, foil,
other}`` (how many of 3 annotators picked the caption / the foil / neither). An item is one image ×
[caption, foil]; it is correct iff s(img, caption) > s(img, foil) strictly, so a tie is wrong (and counted).
CE-CLIP's ``clip_valse_eval.py`` (used by DeGLA) takes softmax(100·[s_c, s_f])[0] > 0.5: the same decision,
and it keeps only ``mturk.caption >= 2``, the VALSE README's "valid" items, as we do by default.

Images come from several datasets (Visual7W, COCO 2014/2017, SWiG, VisDial), so an item's image is looked up
by its ``dataset`` field: ``<root>/images/<dataset>/<image_file>`` unless ``image_dirs`` names the folder(s)
for that dataset (see ``LAYOUT``). The released files spell COCO 2017 two ways (``plurals.json``: ``coco2017``,
``relations.json``: ``coco_2017``); both spellings find images under either folder name. "avg" is the mean of
the instrument accuracies (all 11: the papers' Avg); the 9 columns of the DeGLA/CE-CLIP tables group them,
Counting being the mean of the three counting files.
"""
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch

from .items import EvalDataError, ImageRef, Item, read_json, require_file, text_field
from .scoring import pairwise_decisions

INSTRUMENTS = ("existence", "plurals", "counting-hard", "counting-small-quant", "counting-adversarial",
               "relations", "action-replacement", "actant-swap", "coreference-standard", "coreference-hard",
               "foil-it")
COLUMNS = {"Existence": ("existence",), "Plurality": ("plurals",),
           "Counting": ("counting-hard", "counting-small-quant", "counting-adversarial"),
           "Spatial relations": ("relations",), "Action replacement": ("action-replacement",),
           "Actant swap": ("actant-swap",), "Coreference standard": ("coreference-standard",),
           "Coreference clean": ("coreference-hard",), "Foil-it": ("foil-it",)}
MIN_CAPTION_VOTES = 2
# one image source, two spellings in the released files: plurals.json "coco2017", relations.json "coco_2017"
DATASET_ALIASES = {"coco2017": ("coco2017", "coco_2017"), "coco_2017": ("coco_2017", "coco2017")}


def protocol(mturk_filter: bool = True) -> dict:
    """What decides the numbers, for the result JSON; ``filter`` says whether invalid items were dropped."""
    return {"tie_policy": "official (strict: a tie is wrong; CE-CLIP's softmax > 0.5 gives the same decision)",
            "averaging": "per instrument; avg = mean of the instrument accuracies (11 = the papers' Avg); "
                         "9 DeGLA/CE-CLIP columns with Counting = mean of the 3 counting files",
            "filter": (f"mturk.caption >= {MIN_CAPTION_VOTES} (VALSE README 'valid' items)" if mturk_filter else
                       "none (every item, mturk_filter=False)") + "; kept/dropped per instrument in metrics",
            "split": "VALSE (every item of each instrument file)"}


PROTOCOL = protocol(mturk_filter=True)
LAYOUT = ("<root>/<instrument>.json for each of " + ", ".join(INSTRUMENTS) + " (official VALSE format: a dict "
          "of {'dataset', 'image_file', 'caption', 'foil', 'classes', 'classes_foil', 'mturk': {'caption', "
          "'foil', 'other'}}); each item's image at <root>/images/<dataset>/<image_file>, <dataset> being the "
          "item's 'dataset' field verbatim (visual7w, SWiG, VisDial_v1.0, 'FOIL dataset'; COCO 2017 is spelled "
          "coco2017 in plurals.json and coco_2017 in relations.json: one folder named either way serves both), "
          "or in the folder(s) given by image_dirs={dataset: dir or [dirs]} (relative to <root>; several dirs are "
          "searched in order, e.g. VisDial_v1.0 items name COCO train2014, COCO val2014 and VisualDialog_val2018 "
          "files)")

ImageDirs = Mapping[str, Union[str, Path, Sequence[Union[str, Path]]]]


def check_instruments(instruments: Sequence[str]) -> None:
    unknown = [name for name in instruments if name not in INSTRUMENTS]
    if unknown:
        raise EvalDataError(f"unknown VALSE instrument(s) {', '.join(map(repr, unknown))}; expected some of "
                            f"{', '.join(INSTRUMENTS)}")


def image_folders(root, dataset: str, image_dirs: Optional[ImageDirs] = None) -> List[Path]:
    """The folders searched, in order, for an image of source ``dataset`` (see ``LAYOUT``): ``image_dirs``'
    entry for the dataset (or for another spelling of it, ``DATASET_ALIASES``), else ``images/<spelling>`` for
    each spelling."""
    names = DATASET_ALIASES.get(dataset, (dataset,))
    given = next((image_dirs[n] for n in names if n in (image_dirs or {})), None)
    if given is None:
        return [Path(root) / "images" / name for name in names]
    return [Path(root) / d for d in ([given] if isinstance(given, (str, Path)) else given)]


def _is_valid(path: Path, key: str, entry: dict) -> bool:
    """VALSE README: valid iff at least 2 of 3 annotators chose the caption (and not the foil)."""
    mturk = entry.get("mturk")
    votes = mturk.get("caption") if isinstance(mturk, dict) else None
    if isinstance(votes, bool) or not isinstance(votes, (int, float)) or not math.isfinite(votes):
        raise EvalDataError(f"{path}: item {key!r} lacks a numeric mturk.caption (needed by the mturk filter; "
                            f"pass mturk_filter=False to keep every item)")
    return votes >= MIN_CAPTION_VOTES


def load_instrument(root, instrument: str, mturk_filter: bool = True,
                    image_dirs: Optional[ImageDirs] = None) -> List[Item]:
    """Items of one instrument (only mturk-valid ones unless ``mturk_filter=False``); images checked for the
    items kept. Each item's ``meta["n_in_file"]`` is the instrument's item count before filtering."""
    check_instruments([instrument])
    path = Path(root) / f"{instrument}.json"
    require_file(path, "valse", LAYOUT)
    raw = read_json(path, dict, "items keyed by item id")
    items = []
    for key, entry in raw.items():
        missing = {"dataset", "image_file", "caption", "foil"} - set(entry if isinstance(entry, dict) else ())
        if missing:
            raise EvalDataError(f"{path}: item {key!r} lacks {sorted(missing)}")
        where = f"{path}: item {key!r}"
        dataset, image_file, caption, foil = (text_field(entry, f, where)
                                              for f in ("dataset", "image_file", "caption", "foil"))
        if mturk_filter and not _is_valid(path, key, entry):
            continue
        folders = image_folders(root, dataset, image_dirs)
        image = next((d / image_file for d in folders if (d / image_file).is_file()), None)
        if image is None:
            raise EvalDataError(f"{where} names image {image_file!r} (dataset {dataset!r}), not found in "
                                f"{', '.join(map(str, folders))}")
        items.append(Item(id=f"{instrument}/{key}", images=[ImageRef(str(image))],
                          captions=[caption, foil], match=[[True, False]], group=instrument,
                          meta={"n_in_file": len(raw), "mturk_filter": mturk_filter, "dataset": entry["dataset"],
                                "mturk": entry.get("mturk"), "classes": entry.get("classes"),
                                "classes_foil": entry.get("classes_foil")}))
    if not items:
        raise EvalDataError(f"{path}: none of its {len(raw)} items is valid (mturk.caption >= "
                            f"{MIN_CAPTION_VOTES}); pass mturk_filter=False to keep every item")
    return items


def load(root, instruments: Sequence[str] = INSTRUMENTS, mturk_filter: bool = True,
         image_dirs: Optional[ImageDirs] = None) -> List[Item]:
    check_instruments(instruments)
    return [it for name in instruments for it in load_instrument(root, name, mturk_filter, image_dirs)]


def summarize(accuracy: Dict[str, float]) -> dict:
    """``avg`` = mean of the instrument accuracies given (``avg_over`` of them), and the 9 DeGLA/CE-CLIP
    columns whose instruments are present (Counting = mean of the counting files present)."""
    columns = {}
    for column, members in COLUMNS.items():
        present = [accuracy[name] for name in members if name in accuracy]
        if present:
            columns[column] = sum(present) / len(present)
    avg = sum(accuracy.values()) / len(accuracy) if accuracy else float("nan")
    return {"avg": avg, "avg_over": len(accuracy), "columns": columns}


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """``acc``: accuracy (%) per instrument; ``instruments``: its item, tie, kept and dropped counts; ``avg``
    and the 9 grouped ``columns``.

    ``scores[k]``: ``[1, 2]`` = [[s(img, caption), s(img, foil)]] of ``items[k]``.
    """
    pos = torch.stack([s[0, 0] for s in scores]) if scores else torch.zeros(0)
    neg = torch.stack([s[0, 1] for s in scores]) if scores else torch.zeros(0)
    correct, ties = pairwise_decisions(pos, neg)
    present = set(it.group for it in items)
    acc, counts = {}, {}
    for name in [n for n in INSTRUMENTS if n in present] + sorted(present - set(INSTRUMENTS)):
        idx = torch.tensor([i for i, it in enumerate(items) if it.group == name])
        in_file = items[int(idx[0])].meta.get("n_in_file", len(idx))
        acc[name] = 100.0 * correct[idx].float().mean().item()
        counts[name] = {"n": len(idx), "ties": int(ties[idx].sum()), "kept": len(idx), "dropped": in_file - len(idx)}
    return {"acc": acc, **summarize(acc), "instruments": counts,
            "mturk_filter": all(it.meta.get("mturk_filter", False) for it in items),
            "n_items": len(items), "n_ties": int(ties.sum())}


def evaluate(scorer, root, instruments: Sequence[str] = INSTRUMENTS, mturk_filter: bool = True,
             image_dirs: Optional[ImageDirs] = None) -> dict:
    """Score the instruments with ``scorer`` (unique images encoded once across instruments)."""
    items = load(root, instruments, mturk_filter, image_dirs)
    return metrics(items, scorer.score_items(items))
