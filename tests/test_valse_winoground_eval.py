"""VALSE and Winoground adapters: mturk filter, strict ties, averages and grouping, 2x2 scores, tags, errors."""
import json

import pytest
import torch

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.eval import valse, winoground
from open_clip_align.eval.items import EvalDataError, ImageRef, Item

TABLE = {"x": unit(0), "x again": unit(0), "y": unit(90), "diagonal": unit(45)}


def _valse_item(dataset, image, caption, foil, votes):
    return {"dataset": dataset, "image_file": image, "caption": caption, "foil": foil, "classes": "c",
            "classes_foil": "f", "mturk": {"caption": votes, "foil": 3 - votes, "other": 0}}


@pytest.fixture
def valse_root(tmp_path):
    """existence: right / wrong / filtered-out tie / kept tie; coreference-standard: one right item whose
    image is in the second of two folders given for its dataset."""
    (tmp_path / "images" / "visual7w").mkdir(parents=True)
    angle_image(tmp_path / "images" / "visual7w" / "a.png", 0)
    for sub in ("coco/train2014", "coco/val2014"):
        (tmp_path / sub).mkdir(parents=True)
    angle_image(tmp_path / "coco" / "val2014" / "COCO_val2014_1.png", 90)
    existence = {"e1": _valse_item("visual7w", "a.png", "x", "diagonal", 3),     # 1 > .71: right
                 "e2": _valse_item("visual7w", "a.png", "diagonal", "x", 2),     # .71 < 1: wrong
                 "e3": _valse_item("visual7w", "a.png", "x", "x again", 1),      # invalid (1 vote): dropped
                 "e4": _valse_item("visual7w", "a.png", "x again", "x", 2)}      # tie: wrong
    (tmp_path / "existence.json").write_text(json.dumps(existence))
    coref = {"c1": _valse_item("VisDial_v1.0", "COCO_val2014_1.png", "y", "diagonal", 3)}
    (tmp_path / "coreference-standard.json").write_text(json.dumps(coref))
    return tmp_path


IMAGE_DIRS = {"VisDial_v1.0": ["coco/train2014", "coco/val2014"]}


def test_valse_mturk_filter_ties_and_average(valse_root):
    scorer, model = scorer_for(TABLE)
    result = valse.evaluate(scorer, valse_root, instruments=["existence", "coreference-standard"],
                            image_dirs=IMAGE_DIRS)
    assert result["acc"] == {"existence": pytest.approx(100 / 3), "coreference-standard": 100.0}
    assert result["instruments"] == {"existence": {"n": 3, "ties": 1, "kept": 3, "dropped": 1},
                                     "coreference-standard": {"n": 1, "ties": 0, "kept": 1, "dropped": 0}}
    assert result["avg"] == pytest.approx((100 / 3 + 100) / 2) and result["avg_over"] == 2
    assert result["columns"] == {"Existence": pytest.approx(100 / 3), "Coreference standard": 100.0}
    assert (result["n_items"], result["n_ties"], result["mturk_filter"]) == (4, 1, True)
    assert model.images_encoded == 2  # a.png is shared by three existence items

    unfiltered = valse.evaluate(scorer, valse_root, instruments=["existence"], mturk_filter=False)
    assert unfiltered["acc"] == {"existence": 25.0}
    assert unfiltered["instruments"]["existence"] == {"n": 4, "ties": 2, "kept": 4, "dropped": 0}
    assert unfiltered["mturk_filter"] is False
    assert valse.PROTOCOL["filter"].startswith("mturk.caption >= 2") and "none" in valse.protocol(False)["filter"]
    assert [it.id for it in valse.load(valse_root, ["existence"])] == ["existence/e1", "existence/e2",
                                                                       "existence/e4"]


def test_valse_avg_is_mean_of_11_and_9_columns_group_counting():
    """The CE-CLIP/DeGLA CLIP row: 9 columns with Counting 61.0 give their Avg 65.3 as the mean of 11."""
    acc = {"existence": 68.7, "plurals": 57.1, "counting-hard": 60.0, "counting-small-quant": 62.5,
           "counting-adversarial": 60.5, "relations": 65.4, "action-replacement": 77.8, "actant-swap": 71.8,
           "coreference-standard": 54.1, "coreference-hard": 51.0, "foil-it": 89.8}
    got = valse.summarize(acc)
    assert got["avg"] == pytest.approx(718.7 / 11) and round(got["avg"], 1) == 65.3 and got["avg_over"] == 11
    assert list(got["columns"]) == ["Existence", "Plurality", "Counting", "Spatial relations", "Action replacement",
                                    "Actant swap", "Coreference standard", "Coreference clean", "Foil-it"]
    assert got["columns"]["Counting"] == pytest.approx(61.0)
    assert got["columns"]["Coreference clean"] == 51.0 and got["columns"]["Plurality"] == 57.1


def test_valse_metrics_from_hand_made_scores():
    def item(group, k):
        return Item(id=f"{group}/{k}", images=[ImageRef(f"{group}{k}.png")], captions=["c", "f"],
                    match=[[True, False]], group=group, meta={"n_in_file": 3, "mturk_filter": True})

    items = [item("counting-hard", 0), item("counting-hard", 1), item("counting-small-quant", 0),
             item("counting-adversarial", 0), item("foil-it", 0)]
    scores = [torch.tensor([[0.3, 0.2]]), torch.tensor([[0.1, 0.2]]), torch.tensor([[0.5, 0.4]]),
              torch.tensor([[0.4, 0.4]]), torch.tensor([[0.9, -0.1]])]
    got = valse.metrics(items, scores)
    assert got["acc"] == {"counting-hard": 50.0, "counting-small-quant": 100.0, "counting-adversarial": 0.0,
                          "foil-it": 100.0}
    assert {k: (r["ties"], r["dropped"]) for k, r in got["instruments"].items()} == {
        "counting-hard": (0, 1), "counting-small-quant": (0, 2), "counting-adversarial": (1, 2), "foil-it": (0, 2)}
    assert got["columns"] == {"Counting": 50.0, "Foil-it": 100.0}
    assert got["avg"] == 62.5 and got["avg_over"] == 4 and (got["n_items"], got["n_ties"]) == (5, 1)


def test_valse_bad_input(valse_root, tmp_path):
    with pytest.raises(EvalDataError, match="relations.json not found.*images/<dataset>/<image_file>"):
        valse.load(valse_root, ["relations"])
    with pytest.raises(EvalDataError, match="unknown VALSE instrument.*'counting'.*existence, plurals"):
        valse.load(valse_root, ["existence", "counting"])
    with pytest.raises(EvalDataError, match=r"item 'c1' names image 'COCO_val2014_1.png' \(dataset 'VisDial_v1.0'\)"
                                            r", not found in .*images/VisDial_v1.0"):
        valse.load(valse_root, ["coreference-standard"])  # no image_dirs: only the default folder is searched
    (tmp_path / "foil-it.json").write_text('{\n  "1": {"dataset": "x",\n  oops}')
    with pytest.raises(EvalDataError, match="foil-it.json: not valid JSON .*line 3"):
        valse.load(tmp_path, ["foil-it"])
    (tmp_path / "foil-it.json").write_text("{}")
    with pytest.raises(EvalDataError, match="foil-it.json: no items"):
        valse.load(tmp_path, ["foil-it"])
    (tmp_path / "foil-it.json").write_text("")
    with pytest.raises(EvalDataError, match="not valid JSON"):
        valse.load(tmp_path, ["foil-it"])
    (tmp_path / "foil-it.json").write_text(json.dumps({"1": {"dataset": "x", "image_file": "a.png", "caption": "c"}}))
    with pytest.raises(EvalDataError, match=r"item '1' lacks \['foil'\]"):
        valse.load(tmp_path, ["foil-it"])
    (tmp_path / "foil-it.json").write_text(json.dumps({"1": {"dataset": "x", "image_file": "a.png", "caption": "c",
                                                             "foil": "f"}}))
    with pytest.raises(EvalDataError, match="item '1' lacks a numeric mturk.caption"):
        valse.load(tmp_path, ["foil-it"])
    (tmp_path / "foil-it.json").write_text(json.dumps({"1": _valse_item("x", "a.png", "c", "f", 1)}))
    with pytest.raises(EvalDataError, match="none of its 1 items is valid"):
        valse.load(tmp_path, ["foil-it"])


def _pairs(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_winoground_scores_on_hand_built_2x2_cases():
    # rows = images (i0, i1), columns = captions (c0, c1)
    cases = [([[1.0, 0.0], [0.0, 1.0]], ["swap_att"]),            # all right
             ([[0.9, 0.8], [0.95, 0.99]], ["swap_att", "Object"]),  # text right; c0 prefers i1: image wrong
             ([[0.5, 0.6], [0.1, 0.7]], ["Object"]),                # image right; i0 prefers c1: text wrong
             ([[0.5, 0.5], [0.1, 0.7]], []),                        # tie s(c0,i0) = s(c1,i0): text wrong
             ([[0.5, 0.2], [0.5, 0.9]], []),                        # tie s(c0,i0) = s(c0,i1): image wrong
             ([[0.3, 0.3], [0.3, 0.3]], [])]                        # all tied: all wrong
    text, image, group, tie = winoground.decisions(torch.tensor([c for c, _ in cases]))
    assert text.tolist() == [True, True, False, False, True, False]
    assert image.tolist() == [True, False, True, True, False, False]
    assert group.tolist() == [True, False, False, False, False, False]
    assert tie.tolist() == [False, False, False, True, True, True]

    items = [Item(id=str(k), images=[ImageRef(f"{k}a"), ImageRef(f"{k}b")], captions=["c0", "c1"],
                  match=[[True, False], [False, True]], meta={"tags": tags}) for k, (_, tags) in enumerate(cases)]
    got = winoground.metrics(items, [torch.tensor(c) for c, _ in cases])
    assert (got["text"], got["image"], got["group"]) == (50.0, 50.0, pytest.approx(100 / 6))
    assert (got["n_items"], got["n_ties"]) == (6, 3)
    assert got["tags"] == {"swap_att": {"text": 100.0, "image": 50.0, "group": 50.0, "n": 2, "ties": 0},
                           "Object": {"text": 50.0, "image": 50.0, "group": 0.0, "n": 2, "ties": 0}}
    with pytest.raises(ValueError, match="2x2"):
        winoground.metrics(items[:1], [torch.zeros(1, 2)])


def test_winoground_pairs_end_to_end(tmp_path):
    """ShapeCrepe's layout: pairs.jsonl two levels below the images, paths relative to its folder."""
    (tmp_path / "images").mkdir()
    angle_image(tmp_path / "images" / "a.png", 0)
    angle_image(tmp_path / "images" / "b.png", 90)
    root = _pairs(tmp_path / "winoground" / "iid", [
        {"image_0": "../../images/a.png", "image_1": "../../images/b.png", "caption_0": "x", "caption_1": "y",
         "tags": ["swap_obj"]},                                        # [[1, 0], [0, 1]]: all right
        {"id": "p1", "image_0": "../../images/a.png", "image_1": "../../images/b.png", "caption_0": "x",
         "caption_1": "x again", "tags": ["swap_att"]}])               # [[1, 1], [0, 0]]: ties, all wrong
    scorer, model = scorer_for(TABLE)
    result = winoground.evaluate(scorer, root)
    assert (result["text"], result["image"], result["group"], result["n_items"], result["n_ties"]) == (
        50.0, 50.0, 50.0, 2, 1)
    assert result["tags"]["swap_obj"]["group"] == 100.0 and result["tags"]["swap_att"] == {
        "text": 0.0, "image": 0.0, "group": 0.0, "n": 1, "ties": 1}
    assert [it.id for it in winoground.load(root)] == ["0", "p1"] and model.images_encoded == 2


def test_winoground_hf_export_layout(tmp_path):
    (tmp_path / "images").mkdir()
    angle_image(tmp_path / "images" / "ex_0_img_0.png", 0)
    angle_image(tmp_path / "images" / "ex_0_img_1.png", 90)
    row = {"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "caption_0": "x", "caption_1": "y",
           "tag": "Object", "secondary_tag": "Symbolic", "num_main_preds": 1, "collapsed_tag": "Object"}
    (tmp_path / "examples.jsonl").write_text(json.dumps(row) + "\n")
    items = winoground.load(tmp_path)  # auto: no pairs.jsonl, so the HF export
    assert items[0].meta["tags"] == ["Object", "Symbolic", "main_preds=1"]
    assert items[0].images[1].path.endswith("images/ex_0_img_1.png")
    result = winoground.evaluate(scorer_for(TABLE)[0], tmp_path, layout="hf")
    assert (result["group"], result["n_ties"], list(result["tags"])) == (100.0, 0, ["Object", "Symbolic",
                                                                                     "main_preds=1"])


def test_winoground_reads_shapecrepe_output(tmp_path):
    from open_clip_align.data import synthetic
    from open_clip_align.eval.sugarcrepe import SUBSETS

    synthetic.generate(tmp_path, preset="ci", train_size=4, pretrain_size=4, test_pairs=1, workers=1,
                       progress=False)
    items = winoground.load(tmp_path / "winoground" / "iid")
    assert len(items) == len(SUBSETS) and {t for it in items for t in it.meta["tags"]} == set(SUBSETS)
    assert all(ref.load().size[0] > 0 for it in items for ref in it.images)


def test_winoground_bad_input(tmp_path):
    with pytest.raises(EvalDataError, match="pairs.jsonl not found.*examples.jsonl"):
        winoground.load(tmp_path)
    with pytest.raises(EvalDataError, match="unknown Winoground layout 'hf2'"):
        winoground.load(tmp_path, layout="hf2")
    angle_image(tmp_path / "a.png", 0)
    good = {"id": "p0", "image_0": "a.png", "image_1": "a.png", "caption_0": "x", "caption_1": "y"}
    _pairs(tmp_path, [good])
    (tmp_path / "pairs.jsonl").write_text(json.dumps(good) + "\n\n{oops\n")
    with pytest.raises(EvalDataError, match="pairs.jsonl: line 3 is not valid JSON"):
        winoground.load(tmp_path)
    _pairs(tmp_path, [good, {**good, "id": "p1", "image_1": "b.png"}])
    with pytest.raises(EvalDataError, match=r"line 2 \(id 'p1'\) names image_1 .*b.png, which does not exist"):
        winoground.load(tmp_path)
    _pairs(tmp_path, [{k: v for k, v in good.items() if k != "caption_1"}])
    with pytest.raises(EvalDataError, match=r"line 1 \(id 'p0'\) lacks \['caption_1'\]"):
        winoground.load(tmp_path)
    _pairs(tmp_path, [{**good, "tags": "swap_att"}])
    with pytest.raises(EvalDataError, match="'tags' must be a list of strings"):
        winoground.load(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("\n  \n")
    with pytest.raises(EvalDataError, match="pairs.jsonl: no items"):
        winoground.load(tmp_path)
    (tmp_path / "examples.jsonl").write_text(json.dumps({k: v for k, v in good.items() if k != "id"}) + "\n")
    with pytest.raises(EvalDataError, match=r"examples.jsonl: line 1 lacks \['id'\]"):
        winoground.load(tmp_path, layout="hf")
