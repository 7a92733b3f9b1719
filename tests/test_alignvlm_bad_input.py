"""Bad input to the AlignVLM CLIs (training.alignvlm, vlm.evaluate, vlm.noise), tried as a new user would: corrupt
or foreign checkpoints, unwritable --out, non-finite and out-of-range numbers, wrong kinds of files. Each gives one
line naming the file or flag (exit 2) before any work, never torch's traceback or its weights_only advice."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from open_clip_align.vlm import evaluate, noise
from training import alignvlm

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _train_argv(tmp, data, name, *extra):
    return ["--train-data", str(data), "--model", "hardneg-tiny-ViT", "--lm", "tiny-llama", "--batch-size", "4",
            "--workers", "0", "--logs", str(tmp / "logs"), "--name", name, "--device", "cpu", "--steps", "2", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_csv):
    """A 2-step stage A run (align connector) and a Karpathy file over 2 of its images."""
    tmp = tmp_path_factory.mktemp("bad_input")
    summary = alignvlm.main(_train_argv(tmp, tiny_csv, "a"))
    karpathy = tmp / "k.json"
    karpathy.write_text(json.dumps([{"image": str(tiny_csv.parent / "img" / f"{i}.png"), "caption": ["a square"]}
                                    for i in range(2)]))
    return {"tmp": tmp, "ckpt": Path(summary["checkpoint"]), "karpathy": karpathy, "csv": tiny_csv}


def _broken(run, tmp_path, name, damage) -> Path:
    """A copy of the run's checkpoint with one file damaged by ``damage(checkpoint_dir)``."""
    copy = tmp_path / name
    shutil.copytree(run["ckpt"], copy)
    damage(copy)
    return copy


def _connector(ckpt: Path) -> Path:
    return ckpt / "connector" / "alignvlm_connector.pt"


def _random_bytes(path: Path):
    path.write_bytes(torch.randint(0, 256, (3000,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[:2000])


def _other_vocab(ckpt: Path):
    state = torch.load(_connector(ckpt), weights_only=True)
    state["w2.weight"] = torch.zeros(300, state["w2.weight"].shape[1])
    torch.save(state, _connector(ckpt))


def _mlp_state(ckpt: Path):
    torch.save({"fc1.weight": torch.zeros(8, 64), "fc1.bias": torch.zeros(8)}, _connector(ckpt))


CORRUPT = {  # name -> (damage, fragments of the one-line message)
    "random-bytes": (lambda c: _random_bytes(_connector(c)),
                     ["alignvlm_connector.pt", "not the weights of an AlignVLM align connector", "truncated, damaged"]),
    "truncated": (lambda c: _truncate(_connector(c)),
                  ["alignvlm_connector.pt", "not the weights of an AlignVLM align connector"]),
    "other-vocab": (_other_vocab, ["alignvlm_connector.pt", "w2.weight (300, 64) vs (128, 64)"]),
    "other-type": (_mlp_state, ["alignvlm_connector.pt", "missing w1.weight", "unexpected fc1.weight"]),
    "settings-json": (lambda c: (c / "connector" / "alignvlm_connector.json").write_text("{oops"),
                      ["alignvlm_connector.json", "not an AlignVLM connector settings file"]),
    "other-type-settings": (lambda c: (c / "connector" / "alignvlm_connector.json").write_text(
        (c / "connector" / "alignvlm_connector.json").read_text().replace('"align"', '"mlp"')),
        ["alignvlm_connector.json", "connector_type='mlp' does not match this model's 'align'"]),
    "tower": (lambda c: _random_bytes(c / "vision_tower.pt"), ["vision_tower.pt", "not the weights of an AlignVLM "
                                                                                  "vision tower"]),
    "run-config": (lambda c: (c / "run_config.json").write_text("[1]"), ["run_config.json",
                                                                        "not an AlignVLM run config"]),
}


def _cli(module, monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["x", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        module.cli()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "weights_only" not in err, err
    return err


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_or_foreign_checkpoint_is_named_everywhere_it_is_read(run, tmp_path, monkeypatch, capsys, case):
    damage, fragments = CORRUPT[case]
    ckpt = _broken(run, tmp_path, case, damage)
    uses = {"evaluate": (evaluate, ["--checkpoint", ckpt, "--data", run["karpathy"], "--out", tmp_path / "o"]),
            "init-from": (alignvlm, _train_argv(tmp_path, run["csv"], "b", "--stage", "B", "--init-from", ckpt)),
            "resume": (alignvlm, _train_argv(tmp_path, run["csv"], "c", "--resume", ckpt))}
    for use, (module, argv) in uses.items():
        err = _cli(module, monkeypatch, capsys, argv)
        assert all(f in err for f in fragments), (use, err)
    assert not (tmp_path / "o").exists() and not list((tmp_path / "logs").glob("*/checkpoints/*"))


def test_a_corrupt_or_missing_trainer_state_stops_resume(run, tmp_path, monkeypatch, capsys):
    bad = _broken(run, tmp_path, "state", lambda c: _random_bytes(c / "trainer_state.pt"))
    err = _cli(alignvlm, monkeypatch, capsys, _train_argv(tmp_path, run["csv"], "c", "--resume", bad))
    assert "trainer_state.pt: not an AlignVLM trainer state" in err
    gone = _broken(run, tmp_path, "nostate", lambda c: (c / "trainer_state.pt").unlink())
    err = _cli(alignvlm, monkeypatch, capsys, _train_argv(tmp_path, run["csv"], "c", "--resume", gone))
    assert "trainer_state.pt: not found" in err and "--init-from" in err


def test_resume_drops_a_torn_metrics_line(run, tmp_path):
    """A kill while metrics.jsonl was written leaves half a line; --resume latest drops it and goes on."""
    flags = ("--save-every", "1", "--keep-last", "0", "--log-every", "1")
    full = alignvlm.main(_train_argv(tmp_path, run["csv"], "m", *flags))
    shutil.rmtree(Path(full["checkpoint"]))
    metrics = Path(full["run_dir"]) / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + '\n{"step": 2, "lo')
    again = alignvlm.main(_train_argv(tmp_path, run["csv"], "m", *flags, "--resume", "latest"))
    assert again["losses"] == full["losses"][1:]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("flags,fragment", [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--wd", "inf"], "--wd must be a finite number, got inf"),
    (["--w2-lr-mult=-inf"], "--w2-lr-mult must be a finite number"),
    (["--stage", "B", "--lora-dropout", "nan"], "--lora-dropout must be a finite number"),
    (["--lr", "-1"], "--lr must be at least 0, got -1"),
    (["--w2-lr-mult", "-0.5"], "--w2-lr-mult must be at least 0"),
    (["--stage", "B", "--lora", "--lora-dropout", "1"], "--lora-dropout must be below 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--batch-size", "-4"], "--batch-size must be at least 1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--warmup", "-5"], "--warmup must be at least 0"),
    (["--workers", "-1"], "--workers must be at least 0"),
    (["--reduction", "avg_pool", "--reduction-factor", "0"], "--reduction-factor must be at least 1"),
    (["--stage", "B", "--lora", "--lora-r", "0"], "--lora-r must be at least 1"),
    (["--keep-last", "-1"], "--keep-last must be at least 0"),
    (["--train-num-samples", "0"], "--train-num-samples must be at least 1"),
    (["--device", "tpu"], "--device tpu: expected cpu, cuda or cuda:N"),
    (["--pretrained", "{junk}"], "is not a checkpoint"),
    (["--pretrained", "{dir}"], "is a directory; expected a checkpoint file or a pretrained tag"),
    (["--lm", "{junk}"], "--lm {junk}: a file, but not a .gguf file"),
    (["--lm", "{junk_gguf}"], "not a GGUF file"),
    (["--train-data", "{dir}"], "is a folder; expected a CSV/TSV file"),
    (["--csv-separator", ""], "--csv-separator must not be empty"),
])
def test_training_flags_are_checked_before_any_work(run, tmp_path, monkeypatch, capsys, flags, fragment):
    junk = tmp_path / "junk.pt"
    _random_bytes(junk)
    shutil.copy(junk, tmp_path / "junk.gguf")
    names = {"{junk}": str(junk), "{junk_gguf}": str(tmp_path / "junk.gguf"), "{dir}": str(tmp_path)}
    argv = _train_argv(tmp_path, run["csv"], "x")
    for k, v in names.items():
        flags = [f.replace(k, v) for f in flags]
        fragment = fragment.replace(k, v)
    err = _cli(alignvlm, monkeypatch, capsys, [*argv, *flags])
    assert fragment in err, err
    assert not (tmp_path / "logs" / "x").exists()


def test_eval_out_is_checked_before_the_evaluation(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    base = ["--checkpoint", run["ckpt"], "--data", run["karpathy"]]
    calls = []
    monkeypatch.setattr(evaluate, "load_checkpoint", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(noise, "load_checkpoint", lambda *a, **k: calls.append(a))
    for out, fragment in ((tmp_path / "file" / "o", "file is a file, not a folder"),
                          (tmp_path / "file", "exists and is not a folder")):
        err = _cli(evaluate, monkeypatch, capsys, [*base, "--out", out])
        assert err.startswith("open_clip_align.vlm.evaluate: error: --out ") and fragment in err, err
        err = _cli(noise, monkeypatch, capsys, ["--checkpoint", f"a={run['ckpt']}", "--data", run["karpathy"],
                                                "--sigma", "1", "--out", out])
        assert err.startswith("open_clip_align.vlm.noise: error: --out ") and fragment in err, err
    assert not calls


@pytest.mark.parametrize("flags,fragment", [
    (["--sigma", "nan"], "--sigma must be a finite number, got nan"),
    (["--relative-sigma", "1", "inf"], "--relative-sigma must be a finite number, got inf"),
    (["--sigma", "1", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--sigma", "1", "--num-beams", "0"], "--num-beams must be at least 1"),
    (["--sigma", "1", "--limit", "0"], "--limit must be at least 1"),
    (["--sigma", "1", "--device", "tpu"], "--device tpu: expected cpu, cuda or cuda:N"),
])
def test_noise_flags(run, tmp_path, monkeypatch, capsys, flags, fragment):
    err = _cli(noise, monkeypatch, capsys, ["--checkpoint", f"a={run['ckpt']}", "--data", run["karpathy"], "--out",
                                            tmp_path / "o", *flags])
    assert fragment in err and not (tmp_path / "o").exists()


def test_eval_inputs_of_the_wrong_kind(run, tmp_path, monkeypatch, capsys):
    binary = tmp_path / "data.json"
    _random_bytes(binary)
    base = ["--out", tmp_path / "o"]
    cases = [(["--checkpoint", run["ckpt"] / "run_config.json", "--data", run["karpathy"]],
              "run_config.json: is a file; expected an AlignVLM checkpoint folder"),
             (["--checkpoint", run["ckpt"], "--data", tmp_path], "is a folder; expected a Karpathy-format JSON file"),
             (["--checkpoint", run["ckpt"], "--data", binary], "data.json is not valid JSON (not UTF-8 text)"),
             (["--checkpoint", run["ckpt"], "--data", run["karpathy"], "--device", "gpu"], "--device gpu")]
    for argv, fragment in cases:
        err = _cli(evaluate, monkeypatch, capsys, [*argv, *base])
        assert fragment in err, err
    assert not (tmp_path / "o").exists()
