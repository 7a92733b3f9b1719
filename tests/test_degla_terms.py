"""DeGLA loss terms against per-row loops and the reference's masked-matrix construction (spec §2)."""
import pytest
import torch
import torch.nn.functional as F

from open_clip_align.losses.degla import distill_loss, igc_loss, tgc_loss

N, K, D = 8, 4, 16


def _feats(seed=0, *shape):
    return F.normalize(torch.randn(*shape, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


@pytest.fixture
def batch():
    return _feats(0, N), _feats(1, N), _feats(2, N, K), _feats(3, N)  # images, texts, negatives, teacher texts


def _row_ce(logits, target=0):
    return -(logits[target] - torch.logsumexp(logits, 0))


def test_igc_matches_loop_and_reference_mask(batch):
    image, text, neg, _ = batch
    s = torch.tensor(100.0, dtype=torch.float64)
    loop = torch.stack([_row_ce(torch.stack([s * image[i] @ text[i]] + [s * image[i] @ neg[i, k] for k in range(K)]))
                        for i in range(N)]).mean()
    torch.testing.assert_close(igc_loss(image, text, neg, s), loop)
    # reference: full N x N(1+K) matrix with an additive mask (diagonal + own interleaved negative columns)
    pool = torch.cat([text, neg.reshape(N * K, D)])
    mask = torch.full((N, N * (1 + K)), float("-inf"), dtype=torch.float64)
    for i in range(N):
        mask[i, i] = 0
        mask[i, N + i * K: N + i * K + K] = 0
    ref = F.cross_entropy(s * image @ pool.T + mask, torch.arange(N))
    torch.testing.assert_close(igc_loss(image, text, neg, s), ref)


def test_tgc_fixed_matches_loop(batch):
    _, text, neg, teacher = batch
    loop = torch.stack([_row_ce(torch.stack([10 * text[i] @ teacher[i]] + [10 * text[i] @ neg[i, k] for k in range(K)]))
                        for i in range(N)]).mean()
    torch.testing.assert_close(tgc_loss(text, teacher, neg), loop)


def test_tgc_reference_reproduces_the_tiling_mask(batch):
    _, text, neg, teacher = batch
    candidates = torch.cat([teacher, neg.reshape(N * K, D)])
    mask = torch.cat([torch.eye(N), torch.eye(N).repeat(1, K)], 1)  # the released code tiles, not interleaves
    logits = 10 * text @ candidates.T + torch.where(mask.bool(), 0.0, float("-inf")).double()
    expected = F.cross_entropy(logits, torch.arange(N))
    torch.testing.assert_close(tgc_loss(text, teacher, neg, mode="reference"), expected)
    own = [i for i in range(N) if any((k * N + i) // K == i for k in range(K))]
    assert own == [0, 2, 5, 7]  # spec: with N=8, K=4 only these rows see one of their own negatives
    assert not torch.allclose(tgc_loss(text, teacher, neg, mode="reference"), tgc_loss(text, teacher, neg))


def test_tgc_modes_coincide_for_one_negative(batch):
    _, text, neg, teacher = batch
    torch.testing.assert_close(tgc_loss(text, teacher, neg[:, :1], mode="reference"),
                               tgc_loss(text, teacher, neg[:, :1]))


def test_padded_negatives_are_ignored(batch):
    image, text, neg, teacher = batch
    valid = torch.ones(N, K, dtype=torch.bool)
    valid[:, 2:] = False
    s = torch.tensor(30.0, dtype=torch.float64)
    torch.testing.assert_close(igc_loss(image, text, neg, s, valid), igc_loss(image, text, neg[:, :2], s))
    torch.testing.assert_close(tgc_loss(text, teacher, neg, valid=valid), tgc_loss(text, teacher, neg[:, :2]))


def test_distill_sum_and_mean(batch):
    image, text, _, teacher = batch
    assert distill_loss(text, text).item() == 0.0
    cos = (text * teacher).sum(-1)
    torch.testing.assert_close(distill_loss(text, teacher), (2 - 2 * cos).sum())
    torch.testing.assert_close(distill_loss(text, teacher, "mean"), (2 - 2 * cos).sum() / N)
    with pytest.raises(ValueError, match="reduction"):
        distill_loss(text, teacher, "max")


def test_teacher_side_gets_no_gradient(batch):
    _, text, neg, teacher = batch
    text, teacher = text.clone().requires_grad_(), teacher.clone().requires_grad_()
    (tgc_loss(text, teacher, neg) + distill_loss(text, teacher)).backward()
    assert teacher.grad is None and text.grad.abs().sum() > 0
