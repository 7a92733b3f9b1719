"""EqBen adapter: Winoground-style pairs (EqBen_Mini, nested per-subset dicts), the official randomized annotation
un-shuffled with private_random_idx/private_info, BGR .npy frames, strict 2x2 scores per subset."""
import random

import numpy as np
import pytest
import torch

from eval_fixtures import TableScorer, angle_image, png, scorer_for, unit, write_json
from open_clip_align.eval import cli, eqben
from open_clip_align.eval.items import EvalDataError, ImageRef, read_json

SAMPLES = [  # (subset, image0, image1, caption0, caption1, {(image, caption): score})
    ("eqbenkubric_attr", "a0.png", "a1.png", "a red cube", "a blue cube",
     {("a0.png", "a red cube"): .9, ("a0.png", "a blue cube"): .1, ("a1.png", "a red cube"): .2,
      ("a1.png", "a blue cube"): .8}),  # all right
    ("eqbenkubric_attr", "b0.png", "b1.png", "a cube on the left", "a cube on the right",
     {("b0.png", "a cube on the left"): .5, ("b0.png", "a cube on the right"): .5, ("b1.png", "a cube on the left"): .1,
      ("b1.png", "a cube on the right"): .6}),  # text: a tie (wrong); image right; group wrong
    ("eqbenyoucook2", "y0.npy", "y1.npy", "cut the onion", "fry the onion",
     {("y0.npy", "cut the onion"): .3, ("y0.npy", "fry the onion"): .4, ("y1.npy", "cut the onion"): .6,
      ("y1.npy", "fry the onion"): .5}),  # all wrong
]
TABLE = {key: value for *_, scores in SAMPLES for key, value in scores.items()}


def _images(image_root, samples=SAMPLES):
    for subset, i0, i1, *_ in samples:
        for name in (i0, i1):
            path = image_root / subset / name
            if name.endswith(".npy"):
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, np.zeros((6, 6, 3), dtype=np.uint8))
            else:
                png(path)


def _pairs():
    return [{"image0": f"{s}/{i0}", "caption0": c0, "image1": f"{s}/{i1}", "caption1": c1}
            for s, i0, i1, c0, c1, _ in SAMPLES]


def _check(result):
    kubric, youcook = result["subsets"]["eqbenkubric_attr"], result["subsets"]["eqbenyoucook2"]
    assert (kubric["text"], kubric["image"], kubric["group"], kubric["n"], kubric["ties"]) == (50.0, 100.0, 50.0, 2, 1)
    assert (youcook["text"], youcook["image"], youcook["group"], youcook["ties"]) == (0.0, 0.0, 0.0, 0)
    assert list(result["subsets"]) == ["eqbenyoucook2", "eqbenkubric_attr"]  # EqBen's subset order
    assert result["subset_mean"] == {"text": 25.0, "image": 50.0, "group": 25.0}
    assert result["micro"]["text"] == pytest.approx(100 / 3) and result["n_ties"] == 1


def test_mini_pairs_layout_matches_a_hand_computation(tmp_path):
    _images(tmp_path / "eqben_vllm")
    write_json(tmp_path / "all_select.json", _pairs())
    items, layout = eqben.load(tmp_path)
    assert layout == "mini" and items[0].images[0].path == str(tmp_path / "eqben_vllm/eqbenkubric_attr/a0.png")
    _check(eqben.metrics(items, TableScorer(TABLE).score_items(items)))
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--benchmark", "eqben",
                                     "--data-root", f"eqben={tmp_path}"])
    (record,) = cli.evaluate(args, scorer=TableScorer(TABLE))
    assert "third-party" in record["protocol"]["split"] and "fp16" in record["protocol"]["official_precision"]
    assert record["headline"]["EqBen_Mini group"] == "subset_mean/group" and "blind" not in record["metrics"]


def test_nested_per_subset_annotation_and_ag_caption_lists(tmp_path):
    _images(tmp_path / "images")
    pairs = _pairs()
    pairs[0] = {**pairs[0], "caption0": [pairs[0]["caption0"], "another caption"], "caption1": [pairs[0]["caption1"]]}
    write_json(tmp_path / "mine.json", {"video_1": {"subject_a": pairs[:2]}, "video_2": pairs[2:]})
    items, layout = eqben.load(tmp_path, "mine.json")
    assert layout == "pairs" and items[0].captions == ["a red cube", "a blue cube"]  # AG: only [0] is used
    _check(eqben.metrics(items, TableScorer(TABLE).score_items(items)))
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--benchmark", "eqben", "--data-root",
                                     f"eqben={tmp_path}", "--eqben-annotation", "mine.json"])
    (record,) = cli.evaluate(args, scorer=TableScorer(TABLE))
    assert record["protocol"]["layout"] == "pairs" and record["metrics"]["subset_mean"]["group"] == 25.0


def _official(root, seed=0, samples=SAMPLES):
    """The randomized annotation: each (image, caption) of each 2x2 an entry, shuffled; the index and info files."""
    _images(root / "images", samples)
    unshuffled, info = [], []
    for count, (subset, i0, i1, c0, c1, _) in enumerate(samples):
        for name, image, caption in (("c0i0", i0, c0), ("c0i1", i1, c0), ("c1i0", i0, c1), ("c1i1", i1, c1)):
            unshuffled.append({"image": f"{subset}/{image}", "caption": caption})
            info.append({"dataset": subset, "name": name, "sample_cnt": count})
    order = list(range(len(unshuffled)))  # private_random_idx[j] = un-shuffled position of entry j
    random.Random(seed).shuffle(order)
    write_json(root / "ann_json_finegrained_random.json", [unshuffled[p] for p in order])
    write_json(root / "private_random_idx.json", order)
    write_json(root / "private_info.json", info)


def test_official_randomized_annotation_is_unshuffled_into_2x2_items(tmp_path):
    _official(tmp_path)
    items, layout = eqben.load(tmp_path)
    assert layout == "official" and len(items) == 3
    assert {(it.group, it.captions[0]) for it in items} == {(s, c0) for s, _, _, c0, *_ in SAMPLES}
    _check(eqben.metrics(items, TableScorer(TABLE).score_items(items)))
    order = read_json(tmp_path / "private_random_idx.json", list, "positions")
    write_json(tmp_path / "private_random_idx.json", order[:-1] + [order[0]])
    with pytest.raises(EvalDataError, match="must be a permutation of 0..11"):
        eqben.load(tmp_path)


def test_official_annotation_that_is_not_a_2x2_is_refused(tmp_path):
    _official(tmp_path)
    entries = read_json(tmp_path / "ann_json_finegrained_random.json", list, "entries")
    order = read_json(tmp_path / "private_random_idx.json", list, "positions")
    info = read_json(tmp_path / "private_info.json", list, "records")
    j = next(j for j, p in enumerate(order) if info[p]["name"] == "c0i1")
    entries[j] = {**entries[j], "caption": "something else"}
    write_json(tmp_path / "ann_json_finegrained_random.json", entries)
    with pytest.raises(EvalDataError, match="do not form a 2x2"):
        eqben.load(tmp_path)


def test_npy_frames_are_bgr_arrays(tmp_path):
    bgr = np.zeros((4, 4, 3), dtype=np.uint8)
    bgr[..., 2] = 128  # red, stored last (BGR)
    bgr[..., 0] = 7
    np.save(tmp_path / "frame.npy", bgr)
    image = ImageRef(str(tmp_path / "frame.npy")).load()
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (128, 0, 7)
    # through the real scorer: the red channel carries the angle (eval_fixtures.LookupModel)
    red = round(45 / 90 * 255)
    bgr[..., 2], bgr[..., 0] = red, 0
    np.save(tmp_path / "frame.npy", bgr)
    angle_image(tmp_path / "same.png", 45)
    scorer, _ = scorer_for({"diagonal": unit(45)})
    refs = [ImageRef(str(tmp_path / "frame.npy")), ImageRef(str(tmp_path / "same.png"))]
    features = scorer.image_features(refs)
    assert torch.equal(features[refs[0]], features[refs[1]])
    np.save(tmp_path / "bad.npy", np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(EvalDataError, match=r"bad.npy: expected uint8 \[H, W, 3\] \(BGR\), got float32"):
        ImageRef(str(tmp_path / "bad.npy")).load()


def test_missing_annotation_names_every_layout(tmp_path):
    with pytest.raises(EvalDataError, match=r"ann_json_finegrained_random\.json.*all_select\.json.*fetch eqben"):
        eqben.load(tmp_path)
    write_json(tmp_path / "ann_json_finegrained_random.json", [{"image": "x", "caption": "y"}])
    with pytest.raises(EvalDataError, match="private_random_idx.json not found"):
        eqben.load(tmp_path)


def test_matches_evaluate_eqben_locally_on_random_tied_scores(tmp_path):
    """evaluate_eqben_locally.py (score per shuffled entry, un-shuffle with argsort(private_random_idx), slice per
    dataset, strict text/image/group), transcribed, on quantised scores."""
    rng = random.Random(4)
    samples = [(subset, f"{subset[5:9]}{k}a.png", f"{subset[5:9]}{k}b.png", f"caption {k} zero", f"caption {k} one", {})
               for subset in ("eqbengebc", "eqbensd") for k in range(30)]
    _official(tmp_path, seed=5, samples=samples)
    entries = read_json(tmp_path / "ann_json_finegrained_random.json", list, "entries")
    table = {(e["image"].split("/")[-1], e["caption"]): rng.randint(0, 2) / 2 for e in entries}
    submission_score = np.array([table[(e["image"].split("/")[-1], e["caption"])] for e in entries])
    private_idx = read_json(tmp_path / "private_random_idx.json", list, "positions")
    private_info = read_json(tmp_path / "private_info.json", list, "records")
    recover = submission_score[np.argsort(private_idx)]
    by_name = {n: np.zeros(len(entries) // 4) for n in ("c0i0", "c0i1", "c1i0", "c1i1")}
    ranges = {}
    for idx, (score, info) in enumerate(zip(recover, private_info)):
        by_name[info["name"]][info["sample_cnt"]] = score
        ranges.setdefault(info["dataset"], [idx, idx])[1] = idx + 1
    official = {}
    for dataset, (start, end) in ranges.items():
        r = {n: v[start // 4:end // 4] for n, v in by_name.items()}
        text = np.logical_and(r["c0i0"] > r["c1i0"], r["c1i1"] > r["c0i1"])
        image = np.logical_and(r["c0i0"] > r["c0i1"], r["c1i1"] > r["c1i0"])
        official[dataset] = {"text": 100 * text.mean(), "image": 100 * image.mean(),
                             "group": 100 * np.logical_and(text, image).mean()}
    result = eqben.evaluate(TableScorer(table), tmp_path)
    assert result["n_ties"] > 10
    for dataset, scores in official.items():
        assert {k: result["subsets"][dataset][k] for k in scores} == pytest.approx(scores)
