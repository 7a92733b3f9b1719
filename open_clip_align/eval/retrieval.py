"""Image-text retrieval: recall@k in both directions (each image may have several captions, COCO style).

image→text: an image counts as retrieved at k if *any* of its captions ranks in the top k; text→image: a
caption counts if its own image ranks in the top k (CLIP_benchmark's ``zeroshot_retrieval`` convention).
"""
from typing import Dict, Sequence

import torch

from .items import EvalDataError, ImageRef


def recall_at_k(similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k (%) from ``similarity [n_images, n_captions]``; ``caption_image [n_captions]`` is each
    caption's image index. A wrong candidate that *ties* the right one ranks ahead of it (ties count as
    misses, as SugarCrepe's strict rule does), so identical captions of different images cannot both score.

    Returns ``{"image_to_text": {k: %}, "text_to_image": {k: %}}``.
    """
    n_images, n_captions = similarity.shape
    own = torch.zeros(n_images, n_captions, dtype=torch.bool)
    own[caption_image, torch.arange(n_captions)] = True
    # rank = how many wrong candidates score at least as high as the best right one
    best_own = similarity.masked_fill(~own, float("-inf")).max(dim=1).values
    image_rank = ((similarity >= best_own[:, None]) & ~own).sum(dim=1)
    own_score = similarity[caption_image, torch.arange(n_captions)]
    text_rank = ((similarity >= own_score[None, :]) & ~own).sum(dim=0)
    return {"image_to_text": {k: 100.0 * (image_rank < k).float().mean().item() for k in ks},
            "text_to_image": {k: 100.0 * (text_rank < k).float().mean().item() for k in ks}}


def evaluate_retrieval(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]],
                       ks: Sequence[int] = (1, 5, 10)) -> Dict[str, dict]:
    """Recall@k (%) for ``images`` and their captions ``captions[i]`` (one or more each), every caption kept."""
    if len(images) != len(captions) or not images:
        raise EvalDataError(f"retrieval needs one caption list per image, got {len(images)} images and "
                            f"{len(captions)} caption lists")
    flat = [(i, c) for i, caps in enumerate(captions) for c in caps]
    image_features = scorer.image_features(images)
    text_features = scorer.text_features([c for _, c in flat])
    img = torch.stack([image_features[r] for r in images])
    txt = torch.stack([text_features[c] for _, c in flat])
    result = recall_at_k(img @ txt.T, torch.tensor([i for i, _ in flat]), ks)
    result["n_images"], result["n_captions"] = len(images), len(flat)
    return result
