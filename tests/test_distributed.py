"""Two gloo processes under torchrun: hard-negative loss parity (softmax and sigmoid forms, values and gradients),
DDP training + resume through training.main, and DDP on a plain model with the EMA teacher, LoRA and the sigmoid
form."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, train_argv


def _torchrun(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_losses_equal_single_process_on_the_concatenated_batch(tmp_path):
    """Every term of negclip, degla (both TGC modes, with-grad gather) and ce-clip, to 1e-5."""
    out = tmp_path / "losses.json"
    _torchrun(str(Path(__file__).with_name("dist_loss_worker.py")), str(out))
    results = json.loads(out.read_text())
    assert set(results) == {"negclip", "degla-fixed", "degla-reference", "degla-mean-grad", "ce-clip"}
    assert set(results["degla-fixed"]["single"]) == {"contrastive_loss", "igc_loss", "tgc_loss", "distill_loss"}
    for name, entry in results.items():
        for mode in ("distributed", "local"):
            if mode in entry:
                assert entry[mode] == pytest.approx(entry["single"], abs=1e-5), (name, mode)


def test_two_process_training_and_resume(tmp_path, tiny_csv):
    common = ["--model", "hardneg-tiny-ViT", "--loss", "negclip", "--hardneg-format", "csv",
              "--train-data", str(tiny_csv), "--save-most-recent"]
    argv = train_argv(tmp_path, "ddp", *common)
    _torchrun("-m", "training.main", "--", *argv)
    ckpt_dir = tmp_path / "logs" / "ddp" / "checkpoints"
    assert (ckpt_dir / "epoch_1.pt").is_file()
    argv = train_argv(tmp_path, "ddp", *common, "--resume", "latest")
    argv[argv.index("--epochs") + 1] = "2"
    _torchrun("-m", "training.main", "--", *argv)
    assert (ckpt_dir / "epoch_2.pt").is_file()
    log = (tmp_path / "logs" / "ddp" / "out.log").read_text()
    assert "resuming checkpoint" in log.lower() and "contrastive_loss" in log
    assert "Running in distributed mode" in log


def test_two_process_sigmoid_losses_and_gradients_equal_single_process(tmp_path):
    """Sigmoid hard-negative losses (own/all columns, sig-degla sum/mean, sig-ce-clip): the ranks' mean loss, their
    feature gradients and DDP's mean scale/bias gradients equal one process on the concatenated batch (1e-5)."""
    out = tmp_path / "sigmoid.json"
    _torchrun(str(Path(__file__).with_name("dist_sigmoid_worker.py")), str(out))
    results = json.loads(out.read_text())
    assert len(results) == 6
    for name, entry in results.items():
        assert set(entry["single"]) == set(entry["distributed"]), name
        assert entry["distributed"] == pytest.approx(entry["single"], abs=1e-5), name
        assert entry["feature_grad_error"] < 1e-5, name
        assert entry["scale_bias_grad"] == pytest.approx(entry["single_scale_bias_grad"], abs=1e-5), name
        assert all(abs(g) > 0 for g in entry["single_scale_bias_grad"]), name


def test_two_process_degla_with_lora_in_sigmoid_form_on_a_plain_custom_text_model(tmp_path, tiny_csv):
    """A plain open_clip name (CustomTextCLIP, timm trunk) under DDP: the teacher made by the set-up, LoRA
    parametrizations, the sigmoid form (--siglip from scratch: b = -10) with its grad-carrying exchange."""
    argv = train_argv(tmp_path, "ddp-lora", "--model", "tiny-customtext-timm-ViT", "--loss", "degla", "--siglip",
                      "--siglip-hardneg-columns", "all", "--lora-r", "2", "--hardneg-format", "csv",
                      "--num-hardneg", "2", "--train-data", str(tiny_csv), "--log-every-n-steps", "1")
    _torchrun("-m", "training.main", "--", *argv)
    run = tmp_path / "logs" / "ddp-lora"
    log, params = (run / "out.log").read_text(), (run / "params.txt").read_text()
    assert "Running in distributed mode" in log and "LoRA r=2" in log and "EMA teacher: step 2" in log
    assert "hardneg_sigmoid: True" in params
    values = [float(v) for v in re.findall(r" Loss: ([-0-9.e+naif]+) ", log)]
    assert values and all(math.isfinite(v) for v in values)
    state = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    assert any(k.startswith("module.teacher.") for k in state) and any(".lora_B" in k for k in state)
    assert state["module.logit_bias"].item() != -10.0
