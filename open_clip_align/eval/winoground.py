"""Winoground (Thrush et al., CVPR 2022): 2 images × 2 captions per item; text, image and group scores.

Caption j is true of image j only, and the two captions use the same words in a different order. With
s(c, i) the score of caption c on image i, and every comparison strict (a tie is wrong, and counted):
  text  = s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)   (each image picks its caption)
  image = s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0)   (each caption picks its image)
  group = text and image.                                Chance: 25 / 25 / 16.7 %.
The official data is the gated HF dataset ``facebook/winoground`` (not downloadable offline), so two local
layouts are read (``LAYOUT``): our ``pairs.jsonl`` (also written by ShapeCrepe, ``data/synthetic.py``) and
the HF export (``examples.jsonl`` + ``images/<name>.png``). CLIP_benchmark's ``winoground`` differs: it is
argmax-based, so ties resolve toward index 0.
"""
import re
from pathlib import Path
from typing import List, Sequence

import torch

from .items import EvalDataError, Item, existing_image, read_jsonl, require_file, text_field

PROTOCOL = {"tie_policy": "official (strict comparisons: a tie is wrong)",
            "averaging": "micro over items; per tag over the items carrying it",
            "split": "Winoground test (400 items) or ShapeCrepe pairs"}
LAYOUTS = {"pairs": "pairs.jsonl", "hf": "examples.jsonl"}
LAYOUT = ("either <root>/pairs.jsonl, one JSON object a line: {'id'?, 'image_0', 'image_1', 'caption_0', "
          "'caption_1', 'tags'?: [str]} with image paths relative to <root> and caption_j true of image_j only "
          "(ShapeCrepe writes winoground/<split>/pairs.jsonl); or the HF export of facebook/winoground: "
          "<root>/examples.jsonl ({'id', 'image_0', 'image_1', 'caption_0', 'caption_1', 'tag', "
          "'secondary_tag', 'num_main_preds', ...}, image_j a name such as 'ex_0_img_0') with images at "
          "<root>/images/<image_j>.png (unzip the dataset's images.zip there)")
KEYS = ("image_0", "image_1", "caption_0", "caption_1")


def _tags(path: Path, where: str, entry: dict, layout: str) -> List[str]:
    """pairs: the ``tags`` list; hf: ``tag``, each word of ``secondary_tag`` and ``main_preds=<n>``."""
    if layout == "pairs":
        tags = entry.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise EvalDataError(f"{path}: {where}: 'tags' must be a list of strings, got {tags!r}")
        return tags
    tags = [str(entry["tag"])] if entry.get("tag") else []
    tags += [t for t in re.split(r"[\s,]+", str(entry.get("secondary_tag") or "")) if t]
    if entry.get("num_main_preds") is not None:
        tags.append(f"main_preds={entry['num_main_preds']}")
    return tags


def load(root, layout: str = "auto") -> List[Item]:
    """Items from ``<root>/pairs.jsonl`` (``layout="pairs"``) or ``<root>/examples.jsonl`` (``"hf"``);
    ``"auto"`` takes pairs.jsonl if present, else examples.jsonl. Errors name the file and line."""
    root = Path(root)
    if layout == "auto":
        layout = "hf" if not (root / LAYOUTS["pairs"]).is_file() and (root / LAYOUTS["hf"]).is_file() else "pairs"
    if layout not in LAYOUTS:
        raise EvalDataError(f"unknown Winoground layout {layout!r}; expected auto, {', '.join(LAYOUTS)}")
    path = root / LAYOUTS[layout]
    require_file(path, "winoground", LAYOUT)
    items = []
    for line_no, entry in read_jsonl(path):
        where = f"line {line_no}" + (f" (id {entry['id']!r})" if isinstance(entry, dict) and "id" in entry else "")
        missing = set(KEYS + (("id",) if layout == "hf" else ())) - set(entry if isinstance(entry, dict) else ())
        if missing:
            raise EvalDataError(f"{path}: {where} lacks {sorted(missing)}")
        captions = [text_field(entry, key, f"{path}: {where}") for key in ("caption_0", "caption_1")]
        names = {key: text_field(entry, key, f"{path}: {where}") for key in ("image_0", "image_1")}
        images = [existing_image(root / (name if layout == "pairs" else f"images/{name}.png"), f"{path}: {where}", key)
                  for key, name in names.items()]
        items.append(Item(id=str(entry.get("id", len(items))), images=images,
                          captions=captions, match=[[True, False], [False, True]],
                          group="winoground", meta={"tags": _tags(path, where, entry, layout), "line": line_no}))
    if not items:
        raise EvalDataError(f"{path}: no items")
    return items


def decisions(scores: torch.Tensor):
    """``scores [n, 2, 2]`` with ``scores[k, i, c]`` = s(caption c, image i) → (text, image, group, tie), each
    ``[n]`` bool; ``tie`` marks items where any of the four comparisons is a tie."""
    s00, s01, s10, s11 = scores[:, 0, 0], scores[:, 0, 1], scores[:, 1, 0], scores[:, 1, 1]
    text = (s00 > s01) & (s11 > s10)
    image = (s00 > s10) & (s11 > s01)
    tie = (s00 == s01) | (s11 == s10) | (s00 == s10) | (s11 == s01)
    return text, image, text & image, tie


def _pct(hits: torch.Tensor) -> float:
    return 100.0 * hits.float().mean().item() if len(hits) else float("nan")


def _scores(text: torch.Tensor, image: torch.Tensor, group: torch.Tensor, tie: torch.Tensor) -> dict:
    return {"text": _pct(text), "image": _pct(image), "group": _pct(group), "n": len(text), "ties": int(tie.sum())}


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """Text, image and group scores (%) over all items and per tag, with tie counts.

    ``scores[k]``: ``[2, 2]``, rows = images (i0, i1), columns = captions (c0, c1) of ``items[k]``.
    """
    bad = [it.id for it, s in zip(items, scores) if tuple(s.shape) != (2, 2)]
    if bad or len(items) != len(scores):
        raise ValueError(f"Winoground needs one 2x2 score matrix per item; items {bad[:5]} are not 2x2 "
                         f"({len(items)} items, {len(scores)} matrices)")
    stacked = torch.stack(list(scores)) if scores else torch.zeros(0, 2, 2)
    text, image, group, tie = decisions(stacked)
    tags = {}
    for tag in dict.fromkeys(t for it in items for t in it.meta.get("tags", ())):
        idx = torch.tensor([k for k, it in enumerate(items) if tag in it.meta.get("tags", ())])
        tags[tag] = _scores(text[idx], image[idx], group[idx], tie[idx])
    overall = _scores(text, image, group, tie)
    return {"text": overall["text"], "image": overall["image"], "group": overall["group"], "tags": tags,
            "n_items": len(items), "n_ties": overall["ties"]}


def evaluate(scorer, root, layout: str = "auto") -> dict:
    """Score every item with ``scorer`` (each unique image and caption encoded once)."""
    items = load(root, layout)
    return metrics(items, scorer.score_items(items))
