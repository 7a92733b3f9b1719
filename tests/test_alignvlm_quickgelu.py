"""AlignVLM and QuickGELU: a GELU tower name with a QuickGELU tag (``ViT-B-16`` + ``openai``) is built with
QuickGELU after one log line, every checkpoint records the choice, and --init-from, --resume, evaluation and
``from_connector_dir`` rebuild that same tower. The tag is the offline stand-in of ``quickgelu_tag``."""
import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import open_clip
import pytest
import torch

from conftest import REPO
from open_clip_align.models.activation import activation_name
from open_clip_align.vlm import AlignVLM, evaluate
from open_clip_align.vlm.checkpoint import load_checkpoint
from open_clip_align.vlm.lm import tiny_llama
from open_clip_align.vlm.model import patch_tokens
from quickgelu_tag import MODEL, TAG, quickgelu_tag  # noqa: F401  (fixture)
from training import alignvlm

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(tmp_path, data, name, *extra):
    return ["--train-data", str(data), "--model", MODEL, "--pretrained", TAG, "--lm", "tiny-llama", "--batch-size",
            "4", "--workers", "0", "--logs", str(tmp_path / "logs"), "--name", name, "--device", "cpu", "--seed", "0",
            "--lr", "1e-2", "--log-every", "1", *extra]


def _switch_lines(caplog):
    return [r for r in caplog.records if "QuickGELU" in r.getMessage() and MODEL in r.getMessage()]


def test_training_switches_to_quickgelu_and_every_rebuild_keeps_it(tmp_path, tiny_csv, quickgelu_tag, caplog):
    with caplog.at_level(logging.INFO):
        run = alignvlm.main(_argv(tmp_path, tiny_csv, "a", "--steps", "2", "--save-every", "1", "--keep-last", "0"))
    assert len(_switch_lines(caplog)) == 1, [r.getMessage() for r in caplog.records]
    ckpt = Path(run["checkpoint"])
    config = json.loads((ckpt / "run_config.json").read_text())
    assert config["model"]["force_quick_gelu"] is True
    assert not (ckpt / "vision_tower.pt").exists()  # a tagged tower is rebuilt from its name, tag and activation
    connector = json.loads((ckpt / "connector" / "alignvlm_connector.json").read_text())
    assert connector["vision_force_quick_gelu"] is True and connector["vision_activation"] == "quick_gelu"
    assert "quick_gelu" in (Path(run["run_dir"]) / "out.log").read_text()

    model, _, _, _ = load_checkpoint(ckpt)
    assert activation_name(model.visual) == "quick_gelu"
    reference = open_clip.create_model(MODEL, pretrained=TAG, force_quick_gelu=True).visual.eval()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_vision(image), patch_tokens(reference, image), rtol=0, atol=0)

    stage_b = alignvlm.main(_argv(tmp_path, tiny_csv, "b", "--stage", "B", "--steps", "1",
                                  "--init-from", run["run_dir"]))
    assert json.loads((Path(stage_b["checkpoint"]) / "run_config.json").read_text())["model"]["force_quick_gelu"]
    step1 = Path(run["run_dir"]) / "checkpoints" / "step_00000001"
    resumed = alignvlm.main(_argv(tmp_path, tiny_csv, "a2", "--steps", "2", "--save-every", "1", "--keep-last", "0",
                                  "--resume", str(step1)))
    assert resumed["losses"] == run["losses"][1:]

    karpathy = tmp_path / "k.json"
    karpathy.write_text(json.dumps([{"image": "img/0.png", "caption": ["a red square"]}]))
    result = evaluate.main(["--checkpoint", str(ckpt), "--data", str(karpathy), "--image-root", str(tiny_csv.parent),
                            "--out", str(tmp_path / "eval"), "--max-new-tokens", "3", "--quiet"])
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["activation"] == saved["activation"] == "quick_gelu" and saved["force_quick_gelu"] is True


def test_a_checkpoint_from_before_the_record_is_rebuilt_as_it_was_trained(tmp_path, tiny_csv, quickgelu_tag, caplog):
    """A run config without force_quick_gelu (written before the activation was recorded) trained the connector on
    the GELU tower: it is rebuilt GELU, with a warning that names the QuickGELU alternative."""
    run = alignvlm.main(_argv(tmp_path, tiny_csv, "old", "--steps", "1"))
    ckpt = Path(run["checkpoint"])
    config = json.loads((ckpt / "run_config.json").read_text())
    del config["model"]["force_quick_gelu"]
    (ckpt / "run_config.json").write_text(json.dumps(config))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model, _, _, _ = load_checkpoint(ckpt)
    assert activation_name(model.visual) == "gelu"
    assert any("built with GELU as recorded" in r.getMessage() for r in caplog.records)
    with pytest.raises(alignvlm.TrainingConfigError, match="--force-quick-gelu: .* GELU tower"):
        alignvlm.main(_argv(tmp_path, tiny_csv, "b", "--stage", "B", "--steps", "1", "--init-from", str(ckpt),
                            "--force-quick-gelu"))


def test_from_open_clip_and_from_connector_dir(tmp_path, quickgelu_tag, caplog):
    with caplog.at_level(logging.INFO):
        model = AlignVLM.from_open_clip(MODEL, tiny_llama(), "mlp", pretrained=TAG)
    assert len(_switch_lines(caplog)) == 1
    assert activation_name(model.visual) == "quick_gelu" and model.vision_force_quick_gelu is True
    plain = AlignVLM.from_open_clip(MODEL, tiny_llama(), "mlp")  # no tag: the name's own GELU
    assert activation_name(plain.visual) == "gelu" and plain.vision_force_quick_gelu is False
    model.save_connector(tmp_path / "conn")
    rebuilt = AlignVLM.from_connector_dir(tmp_path / "conn", lm=tiny_llama())
    assert activation_name(rebuilt.visual) == "quick_gelu" and rebuilt.vision_force_quick_gelu is True


def test_recipe_defaults_to_the_quickgelu_tower(tmp_path):
    """scripts/train_alignvlm.sh builds ViT-B-16-quickgelu with the openai tag unless told otherwise."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGS_OUT\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PYTHON=str(fake), DATA="captions.tsv", ARGS_OUT=str(tmp_path / "args.txt"))
    env.pop("MODEL", None), env.pop("PRETRAINED", None)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "train_alignvlm.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args.txt").read_text().splitlines()
    assert args[args.index("--model") + 1] == "ViT-B-16-quickgelu"
    assert args[args.index("--pretrained") + 1] == "openai"
    assert alignvlm.build_parser().parse_args(["--train-data", "x", "--lm", "y"]).model == "ViT-B-16-quickgelu"
