"""training.alignvlm's trainer features on the tiny concat model (hardneg-tiny-ViT + tiny-llama, CPU): gradient
accumulation equal to one big batch, gradient checkpointing, --report-to (missing packages, and the scalars a
writer gets), --vocab-subset (a file, top-N against an independent calibration), --config YAML with command-line
overrides, atomic checkpoints and --resume latest passing over a truncated newest checkpoint."""
import json
import math
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import torch

from open_clip_align.vlm import checkpoint as vlm_checkpoint
from open_clip_align.vlm.build import build_model
from open_clip_align.vlm.caption_data import CaptionTableLoader, read_caption_table
from open_clip_align.vlm.checkpoint import list_checkpoints, load_checkpoint
from open_clip_align.vlm.train import flags as train_flags
from open_clip_align.vlm.train.model_setup import model_config
from training import alignvlm

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(tmp, data, name, *extra):
    return ["--train-data", str(data), "--model", "hardneg-tiny-ViT", "--lm", "tiny-llama", "--workers", "0",
            "--logs", str(tmp / "logs"), "--name", name, "--log-every", "1", "--device", "cpu", "--seed", "0", *extra]


def _connector(ckpt) -> dict:
    return torch.load(Path(ckpt) / "connector" / "alignvlm_connector.pt", weights_only=True)


def _metrics(run_dir) -> list:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _cli(monkeypatch, capsys, argv) -> str:
    monkeypatch.setattr(sys, "argv", ["training.alignvlm", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        alignvlm.cli()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_accum_freq_equals_one_batch_of_accum_x_batch(tmp_path, tiny_csv):
    """Stage B (LM + connector): 2 x 2 accumulated == one batch of 4, step for step; resume keeps the data position."""
    common = ("--stage", "B", "--steps", "4", "--lr", "3e-3", "--save-every", "2", "--keep-last", "0")
    big = alignvlm.main(_argv(tmp_path, tiny_csv, "big", *common, "--batch-size", "4"))
    acc = alignvlm.main(_argv(tmp_path, tiny_csv, "acc", *common, "--batch-size", "2", "--accum-freq", "2"))
    assert acc["losses"] == pytest.approx(big["losses"], rel=1e-5)
    for key, value in _connector(big["checkpoint"]).items():
        torch.testing.assert_close(_connector(acc["checkpoint"])[key], value, rtol=1e-4, atol=1e-6)
    config = json.loads((Path(acc["checkpoint"]) / "run_config.json").read_text())["training"]
    assert config["accum_freq"] == 2 and config["steps_per_epoch"] == 4 and config["batch_size"] == 2
    assert [m["samples_per_s"] > 0 for m in _metrics(acc["run_dir"])] == [True] * 4
    step2 = Path(acc["run_dir"]) / "checkpoints" / "step_00000002"
    resumed = alignvlm.main(_argv(tmp_path, tiny_csv, "acc2", *common, "--batch-size", "2", "--accum-freq", "2",
                                  "--resume", str(step2)))
    assert resumed["losses"] == acc["losses"][2:]


def test_accum_freq_larger_than_an_epoch_is_refused(tmp_path, tiny_csv, monkeypatch, capsys):
    err = _cli(monkeypatch, capsys, _argv(tmp_path, tiny_csv, "x", "--batch-size", "4", "--accum-freq", "5"))
    assert "--accum-freq 5: an epoch has 4 batch(es) per process, fewer than one optimizer step" in err
    err = _cli(monkeypatch, capsys, _argv(tmp_path, tiny_csv, "x", "--accum-freq", "0"))
    assert "--accum-freq must be at least 1, got 0" in err


def test_grad_checkpointing_recomputes_and_gives_the_same_numbers(tmp_path, tiny_csv, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    flags = ("--stage", "B", "--steps", "2", "--lr", "3e-3", "--batch-size", "4")
    plain = alignvlm.main(_argv(tmp_path, tiny_csv, "plain", *flags))
    calls = []
    real = modeling_utils.checkpoint
    monkeypatch.setattr(modeling_utils, "checkpoint", lambda *a, **k: (calls.append(k), real(*a, **k))[1])
    ckpt = alignvlm.main(_argv(tmp_path, tiny_csv, "gc", *flags, "--grad-checkpointing"))
    assert len(calls) == 2 * 2 and all(k.get("use_reentrant") is False for k in calls)   # 2 layers x 2 steps
    assert ckpt["losses"] == pytest.approx(plain["losses"], rel=1e-6)
    assert "gradient checkpointing" in (Path(ckpt["run_dir"]) / "out.log").read_text()


def test_report_to_needs_its_package(tmp_path, tiny_csv, monkeypatch, capsys):
    real = train_flags.importlib.util.find_spec
    monkeypatch.setattr(train_flags.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("tensorboard", "wandb") else real(name, *a, **k))
    for name in ("tensorboard", "wandb"):
        err = _cli(monkeypatch, capsys, _argv(tmp_path, tiny_csv, "x", "--report-to", name))
        assert f"--report-to {name} needs the {name} package (pip install {name})" in err
    err = _cli(monkeypatch, capsys, _argv(tmp_path, tiny_csv, "x", "--report-to", "mlflow"))
    assert "unknown 'mlflow'; expected tensorboard and/or wandb" in err
    assert not (tmp_path / "logs" / "x").exists()


def test_report_to_logs_every_logged_step(tmp_path, tiny_csv, monkeypatch):
    scalars, wandb_calls = [], {}

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            wandb_calls["tb_dir"] = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            wandb_calls["tb_closed"] = True

    class Run:
        def log(self, values, step):
            wandb_calls.setdefault("log", []).append((step, values))

        def finish(self):
            wandb_calls["finished"] = True

    def init(**kwargs):
        wandb_calls["init"] = kwargs
        return Run()

    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = Writer
    wandb = types.ModuleType("wandb")
    wandb.init, wandb.__spec__ = init, ModuleSpec("wandb", None)
    fake_tb_package = types.ModuleType("tensorboard")
    fake_tb_package.__spec__ = ModuleSpec("tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)
    monkeypatch.setitem(sys.modules, "tensorboard", fake_tb_package)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    run = alignvlm.main(_argv(tmp_path, tiny_csv, "rep", "--batch-size", "4", "--steps", "3",
                              "--report-to", "tensorboard,wandb"))
    logged = _metrics(run["run_dir"])
    assert [(s, v) for t, v, s in scalars if t == "train/loss"] == [(m["step"], m["loss"]) for m in logged]
    assert {t for t, _, _ in scalars} >= {"train/lr", "train/p_entropy", "train/p_max_prob", "train/p_top100_mass"}
    assert wandb_calls["tb_dir"] == str(Path(run["run_dir"]) / "tensorboard") and wandb_calls["tb_closed"]
    assert wandb_calls["init"]["name"] == "rep" and wandb_calls["init"]["config"]["training"]["steps"] == 3
    assert [s for s, _ in wandb_calls["log"]] == [1, 2, 3] and wandb_calls["finished"]


def test_vocab_subset_from_a_file(tmp_path, tiny_csv, monkeypatch, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("13 5\n9,7\n\n11\n")
    run = alignvlm.main(_argv(tmp_path, tiny_csv, "file", "--batch-size", "4", "--steps", "2", "--save-every", "1",
                              "--keep-last", "0", "--vocab-subset", str(ids)))
    settings = json.loads((Path(run["checkpoint"]) / "connector" / "alignvlm_connector.json").read_text())
    assert settings["vocab_subset"] == [5, 7, 9, 11, 13]
    assert all(m["p_entropy"] <= math.log(5) + 1e-6 for m in _metrics(run["run_dir"]))
    model, _, _, config = load_checkpoint(run["checkpoint"])
    assert model.connector.vocab_subset.tolist() == [5, 7, 9, 11, 13]
    assert config["training"]["vocab_subset"] == str(ids)
    # --resume keeps the saved subset and continues exactly
    step1 = Path(run["run_dir"]) / "checkpoints" / "step_00000001"
    again = alignvlm.main(_argv(tmp_path, tiny_csv, "file2", "--batch-size", "4", "--steps", "2", "--vocab-subset",
                                str(ids), "--resume", str(step1)))
    assert again["losses"] == run["losses"][1:]
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    for text, fragment in (("5 7\n900\n", "bad.txt, line 2: token id 900 is outside the vocabulary [0, 128)"),
                           ("5 x\n", "bad.txt, line 1: 'x' is not a token id"),
                           ("[5, 5]", "token id 5 is listed twice")):
        bad.write_text(text)
        err = _cli(monkeypatch, capsys, _argv(tmp_path, tiny_csv, "x", "--batch-size", "4", "--vocab-subset", bad))
        assert fragment in err, err
    for flags, fragment in ((["--vocab-subset", "top-0"], "N must be at least 1"),
                            (["--vocab-subset", tmp_path / "none.txt"], "expected top-N (e.g. top-4096) or a file"),
                            (["--vocab-subset", "top-8", "--connector", "mlp"], "does not apply to --connector mlp")):
        assert fragment in _cli(monkeypatch, capsys, _argv(tmp_path, tiny_csv, "x", *flags))


def test_vocab_subset_top_n_is_the_top_mean_probability_of_the_first_batches(tmp_path, tiny_csv):
    run = alignvlm.main(_argv(tmp_path, tiny_csv, "top", "--batch-size", "4", "--steps", "1", "--lr", "0",
                              "--vocab-subset", "top-16"))
    saved = json.loads((Path(run["checkpoint"]) / "connector" / "alignvlm_connector.json").read_text())["vocab_subset"]
    # independently: the model as the run builds it (seeded), P over the epoch-0 batches (4 < 8), top-16 by mass
    torch.manual_seed(0)
    args = alignvlm.parse_args(_argv(tmp_path, tiny_csv, "top", "--batch-size", "4"))
    model, tokenizer, preprocess = build_model(model_config(args))
    records = read_caption_table(str(tiny_csv))
    loader = CaptionTableLoader(records, preprocess, model.training_collate(tokenizer, args.prompt, 48), 4, seed=0)
    loader.set_epoch(0, 0)
    with torch.no_grad():
        mass = sum(model.embed_images(b["images"], return_probs=True)[1].reshape(-1, 128).double().sum(0)
                   for b in loader)
    assert saved == sorted(torch.topk(mass, 16).indices.tolist())
    assert "ALIGN's softmax over 16 of 128 tokens" in (Path(run["run_dir"]) / "out.log").read_text()


def test_config_file_keys_are_long_flags_and_the_command_line_wins(tmp_path, tiny_csv, monkeypatch, capsys):
    pytest.importorskip("yaml")
    config = tmp_path / "stage_a.yaml"
    config.write_text(f"train-data: {tiny_csv}\nmodel: hardneg-tiny-ViT\nlm: tiny-llama\nbatch_size: 4\nsteps: 2\n"
                      f"lr: 5.0e-3\n--log-every: 1\nworkers: 0\ndevice: cpu\nlogs: {tmp_path / 'logs'}\n"
                      "grad-checkpointing: true\nwarmup: null\n")
    run = alignvlm.main(["--config", str(config), "--lr", "1e-2", "--name", "cfg"])
    saved = json.loads((Path(run["checkpoint"]) / "run_config.json").read_text())["training"]
    assert (saved["lr"], saved["steps"], saved["batch_size"], saved["total_steps"]) == (1e-2, 2, 4, 2)
    assert "gradient checkpointing" in (Path(run["run_dir"]) / "out.log").read_text()
    capsys.readouterr()
    cases = [("learning_rate: 0.1\n", "key 'learning_rate' is not a flag of training.alignvlm"),
             ("model:\n  model_id: x\n", "key 'model': expected a value, got a mapping"),
             ("lr: 1\nsteps: [1, 2\n", "line 3: not valid YAML"),
             ("lora: 3\n", "key 'lora' is a switch: expected true or false, got 3"),
             ("- lr\n", "expected a mapping of long flags to values")]
    for text, fragment in cases:
        config.write_text(text)
        err = _cli(monkeypatch, capsys, ["--config", config, *_argv(tmp_path, tiny_csv, "x")])
        assert f"--config {config}" in err and fragment in err, err
    err = _cli(monkeypatch, capsys, ["--config", tmp_path / "none.yaml", *_argv(tmp_path, tiny_csv, "x")])
    assert "none.yaml: not found" in err


def test_checkpoints_are_atomic_and_resume_latest_skips_one_that_does_not_load(tmp_path, tiny_csv, monkeypatch):
    flags = ("--batch-size", "4", "--steps", "3", "--save-every", "1", "--keep-last", "0")
    synced = []
    real_fsync = vlm_checkpoint.fsync_path
    monkeypatch.setattr(vlm_checkpoint, "fsync_path", lambda path: (synced.append(Path(path)), real_fsync(path))[1])
    full = alignvlm.main(_argv(tmp_path, tiny_csv, "k", *flags))
    run_dir = Path(full["run_dir"])
    newest = run_dir / "checkpoints" / "step_00000003"
    # every file and folder of a checkpoint was fsync'd under the temporary name, then the parent after the rename
    tmp = newest.with_name("step_00000003.tmp")
    written = {tmp / p.relative_to(newest) for p in newest.rglob("*")} | {tmp}
    assert written <= set(synced) and newest.parent in synced
    # a kill during the save of step 3: its .tmp folder is half-written and never counts as a checkpoint
    state = newest / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])                      # ... or a torn copy of the newest one
    tmp.mkdir()
    (tmp / "run_config.json").write_text("{}")
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000001", "step_00000002", "step_00000003"]
    again = alignvlm.main(_argv(tmp_path, tiny_csv, "k", *flags, "--resume", "latest"))
    assert again["losses"] == full["losses"][2:]
    log = (run_dir / "out.log").read_text()
    skipped = [line for line in log.splitlines() if "skipping" in line]
    assert len(skipped) == 1 and f"--resume latest: skipping {newest}: it does not load" in skipped[0]
    assert "trainer_state.pt: not an AlignVLM trainer state" in skipped[0]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in log
    assert not tmp.exists()                                            # the stale .tmp was dropped
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3]
    # an explicit path to a damaged checkpoint is still an error, and so is a run with no loadable one
    for ckpt in list_checkpoints(run_dir):
        (ckpt / "trainer_state.pt").write_bytes(b"torn")
    with pytest.raises(vlm_checkpoint.CheckpointError, match="none of the 3 checkpoint"):
        alignvlm.main(_argv(tmp_path, tiny_csv, "k", *flags, "--resume", "latest"))
