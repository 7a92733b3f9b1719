"""Compositional validation during training (``training.main --val-benchmark``): end to end on ShapeCrepe with a
DeGLA model (student and EMA teacher logged, numbers equal to the evaluation CLI's on the saved checkpoint,
--save-best keeps the best one), logging like open_clip_train's evaluate (TensorBoard, W&B, results.jsonl), the
cadence, and one-line refusals of bad flags."""
import json
import sys
import types
from argparse import Namespace

import pytest
import torch

from conftest import train_argv
from open_clip_align.data.synthetic import generate
from open_clip_align.eval import cli, during_training
from open_clip_align.eval.report import flatten_metrics, read_results
from training.main import main as plugin_main

pytestmark = pytest.mark.usefixtures("one_thread")
BEST = "shapecrepe/iid/sugar_crepe/micro"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small ShapeCrepe (4 pairs per subset and split, 1 zero-shot image per class): seconds per evaluation."""
    root = tmp_path_factory.mktemp("valbench") / "shapes"
    generate(root, preset="ci", seed=0, progress=False, test_pairs=4, zeroshot_per_class=1)
    return root


def _lines(run):
    return [json.loads(line) for line in (run / "checkpoints" / "results.jsonl").read_text().splitlines()]


def test_degla_run_logs_student_and_teacher_and_keeps_the_best_checkpoint(tmp_path, tiny_csv, shapes):
    argv = train_argv(tmp_path, "val", "--model", "degla-tiny-ViT", "--loss", "degla", "--hardneg-format", "csv",
                      "--train-data", str(tiny_csv), "--epochs", "2", "--val-benchmark", f"synthetic={shapes}",
                      "--save-best", BEST)
    assert plugin_main(argv) is None
    run = tmp_path / "logs" / "val"
    lines = _lines(run)
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert {BEST, f"teacher/{BEST}", "shapecrepe/heldout/winoground/group", "shapecrepe/iid/zeroshot/top1",
                "shapecrepe/iid/sugar_crepe/subsets/swap_att/acc"} <= set(line)

    # the numbers are the evaluation CLI's on the checkpoint of that epoch (same adapters, same scorer)
    args = cli._parser().parse_args(["--model", "degla-tiny-ViT", "--pretrained", str(run / "checkpoints" /
                                     "epoch_2.pt"), "--benchmark", "synthetic", "--data-root", f"synthetic={shapes}",
                                     "--no-blind", "--quiet", "--batch-size", "4"])
    for record in cli.evaluate(args):
        flat = flatten_metrics(record["metrics"])
        logged = {k[len(record["dataset"]) + 1:]: v for k, v in lines[1].items()
                  if k.startswith(record["dataset"] + "/")}
        assert logged and logged == {k: flat[k] for k in logged}, record["dataset"]

    best = json.loads((run / "checkpoints" / "best.json").read_text())
    values = [line[BEST] for line in lines]
    assert best == {"metric": BEST, "value": max(values), "epoch": 1 + values.index(max(values))}
    saved = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    epoch = torch.load(run / "checkpoints" / f"epoch_{best['epoch']}.pt", weights_only=True)
    assert saved["best"] == {"metric": BEST, "value": best["value"]} and saved["epoch"] == best["epoch"]
    for key in ("visual.conv1.weight", "teacher.visual.conv1.weight", "text_projection"):
        assert torch.equal(saved["state_dict"][key], epoch["state_dict"][key]), key
    records = read_results(run / "benchmarks" / "epoch_2.json")
    assert {"shapecrepe/iid/sugar_crepe", "teacher/shapecrepe/iid/sugar_crepe"} <= {r["dataset"] for r in records}
    assert all(r["protocol"]["epoch"] == 2 and r["pretrained"] == "val/epoch_2" for r in records)


class FakeWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))


def test_wrapped_evaluate_logs_like_upstream_at_its_cadence(tmp_path, shapes, monkeypatch):
    import open_clip

    logged = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(log=lambda data, step: logged.append((data,
                                                                                                         step))))
    seen = []

    def upstream(model, data, epoch, args, tb_writer=None, tokenizer=None):
        seen.append(sorted(data))
        return {"imagenet-zeroshot-val-top1": 0.5}

    evaluate = during_training.wrap_evaluate(upstream)
    model = open_clip.create_model("hardneg-tiny-ViT")
    (tmp_path / "checkpoints").mkdir()
    args = Namespace(val_benchmark=[f"synthetic={shapes}"], val_frequency=2, epochs=3, save_logs=True, wandb=True,
                     checkpoint_path=str(tmp_path / "checkpoints"), model="hardneg-tiny-ViT", name="run", seed=0,
                     device="cpu", batch_size=8, workers=0, accum_freq=2, save_best=None, rank=0, local_rank=0,
                     world_size=1, distributed=False, horovod=False)
    train = types.SimpleNamespace(dataloader=types.SimpleNamespace(num_batches=10))
    data = during_training.mark_for_evaluation(args, {"train": train})
    assert data["val"] is during_training.BENCHMARKS_ONLY
    assert during_training.mark_for_evaluation(args, {"train": train, "imagenet-val": 1}).get("val") is None

    writer = FakeWriter()
    assert evaluate(model, data, 1, args, tb_writer=writer) == {"imagenet-zeroshot-val-top1": 0.5}  # not due
    assert seen == [["train"]] and writer.scalars == [] and logged == []
    metrics = evaluate(model, data, 3, args, tb_writer=writer)  # the last epoch is always due
    assert metrics["imagenet-zeroshot-val-top1"] == 0.5 and "teacher/" + BEST not in metrics
    names = {name for name, _, step in writer.scalars if step == 3}
    assert names == {f"val/{k}" for k in metrics if k != "imagenet-zeroshot-val-top1"}
    (line,) = _lines(tmp_path)
    assert line["epoch"] == 3 and line[BEST] == metrics[BEST]
    (wandb_data, step), = logged
    assert step == 10 // 2 * 3 and wandb_data["epoch"] == 3 and wandb_data[f"val/{BEST}"] == metrics[BEST]


@pytest.mark.parametrize("extra, message", [
    (["--val-benchmark", "nope=x"], "--val-benchmark nope=x: unknown benchmark 'nope'"),
    (["--val-benchmark", "synthetic"], "--val-benchmark synthetic: expected NAME=DIR"),
    (["--val-benchmark", "synthetic=/no/such/dir"], "--val-benchmark synthetic=/no/such/dir: not a directory"),
    (["--val-benchmark", "sugarcrepe={empty}"], "--val-benchmark: sugarcrepe: "),
    (["--save-best", BEST], "--save-best needs --val-benchmark"),
    (["--val-benchmark", "synthetic={shapes}", "--save-best", "shapecrepe/iid/sugar_crepe/mikro"],
     "--save-best shapecrepe/iid/sugar_crepe/mikro: not a metric of --val-benchmark synthetic="),
    (["--val-benchmark", "synthetic={shapes}", "--save-best", f"teacher/{BEST}"], "not a metric"),  # no teacher
    (["--val-benchmark", "synthetic={shapes}", "--save-best", "shapecrepe/iid/sugar_crepe/n_ties"],
     "a count or rank, not a score"),
    (["--val-benchmark", "synthetic={shapes}", "--val-frequency", "0"], "--val-benchmark needs --val-frequency >= 1"),
], ids=["unknown", "no-dir", "missing-dir", "bad-data", "best-alone", "best-unknown", "best-teacher", "best-count",
        "frequency"])
def test_bad_flags_are_refused_in_one_line_before_training(tmp_path, tiny_csv, shapes, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    extra = [e.format(shapes=shapes, empty=tmp_path / "empty") for e in extra]
    argv = train_argv(tmp_path, "bad", "--model", "hardneg-tiny-ViT", "--loss", "negclip", "--hardneg-format", "csv",
                      "--train-data", str(tiny_csv), *extra)
    with pytest.raises(SystemExit) as exc:
        plugin_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "logs" / "bad").exists()
