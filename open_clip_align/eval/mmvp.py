"""MMVP-VLM (Tong et al., CVPR 2024): 135 "CLIP-blind" image pairs, each statement must pick its own image.

Official data (HF ``MMVP/MMVP_VLM``, MIT): ``Questions.csv`` (a header row, then ``Question ID, Type, Statement``
per row; rows 2k-1 and 2k form a pair) and ``MLLM_VLM Images/<Type>/<qid>.jpg`` (a space in the folder name;
the README's ``MMVP_VLM_Images`` is wrong).

Protocol (``tsb0601/MMVP@7635005``, ``scripts/evaluate_vlm.py``): text = ``"a photo of " + statement``; both images
of a pair are read from the *first* row's Type folder; per statement, softmax over the two images of the CLIP
logits (100·cos) and pred = img1 iff p(img1) > 0.5, which is s(img1, t) > s(img2, t) (the softmax is monotone and
p = 0.5 exactly at a tie); ground truth = img1 iff the statement's qid is odd. A pair is right iff both statements
pick their image (Winoground's image score). **Ties:** p = 0.5 predicts img2, so a tie is right for the even-qid
statement and wrong for the odd one (``official``); ``strict`` counts both wrong. Category = the 9 names below by
**row order** (pair index // 15), not the Type column; per-category accuracy = right pairs / pairs; the headline is
the mean of the categories (the official denominator is num_pairs // 9, which is the category size on the released
135 pairs).
"""
import csv
from pathlib import Path
from typing import List, Sequence

import torch

from .items import EvalDataError, ImageRef, Item, require_file

NAME = "mmvp_vlm"
CATEGORIES = ("Orientation and Direction", "Presence of Specific Features", "State and Condition",
              "Quantity and Count", "Positional and Relational Context", "Color and Appearance",
              "Structural Characteristics", "Texts", "Viewpoint and Perspective")
PAIRS_PER_CATEGORY = 15
PREFIX = "a photo of "
CSV_FILE = "Questions.csv"
IMAGE_DIR = "MLLM_VLM Images"
LAYOUT = (f"<root>/{CSV_FILE} (official MMVP-VLM format: a header row, then rows 'Question ID,Type,Statement'; "
          f"consecutive rows (qid 2k-1, 2k) form a pair) and <root>/{IMAGE_DIR}/<Type>/<qid>.jpg (folder name with a "
          f"space, as on HF MMVP/MMVP_VLM)")
PROTOCOL = {
    "tie_policy": "official (a statement picks img1 iff p(img1) > 0.5, i.e. s(img1) > s(img2): a tie picks img2, "
                  "right for the even-qid statement, wrong for the odd one); *_strict counts every tie wrong",
    "decision": "text = 'a photo of ' + statement; a pair is right iff both statements pick their own image (the "
                "odd qid's image for the odd qid); both images from the first row's Type folder",
    "averaging": "category = CATEGORIES[pair index // 15] by row order; accuracy per category over its pairs; "
                 "headline = mean over categories (= the official mean of the 9 on the 135 released pairs)",
    "split": "MMVP-VLM Questions.csv (135 pairs, 270 images; HF MMVP/MMVP_VLM)",
    "official_precision": "the released script runs ViT-L/14 via clip.load with its default device='cpu' (fp32); "
                          "clip.load on a GPU runs fp16",
    "blind_baselines": "not applicable: each statement chooses between two images, and a text-only scorer scores "
                       "both images alike (every decision would be a tie)",
}
HEADLINE = {"MMVP-VLM": "mean"}


def _rows(path: Path) -> List[tuple]:
    """``[(line number, qid, type, statement)]`` after the header; errors name the file and line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except UnicodeDecodeError as err:
        raise EvalDataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows = []
    for line_no, row in enumerate(lines[1:], 2):
        if not row:
            continue
        if len(row) != 3 or not row[0].strip().isdigit() or not row[1].strip() or not row[2].strip():
            raise EvalDataError(f"{path}: line {line_no}: expected 'Question ID,Type,Statement' with an integer id "
                                f"and non-empty type and statement, got {row!r}")
        rows.append((line_no, int(row[0]), row[1], row[2]))
    if not rows:
        raise EvalDataError(f"{path}: no statement rows after the header")
    if len(rows) % 2:
        raise EvalDataError(f"{path}: {len(rows)} statement rows, an odd number: rows pair up consecutively, so "
                            f"line {rows[-1][0]} has no partner")
    if len(rows) // 2 > PAIRS_PER_CATEGORY * len(CATEGORIES):
        raise EvalDataError(f"{path}: {len(rows) // 2} pairs; MMVP-VLM has {PAIRS_PER_CATEGORY} pairs per category "
                            f"for {len(CATEGORIES)} categories ({PAIRS_PER_CATEGORY * len(CATEGORIES)} pairs)")
    return rows


def load(root) -> List[Item]:
    """One item per pair: ``images=[img(qid1), img(qid2)]`` (both from qid1's Type folder), ``captions=[t1, t2]``,
    ``match[i][j]`` True iff statement j's qid parity names image i (odd → img1)."""
    root = Path(root)
    path = root / CSV_FILE
    require_file(path, NAME, LAYOUT, fetch=NAME, root=root)
    rows, items = _rows(path), []
    for k in range(0, len(rows), 2):
        (line1, qid1, type1, text1), (_, qid2, _, text2) = rows[k], rows[k + 1]
        images = []
        for qid in (qid1, qid2):
            image = root / IMAGE_DIR / type1 / f"{qid}.jpg"
            if not image.is_file():
                raise EvalDataError(f"{path}: line {line1} (pair {qid1}/{qid2}) needs image {image}, which does not "
                                    f"exist")
            images.append(ImageRef(str(image)))
        truth = [0 if qid % 2 == 1 else 1 for qid in (qid1, qid2)]
        category = CATEGORIES[(k // 2) // PAIRS_PER_CATEGORY]
        items.append(Item(id=f"{qid1}-{qid2}", images=images, captions=[PREFIX + text1, PREFIX + text2],
                          match=[[truth[j] == i for j in range(2)] for i in range(2)], group=category,
                          meta={"qids": (qid1, qid2), "truth": truth, "type": type1}))
    return items


def decisions(scores: torch.Tensor, truth: torch.Tensor):
    """``scores [n, 2, 2]`` (rows = [img1, img2], columns = the pair's two statements), ``truth [n, 2]`` = each
    statement's image index → (pair right (official), pair right (strict), tie), each ``[n]`` bool; ``tie`` marks
    pairs where a statement scored both images alike."""
    picks_img1 = scores[:, 0, :] > scores[:, 1, :]
    ties = scores[:, 0, :] == scores[:, 1, :]
    right = picks_img1 == (truth == 0)
    return right.all(dim=1), (right & ~ties).all(dim=1), ties.any(dim=1)


def _pct(hits: torch.Tensor) -> float:
    return 100.0 * int(hits.sum()) / len(hits)


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """Pair accuracy (%) per category (official and strict), their mean (the headline) and the micro over pairs.

    ``scores[k]``: ``[2, 2]``, rows = the pair's images [img(qid1), img(qid2)], columns = its statements.
    """
    bad = [it.id for it, s in zip(items, scores) if tuple(s.shape) != (2, 2)]
    if bad or len(items) != len(scores) or not items:
        raise ValueError(f"MMVP-VLM needs one 2x2 score matrix per pair ({len(items)} items, {len(scores)} "
                         f"matrices; not 2x2: {bad[:5]})")
    right, strict, tie = decisions(torch.stack([s.double() for s in scores]),
                                   torch.tensor([it.meta["truth"] for it in items]))
    categories = {}
    for category in [c for c in CATEGORIES if any(it.group == c for it in items)]:
        idx = torch.tensor([k for k, it in enumerate(items) if it.group == category])
        categories[category] = {"acc": _pct(right[idx]), "acc_strict": _pct(strict[idx]), "n": len(idx),
                                "ties": int(tie[idx].sum())}
    mean = sum(c["acc"] for c in categories.values()) / len(categories)
    mean_strict = sum(c["acc_strict"] for c in categories.values()) / len(categories)
    return {"categories": categories, "mean": mean, "mean_strict": mean_strict, "micro": _pct(right),
            "n_items": len(items), "n_ties": int(tie.sum())}


def evaluate(scorer, root) -> dict:
    items = load(root)
    return metrics(items, scorer.score_items(items))
