"""open_clip_train flags × losses: every accepted flag is honoured or refused in one line (flag_rules), and the
run-level bad input of training.main (non-finite numbers, counts, foreign flags, checkpoints, run folders)."""
import re
import sys

import pytest
import torch

import training.main as training_main
from conftest import REPO, train_argv
from open_clip_align import flag_rules
from open_clip_align.methods import get_method
from training.main import main as plugin_main

pytestmark = pytest.mark.usefixtures("one_thread", "own_log_handlers")

MODELS = {"clip": "hardneg-tiny-ViT", "negclip": "hardneg-tiny-ViT", "degla": "degla-tiny-ViT",
          "ce-clip": "hardneg-tiny-ViT", "comalign": "comalign-tiny-ViT"}
VALUES = {"--loss-dist-impl": ["gather"], "--coca-caption-loss-weight": ["1.0"],
          "--coca-contrastive-loss-weight": ["2.0"], "--distill-model": ["ViT-S-32-alt"],
          "--distill-pretrained": ["x.pt"], "--lock-image-unlocked-groups": ["1"], "--lock-text-unlocked-layers": ["1"],
          "--force-patch-dropout": ["0.5"], "--aug-cfg": ["scale=(0.5,1.0)"], "--force-image-size": ["48"],
          "--image-mean": ["0.5", "0.5", "0.5"], "--image-std": ["0.5", "0.5", "0.5"],
          "--image-interpolation": ["bilinear"], "--image-resize-mode": ["squash"],
          "--use-bnb-linear": ["SwitchBackLinear"], "--train-data-upsampling-factors": ["1"],
          "--train-num-samples": ["8"]}
ORDER = ("clip", "negclip", "degla", "ce-clip", "comalign")
CASES = [(flag, loss) for loss in ORDER
         for rule in (*get_method(loss).refused_flags, *flag_rules.GENERIC_RULES) for flag in rule.flags]


def _loss_argv(tmp_path, loss, *extra):
    data = (["--comalign-data", "features", "--train-data", str(tmp_path / "store.h5")] if loss == "comalign"
            else ["--hardneg-format", "csv", "--train-data", str(tmp_path / "train.csv")])
    return train_argv(tmp_path, "run", "--model", MODELS[loss], "--loss", loss, *data, *extra)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_readme_table_is_the_rules_table():
    readme = (REPO / "README.md").read_text()
    assert flag_rules.markdown_table([get_method(name) for name in ORDER]) in readme


@pytest.mark.parametrize("flag,loss", CASES, ids=[f"{f}-{l}" for f, l in CASES])
def test_every_refused_flag_is_one_line_naming_it(tmp_path, capsys, flag, loss):
    with pytest.raises(SystemExit) as exited:
        plugin_main(_loss_argv(tmp_path, loss, flag, *VALUES.get(flag, [])))
    assert exited.value.code == 2
    line = _one_error_line(capsys)
    assert flag in line and f"--loss {loss}" in line
    assert not (tmp_path / "logs").exists()  # refused before any work


def _run(tmp_path, name, loss, *extra):
    argv = _loss_argv(tmp_path, loss, *extra)
    argv[argv.index("--name") + 1] = name
    assert plugin_main(argv) is None
    return torch.load(tmp_path / "logs" / name / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("loss", ["negclip", "degla", "ce-clip"])
def test_the_flags_marked_as_working_train_and_are_honoured(tmp_path, tiny_csv, loss):
    """One run per hard-negative loss with every ✓ flag of the table that changes the model or the step."""
    (tmp_path / "train.csv").symlink_to(tiny_csv)
    (tmp_path / "img").symlink_to(tiny_csv.parent / "img")
    state = _run(tmp_path, loss, loss, "--lock-image", "--lock-text", "--lock-text-freeze-layer-norm",
                 "--grad-checkpointing", "--accum-freq", "2",
                 "--gather-with-grad", "--force-patch-dropout", "0.5", "--force-image-size", "48",
                 "--force-context-length", "24", "--grad-clip-norm", "1.0", "--aug-cfg", "scale=(0.8,1.0)",
                 *(["--local-loss"] if loss != "ce-clip" else []))
    assert state["positional_embedding"].shape[0] == 24  # the context length was honoured
    side = 48 // 16  # hardneg-tiny-ViT: patch 16
    assert state["visual.positional_embedding"].shape[0] == side * side + 1


def test_siglip_with_clip_loss_learns_a_logit_bias(tmp_path, tiny_csv):
    (tmp_path / "train.csv").symlink_to(tiny_csv)
    (tmp_path / "img").symlink_to(tiny_csv.parent / "img")
    state = _run(tmp_path, "siglip", "clip", "--siglip")
    assert "logit_bias" in state and state["logit_bias"].item() != -10.0


# ------------------------------------------------------------------------------------- run-level bad input

@pytest.mark.parametrize("extra,message", [
    (["--degla-igc-weight", "nan"], r"--degla-igc-weight: expected a finite number, got nan"),
    (["--degla-tgc-scale", "inf"], r"--degla-tgc-scale: expected a finite number, got inf"),
    (["--lr", "nan"], r"--lr: expected a finite number"),
    (["--epochs", "0"], r"--epochs: expected an integer >= 1, got 0"),
    (["--epochs", "-1"], r"--epochs: expected an integer >= 1, got -1"),
    (["--batch-size", "0"], r"--batch-size: expected an integer >= 1, got 0"),
    (["--accum-freq", "0"], r"--accum-freq: expected an integer >= 1"),
    (["--ceclip-imc-weight", "0.5"], r"--ceclip-imc-weight needs --loss ce-clip \(it configures that method\); this run trains --loss degla"),
    (["--comalign-temperature", "0.1"], r"--comalign-temperature needs --loss comalign"),
    (["--pretrained", "none"], r"'none' is neither a file nor a tag of .*no pretrained tags; leave "
                               r"--pretrained out"),
], ids=["nan", "inf", "lr-nan", "epochs-0", "epochs-neg", "batch-0", "accum-0", "ceclip-flag", "comalign-flag",
        "pretrained-none"])
def test_run_level_bad_input_is_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exited:
        plugin_main(_loss_argv(tmp_path, "degla", *extra))
    assert exited.value.code == 2
    assert re.search(message, _one_error_line(capsys))
    assert not (tmp_path / "logs").exists()


def test_lock_text_on_a_clip_model_asks_for_frozen_layer_norms(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plugin_main(_loss_argv(tmp_path, "negclip", "--lock-text"))
    assert "add --lock-text-freeze-layer-norm" in _one_error_line(capsys)


def test_degla_flags_with_another_loss_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plugin_main(_loss_argv(tmp_path, "negclip", "--degla-igc-weight", "0.3"))
    assert "--degla-igc-weight needs --loss degla (it configures that method); this run trains --loss negclip" in _one_error_line(capsys)
    with pytest.raises(SystemExit):
        plugin_main(_loss_argv(tmp_path, "negclip", "--ema-decay", "0.9"))
    assert "--ema-decay needs --loss degla" in _one_error_line(capsys)


def test_openai_weights_on_a_gelu_model_name_the_quickgelu_model(tmp_path, capsys):
    argv = train_argv(tmp_path, "qg", "--model", "ViT-B-32", "--pretrained", "openai", "--dataset-type", "synthetic",
                      "--train-num-samples", "8")
    with pytest.raises(SystemExit):
        plugin_main(argv)
    line = _one_error_line(capsys)
    assert "--model ViT-B-32-quickgelu" in line and "QuickGELU" in line and "--force-quick-gelu" in line


@pytest.mark.parametrize("content,message", [
    (b"\x00garbage, not a checkpoint" * 10, "is not a checkpoint"),
    (None, "cannot be loaded as a checkpoint"),  # a real checkpoint cut in half
], ids=["random-bytes", "truncated"])
def test_unreadable_pretrained_and_resume_files_are_one_line(tmp_path, tiny_csv, capsys, monkeypatch, content,
                                                             message):
    bad = tmp_path / "bad.pt"
    if content is None:
        torch.save({"visual.w": torch.zeros(1000)}, tmp_path / "whole.pt")
        data = (tmp_path / "whole.pt").read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    common = ["--model", "hardneg-tiny-ViT", "--loss", "negclip", "--hardneg-format", "csv",
              "--train-data", str(tiny_csv)]
    for flag, name in (("--pretrained", "p"), ("--resume", "r")):
        monkeypatch.setattr(sys, "argv", ["training.main", *train_argv(tmp_path, name, *common, flag, str(bad))])
        with pytest.raises(SystemExit) as exited:
            training_main.cli()
        assert exited.value.code == 2
        line = _one_error_line(capsys)
        assert flag in line and str(bad) in line and message in line and "weights_only" not in line


def test_a_used_run_folder_says_how_to_continue(tmp_path, tiny_csv, capsys):
    common = ["--model", "hardneg-tiny-ViT", "--loss", "negclip", "--hardneg-format", "csv",
              "--train-data", str(tiny_csv)]
    (tmp_path / "logs" / "again").mkdir(parents=True)
    (tmp_path / "logs" / "again" / "out.log").write_text("a failed run\n")
    with pytest.raises(SystemExit):
        plugin_main(train_argv(tmp_path, "again", *common))
    line = _one_error_line(capsys)
    assert "already holds a run" in line and "--resume latest" in line and "remove" in line and "{}" not in line


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(training_main, "main", interrupted)
    monkeypatch.setattr(sys, "argv", ["training.main"])
    with pytest.raises(SystemExit) as exited:
        training_main.cli()
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "--resume latest" in err

