"""ColorSwap (Burapacheep et al., Findings ACL 2024; ``Top34051/colorswap@4f2c9e4``): colour-word order, 2×2 items.

Each example has two captions with the same words, the colour words swapped between objects, and an image for
each: ``caption_k`` is true of ``image_k``. The released test split (``data/test.json`` of the Drive zip, 300
examples; ``data/images.zip`` extracted to ``data/images/``) is a JSON list of ``{"id", "caption_1",
"caption_2", "image_1": "images/img_0_1.png", "image_2", "image_source", "caption_source"}``.

Partial reproduction: the authors' image-text-matching evaluation is a Colab that is not in the repository; the
abstract calls the Winoground *group* score the "main ITM metric" (CLIP about 12, SigLIP about 30). Its tie rule
and CLIP variant could not be read, so the scores here are Winoground's, strict (a tie is wrong), and named so:
text / image / group, micro over examples, plus per ``image_source`` and ``caption_source`` tag.
"""
from pathlib import Path
from typing import List

from . import winoground
from .items import EvalDataError, Item, data_missing, existing_image, read_json, text_field

NAME = "colorswap"
SPLITS = ("test", "train")
FIELDS = ("caption_1", "caption_2", "image_1", "image_2")
LAYOUT = ("<root>/test.json (ColorSwap's data/test.json from the authors' Drive zip, unchanged: a JSON list of "
          "{'id', 'caption_1', 'caption_2', 'image_1', 'image_2', 'image_source', 'caption_source'}) with the "
          "images at <root>/<image_k> (data/images.zip extracted to <root>/images/)")
PROTOCOL = {"tie_policy": "Winoground strict (a tie is wrong); the official ITM code (a Colab) is not public, so "
                          "its tie rule is UNVERIFIED",
            "averaging": "micro over examples; per image_source / caption_source tag",
            "headline": "group (the paper's main ITM metric)",
            "split": "ColorSwap test (300 examples)"}
HEADLINE = {"ColorSwap group": "colorswap/group", "ColorSwap text": "colorswap/text", "ColorSwap image": "colorswap/image"}
metrics = winoground.metrics


def load(root, split: str = "test") -> List[Item]:
    """One 2×2 item per example: ``images = [image_1, image_2]``, ``captions = [caption_1, caption_2]``, caption k
    true of image k only; tags ``image_source=...`` and ``caption_source=...``."""
    if split not in SPLITS:
        raise EvalDataError(f"unknown ColorSwap split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    path = root / f"{split}.json"
    if not path.is_file():
        raise data_missing(NAME, f"{path} not found", LAYOUT, NAME, root)
    items = []
    for index, entry in enumerate(read_json(path, list, "examples {'caption_1', 'image_1', ...}")):
        where = f"{path}: example {index}" + (f" (id {entry['id']!r})" if isinstance(entry, dict) and "id" in entry
                                              else "")
        if not isinstance(entry, dict):
            raise EvalDataError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = [k for k in FIELDS if k not in entry]
        if missing:
            raise EvalDataError(f"{where} lacks {missing}")
        images = [existing_image(root / text_field(entry, key, where), where, key) for key in ("image_1", "image_2")]
        tags = [f"{k}={entry[k]}" for k in ("image_source", "caption_source") if isinstance(entry.get(k), str)]
        items.append(Item(id=str(entry.get("id", index)), images=images,
                          captions=[text_field(entry, "caption_1", where), text_field(entry, "caption_2", where)],
                          match=[[True, False], [False, True]], group=NAME, meta={"tags": tags}))
    return items


def parts(scorer, root) -> List[tuple]:
    """``[(dataset, task, metrics, protocol, items, metrics_fn)]`` for the test split."""
    items = load(root)
    return [(NAME, "compositionality", metrics(items, scorer.score_items(items)), dict(PROTOCOL), items, metrics)]
