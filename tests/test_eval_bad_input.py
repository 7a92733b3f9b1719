"""Bad input to the evaluation suite, tried as a new user would: one line naming the file, item or flag, exit 2,
no traceback, and nothing evaluated when the problem is visible up front."""
import argparse
import json
import os
import re

import pytest
import torch

from eval_fixtures import angle_image
from open_clip_align.eval import aro, cli, sugarcrepe, valse, winoground
from open_clip_align.eval.cache import FeatureCache
from open_clip_align.eval.items import EvalDataError, ImageRef

MODEL = "hardneg-tiny-ViT"


# ------------------------------------------------------------------ wrong field types inside benchmark files

@pytest.mark.parametrize("field,value,shown", [("caption", 3, "number 3"), ("caption", None, "null"),
                                                ("negative_caption", ["a"], "a list"), ("filename", 7, "number 7"),
                                                ("caption", "  ", "str '  '")])
def test_sugarcrepe_field_types(tmp_path, field, value, shown):
    (tmp_path / "val2017").mkdir()
    angle_image(tmp_path / "val2017" / "a.png", 0)
    entry = {"filename": "a.png", "caption": "a dog", "negative_caption": "a cat", field: value}
    (tmp_path / "swap_att.json").write_text(json.dumps({"0": {"filename": "a.png", "caption": "x",
                                                              "negative_caption": "y"}, "17": entry}))
    with pytest.raises(EvalDataError, match=rf"swap_att.json: item '17': '{field}' must be a non-empty string, "
                                            rf"got {shown}"):
        sugarcrepe.load_subset(tmp_path, "swap_att")


@pytest.mark.parametrize("field,value", [("caption_0", 5), ("caption_1", None), ("image_0", 3)])
def test_winoground_field_types(tmp_path, field, value):
    angle_image(tmp_path / "a.png", 0)
    good = {"id": 0, "image_0": "a.png", "image_1": "a.png", "caption_0": "x", "caption_1": "y"}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": 9, field: value}) + "\n")
    with pytest.raises(EvalDataError, match=rf"pairs.jsonl: line 2 \(id 9\): '{field}' must be a non-empty string"):
        winoground.load(tmp_path)


@pytest.mark.parametrize("field,value", [("caption", 1), ("foil", None), ("image_file", 12), ("dataset", None)])
def test_valse_field_types(tmp_path, field, value):
    entry = {"dataset": "visual7w", "image_file": "a.png", "caption": "x", "foil": "y",
             "mturk": {"caption": 3, "foil": 0, "other": 0}, field: value}
    (tmp_path / "existence.json").write_text(json.dumps({"e1": entry}))
    with pytest.raises(EvalDataError, match=rf"existence.json: item 'e1': '{field}' must be a non-empty string"):
        valse.load(tmp_path, ["existence"])
    entry = {**entry, field: "a.png" if field == "image_file" else "visual7w" if field == "dataset" else "z",
             "mturk": {"caption": float("nan")}}
    (tmp_path / "existence.json").write_text(json.dumps({"e1": entry}))
    with pytest.raises(EvalDataError, match="item 'e1' lacks a numeric mturk.caption"):
        valse.load(tmp_path, ["existence"])


def test_aro_non_finite_box(tmp_path):
    (tmp_path / "images").mkdir()
    angle_image(tmp_path / "images" / "a.png", 0)
    item = {"image_path": "a.png", "bbox_x": 0, "bbox_y": 0, "bbox_w": 2, "bbox_h": 2, "true_caption": "x",
            "false_caption": "y", "relation_name": "on"}
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps([item, {**item, "bbox_w": float("nan")}]))
    with pytest.raises(EvalDataError, match="item 1: expected numbers bbox_x, bbox_y, bbox_w, bbox_h"):
        aro.load(tmp_path, "vg_relation")


# ------------------------------------------------------------------ the CLI, in process

def _main(capsys, *argv):
    """Run the CLI; returns (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def never_builds(monkeypatch):
    """Evaluation must not start: building a model fails the test."""
    def refuse(args):
        raise AssertionError("the model was built")
    monkeypatch.setattr(cli, "build_scorer", refuse)


@pytest.fixture
def sugar_root(tmp_path):
    """A one-item SugarCrepe folder (every subset)."""
    root = tmp_path / "sugarcrepe"
    (root / "val2017").mkdir(parents=True)
    angle_image(root / "val2017" / "a.png", 0)
    for subset in sugarcrepe.SUBSETS:
        (root / f"{subset}.json").write_text(json.dumps({"0": {"filename": "a.png", "caption": "x",
                                                               "negative_caption": "y"}}))
    return root


def _out_cases(tmp_path):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    return {"is a folder": (tmp_path / "a_dir", "--out .*a_dir: is a folder"),
            "under a file": (tmp_path / "a_file" / "r.json", "--out .*a_file/r.json: .*a_file is a file"),
            "trailing slash": (str(tmp_path / "a_dir") + os.sep, "--out .*a_dir: is a folder")}


@pytest.mark.parametrize("case", ["is a folder", "under a file", "trailing slash"])
def test_out_is_checked_before_anything_is_evaluated(tmp_path, capsys, never_builds, sugar_root, case):
    out, message = _out_cases(tmp_path)[case]
    code, err = _main(capsys, "--model", MODEL, "--benchmark", "sugarcrepe", "--data-root",
                      f"sugarcrepe={sugar_root}", "--out", str(out))
    assert code == 2 and len(err) == 1, err
    assert re.search(message, err[0]), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder(tmp_path, capsys, never_builds, sugar_root):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, err = _main(capsys, "--model", MODEL, "--benchmark", "sugarcrepe", "--data-root",
                          f"sugarcrepe={sugar_root}", "--out", str(locked / "r.json"))
    finally:
        locked.chmod(0o755)
    assert code == 2 and len(err) == 1 and "cannot write" in err[0]


def test_out_in_a_missing_folder_is_created(tmp_path, capsys, sugar_root):
    out = tmp_path / "new" / "deeper" / "r.json"
    cli.main(["--model", MODEL, "--benchmark", "sugarcrepe", "--data-root", f"sugarcrepe={sugar_root}",
              "--no-blind", "--quiet", "--out", str(out)])
    assert json.loads(out.read_text())[0]["dataset"] == "sugar_crepe"


@pytest.mark.parametrize("argv,message", [
    (["--valse-unfiltered"], "--valse-unfiltered applies to --benchmark valse, which is not among --benchmark "
                             "sugarcrepe"),
    (["--retrieval-max-captions", "5"], "--retrieval-max-captions applies to --benchmark retrieval"),
    (["--zeroshot-split", "val"], "--zeroshot-split applies to --benchmark zeroshot"),
    (["--comalign-boxes", "gt"], f"--comalign-boxes needs a ComAlign model (comalign-*), not --model {MODEL}"),
    (["--comalign-letterbox"], "--comalign-letterbox needs a ComAlign model"),
    (["--compare-png", "x.png"], "--compare-png needs --compare FILE"),
    (["--model", "ViT-B-3"], "--model ViT-B-3: unknown model name; close names: ViT-B-32"),
    (["--model", "ViT-B-32", "--pretrained", "laion9"],
     "--pretrained laion9: no such file, and not a pretrained tag of ViT-B-32 (its tags: openai, "),
    (["--pretrained", "laion9"], f"not a pretrained tag of {MODEL} ({MODEL} has no pretrained tags; omit --pretrained"),
    (["--pretrained", os.sep], f"--pretrained {os.sep}: a folder; expected a checkpoint file or a pretrained tag"),
    (["--device", "gpu"], "--device gpu: not a torch device (e.g. cpu, cuda"),
    (["--data-root", "sugarcrepe="], "--data-root sugarcrepe=: no DIR after '='"),
    (["--data-root", "/a", "/b"], "--data-root /a /b: two shared roots"),
    (["--data-root", "valse=/x"], "--data-root valse=/x: valse is not among --benchmark sugarcrepe"),
    (["--data-root", "sugar=/x"], "--data-root sugar=/x: unknown benchmark 'sugar'"),
])
def test_flags_that_would_be_ignored_or_are_malformed(capsys, never_builds, sugar_root, argv, message):
    base = {"--model": MODEL, "--data-root": f"sugarcrepe={sugar_root}"}
    for flag in ("--model", "--data-root"):
        if flag in argv:
            base.pop(flag)
    code, err = _main(capsys, "--benchmark", "sugarcrepe", *[x for kv in base.items() for x in kv], *argv)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_data_root_of_the_benchmark_folder_itself_gets_a_hint(sugar_root):
    with pytest.raises(EvalDataError, match=rf"sugarcrepe: data root {sugar_root}/sugarcrepe is not a directory.*"
                                            rf"pass --data-root sugarcrepe={sugar_root}\)"):
        cli.data_roots([str(sugar_root)], ["sugarcrepe"])
    weird = sugar_root.parent / "x=y"
    (weird / "sugarcrepe").mkdir(parents=True)  # a shared root whose name holds '='
    assert cli.data_roots([str(weird)], ["sugarcrepe"]) == {"sugarcrepe": weird / "sugarcrepe"}


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
    (["--aro-datasets", "vg"], "argument --aro-datasets: invalid choice: 'vg'"),
    (["--benchmark", "sugar"], "argument --benchmark: invalid choice: 'sugar'"),
])
def test_argument_values_refused_by_the_parser(capsys, argv, message):
    code, err = _main(capsys, "--model", MODEL, "--benchmark", "sugarcrepe", *argv)
    assert code == 2 and message in err[-1]


@pytest.mark.parametrize("model", ["ViT-S-32-alt", MODEL])  # open_clip's own loader and the plugin's
@pytest.mark.parametrize("kind", ["random bytes", "empty", "truncated", "pickled objects", "foreign weights",
                                  "bad safetensors"])
def test_corrupt_pretrained_file_is_one_line_naming_it(tmp_path, capsys, sugar_root, model, kind):
    path = tmp_path / ("w.safetensors" if kind == "bad safetensors" else "w.pt")
    if kind == "random bytes":
        path.write_bytes(os.urandom(2000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("truncated", "foreign weights"):
        torch.save({"foo": torch.zeros(4)}, path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickled objects":
        torch.save({"args": argparse.Namespace(lr=1)}, path)
    else:
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{oops}  ")
    code, err = _main(capsys, "--model", model, "--pretrained", str(path), "--benchmark", "sugarcrepe",
                      "--data-root", f"sugarcrepe={sugar_root}", "--quiet")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"python -m open_clip_align.eval: error: --pretrained {path}")
    assert "weights_only" not in err[0] and "Traceback" not in err[0] and len(err[0]) < 500, err[0]


def test_interrupt_is_one_line(capsys, monkeypatch, sugar_root):
    def interrupted(args, scorer=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "evaluate", interrupted)
    code, err = _main(capsys, "--model", MODEL, "--benchmark", "sugarcrepe", "--data-root",
                      f"sugarcrepe={sugar_root}")
    assert code == 130 and err == ["python -m open_clip_align.eval: interrupted"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(capsys, sugar_root):
    code, err = _main(capsys, "--model", MODEL, "--device", "cuda", "--benchmark", "sugarcrepe", "--data-root",
                      f"sugarcrepe={sugar_root}")
    assert code == 2 and len(err) == 1 and "--device cuda: no CUDA device" in err[0]


def test_compare_with_evaluation_flags(tmp_path, capsys):
    code, err = _main(capsys, "--compare", str(tmp_path / "a.json"), "--model", MODEL)
    assert code == 2 and len(err) == 1
    assert "--compare renders result files and evaluates nothing; drop --model" in err[0]


def test_unreadable_feature_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    cache = FeatureCache(tmp_path, "k")
    cache.path.write_bytes(b"not a torch file")
    again = FeatureCache(tmp_path, "k")
    assert again.features == {} and "unreadable" in caplog.text
    angle_image(tmp_path / "a.png", 0)
    again.put(ImageRef(str(tmp_path / "a.png")), torch.ones(2))
    again.save()
    assert len(FeatureCache(tmp_path, "k").features) == 1
