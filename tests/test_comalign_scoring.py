"""ComAlign scoring (spec comalign.md §3): the figure's example, padding semantics, blocked == naive, the
reference weights and test-set normalisation, the paper mean, fixed constants."""
import math

import pytest
import torch

from open_clip_align.comalign.scoring import (REFERENCE_WEIGHTS, ComAlignScores, combine, compute_scores,
                                              l2_normalize, maxmean_scores, normalisation_constants, paired_maxmean)


def basis(d: int, *pairs) -> torch.Tensor:
    v = torch.zeros(d)
    for i, x in pairs:
        v[i] = x
    return v


def naive_pair(img, txt, img_mask, txt_mask, padding, smooth=None):
    """One (image, caption) pair by the §3 formulas, entry by entry; returns (s_I2T, s_T2I) as floats."""
    def soft_or_hard_max(values):
        if smooth is None:
            return max(values)
        return smooth * math.log(sum(math.exp(v / smooth) for v in values))

    p_all, k_all = range(img.shape[0]), range(txt.shape[0])
    if padding == "reference":
        txt = txt * txt_mask[:, None]
        ps, ks = list(p_all), list(k_all)
    else:
        ps = [p for p in p_all if img_mask[p]]
        ks = [k for k in k_all if txt_mask[k]]
        if not ps or not ks:
            return 0.0, 0.0
    m = [[float(img[p] @ txt[k]) for k in ks] for p in ps]
    i2t = sum(soft_or_hard_max(row) for row in m) / len(ps)
    t2i = sum(soft_or_hard_max([m[a][b] for a in range(len(ps))]) for b in range(len(ks))) / len(ks)
    return i2t, t2i


def random_gallery(n_img, n_txt, p, k, d, seed):
    gen = torch.Generator().manual_seed(seed)
    img = l2_normalize(torch.randn(n_img, p, d, generator=gen, dtype=torch.float64))
    txt = l2_normalize(torch.randn(n_txt, k, d, generator=gen, dtype=torch.float64))
    img_mask = torch.rand(n_img, p, generator=gen) > 0.3
    txt_mask = torch.rand(n_txt, k, generator=gen) > 0.4
    img_mask[1] = False  # an image without components of this role
    txt_mask[2] = False  # a caption without them
    txt_mask[0, 0] = True
    txt = txt * txt_mask[..., None]  # text pads are zero vectors
    return img, txt, img_mask, txt_mask


def test_figure_example_0583_and_the_padding_modes():
    # caption components "blue car", "brown cow" and one <Padding> slot; image components
    t1, t2 = basis(6, (0, 1.0)), basis(6, (1, 1.0))
    text = torch.stack([t1, t2, torch.zeros(6)])[None]                       # [1,3,6], last = zero pad
    text_mask = torch.tensor([[True, True, False]])
    p1 = basis(6, (0, 0.85), (2, math.sqrt(1 - 0.85 ** 2)))
    p2 = basis(6, (1, 0.90), (3, math.sqrt(1 - 0.90 ** 2)))
    p3 = basis(6, (0, -0.6), (1, -0.8))                                       # dislikes every text component
    image = torch.stack([p1, p2, p3])[None]
    i2t, t2i = maxmean_scores(image, text, None, text_mask, padding="reference")
    assert t2i.item() == pytest.approx((0.85 + 0.90 + 0) / 3, abs=1e-6)      # the figure's 0.583
    assert t2i.item() == pytest.approx(0.5833, abs=1e-4)
    assert i2t.item() == pytest.approx((0.85 + 0.90 + 0.0) / 3, abs=1e-6)    # the pad floors p3's max at 0
    i2t, t2i = maxmean_scores(image, text, torch.ones(1, 3, dtype=torch.bool), text_mask, padding="masked")
    assert t2i.item() == pytest.approx((0.85 + 0.90) / 2, abs=1e-6)
    assert i2t.item() == pytest.approx((0.85 + 0.90 - 0.6) / 3, abs=1e-6)
    # masking the image slot p3 out: only real image components count
    i2t, t2i = maxmean_scores(image, text, torch.tensor([[True, True, False]]), text_mask, padding="masked")
    assert i2t.item() == pytest.approx((0.85 + 0.90) / 2, abs=1e-6)
    assert t2i.item() == pytest.approx((0.85 + 0.90) / 2, abs=1e-6)


def test_two_real_and_eight_padded_components_both_directions():
    d = 16
    # two real caption components, eight zero pads
    text = torch.zeros(1, 10, d)
    text[0, 0], text[0, 1] = basis(d, (0, 1.0)), basis(d, (1, 1.0))
    text_mask = torch.zeros(1, 10, dtype=torch.bool)
    text_mask[0, :2] = True
    # ten image components: sims to (t1, t2) given below, the rest orthogonal to both
    sims = [(0.8, 0.1), (0.2, 0.6), (-0.3, -0.2), (0.0, 0.4)] + [(0.0, 0.0)] * 6
    image = torch.stack([basis(d, (0, a), (1, b), (2 + p, math.sqrt(1 - a * a - b * b)))
                         for p, (a, b) in enumerate(sims)])[None]
    i2t, t2i = maxmean_scores(image, text, None, text_mask, padding="reference")
    assert t2i.item() == pytest.approx((0.8 + 0.6) / 10, abs=1e-6)          # pads stay in K = 10
    assert i2t.item() == pytest.approx((0.8 + 0.6 + 0.0 + 0.4) / 10, abs=1e-6)  # pads floor each max_k at 0
    i2t, t2i = maxmean_scores(image, text, None, text_mask, padding="masked")
    assert t2i.item() == pytest.approx((0.8 + 0.6) / 2, abs=1e-6)            # K = 2
    assert i2t.item() == pytest.approx((0.8 + 0.6 - 0.2 + 0.4) / 10, abs=1e-6)  # P = 10 real image slots
    # pads given only by the mask (non-zero garbage in the slots) are zeroed by reference padding
    text_garbage = text.clone()
    text_garbage[0, 2:] = l2_normalize(torch.ones(8, d))
    assert maxmean_scores(image, text_garbage, None, text_mask, padding="reference")[1].item() == \
        pytest.approx((0.8 + 0.6) / 10, abs=1e-6)


@pytest.mark.parametrize("padding", ["reference", "masked"])
@pytest.mark.parametrize("smooth", [None, 0.05])
@pytest.mark.parametrize("blocks", [(1, 1), (2, 3), (3, 4), (256, 2048)])
def test_blocked_equals_naive(padding, smooth, blocks):
    img, txt, img_mask, txt_mask = random_gallery(7, 11, 5, 4, 8, seed=0)
    i2t, t2i = maxmean_scores(img, txt, img_mask, txt_mask, padding=padding, smooth=smooth,
                              block_images=blocks[0], block_texts=blocks[1])
    assert i2t.shape == (7, 11) and t2i.shape == (11, 7)
    for i in range(7):
        for t in range(11):
            ref_i2t, ref_t2i = naive_pair(img[i], txt[t], img_mask[i], txt_mask[t], padding, smooth)
            assert i2t[i, t].item() == pytest.approx(ref_i2t, abs=1e-9)
            assert t2i[t, i].item() == pytest.approx(ref_t2i, abs=1e-9)
    if padding == "masked":
        assert (i2t[1] == 0).all() and (t2i[2] == 0).all()                  # an empty side scores 0


def test_blocked_equals_dense_einsum_in_float32():
    img, txt, _, _ = random_gallery(13, 29, 10, 10, 32, seed=1)
    img, txt = img.float(), txt.float()
    sim = torch.einsum("ipd,tkd->itpk", img, txt)                         # the reference's dense layout
    dense_t2i = sim.max(dim=2).values.mean(dim=-1).T
    dense_i2t = sim.max(dim=3).values.mean(dim=-1)
    i2t, t2i = maxmean_scores(img, txt, block_images=5, block_texts=7)
    torch.testing.assert_close(i2t, dense_i2t, atol=1e-6, rtol=0)
    torch.testing.assert_close(t2i, dense_t2i, atol=1e-6, rtol=0)


def test_paired_is_the_diagonal():
    img, txt, img_mask, txt_mask = random_gallery(6, 6, 5, 4, 8, seed=2)
    for padding in ("reference", "masked"):
        i2t, t2i = maxmean_scores(img, txt, img_mask, txt_mask, padding=padding)
        p_i2t, p_t2i = paired_maxmean(img, txt, img_mask, txt_mask, padding=padding)
        torch.testing.assert_close(p_i2t, i2t.diagonal())
        torch.testing.assert_close(p_t2i, t2i.diagonal())


def test_smooth_max_approaches_max_and_gradients_are_finite():
    img, txt, img_mask, txt_mask = random_gallery(4, 5, 5, 4, 8, seed=3)
    hard = maxmean_scores(img, txt, img_mask, txt_mask, padding="masked")[0]
    soft = maxmean_scores(img, txt, img_mask, txt_mask, padding="masked", smooth=1e-3)[0]
    torch.testing.assert_close(soft, hard, atol=1e-2, rtol=0)
    assert (soft >= hard - 1e-12).all()                                     # logsumexp upper-bounds the max
    img = img.clone().requires_grad_(True)
    txt = txt.clone().requires_grad_(True)
    for smooth in (None, 0.05):
        i2t, t2i = maxmean_scores(img, txt, img_mask, txt_mask, padding="masked", smooth=smooth,
                                  block_images=3, block_texts=2)
        (i2t.sum() + t2i.sum()).backward()
        assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()
        assert img.grad[1].abs().sum() == 0                                 # the image with no real component
        img.grad, txt.grad = None, None
    small = [x.detach()[:2, :3].clone().requires_grad_(True) for x in (img, txt)]
    assert torch.autograd.gradcheck(
        lambda a, b: maxmean_scores(a, b, img_mask[:2, :3], txt_mask[:2, :3], padding="masked", smooth=0.1,
                                    block_images=1, block_texts=1), small)


def test_bad_arguments_are_refused():
    img, txt = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="padding"):
        maxmean_scores(img, txt, padding="zeros")
    with pytest.raises(ValueError, match="text_mask"):
        maxmean_scores(img, txt, text_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[Ni,P,d\]"):
        maxmean_scores(img, torch.randn(2, 5, 3))


# ------------------------------------------------------------------------------------ combining


def hand_scores(padding="reference") -> ComAlignScores:
    """2 images × 3 captions with hand-picked term matrices."""
    t = torch.tensor
    return ComAlignScores(
        clip=t([[0.30, 0.20, 0.10], [0.05, 0.25, 0.20]]),
        refined=t([[0.50, 0.10, 0.30], [0.20, 0.40, 0.60]]),
        entity_i2t=t([[0.4, 0.2, 0.0], [0.1, 0.3, 0.2]]),
        entity_t2i=t([[0.5, 0.1], [0.2, 0.6], [0.0, 0.3]]),
        relation_i2t=t([[0.2, 0.0, 0.1], [0.0, 0.1, 0.4]]),
        relation_t2i=t([[0.3, 0.0], [0.1, 0.2], [0.2, 0.2]]),
        image_has_entity=t([True, True]), image_has_relation=t([True, True]),
        text_has_entity=t([True, True, True]), text_has_relation=t([True, True, padding == "reference"]),
        padding=padding)


def test_reference_combination_by_hand():
    out = combine(hand_scores(), mode="reference")
    # |mean over rows of the row-wise max|
    c_clip = (0.30 + 0.25) / 2
    c_ref = (0.50 + 0.60) / 2
    fine_i2t = [[0.6, 0.2, 0.1], [0.1, 0.4, 0.6]]
    fine_t2i = [[0.8, 0.1], [0.3, 0.8], [0.2, 0.5]]
    c_fi = (0.6 + 0.6) / 2
    c_ft = (0.8 + 0.8 + 0.5) / 3
    assert out.constants == pytest.approx({"clip": c_clip, "refined": c_ref, "fine_i2t": c_fi, "fine_t2i": c_ft})
    clip = [[0.30, 0.20, 0.10], [0.05, 0.25, 0.20]]
    ref = [[0.50, 0.10, 0.30], [0.20, 0.40, 0.60]]
    for i in range(2):
        for t in range(3):
            t2i = 10 * clip[i][t] / c_clip + fine_t2i[t][i] / c_ft + ref[i][t] / c_ref
            i2t = 2 * clip[i][t] / c_clip + 0.06 * ref[i][t] / c_ref + 0.06 * fine_i2t[i][t] / c_fi \
                + 0.02 * fine_t2i[t][i] / c_ft
            assert out.t2i[t, i].item() == pytest.approx(t2i, abs=1e-5)
            assert out.i2t[i, t].item() == pytest.approx(i2t, abs=1e-5)
    # rankings: caption 1 prefers image 1, image 0 prefers caption 0
    assert out.t2i.argmax(dim=1).tolist() == [0, 1, 1]
    assert out.i2t.argmax(dim=1).tolist() == [0, 1]


def test_entity_coefficient_multiplies_the_entity_term():
    weights = {**REFERENCE_WEIGHTS, "entity": 3.0}
    out = combine(hand_scores(), mode="custom", weights=weights, normalise="none")
    s = hand_scores()
    expected = 10 * s.clip.T + (3 * s.entity_t2i + s.relation_t2i) + s.refined.T
    torch.testing.assert_close(out.t2i, expected)
    assert out.constants == {}


def test_paper_mean_and_its_masked_role_dropping():
    s = hand_scores()
    out = combine(s, mode="paper")
    torch.testing.assert_close(out.i2t, (s.refined + s.entity_i2t + s.relation_i2t) / 3)
    torch.testing.assert_close(out.t2i, (s.refined.T + s.entity_t2i + s.relation_t2i) / 3)
    out = combine(s, mode="paper", global_term="clip")
    torch.testing.assert_close(out.i2t, (s.clip + s.entity_i2t + s.relation_i2t) / 3)
    masked = hand_scores("masked")                                           # caption 2 has no relation
    out = combine(masked, mode="paper")
    assert out.i2t[1, 2].item() == pytest.approx((0.60 + 0.2) / 2)
    assert out.t2i[2, 0].item() == pytest.approx((0.30 + 0.0) / 2)
    assert out.i2t[0, 1].item() == pytest.approx((0.10 + 0.2 + 0.0) / 3)


def test_fixed_constants_from_a_calibration_split():
    calib = hand_scores()
    constants = normalisation_constants(calib)
    assert constants["clip"] == pytest.approx(0.275) and constants["entity_t2i"] == pytest.approx((0.5 + 0.6 + 0.3) / 3)
    test = hand_scores()
    test.clip = test.clip * 2                                                # a gallery on a different scale
    fixed = combine(test, mode="reference", normalise="fixed", constants=constants)
    transductive = combine(test, mode="reference")
    assert fixed.constants["clip"] == pytest.approx(0.275)
    assert transductive.constants["clip"] == pytest.approx(0.55)
    torch.testing.assert_close(fixed.t2i - transductive.t2i, 10 * (test.clip / 0.275 - test.clip / 0.55).T)
    with pytest.raises(ValueError, match="fine_t2i"):
        combine(test, mode="reference", normalise="fixed", constants={"clip": 1.0, "refined": 1.0, "fine_i2t": 1.0})
    with pytest.raises(ValueError, match="unknown score weight"):
        combine(test, mode="custom", weights={"i2t": {"cilp": 1.0}})
    with pytest.raises(ValueError, match="mode='custom'"):
        combine(test, mode="paper", weights={"i2t": {"clip": 1.0}})


def test_compute_scores_from_model_outputs_and_final_ranking():
    gen = torch.Generator().manual_seed(7)
    n_img, n_txt, d = 4, 6, 16
    image = {"image_features": torch.randn(n_img, d, generator=gen),
             "refined_global": torch.randn(n_img, d, generator=gen),
             "image_entity": l2_normalize(torch.randn(n_img, 3, d, generator=gen)),
             "image_relation": l2_normalize(torch.randn(n_img, 2, d, generator=gen))}
    text = {"text_features": torch.randn(n_txt, d, generator=gen),
            "text_entity": l2_normalize(torch.randn(n_txt, 3, d, generator=gen)),
            "text_relation": l2_normalize(torch.randn(n_txt, 2, d, generator=gen))}
    text["text_relation"][1] = 0                                             # a caption without relations
    s = compute_scores(image, text, padding="masked")
    g_hat, c_hat = (l2_normalize(image[k]) for k in ("image_features", "refined_global"))
    t_hat = l2_normalize(text["text_features"])
    torch.testing.assert_close(s.clip, g_hat @ t_hat.T)
    torch.testing.assert_close(s.refined, c_hat @ t_hat.T)
    assert s.text_has_relation.tolist() == [True, False, True, True, True, True]   # derived from zero rows
    for i in range(n_img):
        for t in range(n_txt):
            e = naive_pair(image["image_entity"][i], text["text_entity"][t], torch.ones(3, dtype=torch.bool),
                           torch.ones(3, dtype=torch.bool), "masked")
            r = naive_pair(image["image_relation"][i], text["text_relation"][t], torch.ones(2, dtype=torch.bool),
                           text["text_relation"][t].ne(0).any(-1), "masked")
            assert s.entity_i2t[i, t].item() == pytest.approx(e[0], abs=1e-6)
            assert s.relation_t2i[t, i].item() == pytest.approx(r[1], abs=1e-6)
    # final ranking of the reference formula, by naive code
    out = combine(s, mode="reference")
    const = lambda rows: abs(sum(max(r) for r in rows) / len(rows))  # noqa: E731
    m = {k: v.tolist() for k, v in {"clip": s.clip, "refined": s.refined, "fi": s.entity_i2t + s.relation_i2t,
                                    "ft": s.entity_t2i + s.relation_t2i}.items()}
    k = {name: const(rows) for name, rows in m.items()}
    naive_t2i = [[10 * m["clip"][i][t] / k["clip"] + m["ft"][t][i] / k["ft"] + m["refined"][i][t] / k["refined"]
                  for i in range(n_img)] for t in range(n_txt)]
    naive_i2t = [[2 * m["clip"][i][t] / k["clip"] + 0.06 * m["refined"][i][t] / k["refined"]
                  + 0.06 * m["fi"][i][t] / k["fi"] + 0.02 * m["ft"][t][i] / k["ft"]
                  for t in range(n_txt)] for i in range(n_img)]
    torch.testing.assert_close(out.t2i, torch.tensor(naive_t2i), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.i2t, torch.tensor(naive_i2t), atol=1e-5, rtol=0)
    assert out.t2i.argsort(dim=1, descending=True).tolist() == \
        torch.tensor(naive_t2i).argsort(dim=1, descending=True).tolist()
    with pytest.raises(KeyError, match="refined_global"):
        compute_scores({k: v for k, v in image.items() if k != "refined_global"}, text)


def _component_outputs(n_img, n_txt, d, seed, p=10, k=10):
    gen = torch.Generator().manual_seed(seed)
    image = {"image_features": torch.randn(n_img, d, generator=gen),
             "refined_global": torch.randn(n_img, d, generator=gen),
             "image_entity": l2_normalize(torch.randn(n_img, p, d, generator=gen)),
             "image_relation": l2_normalize(torch.randn(n_img, p, d, generator=gen)),
             "image_entity_mask": torch.rand(n_img, p, generator=gen) > 0.3,
             "image_relation_mask": torch.rand(n_img, p, generator=gen) > 0.3}
    text = {"text_features": torch.randn(n_txt, d, generator=gen),
            "text_entity": l2_normalize(torch.randn(n_txt, k, d, generator=gen)),
            "text_relation": l2_normalize(torch.randn(n_txt, k, d, generator=gen)),
            "text_entity_mask": torch.rand(n_txt, k, generator=gen) > 0.4,
            "text_relation_mask": torch.rand(n_txt, k, generator=gen) > 0.4}
    return image, text


def _rows(outputs, index):
    return {key: value[index] for key, value in outputs.items()}


@pytest.mark.parametrize("padding", ["reference", "masked"])
def test_exact_scores_of_a_pair_ignore_the_rest_of_the_gallery(padding):
    """exact=True (evaluation): every score of (image i, caption t) is bit-identical whether the pair is scored
    alone, among repeated captions, or in another order; and it is the float32 scores up to rounding."""
    image, text = _component_outputs(5, 6, 64, seed=11)
    full = compute_scores(image, text, padding=padding, exact=True)
    loose = compute_scores(image, text, padding=padding)  # the training path: unchanged, float32
    assert full.clip.dtype == torch.float64 and loose.clip.dtype == torch.float32
    for name in ("clip", "refined", "entity_i2t", "entity_t2i", "relation_i2t", "relation_t2i"):
        torch.testing.assert_close(getattr(full, name).float(), getattr(loose, name), atol=1e-6, rtol=0)
    order = torch.tensor([5, 2, 2, 0, 2, 4])  # a caption three times, the rest permuted
    again = compute_scores(_rows(image, torch.tensor([3, 1])), _rows(text, order), padding=padding, exact=True,
                           block_images=1, block_texts=4)
    for name in ("clip", "refined", "entity_i2t", "relation_i2t"):
        assert torch.equal(getattr(again, name), getattr(full, name)[[3, 1]][:, order]), name
    for name in ("entity_t2i", "relation_t2i"):
        assert torch.equal(getattr(again, name), getattr(full, name)[order][:, [3, 1]]), name
    final, final_again = (combine(s, mode="paper") for s in (full, again))
    assert torch.equal(final_again.i2t, final.i2t[[3, 1]][:, order])
    assert (final_again.i2t[:, [1, 2, 4]] == final_again.i2t[:, 1:2]).all()  # the repeated caption ties
    with pytest.raises(ValueError, match="exact=True.*smooth"):
        compute_scores(image, text, padding=padding, smooth=0.1, exact=True)
