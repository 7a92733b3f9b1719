"""training.alignvlm under torchrun: two gloo processes on CPU, one checkpoint writer, exact --resume latest."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

pytest.importorskip("transformers")


def _torchrun(argv, port):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "training.alignvlm", "--", *argv]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_ddp_two_processes_train_and_resume_exactly(tmp_path, tiny_csv, free_port):
    run = tmp_path / "logs" / "ddp"
    argv = ["--train-data", str(tiny_csv), "--model", "hardneg-tiny-ViT", "--lm", "tiny-llama", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--steps", "4", "--save-every", "2", "--keep-last", "0",
            "--log-every", "1", "--lr", "1e-2", "--logs", str(tmp_path / "logs"), "--name", "ddp"]
    _torchrun(argv, free_port)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000004"]
    config = json.loads((run / "checkpoints" / "step_00000004" / "run_config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["steps_per_epoch"] == 4   # 16 rows / (2x2)
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == [1, 2, 3, 4]                     # rank 0 logs, once per step
    final = torch.load(run / "checkpoints" / "step_00000004" / "connector" / "alignvlm_connector.pt",
                       weights_only=True)
    shutil.rmtree(run / "checkpoints" / "step_00000004")                 # as if stopped after step 2
    _torchrun([*argv, "--resume", "latest"], free_port)
    again = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert [r["loss"] for r in again] == [r["loss"] for r in first]
    resumed = torch.load(run / "checkpoints" / "step_00000004" / "connector" / "alignvlm_connector.pt",
                         weights_only=True)
    assert all(torch.equal(resumed[k], v) for k, v in final.items())
    log = Path(run / "out.log").read_text()
    assert "x 2 process(es)" in log and "resumed from" in log
