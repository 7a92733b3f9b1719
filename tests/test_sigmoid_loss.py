"""The sigmoid (SigLIP) hard-negative losses against per-pair Python loops (spec backbones.md §2.4), the CoCa
caption term every ``GatheredLoss`` adds, ``--degla-igc-scale``, and which loss each method builds."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from open_clip_align.losses import (CEClipLoss, DeGLALoss, NegCLIPLoss, SigmoidCEClipLoss, SigmoidDeGLALoss,
                                    SigmoidNegCLIPLoss)
from open_clip_align.methods import get_method

B, K, D = 5, 3, 8


def _sp(z: float) -> float:
    """softplus, in float64 Python."""
    return math.log1p(math.exp(-abs(z))) + max(z, 0.0)


def _ce0(logits) -> float:
    """Cross-entropy with target 0 over a list of logits (None = masked)."""
    kept = [z for z in logits if z is not None]
    top = max(kept)
    return -(logits[0] - top - math.log(sum(math.exp(z - top) for z in kept)))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)

    def feats(*shape):
        return F.normalize(torch.randn(*shape, D, generator=g, dtype=torch.float64), dim=-1).float()

    valid = torch.rand(B, K, generator=g) > 0.3
    valid[0] = False  # a row with no valid negative
    return dict(v=feats(B), t=feats(B), n=feats(B, K), tv=feats(B), tt=feats(B), tn=feats(B, K), valid=valid,
                s=torch.tensor(9.0), b=torch.tensor(-2.5))


def _dot(a, b) -> float:
    return float((a.double() * b.double()).sum())


def _sig_negclip_loop(x, weight, columns):
    total = 0.0
    for i in range(B):
        for j in range(B):
            z = float(x["s"]) * _dot(x["v"][i], x["t"][j]) + float(x["b"])
            total += _sp(-z) if i == j else _sp(z)
        for n in range(B):
            for k in range(K):
                if (columns == "all" or n == i) and x["valid"][n, k]:
                    total += weight * _sp(float(x["s"]) * _dot(x["v"][i], x["n"][n, k]) + float(x["b"]))
    return total / B


@pytest.mark.parametrize("columns", ["own", "all"])
def test_sig_negclip_is_the_per_pair_loop(batch, columns):
    x = batch
    loss = SigmoidNegCLIPLoss(hardneg_weight=0.6, columns=columns)(
        x["v"], x["t"], x["s"], logit_bias=x["b"], neg_text_features=x["n"], neg_text_valid=x["valid"])
    assert loss.item() == pytest.approx(_sig_negclip_loop(x, 0.6, columns), rel=1e-5)
    plain = SigmoidNegCLIPLoss()(x["v"], x["t"], x["s"], logit_bias=x["b"])  # no negatives: SigLIP's loss
    z = [[9.0 * _dot(x["v"][i], x["t"][j]) - 2.5 for j in range(B)] for i in range(B)]
    siglip = sum(_sp(-z[i][j]) if i == j else _sp(z[i][j]) for i in range(B) for j in range(B)) / B
    assert plain.item() == pytest.approx(siglip, rel=1e-5)


def test_sig_degla_terms_are_the_loops(batch):
    x, s = batch, 9.0
    out = SigmoidDeGLALoss(igc_weight=0.3, tgc_weight=0.2, distill_weight=0.1, tgc_scale=10.0)(
        x["v"], x["t"], x["s"], logit_bias=x["b"], neg_text_features=x["n"], neg_text_valid=x["valid"],
        teacher_image_features=x["tv"], teacher_text_features=x["tt"], teacher_neg_text_features=x["tn"],
        output_dict=True)
    assert out["contrastive_loss"].item() == pytest.approx(_sig_negclip_loop(x, 1.0, "own"), rel=1e-5)
    igc = tgc = 0.0
    distill = 0.0
    for i in range(B):
        negs = [s * _dot(x["v"][i], x["n"][i, k]) if x["valid"][i, k] else None for k in range(K)]
        igc += _ce0([s * _dot(x["v"][i], x["t"][i]), *negs])
        negs = [10.0 * _dot(x["t"][i], x["n"][i, k]) if x["valid"][i, k] else None for k in range(K)]
        tgc += _ce0([10.0 * _dot(x["t"][i], x["tt"][i]), *negs])
        distill += float(((x["v"][i] - x["tv"][i]) ** 2).sum() + ((x["t"][i] - x["tt"][i]) ** 2).sum())
        distill += sum(float(((x["n"][i, k] - x["tn"][i, k]) ** 2).sum()) for k in range(K) if x["valid"][i, k])
    assert out["igc_loss"].item() == pytest.approx(0.3 * igc / B, rel=1e-5)
    assert out["tgc_loss"].item() == pytest.approx(0.2 * tgc / B, rel=1e-5)
    assert out["distill_loss"].item() == pytest.approx(0.1 * distill, rel=1e-5)
    fixed = SigmoidDeGLALoss(igc_weight=1.0, igc_scale=3.0, distill_reduction="mean", distill_weight=1.0)(
        x["v"], x["t"], x["s"], logit_bias=x["b"], neg_text_features=x["n"], neg_text_valid=x["valid"],
        teacher_image_features=x["tv"], teacher_text_features=x["tt"], teacher_neg_text_features=x["tn"],
        output_dict=True)
    igc3 = sum(_ce0([3.0 * _dot(x["v"][i], x["t"][i]),
                     *[3.0 * _dot(x["v"][i], x["n"][i, k]) if x["valid"][i, k] else None for k in range(K)]])
               for i in range(B)) / B
    assert fixed["igc_loss"].item() == pytest.approx(igc3, rel=1e-5)
    assert fixed["distill_loss"].item() == pytest.approx(distill / (2 * B + int(x["valid"].sum())), rel=1e-5)


def test_sig_ce_clip_terms_are_the_loops(batch):
    x, s = batch, 9.0
    out = SigmoidCEClipLoss(imc_weight=0.5, cmr_weight=0.25, upper_bound=10.0)(
        x["v"], x["t"], x["s"], logit_bias=x["b"], neg_text_features=x["n"], neg_text_valid=x["valid"],
        output_dict=True)
    pool = [(n, k) for n in range(B) for k in range(K)]
    imc = sum(_ce0([s * _dot(x["v"][i], x["t"][i]),
                    *[s * _dot(x["t"][i], x["n"][n, k]) if x["valid"][n, k] else None for n, k in pool]])
              for i in range(B)) / B
    assert out["imc_loss"].item() == pytest.approx(0.5 * imc, rel=1e-5)
    pos = [s * _dot(x["v"][i], x["t"][i]) for i in range(B)]
    neg = [[s * _dot(x["v"][i], x["n"][i, k]) for k in range(K)] for i in range(B)]
    hinge, count = 0.0, 0
    for k in range(K):
        rows = [i for i in range(B) if x["valid"][i, k]]
        theta = 0.0 if not rows else min(max(sum(pos) / B - sum(neg[i][k] for i in rows) / len(rows), 0.0),
                                         10.0 * s / 100)  # the upper bound in units of s
        for i in rows:
            hinge += max(theta + neg[i][k] - pos[i], 0.0)
            count += 1
    assert out["cmr_loss"].item() == pytest.approx(0.25 * hinge / count, rel=1e-5)
    assert out["contrastive_loss"].item() == pytest.approx(_sig_negclip_loop(x, 1.0, "own"), rel=1e-5)


def test_a_caption_decoder_adds_its_loss_to_every_hard_negative_loss(batch):
    x = batch
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(B, 4, 11, generator=g), torch.randint(0, 11, (B, 4), generator=g)
    labels[0, 3] = 0  # padding is ignored
    expected = sum(-torch.log_softmax(logits[i, j], -1)[labels[i, j]].item()
                   for i in range(B) for j in range(4) if labels[i, j] != 0) / int((labels != 0).sum())
    for loss in (NegCLIPLoss(contrastive_loss_weight=0.5, caption_loss_weight=3.0),
                 SigmoidNegCLIPLoss(contrastive_loss_weight=0.5, caption_loss_weight=3.0)):
        kw = dict(neg_text_features=x["n"], neg_text_valid=x["valid"], logit_bias=x["b"])
        alone = loss(x["v"], x["t"], x["s"], output_dict=True, **kw)
        out = loss(x["v"], x["t"], x["s"], output_dict=True, logits=logits, labels=labels, **kw)
        assert out["caption_loss"].item() == pytest.approx(3.0 * expected, rel=1e-5)
        assert out["contrastive_loss"].item() == pytest.approx(0.5 * alone["contrastive_loss"].item(), rel=1e-6)


def test_softmax_degla_igc_scale_replaces_s_in_igc_only(batch):
    x = batch
    kw = dict(neg_text_features=x["n"], neg_text_valid=x["valid"], teacher_image_features=x["tv"],
              teacher_text_features=x["tt"], teacher_neg_text_features=x["tn"], output_dict=True)
    base = DeGLALoss(igc_weight=1.0)(x["v"], x["t"], x["s"], **kw)
    fixed = DeGLALoss(igc_weight=1.0, igc_scale=3.0)(x["v"], x["t"], x["s"], **kw)
    igc3 = sum(_ce0([3.0 * _dot(x["v"][i], x["t"][i]),
                     *[3.0 * _dot(x["v"][i], x["n"][i, k]) if x["valid"][i, k] else None for k in range(K)]])
               for i in range(B)) / B
    assert fixed["igc_loss"].item() == pytest.approx(igc3, rel=1e-5)
    assert fixed["contrastive_loss"].item() == pytest.approx(base["contrastive_loss"].item(), rel=1e-6)


def _args(**kw):
    args = argparse.Namespace(local_loss=False, gather_with_grad=False, rank=0, world_size=1, horovod=False,
                              degla_igc_weight=0.1, degla_tgc_weight=0.1, degla_distill_weight=0.005,
                              degla_tgc_scale=10.0, degla_igc_scale=None, degla_tgc_mode="fixed",
                              degla_distill_reduction="sum", degla_distill_negatives=True, ceclip_imc_weight=0.3,
                              ceclip_cmr_weight=0.2, ceclip_imc_mode="paper", ceclip_threshold_type="mean",
                              ceclip_fixed_threshold=10.0, ceclip_upper_bound=10.0, ceclip_threshold_from="current",
                              ceclip_cmr_average="valid", accum_freq=1, siglip=False, siglip_hardneg_weight=0.5,
                              siglip_hardneg_columns="all")
    vars(args).update(kw)
    return args


def test_each_method_builds_its_sigmoid_form_when_the_run_trains_it():
    softmax = {"negclip": NegCLIPLoss, "degla": DeGLALoss, "ce-clip": CEClipLoss}
    sigmoid = {"negclip": SigmoidNegCLIPLoss, "degla": SigmoidDeGLALoss, "ce-clip": SigmoidCEClipLoss}
    for name in softmax:
        assert type(get_method(name).create_loss(_args())) is softmax[name]
        built = get_method(name).create_loss(_args(hardneg_sigmoid=True))
        assert type(built) is sigmoid[name]
        pairs = built.pairs if name == "ce-clip" else built
        assert (pairs.hardneg_weight, pairs.columns) == (0.5, "all")
        assert type(get_method(name).create_loss(_args(siglip=True))) is sigmoid[name]  # before the set-up decided
