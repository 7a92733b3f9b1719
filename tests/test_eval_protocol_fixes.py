"""Protocol details checked against the official code: VALSE's two COCO 2017 spellings, zero-shot top-5 with
fewer than 5 classes (CLIP_benchmark), and possessives in SugarCrepe's bag-identical slice."""
import json

import pytest
import torch

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.eval import sugarcrepe, valse
from open_clip_align.eval.baselines import bag_identical, words
from open_clip_align.eval.items import EvalDataError
from open_clip_align.eval.report import markdown_table, result_record
from open_clip_align.eval.zeroshot import classification_metrics, evaluate as zeroshot_evaluate


def _valse_item(dataset, image, caption="x", foil="y"):
    return {"dataset": dataset, "image_file": image, "caption": caption, "foil": foil, "classes": "c",
            "classes_foil": "f", "mturk": {"caption": 3, "foil": 0, "other": 0}}


@pytest.mark.parametrize("folder", ["coco2017", "coco_2017"])
def test_valse_released_coco_2017_spellings_share_one_folder(tmp_path, folder):
    """The released relations.json says "coco_2017", plurals.json "coco2017": one folder serves both."""
    (tmp_path / "images" / folder).mkdir(parents=True)
    angle_image(tmp_path / "images" / folder / "000000462576.jpg", 0)
    (tmp_path / "relations.json").write_text(json.dumps({"r0": _valse_item("coco_2017", "000000462576.jpg")}))
    (tmp_path / "plurals.json").write_text(json.dumps({"p0": _valse_item("coco2017", "000000462576.jpg")}))
    items = valse.load(tmp_path, ["relations", "plurals"])
    assert [it.images[0].path for it in items] == [str(tmp_path / "images" / folder / "000000462576.jpg")] * 2
    scorer, _ = scorer_for({"x": unit(0), "y": unit(90)})
    assert valse.evaluate(scorer, tmp_path, ["relations", "plurals"])["acc"] == {"relations": 100.0,
                                                                                 "plurals": 100.0}


def test_valse_layout_and_errors_name_both_spellings(tmp_path):
    assert "coco_2017" in valse.LAYOUT and "coco2017" in valse.LAYOUT
    (tmp_path / "relations.json").write_text(json.dumps({"r0": _valse_item("coco_2017", "a.jpg")}))
    with pytest.raises(EvalDataError, match=r"dataset 'coco_2017'\), not found in .*images/coco_2017, "
                                            r".*images/coco2017"):
        valse.load(tmp_path, ["relations"])
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    angle_image(tmp_path / "images" / "val2017" / "a.jpg", 0)
    items = valse.load(tmp_path, ["relations"], image_dirs={"coco2017": "images/val2017"})  # either spelling
    assert items[0].images[0].path == str(tmp_path / "images" / "val2017" / "a.jpg")


def test_zeroshot_top5_is_null_below_five_classes_as_clip_benchmark(tmp_path):
    """CLIP_benchmark: ``acc5 = float("nan")`` when the dataset has fewer than 5 classes (JSON null here)."""
    for k, name in enumerate(("cat", "dog", "bird")):
        (tmp_path / "test" / name).mkdir(parents=True)
        angle_image(tmp_path / "test" / name / "1.png", 30 * k)
    scorer, _ = scorer_for({"a cat.": unit(0), "a dog.": unit(30), "a bird.": unit(60)})
    result = zeroshot_evaluate(scorer, tmp_path, templates=["a {c}."])
    assert (result["top1"], result["top5"], result["n_classes"]) == (100.0, None, 3)
    assert "null" in result["protocol"]["averaging"]
    record = result_record("zeroshot/x", "m", None, "zeroshot_classification",
                           {k: v for k, v in result.items() if k != "protocol"}, result["protocol"])
    assert json.loads(json.dumps(record, allow_nan=False))["metrics"]["top5"] is None
    assert "| top5 | – |" in markdown_table([record])
    logits = torch.eye(5)
    assert classification_metrics(logits, torch.arange(5))["top5"] == 100.0  # 5 classes: computed


def test_possessives_stay_one_word():
    assert words("A woman’s hat and a man's, don't") == ["a", "woman's", "hat", "and", "a", "man's", "don't"]
    assert words("T-shirt, a red-circle!") == ["t", "shirt", "a", "red", "circle"]  # hyphens still split
    # SugarCrepe swap_obj items 11 and 199: possessive swaps, not the same multiset of words
    assert not bag_identical("A boy holding up an umbrella over a woman's head.",
                             "A woman holding up an umbrella over a boy's head.")
    assert not bag_identical("A woman pinning a flower onto a man's blazer.",
                             "A man pinning a flower onto a woman's blazer.")
    assert bag_identical("The dog's ball is red.", "The ball is dog's red.")
    assert bag_identical("a man’s hat", "hat a man's")


def test_bag_identical_share_counts_possessive_swaps_out(tmp_path):
    (tmp_path / "val2017").mkdir()
    angle_image(tmp_path / "val2017" / "a.jpg", 0)
    pairs = [("A boy holding up an umbrella over a woman's head.", "A woman holding up an umbrella over a boy's head."),
             ("A woman pinning a flower onto a man's blazer.", "A man pinning a flower onto a woman's blazer."),
             ("a dog on a cat", "a cat on a dog"), ("the girl's kite above a tree", "a tree above the girl's kite")]
    (tmp_path / "swap_obj.json").write_text(json.dumps(
        {str(k): {"filename": "a.jpg", "caption": p, "negative_caption": n} for k, (p, n) in enumerate(pairs)}))
    items = sugarcrepe.load_subset(tmp_path, "swap_obj")
    assert [it.meta["bag_identical"] for it in items] == [False, False, True, True]
