"""QuickGELU safety (``open_clip_align.models.activation``) and its use by the evaluation entry points: OpenAI
weights on a GELU config are built with QuickGELU (one log line), and every eval record names the activation."""
import json
import logging
import sys
import types

import open_clip
import pytest

from eval_fixtures import angle_image
from open_clip_align.eval import cli, clip_benchmark_cli
from open_clip_align.eval.sugarcrepe import SUBSETS
from open_clip_align.models.activation import (activation_name, force_quickgelu_kwargs, needs_quickgelu,
                                               quickgelu_advice, quickgelu_name)

TINY = "hardneg-tiny-ViT"


def test_needs_quickgelu():
    assert needs_quickgelu("ViT-B-32", "openai") is True
    assert needs_quickgelu("ViT-B-16", "openai") is True
    assert needs_quickgelu("ViT-B-32-quickgelu", "openai") is False
    assert needs_quickgelu("ViT-B-32", "laion2b_s34b_b79k") is False  # trained with GELU
    assert needs_quickgelu("ViT-B-32", None) is False
    assert needs_quickgelu("ViT-B-32", "/some/file.pt") is False
    assert needs_quickgelu("local-dir:/x", "openai") is False
    assert needs_quickgelu("negclip-ViT-B-32", "openai") is False  # its config builds QuickGELU
    assert needs_quickgelu(TINY, "openai") is False  # no such tag for its base


def test_quickgelu_names_and_advice():
    assert quickgelu_name("ViT-B-32") == "ViT-B-32-quickgelu" and quickgelu_name("ViT-B/32") == "ViT-B-32-quickgelu"
    assert quickgelu_name(TINY) is None
    advice = quickgelu_advice("ViT-B-32", "openai")
    assert "--model ViT-B-32-quickgelu" in advice and "--force-quick-gelu" in advice


def test_force_quickgelu_kwargs_logs_one_line(caplog):
    with caplog.at_level(logging.INFO):
        assert force_quickgelu_kwargs("ViT-B-32", "openai", where="here") == {"force_quick_gelu": True}
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("here: ViT-B-32 with ")
    assert "ViT-B-32-quickgelu" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert force_quickgelu_kwargs("ViT-B-32-quickgelu", "openai") == {}
        assert force_quickgelu_kwargs("ViT-B-32", "laion2b_s34b_b79k") == {}
        assert force_quickgelu_kwargs(TINY, None, force_quick_gelu=True) == {"force_quick_gelu": True}
    assert not caplog.records


def test_activation_name_of_built_towers():
    assert activation_name(open_clip.create_model(TINY)) == "gelu"
    assert activation_name(open_clip.create_model(TINY, force_quick_gelu=True)) == "quick_gelu"


@pytest.fixture
def sugar_root(tmp_path):
    root = tmp_path / "sugarcrepe"
    (root / "val2017").mkdir(parents=True)
    angle_image(root / "val2017" / "a.png", 0)
    for subset in SUBSETS:
        (root / f"{subset}.json").write_text(json.dumps({"0": {"filename": "a.png", "caption": "a red square",
                                                               "negative_caption": "a blue square"}}))
    return root


@pytest.fixture
def offline_openai(monkeypatch):
    """``create_model_and_transforms`` records its kwargs and builds the tiny model (with the activation asked
    for) instead of downloading OpenAI weights; the tokenizer is the tiny model's."""
    calls = []
    real_create, real_tokenizer = open_clip.create_model_and_transforms, open_clip.get_tokenizer

    def create(model_name, pretrained=None, **kwargs):
        calls.append({"model_name": model_name, "pretrained": pretrained, **kwargs})
        keep = {k: v for k, v in kwargs.items() if k in ("force_quick_gelu", "precision", "device")}
        return real_create(TINY, **keep)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name, **kw: real_tokenizer(TINY))
    return calls


def test_eval_cli_switches_openai_weights_to_quickgelu_and_records_it(sugar_root, tmp_path, capsys, offline_openai):
    out = tmp_path / "r.json"
    cli.main(["--model", "ViT-B-32", "--pretrained", "openai", "--benchmark", "sugarcrepe", "--data-root",
              f"sugarcrepe={sugar_root}", "--no-blind", "--quiet", "--out", str(out)])
    assert offline_openai[0]["model_name"] == "ViT-B-32" and offline_openai[0]["force_quick_gelu"] is True
    err = [line for line in capsys.readouterr().err.splitlines() if "QuickGELU" in line]
    assert len(err) == 1 and "ViT-B-32-quickgelu" in err[0] and err[0].startswith("python -m open_clip_align.eval")
    (record,) = json.loads(out.read_text())
    assert record["protocol"]["activation"] == "quick_gelu" and record["model"] == "ViT-B-32"


def test_eval_cli_leaves_other_models_alone_and_records_gelu(sugar_root, tmp_path, capsys, offline_openai):
    out = tmp_path / "r.json"
    cli.main(["--model", "ViT-B-32-quickgelu", "--pretrained", "openai", "--benchmark", "sugarcrepe",
              "--data-root", f"sugarcrepe={sugar_root}", "--no-blind", "--quiet", "--out", str(out)])
    assert "force_quick_gelu" not in offline_openai[0]
    assert "QuickGELU" not in capsys.readouterr().err
    assert json.loads(out.read_text())[0]["protocol"]["activation"] == "gelu"  # the stand-in tiny model's


def test_clip_benchmark_loader_switches_openai_weights(monkeypatch, offline_openai):
    model, transform, tokenizer = clip_benchmark_cli.load_open_clip("ViT-B-32", "openai", cache_dir=None)
    assert offline_openai[-1]["force_quick_gelu"] is True and activation_name(model) == "quick_gelu"
    clip_benchmark_cli.load_open_clip("ViT-B-32-quickgelu", "openai")
    assert "force_quick_gelu" not in offline_openai[-1]
    fake = types.ModuleType("clip_benchmark.models")
    fake.TYPE2FUNC = {"open_clip": None, "ja_clip": None}
    monkeypatch.setitem(sys.modules, "clip_benchmark", types.ModuleType("clip_benchmark"))
    monkeypatch.setitem(sys.modules, "clip_benchmark.models", fake)
    sys.modules["clip_benchmark"].models = fake
    assert clip_benchmark_cli.install_loader() is True
    assert fake.TYPE2FUNC["open_clip"] is clip_benchmark_cli.load_open_clip and fake.TYPE2FUNC["ja_clip"] is None
