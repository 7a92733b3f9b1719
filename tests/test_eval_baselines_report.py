"""Blind baselines (n-gram LM, caption prior) through each benchmark's own metrics; result JSON and reports."""
import json
import math

import pytest
import torch

from eval_fixtures import scorer_for, unit
from open_clip_align.eval import sugarcrepe
from open_clip_align.eval.baselines import (EOS, UNK, NgramLM, PriorScorer, bag_identical, blind_baselines,
                                            caption_prior_scorer, ngram_scorer, positive_captions, words)
from open_clip_align.eval.items import EvalDataError, ImageRef, Item
from open_clip_align.eval.report import (compare, flatten_metrics, main, markdown_table, read_results,
                                         result_record, write_results)

CORPUS = ["A dog runs.", "a cat runs", "The dog sleeps"]
# V = {a, dog, runs, cat, the, sleeps, </s>, <unk>}: |V| = 8, add-one smoothing
# context counts: <s> 3, a 2, dog 2, runs 2, cat 1, the 1, sleeps 1


def test_bigram_logprob_matches_hand_computation():
    lm = NgramLM(n=2, k=1.0).fit(CORPUS)
    assert lm.vocab == {"a", "dog", "runs", "cat", "the", "sleeps", EOS, UNK}
    # P(a|<s>) = (2+1)/(3+8), P(dog|a) = (1+1)/(2+8), P(runs|dog) = (1+1)/(2+8), P(</s>|runs) = (2+1)/(2+8)
    assert lm.logprob("a dog runs") == pytest.approx(math.log(3 / 11 * 2 / 10 * 2 / 10 * 3 / 10), abs=1e-12)
    # case and punctuation are dropped: the same caption
    assert lm.logprob("A DOG, runs!") == lm.logprob("a dog runs")
    # unseen order: P(dog|<s>) = 1/11, P(a|dog) = 1/10, P(</s>|a) = 1/10
    assert lm.logprob("dog a") == pytest.approx(math.log(1 / 11 * 1 / 10 * 1 / 10), abs=1e-12)
    # unknown word: P(a|<s>) = 3/11, P(<unk>|a) = 1/10, P(</s>|<unk>) = (0+1)/(0+8)
    assert lm.logprob("a zebra") == pytest.approx(math.log(3 / 11 * 1 / 10 * 1 / 8), abs=1e-12)
    for history in [("<s>",), ("a",), ("zebra",), ("runs",)]:
        assert sum(math.exp(lm.cond_logprob(history, w)) for w in lm.vocab) == pytest.approx(1.0, abs=1e-12)


def test_unigram_and_smoothing_constant():
    # 12 tokens (9 words + 3 </s>); c(a) = c(dog) = c(runs) = 2, c(</s>) = 3; k = 0.5
    lm = NgramLM(n=1, k=0.5).fit(CORPUS)
    assert lm.logprob("a dog runs") == pytest.approx(3 * math.log(2.5 / 16) + math.log(3.5 / 16), abs=1e-12)
    assert lm.logprob("runs dog a") == lm.logprob("a dog runs")  # a unigram LM is order-blind
    with pytest.raises(RuntimeError, match="fit"):
        NgramLM().logprob("a dog")
    with pytest.raises(ValueError, match="n >= 1"):
        NgramLM(n=0)


def test_words_and_bag_identical():
    assert words("A red-circle, LEFT of 2 stars.") == ["a", "red", "circle", "left", "of", "2", "stars"]
    assert sorted(words("Left of a star!")) == sugarcrepe.bag_of_words("Left of a star!")
    assert bag_identical("a red circle left of a blue square", "A blue square left of a red circle.")
    assert not bag_identical("a red circle", "a red red circle")
    assert not bag_identical("a red circle", "a blue circle")


def _item(item_id, pos, neg, group, images=1):
    return Item(item_id, [ImageRef(f"{item_id}-{i}.png") for i in range(images)], [pos, neg],
                [[True, False]] * images, group, {"bag_identical": bag_identical(pos, neg)})


# reciprocal counterbalancing: for every item (x, y) there is an item (y, x), so every negative is a positive
PAIRS = {"swap_att": [("a red circle above a blue square", "a blue circle above a red square"),
                      ("a large red star left of a cross", "a large cross left of a red star")],
         "replace_obj": [("a red circle", "a red star"),
                         ("a green cross above a red circle", "a green star above a red circle")]}


def _counterbalanced():
    return [_item(f"{group}/{k}{j}", p, n, group) for group, pairs in PAIRS.items()
            for k, (x, y) in enumerate(pairs) for j, (p, n) in enumerate([(x, y), (y, x)])]


def test_prior_scorer_repeats_the_caption_row_for_every_image():
    item = Item("i", [ImageRef("a.png"), ImageRef("b.png")], ["x", "y", "z"], [[True, False, False]] * 2)
    got = PriorScorer({"x": 0.5, "y": 2.0, "z": -1.0}).score_items([item])
    assert got[0].dtype == torch.float64 and got[0].tolist() == [[0.5, 2.0, -1.0], [0.5, 2.0, -1.0]]
    calls = []
    PriorScorer(lambda caps: calls.append(caps) or {c: 0.0 for c in caps}).score_items([item, item])
    assert calls == [["x", "y", "z"]]  # one call with the unique captions
    with pytest.raises(EvalDataError, match="no score .* 'z'"):
        PriorScorer({"x": 0.5, "y": 2.0}).score_items([item])


def test_ngram_is_fit_on_positive_captions_only():
    two_by_two = Item("w", [ImageRef("0.png"), ImageRef("1.png")], ["c0", "c1", "c2"],
                      [[True, False, False], [False, True, False]])
    assert positive_captions([two_by_two, _item("s", "a dog", "a cat", "g")]) == ["c0", "c1", "a dog"]
    scores = ngram_scorer([_item("s", "a dog", "a cat", "g")]).score_items([_item("s", "a dog", "a cat", "g")])
    lm = NgramLM().fit(["a dog"])  # "cat" was never a positive: it scores as <unk>
    assert scores[0].tolist() == [[lm.logprob("a dog"), lm.logprob("a unknownword")]]
    with pytest.raises(EvalDataError, match="no positive caption"):
        ngram_scorer([Item("e", [ImageRef("0.png")], ["c"], [[False]])])
    # an external corpus (e.g. training captions) replaces the test positives
    external = ngram_scorer([_item("s", "a dog", "a cat", "g")], corpus=["a cat", "a cat", "the dog"])
    lm = NgramLM().fit(["a cat", "a cat", "the dog"])
    assert external.score_items([_item("s", "a dog", "a cat", "g")])[0].tolist() == [[lm.logprob("a dog"),
                                                                                        lm.logprob("a cat")]]


def test_blind_baselines_score_exactly_half_on_a_counterbalanced_set():
    items = _counterbalanced()
    captions = list(dict.fromkeys(c for it in items for c in it.captions))
    # caption-prior table: distinct unnormalised norms 1.0, 1.1, ... (the direction is irrelevant when blind)
    scorer, model = scorer_for({c: unit(30) * (1 + 0.1 * i) for i, c in enumerate(captions)})
    blind = blind_baselines(items, sugarcrepe.metrics, scorer)
    for name in ("ngram", "caption_prior"):
        result = blind[name]
        assert result["n_ties"] == 0 and result["n_items"] == 8
        assert result["micro"] == 50.0
        assert {s: r["acc"] for s, r in result["subsets"].items()} == {"swap_att": 50.0, "replace_obj": 50.0}
        assert result["subsets"]["swap_att"]["bag_identical_share"] == 100.0
        assert result["subsets"]["swap_att"]["bag_identical_acc"] == 50.0
    assert model.images_encoded == 0  # blind: no image was ever loaded
    assert set(blind_baselines(items, sugarcrepe.metrics)) == {"ngram"}


def test_caption_prior_is_the_text_norm():
    scorer, _ = scorer_for({"x": unit(0) * 2, "y": unit(90) * 3})
    got = caption_prior_scorer(scorer).score_items([_item("i", "x", "y", "g", images=2)])
    assert got[0].tolist() == [[pytest.approx(2.0), pytest.approx(3.0)]] * 2


def test_ties_and_non_reciprocal_counterbalancing_break_fifty_percent():
    # a unigram LM cannot tell bag-identical captions apart: every item ties, strict rule → 0%, ties reported
    items = [_item("0", "a red circle left of a blue square", "a blue square left of a red circle", "swap_obj"),
             _item("1", "a blue square left of a red circle", "a red circle left of a blue square", "swap_obj")]
    unigram = NgramLM(n=1).fit(positive_captions(items))
    uni = sugarcrepe.metrics(items, PriorScorer(lambda caps: {c: unigram.logprob(c) for c in caps}).score_items(items))
    assert (uni["micro"], uni["n_ties"], uni["subsets"]["swap_obj"]["bag_identical_acc"]) == (0.0, 2, 0.0)
    # "every negative is another item's positive" along a 3-cycle is not enough: 2 of 3 right
    cycle = [_item("0", "x", "y", "g"), _item("1", "y", "z", "g"), _item("2", "z", "x", "g")]
    result = sugarcrepe.metrics(cycle, PriorScorer({"x": 3.0, "y": 2.0, "z": 1.0}).score_items(cycle))
    assert result["micro"] == pytest.approx(200 / 3) and result["n_ties"] == 0


# --- reports ---------------------------------------------------------------------------------------------------

def _sugarcrepe_metrics():
    """swap_obj: 1 right + 1 bag-identical tie; replace_obj: 2 right of 2; swap_att: 1 of 2."""
    items = [_item("so0", "a b", "a c", "swap_obj"), _item("so1", "a b c", "c b a", "swap_obj"),
             _item("ro0", "a", "b", "replace_obj"), _item("ro1", "c", "d", "replace_obj"),
             _item("sa0", "e f", "f e", "swap_att"), _item("sa1", "e g", "g e", "swap_att")]
    scores = [torch.tensor([[s, t]]) for s, t in [(0.9, 0.1), (0.5, 0.5), (0.7, 0.2), (0.6, 0.3), (0.8, 0.4),
                                                  (0.1, 0.2)]]
    metrics = sugarcrepe.metrics(items, scores)
    metrics["blind"] = {"ngram": sugarcrepe.metrics(items, [torch.tensor([[0.0, 1.0]])] * 6)}
    return metrics


def _record(model="ViT-T", metrics=None, dataset="sugarcrepe"):
    return result_record(dataset, model, "scratch", "compositionality", metrics or _sugarcrepe_metrics(),
                         dict(sugarcrepe.PROTOCOL), seed=0)


def test_records_round_trip_atomically(tmp_path):
    retrieval = {"image_to_text": {1: torch.tensor(50.0), 5: 100.0}, "text_to_image": {1: float("nan")},
                 "n_images": 2}
    records = [_record(), result_record("coco", "ViT-T", None, "zeroshot_retrieval", retrieval, {"split": "test"})]
    assert records[0]["protocol"] == {**sugarcrepe.PROTOCOL, "precision": "fp32", "seed": 0, "n_items": 6,
                                      "n_ties": 1}
    assert records[1]["metrics"]["image_to_text"] == {"1": 50.0, "5": 100.0}  # JSON-safe: str keys, plain floats
    assert records[1]["metrics"]["text_to_image"] == {"1": None}  # NaN is not JSON
    path = tmp_path / "out" / "results.json"
    write_results(path, records)
    assert read_results(path) == records and read_results([path, path]) == records + records
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left behind
    write_results(path, records[0])  # a single record is written as a bare object, CLIP_benchmark style
    assert json.loads(path.read_text())["dataset"] == "sugarcrepe"


def test_reads_a_clip_benchmark_single_record_file(tmp_path):
    path = tmp_path / "cifar10.json"
    path.write_text(json.dumps({"dataset": "cifar10", "model": "ViT-B-32-quickgelu", "pretrained": "laion400m_e32",
                                "task": "zeroshot_classification", "language": "en",
                                "metrics": {"top1_zeroshot_accuracy": 0.9074, "top5_zeroshot_accuracy": 0.998}}))
    (record,) = read_results(path)
    assert record["metrics"]["top1_zeroshot_accuracy"] == 0.9074 and record["language"] == "en"
    table = markdown_table([record])
    assert "### cifar10 — ViT-B-32-quickgelu / laion400m_e32 (zeroshot_classification)" in table
    assert "| top1_zeroshot_accuracy | 0.91 |" in table and "| n_ties | – |" in table


def test_flatten_metrics():
    nested = {"a": {"b": {"c": 1}, "d": 2.5}, "none": None, "text": "x", "flag": True, "list": [1, 2], "e": 3}
    assert flatten_metrics(nested) == {"a/b/c": 1, "a/d": 2.5, "e": 3}


def test_markdown_table_shows_headline_numbers_and_blind_column():
    table = markdown_table([_record()])
    lines = table.splitlines()
    assert lines[0] == "### sugarcrepe — ViT-T / scratch (compositionality)"
    assert "precision=fp32" in table and "seed=0" in table
    assert "| metric | model | blind ngram |" in lines
    # model: swap_obj 1/2 (the tie is wrong); blind always picks the negative: 0
    for row in ["| replace_obj | 100.00 | 0.00 |", "| swap_obj | 50.00 | 0.00 |", "| swap_att | 50.00 | 0.00 |",
                "| swap_obj bag-identical share | 50.00 | 50.00 |", "| swap_obj bag-identical acc | 0.00 | 0.00 |",
                "| swap_att bag-identical acc | 50.00 | 0.00 |", "| REPLACE | 100.00 | 0.00 |",
                "| SWAP | 50.00 | 0.00 |", "| micro | 66.67 | 0.00 |", "| n_items | 6 | 6 |", "| n_ties | 1 | 0 |"]:
        assert row in lines, row
    assert not any(line.startswith("| replace_obj bag-identical") for line in lines)  # share 0: no slice rows
    assert not any(line.startswith("| ADD") for line in lines)  # no add subsets evaluated


def test_compare_table_and_chart(tmp_path, capsys):
    base = _sugarcrepe_metrics()
    better = json.loads(json.dumps(base))
    better["subsets"]["swap_obj"]["acc"], better["micro"] = 75.0, 80.0
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_results(a, [_record("clip", base), _record("clip", {"acc": 61.5, "n_items": 3}, dataset="valse")])
    write_results(b, _record("degla", better))
    png = tmp_path / "plots" / "cmp.png"
    lines = compare([a, b], out_png=png).splitlines()
    assert lines[0] == "| dataset/metric | clip / scratch | degla / scratch |"
    for row in ["| sugarcrepe/swap_obj | 50.00 | 75.00 |", "| sugarcrepe/micro | 66.67 | 80.00 |",
                "| sugarcrepe/n_ties | 1 | 1 |", "| valse/acc | 61.50 | – |"]:
        assert row in lines, row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["cmp.png"]
    same = compare([a, a])  # identical labels are told apart by their paths
    assert f"| clip / scratch ({a}) | clip / scratch ({a}) |" in same.splitlines()[0]
    valse = tmp_path / "valse.json"
    write_results(valse, _record("other", {"acc": 70.0}, dataset="valse"))
    compare([b, valse], out_png=tmp_path / "none_shared.png")  # still a chart, saying nothing is shared
    assert (tmp_path / "none_shared.png").read_bytes()[:4] == b"\x89PNG"
    main([str(a), str(b)])
    assert "| sugarcrepe/micro | 66.67 | 80.00 |" in capsys.readouterr().out


def test_malformed_result_files_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(EvalDataError, match="bad.json: not valid JSON"):
        read_results(bad)
    bad.write_text(json.dumps([{"dataset": "x", "model": "m", "pretrained": None, "task": "t", "metrics": {}},
                               {"dataset": "y", "metrics": {}}]))
    with pytest.raises(EvalDataError, match=r"bad.json, record 1: lacks \['model', 'pretrained', 'task'\]"):
        read_results(bad)
    bad.write_text(json.dumps([1]))
    with pytest.raises(EvalDataError, match="bad.json, record 0: expected an object"):
        read_results(bad)
    bad.write_text(json.dumps({"dataset": "x", "model": "m", "pretrained": None, "task": "t", "metrics": [1]}))
    with pytest.raises(EvalDataError, match="bad.json: 'metrics' must be an object"):
        compare([bad])
    bad.write_text("[]")
    with pytest.raises(EvalDataError, match="bad.json: expected a result object"):
        read_results(bad)
    with pytest.raises(EvalDataError, match="missing.json not found"):
        read_results(tmp_path / "missing.json")
