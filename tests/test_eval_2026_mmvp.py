"""MMVP-VLM adapter: Questions.csv pairs, the p(img1) > 0.5 rule and its tie asymmetry, categories by row order."""
import pytest

from eval_fixtures import TableScorer, write_mmvp
from open_clip_align.eval import mmvp
from open_clip_align.eval.items import EvalDataError

ROWS = [(1, "Orientation", "the dog faces left"), (2, "Orientation", "the dog faces right"),
        (3, "Orientation", "the door is open"), (4, "Orientation", "the door is closed"),
        (5, "Orientation", "the cup is full"), (6, "Presence", "the cup is empty")]  # Type of row 6 is not read


def _text(statement):
    return "a photo of " + statement


def test_pairs_ties_and_strict_match_a_hand_computation(tmp_path):
    write_mmvp(tmp_path, ROWS)
    s = {("1.jpg", _text("the dog faces left")): 0.6, ("2.jpg", _text("the dog faces left")): 0.4,
         ("1.jpg", _text("the dog faces right")): 0.3, ("2.jpg", _text("the dog faces right")): 0.5,  # pair 1 right
         ("3.jpg", _text("the door is open")): 0.5, ("4.jpg", _text("the door is open")): 0.5,  # odd qid tie: wrong
         ("3.jpg", _text("the door is closed")): 0.1, ("4.jpg", _text("the door is closed")): 0.9,
         ("5.jpg", _text("the cup is full")): 0.7, ("6.jpg", _text("the cup is full")): 0.2,
         ("5.jpg", _text("the cup is empty")): 0.4, ("6.jpg", _text("the cup is empty")): 0.4}  # even qid tie: right
    items = mmvp.load(tmp_path)
    assert [it.id for it in items] == ["1-2", "3-4", "5-6"]
    assert items[2].images[1].path == str(tmp_path / "MLLM_VLM Images" / "Orientation" / "6.jpg")  # qid1's folder
    assert items[0].captions == [_text("the dog faces left"), _text("the dog faces right")]
    result = mmvp.metrics(items, TableScorer(s).score_items(items))
    (name, category), = result["categories"].items()
    assert name == "Orientation and Direction"
    assert (category["acc"], category["acc_strict"], category["n"], category["ties"]) == (
        pytest.approx(200 / 3), pytest.approx(100 / 3), 3, 2)
    assert result["mean"] == pytest.approx(200 / 3) and result["n_ties"] == 2


def test_category_follows_row_order_not_the_type_column(tmp_path):
    rows = [(q, "Orientation", f"statement {q}") for q in range(1, 33)]  # 16 pairs: 15 + 1
    write_mmvp(tmp_path, rows)
    items = mmvp.load(tmp_path)
    table = {(f"{q}.jpg", _text(f"statement {q}")): 1.0 for q in range(1, 31)}  # pairs 1-15 right, pair 16 wrong
    result = mmvp.metrics(items, TableScorer(table).score_items(items))
    assert {k: (v["acc"], v["n"]) for k, v in result["categories"].items()} == {
        "Orientation and Direction": (100.0, 15), "Presence of Specific Features": (0.0, 1)}
    assert result["mean"] == 50.0 and result["micro"] == pytest.approx(1500 / 16)


def test_bad_csv_is_named(tmp_path):
    with pytest.raises(EvalDataError, match=r"Questions\.csv not found.*MLLM_VLM Images.*fetch mmvp_vlm"):
        mmvp.load(tmp_path)
    write_mmvp(tmp_path, ROWS[:3])
    with pytest.raises(EvalDataError, match="3 statement rows, an odd number.*line 4 has no partner"):
        mmvp.load(tmp_path)
    (tmp_path / "Questions.csv").write_text("Question ID,Type,Statement\nx,Orientation,s\n2,Orientation,t\n")
    with pytest.raises(EvalDataError, match="line 2: expected 'Question ID,Type,Statement'"):
        mmvp.load(tmp_path)
    write_mmvp(tmp_path, ROWS[:2])
    (tmp_path / "MLLM_VLM Images" / "Orientation" / "2.jpg").unlink()
    with pytest.raises(EvalDataError, match=r"pair 1/2\) needs image .*2\.jpg"):
        mmvp.load(tmp_path)


def test_matches_the_official_softmax_rule_on_random_tied_scores(tmp_path):
    """scripts/evaluate_vlm.py (softmax over 100 * cos of the two images, p(img1) > 0.5, gt by qid parity, category
    by row order), transcribed, on quantised scores."""
    import random

    import torch

    rng = random.Random(2)
    rows = [(q, "Orientation", f"statement {q}") for q in range(1, 61)]  # 30 pairs: 2 categories
    write_mmvp(tmp_path, rows)
    table = {(f"{q}.jpg", _text(f"statement {r}")): rng.randint(0, 3) / 3 for q in range(1, 61) for r in range(1, 61)}
    categories, num_pairs = {}, 0
    for k in range(0, len(rows), 2):
        qid1, qid2 = rows[k][0], rows[k + 1][0]
        preds = []
        for text in (_text(rows[k][2]), _text(rows[k + 1][2])):
            logits = torch.tensor([[100 * table[(f"{qid1}.jpg", text)], 100 * table[(f"{qid2}.jpg", text)]]])
            preds.append("img1" if logits.softmax(dim=-1)[0][0] > 0.5 else "img2")
        gts = ["img1" if q % 2 == 1 else "img2" for q in (qid1, qid2)]
        category = mmvp.CATEGORIES[num_pairs // 15]
        categories[category] = categories.get(category, 0) + (preds == gts)
        num_pairs += 1
    result = mmvp.evaluate(TableScorer(table), tmp_path)
    assert result["n_ties"] > 5
    assert {c: r["acc"] for c, r in result["categories"].items()} == {c: v / 15 * 100 for c, v in categories.items()}
