"""``python -m open_clip_align.export``: checkpoints to ``local-dir:`` folders that plain open_clip loads."""
import json
import logging
import os
import subprocess
import sys

import open_clip
import pytest
import torch
from open_clip.model import CLIP, get_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO
from open_clip_align import export
from open_clip_align.export import CONFIG_NAME, WEIGHTS_NAME, ExportError, export_local_dir
from open_clip_align.models import HardNegCLIP
from quickgelu_tag import quickgelu_tag  # noqa: F401  (fixture)

MODEL = "hardneg-tiny-ViT"
TEXTS = ["a red square left of a blue square", "a blue square left of a red square"]
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")

# Runs in a fresh interpreter that must never import the plugin.
PLAIN_LOADER = r"""
import sys
import open_clip, torch
from PIL import Image
out, image_path, result_path, *texts = sys.argv[1:]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + out)
tokenizer = open_clip.get_tokenizer("local-dir:" + out)
assert "open_clip_align" not in sys.modules, "open_clip_align was imported"
model.eval()
tokens = tokenizer(texts)
with torch.no_grad():
    image_features = model.encode_image(torch.load(image_path))
    text_features = model.encode_text(tokens)
torch.save({"image": image_features, "text": text_features, "tokens": tokens, "class": type(model).__name__,
            "pixels": preprocess(Image.new("RGB", (80, 50), (200, 10, 10))),
            "plugin_imported": "open_clip_align" in sys.modules}, result_path)
"""


def _perturbed_model(name=MODEL, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = open_clip.create_model(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _save_run(tmp_path, state, params="model: hardneg-tiny-ViT\n", run="run"):
    """A training run's layout: ``logs/<run>/checkpoints/epoch_1.pt`` (DDP-style keys) and ``params.txt``."""
    ckpt_dir = tmp_path / "logs" / run / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    if params is not None:
        (ckpt_dir.parent / "params.txt").write_text(params)
    path = ckpt_dir / "epoch_1.pt"
    torch.save({"epoch": 1, "name": run, "state_dict": {"module." + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def _exported_keys(out):
    return set(load_file(str(out / WEIGHTS_NAME)))


def _plain_keys(out):
    cfg = json.loads((out / CONFIG_NAME).read_text())["model_cfg"]
    return set(CLIP(**cfg).state_dict())


@pytest.fixture(scope="module")
def plugin_model():
    return _perturbed_model()


@pytest.fixture(scope="module")
def missing_params_cli(tmp_path_factory, plugin_model):
    """The CLI on a checkpoint with neither params.txt nor --model, started early so that its interpreter
    start-up (seconds: it imports open_clip) overlaps the round trip's."""
    tmp = tmp_path_factory.mktemp("cli")
    ckpt = _save_run(tmp, plugin_model.state_dict(), params=None)
    proc = subprocess.Popen([sys.executable, "-m", "open_clip_align.export", str(ckpt), str(tmp / "export")],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, tmp / "export"
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.mark.usefixtures("missing_params_cli")
def test_round_trip_matches_the_plugin_model_in_plain_open_clip(tmp_path, plugin_model):
    ckpt = _save_run(tmp_path, plugin_model.state_dict())
    out = export_local_dir(ckpt, tmp_path / "export")
    assert out == (tmp_path / "export").absolute()
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((out / CONFIG_NAME).read_text())
    assert "open_clip_align" not in config["model_cfg"] and config["model_cfg"]["embed_dim"] == 64
    assert set(config["preprocess_cfg"]) == {"size", "mode", "mean", "std", "interpolation", "resize_mode",
                                             "fill_color"}
    assert _exported_keys(out) == _plain_keys(out) == set(plugin_model.state_dict())

    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.save(image, tmp_path / "image.pt")
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOADER, str(out), str(tmp_path / "image.pt"),
                           str(tmp_path / "result.pt"), *TEXTS], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert result["class"] == "CLIP" and not result["plugin_imported"]

    tokens = open_clip.get_tokenizer(MODEL)(TEXTS)
    assert torch.equal(result["tokens"], tokens)
    with torch.no_grad():
        torch.testing.assert_close(result["image"], plugin_model.encode_image(image), atol=1e-6, rtol=0)
        torch.testing.assert_close(result["text"], plugin_model.encode_text(tokens), atol=1e-6, rtol=0)
    val_transform = image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(plugin_model)), is_train=False)
    expected_pixels = val_transform(Image.new("RGB", (80, 50), (200, 10, 10)))
    assert result["pixels"].shape == (3, 64, 64) and torch.equal(result["pixels"], expected_pixels)


def test_the_ema_teacher_is_stripped_and_the_student_exported(tmp_path):
    model = _perturbed_model("degla-tiny-ViT")
    with torch.no_grad():
        model.teacher.visual.conv1.weight.mul_(3)  # the teacher differs from the student, as after training
    state = model.state_dict()
    assert any(k.startswith("teacher.") for k in state)

    out = export_local_dir(_save_run(tmp_path, state, params="model: degla-tiny-ViT\n"), tmp_path / "degla")
    keys = _exported_keys(out)
    assert keys == _plain_keys(out) == {k for k in state if not k.startswith("teacher.")}
    plain, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(out))
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the student's features, not the teacher's
        torch.testing.assert_close(plain.eval().encode_image(image), model.encode_image(image), atol=1e-6, rtol=0)

    bare = tmp_path / "bare.pt"  # a bare state dict without the plugin-owned keys is fine too
    torch.save({k: v for k, v in state.items() if not k.startswith("teacher.")}, bare)
    out = export_local_dir(bare, tmp_path / "bare", model_name="degla-tiny-ViT")
    assert _exported_keys(out) == keys


def test_params_overrides_reach_the_exported_config(tmp_path):
    model = _perturbed_model(force_quick_gelu=True)
    params = ("force_quick_gelu: True\nimage_interpolation: bilinear\nimage_mean: [0.5, 0.5, 0.5]\n"
              "image_std: [0.25, 0.25, 0.25]\nmodel: hardneg-tiny-ViT\npretrained: None\n")
    out = export_local_dir(_save_run(tmp_path, model.state_dict(), params=params), tmp_path / "export")
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["model_cfg"]["quick_gelu"] is True
    pp = config["preprocess_cfg"]
    assert (pp["mean"], pp["std"], pp["interpolation"]) == ([0.5] * 3, [0.25] * 3, "bilinear")
    loaded = open_clip.create_model(f"local-dir:{out}").eval()  # schemes reach upstream unchanged
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(image), model.encode_image(image), atol=1e-6, rtol=0)


def test_cli_without_params_or_model_fails_in_one_line(missing_params_cli):
    proc, out = missing_params_cli
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export: error:"), stderr
    assert "--model" in lines[0] and "params.txt" in lines[0] and "Traceback" not in stderr
    assert not out.exists()


def _cli_error(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        export.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("export: error:"), err
    return err


def test_cli_errors(tmp_path, plugin_model, capsys):
    state = plugin_model.state_dict()
    out = tmp_path / "export"

    del state["text_projection"]
    ckpt = _save_run(tmp_path, state, run="missing-key")
    err = _cli_error(capsys, ckpt, out)
    assert str(ckpt) in err and "missing keys [text_projection]" in err

    state = plugin_model.state_dict()
    state["text_projection"] = torch.zeros(3, 3)
    ckpt = _save_run(tmp_path, state, run="bad-shape")
    err = _cli_error(capsys, ckpt, out)
    assert str(ckpt) in err and "shape mismatch" in err and "text_projection (3, 3) vs (64, 64)" in err

    ckpt = _save_run(tmp_path, plugin_model.state_dict(), run="other-model")
    err = _cli_error(capsys, ckpt, out, "--model", "shapes-tiny-ViT")
    assert str(ckpt) in err and "'shapes-tiny-ViT'" in err and "missing keys [visual.transformer.resblocks.2" in err

    assert "unknown model 'no-such-model'" in _cli_error(capsys, ckpt, out, "--model", "no-such-model")
    assert "is not a file" in _cli_error(capsys, tmp_path / "nope.pt", out)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert "cannot read checkpoint" in _cli_error(capsys, tmp_path / "junk.pt", out, "--model", MODEL)
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert "--overwrite" in _cli_error(capsys, ckpt, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_overwrite_and_empty_out_dir(tmp_path, plugin_model, capsys):
    ckpt = _save_run(tmp_path, plugin_model.state_dict())
    out = tmp_path / "export"
    out.mkdir()  # an empty folder is not "existing output"
    export.main([str(ckpt), str(out)])
    assert "local-dir:" in capsys.readouterr().out
    (out / "stale.txt").write_text("old")
    export.main([str(ckpt), str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "logs"]  # no temporary siblings left


def test_failed_export_leaves_no_out_dir(tmp_path, plugin_model, monkeypatch):
    ckpt = _save_run(tmp_path, plugin_model.state_dict())
    out = tmp_path / "export"

    def interrupted_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(export, "save_file", interrupted_save)
        with pytest.raises(KeyboardInterrupt):
            export_local_dir(ckpt, out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
        out.mkdir()
        (out / "keep.txt").write_text("x")
        with pytest.raises(KeyboardInterrupt):
            export_local_dir(ckpt, out, overwrite=True)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "logs"]

    # a class that claims a CLIP weight as plugin-owned fails the strict plain-open_clip check
    monkeypatch.setattr(HardNegCLIP, "plugin_state_prefixes", ("text_projection",), raising=False)
    with pytest.raises(ExportError, match="plain open_clip.*text_projection.*plugin_state_prefixes"):
        export_local_dir(ckpt, tmp_path / "export2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "logs"]


def test_help_explains_the_export(capsys):
    with pytest.raises(SystemExit) as exc:
        export.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "local-dir:" in text and "--model" in text and "params.txt" in text and "--overwrite" in text


def test_non_checkpoints_are_named_in_one_line(tmp_path, plugin_model, capsys):
    """Random bytes, a JSON file, a truncated checkpoint and a folder: one line naming the file and what it is not,
    never torch's traceback or its weights_only advice."""
    out = tmp_path / "export"
    ckpt = _save_run(tmp_path, plugin_model.state_dict())
    (tmp_path / "random.pt").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.uint8).numpy().tobytes())
    (tmp_path / "config.json").write_text(json.dumps({"model": MODEL}))
    (tmp_path / "truncated.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    cases = [(tmp_path / "random.pt", "random.pt is not a checkpoint (neither a torch file nor safetensors)"),
             (tmp_path / "config.json", "config.json is not a checkpoint"),
             (tmp_path / "truncated.pt", "truncated.pt cannot be loaded as a checkpoint"),
             (tmp_path / "logs" / "run", f"is a folder, not a file; pass a checkpoint file, e.g. {ckpt}"),
             (tmp_path, "is a folder, not a file; pass a checkpoint file (<logs>/<name>/checkpoints/epoch_K.pt)")]
    for path, fragment in cases:
        err = _cli_error(capsys, path, out, "--model", MODEL)
        assert fragment in err and "weights_only" not in err and "Traceback" not in err, err
    assert not out.exists()
    err = _cli_error(capsys, ckpt, tmp_path / "random.pt" / "export")
    assert f"OUT_DIR {tmp_path / 'random.pt' / 'export'}: {tmp_path / 'random.pt'} is a file, not a folder" in err
    (ckpt.parent.parent / "params.txt").write_bytes(bytes(range(128, 256)))
    err = _cli_error(capsys, ckpt, out)
    assert "params.txt is not a training run's params.txt" in err and "--model NAME" in err


def test_a_quickgelu_run_exports_quickgelu(tmp_path, quickgelu_tag, caplog):
    """A run of a GELU name with a QuickGELU tag records force_quick_gelu: True in params.txt; the export carries
    quick_gelu, so plain open_clip rebuilds the QuickGELU model that was trained (same features). A run without
    it trained GELU: that is exported, with a warning naming the QuickGELU model."""
    from quickgelu_tag import MODEL as QG_MODEL
    from open_clip_align.models.activation import activation_name

    trained = _perturbed_model(QG_MODEL, force_quick_gelu=True)
    params = f"force_quick_gelu: True\nmodel: {QG_MODEL}\npretrained: openai\n"
    out = export_local_dir(_save_run(tmp_path, trained.state_dict(), params=params, run="qg"), tmp_path / "qg")
    assert json.loads((out / CONFIG_NAME).read_text())["model_cfg"]["quick_gelu"] is True
    plain = open_clip.create_model(f"local-dir:{out}").eval()
    assert activation_name(plain) == "quick_gelu"
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(image), trained.encode_image(image), atol=1e-6, rtol=0)

    gelu = _perturbed_model(QG_MODEL)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = export_local_dir(_save_run(tmp_path, gelu.state_dict(), params=f"model: {QG_MODEL}\npretrained: openai\n",
                                         run="gelu"), tmp_path / "gelu")
    assert not json.loads((out / CONFIG_NAME).read_text())["model_cfg"].get("quick_gelu", False)
    assert activation_name(open_clip.create_model(f"local-dir:{out}")) == "gelu"
    assert any("exporting GELU, as trained" in r.getMessage() for r in caplog.records)
