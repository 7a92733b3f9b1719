"""SugarCrepe adapter: strict tie rule, bag-identical slice, averages, one encode per unique image, errors."""
import json

import pytest
import torch

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.eval.items import EvalDataError
from open_clip_align.eval.scoring import pairwise_decisions
from open_clip_align.eval.sugarcrepe import evaluate, load_subset, summarize


def test_strict_rule_counts_ties_as_wrong():
    correct, ties = pairwise_decisions(torch.tensor([0.5, 0.2, 0.3]), torch.tensor([0.4, 0.2, 0.9]))
    assert correct.tolist() == [True, False, False]
    assert ties.tolist() == [False, True, False]


def test_category_means_and_micro_average():
    per = {"replace_obj": {"acc": 90.0, "n": 10}, "replace_att": {"acc": 60.0, "n": 30},
           "swap_obj": {"acc": 50.0, "n": 20}, "swap_att": {"acc": 70.0, "n": 20}}
    got = summarize(per)
    assert got["categories"] == {"replace": 75.0, "swap": 60.0}
    assert got["micro"] == pytest.approx((9 + 18 + 10 + 14) / 80 * 100)


def test_evaluate_sugarcrepe_end_to_end(tmp_path):
    (tmp_path / "val2017").mkdir()
    angle_image(tmp_path / "val2017" / "a.png", 0)
    angle_image(tmp_path / "val2017" / "b.png", 90)
    table = {"x axis": unit(0), "y axis": unit(90), "diagonal": unit(45), "axis x": unit(0)}
    subset = {"0": {"filename": "a.png", "caption": "x axis", "negative_caption": "diagonal"},  # 1 > .71: right
              "2": {"filename": "b.png", "caption": "x axis", "negative_caption": "y axis"},    # 0 < 1: wrong
              "5": {"filename": "a.png", "caption": "x axis", "negative_caption": "axis x"}}    # tie: wrong
    (tmp_path / "swap_att.json").write_text(json.dumps(subset))
    (tmp_path / "swap_obj.json").write_text(json.dumps({"0": subset["0"]}))
    scorer, model = scorer_for(table)
    result = evaluate(scorer, tmp_path, subsets=["swap_att", "swap_obj"])
    att = result["subsets"]["swap_att"]
    assert (att["acc"], att["n"], att["ties"]) == (pytest.approx(100 / 3), 3, 1)
    # only item 5 is bag-identical ("x axis" / "axis x"), and it is a tie, so wrong
    assert att["bag_identical_share"] == pytest.approx(100 / 3) and att["bag_identical_acc"] == 0.0
    assert result["subsets"]["swap_obj"]["acc"] == 100.0 and result["subsets"]["swap_obj"]["bag_identical_acc"] is None
    assert result["categories"]["swap"] == pytest.approx((100 / 3 + 100) / 2)
    assert result["micro"] == pytest.approx(50.0) and (result["n_items"], result["n_ties"]) == (4, 1)
    assert model.images_encoded == 2  # a.png appears in both subsets and twice in one, encoded once


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(EvalDataError, match="swap_att.json.*val2017"):
        load_subset(tmp_path, "swap_att")
    (tmp_path / "swap_att.json").write_text(json.dumps({"0": {"filename": "a.png", "caption": "c"}}))
    with pytest.raises(ValueError, match="item '0' lacks \\['negative_caption'\\]"):
        load_subset(tmp_path, "swap_att")
    (tmp_path / "swap_att.json").write_text(json.dumps({"0": {"filename": "a.png", "caption": "c",
                                                               "negative_caption": "d"}}))
    with pytest.raises(EvalDataError, match="a.png"):
        load_subset(tmp_path, "swap_att")
    with pytest.raises(EvalDataError, match="unknown SugarCrepe subset 'swap'"):
        load_subset(tmp_path, "swap")
    (tmp_path / "swap_att.json").write_text("{}")
    with pytest.raises(EvalDataError, match="no items"):
        load_subset(tmp_path, "swap_att")
    (tmp_path / "swap_att.json").write_text("{oops")
    with pytest.raises(EvalDataError, match="not valid JSON"):
        load_subset(tmp_path, "swap_att")
