"""AlignVLM model: layout, label masking, left-padded generation, overfitting, save/load, frozen parts.

Everything is tiny and randomly initialised: the plugin's ``hardneg-tiny-ViT`` tower (64 px, patch 16 -> a 4x4
grid of width 64), a 1-layer Llama (V = 200, D = 32) and a word-level tokenizer built here. No downloads.
"""
import pytest
import torch

from open_clip_align.vlm import AlignConnector, MLPConnector  # importing the plugin registers hardneg-tiny-ViT
from open_clip_align.vlm.model import AlignVLM

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, BOS, EOS, UNK = 0, 1, 2, 3
WORDS = ("a an the photo of red green blue yellow square circle left right describe image short caption "
         "is this : .").split()
PROMPTS = ["describe the image :", "a short caption :", "describe :", "caption :"]
CAPTIONS = ["a red square left of a blue circle", "the green circle", "a yellow square right of a red square",
            "blue"]
N_VIS = 16


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + WORDS
    words += [f"w{i}" for i in range(200 - len(words))]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")        # joins word tokens with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_lm(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS,
                      pad_token_id=PAD, initializer_range=0.2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def make_model(connector="align", seed=0, **kw):
    lm = make_lm(seed)
    torch.manual_seed(seed + 1)
    return AlignVLM.from_open_clip("hardneg-tiny-ViT", lm, connector, **kw)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_tower_tokens_and_visual_embedding(images):
    model = make_model()
    assert model.vision_dim == 64 and model.connector_type == "align"
    feats = model.encode_vision(images)
    assert feats.shape == (4, N_VIS, 64)                     # CLS dropped: square 4x4 grid
    vis = model.embed_images(images)
    assert vis.shape == (4, N_VIS, 32)
    expected = model.connector(feats, model.lm.get_input_embeddings().weight)
    torch.testing.assert_close(vis, expected)
    # W2 is a copy of the LM head (value equal, storage distinct)
    head = model.lm.get_output_embeddings().weight
    assert torch.equal(model.connector.w2.weight, head)
    assert model.connector.w2.weight.data_ptr() != head.data_ptr()
    # frozen tower stays in eval mode under .train()
    model.train()
    assert not model.visual.training and model.connector.training


def test_label_masking_and_layout(images, tok):
    model = make_model()
    batch = model.build_inputs(images, PROMPTS, CAPTIONS, tok)
    embeds, mask, labels = batch["inputs_embeds"], batch["attention_mask"], batch["labels"]
    embed_table = model.lm.get_input_embeddings().weight
    vis = model.embed_images(images)
    lengths = []
    for i, (prompt, cap) in enumerate(zip(PROMPTS, CAPTIONS)):
        p_ids = tok.encode(prompt, add_special_tokens=False)
        c_ids = tok.encode(cap, add_special_tokens=False)
        n = 1 + N_VIS + len(p_ids) + len(c_ids) + 1
        lengths.append(n)
        # right padding: real tokens first, then padding
        assert mask[i, :n].eq(1).all() and mask[i, n:].eq(0).all()
        expected = [-100] * (1 + N_VIS + len(p_ids)) + c_ids + [EOS] + [-100] * (labels.shape[1] - n)
        assert labels[i].tolist() == expected
        # layout: BOS row, visual rows == connector output, prompt rows == LM embeddings of the prompt ids,
        # caption rows, EOS row
        torch.testing.assert_close(embeds[i, 0], embed_table[BOS])
        torch.testing.assert_close(embeds[i, 1:1 + N_VIS], vis[i])
        s = 1 + N_VIS
        torch.testing.assert_close(embeds[i, s:s + len(p_ids)], embed_table[torch.tensor(p_ids)])
        s += len(p_ids)
        torch.testing.assert_close(embeds[i, s:s + len(c_ids)], embed_table[torch.tensor(c_ids)])
        torch.testing.assert_close(embeds[i, n - 1], embed_table[EOS])
        assert batch["visual_mask"][i].nonzero().flatten().tolist() == list(range(1, 1 + N_VIS))
    assert labels.shape[1] == max(lengths) and len(set(lengths)) > 1
    # no caption -> no labels, left padding by default, layout ends with the prompt
    gen = model.build_inputs(images, PROMPTS, None, tok)
    assert "labels" not in gen
    for i, prompt in enumerate(PROMPTS):
        p_ids = tok.encode(prompt, add_special_tokens=False)
        n = 1 + N_VIS + len(p_ids)
        assert gen["attention_mask"][i, -n:].eq(1).all() and gen["attention_mask"][i, :-n].eq(0).all()
        assert gen["input_ids"][i, -len(p_ids):].tolist() == p_ids
        assert gen["input_ids"][i, -n].item() == BOS


def test_loss_is_caption_only_ce(images, tok):
    model = make_model()
    batch = model.build_inputs(images, PROMPTS, CAPTIONS, tok)
    out = model.caption_loss(images, PROMPTS, CAPTIONS, tok, return_outputs=True)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    target = batch["labels"][:, 1:].reshape(-1)
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    assert torch.isfinite(model(images, **model.tokenize(PROMPTS, CAPTIONS, tok)))


@pytest.mark.parametrize("connector", ["align", "mlp"])
def test_left_padded_generation_matches_unpadded(images, tok, connector):
    model = make_model(connector).eval()
    prompts = ["describe the image : a short caption :", "caption :"]     # different lengths
    batched = model.generate(images[:2], prompts, tok, max_new_tokens=6, return_ids=True)
    texts = model.generate(images[:2], prompts, tok, max_new_tokens=6)
    assert batched.shape[0] == 2 and batched.shape[1] <= 6
    for i in range(2):
        single = model.generate(images[i:i + 1], prompts[i:i + 1], tok, max_new_tokens=6, return_ids=True)
        n = single.shape[1]
        assert batched[i, :n].tolist() == single[0].tolist()
        row = single[0].tolist()
        row = row[:row.index(EOS)] if EOS in row else row
        assert texts[i] == tok.decode(row, skip_special_tokens=True)
    # first-step logits agree between the padded row and the unpadded sample
    padded = model.build_inputs(images[:2], prompts, None, tok)
    kw = dict(max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=PAD, eos_token_id=EOS)
    scores = model.lm.generate(inputs_embeds=padded["inputs_embeds"], attention_mask=padded["attention_mask"],
                               **kw).scores[0]
    for i in range(2):
        one = model.build_inputs(images[i:i + 1], prompts[i:i + 1], None, tok)
        ref = model.lm.generate(inputs_embeds=one["inputs_embeds"], attention_mask=one["attention_mask"],
                                **kw).scores[0]
        torch.testing.assert_close(scores[i], ref[0], atol=1e-5, rtol=1e-5)
    # beam search runs and returns strings
    beams = model.generate(images[:2], prompts, tok, max_new_tokens=4, num_beams=2)
    assert len(beams) == 2 and all(isinstance(t, str) for t in beams)


def test_frozen_parts_get_no_gradient(images, tok):
    model = make_model(freeze_lm=True)
    loss = model.caption_loss(images, PROMPTS, CAPTIONS, tok)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.visual.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.lm.parameters())
    for name in ("w1.weight", "w1.bias", "ln1.weight", "w2.weight", "ln2.weight"):
        grad = dict(model.connector.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # default: LM trainable, tower frozen
    model = make_model()
    model.caption_loss(images, PROMPTS, CAPTIONS, tok).backward()
    assert all(p.grad is None for p in model.visual.parameters())
    assert model.lm.get_input_embeddings().weight.grad is not None


@pytest.mark.parametrize("connector", ["align", "mlp"])
def test_overfit_one_batch_connector_only(images, tok, connector):
    model = make_model(connector, freeze_lm=True).train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in model.connector.parameters()}
    opt = torch.optim.Adam(params, lr=1e-2)
    torch.manual_seed(0)
    first = None
    for _ in range(50):
        loss = model.caption_loss(images, PROMPTS, CAPTIONS, tok)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    final = model.caption_loss(images, PROMPTS, CAPTIONS, tok).item()
    # calibrated: ~5.9-6.0 -> ~1.3-1.6 after 50 steps for both connectors
    assert final < first / 2.5, (first, final)


@pytest.mark.parametrize("connector", ["align", "mlp"])
def test_save_load_connector_roundtrip(images, tmp_path, connector):
    model = make_model(connector)
    with torch.no_grad():                                       # move away from the init
        for p in model.connector.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = model.embed_images(images)
    model.save_connector(tmp_path / "conn")
    cfg = AlignVLM.read_connector_config(tmp_path / "conn")
    assert cfg["connector_type"] == connector and cfg["vision_model_name"] == "hardneg-tiny-ViT"
    assert (cfg["vision_dim"], cfg["lm_hidden"], cfg["vocab_size"]) == (64, 32, 200)
    saved = torch.load(tmp_path / "conn" / "alignvlm_connector.pt", weights_only=True)
    assert set(saved) == set(model.connector.state_dict())       # no tower / LM weights duplicated

    other = make_model(connector, seed=0)                        # same tower + LM, fresh connector
    other.visual.load_state_dict(model.visual.state_dict())
    assert not torch.allclose(other.embed_images(images), before)
    other.load_connector(tmp_path / "conn")
    torch.testing.assert_close(other.embed_images(images), before, rtol=0, atol=0)

    rebuilt = AlignVLM.from_connector_dir(tmp_path / "conn", lm=model.lm, visual=model.visual)
    expected_cls = AlignConnector if connector == "align" else MLPConnector
    assert isinstance(rebuilt.connector, expected_cls)
    torch.testing.assert_close(rebuilt.embed_images(images), before, rtol=0, atol=0)

    wrong = make_model("mlp" if connector == "align" else "align")
    with pytest.raises(ValueError):
        wrong.load_connector(tmp_path / "conn")


def test_tensor_forward_probs_and_layout_checks(images, tok):
    model = make_model(connector_kwargs={"reduction": "avg_pool", "reduction_factor": 2})
    assert model.num_visual_tokens == 4 and make_model().num_visual_tokens == N_VIS
    batch = model.tokenize(PROMPTS, CAPTIONS, tok)
    assert int(batch["visual_mask"].sum()) == 4 * len(PROMPTS)
    loss, probs = model(images, **batch, return_probs=True)
    assert torch.equal(loss, model(images, **batch))
    feats = model.encode_vision(images)
    torch.testing.assert_close(probs, model.connector.probs(feats))
    assert probs.shape == (4, 4, 200)
    mlp = make_model("mlp")
    _, none = mlp(images, **mlp.tokenize(PROMPTS, CAPTIONS, tok), return_probs=True)
    assert none is None
    wrong = make_model().tokenize(PROMPTS, CAPTIONS, tok)           # 16 visual slots for a 4-token connector
    with pytest.raises(ValueError, match="visual_mask marks"):
        model(images, **wrong)
    with pytest.raises(ValueError, match="4 images but 2 token rows"):
        model(images, **model.tokenize(PROMPTS[:2], CAPTIONS[:2], tok))


def test_layout_truncates_captions_and_keeps_eos(tok):
    model = make_model()
    layout = model.layout(tok, max_caption_tokens=3)
    assert (layout.n_visual, layout.bos, layout.eos, layout.pad) == (N_VIS, BOS, EOS, PAD)
    out = layout.encode(tok, ["caption :"], ["a red square left of a blue circle"])
    caption_ids = tok.encode("a red square", add_special_tokens=False)
    assert [t for t in out["labels"][0].tolist() if t != -100] == caption_ids + [EOS]


def test_feature_noise_reaches_the_connector(images, tok):
    model = make_model().eval()
    clean = model.embed_images(images)
    torch.testing.assert_close(model.embed_images(images, feature_noise=lambda f: f), clean)
    assert not torch.allclose(model.embed_images(images, feature_noise=lambda f: f + 5.0), clean)
    same = model.generate(images[:2], PROMPTS[:2], tok, max_new_tokens=4, feature_noise=lambda f: f)
    assert same == model.generate(images[:2], PROMPTS[:2], tok, max_new_tokens=4)
