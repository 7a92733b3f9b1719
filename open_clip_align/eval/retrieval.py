"""Image-text retrieval: recall@k in both directions (each image may have several captions, COCO style).

image→text: an image counts as retrieved at k if *any* of its captions ranks in the top k; text→image: a
caption counts if its own image ranks in the top k (CLIP_benchmark's ``zeroshot_retrieval`` convention).

Test sets are the Karpathy test splits in the BLIP/ALBEF annotation format: ``coco_karpathy_test.json`` (COCO
5k, images from val2014) and ``flickr30k_test.json`` (Flickr30k 1k), each a JSON list of
``{"image": "<path relative to root>", "caption": ["...", ...]}``. Every caption is kept by default, as
CLIP_benchmark does (a few COCO images have 6 or 7); ``max_captions=5`` keeps the first five, as some papers
do, and the result's protocol records which.

Scores are computed tile by tile (``scoring_ranks``: ``chunk_size`` images × ``chunk_size`` captions, the CLI's
``--chunk-size``), never as [images × captions] matrices: memory stays about 15 bytes × chunk_size² (16 MB at the
default 1024) beyond the features, where the dense matrices of COCO 5k × 25k took over 1 GB. Every score is exact
(fixed point, ``scoring.fixed_point``), so the ranks, ties included, are those of the full matrices whatever the
tile size (``retrieval_ranks`` is that dense reference).
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .items import EvalDataError, ImageRef, existing_image, read_json, require_file
from .scoring import fixed_point

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


CHUNK_SIZE = 1024  # images and captions per tile of the chunked scoring (the CLI's --chunk-size)

# scores of one tile: rows [bi] image indices, cols [bt] caption indices -> (i2t [bi, bt], t2i [bt, bi], or None
# when text->image ranks read i2t as well); an entry must depend on its image and caption alone
Tile = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]
# several scorings of one tile at once: {name: (i2t, t2i or None)}
Tiles = Callable[[torch.Tensor, torch.Tensor], Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]]


def retrieval_ranks(similarity: torch.Tensor, caption_image: torch.Tensor,
                    text_to_image: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """0-based ranks of the right answer in both directions, ties counted against it (the dense reference of
    ``tiled_ranks``, which gives the same ranks without the matrices).

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


def _own_scores(tiles: Tiles, caption_image: torch.Tensor, n_images: int, chunk_size: int) -> dict:
    """``{scoring: (best_own [n_images], own [n_captions])}``: each image's best score with one of its own captions
    (image→text; -inf for an image without one) and each caption's score with its own image (text→image), from
    tiles of at most ``chunk_size // 8`` images by ``chunk_size`` of their own captions (a few % of all pairs)."""
    order = torch.argsort(caption_image, stable=True)
    ends = torch.bincount(caption_image, minlength=n_images).cumsum(0).tolist()
    group, own = max(1, chunk_size // 8), {}
    for i0 in range(0, n_images, group):
        i1 = min(i0 + group, n_images)
        mine, rows = order[(ends[i0 - 1] if i0 else 0):ends[i1 - 1]], torch.arange(i0, i1)
        for c0 in range(0, len(mine), chunk_size):
            cols = mine[c0:c0 + chunk_size]
            owner, at = caption_image[cols], torch.arange(len(cols))
            for name, (i2t, t2i) in tiles(rows, cols).items():
                per_text = i2t.T if t2i is None else t2i
                if name not in own:
                    own[name] = (torch.full((n_images,), float("-inf"), dtype=i2t.dtype),
                                 torch.empty(len(caption_image), dtype=per_text.dtype))
                best, per_caption = own[name]
                best.scatter_reduce_(0, owner, i2t[owner - i0, at], "amax")
                per_caption[cols] = per_text[at, owner - i0]
    return own


def _count(scores: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor, dim: int, rank: torch.Tensor,
           tie: torch.Tensor) -> None:
    """Add to ``rank`` the wrong candidates (``wrong``) scoring at least the right answer ``right`` of their query
    (queries along the dimension that ``dim`` does not reduce), and mark in ``tie`` the queries with an equal one."""
    right = right[:, None] if dim == 1 else right[None, :]
    rank += ((scores >= right) & wrong).sum(dim=dim)
    tie |= ((scores == right) & wrong).any(dim=dim)


def scoring_ranks(tiles: Tiles, caption_image: torch.Tensor, n_images: int,
                  chunk_size: int = CHUNK_SIZE) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{scoring: retrieval_ranks(...)}`` for every scoring ``tiles`` returns, in bounded memory.

    Scores are requested tile by tile (``chunk_size`` images × ``chunk_size`` captions, captions in the outer loop)
    and never assembled: a first pass over own pairs finds each query's right-answer score, the second counts,
    per tile, the wrong candidates at or above it. As long as an entry depends on its image and caption alone (exact
    scores: ``cosine_tiles``, ComAlign's ``exact=True``), ranks and ties equal ``retrieval_ranks`` on the full
    matrices bit for bit. Peak extra memory: about 15 bytes × ``chunk_size``² per scoring, plus what ``tiles``
    allocates.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_captions = len(caption_image)
    if not n_images or not n_captions:
        raise ValueError(f"retrieval needs images and captions, got {n_images} and {n_captions}")
    own = _own_scores(tiles, caption_image, n_images, chunk_size)
    out = {name: {"image_to_text": torch.zeros(n_images, dtype=torch.long),
                  "text_to_image": torch.zeros(n_captions, dtype=torch.long),
                  "image_to_text_tie": torch.zeros(n_images, dtype=torch.bool),
                  "text_to_image_tie": torch.zeros(n_captions, dtype=torch.bool)} for name in own}
    for t0 in range(0, n_captions, chunk_size):
        cols = torch.arange(t0, min(t0 + chunk_size, n_captions))
        owner = caption_image[cols]
        for i0 in range(0, n_images, chunk_size):
            rows = torch.arange(i0, min(i0 + chunk_size, n_images))
            wrong = owner[None, :] != rows[:, None]                                # [bi, bt]
            image_rows, caption_rows = slice(i0, i0 + len(rows)), slice(t0, t0 + len(cols))
            for name, (i2t, t2i) in tiles(rows, cols).items():
                (best, per_caption), ranks = own[name], out[name]
                _count(i2t, best[image_rows], wrong, 1, ranks["image_to_text"][image_rows],
                       ranks["image_to_text_tie"][image_rows])
                if t2i is None:
                    _count(i2t, per_caption[caption_rows], wrong, 0, ranks["text_to_image"][caption_rows],
                           ranks["text_to_image_tie"][caption_rows])
                else:
                    _count(t2i, per_caption[caption_rows], wrong.T, 1, ranks["text_to_image"][caption_rows],
                           ranks["text_to_image_tie"][caption_rows])
    return out


def tiled_ranks(tile: Tile, caption_image: torch.Tensor, n_images: int,
                chunk_size: int = CHUNK_SIZE) -> Dict[str, torch.Tensor]:
    """``retrieval_ranks`` of one scoring given by ``tile`` (see ``scoring_ranks``), without its matrices."""
    return scoring_ranks(lambda rows, cols: {"": tile(rows, cols)}, caption_image, n_images, chunk_size)[""]


def cosine_tiles(image_features: torch.Tensor, text_features: torch.Tensor) -> Tile:
    """Tiles of exact cosines of L2-normalised ``image_features [Ni, D]`` and ``text_features [Nt, D]``: entry
    (i, t) is the float32 rounding of the exact float64 dot product of their ``fixed_point`` copies, as in
    ``scoring.exact_cosines``: the same number in every tile and in the full matrix. The copies are made per tile
    (a few % of its matmul), so no [N, D] float64 copy is held."""
    def tile(rows: torch.Tensor, cols: torch.Tensor):
        return (fixed_point(image_features[rows]) @ fixed_point(text_features[cols]).T).float(), None
    return tile


def recall_at_k(similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                text_to_image: Optional[torch.Tensor] = None) -> dict:
    """Recall@k (%) from ``similarity [n_images, n_captions]``; ``caption_image [n_captions]`` is each
    caption's image index. A wrong candidate that *ties* the right one ranks ahead of it (ties count as
    misses, as SugarCrepe's strict rule does), so identical captions of different images cannot both score.

    Returns ``{"image_to_text": {k: %}, "text_to_image": {k: %}}``. ``text_to_image`` as in ``retrieval_ranks``.
    """
    ranks = retrieval_ranks(similarity, caption_image, text_to_image)
    return _recalls(ranks, ks)


def _recalls(ranks: Dict[str, torch.Tensor], ks: Sequence[int]) -> dict:
    return {d: {k: 100.0 * (ranks[d] < k).float().mean().item() for k in ks}
            for d in ("image_to_text", "text_to_image")}


def ranks_metrics(ranks: Dict[str, torch.Tensor], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """``metrics`` from ranks (``retrieval_ranks``, ``tiled_ranks``): recall@k (%) both ways, RSUM (the six recalls
    summed; None unless ``ks`` is 1, 5, 10), the 1-based mean rank per direction, and counts: ``n_items`` = queries
    (images + captions), ``n_ties`` = queries whose right answer ties a wrong candidate (scored as misses)."""
    result = _recalls(ranks, ks)
    result["rsum"] = (sum(result["image_to_text"].values()) + sum(result["text_to_image"].values())
                      if sorted(ks) == [1, 5, 10] else None)
    result["mean_rank"] = {d: ranks[d].double().add(1).mean().item() for d in ("image_to_text", "text_to_image")}
    n_images, n_captions = len(ranks["image_to_text"]), len(ranks["text_to_image"])
    ties = {d: int(ranks[f"{d}_tie"].sum()) for d in ("image_to_text", "text_to_image")}
    result.update(n_images=n_images, n_captions=n_captions, n_items=n_images + n_captions,
                  n_ties=sum(ties.values()), ties=ties)
    return result


def metrics(similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
            text_to_image: Optional[torch.Tensor] = None) -> dict:
    """``ranks_metrics`` of the dense matrices: ``similarity [n_images, n_captions]``, ``text_to_image`` as in
    ``retrieval_ranks``."""
    return ranks_metrics(retrieval_ranks(similarity, caption_image, text_to_image), ks)


def _tiles(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]]) -> Tuple[Tile, torch.Tensor]:
    """``(tile, caption_image [n_captions])`` with captions flattened image by image, each unique image and caption
    encoded once. A dual encoder gives ``cosine_tiles`` (exact, so identical captions of different images tie
    exactly); a scorer that ranks each direction with its own scores gives its ``retrieval_tiles(images, texts)``
    (a ``Tile``: ComAlign), or its dense ``retrieval_scores(images, texts)`` -> ``(i2t [n_images, n_captions],
    t2i [n_captions, n_images])``, served in slices."""
    if len(images) != len(captions) or not images:
        raise EvalDataError(f"retrieval needs one caption list per image, got {len(images)} images and "
                            f"{len(captions)} caption lists")
    flat = [(i, c) for i, caps in enumerate(captions) for c in caps]
    if not flat:
        raise EvalDataError(f"retrieval needs captions, but none of the {len(images)} images has one")
    caption_image, texts = torch.tensor([i for i, _ in flat]), [c for _, c in flat]
    if hasattr(scorer, "retrieval_tiles"):
        return scorer.retrieval_tiles(images, texts), caption_image
    if hasattr(scorer, "retrieval_scores"):
        i2t, t2i = scorer.retrieval_scores(images, texts)
        return (lambda rows, cols: (i2t[rows][:, cols], t2i[cols][:, rows])), caption_image
    image_features = scorer.image_features(images)
    text_features = scorer.text_features(texts)
    img = torch.stack([image_features[r] for r in images])
    txt = torch.stack([text_features[c] for c in texts])
    return cosine_tiles(img, txt), caption_image


def _similarity(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]]
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The dense matrices (what ``_tiles`` serves in tiles): ``(similarity [n_images, n_captions], caption_image
    [n_captions], text_to_image [n_captions, n_images] or None when ``similarity`` ranks both directions)``."""
    tile, caption_image = _tiles(scorer, images, captions)
    similarity, text_to_image = tile(torch.arange(len(images)), torch.arange(len(caption_image)))
    return similarity, caption_image, text_to_image


def _ranks(scorer, images, captions, chunk_size: int) -> Dict[str, torch.Tensor]:
    tile, caption_image = _tiles(scorer, images, captions)
    return tiled_ranks(tile, caption_image, len(images), chunk_size)


def global_metrics(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]],
                   ks: Sequence[int] = (1, 5, 10), chunk_size: int = CHUNK_SIZE) -> dict:
    """``metrics`` over one global gallery: every caption of the set against every image of the set, for
    annotation files that list each image with its captions (NegBench's retrieval CSVs), scored in tiles of
    ``chunk_size`` (``scoring_ranks``). ``images[i]`` owns ``captions[i]``; an image listed twice stays two images
    (as the official loaders treat a repeated row), so a caption of either ties with the other and ranks behind it
    under the strict tie rule."""
    return ranks_metrics(_ranks(scorer, images, captions, chunk_size), ks)


def evaluate_retrieval(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]],
                       ks: Sequence[int] = (1, 5, 10), chunk_size: int = CHUNK_SIZE) -> Dict[str, dict]:
    """Recall@k (%) for ``images`` and their captions ``captions[i]`` (one or more each), every caption kept."""
    ranks = _ranks(scorer, images, captions, chunk_size)
    result = _recalls(ranks, ks)
    result["n_images"], result["n_captions"] = len(images), len(ranks["text_to_image"])
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
        images.append(existing_image(root / entry["image"], f"{path}: entry {index}"))
        captions.append(list(caps[:max_captions]))
    return images, captions


def evaluate(scorer, root, dataset: str = "coco", annotation=None, ks: Sequence[int] = (1, 5, 10),
             max_captions: Optional[int] = None, chunk_size: int = CHUNK_SIZE) -> dict:
    """``metrics`` on a Karpathy test split, scored in tiles of ``chunk_size`` (``scoring_ranks``), plus
    ``protocol`` (``PROTOCOL`` with this run's split and caption policy)."""
    images, captions = load(root, dataset, annotation, max_captions)
    result = ranks_metrics(_ranks(scorer, images, captions, chunk_size), ks)
    standard = DATASETS[dataset][1]
    result["protocol"] = {**PROTOCOL, "split": f"{dataset} Karpathy test ({len(images)} images; standard "
                                               f"{standard})",
                          "captions_per_image": "all" if max_captions is None else f"first {max_captions}",
                          "recall_k": list(ks)}
    return result
