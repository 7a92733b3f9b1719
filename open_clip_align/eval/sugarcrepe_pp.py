"""SugarCrepe++ (Dumpala et al., NeurIPS 2024 D&B): two lexically different positives and one hard negative per image.

Official data (``Sri-Harsha/scpp@c083bbf``, data CC-BY-4.0): ``data/<subset>.json`` for the five subsets of
``SUBSETS`` (no ``add_*``), each a JSON **list** of ``{"id", "filename", "caption", "caption2",
"negative_caption"}``; the images are COCO val2017, flattened into ``images/<filename>`` by the repository's
``download_coco_images.sh`` (``val2017/<filename>`` is read too). ``generated_data/`` (unvalidated generator output)
is never read.

Protocol (``VLMs/test_Variants_CLIP.py`` L52-99), with p1 = caption, p2 = caption2, n = negative_caption, cosines
of normalised embeddings and every comparison strict (a tie is wrong):
  ITT (image-to-text, the headline)  s(I,p1) > s(I,n) and s(I,p2) > s(I,n)
  TOT (text only)                    t(p1,p2) > t(p1,n) and t(p1,p2) > t(p2,n)
  Img-P1-Neg / Img-P2-Neg            s(I,p1) > s(I,n) / s(I,p2) > s(I,n)
Accuracy is per file (the paper's tables); there is no official overall, so the micro average over items and the
mean over subsets are ours and named so. TOT needs the scorer's text-text cosines (``score_text_pairs``); a scorer
without them (ComAlign) reports TOT as null.

An item is ``images=[I]``, ``captions=[p1, p2, n]``, ``match=[[T, T, F]]``. Items where p1 == n (swap_obj ids 2
and 8 in the release: always wrong under the strict rules, kept as the official count keeps them) or p2 == p1
(replace_att id 14) are flagged in ``meta`` and counted. The bag-identical slice (p1 and n the same multiset of
words, as in SugarCrepe) is reported per subset.
"""
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .items import EvalDataError, Item, chosen_subsets, existing_image, read_json, require_file, text_field
from .scoring import pairwise_decisions
from .sugarcrepe import bag_of_words

NAME = "sugarcrepe_pp"
SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
IMAGE_DIRS = ("images", "val2017")
FIELDS = ("filename", "caption", "caption2", "negative_caption")
LAYOUT = ("<root>/data/<subset>.json for any of " + ", ".join(SUBSETS) + " (official SugarCrepe++ format: a JSON "
          "list of {'id', 'filename', 'caption', 'caption2', 'negative_caption'}) and the COCO val2017 images under "
          "<root>/images/<filename> (as the repository's download_coco_images.sh writes them) or <root>/val2017/")
PROTOCOL = {
    "tie_policy": "official (strict comparisons: a tie is wrong, in ITT and TOT)",
    "decision": "p1 = caption, p2 = caption2, n = negative_caption; ITT: s(I,p1) > s(I,n) and s(I,p2) > s(I,n); "
                "TOT: t(p1,p2) > t(p1,n) and t(p1,p2) > t(p2,n); img_p1_neg / img_p2_neg: s(I,p) > s(I,n) "
                "(VLMs/test_Variants_CLIP.py L82-L88)",
    "averaging": "accuracy per subset file (the paper's tables); micro over items and the mean over subsets are "
                 "ours (there is no official overall)",
    "split": "SugarCrepe++ data/*.json (Sri-Harsha/scpp@c083bbf: 4,757 items), COCO val2017 images",
    "official_precision": "fp32 (open_clip create_model_and_transforms defaults; the official numbers are for "
                          "OpenAI weights with QuickGELU, e.g. ViT-B-32-quickgelu openai in open_clip 3.x)",
    "text_only": "TOT uses the scorer's text-text cosines (score_text_pairs); null for a scorer without them",
    "blind_baselines": "ITT only: TOT never looks at the image (it is itself a text-only task)",
    "n_ties": "items whose ITT decision met a tie (s(I,p1) == s(I,n) or s(I,p2) == s(I,n)); TOT ties in tot_ties",
}
HEADLINE = {"SugarCrepe++ ITT": "micro/itt", "SugarCrepe++ TOT": "micro/tot"}


def image_dir(root) -> Path:
    """``<root>/images`` if it is a folder, else ``<root>/val2017``."""
    root = Path(root)
    return next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])


def present_subsets(root) -> List[str]:
    return [s for s in SUBSETS if (Path(root) / "data" / f"{s}.json").is_file()]


def load_subset(root, subset: str) -> List[Item]:
    """Items of one subset file; errors name the file, the item and what was expected."""
    if subset not in SUBSETS:
        raise EvalDataError(f"unknown SugarCrepe++ subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    path = Path(root) / "data" / f"{subset}.json"
    require_file(path, NAME, LAYOUT, fetch=NAME, root=root)
    raw = read_json(path, list, "items {'id', 'filename', 'caption', 'caption2', 'negative_caption'}")
    images, items = image_dir(root), []
    for index, entry in enumerate(raw):
        key = entry.get("id", index) if isinstance(entry, dict) else index
        where = f"{path}: item {index} (id {key!r})"
        missing = [f for f in FIELDS if f not in (entry if isinstance(entry, dict) else ())]
        if missing:
            raise EvalDataError(f"{where} lacks {missing}")
        filename, p1, p2, neg = (text_field(entry, f, where) for f in FIELDS)
        image = existing_image(images / filename, where, hint="images are read from "
                               + " or ".join(str(Path(root) / d) for d in IMAGE_DIRS))
        items.append(Item(id=f"{subset}/{key}", images=[image], captions=[p1, p2, neg],
                          match=[[True, True, False]], group=subset,
                          meta={"bag_identical": bag_of_words(p1) == bag_of_words(neg), "p1_is_negative": p1 == neg,
                                "p2_is_negative": p2 == neg, "p1_is_p2": p1 == p2}))
    return items


def load(root, subsets: Optional[Sequence[str]] = None) -> List[Item]:
    """Items of ``subsets`` (default: every subset whose file is present; an error naming the layout if none)."""
    subsets = chosen_subsets(subsets, present_subsets(root), NAME, f"no subset file under {Path(root) / 'data'}",
                             LAYOUT, root)
    return [it for s in subsets for it in load_subset(root, s)]


def decisions(scores: torch.Tensor, text_scores: Optional[torch.Tensor] = None) -> dict:
    """The official comparisons. ``scores [n, 3]`` = s(I, [p1, p2, n]); ``text_scores [n, 3, 3]`` = t(a, b) over
    [p1, p2, n] or None. Returns ``[n]`` bool tensors ``itt``, ``img_p1_neg``, ``img_p2_neg``, ``itt_tie`` and, with
    text scores, ``tot``, ``tot_tie``."""
    p1, p1_tie = pairwise_decisions(scores[:, 0], scores[:, 2])
    p2, p2_tie = pairwise_decisions(scores[:, 1], scores[:, 2])
    out = {"itt": p1 & p2, "img_p1_neg": p1, "img_p2_neg": p2, "itt_tie": p1_tie | p2_tie}
    if text_scores is not None:
        over_p1, tie_p1 = pairwise_decisions(text_scores[:, 0, 1], text_scores[:, 0, 2])
        over_p2, tie_p2 = pairwise_decisions(text_scores[:, 0, 1], text_scores[:, 1, 2])
        out.update(tot=over_p1 & over_p2, tot_tie=tie_p1 | tie_p2)
    return out


def _pct(hits: torch.Tensor) -> Optional[float]:
    return 100.0 * int(hits.sum()) / len(hits) if len(hits) else None


ACCURACIES = ("itt", "tot", "img_p1_neg", "img_p2_neg")


def _stack(items: Sequence[Item], scores: Sequence[torch.Tensor], shape: tuple, what: str) -> torch.Tensor:
    bad = [it.id for it, s in zip(items, scores) if tuple(s.shape) != shape]
    if bad or len(items) != len(scores) or not items:
        raise ValueError(f"SugarCrepe++ needs one {list(shape)} {what} matrix per item; got {len(scores)} for "
                         f"{len(items)} items (wrong shape: {bad[:5]})")
    return torch.stack([s.double() for s in scores])


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor],
            text_scores: Optional[Sequence[torch.Tensor]] = None) -> dict:
    """Accuracies (%) per subset, micro over items and mean over subsets (both ours), tie and flag counts.

    ``scores[k]``: ``[1, 3]`` = s(image, [p1, p2, n]) of ``items[k]``; ``text_scores[k]``: ``[3, 3]`` text-text
    cosines over [p1, p2, n], or None (TOT is then null, e.g. for a blind or ComAlign scorer).
    """
    stacked = _stack(items, scores, (1, 3), "image-text")[:, 0]
    text = _stack(items, text_scores, (3, 3), "text-text") if text_scores is not None else None
    dec = decisions(stacked, text)
    subsets = {}
    for subset in [s for s in SUBSETS if any(it.group == s for it in items)] + sorted(
            {it.group for it in items} - set(SUBSETS)):
        idx = torch.tensor([k for k, it in enumerate(items) if it.group == subset])
        bag = torch.tensor([items[k].meta["bag_identical"] for k in idx.tolist()])
        row = {name: _pct(dec[name][idx]) if name in dec else None for name in ACCURACIES}
        row.update(n=len(idx), ties=int(dec["itt_tie"][idx].sum()),
                   tot_ties=int(dec["tot_tie"][idx].sum()) if "tot_tie" in dec else None,
                   bag_identical_share=_pct(bag), bag_identical_itt=_pct(dec["itt"][idx][bag]),
                   p1_is_negative=sum(items[k].meta["p1_is_negative"] for k in idx.tolist()),
                   p1_is_p2=sum(items[k].meta["p1_is_p2"] for k in idx.tolist()))
        subsets[subset] = row
    micro = {name: _pct(dec[name]) if name in dec else None for name in ACCURACIES}
    mean = {name: (sum(r[name] for r in subsets.values()) / len(subsets) if name in dec else None)
            for name in ACCURACIES}
    return {"subsets": subsets, "micro": micro, "subset_mean": mean, "n_items": len(items),
            "n_ties": int(dec["itt_tie"].sum()), "tot_ties": int(dec["tot_tie"].sum()) if "tot_tie" in dec else None}


def text_pair_scores(scorer, items: Sequence[Item]) -> Optional[List[torch.Tensor]]:
    """``scorer.score_text_pairs(items)`` when the scorer has text-text cosines, else None (TOT reported null)."""
    score_text_pairs = getattr(scorer, "score_text_pairs", None)
    return score_text_pairs(items) if callable(score_text_pairs) else None


def evaluate(scorer, root, subsets: Optional[Sequence[str]] = None) -> dict:
    """Score the subsets with ``scorer`` (each unique image and caption encoded once)."""
    items = load(root, subsets)
    return metrics(items, scorer.score_items(items), text_pair_scores(scorer, items))
