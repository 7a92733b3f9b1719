"""NegBench adapter: MCQ first-argmax rule (ties right, strict wrong), per-template and wrong-answer types, the
retrieval CSVs' text→image recall on one global matrix, the authors' absolute image paths, bad input."""

import pytest
import torch

from eval_fixtures import angle_image, scorer_for, unit, write_csv
from open_clip_align.eval import cli, negbench
from open_clip_align.eval.items import EvalDataError, ImageRef, Item

AUTHOR = "/data/healthy-ml/scratch/kumail/coco/images/val2017"  # the CSVs record the authors' absolute paths
MCQ = [  # (template, [(caption, degrees)] x 4, correct_answer); the image is at 0 degrees: score = cos(degrees)
    ("positive", [("This image features a dog and a cat", 0), ("This image features a bird, but not a cat", 60),
                  ("This image features a bird", 60), ("This image does not feature a dog", 90)], 0),   # right
    ("negative", [("This image does not feature a bird", 60), ("This image features a bird, but not a dog", 0),
                  ("This image features a bird", 60), ("This image does not feature a cat", 90)], 0),   # picks 1
    ("hybrid", [("This image features a cat, but not a bird", 30), ("This image features a cow, but not a cat", 30),
                ("This image features a cow", 90), ("This image does not feature a sheep", 60)], 0),   # tie 0/1
    ("negative", [("This image does not feature a cow", 90), ("This image features a cow, but not a dog", 90),
                  ("This image features a horse", 90), ("This image does not feature a horse", 0)], 0),  # picks 3
]
VOC = [("positive", [("a", 0), ("b", 90), ("c", 0), ("d", 90)], 2)]  # answer 2 ties option 0: first argmax 0, wrong
RETRIEVAL = [("a.jpg", ["a dog on grass", "a dog and no cat"]), ("b.jpg", ["a cat indoors"])]
NEGATED = [("a.jpg", ["a dog with no cat"]), ("b.jpg", ["a cat, no dog"]), ("a.jpg", ["no cat near the dog"])]
ANGLES = {"a dog on grass": 0, "a dog and no cat": 80, "a cat indoors": 90, "a dog with no cat": 0,
          "a cat, no dog": 90, "no cat near the dog": 10}


def _table():
    table = {caption: unit(deg) for _, options, _ in MCQ + VOC for caption, deg in options}
    return {**table, **{caption: unit(deg) for caption, deg in ANGLES.items()}}


@pytest.fixture
def root(tmp_path):
    (tmp_path / "val2017").mkdir()
    angle_image(tmp_path / "val2017" / "000000000139.png", 0)
    angle_image(tmp_path / "val2017" / "a.png", 0)
    angle_image(tmp_path / "val2017" / "b.png", 90)
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir(parents=True)
    angle_image(tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.png", 0)
    header = list(negbench.MCQ_COLUMNS)
    write_csv(tmp_path / "images" / negbench.MCQ_FILES["coco_mcq"], header,
           [[answer, *(c for c, _ in options), template, f"{AUTHOR}/000000000139.png"]
            for template, options, answer in MCQ])
    write_csv(tmp_path / negbench.MCQ_FILES["voc2007_mcq"], header,  # at <root>/, not <root>/images/: both are read
           [[answer, *(c for c, _ in options), template, "/scratch/VOCdevkit/VOC2007/JPEGImages/000001.png"]
            for template, options, answer in VOC])
    for task, rows in (("coco_retrieval", RETRIEVAL), ("coco_negated_retrieval", NEGATED)):
        write_csv(tmp_path / "images" / negbench.RETRIEVAL_FILES[task], ["filepath", "captions"],
               [[f"{AUTHOR}/{name.replace('.jpg', '.png')}", repr(caps)] for name, caps in rows])
    return tmp_path


def test_mcq_first_argmax_ties_templates_and_wrong_answer_types(root):
    scorer, _ = scorer_for(_table())
    items = negbench.load_mcq(root, "coco_mcq")
    assert [it.group for it in items] == ["positive", "negative", "hybrid", "negative"]
    assert items[0].images == [ImageRef(str(root / "val2017" / "000000000139.png"))]
    result = negbench.metrics(items, scorer.score_items(items))
    # hand: rows 1 and 3 right (row 3 by the first-index tie), rows 2 and 4 wrong (picked options 1 and 3)
    assert result["accuracy"] == 50.0 and result["accuracy_strict"] == 25.0
    assert (result["positive"], result["negative"], result["hybrid"]) == (100.0, 0.0, 100.0)
    assert result["per_template"]["hybrid"] == {"acc": 100.0, "acc_strict": 0.0, "n": 1, "ties": 1}
    assert result["wrong_answer_types"] == {"hybrid": 50.0, "positive": 0.0, "negative": 50.0}
    assert (result["n_items"], result["n_ties"]) == (4, 1)


def test_mcq_reads_correct_answer_per_row(root):
    """correct_answer is read, not assumed 0: answer 2 tied with option 0 loses to the first index."""
    scorer, _ = scorer_for(_table())
    items = negbench.load_mcq(root, "voc2007_mcq")
    result = negbench.metrics(items, scorer.score_items(items))
    assert result["accuracy"] == 0.0 and result["n_ties"] == 1
    assert result["wrong_answer_types"] == {"hybrid": 0.0, "positive": 0.0, "negative": 0.0, "option_0": 100.0}
    decisions = negbench.mcq_decisions(torch.tensor([[0.5, 0.2, 0.5, 0.1], [0.1, 0.3, 0.9, 0.2]]),
                                       torch.tensor([2, 2]))
    assert [d.tolist() for d in decisions] == [[False, True], [False, True], [True, False], [0, 2]]


def test_image_paths_are_found_by_their_trailing_part(root):
    resolve = negbench.ImageResolver(root)
    voc = root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.png"
    for recorded in ("/data/voc/VOC2007/JPEGImages/000001.png", "/x/JPEGImages/000001.png", "000001.png",
                     "VOCdevkit/VOC2007/JPEGImages/000001.png", str(voc)):
        assert resolve(recorded, "row") == ImageRef(str(voc)), recorded
    assert resolve(f"{AUTHOR}/a.png", "row").path == str(root / "val2017" / "a.png")


def test_retrieval_text_to_image_on_the_global_matrix(root):
    scorer, _ = scorer_for(_table())
    images, captions = negbench.load_retrieval(root, "coco_retrieval")
    result = negbench.retrieval_metrics(scorer, images, captions)
    # "a dog and no cat" (80 degrees) is closer to b (90) than to its own image a (0): rank 2
    assert result["text_to_image"] == {1: pytest.approx(200 / 3), 5: 100.0}
    assert (result["n_images"], result["n_captions"], result["n_ties"], result["duplicate_images"]) == (2, 3, 0, 0)

    images, captions = negbench.load_retrieval(root, "coco_negated_retrieval")
    result = negbench.retrieval_metrics(scorer, images, captions)
    # a.jpg is listed twice: each copy is its own image, so both of its captions tie with the other copy
    assert result["text_to_image"] == {1: pytest.approx(100 / 3), 5: 100.0}
    assert (result["n_ties"], result["duplicate_images"]) == (2, 1)


def test_cli_runs_every_present_task_with_blind_baselines_on_mcq_only(root):
    scorer, _ = scorer_for(_table())
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--quiet", "--benchmark", "negbench",
                                     "--data-root", f"negbench={root}"])
    records = {r["dataset"]: r for r in cli.evaluate(args, scorer=scorer)}
    assert list(records) == ["negbench/coco_mcq", "negbench/voc2007_mcq", "negbench/coco_retrieval",
                             "negbench/coco_negated_retrieval"]
    mcq = records["negbench/coco_mcq"]
    assert mcq["metrics"]["accuracy"] == 50.0 and set(mcq["metrics"]["blind"]) == {"ngram", "caption_prior"}
    assert "first argmax" in mcq["protocol"]["tie_policy"] and mcq["protocol"]["n_ties"] == 1
    retrieval = records["negbench/coco_negated_retrieval"]
    assert retrieval["task"] == "zeroshot_retrieval" and "blind" not in retrieval["metrics"]
    assert retrieval["protocol"]["recall_k"] == [1, 5]


def _bad(root, rows, header=None):
    write_csv(root / "images" / negbench.MCQ_FILES["coco_mcq"], header or list(negbench.MCQ_COLUMNS), rows)
    with pytest.raises(EvalDataError) as err:
        negbench.load_mcq(root, "coco_mcq")
    return str(err.value)


def test_bad_input_names_file_line_and_what_was_expected(root, tmp_path):
    good = [0, "a", "b", "c", "d", "positive", f"{AUTHOR}/000000000139.png"]
    assert "lacks column(s) ['image_path']" in _bad(root, [good[:-1]], list(negbench.MCQ_COLUMNS)[:-1])
    assert "line 2: correct_answer must be 0..3, got 4" in _bad(root, [[4, *good[1:]]])
    assert "line 2: column 'correct_answer' must be an integer" in _bad(root, [["x", *good[1:]]])
    assert "correct_answer_template must be one of positive" in _bad(root, [[*good[:5], "neutral", good[6]]])
    assert "line 2: column 'caption_2' is empty" in _bad(root, [[*good[:3], "", *good[4:]]])
    message = _bad(root, [[*good[:6], "/elsewhere/val2017/missing.png"]])
    assert "line 2: image '/elsewhere/val2017/missing.png' was not found" in message
    write_csv(root / "images" / negbench.RETRIEVAL_FILES["coco_retrieval"], ["filepath", "captions"],
           [[f"{AUTHOR}/a.png", "a dog"]])
    with pytest.raises(EvalDataError, match=r"line 2: column 'captions' must hold a Python list"):
        negbench.load_retrieval(root, "coco_retrieval")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalDataError, match="none of the NegBench CSVs.*fetch negbench"):
        negbench.parts(None, empty)


def test_metrics_reject_wrong_shapes():
    item = Item(id="x", images=[ImageRef("x.png")], captions=["a", "b", "c", "d"],
                match=[[True, False, False, False]], group="positive", meta={"correct_answer": 0})
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        negbench.metrics([item], [torch.zeros(1, 3)])
