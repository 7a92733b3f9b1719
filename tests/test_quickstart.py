"""The quickstart end to end on the tiny ShapeCrepe preset: data, three checkpoints, table, JSON, chart, resume."""
import json
import os
import subprocess
import sys

from conftest import REPO


def _quickstart(out):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(REPO / "scripts" / "quickstart.py"), "--out", str(out), "--preset", "ci",
           "--pretrain-batch-size", "16", "--finetune-batch-size", "16", "--pretrain-epochs", "1",
           "--finetune-epochs", "1", "--workers", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_quickstart_runs_and_resumes(tmp_path):
    out = tmp_path / "qs"
    stdout = _quickstart(out)
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"pretrained", "clip", "negclip"}
    for arm in results["arms"].values():
        for split in ("iid", "heldout"):
            assert len(arm[split]["subsets"]) == 7
            assert all(0 <= s["acc"] <= 100 and s["n"] == 50 for s in arm[split]["subsets"].values())
    assert set(results["negclip_minus_clip_swap"]["heldout"]) == {"swap_obj", "swap_att"}
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "swap_att" in stdout and "negclip" in stdout and "epoch 1/1" in stdout
    for name in ("pretrain", "finetune-clip", "finetune-negclip"):
        assert (out / "logs" / name / "checkpoints" / "epoch_1.pt").is_file()

    again = _quickstart(out)  # everything is there: no stage reruns, same numbers
    assert again.count("skipping") == 4
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]
