"""Image-text retrieval: recall@k in both directions (each image may have several captions, COCO style).

image→text: an image counts as retrieved at k if *any* of its captions ranks in the top k; text→image: a
caption counts if its own image ranks in the top k (CLIP_benchmark's ``zeroshot_retrieval`` convention).

Test sets are the Karpathy test splits in the BLIP/ALBEF annotation format: ``coco_karpathy_test.json`` (COCO
5k, images from val2014) and ``flickr30k_test.json`` (Flickr30k 1k), each a JSON list of
``{"image": "<path relative to root>", "caption": ["...", ...]}``. Every caption is kept by default, as
CLIP_benchmark does (a few COCO images have 6 or 7); ``max_captions=5`` keeps the first five, as some papers
do, and the result's protocol records which.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .items import EvalDataError, ImageRef, read_json, require_file
from .scoring import exact_cosines

DATASETS = {"coco": ("coco_karpathy_test.json", 5000), "flickr": ("flickr30k_test.json", 1000)}
PROTOCOL = {"tie_policy": "strict: a wrong candidate scoring equal to the right one ranks ahead of it",
            "averaging": "image→text over images (hit if any of its captions is in the top k); "
                         "text→image over captions",
            "split": "Karpathy test (COCO 5k of val2014; Flickr30k 1k)",
            "captions_per_image": "all (CLIP_benchmark); max_captions=N keeps the first N"}
LAYOUT = ("<root>/coco_karpathy_test.json (COCO Karpathy test, BLIP/ALBEF format: a JSON list of "
          "{'image': 'val2014/COCO_val2014_<id>.jpg', 'caption': [5+ captions]}, images under <root>/val2014/) "
          "or <root>/flickr30k_test.json (Flickr30k Karpathy test, same format, e.g. "
          "{'image': 'flickr30k-images/<id>.jpg', 'caption': [...]}, images at <root>/<image>)")


def retrieval_ranks(similarity: torch.Tensor, caption_image: torch.Tensor,
                    text_to_image: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """0-based ranks of the right answer in both directions, ties counted against it.

    ``similarity [n_images, n_captions]``; ``caption_image [n_captions]`` is each caption's image index.
    ``text_to_image [n_captions, n_images]``: scores that rank images per caption when they differ from
    ``similarity`` (direction-specific scorers such as ComAlign's); by default ``similarity.T``.
    Returns ``image_to_text [n_images]`` (rank of an image's best own caption), ``text_to_image
    [n_captions]`` (rank of a caption's image), and the boolean ``*_tie`` masks of queries whose right answer
    scores exactly as high as some wrong candidate.
    """
    n_images, n_captions = similarity.shape
    own = torch.zeros(n_images, n_captions, dtype=torch.bool)
    own[caption_image, torch.arange(n_captions)] = True
    best_own = similarity.masked_fill(~own, float("-inf")).max(dim=1).values
    per_text = similarity if text_to_image is None else text_to_image.T
    own_score = per_text[caption_image, torch.arange(n_captions)]
    return {"image_to_text": ((similarity >= best_own[:, None]) & ~own).sum(dim=1),
            "text_to_image": ((per_text >= own_score[None, :]) & ~own).sum(dim=0),
            "image_to_text_tie": ((similarity == best_own[:, None]) & ~own).any(dim=1),
            "text_to_image_tie": ((per_text == own_score[None, :]) & ~own).any(dim=0)}


def recall_at_k(similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                text_to_image: Optional[torch.Tensor] = None) -> dict:
    """Recall@k (%) from ``similarity [n_images, n_captions]``; ``caption_image [n_captions]`` is each
    caption's image index. A wrong candidate that *ties* the right one ranks ahead of it (ties count as
    misses, as SugarCrepe's strict rule does), so identical captions of different images cannot both score.

    Returns ``{"image_to_text": {k: %}, "text_to_image": {k: %}}``. ``text_to_image`` as in ``retrieval_ranks``.
    """
    ranks = retrieval_ranks(similarity, caption_image, text_to_image)
    return {d: {k: 100.0 * (ranks[d] < k).float().mean().item() for k in ks}
            for d in ("image_to_text", "text_to_image")}


def metrics(similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
            text_to_image: Optional[torch.Tensor] = None) -> dict:
    """Recall@k (%) both ways, RSUM (the six recalls summed; None unless ``ks`` is 1, 5, 10), the 1-based mean
    rank per direction, and counts: ``n_items`` = queries (images + captions), ``n_ties`` = queries
    whose right answer ties a wrong candidate (scored as misses). ``text_to_image`` as in ``retrieval_ranks``."""
    ranks = retrieval_ranks(similarity, caption_image, text_to_image)
    result = {d: {k: 100.0 * (ranks[d] < k).float().mean().item() for k in ks}
              for d in ("image_to_text", "text_to_image")}
    result["rsum"] = (sum(result["image_to_text"].values()) + sum(result["text_to_image"].values())
                      if sorted(ks) == [1, 5, 10] else None)
    result["mean_rank"] = {d: ranks[d].double().add(1).mean().item() for d in ("image_to_text", "text_to_image")}
    n_images, n_captions = similarity.shape
    ties = {d: int(ranks[f"{d}_tie"].sum()) for d in ("image_to_text", "text_to_image")}
    result.update(n_images=n_images, n_captions=n_captions, n_items=n_images + n_captions,
                  n_ties=sum(ties.values()), ties=ties)
    return result


def _similarity(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]]
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(similarity [n_images, n_captions], caption_image [n_captions], text_to_image)`` with captions
    flattened image by image; each unique image and caption encoded once; cosines from ``exact_cosines``, so
    identical captions of different images tie exactly. ``text_to_image [n_captions,
    n_images]`` is None unless the scorer ranks each direction with its own scores (``retrieval_scores``)."""
    if len(images) != len(captions) or not images:
        raise EvalDataError(f"retrieval needs one caption list per image, got {len(images)} images and "
                            f"{len(captions)} caption lists")
    flat = [(i, c) for i, caps in enumerate(captions) for c in caps]
    caption_image = torch.tensor([i for i, _ in flat])
    if hasattr(scorer, "retrieval_scores"):
        i2t, t2i = scorer.retrieval_scores(images, [c for _, c in flat])
        return i2t, caption_image, t2i
    image_features = scorer.image_features(images)
    text_features = scorer.text_features([c for _, c in flat])
    img = torch.stack([image_features[r] for r in images])
    txt = torch.stack([text_features[c] for _, c in flat])
    return exact_cosines(img, txt), caption_image, None


def global_metrics(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]],
                   ks: Sequence[int] = (1, 5, 10)) -> dict:
    """``metrics`` over one global matrix: every caption of the set against every image of the set, for
    annotation files that list each image with its captions (NegBench's retrieval CSVs). ``images[i]`` owns
    ``captions[i]``; an image listed twice stays two images (as the official loaders treat a repeated row), so a
    caption of either ties with the other and ranks behind it under the strict tie rule."""
    similarity, caption_image, text_to_image = _similarity(scorer, images, captions)
    return metrics(similarity, caption_image, ks, text_to_image)


def evaluate_retrieval(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]],
                       ks: Sequence[int] = (1, 5, 10)) -> Dict[str, dict]:
    """Recall@k (%) for ``images`` and their captions ``captions[i]`` (one or more each), every caption kept."""
    similarity, caption_image, text_to_image = _similarity(scorer, images, captions)
    result = recall_at_k(similarity, caption_image, ks, text_to_image)
    result["n_images"], result["n_captions"] = len(images), len(caption_image)
    return result


def load(root, dataset: str = "coco", annotation=None, max_captions: Optional[int] = None
         ) -> Tuple[List[ImageRef], List[List[str]]]:
    """Images and their captions from a Karpathy test file.

    ``annotation`` overrides the file (absolute, or relative to ``root``); images are ``root / entry["image"]``.
    ``max_captions`` keeps the first N captions of each image (None keeps all).
    """
    if dataset not in DATASETS:
        raise EvalDataError(f"unknown retrieval dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if max_captions is not None and max_captions < 1:
        raise EvalDataError(f"max_captions must be None (keep all) or >= 1, got {max_captions}")
    root = Path(root)
    path = root / (annotation if annotation is not None else DATASETS[dataset][0])
    require_file(path, f"retrieval/{dataset}", LAYOUT)
    raw = read_json(path, list, "entries {'image', 'caption'}")
    images, captions, seen = [], [], {}
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise EvalDataError(f"{path}: entry {index} lacks an 'image' path")
        caps = entry.get("caption")
        if isinstance(caps, str):
            raise EvalDataError(f"{path}: entry {index} ({entry['image']}) has one caption string, not a list; "
                                f"the Karpathy *test* files list every caption of an image (is this a train file?)")
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise EvalDataError(f"{path}: entry {index} ({entry['image']}) needs 'caption': a non-empty list of "
                                f"non-empty strings")
        if entry["image"] in seen:
            raise EvalDataError(f"{path}: entries {seen[entry['image']]} and {index} both name {entry['image']}")
        seen[entry["image"]] = index
        image = root / entry["image"]
        if not image.is_file():
            raise EvalDataError(f"{path}: entry {index} names image {image}, which does not exist")
        images.append(ImageRef(str(image)))
        captions.append(list(caps[:max_captions]))
    return images, captions


def evaluate(scorer, root, dataset: str = "coco", annotation=None, ks: Sequence[int] = (1, 5, 10),
             max_captions: Optional[int] = None) -> dict:
    """``metrics`` on a Karpathy test split, plus ``protocol`` (``PROTOCOL`` with this run's split and
    caption policy)."""
    images, captions = load(root, dataset, annotation, max_captions)
    similarity, caption_image, text_to_image = _similarity(scorer, images, captions)
    result = metrics(similarity, caption_image, ks, text_to_image)
    standard = DATASETS[dataset][1]
    result["protocol"] = {**PROTOCOL, "split": f"{dataset} Karpathy test ({len(images)} images; standard "
                                               f"{standard})",
                          "captions_per_image": "all" if max_captions is None else f"first {max_captions}",
                          "recall_k": list(ks)}
    return result
