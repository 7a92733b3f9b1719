"""Tests for open_clip_align.vlm.caption_metrics (hand-computed BLEU / ROUGE-L / CIDEr-D values)."""
import json
import math
import os

import pytest

pytest.importorskip("pycocoevalcap")

from open_clip_align.vlm import caption_metrics as cm  # noqa: E402
from open_clip_align.vlm.caption_metrics import (  # noqa: E402
    caption_scores,
    load_karpathy_captions,
    tokenize,
    write_predictions,
)

HAS_JAVA = cm.java_available()


# ------------------------------------------------------------------------------------- tokenizer
# Expected strings are the output of pycocoevalcap 1.2's Java PTBTokenizer (CoreNLP 3.4.1) on the
# same inputs, after its punctuation filter (checked by test_python_tokenizer_matches_java_ptb).
TOKENIZE_CASES = [
    ("A man's dog isn't running.", "a man 's dog is n't running"),
    ("Two dogs (one black) play in the park!", "two dogs -lrb- one black -rrb- play in the park"),
    ('"Hello," she said -- it\'s great... really?', "hello she said it 's great really"),
    ("The U.S. flag; a man at St. Louis: 3.5 miles, 1,000 people & $5 or 50% off.",
     "the u.s. flag a man at st. louis 3.5 miles 1,000 people & $ 5 or 50 % off"),
    ("black-and-white photo of a cat/dog [sitting] {on} a bench",
     "black-and-white photo of a cat/dog -lsb- sitting -rsb- -lcb- on -rcb- a bench"),
    ("I can't, won't, cannot do it. They'd've gone; we're here; I'll see; I'm ok; you've been",
     "i ca n't wo n't can not do it they 'd 've gone we 're here i 'll see i 'm ok you 've been"),
    ("Kids' toys and the boys' room 'quoted' `back` ''double''",
     "kids toys and the boys room quoted back double"),
    ("A   man    RIDING a SKATEBOARD .", "a man riding a skateboard"),
    ("gonna wanna gotta lemme gimme", "gon na wan na got ta lem me gim me"),
    ("there is no. dog and no. 5 on st. a plan a. at 3:30 hello,world a.b x-ray - alone",
     "there is no dog and no. 5 on st. a plan a. at 3:30 hello world a.b x-ray alone"),
    ("it\u2019s a dog\u2019s life, isn\u2019t it? dogs'. don't.",
     "it 's a dog 's life is n't it dogs do n't"),
    ("caf\u00e9 \u201ccurly quotes\u201d \u2018single\u2019 \u2014 em\u2013dash\u2026",
     "caf\u00e9 curly quotes single em dash"),
    ("Two people on a beach...with surfboards", "two people on a beach with surfboards"),
    ("a dog on a couch,sitting next to a cat;a sign", "a dog on a couch sitting next to a cat a sign"),
    ("A sign that says \"STOP\".\nSecond line", "a sign that says stop second line"),
    ("", ""),
    ("...", ""),
]


@pytest.mark.parametrize("text,expected", TOKENIZE_CASES)
def test_python_tokenizer(text, expected):
    assert tokenize(text) == expected


def test_tokenize_type_error():
    with pytest.raises(TypeError):
        tokenize(None)


def test_punctuations_match_installed_pycocoevalcap():
    from pycocoevalcap.tokenizer import ptbtokenizer
    assert cm.PUNCTUATIONS == ptbtokenizer.PUNCTUATIONS


@pytest.mark.skipif(not HAS_JAVA, reason="needs java for pycocoevalcap's PTBTokenizer")
def test_python_tokenizer_matches_java_ptb():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    texts = [t for t, _ in TOKENIZE_CASES if t.strip() and t != "..."]
    out = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    for i, t in enumerate(texts):
        assert tokenize(t) == out[i][0], t


# ------------------------------------------------------------------------------------------ BLEU
def test_bleu4_hand_computed_two_image_corpus():
    # image 1: hyp "the cat sat on mat" (5), ref "the cat sat on the mat" (6)
    #   1-gram 5/5, 2-gram 3/4 (the cat, cat sat, sat on), 3-gram 2/3, 4-gram 1/2, closest reflen 6
    # image 2: hyp "a dog" (2), refs "a dog barks" (3), "a dog" (2) -> closest reflen 2
    #   1-gram 2/2, 2-gram 1/1, 3/4-gram 0/0
    # corpus (counts summed): p1 = 7/7, p2 = 4/5, p3 = 2/3, p4 = 1/2; c = 7, r = 8
    refs = {1: ["The cat sat on the mat."], 2: ["A dog barks!", "a dog"]}
    preds = {1: "the cat sat on mat", 2: "A dog."}
    expected = math.exp(1 - 8 / 7) * (1.0 * (4 / 5) * (2 / 3) * (1 / 2)) ** 0.25
    s = caption_scores(refs, preds, metrics=("bleu4",))
    assert s == pytest.approx({"bleu4": expected}, rel=1e-6)


def test_bleu4_single_image_brevity_penalty():
    # p = 1, 3/4, 2/3, 1/2 ; BP = exp(1 - 6/5)
    s = caption_scores({"x": ["the cat sat on the mat"]}, {"x": "the cat sat on mat"},
                       metrics=["bleu4"])
    assert s["bleu4"] == pytest.approx(math.exp(-0.2) * 0.25 ** 0.25, rel=1e-6)


# --------------------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_hand_computed_lcs():
    hyp = "a man riding a horse on the beach"  # 8 tokens
    # ref1 (8 tokens): LCS = "a man a horse the beach" = 6 -> P = 6/8, R = 6/8
    # ref2 (4 tokens): LCS = "a man a horse" = 4 -> P = 4/8, R = 4/4
    # pycocoevalcap takes max P and max R independently: P = 0.75, R = 1.0, beta = 1.2
    refs = {0: ["A man rides a horse along the beach.", "a man, a horse"]}
    b2 = 1.2 ** 2
    expected = (1 + b2) * 0.75 * 1.0 / (1.0 + b2 * 0.75)
    s = caption_scores(refs, {0: hyp}, metrics=("rouge_l",))
    assert s["rouge_l"] == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.8798076923, rel=1e-9)


def test_rouge_l_is_mean_over_images():
    refs = {0: ["a b c d"], 1: ["x y"]}
    preds = {0: "a b c d", 1: "q"}  # 1.0 and 0.0 (no overlap)
    assert caption_scores(refs, preds, metrics=("rouge_l",))["rouge_l"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------- CIDEr-D
def test_cider_identical_predictions_score_ten():
    # 2 images, all 5 refs identical to the prediction, no n-gram shared between images:
    # every per-order cosine is 1, length penalty exp(0) = 1 -> 10 * mean(1,1,1,1) = 10
    refs = {"a": ["A dog runs on grass."] * 5, "b": ["two cats sleep together now"] * 5}
    preds = {"a": "a dog runs on grass", "b": "Two cats sleep together now"}
    assert caption_scores(refs, preds, metrics=("cider",))["cider"] == pytest.approx(10.0, rel=1e-9)


def test_cider_hand_computed_known_value():
    # N = 2 images, every n-gram has df = 1, so tf-idf weight = tf * log(2).
    # image 1: hyp "dog" vs ref "dog runs": unigram cosine = log2^2 / (log2 * sqrt(2) log2) = 1/sqrt2,
    #   no hyp bigrams -> 0 for n = 2..4. pycocoevalcap's "length" counts *bigrams*: 0 vs 1,
    #   so delta = -1 and the penalty is exp(-1 / (2 * 6^2)). score = 10 * (1/sqrt2 * pen) / 4
    # image 2: hyp == ref "cat sleeps": cosine 1 for n = 1, 2; 0 for n = 3, 4 -> 10 * 2 / 4 = 5
    refs = {1: ["dog runs"], 2: ["cat sleeps"]}
    preds = {1: "dog", 2: "cat sleeps"}
    s1 = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    expected = (s1 + 5.0) / 2
    got = caption_scores(refs, preds, metrics=("cider",))["cider"]
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(3.3717, abs=1e-4)


def test_cider_ordering_perfect_partial_unrelated():
    refs = {
        "a": ["a dog runs on the grass", "a brown dog running on grass", "the dog is running outside"],
        "b": ["two cats sleep on a sofa", "cats sleeping on a couch", "two cats lying on the sofa"],
        "c": ["a red bus on a city street", "a bus driving down the road", "a double decker red bus"],
    }
    base = {"b": "two cats sleep on a sofa", "c": "a red bus on a city street"}
    perfect = caption_scores(refs, dict(base, a="a dog runs on the grass"), metrics=("cider",))
    partial = caption_scores(refs, dict(base, a="a dog on the sofa"), metrics=("cider",))
    unrelated = caption_scores(refs, dict(base, a="pizza with cheese and olives"), metrics=("cider",))
    assert perfect["cider"] > partial["cider"] > unrelated["cider"] > 0


def test_cider_single_image_corpus_is_zero():
    # documented quirk: IDF uses log(#images) = log(1) = 0
    s = caption_scores({0: ["a dog runs"]}, {0: "a dog runs"}, metrics=("cider",))
    assert s["cider"] == 0.0


# ----------------------------------------------------------------------------- tokenizer paths / meteor
def test_default_metrics_keys_and_meteor_skip(monkeypatch):
    monkeypatch.setattr(cm.shutil, "which", lambda name: None)
    refs = {0: ["a dog runs"], 1: ["a cat sleeps"]}
    s = caption_scores(refs, {0: "a dog runs", 1: "a cat"})
    assert set(s) == {"bleu4", "cider", "rouge_l", "meteor_skipped"}
    assert "java" in s["meteor_skipped"]


def test_ptb_without_java_raises(monkeypatch):
    monkeypatch.setattr(cm.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="java"):
        caption_scores({0: ["a dog"]}, {0: "a dog"}, metrics=("bleu4",), tokenizer="ptb")


@pytest.mark.skipif(not HAS_JAVA, reason="needs java")
def test_ptb_and_python_tokenizers_agree():
    refs = {"x": ["A man's dog, running.", "The dog (brown) runs!"], "y": ["Two cats; sleeping."]}
    preds = {"x": "a man's dog runs.", "y": "Two cats sleeping!"}
    m = ("bleu4", "cider", "rouge_l")
    assert caption_scores(refs, preds, m, tokenizer="ptb") == pytest.approx(
        caption_scores(refs, preds, m, tokenizer="python"))


@pytest.mark.skipif(not (HAS_JAVA and os.environ.get("CAPTION_METRICS_METEOR")),
                    reason="METEOR's JVM start takes ~30 s; set CAPTION_METRICS_METEOR=1 (needs java)")
def test_meteor_runs():
    refs = {0: ["a dog runs on grass"], 1: ["two cats on a sofa"]}
    s = caption_scores(refs, {0: "a dog runs on grass", 1: "a bus"}, metrics=("meteor",))
    assert 0.0 < s["meteor"] < 1.0


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("refs,preds,exc,match", [
    ({0: ["a"], 1: ["b"]}, {0: "a"}, KeyError, "no prediction"),
    ({0: ["a"]}, {0: "a", 7: "b"}, KeyError, "no references"),
    ({0: []}, {0: "a"}, ValueError, "empty reference list"),
    ({0: "a dog"}, {0: "a"}, TypeError, "list of strings"),
    ({0: ["a"]}, {0: None}, TypeError, "must be a str"),
    ({}, {}, ValueError, "empty"),
])
def test_caption_scores_errors(refs, preds, exc, match):
    with pytest.raises(exc, match=match):
        caption_scores(refs, preds, metrics=("bleu4",))


def test_bad_metric_and_tokenizer():
    with pytest.raises(ValueError, match="unknown metric"):
        caption_scores({0: ["a"]}, {0: "a"}, metrics=("spice",))
    with pytest.raises(ValueError, match="tokenizer"):
        caption_scores({0: ["a"]}, {0: "a"}, metrics=("bleu4",), tokenizer="nltk")


# ------------------------------------------------------------------------------------ Karpathy I/O
def _write(tmp_path, obj, name="test.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_load_karpathy_captions(tmp_path):
    data = [{"image": "val2014/a.jpg", "caption": ["A dog.", "a dog running"]},
            {"image": "val2014/b.jpg", "caption": "A cat."}]
    paths, refs = load_karpathy_captions(_write(tmp_path, data), "/coco")
    assert paths == ["/coco/val2014/a.jpg", "/coco/val2014/b.jpg"]
    assert refs == {"/coco/val2014/a.jpg": ["A dog.", "a dog running"],
                    "/coco/val2014/b.jpg": ["A cat."]}


@pytest.mark.parametrize("content,exc,match", [
    ("{not json", ValueError, "not valid JSON"),
    ({"image": "a.jpg"}, ValueError, "JSON list"),
    ([], ValueError, "no entries"),
    ([{"image": "a.jpg"}], ValueError, "entry 0"),
    ([{"image": "a.jpg", "caption": ["x"]}, {"image": "", "caption": ["y"]}], ValueError, "entry 1"),
    ([{"image": "a.jpg", "caption": ["", "  "]}], ValueError, "no non-empty"),
    ([{"image": "a.jpg", "caption": [3]}], ValueError, "list of strings"),
    ([{"image": "a.jpg", "caption": ["x"]}, {"image": "a.jpg", "caption": ["y"]}], ValueError, "duplicates"),
])
def test_load_karpathy_errors(tmp_path, content, exc, match):
    with pytest.raises(exc, match=match):
        load_karpathy_captions(_write(tmp_path, content), str(tmp_path))


def test_load_karpathy_missing_file_and_images(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_karpathy_captions(str(tmp_path / "nope.json"), "")
    p = _write(tmp_path, [{"image": "a.jpg", "caption": ["x"]}])
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_karpathy_captions(p, str(tmp_path), check_images=True)
    (tmp_path / "a.jpg").write_bytes(b"")
    paths, _ = load_karpathy_captions(p, str(tmp_path), check_images=True)
    assert paths == [str(tmp_path / "a.jpg")]


def test_write_predictions_atomic_roundtrip(tmp_path):
    out = tmp_path / "sub" / "preds.json"
    write_predictions(str(out), {"val2014/a.jpg": "a dog", 42: "caf\u00e9"})
    assert json.loads(out.read_text(encoding="utf-8")) == [
        {"image_id": "val2014/a.jpg", "caption": "a dog"}, {"image_id": 42, "caption": "caf\u00e9"}]
    # a failing write leaves the previous file intact and no temp files behind
    with pytest.raises(TypeError):
        write_predictions(str(out), {"a": 1})
    with pytest.raises(TypeError):
        write_predictions(str(out), {("t",): "x"})
    assert json.loads(out.read_text(encoding="utf-8"))[0]["caption"] == "a dog"
    assert os.listdir(out.parent) == ["preds.json"]


def test_end_to_end_karpathy_scores(tmp_path):
    data = [{"image": "a.jpg", "caption": ["a dog runs on grass"] * 2},
            {"image": "b.jpg", "caption": ["two cats sleep together now"] * 2}]
    paths, refs = load_karpathy_captions(_write(tmp_path, data), "root")
    preds = {p: refs[p][0] for p in paths}
    s = caption_scores(refs, preds, metrics=("bleu4", "cider", "rouge_l"))
    assert s["bleu4"] == pytest.approx(1.0, rel=1e-6)
    assert s["rouge_l"] == pytest.approx(1.0)
    assert s["cider"] == pytest.approx(10.0)
