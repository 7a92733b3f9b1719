"""ComAlign precompute and evaluation CLIs: the QuickGELU switch recorded in the store and reported by evaluation,
unfinished stores refused (or scored on request, and recorded), and bad flags and outputs as one line."""
import json
import logging

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from open_clip_align.comalign import evaluate
from open_clip_align.comalign.embed import main as embed_main
from open_clip_align.comalign.store import ComponentStore, ComponentStoreWriter
from quickgelu_tag import MODEL as QG_MODEL, TAG, quickgelu_tag  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
HEAD_MODEL = "comalign-tiny-ViT"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Four small random images with two captions each (CSV), and a tiny ComAlign model saved as a file."""
    root = tmp_path_factory.mktemp("partial")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,caption"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        rows += [f"img/{i}.png,a red cube left of a blue ball number {i}", f"img/{i}.png,a small green cat {i}"]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    torch.save(open_clip.create_model(HEAD_MODEL).state_dict(), root / "head_model.pt")
    return root


def _embed_argv(pairs, out, model, pretrained, *extra):
    return ["--model", model, "--pretrained", str(pretrained), "--annotations", str(pairs / "pairs.csv"), "--boxes",
            "grid", "--out", str(out), "--quiet", "--batch-size", "2", *extra]


def _eval_argv(pairs, store, *extra):
    return ["--model", HEAD_MODEL, "--pretrained", str(pairs / "head_model.pt"), "--store", str(store), "--ks", "1",
            "2", *map(str, extra)]


def _one_line_error(fn, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        fn([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_quickgelu_switch_is_stored_and_reported(pairs, tmp_path, quickgelu_tag, caplog, capsys):
    with caplog.at_level(logging.INFO):
        embed_main(_embed_argv(pairs, tmp_path / "qg.h5", QG_MODEL, TAG))
    switched = [r for r in caplog.records if "QuickGELU" in r.getMessage() and QG_MODEL in r.getMessage()]
    assert len(switched) == 1, [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        embed_main(_embed_argv(pairs, tmp_path / "gelu.h5", QG_MODEL, TAG, "--keep-gelu"))
    assert any("--keep-gelu" in r.getMessage() and "QuickGELU" in r.getMessage() for r in caplog.records)

    image = Image.open(pairs / "img" / "0.png").convert("RGB")
    for store, quick in (("qg.h5", True), ("gelu.h5", False)):
        model, _, preprocess = open_clip.create_model_and_transforms(QG_MODEL, pretrained=TAG, force_quick_gelu=quick)
        with ComponentStore(tmp_path / store) as opened:
            assert opened.attrs["quick_gelu"] is quick
            stored = opened.image("img/0.png")["global"]
        with torch.no_grad():
            torch.testing.assert_close(stored, model.eval().encode_image(preprocess(image)[None])[0], atol=1e-5,
                                       rtol=0)

    for store, activation in (("qg.h5", "quick_gelu"), ("gelu.h5", "gelu")):
        evaluate.main(_eval_argv(pairs, tmp_path / store, "--out", tmp_path / f"{store}.json"))
        protocol = json.loads((tmp_path / f"{store}.json").read_text())["protocol"]
        assert protocol["activation"] == activation and protocol["model_activation"] == activation
        assert protocol["partial"] is False and protocol["store_status"]["images"] == 4
    capsys.readouterr()


def _partial_copy(source, target, keep: int, planned: int):
    """An unfinished store: the first ``keep`` images of ``source`` in ``target.partial``, ``planned`` planned."""
    with ComponentStore(source) as store:
        attrs = {k: v for k, v in store.attrs.items() if k not in ("format", "finished", "images_planned")}
        writer = ComponentStoreWriter(target, attrs)
        writer.plan(planned)
        for index, image_id in enumerate(store.ids()[:keep]):
            image = store.image(image_id)
            writer.write(image_id, image["path"], index, image, store.captions(image_id))
        writer.abort()


def test_unfinished_and_empty_stores_are_refused_unless_asked(pairs, tmp_path, capsys):
    embed_main(_embed_argv(pairs, tmp_path / "full.h5", HEAD_MODEL, pairs / "head_model.pt"))
    _partial_copy(tmp_path / "full.h5", tmp_path / "half.h5", keep=2, planned=4)
    _partial_copy(tmp_path / "full.h5", tmp_path / "empty.h5", keep=0, planned=4)
    partial = tmp_path / "half.h5.partial"

    err = _one_line_error(evaluate.main, _eval_argv(pairs, partial, "--out", tmp_path / "r.json"), capsys)
    assert f"{partial}: an unfinished store (2 of 4 images complete)" in err and "--allow-partial" in err
    err = _one_line_error(evaluate.main, _eval_argv(pairs, tmp_path / "half.h5"), capsys)
    assert "half.h5 not found, but half.h5.partial is there" in err
    for flags in ([], ["--allow-partial"]):
        err = _one_line_error(evaluate.main, _eval_argv(pairs, tmp_path / "empty.h5.partial", *flags), capsys)
        assert "empty.h5.partial: holds no complete image (0 of 4 images complete)" in err
    assert not (tmp_path / "r.json").exists()

    evaluate.main(_eval_argv(pairs, partial, "--allow-partial", "--out", tmp_path / "r.json"))
    protocol = json.loads((tmp_path / "r.json").read_text())["protocol"]
    assert protocol["partial"] is True and protocol["n_images"] == 2
    assert protocol["store_status"] == {"finished": False, "images": 2, "images_planned": 4}
    capsys.readouterr()


def test_an_interrupted_embedding_is_reported_with_its_progress(pairs, tmp_path, capsys):
    """A run that stops at a bad image leaves OUT.partial recording the images it planned."""
    (tmp_path / "img").mkdir()
    for name in ("0", "1"):
        Image.open(pairs / "img" / f"{name}.png").save(tmp_path / "img" / f"{name}.png")
    (tmp_path / "img" / "2.png").write_bytes(b"not a png")
    (tmp_path / "pairs.csv").write_text("image,caption\nimg/0.png,a cat\nimg/1.png,a dog\nimg/2.png,a cow\n")
    argv = ["--model", HEAD_MODEL, "--pretrained", pairs / "head_model.pt", "--annotations",
            tmp_path / "pairs.csv", "--boxes", "grid", "--out", tmp_path / "o.h5", "--quiet", "--batch-size", "1"]
    _one_line_error(embed_main, argv, capsys)
    err = _one_line_error(evaluate.main, _eval_argv(pairs, tmp_path / "o.h5.partial"), capsys)
    assert "an unfinished store (2 of 3 images complete)" in err


@pytest.mark.parametrize("extra,fragment", [
    (["--ks", "0"], "--ks must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--max-captions", "0"], "--max-captions must be at least 1"),
    (["--out", "{file}/r.json"], "--out {file}/r.json: {file} is a file, not a folder"),
    (["--out", "{dir}"], "is a folder (expected a file path)"),
    (["--pretrained", "{file}"], "is not a checkpoint (neither a torch file nor safetensors)"),
    (["--store", "{dir}"], "is a folder; expected the .h5 file"),
    (["--device", "tpu"], "--device tpu: expected cpu, cuda or cuda:N"),
])
def test_evaluate_flags_and_out_are_checked_before_the_evaluation(pairs, tmp_path, monkeypatch, capsys, extra,
                                                                  fragment):
    embed_main(_embed_argv(pairs, tmp_path / "s.h5", HEAD_MODEL, pairs / "head_model.pt", "--limit", "2"))
    (tmp_path / "file").write_text("x")
    calls = []
    monkeypatch.setattr(evaluate, "evaluate_arrays", lambda *a, **k: calls.append(a))
    names = {"{file}": str(tmp_path / "file"), "{dir}": str(tmp_path)}
    for k, v in names.items():
        extra = [e.replace(k, v) for e in extra]
        fragment = fragment.replace(k, v)
    err = _one_line_error(evaluate.main, [*_eval_argv(pairs, tmp_path / "s.h5"), *extra], capsys)
    assert fragment in err and not calls, err


@pytest.mark.parametrize("extra,fragment", [
    (["--boxes", "torchvision", "--detector-weights", "w.pt", "--detector-threshold", "nan"],
     "--detector-threshold must be a finite number, got nan"),
    (["--boxes", "grid", "--detector-threshold", "2"], "--detector-threshold must be at most 1"),
    (["--boxes", "grid", "--out", "{file}/o.h5"], "--out {file}/o.h5: {file} is a file, not a folder"),
    (["--boxes", "grid", "--out", "{dir}"], "--out {dir}: is a folder (expected a file path)"),
    (["--boxes", "grid", "--pretrained", "{file}"], "is not a checkpoint (neither a torch file nor safetensors)"),
    (["--boxes", "grid", "--device", "tpu"], "--device tpu: expected cpu, cuda or cuda:N"),
    (["--boxes", "grid", "--annotations", "{dir}"], "annotation file {dir}: is a folder"),
    (["--boxes", "torchvision", "--detector-weights", "{file}"],
     "detector weights {file} cannot be read as a torch state dict (UnpicklingError: the file is truncated"),
])
def test_embed_flags_and_out(pairs, tmp_path, capsys, extra, fragment):
    (tmp_path / "file").write_text("x")
    names = {"{file}": str(tmp_path / "file"), "{dir}": str(tmp_path)}
    for k, v in names.items():
        extra = [e.replace(k, v) for e in extra]
        fragment = fragment.replace(k, v)
    argv = ["--model", HEAD_MODEL, "--pretrained", str(pairs / "head_model.pt"), "--annotations",
            str(pairs / "pairs.csv"), "--out", str(tmp_path / "o.h5"), "--quiet", *extra]
    err = _one_line_error(embed_main, argv, capsys)
    assert fragment in err, err
    assert not list(tmp_path.glob("o.h5*"))
