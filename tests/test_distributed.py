"""Two gloo processes under torchrun: NegCLIP loss parity, and DDP training + resume through training.main."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
