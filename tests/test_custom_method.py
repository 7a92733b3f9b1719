"""examples/custom_method.py: a user method in one file, trained through --import exactly as the README says."""
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from open_clip_align.data.synthetic import generate


def _readme_command() -> str:
    """The README's torchrun command for the example method (continuation lines joined)."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("torchrun --nproc_per_node 2 -m training.main -- --import examples/custom_method.py")
    lines = []
    for line in readme[start:].splitlines():
        lines.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return " ".join(lines)


def test_the_readme_command_trains_the_example_with_two_processes(tmp_path):
    generate(tmp_path / "data", preset="ci", train_size=32, pretrain_size=0, test_pairs=1, zeroshot_per_class=0,
             progress=False, workers=1)
    argv = shlex.split(_readme_command())
    assert argv[:3] == ["torchrun", "--nproc_per_node", "2"]
    argv = [str(tmp_path / "data" / "train.csv") if a == "data/train.csv" else
            str(tmp_path / "logs") if a == "./logs" else a for a in argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", *argv, "--name", "margin"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "logs" / "margin" / "out.log").read_text()
    assert "Running in distributed mode" in log and "total 2" in log
    assert re.search(r"Margin_loss: [0-9.]+", log) and "Contrastive_loss" in log
    assert "loss: negclip-margin" in (tmp_path / "logs" / "margin" / "params.txt").read_text()
    assert (tmp_path / "logs" / "margin" / "checkpoints" / "epoch_1.pt").is_file()


def test_the_example_loss_is_negclip_plus_the_margin_hinge():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from custom_method import MarginNegCLIPLoss
    finally:
        sys.path.remove(str(REPO / "examples"))
    g = torch.Generator().manual_seed(0)
    image, text = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(2))
    neg = F.normalize(torch.randn(4, 3, 8, generator=g), dim=-1)
    valid = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    scale = torch.tensor(20.0)
    out = MarginNegCLIPLoss(weight=0.5, margin=0.3)(image, text, scale, neg, valid, output_dict=True)
    hinges = [max(0.0, 0.3 - float(image[i] @ text[i]) + float(image[i] @ neg[i, k]))
              for i in range(4) for k in range(3) if valid[i, k]]
    assert out["margin_loss"].item() == pytest.approx(0.5 * sum(hinges) / len(hinges), rel=1e-5)
    from open_clip_align.losses import NegCLIPLoss
    assert out["contrastive_loss"].item() == pytest.approx(
        NegCLIPLoss()(image, text, scale, neg, valid).item(), rel=1e-6)


def test_the_imported_method_is_listed_with_its_flags():
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "training.main", "--import", "examples/custom_method.py", "--help"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--loss negclip-margin" in proc.stdout and "--margin-weight" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "training.main", "--import", "examples/nope.py", "--loss", "x"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--import examples/nope.py: no such file" in bad.stderr
    assert "Traceback" not in bad.stderr
