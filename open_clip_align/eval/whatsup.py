"""WhatsUp (Kamath et al., EMNLP 2023): spatial relations, one image × 4 (or 2) caption options, the first true.

Official files (``amitakamath/whatsup_vlms@7c1f255``, ``dataset_zoo/aro_datasets.py``; all on Google Drive):

- ``controlled_images_dataset.json`` (Controlled_Images_A) / ``controlled_clevr_dataset.json`` (…_B): a JSON list
  of ``{"image_path": "data/controlled_images/beer-bottle_on_armchair.jpeg", "caption_options": [4 captions]}``.
  The official loader opens ``image_path`` relative to the working directory; here a leading ``data/`` is
  dropped and the rest resolved under the root (``controlled_images/``, ``controlled_clevr/``).
- ``coco_qa_{one,two}_obj.json`` (COCO-spatial) / ``vg_qa_{one,two}_obj.json`` (GQA-spatial): a JSON list of
  ``[image_id, true_caption, false_caption]``; images ``val2017/<id zero-padded to 12>.jpg`` /
  ``vg_images/<id>.jpg``.

Protocol: cosine scores; pred = ``np.argmax`` over the options (the first maximum), correct iff pred == 0, so **a
tie counts as correct** (``official``); ``acc_strict`` counts it wrong. Per-preposition accuracy as the loaders
define the preposition. Controlled only: an image's key is (first, last ``_`` token of its file name without
``.jpeg``), its slot the second token; **pair** accuracy = #(left ∧ right right) + #(on ∧ under | in-front ∧
behind right) over N/2, **set** accuracy = #(all 4 right) over N/4. Headlines (README, Table 1): WhatsUp =
mean(A, B), COCO-spatial = mean(one, two), GQA-spatial = mean(one, two) of the individual accuracies.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .aro import first_argmax_decisions
from .items import EvalDataError, Item, chosen_subsets, existing_image, json_type, read_json, require_file

NAME = "whatsup"
SUBSETS = {  # ours -> (annotation file, image folder, official dataset name)
    "controlled_a": ("controlled_images_dataset.json", "controlled_images", "Controlled_Images_A"),
    "controlled_b": ("controlled_clevr_dataset.json", "controlled_clevr", "Controlled_Images_B"),
    "coco_qa_one_obj": ("coco_qa_one_obj.json", "val2017", "COCO_QA_one_obj"),
    "coco_qa_two_obj": ("coco_qa_two_obj.json", "val2017", "COCO_QA_two_obj"),
    "vg_qa_one_obj": ("vg_qa_one_obj.json", "vg_images", "VG_QA_one_obj"),
    "vg_qa_two_obj": ("vg_qa_two_obj.json", "vg_images", "VG_QA_two_obj"),
}
SLOTS = {"controlled_a": ("left", "right", "on", "under"), "controlled_b": ("left", "right", "in-front", "behind")}
PAIRS = {"controlled_a": (("left", "right"), ("on", "under")),
         "controlled_b": (("left", "right"), ("in-front", "behind"))}
HEADLINES = {"whatsup": ("controlled_a", "controlled_b"), "coco_spatial": ("coco_qa_one_obj", "coco_qa_two_obj"),
             "gqa_spatial": ("vg_qa_one_obj", "vg_qa_two_obj")}
HEADLINE = {"WhatsUp (A, B)": "whatsup", "COCO-spatial": "coco_spatial", "GQA-spatial": "gqa_spatial"}
LAYOUT = ("any of: <root>/controlled_images_dataset.json with <root>/controlled_images/, "
          "<root>/controlled_clevr_dataset.json with <root>/controlled_clevr/ (a JSON list of {'image_path': "
          "'data/controlled_images/<a>_<preposition>_<b>.jpeg', 'caption_options': [true, false, ...]}); "
          "<root>/coco_qa_{one,two}_obj.json with <root>/val2017/<12-digit id>.jpg, <root>/vg_qa_{one,two}_obj.json "
          "with <root>/vg_images/<id>.jpg (a JSON list of [image_id, true_caption, false_caption]); the first "
          "caption option is the true one")
PROTOCOL = {
    "tie_policy": "official (pred = first argmax over the options, correct iff 0: a tie counts as correct); "
                  "acc_strict counts it wrong",
    "averaging": "per subset: individual accuracy, per-preposition accuracy; Controlled A/B also pair (N/2) and set "
                 "(N/4) accuracy; headlines WhatsUp = mean(A, B), COCO-spatial = mean(one, two), GQA-spatial = "
                 "mean(one, two) (null unless both subsets ran)",
    "split": "WhatsUp (amitakamath/whatsup_vlms@7c1f255): Controlled_Images_A/B, COCO_QA, VG_QA (the paper's "
             "GQA-spatial)",
    "official_precision": "fp16 (main_aro.py loads CLIP with clip.load on CUDA)",
    "image_path": "a leading 'data/' of Controlled image_path is dropped and the rest resolved under the root",
    "blind_baselines": "meaningful: the image picks among captions, so a caption prior is scored by the same rule",
}


def present_subsets(root) -> List[str]:
    return [s for s, (ann, _, _) in SUBSETS.items() if (Path(root) / ann).is_file()]


def preposition(subset: str, image_path: str, true_caption: str) -> str:
    """The preposition the official loader logs accuracy under (``all_prepositions``)."""
    if subset == "controlled_a":
        return next((p for p, key in (("left_of", "left_of"), ("right_of", "right_of"), ("on", "_on_"))
                     if key in image_path), "under")
    if subset == "controlled_b":
        return next((p for p, key in (("left_of", "left_of"), ("right_of", "right_of"),
                                      ("in-front_of", "_in-front_of_")) if key in image_path), "behind")
    if subset.endswith("one_obj"):
        return true_caption.split()[-1]
    rules = ((("left of", "left"), ("right of", "right"), ("above", "above")) if subset == "coco_qa_two_obj"
             else (("left of", "left"), ("right of", "right"), ("front of", "front"), ("behind", "behind")))
    return next((p for key, p in rules if key in true_caption), "below" if subset == "coco_qa_two_obj" else "top")


def controlled_key(subset: str, image_path: str, where: str) -> tuple:
    """``((first token, last token), slot)`` of a Controlled file name ``<a>_<slot>[_of]_<b>.jpeg``, validated (the
    official pair/set code crashes or miscounts otherwise)."""
    name = image_path.split("/")[-1]
    tokens = name.split("_")
    if not name.endswith(".jpeg") or len(tokens) < 3 or tokens[1] not in SLOTS[subset]:
        raise EvalDataError(f"{where}: image file name {name!r} is not <object>_<preposition>_<object>.jpeg with a "
                            f"preposition of {', '.join(SLOTS[subset])} (needed for pair and set accuracy)")
    return (tokens[0], tokens[-1][:-5]), tokens[1]


def _captions(value, where: str, count: Optional[int] = None) -> List[str]:
    if not isinstance(value, list) or len(value) < 2 or (count and len(value) != count) or not all(
            isinstance(c, str) and c.strip() for c in value):
        raise EvalDataError(f"{where}: expected {count or 'at least 2'} non-empty caption strings, got "
                            f"{json_type(value)}")
    return value


def load_subset(root, subset: str) -> List[Item]:
    """Items of one subset; errors name the file, item and what was expected."""
    if subset not in SUBSETS:
        raise EvalDataError(f"unknown WhatsUp subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    root = Path(root)
    annotation, folder, _ = SUBSETS[subset]
    path = root / annotation
    require_file(path, f"{NAME}/{subset}", LAYOUT, fetch=NAME, root=root)
    items, seen = [], set()
    for index, entry in enumerate(read_json(path, list, "items")):
        where = f"{path}: item {index}"
        meta = {}
        if subset in SLOTS:
            if not isinstance(entry, dict) or not isinstance(entry.get("image_path"), str) or \
                    "caption_options" not in entry:
                raise EvalDataError(f"{where}: expected {{'image_path': str, 'caption_options': [...]}}")
            relative = entry["image_path"]
            captions = _captions(entry["caption_options"], where)
            meta["key"], meta["slot"] = controlled_key(subset, relative, where)
            image = root / (relative[len("data/"):] if relative.startswith("data/") else relative)
        else:
            if not isinstance(entry, list) or len(entry) != 3 or isinstance(entry[0], (bool, list, dict)) \
                    or entry[0] is None:
                raise EvalDataError(f"{where}: expected [image_id, true_caption, false_caption], got "
                                    f"{json_type(entry)}")
            captions = _captions(entry[1:], where, 2)
            relative = str(entry[0]).zfill(12) + ".jpg" if subset.startswith("coco") else f"{entry[0]}.jpg"
            image = root / folder / relative
        ref = existing_image(image, where, seen=seen)
        meta["preposition"] = preposition(subset, relative, captions[0])
        items.append(Item(id=f"{subset}/{index}", images=[ref], captions=list(captions),
                          match=[[True] + [False] * (len(captions) - 1)], group=subset, meta=meta))
    return items


def load(root, subsets: Optional[Sequence[str]] = None) -> List[Item]:
    """Items of ``subsets`` (default: every subset whose annotation file is present; an error if none is)."""
    subsets = chosen_subsets(subsets, present_subsets(root), NAME, f"no annotation file under {root}", LAYOUT, root)
    return [it for s in subsets for it in load_subset(root, s)]


def pair_and_set(subset: str, items: Sequence[Item], correct: torch.Tensor) -> Dict[str, float]:
    """Controlled pair and set accuracy (%) exactly as the official ``evaluate_scores``: a table key → slot →
    correct (a later item with the same key and slot overwrites), pairs over N/2, sets over N/4."""
    table: Dict[tuple, Dict[str, bool]] = {it.meta["key"]: dict.fromkeys(SLOTS[subset], False) for it in items}
    for it, hit in zip(items, correct.tolist()):
        table[it.meta["key"]][it.meta["slot"]] = hit
    pairs = sum(row[a] and row[b] for row in table.values() for a, b in PAIRS[subset])
    sets = sum(sum(row.values()) == 4 for row in table.values())
    return {"pair_acc": pairs * 100 / (len(items) / 2), "set_acc": sets * 100 / (len(items) / 4)}


def _pct(hits: torch.Tensor) -> float:
    return 100.0 * int(hits.sum()) / len(hits)


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """Per subset: ``acc`` (official, ties right), ``acc_strict``, ``ties``, ``prepositions`` ({name: acc, n});
    Controlled also ``pair_acc``/``set_acc`` (official) and their strict forms; the three headlines.

    ``scores[k]``: ``[1, K]`` over the options of ``items[k]`` (option 0 true).
    """
    if len(items) != len(scores) or not items:
        raise ValueError(f"WhatsUp needs one score matrix per item, got {len(items)} items and {len(scores)}")
    subsets, n_ties = {}, 0
    for subset in [s for s in SUBSETS if any(it.group == s for it in items)]:
        idx = [k for k, it in enumerate(items) if it.group == subset]
        rows = [scores[k] for k in idx]
        bad = [items[k].id for k, s in zip(idx, rows) if s.dim() != 2 or s.shape[0] != 1 or
               s.shape[1] != len(items[k].captions)]
        if bad or len({s.shape for s in rows}) != 1:
            raise ValueError(f"WhatsUp {subset}: expected [1, K] score matrices with one K per subset; bad: {bad[:5]}")
        stacked = torch.cat([s.double() for s in rows])
        correct, tie = first_argmax_decisions(stacked, 0)
        strict = correct & ~tie
        members = [items[k] for k in idx]
        row = {"acc": _pct(correct), "acc_strict": _pct(strict), "n": len(idx), "ties": int(tie.sum())}
        if subset in SLOTS:
            row.update(pair_and_set(subset, members, correct))
            row.update({f"{k}_strict": v for k, v in pair_and_set(subset, members, strict).items()})
        prepositions = {}
        for prep in sorted({it.meta["preposition"] for it in members}):
            mask = torch.tensor([it.meta["preposition"] == prep for it in members])
            prepositions[prep] = {"acc": _pct(correct[mask]), "n": int(mask.sum())}
        row["prepositions"] = prepositions
        subsets[subset] = row
        n_ties += row["ties"]
    headlines = {name: (sum(subsets[s]["acc"] for s in pair) / 2 if all(s in subsets for s in pair) else None)
                 for name, pair in HEADLINES.items()}
    return {"subsets": subsets, **headlines, "n_items": len(items), "n_ties": n_ties}


def evaluate(scorer, root, subsets: Optional[Sequence[str]] = None) -> dict:
    items = load(root, subsets)
    return metrics(items, scorer.score_items(items))
