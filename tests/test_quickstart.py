"""The quickstart end to end on the tiny ShapeCrepe preset: data, four checkpoints validated during training, the
table, JSON and chart read from the training logs, the time per stage, resume."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from open_clip_align.data.synthetic import caption_words
from open_clip_align.eval.report import read_results


def _quickstart(out, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(REPO / "scripts" / "quickstart.py"), "--out", str(out), "--preset", "ci",
           "--pretrain-batch-size", "16", "--finetune-batch-size", "16", "--pretrain-epochs", "1",
           "--finetune-epochs", "1", "--workers", "0", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _module():
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "scripts" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        assert set(bow["image_to_text"]) == {"1", "5"}
    assert set(results["swap_gaps"]) == {"negclip_minus_clip", "degla_minus_clip"}
    assert set(results["swap_gaps"]["degla_minus_clip"]["heldout"]) == {"swap_obj", "swap_att"}
    assert set(results["general_mean_r1"]) == set(results["arms"])
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "swap_att" in stdout and "degla" in stdout and "BoW t->i R@1" in stdout and "epoch 1/1" in stdout
    for name in ("pretrain", "finetune-clip", "finetune-negclip", "finetune-degla"):
        assert (out / "logs" / name / "checkpoints" / "epoch_1.pt").is_file()
    degla_params = (out / "logs" / "finetune-degla" / "params.txt").read_text()
    assert "model: degla-shapes-tiny-ViT" in degla_params and "loss: degla" in degla_params

    # the numbers are the training runs' own validation records (--val-benchmark), not a separate pass
    assert stdout.count("validated") == 4 and "val_benchmark: ['synthetic=" in degla_params
    for arm, name in (("pretrained", "pretrain"), ("degla", "finetune-degla")):
        path = out / "logs" / name / "benchmarks" / "epoch_1.json"
        records = {r["dataset"]: r["metrics"] for r in read_results(path)}
        assert results["arms"][arm]["heldout"] == records["shapecrepe/heldout/sugar_crepe"]
        recall = records["mscoco_captions"]["text_to_image"]["5"]
        assert results["arms"][arm]["general"]["bag_of_words_retrieval"]["text_to_image"]["5"] == recall
    assert "teacher/shapecrepe/iid/sugar_crepe" in {r["dataset"] for r in read_results(
        out / "logs" / "finetune-degla" / "benchmarks" / "epoch_1.json")}
    bow_set = json.loads((out / "data" / "bow_retrieval" / "coco_karpathy_test.json").read_text())
    assert len(bow_set) == 100 and all(e["image"].startswith("../sugarcrepe/iid/val2017/") for e in bow_set)
    first = json.loads((out / "data" / "sugarcrepe" / "iid" / "replace_obj.json").read_text())["0"]
    entry = next(e for e in bow_set if e["image"].endswith("/" + first["filename"]))
    assert sorted(entry["caption"][0].split()) == sorted(caption_words(first["caption"]))

    # the time per stage, printed and recorded
    stages = [s["stage"] for s in results["stages"]]
    assert stages == ["python start-up, imports", "data generation", "pretrain", "fine-tunes (3 at a time)",
                      "report (table, chart)"]
    finetunes = results["stages"][3]["note"]
    assert all(f"finetune-{loss} " in finetunes for loss in ("clip", "negclip", "degla")), finetunes
    assert results["seconds"] == pytest.approx(sum(s["seconds"] for s in results["stages"]), abs=0.5)
    assert "(validation " in stdout and stdout.rstrip().splitlines()[-2].startswith("total")

    again = _quickstart(out)  # everything is there: no stage reruns, same numbers
    assert again.count("skipping") == 5
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]

    # the fine-tunes one after another give the same numbers as all three at once, bit for bit
    _quickstart(tmp_path / "one_at_a_time", "--parallel", "1")
    assert json.loads((tmp_path / "one_at_a_time" / "results.json").read_text())["arms"] == results["arms"]


def test_validation_seconds_from_an_open_clip_train_log(tmp_path):
    log = tmp_path / "out.log"
    log.write_text("2026-01-02,03:04:05 | INFO | Train Epoch: 0 [16/32 (50%)] Loss: 1\n"
                   "2026-01-02,03:04:07 | INFO | Train Epoch: 0 [32/32 (100%)] Loss: 1\n"
                   "2026-01-02,03:04:19 | INFO | Benchmarks epoch 1: a: 1.0\n")
    quickstart = _module()
    assert quickstart.validation_seconds(log) == 12
    assert quickstart.validation_seconds(tmp_path / "missing.log") is None
    assert "total" in quickstart.stage_table([("a", 60.0, ""), ("b", 30.0, "note")]).splitlines()[-1]


def test_training_runs_in_a_fork_or_a_fresh_interpreter_alike(tmp_path):
    """The quickstart forks itself for each training run (imports paid once); elsewhere a fresh interpreter: both
    stream the run's output and report its exit status."""
    quickstart = _module()
    for fork in (True, False):
        lines, wait, _ = quickstart.launch(["--help"], tmp_path, 1, fork=fork)
        text = lines.read()
        lines.close()
        assert wait() == 0 and "--val-benchmark" in text and "--hardneg-format" in text, fork
        lines, wait, _ = quickstart.launch(["--no-such-flag"], tmp_path, 1, fork=fork)
        text = lines.read()
        lines.close()
        assert wait() == 2 and "--no-such-flag" in text, fork


class _FakeRun:
    """A stand-in for a training run: a shell command whose output is the run's output."""

    def __init__(self, command: str):
        self.proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE)
        self.lines, self.wait, self.pid = self.proc.stdout, self.proc.wait, self.proc.pid

    def feed(self, chunk):
        pass

    def finish(self):
        if self.wait() != 0:
            raise SystemExit("failed")


def test_a_failing_run_stops_the_runs_beside_it():
    quickstart = _module()
    slow, failing = _FakeRun("echo start; sleep 60"), _FakeRun("exit 3")
    with pytest.raises(SystemExit):
        quickstart.run_all([lambda: slow, lambda: failing], parallel=2)
    assert slow.proc.returncode == -15  # SIGTERM, not left training unwatched


@pytest.mark.parametrize("flag, value", [("--parallel", "0"), ("--threads", "0"), ("--workers", "-1")])
def test_counts_below_their_minimum_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        _module().main([flag, value])
    assert stop.value.code == 2 and f"{flag} must be at least" in capsys.readouterr().err
