"""SPEC (Peng et al., CVPR 2024): one query against K candidates that differ in one attribute, both directions.

Official data (HF ``wjpoom/SPEC`` ``data.zip``, extracted so that ``<root>/<subset>/`` exist) for the six subsets of
``SUBSETS``; each subset folder has ``image2text.json`` = a JSON list of ``{"query": <image path relative to the
subset folder>, "keys": [caption, ...], "label": <int>}`` and ``text2image.json`` = a list of ``{"query":
<caption>, "keys": [image path, ...], "label": <int>}``. The two lists are separate (not aligned).

Protocol (``wjpoom/SPEC@ad982a4``, ``spec/models/clip_wrapper.py`` L47-53, L88-94; ``spec/eval.py`` L44-52): cosine
scores; pred = ``argmax`` over the K keys (torch: the first maximum), correct iff pred == label, so a tie is right
only when the label is the first of the tied keys (``official``); ``*_strict`` counts every tie wrong. Accuracy per
subset and direction; the headline is the unweighted mean over the subsets run, per direction. The official collate
stacks a batch, so K must be the same for every query of a file (checked here).

Items: I2T ``images=[q]``, ``captions=keys``, ``match[0][label]``, ``meta["direction"]="i2t"``; T2I ``images=keys``,
``captions=[q]``, ``match[label][0]``, ``meta["direction"]="t2i"``.
"""
from collections import defaultdict
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .aro import first_argmax_decisions
from .items import (EvalDataError, ImageRef, Item, chosen_subsets, existing_image, json_type, query_candidates,
                    read_json, require_file)

NAME = "spec"
SUBSETS = ("absolute_size", "relative_size", "absolute_spatial", "relative_spatial", "existence", "count")
FILES = {"i2t": "image2text.json", "t2i": "text2image.json"}
LAYOUT = ("<root>/<subset>/image2text.json and <root>/<subset>/text2image.json for any of " + ", ".join(SUBSETS) +
          " (official SPEC format: a JSON list of {'query', 'keys': [...], 'label': int}; I2T queries and T2I keys "
          "are image paths relative to <root>/<subset>/), as HF wjpoom/SPEC data.zip extracts")
PROTOCOL = {
    "tie_policy": "official (pred = first argmax over the keys, correct iff == label: a tie is right only when the "
                  "label is the first tied key); *_strict counts every tie wrong",
    "averaging": "accuracy per subset and direction; headline = unweighted mean over the subsets run, per direction "
                 "(spec/eval.py)",
    "split": "SPEC (HF wjpoom/SPEC data.zip @ 694dfdc7): absolute_size, relative_size, absolute_spatial, "
             "relative_spatial, existence, count",
    "official_precision": "fp32 (open_clip create_model_and_transforms('ViT-B-32', pretrained='openai') defaults)",
    "blind_baselines": "I2T only: a text-only scorer ranks the K captions of an image; in T2I it would score the K "
                       "images alike (every decision a tie), so it is not reported there",
}
HEADLINE = {"SPEC I2T": "mean/i2t", "SPEC T2I": "mean/t2i"}


def present_subsets(root) -> List[str]:
    return [s for s in SUBSETS if all((Path(root) / s / f).is_file() for f in FILES.values())]


def _image(folder: Path, value, where: str, seen: set) -> ImageRef:
    if not isinstance(value, str) or not value:
        raise EvalDataError(f"{where}: expected an image path string, got {json_type(value)}")
    return existing_image(folder / value, where, seen=seen)


def load_file(root, subset: str, direction: str) -> List[Item]:
    """The items of ``<root>/<subset>/{image2text,text2image}.json``; errors name the file, record and field."""
    if subset not in SUBSETS:
        raise EvalDataError(f"unknown SPEC subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    folder = Path(root) / subset
    path = folder / FILES[direction]
    require_file(path, f"{NAME}/{subset}", LAYOUT, fetch=NAME, root=root)
    items, seen, sizes = [], set(), set()
    for index, entry in enumerate(read_json(path, list, "records {'query', 'keys', 'label'}")):
        where = f"{path}: record {index}"
        if not isinstance(entry, dict) or not {"query", "keys", "label"} <= set(entry):
            raise EvalDataError(f"{where}: expected an object with 'query', 'keys' and 'label'")
        keys, label = entry["keys"], entry["label"]
        if not isinstance(keys, list) or len(keys) < 2:
            raise EvalDataError(f"{where}: 'keys' must be a list of at least 2 candidates, got {json_type(keys)}")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(keys):
            raise EvalDataError(f"{where}: 'label' must be an integer index into the {len(keys)} keys, got "
                                f"{json_type(label)}")
        sizes.add(len(keys))
        if len(sizes) > 1:
            raise EvalDataError(f"{where}: {len(keys)} keys, but earlier records have {sorted(sizes - {len(keys)})}; "
                                f"the official loader stacks a batch, so every record of a file needs the same K")
        if direction == "i2t":
            if not all(isinstance(c, str) and c.strip() for c in keys):
                raise EvalDataError(f"{where}: every key of image2text.json must be a non-empty caption string")
            images, captions = [_image(folder, entry["query"], where, seen)], list(keys)
            match = [[j == label for j in range(len(keys))]]
        else:
            if not isinstance(entry["query"], str) or not entry["query"].strip():
                raise EvalDataError(f"{where}: 'query' must be a non-empty caption, got {json_type(entry['query'])}")
            images = [_image(folder, key, f"{where} key {j}", seen) for j, key in enumerate(keys)]
            captions, match = [entry["query"]], [[i == label] for i in range(len(keys))]
        items.append(Item(id=f"{subset}/{direction}/{index}", images=images, captions=captions, match=match,
                          group=subset, meta={"direction": direction, "label": label}))
    return items


def load(root, subsets: Optional[Sequence[str]] = None, directions: Sequence[str] = tuple(FILES)) -> List[Item]:
    """Items of ``subsets`` × ``directions`` (default subsets: those whose two files are present; an error if none)."""
    subsets = chosen_subsets(subsets, present_subsets(root), NAME, f"no subset folder with both files under {root}",
                             LAYOUT, root)
    return [it for s in subsets for d in directions for it in load_file(root, s, d)]


def _pct(hits: torch.Tensor) -> float:
    return 100.0 * int(hits.sum()) / len(hits)


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """Per subset and direction: ``acc`` (official first-argmax), ``acc_strict``, ``n``, ``ties``; ``mean`` per
    direction over the subsets (the headline). ``scores[k]``: ``[1, K]`` (i2t) or ``[K, 1]`` (t2i)."""
    if len(items) != len(scores) or not items:
        raise ValueError(f"SPEC needs one score matrix per item, got {len(items)} items and {len(scores)}")
    rows = defaultdict(list)  # (subset, direction, label) -> [(item index, candidate scores)]
    for k, (item, matrix) in enumerate(zip(items, scores)):
        candidates, target = query_candidates(item, matrix)
        rows[(item.group, item.meta["direction"], target)].append((k, candidates.double()))
    correct, tie = torch.zeros(len(items), dtype=torch.bool), torch.zeros(len(items), dtype=torch.bool)
    for (_, _, target), members in rows.items():
        index = torch.tensor([k for k, _ in members])
        correct[index], tie[index] = first_argmax_decisions(torch.stack([c for _, c in members]), target)
    subsets, means = {}, {}
    for subset in [s for s in SUBSETS if any(it.group == s for it in items)] + sorted(
            {it.group for it in items} - set(SUBSETS)):
        row = {}
        for direction in FILES:
            idx = torch.tensor([k for k, it in enumerate(items)
                                if it.group == subset and it.meta["direction"] == direction], dtype=torch.long)
            if len(idx):
                row.update({direction: _pct(correct[idx]), f"{direction}_strict": _pct(correct[idx] & ~tie[idx]),
                            f"{direction}_n": len(idx), f"{direction}_ties": int(tie[idx].sum())})
        subsets[subset] = row
    for direction in FILES:
        values = [r[direction] for r in subsets.values() if direction in r]
        means[direction] = sum(values) / len(values) if values else None
        strict = [r[f"{direction}_strict"] for r in subsets.values() if direction in r]
        means[f"{direction}_strict"] = sum(strict) / len(strict) if strict else None
    return {"subsets": subsets, "mean": means, "n_items": len(items), "n_ties": int(tie.sum())}


def evaluate(scorer, root, subsets: Optional[Sequence[str]] = None) -> dict:
    items = load(root, subsets)
    return metrics(items, scorer.score_items(items))
