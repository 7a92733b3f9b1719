"""AlignVLM connector: the ALIGN connector (paper form), the MLP baseline and token reduction."""
import math

import pytest
import torch
import torch.nn.functional as F

from open_clip_align.vlm import (
    AlignConnector,
    MLPConnector,
    avg_pool_tokens,
    pixel_shuffle_tokens,
    pixel_unshuffle_tokens,
    probability_stats,
    vocab_subset_from_probs,
)

D_V, HID, VOCAB = 12, 16, 40


def _connector(**kw):
    torch.manual_seed(0)
    head = torch.randn(VOCAB, HID)
    conn = AlignConnector(D_V, HID, VOCAB, lm_head_weight=head, **kw)
    if conn.ln2 is not None and conn.ln2.weight is not None:
        with torch.no_grad():  # a non-trivial gain (inverse temperature) and bias so P is not near-uniform
            conn.ln2.weight.uniform_(0.5, 3.0)
            conn.ln2.bias.normal_(0, 0.5)
    return conn


def _embed(requires_grad=False):
    g = torch.Generator().manual_seed(1)
    return torch.randn(VOCAB, HID, generator=g).requires_grad_(requires_grad)


def _feats(b=2, n=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, n, D_V, generator=g).to(dtype)


def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


# ------------------------------------------------------------------------------------------- probabilities
def test_probs_rows_sum_to_one_and_output_in_convex_hull():
    conn, e = _connector(), _embed()
    out, p = conn(_feats(), e, return_probs=True)
    assert out.shape == (2, 16, HID) and p.shape == (2, 16, VOCAB)
    assert p.dtype == torch.float32
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 16), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, p @ e, atol=1e-6, rtol=1e-6)
    lo, hi = e.min(0).values, e.max(0).values
    assert ((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()
    torch.testing.assert_close(conn.probs(_feats()), p)
    assert p.max() > 2.0 / VOCAB  # not trivially uniform: the test exercises a peaked P


def test_layer_order_matches_paper_equations():
    conn, e, x = _connector(), _embed(), _feats()
    h1 = F.layer_norm(x @ conn.w1.weight.T + conn.w1.bias, (HID,), conn.ln1.weight, conn.ln1.bias)
    z = h1 @ conn.w2.weight.T
    p = torch.softmax(F.layer_norm(z, (VOCAB,), conn.ln2.weight, conn.ln2.bias), -1)
    torch.testing.assert_close(conn(x, e), p @ e)


def test_embedding_table_is_not_stored():
    conn, e = _connector(), _embed()
    conn(_feats(), e)
    names = set(conn.state_dict())
    assert names == {"w1.weight", "w1.bias", "ln1.weight", "ln1.bias", "w2.weight", "ln2.weight", "ln2.bias"}
    ptrs = {t.data_ptr() for t in list(conn.parameters()) + list(conn.buffers())}
    assert e.data_ptr() not in ptrs


def test_wrong_embedding_shape_raises():
    with pytest.raises(ValueError, match="embed_weight"):
        _connector()(_feats(), torch.randn(VOCAB + 1, HID))


# ------------------------------------------------------------------------------------------- W2 init
def test_w2_is_a_copy_of_the_head():
    head = torch.randn(VOCAB, HID)
    conn = AlignConnector(D_V, HID, VOCAB, lm_head_weight=head)
    assert torch.equal(conn.w2.weight, head)
    assert conn.w2.weight.untyped_storage().data_ptr() != head.untyped_storage().data_ptr()
    with torch.no_grad():
        conn.w2.weight.add_(1.0)
    assert not torch.equal(conn.w2.weight, head)  # updating W2 leaves the head untouched
    with pytest.raises(ValueError, match="shape"):
        AlignConnector(D_V, HID, VOCAB, lm_head_weight=torch.randn(VOCAB, HID + 1))


@pytest.mark.parametrize("tied", [True, False])
def test_from_lm_copies_head_never_shares_storage(tied):
    lm = _tiny_llama(tied)
    head, embed = lm.get_output_embeddings().weight, lm.get_input_embeddings().weight
    assert (head.data_ptr() == embed.data_ptr()) == tied  # the tiny model really is (un)tied
    conn = AlignConnector.from_lm(D_V, lm)
    assert (conn.lm_hidden, conn.vocab_size) == (32, 100)
    assert torch.equal(conn.w2.weight, head)
    w2_storage = conn.w2.weight.untyped_storage().data_ptr()
    assert w2_storage not in {head.untyped_storage().data_ptr(), embed.untyped_storage().data_ptr()}
    # a training step on W2 must not move the LM's head / embedding table
    before_head, before_embed = head.detach().clone(), embed.detach().clone()
    opt = torch.optim.SGD(conn.parameters(), lr=1.0)
    conn(torch.randn(1, 4, D_V), embed.detach()).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(conn.w2.weight, before_head)
    assert torch.equal(head, before_head) and torch.equal(embed, before_embed)
    out = conn(torch.randn(1, 4, D_V), embed)
    assert out.shape == (1, 4, 32)


# ------------------------------------------------------------------------------------------- gradients
def test_frozen_embeddings_get_no_grad_but_connector_does():
    conn, e = _connector(), _embed(requires_grad=False)
    conn(_feats(), e).pow(2).sum().backward()
    assert e.grad is None
    for name, param in conn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_detach_embeddings_blocks_grad_to_trainable_table():
    e = _embed(requires_grad=True)
    _connector(detach_embeddings=True)(_feats(), e).sum().backward()
    assert e.grad is None
    e2 = _embed(requires_grad=True)
    _connector()(_feats(), e2).sum().backward()
    assert e2.grad is not None and e2.grad.abs().sum() > 0  # live table trains when not detached


# ------------------------------------------------------------------------------------------- vocabulary subset
def test_full_vocab_subset_equals_no_subset():
    e, x = _embed(), _feats()
    full = _connector()
    out_full, p_full = full(x, e, return_probs=True)
    sub = _connector(vocab_subset=torch.arange(VOCAB))
    out_sub, p_sub = sub(x, e, return_probs=True)
    torch.testing.assert_close(out_sub, out_full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(p_sub, p_full, atol=1e-7, rtol=1e-6)


def test_partial_subset_equals_manual_slicing():
    conn, e, x = _connector(), _embed(), _feats()
    idx = torch.tensor([3, 0, 17, 5, 39, 22, 8])
    conn.set_vocab_subset(idx)
    out, p = conn(x, e, return_probs=True)
    assert p.shape == (2, 16, idx.numel())
    h1 = conn.ln1(conn.w1(x))
    z = h1 @ conn.w2.weight[idx].T
    p_ref = torch.softmax(F.layer_norm(z, (idx.numel(),), conn.ln2.weight[idx], conn.ln2.bias[idx]), -1)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(out, p_ref @ e[idx])
    # the subset's output lies in the hull of the kept rows only
    lo, hi = e[idx].min(0).values, e[idx].max(0).values
    assert ((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()
    conn.set_vocab_subset(None)
    assert conn(x, e, return_probs=True)[1].shape[-1] == VOCAB
    with pytest.raises(ValueError):
        conn.set_vocab_subset(torch.tensor([0, VOCAB]))


def test_vocab_subset_from_probs():
    mean_p = torch.tensor([0.5, 1e-8, 0.2, 1e-7, 0.3])
    assert vocab_subset_from_probs(mean_p).tolist() == [0, 2, 4]
    assert vocab_subset_from_probs(mean_p, top_k=2).tolist() == [0, 4]


# ------------------------------------------------------------------------------------------- precision
def test_bf16_features_no_nan_and_fp32_softmax():
    conn = _connector()
    out, p = conn(_feats(dtype=torch.bfloat16) * 50, _embed(), return_probs=True)
    assert p.dtype == torch.float32 and out.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(p).all()
    # whole connector and E in bf16: softmax still fp32, output in E's dtype
    conn_bf16 = _connector().to(torch.bfloat16)
    e16 = _embed().to(torch.bfloat16)
    out16, p16 = conn_bf16(_feats(dtype=torch.bfloat16) * 50, e16, return_probs=True)
    assert p16.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert torch.isfinite(out16.float()).all() and torch.isfinite(p16).all()
    torch.testing.assert_close(p16.sum(-1), torch.ones(2, 16), atol=1e-5, rtol=0)


def test_non_affine_and_no_second_ln():
    e, x = _embed(), _feats()
    conn = AlignConnector(D_V, HID, VOCAB, affine_ln=False, second_ln=False)
    assert conn.ln2 is None and conn.ln1.weight is None
    z = F.layer_norm(conn.w1(x), (HID,)) @ conn.w2.weight.T
    torch.testing.assert_close(conn(x, e), torch.softmax(z, -1) @ e)


# ------------------------------------------------------------------------------------------- token reduction
def test_pixel_shuffle_hand_computed():
    # 4x4 grid, D=1, token value = its row-major index; factor 2
    x = torch.arange(16.0).reshape(1, 16, 1)
    y = pixel_shuffle_tokens(x, 2)
    expected = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]], dtype=torch.float)
    assert y.shape == (1, 4, 4)
    assert torch.equal(y[0], expected)
    # D=2: channels of one input token stay adjacent, blocks ordered (row offset a, column offset b)
    x2 = torch.stack([torch.arange(16.0), 100 + torch.arange(16.0)], -1).unsqueeze(0)
    y2 = pixel_shuffle_tokens(x2, 2)
    assert y2.shape == (1, 4, 8)
    assert y2[0, 1].tolist() == [2, 102, 3, 103, 6, 106, 7, 107]


def test_pixel_shuffle_roundtrip_and_errors():
    x = torch.randn(3, 36, 5)
    for f in (1, 2, 3, 6):
        y = pixel_shuffle_tokens(x, f)
        assert y.shape == (3, 36 // f ** 2, 5 * f ** 2)
        assert torch.equal(pixel_unshuffle_tokens(y, f), x)
    with pytest.raises(ValueError, match="square"):
        pixel_shuffle_tokens(torch.randn(1, 50, 4), 2)  # e.g. 49 patches + CLS
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle_tokens(torch.randn(1, 49, 4), 2)


def test_avg_pool_tokens():
    x = torch.arange(16.0).reshape(1, 16, 1).repeat(2, 1, 3)
    y = avg_pool_tokens(x, 2)
    assert y.shape == (2, 4, 3)
    assert y[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    with pytest.raises(ValueError):
        avg_pool_tokens(torch.randn(1, 15, 2), 2)


@pytest.mark.parametrize("reduction, n_out, reduction_factor",
                         [("pixel_shuffle", 4, 2), ("avg_pool", 4, 2), (("pixel_shuffle", 4), 1, 2), (None, 16, 2)])
def test_connectors_with_reduction(reduction, n_out, reduction_factor):
    e, x = _embed(), _feats(n=16)
    conn = AlignConnector(D_V, HID, VOCAB, reduction=reduction, reduction_factor=reduction_factor)
    out, p = conn(x, e, return_probs=True)
    assert out.shape == (2, n_out, HID) and p.shape == (2, n_out, VOCAB)
    mlp = MLPConnector(D_V, HID, reduction=reduction, reduction_factor=reduction_factor)
    assert mlp(x, e).shape == (2, n_out, HID)
    assert mlp.fc1.in_features == conn.w1.in_features


def test_pixel_shuffle_connector_uses_shuffled_features():
    conn, e, x = _connector(reduction="pixel_shuffle"), _embed(), _feats(n=16)
    assert conn.w1.in_features == D_V * 4
    ref = AlignConnector(D_V * 4, HID, VOCAB)
    ref.load_state_dict(conn.state_dict())
    torch.testing.assert_close(conn(x, e), ref(pixel_shuffle_tokens(x, 2), e))


# ------------------------------------------------------------------------------------------- MLP baseline
def test_mlp_connector_shapes_and_grad():
    x = _feats().requires_grad_(True)
    mlp = MLPConnector(D_V, HID)
    out = mlp(x)
    assert out.shape == (2, 16, HID)
    e = _embed(requires_grad=True)
    out_e, probs = mlp(x, e, return_probs=True)
    assert probs is None
    torch.testing.assert_close(out_e, out)
    out_e.pow(2).sum().backward()
    assert e.grad is None
    assert x.grad is not None
    for name, param in mlp.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert mlp(_feats(dtype=torch.bfloat16), e.detach().to(torch.bfloat16)).dtype == torch.bfloat16


def test_probability_stats_hand_computed():
    p = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    stats = probability_stats(p, top_k=2)
    entropy = (-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) + math.log(4)) / 2
    assert stats["entropy"] == pytest.approx(entropy)
    assert stats["max_prob"] == pytest.approx((0.5 + 0.25) / 2)
    assert stats["top2_mass"] == pytest.approx((0.75 + 0.5) / 2)
    assert probability_stats(p, top_k=100)["top100_mass"] == pytest.approx(1.0)      # k capped at S
