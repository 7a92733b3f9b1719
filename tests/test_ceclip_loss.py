"""CE-CLIP loss terms (spec §8) against direct per-row loops, masking, margins and the module's contract."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from open_clip_align.losses.ceclip import CEClipLoss, cmr_loss, cmr_thresholds, imc_loss

N, K, D = 6, 4, 16
SCALE = 20.0


def _norm(g, *shape):
    return F.normalize(torch.randn(*shape, D, generator=g, dtype=torch.float64), dim=-1)


@pytest.fixture
def batch():
    """images, positives, negatives, valid (some padded; slot 3 fully padded; t̄_{0,0} valid), scale."""
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(N, K, generator=g) > 0.3
    valid[:, 3] = False
    valid[0, 0] = True
    valid[1, 1] = False
    return _norm(g, N), _norm(g, N), _norm(g, N, K), valid, torch.tensor(SCALE, dtype=torch.float64)


def _row_ce(logits, target=0):
    logits = torch.stack(logits)
    return -(logits[target] - torch.logsumexp(logits, 0))


def _loop_itc(image, text, neg, valid, s):
    i2t = [_row_ce([s * image[i] @ text[j] for j in range(N)]
                   + [s * image[i] @ neg[m, c] for m in range(N) for c in range(K) if valid[m, c]], i)
           for i in range(N)]
    t2i = [_row_ce([s * text[i] @ image[j] for j in range(N)], i) for i in range(N)]
    return (sum(i2t) / N + sum(t2i) / N) / 2


def _loop_thresholds(image, text, neg, valid, s, upper=10.0):
    pos_mean = sum(s * image[i] @ text[i] for i in range(N)) / N
    out = []
    for k in range(K):
        sims = [s * image[i] @ neg[i, k] for i in range(N) if valid[i, k]]
        out.append(0.0 if not sims else min(max(float(pos_mean - sum(sims) / len(sims)), 0.0), upper))
    return torch.tensor(out, dtype=torch.float64)


def _loop_cmr(image, text, neg, valid, s, theta):
    terms = [torch.relu(theta[k] + s * image[i] @ neg[i, k] - s * image[i] @ text[i])
             for i in range(N) for k in range(K) if valid[i, k]]
    return sum(terms) / len(terms)


def _loop_imc(image, text, neg, valid, s, mode):
    loss = 0.0
    for i in range(N):
        cols = [s * image[i] @ text[i]] if mode == "paper" else []
        for m in range(N):
            for c in range(K):
                if valid[m, c] or (mode == "reference" and m == 0 and c == 0):
                    cols.append(s * text[i] @ neg[m, c])
        loss = loss + _row_ce(cols, 0)
    return loss / N


def test_itc_matches_loop(batch):
    image, text, neg, valid, s = batch
    got = CEClipLoss()(image, text, s, neg_text_features=neg, neg_text_valid=valid, output_dict=True)
    torch.testing.assert_close(got["contrastive_loss"].double(), _loop_itc(image, text, neg, valid, s),
                               atol=1e-5, rtol=0)


def test_mean_thresholds_match_loop(batch):
    image, text, neg, valid, s = batch
    pos, negl = s * (image * text).sum(-1), s * torch.einsum("nd,nkd->nk", image, neg)
    theta = cmr_thresholds(pos, negl, valid)
    expected = _loop_thresholds(image, text, neg, valid, s)
    torch.testing.assert_close(theta, expected)
    assert theta[3] == 0  # slot without a valid entry
    assert not theta.requires_grad


def test_threshold_clamp_and_fixed():
    pos = torch.tensor([5.0, 7.0])  # mean 6
    neg = torch.tensor([[8.0, -20.0, 1.0], [10.0, -30.0, 3.0]])  # slot means 9, -25, 2
    torch.testing.assert_close(cmr_thresholds(pos, neg), torch.tensor([0.0, 10.0, 4.0]))
    torch.testing.assert_close(cmr_thresholds(pos, neg, upper_bound=50.0), torch.tensor([0.0, 31.0, 4.0]))
    valid = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(cmr_thresholds(pos, neg, valid), torch.tensor([0.0, 10.0, 3.0]))
    fixed = cmr_thresholds(pos, neg, threshold_type="fixed", fixed_threshold=2.5)
    torch.testing.assert_close(fixed, torch.full((3,), 2.5))
    with pytest.raises(ValueError, match="--ceclip-threshold-type"):
        cmr_thresholds(pos, neg, threshold_type="median")


def test_cmr_matches_loop(batch):
    image, text, neg, valid, s = batch
    theta = _loop_thresholds(image, text, neg, valid, s)
    expected = _loop_cmr(image, text, neg, valid, s, theta)
    torch.testing.assert_close(cmr_loss(image, text, neg, s, valid, theta), expected)
    torch.testing.assert_close(cmr_loss(image, text, neg, s, valid), expected)  # default: this batch's 'mean' θ
    theta = torch.full((K,), 3.0, dtype=torch.float64)
    expected = _loop_cmr(image, text, neg, valid, s, theta)
    torch.testing.assert_close(cmr_loss(image, text, neg, s, valid, theta), expected)


def test_cmr_without_valid_pairs_is_zero_and_differentiable(batch):
    image, text, neg, _, s = batch
    image = image.clone().requires_grad_()
    loss = cmr_loss(image, text, neg, s, torch.zeros(N, K, dtype=torch.bool), 5.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(image.grad, torch.zeros_like(image))


def test_imc_paper_and_reference_match_loops(batch):
    image, text, neg, valid, s = batch
    paper = imc_loss(image, text, neg, s, valid)
    reference = imc_loss(image, text, neg, s, valid, mode="reference")
    torch.testing.assert_close(paper, _loop_imc(image, text, neg, valid, s, "paper"))
    torch.testing.assert_close(reference, _loop_imc(image, text, neg, valid, s, "reference"))
    assert not torch.allclose(paper, reference)
    with pytest.raises(ValueError, match="--ceclip-imc-mode"):
        imc_loss(image, text, neg, s, valid, mode="fixed")


def test_reference_imc_keeps_column_zero_even_if_invalid(batch):
    image, text, neg, valid, s = batch
    valid = valid.clone()
    valid[0, 0] = False
    torch.testing.assert_close(imc_loss(image, text, neg, s, valid, mode="reference"),
                               _loop_imc(image, text, neg, valid, s, "reference"))


def test_invalid_negatives_change_nothing(batch):
    image, text, neg, valid, s = batch
    other = torch.where(valid.unsqueeze(-1), neg, _norm(torch.Generator().manual_seed(9), N, K))
    assert not torch.allclose(other, neg)
    for mode in ("paper", "reference"):
        torch.testing.assert_close(imc_loss(image, text, other, s, valid, mode),
                                   imc_loss(image, text, neg, s, valid, mode))
    torch.testing.assert_close(cmr_loss(image, text, other, s, valid), cmr_loss(image, text, neg, s, valid))
    loss = CEClipLoss()
    a = loss(image, text, s, neg_text_features=neg, neg_text_valid=valid, output_dict=True)
    b = loss(image, text, s, neg_text_features=other, neg_text_valid=valid, output_dict=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_gradients_flow_and_skip_invalid_negatives(batch):
    image, text, neg, valid, s = batch
    image, text, neg = (t.float().requires_grad_() for t in (image, text, neg))
    for mode in ("paper", "reference"):
        for threshold_type in ("mean", "fixed"):
            for t in (image, text, neg):
                t.grad = None
            CEClipLoss(imc_mode=mode, threshold_type=threshold_type)(
                image, text, s.float(), neg_text_features=neg, neg_text_valid=valid).backward()
            for t in (image, text, neg):
                assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
            masked = ~valid
            if mode == "reference":
                masked[0, 0] = False
            assert torch.equal(neg.grad[masked], torch.zeros_like(neg.grad[masked]))


def test_module_dict_is_weighted_terms(batch):
    image, text, neg, valid, s = (t.float() if t.is_floating_point() else t for t in batch)
    for kwargs in ({}, {"imc_weight": 0.2, "cmr_weight": 0.4, "imc_mode": "reference"},
                   {"threshold_type": "fixed", "fixed_threshold": 4.0}):
        module = CEClipLoss(**kwargs)
        got = module(image, text, s, neg_text_features=neg, neg_text_valid=valid, output_dict=True,
                     logit_bias=None)
        assert set(got) == {"contrastive_loss", "imc_loss", "cmr_loss"}
        theta = (torch.full((K,), module.fixed_threshold) if module.threshold_type == "fixed"
                 else _loop_thresholds(image.double(), text.double(), neg.double(), valid, s.double()).float())
        imc = imc_loss(image, text, neg, s, valid, module.imc_mode)
        torch.testing.assert_close(got["imc_loss"], module.imc_weight * imc)
        torch.testing.assert_close(got["cmr_loss"], module.cmr_weight * cmr_loss(image, text, neg, s, valid, theta))
        total = module(image, text, s, neg_text_features=neg, neg_text_valid=valid)
        torch.testing.assert_close(total, sum(got.values()))


def test_valid_none_means_all_valid(batch):
    image, text, neg, _, s = batch
    loss, all_valid = CEClipLoss(), torch.ones(N, K, dtype=torch.bool)
    torch.testing.assert_close(loss(image, text, s, neg_text_features=neg),
                               loss(image, text, s, neg_text_features=neg, neg_text_valid=all_valid))


def test_without_negatives_it_is_open_clip_clip_loss(batch):
    image, text, _, _, s = batch
    got = CEClipLoss()(image.float(), text.float(), s.float(), output_dict=True)
    assert set(got) == {"contrastive_loss"}
    torch.testing.assert_close(got["contrastive_loss"], ClipLoss()(image.float(), text.float(), s.float()))


def test_fp32_under_autocast(batch):
    image, text, neg, valid, s = (t.bfloat16() if t.is_floating_point() else t for t in batch)
    loss = CEClipLoss()
    plain = loss(image, text, s.float(), neg_text_features=neg, neg_text_valid=valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = loss(image, text, s.float(), neg_text_features=neg, neg_text_valid=valid)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain)  # bf16 matmuls would differ by about 1e-2


@pytest.mark.parametrize("kwargs, flag", [({"imc_mode": "buggy"}, "--ceclip-imc-mode"),
                                          ({"threshold_type": "median"}, "--ceclip-threshold-type"),
                                          ({"local_loss": True}, "--local-loss")])
def test_bad_arguments_raise(kwargs, flag):
    with pytest.raises(ValueError, match=flag) as err:
        CEClipLoss(**kwargs)
    if flag == "--local-loss":
        assert "--loss ce-clip" in str(err.value)


# ----------------------------------------------------------------------------- the released modes (parity)

def _loop_max_thresholds(image, text, neg, valid, s, upper=10.0):
    """The released 'max' margin: per type, the largest valid·(gt − negative) logit gap over the batch (an
    invalid pair contributes 0), divided by 5, then the training loop's clamp to [0, upper]."""
    out = []
    for k in range(K):
        gaps = [float(s * image[i] @ text[i] - s * image[i] @ neg[i, k]) if valid[i, k] else 0.0 for i in range(N)]
        out.append(min(max(max(gaps) / 5, 0.0), upper))
    return torch.tensor(out, dtype=torch.float64)


def test_max_thresholds_match_the_released_formula(batch):
    image, text, neg, valid, s = batch
    pos, negl = s * (image * text).sum(-1), s * torch.einsum("nd,nkd->nk", image, neg)
    theta = cmr_thresholds(pos, negl, valid, threshold_type="max")
    torch.testing.assert_close(theta, _loop_max_thresholds(image, text, neg, valid, s))
    torch.testing.assert_close(cmr_thresholds(pos, negl, valid, threshold_type="max", upper_bound=0.5),
                               _loop_max_thresholds(image, text, neg, valid, s, upper=0.5))
    assert theta[3] == 0 and not theta.requires_grad  # slot 3: no valid pair, only zeros
    pos, negl = torch.tensor([5.0, 7.0]), torch.tensor([[1.0, 9.0], [2.0, 8.0]])  # gaps [[4,-4],[5,-1]]
    torch.testing.assert_close(cmr_thresholds(pos, negl, threshold_type="max"), torch.tensor([1.0, 0.0]))


def test_cmr_all_pairs_divides_by_n_times_k(batch):
    image, text, neg, valid, s = batch
    theta = _loop_thresholds(image, text, neg, valid, s)
    valid_mean = _loop_cmr(image, text, neg, valid, s, theta)
    all_pairs = cmr_loss(image, text, neg, s, valid, theta, average="all")
    torch.testing.assert_close(all_pairs, valid_mean * int(valid.sum()) / (N * K))
    assert all_pairs < valid_mean
    with pytest.raises(ValueError, match="--ceclip-cmr-average"):
        cmr_loss(image, text, neg, s, valid, theta, average="some")


def _shifted(batch, seed):
    image, text, neg, valid, s = batch
    g = torch.Generator().manual_seed(seed)
    return _norm(g, N), _norm(g, N), _norm(g, N, K), valid, s


@pytest.mark.parametrize("threshold_type", ["mean", "max"])
def test_previous_batch_thresholds_start_at_zero_each_epoch(batch, threshold_type):
    """'previous' (the released loop): batch t's CMR uses the θ of batch t−1; the first batch of an epoch θ = 0."""
    batches = [batch, _shifted(batch, 7), _shifted(batch, 8)]
    loop = _loop_max_thresholds if threshold_type == "max" else _loop_thresholds
    loss = CEClipLoss(threshold_type=threshold_type, threshold_from="previous", cmr_weight=1.0)
    for epoch in range(2):
        loss.start_epoch()
        theta = torch.zeros(K, dtype=torch.float64)
        for b in batches:
            image, text, neg, valid, s = b
            got = loss(image, text, s, neg_text_features=neg, neg_text_valid=valid, output_dict=True)["cmr_loss"]
            want = _loop_cmr(image, text, neg, valid, s, theta)
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
            theta = loop(image, text, neg, valid, s)
            torch.testing.assert_close(loss.previous_thresholds.double(), theta, atol=1e-5, rtol=1e-5)
    current = CEClipLoss(threshold_type=threshold_type, cmr_weight=1.0)
    image, text, neg, valid, s = batches[1]
    torch.testing.assert_close(current(image, text, s, neg_text_features=neg, neg_text_valid=valid,
                                       output_dict=True)["cmr_loss"].double(),
                               _loop_cmr(image, text, neg, valid, s, loop(image, text, neg, valid, s)))


def test_previous_with_fixed_thresholds_stays_fixed(batch):
    image, text, neg, valid, s = batch
    loss = CEClipLoss(threshold_type="fixed", fixed_threshold=3.0, threshold_from="previous", cmr_weight=1.0)
    got = loss(image, text, s, neg_text_features=neg, neg_text_valid=valid, output_dict=True)["cmr_loss"]
    torch.testing.assert_close(got.double(), _loop_cmr(image, text, neg, valid, s, torch.full((K,), 3.0)))


def test_released_mode_flags_are_checked():
    with pytest.raises(ValueError, match="--accum-freq"):
        CEClipLoss(threshold_from="previous", accum_freq=2)
    CEClipLoss(threshold_from="current", accum_freq=2)
    for kwargs, flag in (({"threshold_from": "next"}, "--ceclip-threshold-from"),
                         ({"cmr_average": "none"}, "--ceclip-cmr-average")):
        with pytest.raises(ValueError, match=flag):
            CEClipLoss(**kwargs)


def test_create_loss_reads_the_released_mode_flags():
    from open_clip_align.methods import create_loss
    from open_clip_align.params import build_preparser
    args, _ = build_preparser().parse_known_args(
        ["--loss", "ce-clip", "--ceclip-threshold-type", "max", "--ceclip-threshold-from", "previous",
         "--ceclip-cmr-average", "all"])
    args.local_loss, args.gather_with_grad, args.rank, args.world_size, args.horovod = False, False, 0, 1, False
    args.accum_freq = 1
    loss = create_loss("ce-clip", args)
    assert (loss.threshold_type, loss.threshold_from, loss.cmr_average) == ("max", "previous", "all")
