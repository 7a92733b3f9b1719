"""The minimal SugarCrepe-format scorer: strict tie rule, averages, one encode per unique image, errors."""
import json

import pytest
import torch
from PIL import Image

from open_clip_align.eval.scoring import pairwise_decisions
from open_clip_align.eval.sugarcrepe import evaluate_sugarcrepe, load_subset, summarize


def test_strict_rule_counts_ties_as_wrong():
    correct, ties = pairwise_decisions(torch.tensor([0.5, 0.2, 0.3]), torch.tensor([0.4, 0.2, 0.9]))
    assert correct.tolist() == [True, False, False]
    assert ties.tolist() == [False, True, False]


def test_category_means_and_micro_average():
    per = {"replace_obj": {"acc": 90.0, "n": 10}, "replace_att": {"acc": 60.0, "n": 30},
           "swap_obj": {"acc": 50.0, "n": 20}, "swap_att": {"acc": 70.0, "n": 20}}
    got = summarize(per)
    assert got["categories"] == {"replace": 75.0, "swap": 60.0}
    assert got["micro"] == pytest.approx((9 + 18 + 10 + 14) / 80 * 100)


class _LookupModel:
    """Image features from the image's red channel, text features from a caption table; counts encodes."""

    def __init__(self, text_table):
        self.text_table = text_table
        self.images_encoded = 0

    def encode_image(self, pixels, normalize=True):
        self.images_encoded += len(pixels)
        angle = pixels[:, 0, 0, 0] * torch.pi / 2
        return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def encode_text(self, tokens, normalize=True):
        return torch.stack([self.text_table[int(t[0])] for t in tokens])


def test_evaluate_sugarcrepe_end_to_end(tmp_path):
    (tmp_path / "val2017").mkdir()
    for name, red in (("a.png", 0), ("b.png", 255)):
        Image.new("RGB", (4, 4), (red, 0, 0)).save(tmp_path / "val2017" / name)
    captions = ["x-axis", "y-axis", "diagonal", "x-again"]
    table = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 1.0]),
             2: torch.tensor([0.7071, 0.7071]), 3: torch.tensor([1.0, 0.0])}
    subset = {"0": {"filename": "a.png", "caption": "x-axis", "negative_caption": "diagonal"},   # 1 > .71: right
              "2": {"filename": "b.png", "caption": "x-axis", "negative_caption": "y-axis"},     # 0 < 1: wrong
              "5": {"filename": "a.png", "caption": "x-axis", "negative_caption": "x-again"}}    # tie: wrong
    (tmp_path / "swap_att.json").write_text(json.dumps(subset))
    (tmp_path / "swap_obj.json").write_text(json.dumps({"0": subset["0"]}))
    model = _LookupModel(table)
    tokenizer = lambda texts: torch.tensor([[captions.index(t)] for t in texts])  # noqa: E731
    to_tensor = lambda im: torch.tensor(im.getpixel((0, 0))).float().div(255).view(3, 1, 1).expand(3, 2, 2)  # noqa: E731
    result = evaluate_sugarcrepe(model, to_tensor, tokenizer, tmp_path, subsets=["swap_att", "swap_obj"])
    assert result["subsets"]["swap_att"] == {"acc": pytest.approx(100 / 3), "n": 3, "ties": 1}
    assert result["subsets"]["swap_obj"]["acc"] == 100.0
    assert result["categories"]["swap"] == pytest.approx((100 / 3 + 100) / 2)
    assert model.images_encoded == 2  # a.png appears in both subsets and twice in one, encoded once


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="swap_att.json.*val2017"):
        load_subset(tmp_path, "swap_att")
    (tmp_path / "swap_att.json").write_text(json.dumps({"0": {"filename": "a.png", "caption": "c"}}))
    with pytest.raises(ValueError, match="item '0' lacks \\['negative_caption'\\]"):
        load_subset(tmp_path, "swap_att")
    (tmp_path / "swap_att.json").write_text(json.dumps({"0": {"filename": "a.png", "caption": "c",
                                                               "negative_caption": "d"}}))
    with pytest.raises(FileNotFoundError, match="a.png"):
        load_subset(tmp_path, "swap_att")
