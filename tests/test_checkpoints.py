"""Kill-safe checkpoints through training.main: atomic saves, and --resume latest past a file that does not load."""
import multiprocessing
import os
import re
import signal

import pytest
import torch

from conftest import train_argv
from open_clip_align.checkpoints import atomic_write
from training.main import main as plugin_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _own_log_handlers(own_log_handlers):
    """Every test here drops the log handlers its in-process runs add (see conftest)."""


def _argv(tmp_path, tiny_csv, epochs, *extra):
    argv = train_argv(tmp_path, "run", "--model", "hardneg-tiny-ViT", "--loss", "clip", "--hardneg-format", "csv",
                      "--train-data", str(tiny_csv), *extra)
    argv[argv.index("--epochs") + 1] = str(epochs)
    return argv


def _ckpt(tmp_path, epoch):
    return torch.load(tmp_path / "logs" / "run" / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)


def _resumed_log(tmp_path):
    """out.log (in-process runs of one test both append to it, possibly twice per line: compare distinct lines)."""
    return (tmp_path / "logs" / "run" / "out.log").read_text()


def test_resume_latest_skips_a_truncated_newest_checkpoint(tmp_path, tiny_csv):
    assert plugin_main(_argv(tmp_path, tiny_csv, 2)) is None
    folder = tmp_path / "logs" / "run" / "checkpoints"
    torn = folder / "epoch_2.pt"
    torn.write_bytes(torn.read_bytes()[:torn.stat().st_size // 2])  # what a kill during the save used to leave
    assert plugin_main(_argv(tmp_path, tiny_csv, 3, "--resume", "latest")) is None
    log = _resumed_log(tmp_path)
    skipped = {line.split(" | ", 1)[1] for line in log.splitlines() if "skipping" in line}
    assert len(skipped) == 1 and str(torn) in min(skipped) and "cannot be loaded" in min(skipped), log
    assert re.search(r"=> resuming checkpoint '.*epoch_1\.pt' \(epoch 1\)", log), log
    assert (_ckpt(tmp_path, 2)["epoch"], _ckpt(tmp_path, 3)["epoch"]) == (2, 3)  # epochs 2 and 3 ran again
    steps = [s["step"].item() for s in _ckpt(tmp_path, 3)["optimizer"]["state"].values()]
    assert max(steps) == 3 * (16 // 4)  # epoch 1's optimizer state + two more epochs of 4 steps


def _killed_during_the_second_save(argv):
    """training.main whose torch.save of epoch_2.pt writes half the bytes, then the process is SIGKILLed."""
    real = torch.save

    def torn(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)) and "epoch_2.pt" in os.fspath(f):
            os.truncate(f, os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = torn
    plugin_main(argv)


def test_a_save_killed_mid_write_leaves_only_a_temp_file_that_resume_ignores(tmp_path, tiny_csv):
    child = multiprocessing.get_context("fork").Process(target=_killed_during_the_second_save,
                                                        args=(_argv(tmp_path, tiny_csv, 2),))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    folder = tmp_path / "logs" / "run" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["epoch_1.pt"]  # no torn epoch_2.pt
    temps = [p for p in folder.iterdir() if p.name != "epoch_1.pt"]
    assert len(temps) == 1 and re.fullmatch(r"\.epoch_2\.pt\.\d+\.[0-9a-f]{8}\.tmp", temps[0].name), temps
    assert plugin_main(_argv(tmp_path, tiny_csv, 2, "--resume", "latest")) is None
    log = _resumed_log(tmp_path)
    assert re.search(r"=> resuming checkpoint '.*epoch_1\.pt' \(epoch 1\)", log), log
    assert "temp file(s) of interrupted saves" in log and temps[0].name in log
    assert _ckpt(tmp_path, 2)["epoch"] == 2
    temps[0].unlink()  # removable: nothing refers to it


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "epoch_1.pt"
    target.write_bytes(b"old")

    def fails(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fails)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["epoch_1.pt"]
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"new"))
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["epoch_1.pt"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # the permissions a plain open gives


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
