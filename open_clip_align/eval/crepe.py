"""CREPE (Ma et al., CVPR 2023; ``RAIVNLab/CREPE@1fa81c4``): image-to-text retrieval among hard negatives.

Each CSV row is a Visual Genome region (``image_id, caption, x, y, width, height`` plus a Python-list string of
hard negatives): the image ``VG_100K/<id>.jpg`` or ``VG_100K_2/<id>.jpg`` (searched in that order, as
``crepe_eval_utils.get_image_by_id``) is cropped to (x, y, width, height) (``TF.crop``, which is PIL's crop: the
same as ``ImageRef.box``) and scored against [caption] + its negatives (``crepe_compo_eval_open_clip.py``
L144-168, ``crepe_eval_utils.py`` L18-76). The caption's 0-based rank gives R@{1,3,5,10} = mean(rank < k), mean
rank = mean + 1, median rank = floor(median) + 1, rank std, per file.

- Productivity: ``prod_hard_negatives/<type>/prod_vg_hard_negs_<type>_complexity_<k>.csv``, type ∈ atom, swap,
  negate, k = 4..12, negatives in ``hard_negs``; dataset ``crepe/<type>/complexity_<k>``. The paper plots R@1
  per complexity.
- Systematicity: ``syst_hard_negatives/syst_vg_hard_negs_<seen|unseen>_compounds_in_<cc12m|yfcc|laion>.csv``
  with ``valid_hard_negs_{atom,comp,combined}``; dataset ``crepe/syst_<type>/<seen|unseen>_in_<corpus>``. Valid
  only for models pretrained on that corpus (README): never for OpenAI CLIP. The protocol says so.

Partial reproduction: the official ranking uses ``torch.argsort`` (tie order unspecified); here the caption ranks
at 1 + #negatives scoring >= it (pessimistic) and ties are counted. Each row is its own item (the CLIP script's
``set_size = n_texts // n_images`` split misaligns rows with different negative counts). Reference numbers are
figures only (not checked).
"""
import math
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .csv_files import list_cell, number_cell, read_rows, text_cell
from .items import EvalDataError, ImageRef, Item, data_missing

NAME = "crepe"
PROD_TYPES = ("atom", "swap", "negate")
COMPLEXITIES = tuple(range(4, 13))
SYST_TYPES = ("atom", "comp", "combined")
SYST_SPLITS = ("seen", "unseen")
SYST_CORPORA = ("cc12m", "yfcc", "laion")
IMAGE_DIRS = ("VG_100K", "VG_100K_2")
RECALL_K = (1, 3, 5, 10)
BOX_COLUMNS = ("x", "y", "width", "height")
LAYOUT = ("the released zips (RAIVNLab/CREPE data/prod_hard_negatives.zip, data/syst_hard_negatives.zip) "
          "extracted under <root>: <root>/prod_hard_negatives/<atom|swap|negate>/prod_vg_hard_negs_<type>_complexity_"
          "<4..12>.csv and/or <root>/syst_hard_negatives/syst_vg_hard_negs_<seen|unseen>_compounds_in_<cc12m|yfcc|"
          "laion>.csv (columns image_id, caption, x, y, width, height and a Python-list string of negatives: "
          "hard_negs, or valid_hard_negs_<atom|comp|combined>), with Visual Genome images at <root>/VG_100K/<id>.jpg "
          "or <root>/VG_100K_2/<id>.jpg")
PROTOCOL = {"tie_policy": "pessimistic: the caption ranks at 1 + #negatives scoring >= it (the official argsort "
                          "leaves tie order unspecified); ties counted",
            "averaging": "per file: R@{1,3,5,10} = share of rows with rank < k, mean rank, floor(median) + 1, rank std",
            "crop": "image cropped to (x, y, x+width, y+height), as TF.crop on a PIL image",
            "official_precision": "open_clip models under AMP (crepe_compo_eval_open_clip.py); clip.load runs fp16 "
                                  "on GPU"}
HEADLINE = {f"CREPE {t} c{k} R@1": f"crepe/{t}/complexity_{k}/R@1" for t in PROD_TYPES for k in (4, 8, 12)}
_SYST_FILE = re.compile(r"syst_vg_hard_negs_(seen|unseen)_compounds_in_(cc12m|yfcc|laion)\.csv$")


def prod_file(root, kind: str, complexity: int) -> Path:
    return Path(root) / "prod_hard_negatives" / kind / f"prod_vg_hard_negs_{kind}_complexity_{complexity}.csv"


def syst_file(root, split: str, corpus: str) -> Path:
    return Path(root) / "syst_hard_negatives" / f"syst_vg_hard_negs_{split}_compounds_in_{corpus}.csv"


def present_files(root) -> List[Tuple[str, Path, str]]:
    """``[(dataset, csv path, negatives column)]`` for every CREPE file under ``root``: productivity by type and
    complexity, then systematicity by negative type, split and corpus."""
    found = [(f"{NAME}/{kind}/complexity_{k}", prod_file(root, kind, k), "hard_negs")
             for kind in PROD_TYPES for k in COMPLEXITIES if prod_file(root, kind, k).is_file()]
    for kind in SYST_TYPES:
        for split in SYST_SPLITS:
            for corpus in SYST_CORPORA:
                path = syst_file(root, split, corpus)
                if path.is_file():
                    found.append((f"{NAME}/syst_{kind}/{split}_in_{corpus}", path, f"valid_hard_negs_{kind}"))
    return found


def _image(root: Path, image_id: str, where: str, cache: Dict[str, str]) -> str:
    if image_id not in cache:
        for folder in IMAGE_DIRS:
            path = root / folder / f"{image_id}.jpg"
            if path.is_file():
                cache[image_id] = str(path)
                break
        else:
            raise EvalDataError(f"{where}: image {image_id}.jpg is in neither {root / IMAGE_DIRS[0]} nor "
                                f"{root / IMAGE_DIRS[1]}")
    return cache[image_id]


def load_file(root, path, negatives: str, group: str) -> List[Item]:
    """One item per row: the cropped region × [caption] + negatives, ``match = [[T, F, ...]]``."""
    root, path = Path(root), Path(path)
    items, images = [], {}
    for line, row in read_rows(path, ("image_id", "caption", *BOX_COLUMNS, negatives)):
        where = f"{path}: line {line}"
        image_id = (row["image_id"] or "").strip()
        if not image_id:
            raise EvalDataError(f"{where}: column 'image_id' is empty")
        box = tuple(number_cell(row, c, where) for c in BOX_COLUMNS)
        if box[2] <= 0 or box[3] <= 0:
            raise EvalDataError(f"{where}: width and height must be positive, got {box[2]:g} x {box[3]:g}")
        captions = [text_cell(row, "caption", where)] + list_cell(row, negatives, where, allow_empty=True)
        items.append(Item(id=f"{group}/{line}", images=[ImageRef(_image(root, image_id, where, images), box)],
                          captions=captions, match=[[True] + [False] * (len(captions) - 1)], group=group,
                          meta={"line": line, "image_id": image_id}))
    return items


def ranks(scores: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rank [n], tie [n])`` from one ``[1, 1 + n_negatives]`` matrix per row (caption first): the 0-based rank is
    the number of negatives scoring >= the caption; ``tie`` marks rows where a negative scores exactly as the
    caption."""
    rank, tie = [], []
    for s in scores:
        if s.dim() != 2 or s.shape[0] != 1:
            raise ValueError(f"CREPE needs one [1, 1 + n_negatives] score matrix per row, got {list(s.shape)}")
        row = s[0]
        rank.append(int((row[1:] >= row[0]).sum()))
        tie.append(bool((row[1:] == row[0]).any()))
    return torch.tensor(rank, dtype=torch.long), torch.tensor(tie, dtype=torch.bool)


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """R@1/3/5/10 (%), mean rank, median rank and rank std (1-based ranks, as the official metrics), tie count."""
    if len(items) != len(scores):
        raise ValueError(f"CREPE needs one score matrix per item ({len(items)} items, {len(scores)} matrices)")
    rank, tie = ranks(scores)
    values = rank.double()
    n = len(rank)
    result = {f"R@{k}": 100.0 * (rank < k).double().mean().item() if n else None for k in RECALL_K}
    result.update(mean_rank=values.mean().item() + 1 if n else None,
                  median_rank=math.floor(statistics.median(rank.tolist())) + 1 if n else None,
                  rank_std=values.std(unbiased=False).item() if n else None,
                  mean_negatives=sum(len(it.captions) - 1 for it in items) / n if n else None,
                  n_items=n, n_ties=int(tie.sum()))
    return result


def protocol(dataset: str, path: Path) -> dict:
    split = "productivity" if "/syst_" not in dataset else "systematicity"
    extra = ({"validity": "systematicity is valid only for a model pretrained on the corpus in the file name "
                          "(CC12M, YFCC15M or LAION-400M): never for OpenAI CLIP (CREPE README)"}
             if split == "systematicity" else {})
    return {**PROTOCOL, "split": f"CREPE {split}: {path.name}", **extra}


def parts(scorer, root, files: Optional[Sequence[Tuple[str, Path, str]]] = None) -> List[tuple]:
    """``[(dataset, task, metrics, protocol, items, metrics_fn)]`` for every CREPE file present (or ``files``)."""
    files = present_files(root) if files is None else files
    if not files:
        raise data_missing(NAME, f"no CREPE CSV under {root}", LAYOUT, NAME, root)
    out = []
    for dataset, path, negatives in files:
        items = load_file(root, path, negatives, dataset[len(NAME) + 1:])
        out.append((dataset, "compositionality", metrics(items, scorer.score_items(items)), protocol(dataset, path),
                    items, metrics))
    return out
