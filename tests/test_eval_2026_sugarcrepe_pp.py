"""SugarCrepe++ adapter: official list format, ITT/TOT/diagnostics with strict ties, flags, blind, errors."""
import json

import pytest

from eval_fixtures import TableScorer, write_sugarcrepe_pp
from open_clip_align.eval import cli, sugarcrepe_pp
from open_clip_align.eval.items import EvalDataError

SWAP_OBJ = [  # official record layout; item 2 has caption == negative_caption, as swap_obj ids 2 and 8 do
    {"id": 0, "filename": "000000000001.jpg", "caption": "a cat on a mat", "caption2": "a mat under a cat",
     "negative_caption": "a mat on a cat"},
    {"id": 1, "filename": "000000000002.jpg", "caption": "a dog left of a tree",
     "caption2": "a tree right of a dog", "negative_caption": "a tree left of a dog"},
    {"id": 2, "filename": "000000000003.jpg", "caption": "a man holds a cup", "caption2": "a cup held by a man",
     "negative_caption": "a man holds a cup"},
]
REPLACE_ATT = [{"id": 0, "filename": "000000000004.jpg", "caption": "a red car", "caption2": "a red car",
                "negative_caption": "a blue car"}]  # caption2 == caption, as replace_att id 14


def _scorer():
    s = {("000000000001.jpg", "a cat on a mat"): 0.5, ("000000000001.jpg", "a mat under a cat"): 0.4,
         ("000000000001.jpg", "a mat on a cat"): 0.3,
         ("000000000002.jpg", "a dog left of a tree"): 0.3, ("000000000002.jpg", "a tree right of a dog"): 0.6,
         ("000000000002.jpg", "a tree left of a dog"): 0.3,
         ("000000000003.jpg", "a man holds a cup"): 0.5, ("000000000003.jpg", "a cup held by a man"): 0.6,
         ("000000000004.jpg", "a red car"): 0.9, ("000000000004.jpg", "a blue car"): 0.1}
    t = {("a cat on a mat", "a mat under a cat"): 0.9, ("a cat on a mat", "a mat on a cat"): 0.8,
         ("a mat under a cat", "a mat on a cat"): 0.95,
         ("a dog left of a tree", "a tree right of a dog"): 0.7, ("a dog left of a tree", "a tree left of a dog"): 0.7,
         ("a tree right of a dog", "a tree left of a dog"): 0.1,
         ("a man holds a cup", "a cup held by a man"): 0.2, ("a red car", "a blue car"): 0.5}
    return TableScorer(s, t)


@pytest.fixture
def root(tmp_path):
    write_sugarcrepe_pp(tmp_path / "sugarcrepe_pp", "swap_obj", SWAP_OBJ)
    write_sugarcrepe_pp(tmp_path / "sugarcrepe_pp", "replace_att", REPLACE_ATT)
    return tmp_path / "sugarcrepe_pp"


def test_decisions_ties_and_flags_match_a_hand_computation(root):
    result = sugarcrepe_pp.evaluate(_scorer(), root)
    swap = result["subsets"]["swap_obj"]
    # item 0: ITT right (.5 > .3, .4 > .3), TOT wrong (t(p1,p2) .9 < t(p2,n) .95)
    # item 1: s(I,p1) == s(I,n): ITT wrong and a tie; p2 right; TOT tie t(p1,p2) == t(p1,n): wrong
    # item 2: p1 == n: ITT tie (wrong); p2 .6 > .5 right; TOT t(p1,p2) .2 < t(p1,n) = t(p,p) = 1 (wrong) and
    # t(p1,p2) == t(p2,n) (p1 is n): a TOT tie
    assert swap["itt"] == pytest.approx(100 / 3) and swap["img_p1_neg"] == pytest.approx(100 / 3)
    assert swap["img_p2_neg"] == 100.0 and swap["tot"] == 0.0
    assert (swap["n"], swap["ties"], swap["tot_ties"], swap["p1_is_negative"], swap["p1_is_p2"]) == (3, 2, 2, 1, 0)
    # every swap_obj negative here uses the positive's words (as in most of the release): all bag-identical
    assert swap["bag_identical_share"] == 100.0 and swap["bag_identical_itt"] == pytest.approx(100 / 3)
    att = result["subsets"]["replace_att"]  # p2 == p1: t(p1,p2) = 1 beats .5 twice; ITT .9 > .1
    assert (att["itt"], att["tot"], att["ties"], att["p1_is_p2"]) == (100.0, 100.0, 0, 1)
    assert att["bag_identical_share"] == 0.0 and att["bag_identical_itt"] is None
    assert list(result["subsets"]) == ["replace_att", "swap_obj"]  # the official subset order
    assert result["micro"]["itt"] == 50.0 and result["micro"]["tot"] == 25.0
    assert result["subset_mean"]["itt"] == pytest.approx((100 / 3 + 100) / 2)
    assert (result["n_items"], result["n_ties"], result["tot_ties"]) == (4, 2, 2)


def test_tot_is_null_without_text_text_scores(root):
    items = sugarcrepe_pp.load(root)
    result = sugarcrepe_pp.metrics(items, _scorer().score_items(items))
    assert result["micro"]["tot"] is None and result["subsets"]["swap_obj"]["tot"] is None
    assert result["micro"]["itt"] == 50.0 and result["tot_ties"] is None

    class NoTextPairs:  # e.g. the ComAlign scorer
        score_items = _scorer().score_items
    assert sugarcrepe_pp.text_pair_scores(NoTextPairs(), items) is None


def test_cli_record_has_blind_itt_headline_and_protocol(root):
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--benchmark", "sugarcrepe_pp",
                                     "--data-root", str(root.parent)])
    (record,) = cli.evaluate(args, scorer=_scorer())
    assert record["dataset"] == "sugarcrepe_pp" and record["headline"] == sugarcrepe_pp.HEADLINE
    assert record["protocol"]["n_items"] == 4 and "fp32" in record["protocol"]["official_precision"]
    assert "strict" in record["protocol"]["tie_policy"]
    blind = record["metrics"]["blind"]
    assert set(blind) == {"ngram", "caption_prior"}
    assert blind["ngram"]["micro"]["tot"] is None  # TOT is text-only itself: no blind number
    # caption prior = caption length: item 0 picks "a mat under a cat" (17) over "a mat on a cat" (14) and
    # "a cat on a mat" (14) ties n: wrong; item 3 "a red car" (9) < "a blue car" (10): wrong
    assert blind["caption_prior"]["micro"]["itt"] == 0.0


def test_missing_and_malformed_files_are_named(tmp_path):
    root = tmp_path / "sugarcrepe_pp"
    root.mkdir()
    with pytest.raises(EvalDataError, match=r"data/<subset>\.json.*python -m open_clip_align\.eval\.fetch "
                                            rf"sugarcrepe_pp --dest {tmp_path}"):
        sugarcrepe_pp.load(root)
    with pytest.raises(EvalDataError, match="swap_att.json not found"):
        sugarcrepe_pp.load(root, ["swap_att"])
    write_sugarcrepe_pp(root, "swap_obj", SWAP_OBJ)
    (root / "data" / "swap_obj.json").write_text(json.dumps([{"id": 7, "filename": "x.jpg", "caption": "a"}]))
    with pytest.raises(EvalDataError, match=r"item 0 \(id 7\) lacks \['caption2', 'negative_caption'\]"):
        sugarcrepe_pp.load(root)
    (root / "data" / "swap_obj.json").write_text(json.dumps({"0": SWAP_OBJ[0]}))  # SugarCrepe's dict layout
    with pytest.raises(EvalDataError, match="expected a JSON list"):
        sugarcrepe_pp.load(root)
    (root / "data" / "swap_obj.json").write_text(json.dumps([{**SWAP_OBJ[0], "filename": "missing.jpg"}]))
    with pytest.raises(EvalDataError, match="missing.jpg, which does not exist"):
        sugarcrepe_pp.load(root)


def test_val2017_folder_is_read_when_there_is_no_images_folder(tmp_path):
    root = tmp_path / "scpp"
    write_sugarcrepe_pp(root, "swap_obj", SWAP_OBJ)
    (root / "images").rename(root / "val2017")
    items = sugarcrepe_pp.load(root)
    assert items[0].images[0].path == str(root / "val2017" / "000000000001.jpg")


def test_matches_the_official_loop_on_random_tied_scores(tmp_path):
    """VLMs/test_Variants_CLIP.py's per-item comparisons, transcribed, on scores quantised to force ties."""
    import random

    rng = random.Random(0)
    words = ["red", "blue", "cat", "dog", "mat", "on", "under"]
    records = [{"id": k, "filename": f"{k % 7}.jpg", "caption": " ".join(rng.sample(words, 3)),
                "caption2": " ".join(rng.sample(words, 3)), "negative_caption": " ".join(rng.sample(words, 3))}
               for k in range(200)]
    write_sugarcrepe_pp(tmp_path, "swap_att", records)
    captions = {c for r in records for c in (r["caption"], r["caption2"], r["negative_caption"])}
    s = {(f"{i}.jpg", c): rng.randint(0, 4) / 4 for i in range(7) for c in captions}
    t = {(a, b): rng.randint(0, 4) / 4 for a in captions for b in captions if a < b}
    scorer = TableScorer(s, t)
    official = {"itt": 0, "img_p1_neg": 0, "img_p2_neg": 0, "tot": 0}
    for line in records:
        p1, neg, p2, image = line["caption"], line["negative_caption"], line["caption2"], line["filename"]
        cos_p1, cos_p2, cos_neg = s[(image, p1)], s[(image, p2)], s[(image, neg)]
        cos_p1p2, cos_p1_neg, cos_p2_neg = scorer._text(p1, p2), scorer._text(p1, neg), scorer._text(p2, neg)
        official["itt"] += cos_p1 > cos_neg and cos_p2 > cos_neg
        official["img_p1_neg"] += cos_p1 > cos_neg
        official["img_p2_neg"] += cos_p2 > cos_neg
        official["tot"] += cos_p1p2 > cos_p1_neg and cos_p1p2 > cos_p2_neg
    result = sugarcrepe_pp.evaluate(scorer, tmp_path)["subsets"]["swap_att"]
    assert result["ties"] > 20 and result["tot_ties"] > 20
    assert {k: result[k] for k in official} == {k: 100.0 * v / len(records) for k, v in official.items()}
