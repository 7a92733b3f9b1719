"""Retrieval recall@k against hand-computed rankings; Karpathy COCO/Flickr test files; errors."""
import json

import pytest
import torch

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.eval.items import EvalDataError
from open_clip_align.eval.retrieval import evaluate, load, metrics, recall_at_k


def test_recall_at_k_by_hand():
    # 3 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0],
                        [0.2, 0.3, 0.4, 0.8],    # image 1: its caption 2 ranks 2nd (caption 3 is ahead)
                        [0.1, 0.2, 0.3, 0.7]])   # image 2: caption 3 first
    r = recall_at_k(sim, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert r["image_to_text"] == {1: pytest.approx(200 / 3), 2: 100.0}
    # caption 0: image 0 first; caption 1: image 1 (0.3) and 2 (0.2) beat image 0 (0.1) -> rank 3;
    # caption 2: image 0 (0.5) beats image 1 (0.4) -> rank 2; caption 3: image 1 (0.8) beats image 2 -> rank 2
    assert r["text_to_image"] == {1: 25.0, 2: 75.0}


def test_ties_count_as_misses():
    sim = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    r = recall_at_k(sim, torch.tensor([0, 1]), ks=(1, 2))
    assert r["image_to_text"][1] == 0.0 and r["text_to_image"][1] == 0.0
    assert r["image_to_text"][2] == 100.0


def _five_and_six_captions():
    """3 images; image 0 owns captions 0-4, image 1 owns 5-10 (six), image 2 owns 11-15."""
    sim = torch.zeros(3, 16)
    sim[0, 0], sim[0, 1:5] = 0.9, 0.1            # image 0: its caption 0 is first -> rank 0
    sim[1, 5:10], sim[1, 10] = 0.5, 0.8          # image 1: best own is the 6th caption (0.8) ...
    sim[1, 0], sim[1, 11] = 0.9, 0.9             # ... behind two wrong captions -> rank 2
    sim[2, 11:16], sim[2, 0:9], sim[2, 9] = 0.3, 0.4, 0.3  # image 2: 9 wrong above + 1 tie -> rank 10
    return sim, torch.tensor([0] * 5 + [1] * 6 + [2] * 5)


def test_metrics_with_five_and_six_captions_by_hand():
    sim, caption_image = _five_and_six_captions()
    r = metrics(sim, caption_image)
    # image ranks 0, 2, 10 (the tie at caption 9 pushes image 2 out of the top 10)
    assert r["image_to_text"] == {1: pytest.approx(100 / 3), 5: pytest.approx(200 / 3), 10: pytest.approx(200 / 3)}
    # caption ranks: 0 ties image 1 (0.9) -> 1; 1-4 lose to image 2 (0.4 > 0.1) -> 1; 5-10 -> 0;
    # 11 loses to image 1 (0.9) -> 1; 12-15 -> 0. So R@1 = 10/16; three images, so R@5 = R@10 = 100
    assert r["text_to_image"] == {1: 62.5, 5: 100.0, 10: 100.0}
    assert r["rsum"] == pytest.approx(100 / 3 + 400 / 3 + 262.5)
    assert r["mean_rank"]["image_to_text"] == pytest.approx((1 + 3 + 11) / 3)
    assert r["mean_rank"]["text_to_image"] == pytest.approx((6 * 2 + 10 * 1) / 16)
    assert (r["n_images"], r["n_captions"], r["n_items"]) == (3, 16, 19)
    assert r["ties"] == {"image_to_text": 1, "text_to_image": 1} and r["n_ties"] == 2
    assert recall_at_k(sim, caption_image) == {d: r[d] for d in ("image_to_text", "text_to_image")}
    assert metrics(sim, caption_image, ks=(1, 5))["rsum"] is None


def _karpathy_fixture(root, name="coco_karpathy_test.json", folder="val2014"):
    """Image a (0°) has five captions at 60° and a sixth at 0°; image b (90°) has five at 90°."""
    (root / folder).mkdir()
    angle_image(root / folder / "a.png", 0)
    angle_image(root / folder / "b.png", 90)
    entries = [{"image": f"{folder}/a.png", "caption": [f"a{i}" for i in range(1, 7)]},
               {"image": f"{folder}/b.png", "caption": [f"b{i}" for i in range(1, 6)]}]
    (root / name).write_text(json.dumps(entries))
    table = {f"a{i}": unit(60) for i in range(1, 6)}
    table.update({"a6": unit(0), **{f"b{i}": unit(90) for i in range(1, 6)}})
    return table


def test_coco_karpathy_all_captions_and_truncation(tmp_path):
    table = _karpathy_fixture(tmp_path)
    images, captions = load(tmp_path)
    assert [len(c) for c in captions] == [6, 5] and images[0].path.endswith("val2014/a.png")
    assert [len(c) for c in load(tmp_path, max_captions=5)[1]] == [5, 5]
    scorer, _ = scorer_for(table)
    full = evaluate(scorer, tmp_path, ks=(1,))
    # a1-a5 (60°) sit nearer b (cos 30° > cos 60°): misses; a6 and b1-b5 hit -> 6/11
    assert full["text_to_image"][1] == pytest.approx(600 / 11) and full["image_to_text"][1] == 100.0
    assert (full["n_images"], full["n_captions"], full["n_ties"]) == (2, 11, 0)
    assert full["protocol"]["captions_per_image"] == "all" and full["rsum"] is None
    assert "coco Karpathy test (2 images; standard 5000)" == full["protocol"]["split"]
    cut = evaluate(scorer, tmp_path, ks=(1,), max_captions=5)
    assert cut["text_to_image"][1] == 50.0 and cut["n_captions"] == 10
    assert cut["protocol"]["captions_per_image"] == "first 5"


def test_flickr_karpathy_format(tmp_path):
    table = _karpathy_fixture(tmp_path, "flickr30k_test.json", "flickr30k-images")
    scorer, model = scorer_for(table)
    r = evaluate(scorer, tmp_path, dataset="flickr")
    assert r["image_to_text"] == {1: 100.0, 5: 100.0, 10: 100.0}
    assert r["text_to_image"] == {1: pytest.approx(600 / 11), 5: 100.0, 10: 100.0}
    assert r["rsum"] == pytest.approx(500 + 600 / 11) and model.images_encoded == 2
    (tmp_path / "other.json").write_text((tmp_path / "flickr30k_test.json").read_text())
    assert load(tmp_path, "flickr", annotation="other.json")[1][1] == [f"b{i}" for i in range(1, 6)]


def test_bad_karpathy_files_are_named(tmp_path):
    with pytest.raises(EvalDataError, match="coco_karpathy_test.json not found.*flickr30k_test.json"):
        load(tmp_path)
    with pytest.raises(EvalDataError, match="unknown retrieval dataset 'f30k'"):
        load(tmp_path, "f30k")
    path = tmp_path / "coco_karpathy_test.json"
    cases = [("[oops", "not valid JSON"), ("{}", "expected a JSON list"), ("[]", "no entries"),
             (json.dumps([{"caption": ["c"]}]), "entry 0 lacks an 'image'"),
             (json.dumps([{"image": "a.png", "caption": ["c"]}, {"image": "val2014/b.png"}]),
              r"entry 1 \(val2014/b.png\) needs 'caption'"),
             (json.dumps([{"image": "val2014/a.png", "caption": "one"}]), "is this a train file"),
             (json.dumps([{"image": "val2014/a.png", "caption": ["c"]}]), "entry 0 names image .*a.png"),
             (json.dumps([{"image": "a.png", "caption": ["c"]}, {"image": "a.png", "caption": ["d"]}]),
              "entries 0 and 1 both name a.png")]
    angle_image(tmp_path / "a.png", 0)
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(EvalDataError, match=message):
            load(tmp_path)
    with pytest.raises(EvalDataError, match="max_captions"):
        load(tmp_path, max_captions=0)
