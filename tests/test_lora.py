"""LoRA as torch parametrizations (``open_clip_align.lora``): frozen weights never move, step 0 is the base model,
targets by keyword or glob on every tower kind, merges, dropout, gradient checkpointing, and the EMA teacher
following the effective weights."""
import open_clip
import pytest
import torch

from open_clip_align.models import lora
from open_clip_align.models import enable_hardneg, make_teacher
from open_clip_align.models.tiny_hf import register_tiny_hf_clip

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["tiny-clip-ViT", "tiny-clip-RN", "tiny-clip-timm-convnext", "tiny-customtext-timm-ViT", "tiny-sigmoid-ViT",
         "tiny-captioner-ViT"]


def _model(name, seed=0):
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    if getattr(model, "text_decoder", None) is not None:
        torch.nn.init.normal_(model.text_decoder.text_projection, std=0.1)
    return model


def _inputs(model, name, batch=2):
    size = model.visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, 3, *size, generator=g), open_clip.get_tokenizer(name)(["a red square", "a blue dog"])


def _encode(model, images, tokens):
    return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


@pytest.fixture(scope="module")
def hf_name(tmp_path_factory):
    return register_tiny_hf_clip(tmp_path_factory.mktemp("hf"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_weights_stay_bit_identical_over_training_steps(dtype):
    """timm's qkv Linear and open_clip's fused MultiheadAttention in_proj/out_proj: 5 AdamW steps (weight decay
    on) move the adapters and the outputs, never a frozen weight, also in bf16."""
    name = "tiny-customtext-timm-ViT"
    model = _model(name).to(dtype)
    paths = lora.resolve_targets(model, "attn,mlp")
    lora.inject(model, paths, r=4, alpha=8)
    lora.freeze_except_adapters(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.endswith("in_proj_weight.original") for n in frozen)
    assert any(n.endswith("attn.qkv.parametrizations.weight.original") for n in frozen)
    images, tokens = _inputs(model, name)
    images = images.to(dtype)
    before = [f.detach().clone() for f in _encode(model, images, tokens)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        image, text = _encode(model.train(), images, tokens)
        (image @ text.T).float().diagonal().sum().neg().backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    after = _encode(model.eval(), images, tokens)
    assert all(not torch.allclose(a.float(), b.float()) for a, b in zip(after, before))


@pytest.mark.parametrize("name", [*NAMES, "hf"])
def test_step_zero_is_the_base_model_and_the_merge_is_plain_open_clip(name, hf_name):
    """B = 0 at injection: the adapted model equals the base (up to BLAS rounding from the new weight tensors); after
    training-like changes ``merge`` gives plain modules whose keys and outputs are the adapted model's."""
    name = hf_name if name == "hf" else name
    model = _model(name).eval()
    keys = set(model.state_dict())
    images, tokens = _inputs(model, name)
    base = _encode(model, images, tokens)
    lora.inject(model, lora.resolve_targets(model, lora.default_targets(model)), r=2, alpha=4)
    for got, want in zip(_encode(model, images, tokens), base):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    for _, _, _, delta in lora.adapters(model):
        delta.lora_B.data.normal_(0, 0.2, generator=g)
    adapted = _encode(model, images, tokens)
    assert not torch.allclose(adapted[1], base[1], atol=1e-3)
    merged_state = lora.merge_lora_state_dict(model.state_dict())
    assert lora.merge(model) > 0 and not lora.adapters(model)
    assert set(model.state_dict()) == keys == set(merged_state)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(merged_state[k], v, rtol=0, atol=1e-6, msg=k)
    for got, want in zip(_encode(model, images, tokens), adapted):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_targets_by_keyword_and_glob_on_every_tower_kind(hf_name):
    vit = _model("tiny-clip-ViT")
    attn = lora.resolve_targets(vit, "attn")
    assert attn == [f"{t}transformer.resblocks.{i}.attn.{w}" for t in ("visual.", "") for i in (0, 1)
                    for w in ("in_proj_weight", "out_proj.weight")]
    assert lora.resolve_targets(vit, "mlp") == [f"{t}transformer.resblocks.{i}.mlp.{w}.weight"
                                                for t in ("visual.", "") for i in (0, 1) for w in ("c_fc", "c_proj")]
    assert lora.resolve_targets(vit, "visual.*.attn") == attn[:4]
    assert lora.resolve_targets(vit, "conv") == ["visual.conv1.weight"]
    assert set(lora.resolve_targets(vit, "all-linear")) == set(attn) | set(lora.resolve_targets(vit, "mlp"))
    timm = lora.resolve_targets(_model("tiny-customtext-timm-ViT"), "attn")
    assert "visual.trunk.blocks.0.attn.qkv.weight" in timm and "visual.trunk.blocks.0.attn.proj.weight" in timm
    assert "visual.attnpool.q_proj.weight" in lora.resolve_targets(_model("tiny-clip-RN"), "attn")
    assert lora.default_targets(_model("tiny-clip-RN")) == "attn,mlp,conv"
    hf = _model(hf_name)
    hf_attn, hf_mlp = lora.resolve_targets(hf, "text.*.attention.*"), lora.resolve_targets(hf, "mlp")
    layer = "text.transformer.encoder.layer.0"
    assert {f"{layer}.attention.self.{w}.weight" for w in ("query", "key", "value")} | \
        {f"{layer}.attention.output.dense.weight"} <= set(lora.resolve_targets(hf, "attn")) & set(hf_attn)
    assert {f"{layer}.intermediate.dense.weight", f"{layer}.output.dense.weight"} <= set(hf_mlp)
    assert not set(hf_mlp) & set(hf_attn)
    coca = lora.resolve_targets(_model("tiny-captioner-ViT"), "attn")
    assert "text_decoder.cross_attn.0.attn.in_proj_weight" in coca
    assert {"visual.attn_pool.attn.q_proj_weight", "visual.attn_pool.attn.k_proj_weight"} <= set(coca)
    with pytest.raises(ValueError, match=r"'blocks\.99\.\*' matches no module.*attn, mlp, conv, all-linear.*"
                                         r"visual\.transformer\.resblocks\.\*\.attn\.in_proj_weight"):
        lora.resolve_targets(vit, "attn,blocks.99.*")


def test_dropout_acts_in_training_only_and_never_in_reads_or_merges():
    model = _model("tiny-clip-ViT")
    lora.inject(model, ["transformer.resblocks.0.attn.in_proj_weight"], r=4, alpha=4, dropout=0.5)
    (_, module, attr, delta), = lora.adapters(model)
    delta.lora_B.data.normal_()
    torch.manual_seed(0)
    model.train()
    a, b = getattr(module, attr), getattr(module, attr)
    assert not torch.equal(a, b)  # a new mask per read in training
    model.eval()
    exact = delta.scale * delta.lora_B @ delta.lora_A + module.parametrizations[attr].original
    torch.testing.assert_close(getattr(module, attr), exact)
    model.train()
    torch.testing.assert_close(lora.effective_tensor(module, attr), exact)


def test_grad_checkpointing_gives_the_same_adapter_gradients():
    """Parametrized weights are recomputed inside checkpointed blocks: gradients equal the plain backward."""
    grads = []
    for checkpointing in (False, True):
        model = _model("tiny-clip-ViT")
        lora.inject(model, lora.resolve_targets(model, "attn,mlp"), r=2, alpha=2, dropout=0.1)
        lora.freeze_except_adapters(model)
        for _, _, _, delta in lora.adapters(model):
            delta.lora_B.data.fill_(0.01)
        model.set_grad_checkpointing(checkpointing)
        images, tokens = _inputs(model, "tiny-clip-ViT")
        torch.manual_seed(5)
        image, text = _encode(model.train(), images, tokens)
        (image @ text.T).diagonal().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_the_ema_teacher_follows_the_effective_weights():
    """θ_T ← α·θ_T + (1−α)·(W + s·B·A) for adapted tensors, θ_S for trainable plain ones, frozen ones untouched."""
    model = _model("tiny-clip-ViT")
    teacher = make_teacher(model)
    enable_hardneg(model)
    lora.inject(model, lora.resolve_targets(model, "attn"), r=2, alpha=4)
    lora.freeze_except_adapters(model)
    model.attach_teacher(teacher)
    for _, _, _, delta in lora.adapters(model):
        delta.lora_B.data.normal_(0, 0.5)
    with torch.no_grad():
        model.logit_scale.add_(1.0)
    block = model.transformer.resblocks[0].attn
    w0 = block.parametrizations.in_proj_weight.original.clone()
    t_embed = teacher.token_embedding.weight.clone()
    model.token_embedding.weight.data.add_(1.0)  # frozen: the update must not pair it
    model.update_teacher(decay=0.25)
    torch.testing.assert_close(teacher.transformer.resblocks[0].attn.in_proj_weight,
                               0.25 * w0 + 0.75 * block.in_proj_weight.detach(), rtol=0, atol=1e-6)
    assert not torch.allclose(teacher.transformer.resblocks[0].attn.in_proj_weight, w0)
    torch.testing.assert_close(teacher.logit_scale, 0.25 * (model.logit_scale - 1.0) + 0.75 * model.logit_scale)
    assert torch.equal(teacher.token_embedding.weight, t_embed)
    assert "parametrizations" not in "".join(teacher.state_dict())  # the teacher stays plain


def test_an_alias_built_with_its_teacher_follows_lora_injected_afterwards():
    """degla-* aliases own their teacher from construction; LoRA injected later is still what the EMA follows."""
    torch.manual_seed(0)
    model = open_clip.create_model("degla-tiny-ViT")
    lora.inject(model, lora.resolve_targets(model, "attn"), r=2, alpha=2)
    lora.freeze_except_adapters(model)
    for _, _, _, delta in lora.adapters(model):
        delta.lora_B.data.normal_(0, 0.5)
    attn = model.transformer.resblocks[1].attn
    w0 = attn.parametrizations.in_proj_weight.original.clone()
    model.update_teacher(decay=0.5)
    torch.testing.assert_close(model.teacher.transformer.resblocks[1].attn.in_proj_weight,
                               0.5 * w0 + 0.5 * attn.in_proj_weight.detach(), rtol=0, atol=1e-6)


def test_train_extra_selects_the_output_projections_and_norms():
    for name, expected in (("tiny-clip-ViT", {"text_projection", "visual.proj"}),
                           ("tiny-customtext-timm-ViT", {"text.text_projection", "visual.head.proj.weight"}),
                           ("tiny-sigmoid-ViT", {"text.text_projection.weight", "text.text_projection.bias"})):
        model = _model(name)
        lora.inject(model, lora.resolve_targets(model, "attn"), r=2, alpha=2)
        lora.freeze_except_adapters(model, ["proj"])
        trainable = {n for n, p in model.named_parameters() if p.requires_grad and not lora.is_adapter_parameter(n)}
        assert trainable == expected, name
    lora.freeze_except_adapters(model, ["norm", "logit_bias"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and not lora.is_adapter_parameter(n)}
    assert "logit_bias" in trainable and "text.ln_final.weight" in trainable and "logit_scale" not in trainable
    assert all("norm" in n or n.startswith("text.ln_") or ".ln_" in n or n == "logit_bias" for n in trainable)
