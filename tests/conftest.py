"""Shared fixtures: offline mode, the plugin imported, and tiny hard-negative training data on disk."""
import ast
import os
import random
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import open_clip_align  # noqa: E402,F401  (the plugin must be active for every test, as for users)

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}


def _write_tiny_csv(root: Path, rows: int = 16, k: int = 4) -> Path:
    """``rows`` 64-px images of two coloured squares, with captions and ``k`` swapped/replaced negatives."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    names = list(COLOURS)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["filepath\ttitle\tneg_caption"]
    for i in range(rows):
        a, b = rng.sample(names, 2)
        img = Image.new("RGB", (64, 64), (0, 0, 0))
        draw = ImageDraw.Draw(img)
        draw.rectangle([4, 20, 24, 40], fill=COLOURS[a])
        draw.rectangle([40, 20, 60, 40], fill=COLOURS[b])
        img.save(root / "img" / f"{i}.png")
        others = [c for c in names if c not in (a, b)]
        negs = [f"a {b} square left of a {a} square", f"a {others[0]} square left of a {b} square",
                f"a {a} square left of a {others[1]} square", f"a {b} square right of a {a} square"][:k]
        lines.append(f"img/{i}.png\ta {a} square left of a {b} square\t{negs!r}")
    path = root / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    assert len(ast.literal_eval(lines[1].split("\t")[2])) == k
    return path


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    return _write_tiny_csv(tmp_path_factory.mktemp("tinycsv"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run fastest (and steadiest) on one torch thread; restored after
    the module. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def own_log_handlers():
    """open_clip_train adds a stderr and a file handler to the root logger on every in-process run; drop them
    afterwards, so a later test does not write to this test's (then closed) captured stderr or log file."""
    import logging

    before = list(logging.root.handlers)
    yield
    for handler in logging.root.handlers[:]:
        if handler not in before:
            logging.root.removeHandler(handler)
            handler.close()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_argv(tmp_path: Path, name: str, *extra: str) -> list:
    """Common flags for a fast CPU training run that writes only under ``tmp_path``."""
    return ["--logs", str(tmp_path / "logs"), "--name", name, "--device", "cpu", "--precision", "fp32",
            "--workers", "0", "--batch-size", "4", "--epochs", "1", "--lr", "1e-4", "--warmup", "1",
            "--seed", "0", *extra]


def pytest_sessionfinish(session, exitstatus):
    """open_clip_train's setup_logging sets every logger to INFO; quiet torch's exit-time stats dump."""
    import logging
    for name in ["", *logging.root.manager.loggerDict]:
        logging.getLogger(name).setLevel(logging.WARNING)
