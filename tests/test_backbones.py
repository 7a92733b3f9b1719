"""Issue 16: hard-negative methods, the EMA teacher and LoRA on every open_clip model family, by plain names.

Tiny configs of each family (spec backbones.md §5): ``tiny-clip-ViT`` (CLIP, open_clip ViT), ``tiny-clip-RN`` (CLIP,
ModifiedResNet), ``tiny-clip-timm-convnext`` (CLIP + timm trunk), ``tiny-customtext-timm-ViT`` (CustomTextCLIP + timm
ViT), ``tiny-sigmoid-ViT`` (SigLIP-style: map pooling, ``init_logit_bias``), ``tiny-captioner-ViT`` (CoCa) and a
CustomTextCLIP with a tiny random Hugging Face BERT written offline (``models.tiny_hf``). Each trains two steps through
``training.main`` from a ``--pretrained`` file (a ``state_dict`` saved by plain open_clip).
"""
import math
import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import open_clip
import pytest
import torch

import training.main as training_main
from conftest import REPO, _write_tiny_csv, train_argv
from open_clip_align.models import lora
from open_clip_align.export import export_local_dir
from open_clip_align.losses import (CEClipLoss, DeGLALoss, NegCLIPLoss, SigmoidCEClipLoss, SigmoidDeGLALoss,
                                    SigmoidNegCLIPLoss)
from open_clip_align.models import enable_hardneg, make_teacher, plain_state_dict
from open_clip_align.models.tiny_hf import register_tiny_hf_clip
from open_clip_align.training_hooks import training_hooks
from training.main import main as plugin_main

pytestmark = pytest.mark.usefixtures("one_thread", "own_log_handlers")

FAMILIES = {"clip-vit": "tiny-clip-ViT", "clip-rn": "tiny-clip-RN", "clip-timm": "tiny-clip-timm-convnext",
            "customtext-timm": "tiny-customtext-timm-ViT", "siglip-style": "tiny-sigmoid-ViT",
            "coca": "tiny-captioner-ViT", "customtext-hf": "tiny-hftext-ViT"}
CLASSES = {"clip-vit": "CLIP", "clip-rn": "CLIP", "clip-timm": "CLIP", "customtext-timm": "CustomTextCLIP",
           "siglip-style": "CustomTextCLIP", "coca": "CoCa", "customtext-hf": "CustomTextCLIP"}


def _plain(name, **kwargs):
    torch.manual_seed(0)
    model = open_clip.create_model(name, **kwargs)
    if getattr(model, "text_decoder", None) is not None:
        decoder = model.text_decoder  # open_clip 3.3 leaves its projection as torch.empty (uninitialised memory)
        torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    return model


@pytest.fixture(scope="module")
def fams(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    register_tiny_hf_clip(root / "hf", FAMILIES["customtext-hf"])
    weights = {}
    for key, name in FAMILIES.items():
        weights[key] = root / f"{key}.pt"
        torch.save(_plain(name).state_dict(), weights[key])
    return SimpleNamespace(root=root, weights=weights, csv=_write_tiny_csv(root / "data", rows=8))


def _train(fams, key, run, *extra, epochs=1):
    argv = train_argv(fams.root, run, "--model", FAMILIES[key], "--pretrained", str(fams.weights[key]),
                      "--hardneg-format", "csv", "--train-data", str(fams.csv), "--num-hardneg", "2",
                      "--log-every-n-steps", "1", *extra)
    argv[argv.index("--epochs") + 1] = str(epochs)
    assert plugin_main(argv) is None
    folder = fams.root / "logs" / run
    state = torch.load(folder / "checkpoints" / f"epoch_{epochs}.pt", weights_only=True)
    return (folder / "out.log").read_text(), state, (folder / "params.txt").read_text()


def _losses(log):
    values = [float(v) for v in re.findall(r" Loss: ([-0-9.e+naif]+) ", log)]
    assert values and all(math.isfinite(v) for v in values), values
    return values


def _features(model, key, images=None):
    tokens = open_clip.get_tokenizer(FAMILIES[key])(["a red square left of a blue square", "a blue circle"])
    size = model.visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1)) if images is None else images
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True), images


def _export_matches_the_trained_model(fams, key, state, run, lora_r=0):
    """Build the training model (adapted class, teacher, LoRA) with ``state``; export ``plain_state_dict(state)``;
    plain open_clip's ``local-dir:`` load gives the same features (1e-5)."""
    trained = enable_hardneg(_plain(FAMILIES[key]))
    teacher = make_teacher(trained) if any(k.startswith("teacher.") for k in state) else None
    if lora_r:
        lora.inject(trained, lora.resolve_targets(trained, lora.default_targets(trained)), lora_r, float(lora_r))
    if teacher is not None:
        trained.attach_teacher(teacher)
    trained.load_state_dict(state)
    bare = fams.root / f"{run}-plain.pt"
    torch.save(plain_state_dict(state), bare)
    out = export_local_dir(bare, fams.root / f"{run}-export", model_name=FAMILIES[key])
    exported = open_clip.create_model(f"local-dir:{out}").eval()
    assert type(exported).__name__ == CLASSES[key]
    image_a, text_a, images = _features(trained.eval(), key)
    image_b, text_b, _ = _features(exported, key, images)
    torch.testing.assert_close(image_b, image_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(text_b, text_a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("key", FAMILIES)
def test_every_family_trains_negclip_degla_and_a_user_method_and_exports(fams, key):
    pretrained = torch.load(fams.weights[key], weights_only=True)
    extra = ["--coca-caption-loss-weight", "1.5"] if key == "coca" else []

    log, ckpt, params = _train(fams, key, f"{key}-negclip-lora", "--loss", "negclip", "--lora-r", "4",
                               "--lora-dropout", "0.1", *extra)
    _losses(log)
    state = ckpt["state_dict"]
    assert re.search(r"LoRA r=4 .*trainable [0-9,]+ of [0-9,]+", log) and "Trainable parameters:" in log
    originals = {k: v for k, v in state.items() if k.endswith(".original")}
    assert originals and any(k.endswith("in_proj_weight.original") or ".attn.qkv." in k or ".query." in k
                             for k in originals)
    for k, v in originals.items():  # frozen weights: bit-identical after two AdamW steps
        assert torch.equal(v, pretrained[k.replace(".parametrizations.", ".").replace(".original", "")]), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if k.endswith("lora_B"))
    _export_matches_the_trained_model(fams, key, state, f"{key}-negclip-lora", lora_r=4)

    log, ckpt, params = _train(fams, key, f"{key}-degla", "--loss", "degla", "--ema-decay", "0.5", *extra)
    _losses(log)
    assert re.findall(r"EMA teacher: step (\d+)", log) == ["1", "2"]
    for term in ("Contrastive_loss", "Igc_loss", "Tgc_loss", "Distill_loss"):
        assert term in log, term
    state = ckpt["state_dict"]
    student = {k for k in state if not k.startswith("teacher.")}
    assert student == set(pretrained)  # the adapted class keeps open_clip's keys
    teacher = {k[len("teacher."):] for k in state if k.startswith("teacher.")}
    assert teacher == {k for k in pretrained if not k.startswith("text_decoder.")}
    names = {k for k, _ in _plain(FAMILIES[key]).named_parameters()}  # buffers (BN statistics) are copied
    moved = [k for k in teacher & names if not torch.equal(state["teacher." + k], pretrained[k])]
    assert moved and all(not torch.equal(state["teacher." + k], state[k]) for k in moved)  # between the two
    _export_matches_the_trained_model(fams, key, state, f"{key}-degla")

    log, _, _ = _train(fams, key, f"{key}-user", "--import", str(REPO / "examples" / "custom_method.py"),
                       "--loss", "negclip-margin", *extra)
    _losses(log)
    assert re.search(r"Margin_loss: [0-9.]+", log)

    if key == "siglip-style":  # a SigLIP-family model (config init_logit_bias) trains the sigmoid form
        assert "hardneg_sigmoid: True" in params and "siglip: False" in params
        assert not torch.equal(state["logit_bias"], pretrained["logit_bias"])
    else:
        assert "hardneg_sigmoid: False" in params
    if key == "coca":  # the caption decoder's loss, weighted as --coca-caption-loss-weight says
        assert re.search(r"Caption_loss: [0-9.]+", log) and "coca_caption_loss_weight: 1.5" in params


def test_siglip_trains_the_sigmoid_form_on_a_clip_checkpoint_with_a_starting_bias(fams):
    log, ckpt, params = _train(fams, "clip-vit", "siglip-init-bias", "--loss", "degla", "--siglip",
                               "--siglip-init-bias", "-8", "--siglip-hardneg-columns", "all")
    _losses(log)
    assert "hardneg_sigmoid: True" in params and "siglip_hardneg_columns: all" in params
    bias = ckpt["state_dict"]["logit_bias"]
    assert bias.item() != -8.0 and abs(bias.item() + 8.0) < 0.01  # started at -8, then learned


# ------------------------------------------------------------------------------------------ forward-level matrix

def _text_batch(tokenizer, batch=4):
    """[B, 1+K=3, L]: sample 0's second negative is padding, sample 1's first equals its positive."""
    captions = ["a red square left of a blue square", "a blue square left of a red square",
                "a green circle above a yellow square", "a yellow circle below a green square"]
    pos = tokenizer(captions[:batch])
    text = torch.stack([pos, tokenizer([captions[(i + 1) % 4] for i in range(batch)]),
                        tokenizer([captions[(i + 2) % 4] for i in range(batch)])], 1)
    text[0, 2] = 0
    text[1, 1] = text[1, 0]
    return text


LOSSES = {("negclip", "softmax"): lambda: NegCLIPLoss(), ("degla", "softmax"): lambda: DeGLALoss(),
          ("ce-clip", "softmax"): lambda: CEClipLoss(), ("negclip", "sigmoid"): lambda: SigmoidNegCLIPLoss(),
          ("degla", "sigmoid"): lambda: SigmoidDeGLALoss(), ("ce-clip", "sigmoid"): lambda: SigmoidCEClipLoss()}


@pytest.mark.parametrize("key", FAMILIES)
def test_every_loss_in_both_forms_has_finite_values_and_gradients_on_every_family(fams, key):
    name = FAMILIES[key]
    tokenizer = open_clip.get_tokenizer(name)
    text = _text_batch(tokenizer)
    for form in ("softmax", "sigmoid"):
        model = _plain(name, **({"init_logit_bias": -10.0} if form == "sigmoid" else {}))
        keys = set(model.state_dict())
        teacher = make_teacher(model)
        enable_hardneg(model).attach_teacher(teacher)
        model.configure_training(emit_hardneg=True, teacher=True)
        assert {k for k in model.state_dict() if not k.startswith("teacher.")} == keys
        size = model.visual.preprocess_cfg["size"]
        images = torch.randn(4, 3, *((size, size) if isinstance(size, int) else size))
        for (method, loss_form), make in LOSSES.items():
            if loss_form != form:
                continue
            model.zero_grad()
            out = model.train()(images, text)
            assert out["neg_text_valid"].tolist() == [[True, False], [False, True], [True, True], [True, True]]
            terms = make()(**out, output_dict=True)
            total = sum(terms.values())
            assert torch.isfinite(total), (method, form, terms)
            total.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), (method, form)
            assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
            if form == "sigmoid":
                assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0
            if key == "coca":
                assert "caption_loss" in terms
        # an invalid negative's slot content changes nothing: pad vs a copy of the positive
        other = text.clone()
        other[0, 2] = text[0, 0]
        model.eval()
        with torch.no_grad():
            a, b = model(images, text), model(images, other)
        for k in ("text_features", "neg_text_features", "image_features"):
            assert torch.isfinite(a[k]).all()
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ resume

def test_negclip_resumes_as_degla_with_a_seeded_teacher_and_back(fams):
    _train(fams, "customtext-hf", "to-degla", "--loss", "negclip")
    first = torch.load(fams.root / "logs" / "to-degla" / "checkpoints" / "epoch_1.pt", weights_only=True)
    log, ckpt, _ = _train(fams, "customtext-hf", "to-degla-2", "--loss", "degla", "--ema-decay", "1.0",
                          "--resume", str(fams.root / "logs" / "to-degla" / "checkpoints" / "epoch_1.pt"), epochs=2)
    assert "=> resuming checkpoint" in log
    state = ckpt["state_dict"]
    for k, v in first["state_dict"].items():  # decay 1: the teacher stays the resumed student
        torch.testing.assert_close(state["teacher." + k], v, rtol=0, atol=0, msg=k)
    log, ckpt, _ = _train(fams, "customtext-hf", "back-to-negclip", "--loss", "negclip", "--resume",
                          str(fams.root / "logs" / "to-degla-2" / "checkpoints" / "epoch_2.pt"), epochs=3)
    assert "ignoring the checkpoint's EMA teacher" in log and not any(k.startswith("teacher.") for k in
                                                                       ckpt["state_dict"])


def test_a_lora_run_resumes_with_its_flags_and_refuses_without(fams, capsys, monkeypatch):
    flags = ["--loss", "degla", "--lora-r", "2", "--lora-targets", "attn,text.*"]
    _train(fams, "coca", "lora-res", *flags)
    first = torch.load(fams.root / "logs" / "lora-res" / "checkpoints" / "epoch_1.pt", weights_only=True)
    log, ckpt, _ = _train(fams, "coca", "lora-res", *flags, "--resume", "latest", epochs=2)
    assert "=> resuming checkpoint" in log
    steps = [s["step"].item() for s in ckpt["optimizer"]["state"].values()]
    assert max(steps) == 4  # two epochs of two steps: the optimizer state continued
    a, b = first["state_dict"], ckpt["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith(".original"))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.endswith(".lora_B"))
    argv = train_argv(fams.root, "lora-res-bad", "--model", FAMILIES["coca"], "--loss", "degla", "--hardneg-format",
                      "csv", "--train-data", str(fams.csv), "--resume",
                      str(fams.root / "logs" / "lora-res" / "checkpoints" / "epoch_1.pt"))
    line = _cli_error(capsys, monkeypatch, argv)
    assert "LoRA adapters" in line and "--lora-*" in line


# ------------------------------------------------------------------------------------------ bad input

def _cli_error(capsys, monkeypatch, argv) -> str:
    monkeypatch.setattr(sys, "argv", ["training.main", *argv])
    with pytest.raises(SystemExit) as exited:
        training_main.cli()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _bad(fams, run, key, *extra):
    return train_argv(fams.root, run, "--model", FAMILIES[key], "--hardneg-format", "csv", "--train-data",
                      str(fams.csv), "--num-hardneg", "2", *extra)


def test_bad_backbone_input_is_one_line(fams, capsys, monkeypatch):
    line = _cli_error(capsys, monkeypatch, _bad(fams, "b1", "customtext-timm", "--loss", "negclip", "--lora-r", "4",
                                                "--lora-targets", "attn,nothing.here"))
    assert "--lora-targets 'nothing.here' matches no module" in line
    assert "visual.trunk.blocks.*.attn.qkv.weight" in line
    assert "text.transformer.resblocks.*.attn.in_proj_weight" in line

    line = _cli_error(capsys, monkeypatch, _bad(fams, "b2", "clip-vit", "--loss", "negclip", "--siglip",
                                                "--pretrained", str(fams.weights["clip-vit"])))
    assert line.count("--siglip") >= 2 and "has no logit_bias" in line and "bias to 0" in line and "-10" in line
    assert not (fams.root / "logs" / "b2").exists()

    line = _cli_error(capsys, monkeypatch, _bad(fams, "b3", "clip-vit", "--loss", "degla", "--model",
                                                "comalign-tiny-ViT"))
    assert "--model comalign-tiny-ViT builds a ComAlignCLIP" in line and "cannot train" in line

    line = _cli_error(capsys, monkeypatch, _bad(fams, "b4", "clip-vit", "--loss", "negclip", "--pretrained",
                                                str(fams.weights["customtext-timm"])))
    assert "--pretrained" in line and "another model family" in line and "CustomTextCLIP with a timm" in line
    assert "builds a CLIP with an open_clip ViT image tower" in line

    line = _cli_error(capsys, monkeypatch, _bad(fams, "b5", "clip-vit", "--loss", "negclip",
                                                "--siglip-hardneg-weight", "2"))
    assert "--siglip-hardneg-weight configures the sigmoid form" in line
    line = _cli_error(capsys, monkeypatch, _bad(fams, "b6", "clip-vit", "--loss", "negclip", "--lora-alpha", "8"))
    assert "--lora-alpha configures LoRA: add --lora-r" in line
    line = _cli_error(capsys, monkeypatch, _bad(fams, "b7", "clip-vit", "--import",
                                                str(REPO / "examples" / "custom_method.py"), "--loss",
                                                "negclip-margin", "--siglip"))
    assert "--siglip is not supported by --loss negclip-margin" in line and "no sigmoid form" in line


# ------------------------------------------------------------------------------------------ README command lines

README_COMMANDS = {
    "vit-l-14": "DATA=/data/DeGLA.json IMAGE_ROOT=/data/coco MODEL=ViT-L-14-quickgelu PRETRAINED=openai BATCH=16 "
                "bash scripts/train_degla.sh --grad-checkpointing",
    "siglip": "DATA=/data/DeGLA.json IMAGE_ROOT=/data/coco MODEL=ViT-B-16-SigLIP PRETRAINED=webli "
              "bash scripts/train_negclip.sh",
    "lora": "DATA=/data/DeGLA.json IMAGE_ROOT=/data/coco MODEL=ViT-L-14-quickgelu PRETRAINED=openai LR=5e-5 "
            "bash scripts/train_degla.sh --lora-r 16 --lora-alpha 32 --grad-checkpointing",
}


def _dry_run(command: str, **overrides) -> list:
    """The training.main argv the recipe command would run (DRY_RUN=1), with env overrides."""
    words = shlex.split(command)
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    env.update(overrides, DRY_RUN="1", PYTHON=sys.executable)
    rest = [w for w in words if not ("=" in w and not w.startswith("-"))]
    proc = subprocess.run(rest, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    return argv[argv.index("training.main") + 2:]


@pytest.mark.parametrize("which", README_COMMANDS)
def test_readme_recipe_commands_parse_and_set_up(fams, which):
    """The large-tower commands pass every run-level check (tags, QuickGELU, loss form, LoRA flags) without a
    download; the same flags then set up and train two steps on a tiny model of the same family."""
    import open_clip_train.main as train_main
    argv = _dry_run(README_COMMANDS[which])
    with training_hooks():
        args = train_main.parse_args(argv)
    assert args.hardneg_sigmoid == (which == "siglip")
    assert args.grad_checkpointing == (which != "siglip") and args.lora_r == (16 if which == "lora" else 0)
    key = "siglip-style" if which == "siglip" else "clip-vit"
    tiny = _dry_run(README_COMMANDS[which], MODEL=FAMILIES[key], PRETRAINED=str(fams.weights[key]),
                    DATA=str(fams.csv), DATA_FORMAT="csv", IMAGE_ROOT="", K="2", BATCH="4", EPOCHS="1", WORKERS="0",
                    PRECISION="fp32", LOGS=str(fams.root / "logs"), NAME=f"readme-{which}")
    assert plugin_main([*tiny, "--device", "cpu"]) is None
    log = (fams.root / "logs" / f"readme-{which}" / "out.log").read_text()
    _losses(log)
    assert ("LoRA r=16 alpha=32" in log) == (which == "lora")
