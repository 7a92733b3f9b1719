"""End-to-end training through open_clip_train's loop: built-in models untouched, plugin models and losses."""
import os
import re
import subprocess
import sys

import open_clip_train.main as upstream_main
import pytest
import torch

from conftest import REPO, train_argv
from training.main import main as plugin_main


def _log(tmp_path, name):
    return (tmp_path / "logs" / name / "out.log").read_text()


def _checkpoint(tmp_path, name, epoch=1):
    return torch.load(tmp_path / "logs" / name / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)


@pytest.mark.parametrize("extra", [[], ["--lock-image", "--accum-freq", "2"]], ids=["plain", "lock-accum"])
def test_builtin_model_trains_through_upstream_main_with_plugin_imported(tmp_path, extra):
    argv = train_argv(tmp_path, "builtin", "--model", "ViT-S-32-alt", "--dataset-type", "synthetic",
                      "--train-num-samples", "16", *extra)
    assert upstream_main.main(argv) is None
    assert "visual.conv1.weight" in _checkpoint(tmp_path, "builtin")["state_dict"]
    assert "Contrastive_loss" in _log(tmp_path, "builtin")


@pytest.mark.parametrize("loss,extra", [
    ("clip", []),
    ("negclip", []),
    ("negclip", ["--accum-freq", "2"]),
    ("negclip", ["--lock-image", "--lock-text", "--lock-text-freeze-layer-norm"]),
], ids=["clip", "negclip", "negclip-accum", "negclip-locked"])
def test_plugin_model_and_losses_train_through_training_main(tmp_path, tiny_csv, loss, extra):
    argv = train_argv(tmp_path, "run", "--model", "hardneg-tiny-ViT", "--loss", loss, "--hardneg-format", "csv",
                      "--train-data", str(tiny_csv), *extra)
    assert plugin_main(argv) is None
    state = _checkpoint(tmp_path, "run")["state_dict"]
    assert "visual.conv1.weight" in state and not any(k.startswith("teacher.") for k in state)
    log = _log(tmp_path, "run")
    assert "Contrastive_loss" in log
    params = open(tmp_path / "logs" / "run" / "params.txt").read()
    assert f"loss: {loss}" in params and "loss_dist_impl: None" in params


def test_negclip_training_reduces_its_loss(tmp_path, tiny_csv):
    argv = train_argv(tmp_path, "learn", "--model", "hardneg-tiny-ViT", "--loss", "negclip",
                      "--hardneg-format", "csv", "--train-data", str(tiny_csv), "--log-every-n-steps", "1", "--wd", "0")
    argv[argv.index("--epochs") + 1] = "40"
    argv[argv.index("--lr") + 1] = "5e-4"
    assert plugin_main(argv) is None
    values = [float(v) for v in re.findall(r"Contrastive_loss: ([0-9.]+)", _log(tmp_path, "learn"))]
    assert len(values) == 40 * 4
    first, last = sum(values[:4]) / 4, sum(values[-8:]) / 8
    assert last < 0.5 * first, (first, last)


def test_resume_continues_the_run(tmp_path, tiny_csv):
    common = ["--model", "hardneg-tiny-ViT", "--loss", "negclip", "--hardneg-format", "csv",
              "--train-data", str(tiny_csv), "--save-most-recent"]
    assert plugin_main(train_argv(tmp_path, "res", *common)) is None
    first = _checkpoint(tmp_path, "res")
    argv = train_argv(tmp_path, "res", *common, "--resume", "latest")
    argv[argv.index("--epochs") + 1] = "2"
    assert plugin_main(argv) is None
    second = _checkpoint(tmp_path, "res", epoch=2)
    assert first["epoch"] == 1 and second["epoch"] == 2
    assert "=> resuming checkpoint" in _log(tmp_path, "res")
    assert not torch.equal(first["state_dict"]["visual.conv1.weight"], second["state_dict"]["visual.conv1.weight"])
    # the resumed run started from epoch 1's optimizer state: step counts continue
    steps = [s["step"].item() for s in second["optimizer"]["state"].values()]
    assert max(steps) == 2 * (16 // 4)


def _cli(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "training.main", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_reports_bad_data_in_one_line(tmp_path):
    missing = tmp_path / "nope.csv"
    proc = _cli(*train_argv(tmp_path, "bad", "--model", "hardneg-tiny-ViT", "--loss", "negclip",
                            "--hardneg-format", "csv", "--train-data", str(missing)))
    assert proc.returncode == 2
    assert "nope.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_trains_a_plain_model_with_a_hardneg_loss(tmp_path, tiny_csv):
    """Issue 16: plain open_clip names take hard-negative losses (this test used to expect a refusal)."""
    proc = _cli(*train_argv(tmp_path, "plain", "--model", "ViT-S-32-alt", "--loss", "negclip",
                            "--hardneg-format", "csv", "--train-data", str(tiny_csv)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = _checkpoint(tmp_path, "plain")["state_dict"]
    assert "visual.conv1.weight" in state and not any(k.startswith("teacher.") for k in state)
    assert "Contrastive_loss" in _log(tmp_path, "plain")


# ----------------------------------------------------------------------------- DeGLA / CE-CLIP

def _degla_argv(tmp_path, name, tiny_csv, *extra):
    return train_argv(tmp_path, name, "--model", "degla-tiny-ViT", "--loss", "degla", "--hardneg-format", "csv",
                      "--train-data", str(tiny_csv), "--log-every-n-steps", "1", *extra)


def test_degla_trains_logs_every_term_and_saves_the_teacher(tmp_path, tiny_csv):
    assert plugin_main(_degla_argv(tmp_path, "degla", tiny_csv, "--ema-decay", "0.5")) is None
    log = _log(tmp_path, "degla")
    for key in ("Contrastive_loss", "Igc_loss", "Tgc_loss", "Distill_loss"):
        assert key in log, key
    assert re.findall(r"EMA teacher: step (\d+)", log) == ["1", "2", "3", "4"]
    state = _checkpoint(tmp_path, "degla")["state_dict"]
    conv, teacher_conv = state["visual.conv1.weight"], state["teacher.visual.conv1.weight"]
    assert not torch.equal(conv, teacher_conv)  # decay 0.5 after 4 steps: close to, not equal to, the student
    assert (conv - teacher_conv).abs().max() < 0.2 * (conv.abs().max())


def test_degla_accum_freq_updates_the_teacher_once_per_optimizer_step(tmp_path, tiny_csv):
    assert plugin_main(_degla_argv(tmp_path, "accum", tiny_csv, "--accum-freq", "2")) is None
    assert re.findall(r"EMA teacher: step (\d+)", _log(tmp_path, "accum")) == ["1", "2"]  # 4 batches, 2 steps


def test_degla_resume_gives_the_same_student_and_teacher(tmp_path, tiny_csv):
    """2 epochs straight vs epoch 1's checkpoint + --resume + epoch 2: same weights (teacher included)."""
    common = ["--save-frequency", "1", "--aug-cfg", "scale=(1.0,1.0)", "--ema-decay", "0.7"]
    straight = _degla_argv(tmp_path, "straight", tiny_csv, *common)
    straight[straight.index("--epochs") + 1] = "2"
    assert plugin_main(straight) is None
    resumed = _degla_argv(tmp_path, "resumed", tiny_csv, *common, "--resume",
                          str(tmp_path / "logs" / "straight" / "checkpoints" / "epoch_1.pt"))
    resumed[resumed.index("--epochs") + 1] = "2"
    assert plugin_main(resumed) is None
    a, b = _checkpoint(tmp_path, "straight", 2)["state_dict"], _checkpoint(tmp_path, "resumed", 2)["state_dict"]
    first = _checkpoint(tmp_path, "straight", 1)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(first["teacher.visual.conv1.weight"], a["teacher.visual.conv1.weight"])


def test_ce_clip_trains_and_logs_its_terms(tmp_path, tiny_csv):
    argv = train_argv(tmp_path, "ce", "--model", "hardneg-tiny-ViT", "--loss", "ce-clip", "--hardneg-format", "csv",
                      "--train-data", str(tiny_csv), "--ceclip-imc-mode", "reference")
    assert plugin_main(argv) is None
    log = _log(tmp_path, "ce")
    assert all(key in log for key in ("Contrastive_loss", "Imc_loss", "Cmr_loss"))


@pytest.mark.parametrize("extra,message", [
    (["--model", "hardneg-tiny-ViT"], "degla-tiny-ViT"),
    (["--model", "degla-tiny-ViT", "--distill-model", "ViT-S-32-alt", "--distill-pretrained", "x"], "--distill-model"),
    (["--model", "degla-tiny-ViT", "--ema-decay", "1.5"], "--ema-decay"),
    (["--model", "degla-tiny-ViT", "--local-loss", "--loss", "ce-clip"], "--local-loss"),
], ids=["no-teacher", "distill-model", "decay", "ceclip-local"])
def test_cli_rejects_bad_degla_setups_in_one_line(tmp_path, tiny_csv, extra, message):
    proc = _cli(*train_argv(tmp_path, "bad", "--loss", "degla", "--hardneg-format", "csv",
                            "--train-data", str(tiny_csv), *extra))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
