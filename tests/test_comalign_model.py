"""ComAlignCLIP through open_clip's public entry points: configs, standard and component forwards, the
frozen base, checkpoints (base-only, combined, head_checkpoint=)."""
import copy

import open_clip
import open_clip.factory as oc_factory
import pytest
import torch
from open_clip.model import CLIP
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

from open_clip_align.comalign.model import ComAlignCLIP, ComAlignHead, load_comalign_head
from open_clip_align.models import plugin_block
from open_clip_align.models.factory import PLUGIN_KEY
from test_comalign_head import reference_state

TINY = "comalign-tiny-ViT"
NE = NR = 10


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return open_clip.create_model(TINY).eval()


def plain_clip_like(model: ComAlignCLIP) -> CLIP:
    cfg = copy.deepcopy(oc_factory.get_model_config(TINY))
    cfg.pop(PLUGIN_KEY)
    clip = CLIP(**cfg)
    clip.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("comalign_head.")})
    return clip.eval()


def test_tiny_config_builds_through_every_entry_point(tiny):
    assert isinstance(tiny, ComAlignCLIP)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(TINY)
    assert isinstance(model, ComAlignCLIP) and model.visual.preprocess_cfg["size"] == (64, 64)
    assert preprocess_val.transforms[0].size == 64
    assert open_clip.get_tokenizer(TINY)(["a red cube left of a blue ball"]).shape == (1, 77)
    head = tiny.comalign_head
    assert (head.dim, head.n_entity, head.n_relation, head.n_slots) == (64, 10, 10, 21)
    assert head.transformer_encoder_box.layers[0].self_attn.num_heads == 4
    assert head.transformer_encoder_box.layers[0].linear1.out_features == 64


@pytest.mark.parametrize("name,base,dim", [("comalign-ViT-B-32", "ViT-B-32-quickgelu", 512),
                                           ("comalign-ViT-B-16", "ViT-B-16-quickgelu", 512),
                                           ("comalign-ViT-L-14", "ViT-L-14-quickgelu", 768)])
def test_big_configs_resolve_their_openai_base(name, base, dim):
    block = plugin_block(name)
    assert block["arch"] == "comalign" and block["base"] == base and block["head"]["dim"] == dim
    cfg = oc_factory.get_model_config(name)
    base_cfg = oc_factory.get_model_config(base)
    assert {k: v for k, v in cfg.items() if k != PLUGIN_KEY} == base_cfg     # same towers as the base
    assert cfg["quick_gelu"] is True
    assert "openai" in list_pretrained_tags_by_model(base)
    assert get_pretrained_cfg(base, "openai")["quick_gelu"] is True


def test_vit_b32_builds_with_the_reference_head(tmp_path):
    state = reference_state(seed=11)
    torch.save(state, tmp_path / "ComAlign-CLIP-VIT-B32.pt")
    model = open_clip.create_model("comalign-ViT-B-32", head_checkpoint=str(tmp_path / "ComAlign-CLIP-VIT-B32.pt"))
    assert isinstance(model, ComAlignCLIP)
    assert sum(p.numel() for p in model.comalign_head.parameters()) == 3_549_952
    assert all(torch.equal(model.comalign_head.state_dict()[k], v) for k, v in state.items())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == \
        [f"comalign_head.{n}" for n, _ in model.comalign_head.named_parameters()
         if not n.startswith("bottleneck_encoder")]


def test_standard_forward_equals_plain_clip(tiny):
    clip = plain_clip_like(tiny)
    image = torch.randn(3, 3, 64, 64)
    text = open_clip.get_tokenizer(TINY)(["a cat", "two dogs on a couch", "a red ball"])
    with torch.no_grad():
        ours, theirs = tiny(image, text), clip(image, text)
        assert set(ours) == {"image_features", "text_features", "logit_scale"}
        torch.testing.assert_close(ours["image_features"], theirs[0])
        torch.testing.assert_close(ours["text_features"], theirs[1])
        torch.testing.assert_close(ours["logit_scale"], theirs[2])
        assert set(tiny(image=image)) == {"image_features", "logit_scale"}
        torch.testing.assert_close(tiny.encode_image(image), clip.encode_image(image))


def test_component_forward_views_and_features(tiny):
    torch.manual_seed(1)
    views = torch.randn(2, NE + NR + 1, 3, 64, 64)
    views[0, 4:NE] = 0                    # image 0: 4 entity views
    views[1, NE + 3:NE + NR] = 0          # image 1: 3 relation views
    with torch.no_grad():
        out = tiny(image=views)
        assert out["image_entity_mask"].tolist() == [[True] * 4 + [False] * 6, [True] * 10]
        assert out["image_relation_mask"].tolist() == [[True] * 10, [True] * 3 + [False] * 7]
        # by hand: base embeddings of real views, zeros for pads, then the head, then eps-normalisation
        feats = torch.zeros(2, NE + NR + 1, 64)
        for b in range(2):
            for s in range(NE + NR + 1):
                if views[b, s].abs().sum() > 0:
                    feats[b, s] = tiny.encode_image(views[b, s:s + 1])[0]
        torch.testing.assert_close(tiny.encode_views(views), feats, atol=1e-5, rtol=0)
        head = tiny.comalign_head(feats[:, :NE], feats[:, NE:NE + NR], feats[:, -1])
        unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
        torch.testing.assert_close(out["image_features"], unit(feats[:, -1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["refined_global"], unit(head["refined_global"]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["image_entity"], unit(head["entity"]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["image_relation"], unit(head["relation"]), atol=1e-5, rtol=0)
        # the precomputed-feature form gives the same outputs
        from_feats = tiny(image=feats)
        for key in out:
            torch.testing.assert_close(from_feats[key], out[key], atol=1e-5, rtol=0)


def test_component_forward_text_tokens_and_features(tiny):
    tok = open_clip.get_tokenizer(TINY)
    rows = (["a brown cow behind a blue car", "brown cow", "blue car"] + [""] * (NE - 2)
            + ["cow behind car"] + [""] * (NR - 1))
    tokens = tok(rows).reshape(1, 1 + NE + NR, -1).repeat(2, 1, 1)
    tokens[:, 3:1 + NE] = 0                      # pads are all-zero rows ("" would still tokenize to SOT/EOT)
    tokens[:, 1 + NE + 1:] = 0
    tokens[1, 2] = 0                             # caption 1 keeps one entity phrase
    with torch.no_grad():
        out = tiny(text=tokens)
        assert out["text_entity_mask"].tolist() == [[True, True] + [False] * 8, [True] + [False] * 9]
        assert out["text_relation_mask"].tolist() == [[True] + [False] * 9] * 2
        enc = lambda s: tiny.encode_text(tok([s]), normalize=True)[0]  # noqa: E731
        torch.testing.assert_close(out["text_features"][0], enc(rows[0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["text_entity"][0, 1], enc("blue car"), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["text_relation"][1, 0], enc("cow behind car"), atol=1e-5, rtol=0)
        assert out["text_entity"][1, 1:].abs().sum() == 0 and out["text_relation"][:, 1:].abs().sum() == 0
        feats = tiny.encode_phrases(tokens)
        assert feats[1, 2].abs().sum() == 0
        from_feats = tiny(text=feats)
        for key in out:
            torch.testing.assert_close(from_feats[key], out[key], atol=1e-5, rtol=0)


def test_outputs_are_batch_first_for_accum_freq(tiny):
    out = tiny(image=torch.randn(3, NE + NR + 1, 64), text=torch.randn(3, 1 + NE + NR, 64))
    for key, value in out.items():
        if key != "logit_scale":
            assert value.shape[0] == 3, key


def test_component_input_errors(tiny):
    with pytest.raises(ValueError, match="expected 21 slots"):
        tiny(image=torch.randn(2, 20, 64))
    with pytest.raises(ValueError, match=r"\[B,21,64\]"):
        tiny(image=torch.randn(2, 21, 32))
    feats = torch.randn(2, 21, 64)
    feats[1, -1] = 0
    with pytest.raises(ValueError, match=r"whole image\) is a pad .* rows \[1\]"):
        tiny(image=feats)
    with pytest.raises(ValueError, match="expected 21 slots"):
        tiny(text=torch.randint(1, 100, (2, 5, 77)))
    tokens = torch.randint(1, 100, (2, 21, 77))
    tokens[0, 0] = 0
    with pytest.raises(ValueError, match=r"row 0 \(the caption\) is a pad .* rows \[0\]"):
        tiny(text=tokens)
    cfg = copy.deepcopy(oc_factory.get_model_config(TINY))
    cfg.pop(PLUGIN_KEY)
    with pytest.raises(ValueError, match="head dim 32 must equal the CLIP embed dim 64"):
        ComAlignCLIP(**cfg, head={"dim": 32})


def test_base_frozen_and_only_head_trains():
    torch.manual_seed(2)
    model = open_clip.create_model(TINY).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # the head trains except its unused bottleneck_encoder (no gradient ever; DDP would reject it)
    assert trainable == {f"comalign_head.{n}" for n, _ in model.comalign_head.named_parameters()
                         if not n.startswith("bottleneck_encoder")}
    assert model.training and model.comalign_head.training
    assert not model.visual.training and not model.transformer.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    views = torch.randn(2, NE + NR + 1, 3, 64, 64)
    text = torch.randint(1, 1000, (2, 1 + NE + NR, 77))
    out = model(image=views, text=text)
    assert out["image_entity"].requires_grad and not out["image_features"].requires_grad
    (out["image_entity"] * out["text_entity"][:, :1]).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("comalign_head."))
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # every trainable one is used
    assert model.comalign_head.bottleneck_box[0].weight.grad.abs().sum() > 0
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if not k.startswith("comalign_head."))
    key = "comalign_head.bottleneck_box.0.weight"
    assert not torch.equal(before[key], after[key])
    model.eval()
    assert not model.comalign_head.training


def test_base_only_and_combined_checkpoints_load_through_pretrained(tmp_path):
    torch.manual_seed(3)
    src = open_clip.create_model(TINY)
    base = {k: v for k, v in src.state_dict().items() if not k.startswith("comalign_head.")}
    torch.save(base, tmp_path / "base.pt")
    head_state = reference_state(d=64, unused=32, ffn=64, seed=9)
    torch.save(head_state, tmp_path / "head.pt")

    torch.manual_seed(4)
    model = open_clip.create_model(TINY, pretrained=str(tmp_path / "base.pt"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())
    assert not torch.equal(model.comalign_head.bottleneck_box[0].weight, src.comalign_head.bottleneck_box[0].weight)

    model = open_clip.create_model(TINY, pretrained=str(tmp_path / "base.pt"),
                                   head_checkpoint=str(tmp_path / "head.pt"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())
    assert all(torch.equal(model.comalign_head.state_dict()[k], v) for k, v in head_state.items())

    # an open_clip_train checkpoint of the whole model (DDP prefix) restores base and head
    torch.save({"epoch": 2, "name": "x", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "epoch_2.pt")
    again, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=str(tmp_path / "epoch_2.pt"))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for n, p in again.named_parameters() if not n.startswith("comalign_head."))
    # head_checkpoint wins over the head inside a combined checkpoint
    other_head = reference_state(d=64, unused=32, ffn=64, seed=11)
    torch.save(other_head, tmp_path / "other_head.pt")
    mixed = open_clip.create_model(TINY, pretrained=str(tmp_path / "epoch_2.pt"),
                                   head_checkpoint=str(tmp_path / "other_head.pt"))
    assert all(torch.equal(mixed.comalign_head.state_dict()[k], v) for k, v in other_head.items())
    assert all(torch.equal(mixed.state_dict()[k], v) for k, v in base.items())

    bad = dict(base, **{"comalign_head.extra": torch.zeros(1)})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="unexpected keys.*comalign_head.extra"):
        open_clip.create_model(TINY, pretrained=str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match=r"head\.pt.*shape mismatch"):
        load_comalign_head(ComAlignHead(dim=64, ffn=32, unused_dim=32), tmp_path / "head.pt")
