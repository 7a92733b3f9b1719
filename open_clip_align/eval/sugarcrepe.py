"""SugarCrepe-format evaluation: seven JSON subsets, strict ``pos > neg``, category means and micro average.

Each ``<root>/<subset>.json`` is a dict keyed by string indices, values
``{"filename", "caption", "negative_caption"}``; images live in ``<root>/val2017/<filename>``.
"""
import json
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from .scoring import encode_images, encode_texts, pairwise_decisions

SUBSETS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
CATEGORIES = {"replace": ("replace_obj", "replace_att", "replace_rel"), "swap": ("swap_obj", "swap_att"),
              "add": ("add_obj", "add_att")}


def load_subset(root: Path, subset: str) -> List[dict]:
    """Items of one subset with absolute image paths; clear errors for missing or malformed files."""
    path = Path(root) / f"{subset}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"SugarCrepe subset file {path} not found: expected {subset}.json (official SugarCrepe format, a dict "
            f"of {{'filename', 'caption', 'negative_caption'}}) with images under {Path(root) / 'val2017'}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by item index, got {type(raw).__name__}")
    items = []
    for key, item in raw.items():
        missing = {"filename", "caption", "negative_caption"} - set(item if isinstance(item, dict) else ())
        if missing:
            raise ValueError(f"{path}: item {key!r} lacks {sorted(missing)}")
        image = Path(root) / "val2017" / item["filename"]
        if not image.is_file():
            raise FileNotFoundError(f"{path}: item {key!r} names image {image}, which does not exist")
        items.append({"id": key, "image": str(image), "caption": item["caption"],
                      "negative": item["negative_caption"]})
    return items


def summarize(per_subset: Dict[str, dict]) -> dict:
    """Category means (REPLACE/SWAP/ADD over the subsets present) and the micro average over items."""
    categories = {}
    for name, members in CATEGORIES.items():
        present = [per_subset[s]["acc"] for s in members if s in per_subset]
        if present:
            categories[name] = sum(present) / len(present)
    n = sum(r["n"] for r in per_subset.values())
    correct = sum(r["acc"] * r["n"] for r in per_subset.values())
    return {"categories": categories, "micro": correct / n if n else float("nan")}


def evaluate_sugarcrepe(model, preprocess, tokenizer, root, device="cpu", subsets: Sequence[str] = SUBSETS,
                        batch_size: int = 64, progress: bool = True) -> dict:
    """Accuracy (%) per subset with tie counts, plus category means and micro average.

    Every unique image across subsets is encoded once; captions are batched.
    """
    loaded = {s: load_subset(root, s) for s in subsets}
    all_items = [it for items in loaded.values() for it in items]
    images = encode_images(model, [it["image"] for it in all_items], preprocess, device, batch_size,
                           progress=progress)
    texts = encode_texts(model, tokenizer, [t for it in all_items for t in (it["caption"], it["negative"])], device,
                         progress=progress)
    per_subset = {}
    for subset, items in loaded.items():
        img = torch.stack([images[it["image"]] for it in items])
        pos = (img * torch.stack([texts[it["caption"]] for it in items])).sum(-1)
        neg = (img * torch.stack([texts[it["negative"]] for it in items])).sum(-1)
        correct, ties = pairwise_decisions(pos, neg)
        per_subset[subset] = {"acc": 100.0 * correct.float().mean().item(), "n": len(items),
                              "ties": int(ties.sum())}
    return {"subsets": per_subset, **summarize(per_subset),
            "protocol": {"tie_policy": "strict (tie counts as wrong)", "averaging": "per subset; category means; "
                         "micro over items", "precision": "fp32"}}
