"""The quickstart end to end on the tiny ShapeCrepe preset: data, four checkpoints, table, JSON, chart, resume."""
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
    assert set(results["arms"]) == {"pretrained", "clip", "negclip", "degla"}
    for arm in results["arms"].values():
        for split in ("iid", "heldout"):
            assert len(arm[split]["subsets"]) == 7
            assert all(0 <= s["acc"] <= 100 and s["n"] == 50 for s in arm[split]["subsets"].values())
        bow = arm["general"]["bag_of_words_retrieval"]
        assert bow["n_images"] == 100 and 0 <= bow["mean_r1"] <= 100  # replace_obj + replace_att images
    assert set(results["swap_gaps"]) == {"negclip_minus_clip", "degla_minus_clip"}
    assert set(results["swap_gaps"]["degla_minus_clip"]["heldout"]) == {"swap_obj", "swap_att"}
    assert set(results["general_mean_r1"]) == set(results["arms"])
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "swap_att" in stdout and "degla" in stdout and "BoW t->i R@1" in stdout and "epoch 1/1" in stdout
    for name in ("pretrain", "finetune-clip", "finetune-negclip", "finetune-degla"):
        assert (out / "logs" / name / "checkpoints" / "epoch_1.pt").is_file()
    degla_params = (out / "logs" / "finetune-degla" / "params.txt").read_text()
    assert "model: degla-shapes-tiny-ViT" in degla_params and "loss: degla" in degla_params

    again = _quickstart(out)  # everything is there: no stage reruns, same numbers
    assert again.count("skipping") == 5
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]
