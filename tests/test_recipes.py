"""The paper-recipe scripts: valid bash, and each one trains end to end on CPU with a tiny model."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from open_clip_align.data.synthetic import generate

SCRIPTS = {"train_degla.sh": "degla-tiny-ViT", "train_negclip.sh": "hardneg-tiny-ViT",
           "train_ce_clip.sh": "hardneg-tiny-ViT"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes") / "data"
    generate(out, preset="ci", seed=0, num_negatives=2)
    return out


@pytest.mark.parametrize("script", [*SCRIPTS, "recipe_common.sh"])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], check=True)


def _run(script, env_extra, *args):
    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_recipe_trains_a_tiny_model_on_cpu(tmp_path, shapes, script):
    env = dict(GPUS="1", BATCH="32", EPOCHS="1", PRECISION="fp32", PRETRAINED="", MODEL=SCRIPTS[script],
               DATA=str(shapes / "train_degla.json"), JSON_IMAGE_KEY="image", JSON_IMAGE_TEMPLATE="{}", K="2",
               WORKERS="0", LOGS=str(tmp_path / "logs"), NAME="run")
    proc = _run(script, env, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = (tmp_path / "logs" / "run" / "params.txt").read_text()
    for line in ("lr: 1e-06", "beta2: 0.98", "eps: 1e-06", "warmup: 50", "wd: 0.1", "seed: 42", "num_hardneg: 2"):
        assert line in params, line
    loss = {"train_degla.sh": "degla", "train_negclip.sh": "negclip", "train_ce_clip.sh": "ce-clip"}[script]
    assert f"loss: {loss}" in params
    if loss == "degla":  # λ_D = 0.005·256/(GPUS·BATCH) keeps the paper's balance at another global batch
        assert "degla_distill_weight: 0.04" in params
    state = torch.load(tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    assert any(k.startswith("teacher.") for k in state) == (loss == "degla")


def test_recipe_without_data_says_what_to_set():
    proc = _run("train_degla.sh", {})
    assert proc.returncode == 2 and "set DATA" in proc.stderr


def test_comalign_recipe_trains_the_head_on_a_store(tmp_path, shapes):
    import open_clip

    from open_clip_align.comalign import embed

    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "train_comalign.sh")]).returncode == 0
    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    torch.save(open_clip.create_model("comalign-tiny-ViT").state_dict(), base)
    store = tmp_path / "train.h5"
    embed.main(["--model", "comalign-tiny-ViT", "--pretrained", str(base), "--annotations", str(shapes / "train.csv"),
                "--boxes", "gt", "--scenes", str(shapes / "scenes.jsonl"), "--limit", "64", "--out", str(store),
                "--quiet"])
    env = dict(GPUS="1", BATCH="32", EPOCHS="1", PRECISION="fp32", MODEL="comalign-tiny-ViT", PRETRAINED=str(base),
               DATA=str(store), WORKERS="0", LOGS=str(tmp_path / "logs"), NAME="run")
    proc = _run("train_comalign.sh", env, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = (tmp_path / "logs" / "run" / "params.txt").read_text()
    for line in ("loss: comalign", "comalign_data: features", "lr: 0.0001", "wd: 0.05", "warmup: 500",
                 "comalign_temperature: 0.07", "comalign_padding: masked", "batch_size: 32"):
        assert line in params, line
    assert _run("train_comalign.sh", {}).returncode == 2
