"""Zero-shot classification: template averaging, top-k / mean per-class recall by hand, ImageFolder and
CLIP_benchmark wds folders, errors."""
import io
import math
import tarfile

import pytest
import torch

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.eval.items import EvalDataError
from open_clip_align.eval.zeroshot import (DEFAULT_TEMPLATES, class_prompts, classification_metrics, evaluate,
                                           load, zeroshot_classifier, zeroshot_logits)

S = math.sqrt(0.5)


def test_template_averaging_normalises_each_then_the_mean():
    # class 0: templates along x (norm 3) and y (norm 1): each normalised first, so the mean points at 45°
    # (averaging raw embeddings would give atan(1/3) ≈ 18°); class 1: two templates along x
    w = zeroshot_classifier([torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [5.0, 0.0]])])
    assert torch.allclose(w, torch.tensor([[S, S], [1.0, 0.0]]))
    assert torch.allclose(zeroshot_classifier(torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])), torch.tensor([[S, S]]))
    logits = zeroshot_logits(torch.tensor([[0.0, 2.0]]), w)  # the image is normalised too
    assert torch.allclose(logits, torch.tensor([[100 * S, 0.0]]))


def _imbalanced_logits():
    labels = torch.tensor([0, 0, 0, 0, 1, 2])  # classes 3-5 have no images
    logits = torch.tensor([[9., 1, 2, 3, 4, 5],   # rank 0
                           [5., 9, 1, 1, 1, 1],   # rank 1
                           [1., 2, 3, 4, 5, 9],   # rank 5: outside the top 5
                           [7., 7, 0, 0, 0, 0],   # tie with class 1: official -> rank 0, strict -> rank 1
                           [7., 7, 0, 0, 0, 0],   # label 1 ties class 0 (lower index): rank 1 either way
                           [0., 0, 1, 2, 3, 4]])  # classes 3, 4, 5 above: rank 3
    return logits, labels


def test_classification_metrics_by_hand():
    logits, labels = _imbalanced_logits()
    r = classification_metrics(logits, labels, ks=(1, 5, 10))
    # official ranks 0, 1, 5, 0, 1, 3; class recalls 2/4, 0/1, 0/1 over the three classes present
    assert r["top1"] == pytest.approx(200 / 6) and r["top5"] == pytest.approx(500 / 6)
    assert r["top10"] is None  # 6 classes: top-10 is not defined (CLIP_benchmark reports NaN, JSON null)
    assert r["mean_per_class_recall"] == pytest.approx(100 * (0.5 + 0 + 0) / 3)
    assert (r["n_items"], r["n_classes"], r["n_ties"]) == (6, 6, 2)
    strict = classification_metrics(logits, labels, tie_policy="strict")
    assert strict["top1"] == pytest.approx(100 / 6) and strict["top5"] == pytest.approx(500 / 6)
    assert strict["mean_per_class_recall"] == pytest.approx(100 * 0.25 / 3) and strict["n_ties"] == 2
    few = classification_metrics(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]))
    # CLIP_benchmark (zeroshot_classification.evaluate): acc5 = NaN when there are fewer than 5 classes, not a
    # capped top-3; with exactly 5 classes top-5 is computed (and trivially 100)
    assert (few["top1"], few["top5"]) == (0.0, None)
    five = classification_metrics(torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]), torch.tensor([0]))
    assert (five["top1"], five["top5"]) == (0.0, 100.0)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 6\\)"):
        classification_metrics(logits, torch.tensor([0, 0, 0, 0, 1, 6]))
    with pytest.raises(ValueError, match="tie_policy"):
        classification_metrics(logits, labels, tie_policy="lenient")


def _table():
    # "cat" averages 0° and 90° -> 45°; "hot dog" sits at 80°
    return {"a cat.": unit(0), "the cat.": unit(90), "a hot dog.": unit(80), "the hot dog.": unit(80),
            "photo of cat": unit(60), "photo of hot dog": unit(90)}


def test_imagefolder_end_to_end(tmp_path):
    for name in ("cat", "hot_dog"):
        (tmp_path / "test" / name).mkdir(parents=True)
    angle_image(tmp_path / "test" / "cat" / "1.png", 40)      # cos 5° to cat vs cos 40° to dog: right
    angle_image(tmp_path / "test" / "cat" / "2.png", 70)      # cos 25° vs cos 10°: wrong
    angle_image(tmp_path / "test" / "hot_dog" / "1.png", 90)  # cos 45° vs cos 10°: right
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c}.\nthe {c}.\n")
    data = load(tmp_path)
    assert data.classnames == ["cat", "hot dog"] and data.labels == [0, 0, 1]
    assert data.meta["format"] == "imagefolder" and data.templates == ["a {c}.", "the {c}."]
    scorer, model = scorer_for(_table())
    r = evaluate(scorer, tmp_path)
    assert r["top1"] == pytest.approx(200 / 3) and r["top5"] is None  # 2 classes: no top-5 (CLIP_benchmark)
    assert r["mean_per_class_recall"] == pytest.approx(75.0) and (r["n_items"], r["n_ties"]) == (3, 0)
    assert r["protocol"]["n_templates"] == 2 and r["protocol"]["templates_source"].endswith("templates.txt")
    # an explicit templates= wins over the file: now cat is at 60°, hot dog at 90°, so 2.png (70°) is right
    r = evaluate(scorer, tmp_path, templates=["photo of {c}"])
    assert r["top1"] == 100.0 and r["protocol"]["templates_source"] == "argument"
    assert model.images_encoded == 3


def test_imagefolder_classnames_file_and_default_templates(tmp_path):
    for name in ("b_dir", "a_dir"):
        (tmp_path / "val" / name).mkdir(parents=True)
        angle_image(tmp_path / "val" / name / "x.jpg", 0)
    (tmp_path / "classnames.txt").write_text("apple\nbanana\n")
    data = load(tmp_path, split="val")
    assert data.classnames == ["apple", "banana"] and data.images[0].path.endswith("a_dir/x.jpg")
    assert data.templates == list(DEFAULT_TEMPLATES) and len(DEFAULT_TEMPLATES) == 8
    assert class_prompts(["apple"], ["a {c}.", "the {c}!"]) == [["a apple.", "the apple!"]]
    (tmp_path / "classnames.txt").write_text("apple\n")
    with pytest.raises(EvalDataError, match="1 class names for 2 class folders"):
        load(tmp_path, split="val")


def _png_bytes(tmp_path, degrees):
    return open(angle_image(tmp_path / "tmp.png", degrees), "rb").read()


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _wds_folder(tmp_path):
    root = tmp_path / "wds" / "toy"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("cat\nhot dog\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\nthe {c}.\n")
    (root / "dataset_type.txt").write_text("classification\n")
    (root / "test" / "nshards.txt").write_text("2\n")
    _write_tar(root / "test" / "0.tar", [("s0.png", _png_bytes(tmp_path, 40)), ("s0.cls", b"0"),
                                         ("s0.txt", b"ignored"),
                                         ("s1.png", _png_bytes(tmp_path, 70)), ("s1.cls", b"0\n")])
    _write_tar(root / "test" / "1.tar", [("sub/s2.cls", b"1"), ("sub/s2.png", _png_bytes(tmp_path, 90))])
    return root


def test_wds_folder_end_to_end(tmp_path):
    root = _wds_folder(tmp_path)
    data = load(root)
    assert data.meta["format"] == "wds" and data.labels == [0, 0, 1] and data.classnames == ["cat", "hot dog"]
    assert [r.path.split("extracted/test/")[1] for r in data.images] == ["0/0000000_s0.png", "0/0000001_s1.png",
                                                                          "1/0000000_sub_s2.png"]
    before = [(root / "extracted" / "test" / "0" / "0000000_s0.png").stat().st_mtime_ns]
    scorer, _ = scorer_for(_table())
    r = evaluate(scorer, root)  # the same images and answers as the ImageFolder test
    assert r["top1"] == pytest.approx(200 / 3) and r["mean_per_class_recall"] == pytest.approx(75.0)
    assert [(root / "extracted" / "test" / "0" / "0000000_s0.png").stat().st_mtime_ns] == before  # not rewritten
    other = load(root, cache_dir=tmp_path / "cache")
    assert other.images[2].path == str(tmp_path / "cache" / "1" / "0000000_sub_s2.png")


def test_wds_errors_are_named(tmp_path):
    root = _wds_folder(tmp_path)
    (root / "test" / "1.tar").unlink()
    with pytest.raises(EvalDataError, match="1.tar not found"):
        load(root)
    _write_tar(root / "test" / "1.tar", [("s2.png", _png_bytes(tmp_path, 0))])
    with pytest.raises(EvalDataError, match=r"1.tar: sample 's2' has \['png'\]; expected .*cls"):
        load(root)
    _write_tar(root / "test" / "1.tar", [("s2.png", _png_bytes(tmp_path, 0)), ("s2.cls", b"2")])
    with pytest.raises(EvalDataError, match="sample 's2': class index 2 outside 0..1"):
        load(root)
    _write_tar(root / "test" / "1.tar", [("s2.png", _png_bytes(tmp_path, 0)), ("s2.cls", b"dog")])
    with pytest.raises(EvalDataError, match="not an integer class index"):
        load(root)
    (root / "test" / "1.tar").write_bytes(b"garbage")
    with pytest.raises(EvalDataError, match="1.tar: not a readable tar"):
        load(root)
    (root / "test" / "nshards.txt").write_text("two")
    with pytest.raises(EvalDataError, match="positive shard count"):
        load(root)
    (root / "dataset_type.txt").write_text("retrieval")
    with pytest.raises(EvalDataError, match="dataset type 'retrieval'"):
        load(root)


def test_bad_zeroshot_inputs(tmp_path):
    with pytest.raises(EvalDataError, match="test not found.*ImageFolder.*nshards.txt"):
        load(tmp_path)
    (tmp_path / "test").mkdir()
    with pytest.raises(EvalDataError, match="no class folders"):
        load(tmp_path)
    (tmp_path / "test" / "cat").mkdir()
    with pytest.raises(EvalDataError, match="no images"):
        load(tmp_path)
    angle_image(tmp_path / "test" / "cat" / "1.png", 0)
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c}.\na photo.\n")
    with pytest.raises(EvalDataError, match=r"line 2 \('a photo.'\) has no \{c\}"):
        load(tmp_path)
    with pytest.raises(EvalDataError, match="has no \\{c\\}"):
        load(tmp_path, templates=["a photo"])
    with pytest.raises(EvalDataError, match="cannot be filled"):
        class_prompts(["cat"], ["a {c} {x}"])
    with pytest.raises(EvalDataError, match="unknown zero-shot data_format 'csv'"):
        load(tmp_path, data_format="csv")
    scorer, _ = scorer_for(_table())
    with pytest.raises(ValueError, match="tie_policy"):
        evaluate(scorer, tmp_path, tie_policy="lenient")
