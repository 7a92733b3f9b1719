"""SPEC adapter: image2text/text2image records as one-query items (meta direction), first-argmax ties, means."""
import pytest

from eval_fixtures import TableScorer, png, write_json
from open_clip_align.eval import cli, spec
from open_clip_align.eval.items import EvalDataError


def _write(root):
    for k in range(4):
        png(root / "existence" / "images" / f"{k}.png")
    write_json(root / "existence" / "image2text.json", [
        {"query": "images/0.png", "keys": ["there is a dog", "there is no dog"], "label": 0},
        {"query": "images/1.png", "keys": ["there is a cat", "there is no cat"], "label": 1}])
    write_json(root / "existence" / "text2image.json", [
        {"query": "there is a dog", "keys": ["images/0.png", "images/1.png"], "label": 0},
        {"query": "there is no cat", "keys": ["images/2.png", "images/3.png"], "label": 1}])
    for k in range(3):
        png(root / "count" / f"c{k}.png")
    write_json(root / "count" / "image2text.json", [{"query": "c0.png", "keys": ["one", "two", "three"], "label": 2}])
    write_json(root / "count" / "text2image.json", [{"query": "two", "keys": ["c0.png", "c1.png", "c2.png"],
                                                     "label": 0}])


SCORES = {("0.png", "there is a dog"): 0.6, ("0.png", "there is no dog"): 0.4,  # I2T right
          ("1.png", "there is a cat"): 0.5, ("1.png", "there is no cat"): 0.5,  # I2T tie, label 1: wrong
          ("1.png", "there is a dog"): 0.6,  # T2I tie between 0.png and 1.png, label 0: right officially
          ("2.png", "there is no cat"): 0.2, ("3.png", "there is no cat"): 0.7,  # T2I right
          ("c0.png", "three"): 0.9,  # count I2T right
          ("c1.png", "two"): 0.8}  # count T2I picks c1, label 0: wrong


def test_both_directions_match_a_hand_computation(tmp_path):
    _write(tmp_path)
    items = spec.load(tmp_path)
    directions = [(it.group, it.meta["direction"], len(it.images), len(it.captions)) for it in items]
    assert directions == [
        ("existence", "i2t", 1, 2), ("existence", "i2t", 1, 2), ("existence", "t2i", 2, 1), ("existence", "t2i", 2, 1),
        ("count", "i2t", 1, 3), ("count", "t2i", 3, 1)]
    assert items[3].match == [[False], [True]] and items[4].match == [[False, False, True]]
    result = spec.metrics(items, TableScorer(SCORES).score_items(items))
    existence = result["subsets"]["existence"]
    assert (existence["i2t"], existence["i2t_strict"], existence["i2t_ties"]) == (50.0, 50.0, 1)
    assert (existence["t2i"], existence["t2i_strict"], existence["t2i_ties"], existence["t2i_n"]) == (100.0, 50.0, 1, 2)
    count = result["subsets"]["count"]
    assert (count["i2t"], count["t2i"]) == (100.0, 0.0)
    assert list(result["subsets"]) == ["existence", "count"]  # SPEC's subset order
    assert result["mean"] == {"i2t": 75.0, "i2t_strict": 75.0, "t2i": 50.0, "t2i_strict": 25.0}
    assert result["n_items"] == 6 and result["n_ties"] == 2


def test_cli_record_blind_on_image_to_text_only(tmp_path):
    _write(tmp_path / "spec")
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--benchmark", "spec",
                                     "--data-root", str(tmp_path)])
    (record,) = cli.evaluate(args, scorer=TableScorer(SCORES))
    assert record["headline"] == {"SPEC I2T": "mean/i2t", "SPEC T2I": "mean/t2i"}
    assert record["metrics"]["mean"]["i2t"] == 75.0
    for blind in record["metrics"]["blind"].values():
        assert blind["mean"]["t2i"] is None and blind["n_items"] == 3  # the I2T items only
    assert "fp32" in record["protocol"]["official_precision"] and "I2T only" in record["protocol"]["blind_baselines"]


def test_bad_records_are_named(tmp_path):
    with pytest.raises(EvalDataError, match="no subset folder.*fetch spec"):
        spec.load(tmp_path)
    _write(tmp_path)
    write_json(tmp_path / "count" / "image2text.json", [{"query": "c0.png", "keys": ["one", "two"], "label": 2}])
    with pytest.raises(EvalDataError, match="record 0: 'label' must be an integer index into the 2 keys"):
        spec.load(tmp_path, ["count"])
    write_json(tmp_path / "count" / "image2text.json", [{"query": "c0.png", "keys": ["a", "b"], "label": 0},
                                                        {"query": "c1.png", "keys": ["a", "b", "c"], "label": 0}])
    with pytest.raises(EvalDataError, match="record 1: 3 keys, but earlier records have \\[2\\]"):
        spec.load(tmp_path, ["count"])
    write_json(tmp_path / "count" / "image2text.json", [{"query": "nope.png", "keys": ["a", "b"], "label": 0}])
    with pytest.raises(EvalDataError, match="nope.png, which does not exist"):
        spec.load(tmp_path, ["count"])


def test_matches_the_official_argmax_on_random_tied_scores(tmp_path):
    """spec/models/clip_wrapper.py (torch argmax over the keys == label, both directions), transcribed."""
    import random

    import torch

    rng = random.Random(3)
    for k in range(5):
        png(tmp_path / "relative_size" / f"{k}.png")
    captions = [f"caption {k}" for k in range(5)]
    i2t = [{"query": f"{k % 5}.png", "keys": rng.sample(captions, 4), "label": rng.randrange(4)} for k in range(40)]
    t2i = [{"query": captions[k % 5], "keys": [f"{j}.png" for j in rng.sample(range(5), 4)], "label": rng.randrange(4)}
           for k in range(40)]
    write_json(tmp_path / "relative_size" / "image2text.json", i2t)
    write_json(tmp_path / "relative_size" / "text2image.json", t2i)
    table = {(f"{i}.png", c): rng.randint(0, 2) / 2 for i in range(5) for c in captions}
    official_i2t = sum(int(torch.tensor([table[(r["query"], c)] for c in r["keys"]]).argmax()) == r["label"]
                       for r in i2t)
    official_t2i = sum(int(torch.tensor([table[(k, r["query"])] for k in r["keys"]]).argmax()) == r["label"]
                       for r in t2i)
    result = spec.evaluate(TableScorer(table), tmp_path)
    assert result["n_ties"] > 10
    assert result["subsets"]["relative_size"]["i2t"] == 100 * official_i2t / 40
    assert result["subsets"]["relative_size"]["t2i"] == 100 * official_t2i / 40
    assert result["mean"]["i2t"] == 100 * official_i2t / 40  # one subset: the mean is its accuracy
