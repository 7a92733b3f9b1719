"""NegCLIP loss against a direct per-row implementation, and its degenerate cases."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from open_clip_align.losses import DeGLALoss, NegCLIPLoss, negclip_logits
from open_clip_align.losses.gather import local_rows
from open_clip_align.losses.negclip import negclip_loss


def _features(n=8, k=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    norm = lambda *shape: F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)
    return norm(n, d), norm(n, d), norm(n, k, d)


def _loop_negclip(image, text, neg, valid, scale):
    """The NegCLIP equations row by row: image→text over all positives and valid negatives, text→image."""
    n, k = neg.shape[:2]
    i2t = 0.0
    for i in range(n):
        cols = [scale * image[i] @ text[j] for j in range(n)]
        cols += [scale * image[i] @ neg[m, c] for m in range(n) for c in range(k) if valid[m, c]]
        i2t += -(cols[i] - torch.logsumexp(torch.stack(cols), 0))
    t2i = 0.0
    for i in range(n):
        rows = torch.stack([scale * text[i] @ image[j] for j in range(n)])
        t2i += -(rows[i] - torch.logsumexp(rows, 0))
    return (i2t / n + t2i / n) / 2


def test_negclip_matches_per_row_loop():
    image, text, neg = _features()
    valid = torch.ones(8, 4, dtype=torch.bool)
    scale = torch.tensor(14.3, dtype=torch.float64)
    got = NegCLIPLoss()(image, text, scale, neg_text_features=neg, neg_text_valid=valid, output_dict=True)
    assert set(got) == {"contrastive_loss"}
    torch.testing.assert_close(got["contrastive_loss"].double(), _loop_negclip(image, text, neg, valid, scale),
                               atol=1e-5, rtol=0)


def test_negatives_are_image_major_extra_columns():
    image, text, neg = _features(n=3, k=2)
    logits = negclip_logits(image, text, neg, None, torch.tensor(1.0, dtype=torch.float64))
    assert logits.shape == (3, 3 + 3 * 2)
    n, k = 3, 2
    for m in range(n):
        for c in range(k):
            torch.testing.assert_close(logits[:, n + m * k + c], image @ neg[m, c])


def test_invalid_negatives_are_masked_like_absent_ones():
    image, text, neg = _features()
    valid = torch.rand(8, 4, generator=torch.Generator().manual_seed(3)) > 0.4
    scale = torch.tensor(10.0, dtype=torch.float64)
    got = NegCLIPLoss()(image, text, scale, neg_text_features=neg, neg_text_valid=valid)
    torch.testing.assert_close(got.double(), _loop_negclip(image, text, neg, valid, scale), atol=1e-5, rtol=0)


def test_without_negatives_it_is_open_clip_clip_loss():
    image, text, _ = _features()
    scale = torch.tensor(20.0)
    ours = NegCLIPLoss()(image.float(), text.float(), scale)
    theirs = ClipLoss()(image.float(), text.float(), scale)
    torch.testing.assert_close(ours, theirs)


def test_hand_computed_two_sample_value():
    # orthonormal images/texts: s=1, positives on the diagonal, one negative equal to the other image's text
    image = torch.eye(2)
    text = torch.eye(2)
    neg = torch.stack([torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])])  # [2,1,2]
    loss = NegCLIPLoss()(image, text, torch.tensor(1.0), neg_text_features=neg)
    # image 0 columns: [1, 0, 1, 1] -> -log(e/(3e+1)); image 1: [0, 1, 0, 0] -> -log(e/(e+3))
    i2t = (-math.log(math.e / (3 * math.e + 1)) - math.log(math.e / (math.e + 3))) / 2
    t2i = -math.log(math.e / (math.e + 1))
    assert loss.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)


def test_gradients_reach_negatives():
    image, text, neg = (t.float().requires_grad_() for t in _features())
    NegCLIPLoss()(image, text, torch.tensor(10.0), neg_text_features=neg).backward()
    assert neg.grad.abs().sum() > 0 and image.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- hard-negative images (spec §8)

def _loop_negclip_hard_images(image, hard_image, text, hard_text, neg, hard_neg, valid, hard_valid, scale):
    """Spec §8 row by row: images [I ; I_hard] (2N rows), texts [T ; T_hard ; T̄ ; T̄_hard] (negatives
    image-major); image→text over all texts with target i, text→image over the first 2N texts vs the 2N images."""
    images = list(image) + list(hard_image)
    positives = list(text) + list(hard_text)
    negatives = [neg[n, k] for n in range(len(neg)) for k in range(neg.shape[1]) if valid[n, k]]
    negatives += [hard_neg[n, k] for n in range(len(hard_neg)) for k in range(hard_neg.shape[1]) if hard_valid[n, k]]
    texts = positives + negatives
    i2t = [-(scale * images[i] @ texts[i] - torch.logsumexp(torch.stack([scale * images[i] @ t for t in texts]), 0))
           for i in range(len(images))]
    t2i = [-(scale * positives[i] @ images[i]
             - torch.logsumexp(torch.stack([scale * positives[i] @ v for v in images]), 0))
           for i in range(len(positives))]
    return (sum(i2t) / len(i2t) + sum(t2i) / len(t2i)) / 2


@pytest.mark.parametrize("k", [1, 3])
def test_hard_images_match_the_per_row_formula(k):
    """K = 1 is NegCLIP's own batch (2B images x 4B texts); K = 3 with padded negatives generalises it."""
    image, text, neg = _features(n=6, k=k, seed=1)
    hard_image, hard_text, hard_neg = _features(n=6, k=k, seed=2)
    g = torch.Generator().manual_seed(5)
    valid = torch.ones(6, k, dtype=torch.bool) if k == 1 else torch.rand(6, k, generator=g) > 0.3
    hard_valid = torch.ones(6, k, dtype=torch.bool) if k == 1 else torch.rand(6, k, generator=g) > 0.3
    scale = torch.tensor(12.0, dtype=torch.float64)
    got = NegCLIPLoss()(image, text, scale, neg_text_features=neg, neg_text_valid=valid,
                        hard_image_features=hard_image, hard_text_features=hard_text,
                        hard_neg_text_features=hard_neg, hard_neg_text_valid=hard_valid, output_dict=True)
    want = _loop_negclip_hard_images(image, hard_image, text, hard_text, neg, hard_neg, valid, hard_valid, scale)
    torch.testing.assert_close(got["contrastive_loss"].double(), want, atol=1e-5, rtol=0)
    without = NegCLIPLoss()(image, text, scale, neg_text_features=neg, neg_text_valid=valid)
    assert abs(without.item() - want.item()) > 1e-3  # the hard images are not ignored


def test_local_rows_partition_the_loss_by_global_rows():
    """negclip_loss over a partition of the query rows sums to the full loss (each part / the global count),
    also over the stacked [images ; hard images] layout that --local-loss uses."""
    image, text, neg = _features(n=8, k=2, seed=3)
    scale = torch.tensor(9.0, dtype=torch.float64)
    full = negclip_loss(image, text, neg, None, scale)
    # 8 rows = [images ; hard images] of a global batch of 4 = 2 ranks x 2
    parts = [negclip_loss(image, text, neg, None, scale, local_rows(2, rank, 2, copies=2)) for rank in range(2)]
    assert local_rows(2, 1, 2, copies=2).tolist() == [2, 3, 6, 7]
    torch.testing.assert_close(sum(parts), full)


def test_local_loss_without_gather_with_grad_is_refused_on_several_ranks():
    for loss in (NegCLIPLoss, DeGLALoss):
        with pytest.raises(ValueError, match="--local-loss needs --gather-with-grad"):
            loss(local_loss=True, world_size=2, rank=0)
        loss(local_loss=True, gather_with_grad=True, world_size=2, rank=0)
        loss(local_loss=True)  # one process: the local rows are all rows
