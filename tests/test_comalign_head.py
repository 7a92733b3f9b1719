"""ComAlign head (spec comalign.md §1): PE values, parameter count, reference key names, an explicit-matmul
oracle of the forward, and strict loading of reference-layout checkpoints."""
import math

import pytest
import torch

from open_clip_align.comalign.model import (ComAlignHead, PositionalEncoding, comalign_positional_encoding,
                                            load_comalign_head)


def reference_shapes(d: int = 512, n_slots: int = 21, unused: int = 256, layers: int = 2, ffn: int = 512) -> dict:
    """State-dict keys and shapes of the reference ``RetrievalModel``, written out from spec §1."""
    keys = {"encoder_pos_embedding.positional_encodings": (1, n_slots, d),
            "bottleneck_box.0.weight": (d, d), "bottleneck_box.0.bias": (d,)}
    for i in range(layers):
        p = f"transformer_encoder_box.layers.{i}."
        keys.update({p + "self_attn.in_proj_weight": (3 * d, d), p + "self_attn.in_proj_bias": (3 * d,),
                     p + "self_attn.out_proj.weight": (d, d), p + "self_attn.out_proj.bias": (d,),
                     p + "linear1.weight": (ffn, d), p + "linear1.bias": (ffn,),
                     p + "linear2.weight": (d, ffn), p + "linear2.bias": (d,),
                     p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                     p + "norm2.weight": (d,), p + "norm2.bias": (d,)})
    keys.update({"bottleneck_encoder.0.weight": (unused, d), "bottleneck_encoder.0.bias": (unused,)})
    return keys


def oracle_pe(n_slots: int, d: int) -> torch.Tensor:
    """PE from the §1 formula with Python floats, one entry at a time."""
    rows = [[math.cos(p / 10000 ** (2 * i / d)) if i % 2 == 0 else math.sin(p / 10000 ** (2 * i / d))
             for i in range(d)] for p in range(n_slots)]
    return torch.tensor(rows, dtype=torch.float64)[None]


def reference_float32_pe(n_slots: int, d: int) -> torch.Tensor:
    """The PE buffer as the reference builds it (spec §1): integer positions and channels, float32 division,
    power, cos and sin — what the released checkpoint stores."""
    positions = torch.arange(n_slots).view(-1, 1)
    channels = torch.arange(d).view(1, -1)
    theta = positions / (10000 ** ((2 * channels) / d))
    pe = torch.zeros(1, n_slots, d)
    pe[0, :, ::2] = torch.cos(theta[:, ::2])
    pe[0, :, 1::2] = torch.sin(theta[:, 1::2])
    return pe


def reference_state(d: int = 512, unused: int = 256, ffn: int = 512, seed: int = 0) -> dict:
    """A seeded random checkpoint with the reference's key names (norm weights near 1, the PE the reference
    computes and stores: float32)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_shapes(d, unused=unused, ffn=ffn).items():
        if key.endswith("positional_encodings"):
            state[key] = reference_float32_pe(shape[1], d)
        elif ".norm" in key and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    return state


def oracle_forward(state: dict, e_in, r_in, g, heads: int = 4, pad=None) -> torch.Tensor:
    """Spec §1 in explicit matmuls (float64): bottleneck, +PE, post-norm encoder layers. Returns Y [B,S,d].
    ``pad`` [B,S] bool masks keys (True = pad), for the key-padding-mask option."""
    s = {k: v.double() for k, v in state.items()}
    x = torch.cat([e_in, r_in, g[:, None]], dim=1).double()
    x = torch.relu(x @ s["bottleneck_box.0.weight"].T + s["bottleneck_box.0.bias"])
    x = x + s["encoder_pos_embedding.positional_encodings"]
    b, n, d = x.shape
    dh = d // heads

    def layer_norm(y, w, bias):
        mu = y.mean(-1, keepdim=True)
        var = ((y - mu) ** 2).mean(-1, keepdim=True)
        return (y - mu) / torch.sqrt(var + 1e-5) * w + bias

    i = 0
    while f"transformer_encoder_box.layers.{i}.linear1.weight" in s:
        p = f"transformer_encoder_box.layers.{i}."
        qkv = x @ s[p + "self_attn.in_proj_weight"].T + s[p + "self_attn.in_proj_bias"]
        q, k, v = (t.reshape(b, n, heads, dh).transpose(1, 2) for t in qkv.split(d, dim=-1))
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh)
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
        attn = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        attn = attn @ s[p + "self_attn.out_proj.weight"].T + s[p + "self_attn.out_proj.bias"]
        x = layer_norm(x + attn, s[p + "norm1.weight"], s[p + "norm1.bias"])
        ff = torch.relu(x @ s[p + "linear1.weight"].T + s[p + "linear1.bias"]) @ s[p + "linear2.weight"].T
        x = layer_norm(x + ff + s[p + "linear2.bias"], s[p + "norm2.weight"], s[p + "norm2.bias"])
        i += 1
    return x


def test_positional_encoding_reference_values_and_sum():
    pe = comalign_positional_encoding(21, 512)
    assert pe.shape == (1, 21, 512) and pe.dtype == torch.float32
    torch.testing.assert_close(pe[0, 0, :4], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(pe[0, 1, :4], torch.tensor([0.540302, 0.821856, 0.597375, 0.781887]), atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[0, 20, :4], torch.tensor([0.408082, 0.429263, 0.971784, -0.780718]),
                               atol=2e-6, rtol=0)  # the spec's float64 values; the buffer is float32
    assert pe.double().sum().item() == pytest.approx(5057.9008, abs=1e-3)
    assert torch.equal(pe, reference_float32_pe(21, 512))  # bit-identical to the reference's float32 buffer
    torch.testing.assert_close(pe.double(), oracle_pe(21, 512), atol=2e-6, rtol=0)  # float32 rounding only
    module = PositionalEncoding(21, 512)
    assert "positional_encodings" in module.state_dict()  # persistent: travels in checkpoints


def test_parameter_count_and_reference_key_names():
    head = ComAlignHead()
    assert sum(p.numel() for p in head.parameters()) == 3_549_952
    assert sum(p.numel() for n, p in head.named_parameters() if not n.startswith("bottleneck_encoder")) == 3_418_624
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == reference_shapes()
    assert ComAlignHead(dim=64, heads=4, ffn=64, unused_dim=0).state_dict().keys().isdisjoint(
        {"bottleneck_encoder.0.weight"})


@pytest.mark.parametrize("grad", [False, True], ids=["fast-path", "autograd-path"])
def test_forward_matches_explicit_oracle(grad):
    state = reference_state(seed=1)
    head = ComAlignHead()
    load_comalign_head(head, state)
    head.eval()
    gen = torch.Generator().manual_seed(2)
    e_in, r_in, g = torch.randn(3, 10, 512, generator=gen), torch.randn(3, 10, 512, generator=gen), \
        4 * torch.randn(3, 512, generator=gen)
    e_in[1, 6:] = 0  # zero pads are ordinary inputs for the reference head
    with torch.set_grad_enabled(grad):
        out = head(e_in.requires_grad_(grad), r_in, g)
    y = oracle_forward(state, e_in.detach(), r_in, g).float()
    assert set(out) == {"entity", "relation", "refined_global"}
    torch.testing.assert_close(out["entity"].detach(), y[:, :10], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["relation"].detach(), y[:, 10:20], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["refined_global"].detach(), y[:, 20], atol=1e-5, rtol=0)
    assert out["entity"][1, 7].abs().sum() > 0  # pads are not zero after the head (trap 2)


def test_small_head_and_key_padding_mask_option():
    torch.manual_seed(0)
    state = reference_state(d=64, unused=0, ffn=64, seed=3)
    state = {k: v for k, v in state.items() if not k.startswith("bottleneck_encoder")}
    ref = ComAlignHead(dim=64, ffn=64, unused_dim=0).eval()
    masked = ComAlignHead(dim=64, ffn=64, unused_dim=0, key_padding_mask=True).eval()
    load_comalign_head(ref, state)
    load_comalign_head(masked, state)
    e_in, r_in, g = torch.randn(2, 10, 64), torch.randn(2, 10, 64), torch.randn(2, 64)
    e_mask = torch.ones(2, 10, dtype=torch.bool)
    r_mask = torch.ones(2, 10, dtype=torch.bool)
    e_mask[0, 3:], r_mask[1, 5:] = False, False
    with torch.no_grad():
        out = masked(e_in, r_in, g, e_mask, r_mask)
        pad = ~torch.cat([e_mask, r_mask, torch.ones(2, 1, dtype=torch.bool)], dim=1)
        y = oracle_forward(state, e_in, r_in, g, pad=pad).float()
        torch.testing.assert_close(out["entity"], y[:, :10], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["refined_global"], y[:, 20], atol=1e-5, rtol=0)
        # what a pad slot holds cannot reach the real slots when masked, but does in the reference head
        e_changed = e_in.clone()
        e_changed[0, 5] += 3.0
        again = masked(e_changed, r_in, g, e_mask, r_mask)
        torch.testing.assert_close(again["refined_global"], out["refined_global"])
        torch.testing.assert_close(again["entity"][0, :3], out["entity"][0, :3])
        assert not torch.allclose(ref(e_changed, r_in, g)["refined_global"][0], ref(e_in, r_in, g)["refined_global"][0])
        # the masks are ignored by the reference head
        torch.testing.assert_close(ref(e_in, r_in, g, e_mask, r_mask)["entity"], ref(e_in, r_in, g)["entity"])


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    head = ComAlignHead(dim=64, ffn=64, unused_dim=0)
    x = (torch.randn(2, 10, 64), torch.randn(2, 10, 64), torch.randn(2, 64))
    assert not torch.equal(head(*x)["entity"], head(*x)["entity"])
    head.eval()
    torch.testing.assert_close(head(*x)["entity"], head(*x)["entity"])


def test_forward_rejects_wrong_slot_counts():
    head = ComAlignHead(dim=64, ffn=64, unused_dim=0)
    with pytest.raises(ValueError, match=r"entity \[B,10,64\]"):
        head(torch.randn(2, 9, 64), torch.randn(2, 10, 64), torch.randn(2, 64))


def test_strict_loading_of_reference_checkpoints(tmp_path):
    state = reference_state(seed=4)
    layouts = {
        "raw.pt": state,
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
        "wrapped.pt": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "model.pt": {"model": state},
        "full.pt": {"state_dict": {**{f"comalign_head.{k}": v for k, v in state.items()},
                                   "visual.proj": torch.zeros(3)}},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        head = ComAlignHead()
        load_comalign_head(head, tmp_path / name)
        loaded = head.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), name
    low = ComAlignHead().to(torch.bfloat16)  # the PE check reads the file, not the rounded buffer
    load_comalign_head(low, tmp_path / "raw.pt")
    assert low.encoder_pos_embedding.positional_encodings.dtype == torch.bfloat16


def test_released_float32_buffer_loads_and_float64_rounding_is_within_tolerance(tmp_path):
    """The reference's float32 PE differs from a float64 computation by up to 1.34e-6: it must load, and so
    must a buffer rounded from float64 (a few float32 ulps away)."""
    state = reference_state(seed=3)
    gap = (state["encoder_pos_embedding.positional_encodings"].double() - oracle_pe(21, 512)).abs().max().item()
    assert 1e-6 < gap < 2e-6
    torch.save(state, tmp_path / "released.pt")
    head = ComAlignHead()
    load_comalign_head(head, tmp_path / "released.pt")
    assert torch.equal(head.encoder_pos_embedding.positional_encodings,
                       state["encoder_pos_embedding.positional_encodings"])
    rounded = {**state, "encoder_pos_embedding.positional_encodings": oracle_pe(21, 512).float()}
    load_comalign_head(ComAlignHead(), rounded)


def test_loading_errors_name_the_file_and_the_problem(tmp_path):
    state = reference_state(seed=5)
    bad_pe = dict(state)
    bad_pe["encoder_pos_embedding.positional_encodings"] = state["encoder_pos_embedding.positional_encodings"] + 1e-3
    torch.save(bad_pe, tmp_path / "bad_pe.pt")
    head = ComAlignHead()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(ValueError, match=r"bad_pe\.pt.*positional encoding"):
        load_comalign_head(head, tmp_path / "bad_pe.pt")
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())  # nothing half-loaded
    missing = {k: v for k, v in state.items() if k != "bottleneck_encoder.0.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt.*missing keys \['bottleneck_encoder\.0\.bias'\]"):
        load_comalign_head(ComAlignHead(), tmp_path / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \['extra\.weight'\]"):
        load_comalign_head(ComAlignHead(), tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_comalign_head(ComAlignHead(dim=512, ffn=256), state)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_comalign_head(ComAlignHead(), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt.*cannot be read"):
        load_comalign_head(ComAlignHead(), tmp_path / "junk.pt")
