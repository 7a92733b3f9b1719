"""WhatsUp adapter: official JSON layouts, first-argmax tie rule (ties right) and strict, pair/set, headlines."""
import pytest

from eval_fixtures import TableScorer, png, write_json
from open_clip_align.eval import cli, whatsup
from open_clip_align.eval.items import EvalDataError

PREPOSITIONS = {"left_of": "to the left of", "right_of": "to the right of", "on": "on", "under": "under"}


def _controlled(root, pairs=(("mug", "plate"), ("book", "table"))):
    """Controlled_Images_A: 2 object pairs x 4 prepositions, paths with the official 'data/' prefix."""
    records = []
    for a, b in pairs:
        for prep, words in PREPOSITIONS.items():
            name = f"{a}_{prep}_{b}.jpeg"
            png(root / "controlled_images" / name)
            options = [f"A {a} {words} a {b}"] + [f"A {a} {w} a {b}" for p, w in PREPOSITIONS.items() if p != prep]
            records.append({"image_path": f"data/controlled_images/{name}", "caption_options": options})
    write_json(root / "controlled_images_dataset.json", records)
    return records


def _scores(records, plan):
    """{(file name, caption): score}: the true option scores plan[file][0], the option plan[file][2] (an index into
    the distractors) scores plan[file][1]; every other option 0."""
    table = {}
    for record in records:
        name = record["image_path"].split("/")[-1]
        true, other, index = plan.get(name, (0.9, 0.1, 0))
        table[(name, record["caption_options"][0])] = true
        table[(name, record["caption_options"][1 + index])] = other
    return table


def test_controlled_individual_pair_and_set_match_a_hand_computation(tmp_path):
    records = _controlled(tmp_path)
    # mug: left, right right; on: a tie with a distractor (official: right, strict: wrong); under: wrong
    plan = {"mug_on_plate.jpeg": (0.5, 0.5, 1), "mug_under_plate.jpeg": (0.2, 0.8, 2)}
    result = whatsup.evaluate(TableScorer(_scores(records, plan)), tmp_path)
    a = result["subsets"]["controlled_a"]
    assert (a["acc"], a["acc_strict"], a["n"], a["ties"]) == (87.5, 75.0, 8, 1)
    # pairs: mug (left, right) + book (left, right) + book (on, under) = 3 of N/2 = 4; sets: book only, of N/4 = 2
    assert (a["pair_acc"], a["set_acc"]) == (75.0, 50.0)
    assert (a["pair_acc_strict"], a["set_acc_strict"]) == (75.0, 50.0)
    assert a["prepositions"] == {"left_of": {"acc": 100.0, "n": 2}, "on": {"acc": 100.0, "n": 2},
                                 "right_of": {"acc": 100.0, "n": 2}, "under": {"acc": 50.0, "n": 2}}
    assert result["whatsup"] is None  # the headline is mean(A, B): B did not run
    assert result["n_items"] == 8 and result["n_ties"] == 1


def test_coco_and_vg_rows_padded_ids_and_headlines(tmp_path):
    write_json(tmp_path / "coco_qa_one_obj.json", [[139, "A dog on the left", "A dog on the right"],
                                                   [285, "A cat on the top", "A cat on the bottom"]])
    write_json(tmp_path / "coco_qa_two_obj.json", [[139, "A dog to the left of a cat", "A dog to the right of a cat"]])
    write_json(tmp_path / "vg_qa_one_obj.json", [[2345, "A bird on the left", "A bird on the right"]])
    for name in ("val2017/000000000139.jpg", "val2017/000000000285.jpg", "vg_images/2345.jpg"):
        png(tmp_path / name)
    table = {("000000000139.jpg", "A dog on the left"): 0.3, ("000000000139.jpg", "A dog on the right"): 0.3,
             ("000000000285.jpg", "A cat on the top"): 0.1, ("000000000285.jpg", "A cat on the bottom"): 0.2,
             ("000000000139.jpg", "A dog to the left of a cat"): 0.6, ("2345.jpg", "A bird on the left"): 0.7}
    items = whatsup.load(tmp_path)
    assert [it.images[0].path for it in items][:2] == [str(tmp_path / "val2017/000000000139.jpg"),
                                                       str(tmp_path / "val2017/000000000285.jpg")]
    result = whatsup.metrics(items, TableScorer(table).score_items(items))
    one = result["subsets"]["coco_qa_one_obj"]
    assert (one["acc"], one["acc_strict"], one["ties"]) == (50.0, 0.0, 1)  # the tie counts as correct officially
    assert one["prepositions"] == {"left": {"acc": 100.0, "n": 1}, "top": {"acc": 0.0, "n": 1}}
    assert result["subsets"]["coco_qa_two_obj"]["prepositions"] == {"left": {"acc": 100.0, "n": 1}}
    assert result["coco_spatial"] == 75.0 and result["gqa_spatial"] is None
    assert result["subsets"]["vg_qa_one_obj"]["acc"] == 100.0 and "pair_acc" not in one


def test_bad_files_are_named(tmp_path):
    with pytest.raises(EvalDataError, match=rf"whatsup: no annotation file.*fetch whatsup --dest {tmp_path.parent}"):
        whatsup.load(tmp_path)
    write_json(tmp_path / "controlled_images_dataset.json",
               [{"image_path": "data/controlled_images/mug_beside_plate.jpeg", "caption_options": ["a", "b"]}])
    with pytest.raises(EvalDataError, match="item 0: image file name 'mug_beside_plate.jpeg' is not"):
        whatsup.load(tmp_path)
    write_json(tmp_path / "controlled_images_dataset.json",
               [{"image_path": "data/controlled_images/mug_on_plate.jpeg", "caption_options": ["a", "b"]}])
    with pytest.raises(EvalDataError, match=r"controlled_images/mug_on_plate\.jpeg, which does not exist"):
        whatsup.load(tmp_path)
    (tmp_path / "controlled_images_dataset.json").unlink()
    write_json(tmp_path / "coco_qa_one_obj.json", [[139, "only one caption"]])
    with pytest.raises(EvalDataError, match=r"item 0: expected \[image_id, true_caption, false_caption\]"):
        whatsup.load(tmp_path)


def test_matches_the_official_evaluate_scores_on_random_tied_scores(tmp_path):
    """Controlled_Images.evaluate_scores (np.argmax, eval_dict pair/set), transcribed, on quantised scores."""
    import random

    import numpy as np

    rng = random.Random(1)
    pairs = [(f"obj{k}", f"thing{k}") for k in range(12)]
    records = _controlled(tmp_path, pairs)
    table = {(r["image_path"].split("/")[-1], c): rng.randint(0, 2) / 2 for r in records for c in r["caption_options"]}
    scores = np.array([[[table[(r["image_path"].split("/")[-1], c)] for c in r["caption_options"]]] for r in records])
    preds = np.argmax(np.squeeze(scores, axis=1), axis=-1)
    correct_mask = preds == 0
    key = lambda d: (d["image_path"].split("/")[-1].split("_")[0], d["image_path"].split("/")[-1].split("_")[-1][:-5])
    eval_dict = {key(d): {"left": 0, "right": 0, "on": 0, "under": 0} for d in records}
    for d, correct in zip(records, correct_mask):
        eval_dict[key(d)][d["image_path"].split("/")[-1].split("_")[1]] = correct
    pair_correct = set_correct = 0
    for correct_dict in eval_dict.values():
        if correct_dict["left"] and correct_dict["right"]:
            pair_correct += 1
        if correct_dict["on"] and correct_dict["under"]:
            pair_correct += 1
        if sum(correct_dict.values()) == 4:
            set_correct += 1
    result = whatsup.evaluate(TableScorer(table), tmp_path)["subsets"]["controlled_a"]
    assert result["ties"] > 10
    assert result["acc"] == pytest.approx(np.mean(correct_mask) * 100)
    assert result["pair_acc"] == pytest.approx(pair_correct * 100 / (len(records) / 2))
    assert result["set_acc"] == pytest.approx(set_correct * 100 / (len(records) / 4))


def test_cli_record_with_blind_baselines(tmp_path):
    records = _controlled(tmp_path / "whatsup")
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--benchmark", "whatsup",
                                     "--data-root", str(tmp_path)])
    (record,) = cli.evaluate(args, scorer=TableScorer(_scores(records, {})))
    assert record["metrics"]["subsets"]["controlled_a"]["acc"] == 100.0
    assert record["headline"] == whatsup.HEADLINE and "fp16" in record["protocol"]["official_precision"]
    blind = record["metrics"]["blind"]["caption_prior"]["subsets"]["controlled_a"]  # caption length as the prior
    lengths = [[len(c) for c in r["caption_options"]] for r in records]
    assert blind["acc"] == 100 * sum(row[0] == max(row) for row in lengths) / len(lengths)  # first max: ties right
