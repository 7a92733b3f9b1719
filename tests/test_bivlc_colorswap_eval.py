"""BiVLC and ColorSwap adapters: 2x2 decisions (I2T = Winoground text, T2I = image), the four single comparisons,
per-type averages, ties; BiVLC's parquet rows extracted to files (bytes unchanged); ColorSwap's JSON; bad input."""
import io
import json

import pytest
import torch
from PIL import Image

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.eval import bivlc, cli, colorswap
from open_clip_align.eval.items import EvalDataError, ImageRef, Item


class FixedScores:
    """A scorer whose matrix for each item is given by hand (``{item id: [[...]]}``)."""

    def __init__(self, by_id):
        self.by_id = by_id

    def score_items(self, items):
        return [torch.tensor(self.by_id[it.id], dtype=torch.float32) for it in items]


def _item(k, kind="replace", subtype="obj"):
    return Item(id=str(k), images=[ImageRef(f"{k}_0.jpg"), ImageRef(f"{k}_1.jpg")], captions=[f"c{k}", f"n{k}"],
                match=[[True, False], [False, True]], group=kind, meta={"subtype": subtype})


# rows = images (I0, I1), columns = captions (C0, C1)
SCORES = {"0": [[0.9, 0.1], [0.2, 0.8]],   # all four comparisons right: I2T, T2I, group
          "1": [[0.9, 0.1], [0.95, 0.8]],  # I1 prefers C0 and C0 prefers I1: everything but Ipos/Tneg wrong
          "2": [[0.5, 0.5], [0.1, 0.9]],   # I0 ties its two captions: I2T wrong (strict), T2I right
          "3": [[0.3, 0.6], [0.7, 0.2]]}   # everything wrong


def test_bivlc_decisions_single_comparisons_and_types_by_hand():
    items = [_item(0), _item(1, "swap", "att"), _item(2, "swap", "obj"), _item(3, "add", "obj")]
    result = bivlc.metrics(items, FixedScores(SCORES).score_items(items))
    # hand: Ipos_2T = s00 > s01, Ineg_2T = s11 > s10, Tpos_2I = s00 > s10, Tneg_2I = s11 > s01
    #   item 0: T T T T -> I2T T2I group;  item 1: T F F T -> none;  item 2: F T T T -> T2I;  item 3: F F F F
    assert (result["Ipos_2T"], result["Ineg_2T"], result["Tpos_2I"], result["Tneg_2I"]) == (50.0, 50.0, 50.0, 75.0)
    assert (result["I2T"], result["T2I"], result["group"]) == (25.0, 50.0, 25.0)
    assert result["I2T_by_type"] == {"replace": 100.0, "swap": 0.0, "add": 0.0}
    assert result["T2I_by_type"] == {"replace": 100.0, "swap": 50.0, "add": 0.0}
    assert result["by_subtype"]["swap/obj"] == {"I2T": 0.0, "T2I": 100.0, "group": 0.0, "n": 1, "ties": 1}
    assert (result["n_items"], result["n_ties"]) == (4, 1)


def _png(degrees):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (round(degrees / 90 * 255), 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


ROWS = [  # as the parquet's records read: images are HF {"bytes", "path"} structs
    {"image": {"bytes": _png(0), "path": None}, "caption": "a dog left of a cat",
     "negative_image": {"bytes": _png(90), "path": "neg.png"}, "negative_caption": "a cat left of a dog",
     "type": "swap", "subtype": "obj"},
    {"image": {"bytes": _png(0), "path": None}, "caption": "a red ball",
     "negative_image": {"bytes": _png(90), "path": None}, "negative_caption": "a blue ball",
     "type": "replace", "subtype": "att"},
]
TABLE = {"a dog left of a cat": unit(10), "a cat left of a dog": unit(80), "a red ball": unit(60),
         "a blue ball": unit(85)}


def test_bivlc_extracted_rows_load_and_score_end_to_end(tmp_path):
    root = tmp_path / "bivlc"
    assert bivlc.write_extracted(ROWS, root) == 2
    lines = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    assert lines[0] == {"row": 0, "image": "images/0_0.png", "negative_image": "images/0_1.png",
                        "caption": "a dog left of a cat", "negative_caption": "a cat left of a dog",
                        "type": "swap", "subtype": "obj"}
    assert (root / "images" / "1_1.png").read_bytes() == ROWS[1]["negative_image"]["bytes"]  # bytes unchanged
    scorer, _ = scorer_for(TABLE)
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--quiet", "--benchmark", "bivlc",
                                     "--data-root", f"bivlc={root}"])
    (record,) = cli.evaluate(args, scorer=scorer)
    # row 0: I0 (0 deg) prefers C0 (10) over C1 (80), I1 (90) prefers C1; each caption picks its image: group
    # row 1: I0 prefers C0 (60 vs 85); I1 prefers C1 (85); C0 (60) is closer to I1 (90) than to I0 (0): T2I wrong
    assert (record["metrics"]["I2T"], record["metrics"]["T2I"], record["metrics"]["group"]) == (100.0, 50.0, 50.0)
    assert record["dataset"] == "bivlc" and set(record["metrics"]["blind"]) == {"ngram", "caption_prior"}
    assert record["metrics"]["blind"]["ngram"]["I2T"] == 0.0  # a text-only prior gives both images one caption


def test_bivlc_bad_input(tmp_path):
    with pytest.raises(EvalDataError, match="lacks columns"):
        bivlc.write_extracted([{"image": {"bytes": _png(0)}}], tmp_path / "x")
    with pytest.raises(EvalDataError, match="'negative_image' must be an image struct"):
        bivlc.write_extracted([{**ROWS[0], "negative_image": None}], tmp_path / "y")
    root = tmp_path / "bivlc"
    (root / "data").mkdir(parents=True)
    (root / "data" / "test-00000-of-00002.parquet").write_bytes(b"PAR1")
    with pytest.raises(EvalDataError, match=r"found 1 parquet shard\(s\): extract them.*fetch bivlc"):
        bivlc.load(root)
    bivlc.write_extracted(ROWS, root)
    text = (root / "test.jsonl").read_text().replace('"swap"', '"shuffle"')
    (root / "test.jsonl").write_text(text)
    with pytest.raises(EvalDataError, match="line 1: type/subtype must be one of"):
        bivlc.load(root)


def test_bivlc_parquet_rows_need_pyarrow_or_read_hf_structs(tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # not installed here: the fetcher says what to install, the shards stay
        with pytest.raises(EvalDataError, match="needs pyarrow"):
            list(bivlc.parquet_rows([tmp_path / "x.parquet"]))
        return
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert list(bivlc.parquet_rows([path])) == ROWS


@pytest.fixture
def colorswap_root(tmp_path):
    (tmp_path / "images").mkdir()
    for name, degrees in (("img_0_1", 0), ("img_0_2", 90), ("img_1_1", 0), ("img_1_2", 90)):
        angle_image(tmp_path / "images" / f"{name}.png", degrees)
    examples = [{"id": 0, "caption_1": "someone holding a yellow umbrella wearing a white dress",
                 "caption_2": "someone holding a white umbrella wearing a yellow dress",
                 "image_1": "images/img_0_1.png", "image_2": "images/img_0_2.png", "image_source": "midjourney",
                 "caption_source": "human"},
                {"id": 1, "caption_1": "a red cup on a blue plate", "caption_2": "a blue cup on a red plate",
                 "image_1": "images/img_1_1.png", "image_2": "images/img_1_2.png", "image_source": "dalle3",
                 "caption_source": "human"}]
    (tmp_path / "test.json").write_text(json.dumps(examples))
    return tmp_path


def test_colorswap_winoground_scores_and_tags(colorswap_root):
    table = {"someone holding a yellow umbrella wearing a white dress": unit(20),
             "someone holding a white umbrella wearing a yellow dress": unit(70),
             "a red cup on a blue plate": unit(50), "a blue cup on a red plate": unit(80)}
    scorer, _ = scorer_for(table)
    items = colorswap.load(colorswap_root)
    assert items[1].meta["tags"] == ["image_source=dalle3", "caption_source=human"]
    result = colorswap.metrics(items, scorer.score_items(items))
    # example 0: right everywhere. example 1: image 1 (0 deg) prefers caption_1 (50 vs 80 deg), image 2 (90)
    # prefers caption_2, but caption_1 (50) is closer to image 2 (40 deg away) than to image 1: image score wrong
    assert (result["text"], result["image"], result["group"]) == (100.0, 50.0, 50.0)
    assert result["tags"]["image_source=midjourney"]["group"] == 100.0
    assert result["tags"]["image_source=dalle3"]["group"] == 0.0
    assert (result["n_items"], result["n_ties"]) == (2, 0) and "Winoground strict" in colorswap.PROTOCOL["tie_policy"]


def test_colorswap_bad_input(colorswap_root):
    data = json.loads((colorswap_root / "test.json").read_text())
    data[1]["image_2"] = "images/missing.png"
    (colorswap_root / "test.json").write_text(json.dumps(data))
    with pytest.raises(EvalDataError, match=r"example 1 \(id 1\) names image_2 .*missing.png, which does not exist"):
        colorswap.load(colorswap_root)
    with pytest.raises(EvalDataError, match="train.json not found.*fetch colorswap"):
        colorswap.load(colorswap_root, "train")
