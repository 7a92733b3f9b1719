"""CREPE adapter: the crop box, VG_100K / VG_100K_2 lookup, pessimistic ranks with ties, the official R@k / mean /
median / std aggregation, productivity and systematicity file naming, bad input."""
import math

import pytest
import torch
from PIL import Image

from eval_fixtures import scorer_for, unit, write_csv
from open_clip_align.eval import cli, crepe
from open_clip_align.eval.items import EvalDataError, ImageRef, Item

COLUMNS = ["image_id", "caption", "x", "y", "width", "height", "hard_negs"]


@pytest.fixture
def root(tmp_path):
    """Image 1 (in VG_100K): black, with a full-red 4x4 square at (4, 4) that its row's box selects (90 degrees
    for the fixture model, which reads the crop's top-left pixel); image 2 (in VG_100K_2): black (0 degrees).
    PNG bytes under .jpg names (PIL reads by content), so pixel values are exact."""
    (tmp_path / "VG_100K").mkdir()
    (tmp_path / "VG_100K_2").mkdir()
    one = Image.new("RGB", (8, 8), (0, 0, 0))
    one.paste((255, 0, 0), (4, 4, 8, 8))
    one.save(tmp_path / "VG_100K" / "1.jpg", format="PNG")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "VG_100K_2" / "2.jpg", format="PNG")
    write_csv(crepe.prod_file(tmp_path, "atom", 4), COLUMNS,
           [[1, "a red square", 4, 4, 4, 4, "['a black square', 'a crimson square']"],
            [2, "a black square", 0, 0, 8, 8, "['a grey square', 'a red square']"]])
    write_csv(crepe.syst_file(tmp_path, "unseen", "laion"),
           ["image_id", "caption", "x", "y", "width", "height", "valid_hard_negs_atom", "valid_hard_negs_comp",
            "valid_hard_negs_combined"],
           [[2, "a black square", 0, 0, 8, 8, "['a grey square']", "['a red square']",
             "['a grey square', 'a red square']"]])
    return tmp_path


TABLE = {"a red square": unit(90), "a black square": unit(0), "a crimson square": unit(90),
         "a grey square": unit(45)}


def test_crop_lookup_ranks_and_aggregation(root):
    scorer, _ = scorer_for(TABLE)
    items = crepe.load_file(root, crepe.prod_file(root, "atom", 4), "hard_negs", "atom/complexity_4")
    assert items[0].images == [ImageRef(str(root / "VG_100K" / "1.jpg"), (4.0, 4.0, 4.0, 4.0))]
    assert items[1].images[0].path == str(root / "VG_100K_2" / "2.jpg")
    assert items[0].captions == ["a red square", "a black square", "a crimson square"]
    result = crepe.metrics(items, scorer.score_items(items))
    # row 1: the crop is red (90 deg): caption 1.0, negatives 0.0 and 1.0 (a tie) -> pessimistic rank 1
    # row 2: black (0 deg): caption 1.0, negatives 0.71 and 0.0 -> rank 0
    assert result["R@1"] == 50.0 and result["R@3"] == result["R@5"] == result["R@10"] == 100.0
    assert result["mean_rank"] == 1.5 and result["median_rank"] == 1 and result["rank_std"] == 0.5
    assert (result["n_items"], result["n_ties"], result["mean_negatives"]) == (2, 1, 2.0)


def test_metrics_from_hand_scores_with_varying_negative_counts():
    def item(k, n):
        return Item(id=str(k), images=[ImageRef("x.jpg")], captions=["c"] + [f"n{j}" for j in range(n)],
                    match=[[True] + [False] * n], group="atom/complexity_4")

    scores = [torch.tensor([[0.5, 0.9, 0.8, 0.7, 0.6, 0.1]]),  # rank 4
              torch.tensor([[0.5, 0.5]]),                     # rank 1 (tie)
              torch.tensor([[0.9, 0.1, 0.2]])]                # rank 0
    result = crepe.metrics([item(0, 5), item(1, 1), item(2, 2)], scores)
    assert result["R@1"] == pytest.approx(100 / 3) and result["R@3"] == pytest.approx(200 / 3)
    assert result["R@5"] == 100.0 and result["mean_rank"] == pytest.approx(5 / 3 + 1)
    assert result["median_rank"] == 2 and result["rank_std"] == pytest.approx(math.sqrt(((4 - 5 / 3) ** 2 + (
        1 - 5 / 3) ** 2 + (5 / 3) ** 2) / 3))
    assert result["n_ties"] == 1


def test_benchmark_names_each_file_and_marks_systematicity(root):
    scorer, _ = scorer_for(TABLE)
    args = cli._parser().parse_args(["--model", "hardneg-tiny-ViT", "--quiet", "--benchmark", "crepe",
                                     "--data-root", f"crepe={root}"])
    records = {r["dataset"]: r for r in cli.evaluate(args, scorer=scorer)}
    assert list(records) == ["crepe/atom/complexity_4", "crepe/syst_atom/unseen_in_laion",
                             "crepe/syst_comp/unseen_in_laion", "crepe/syst_combined/unseen_in_laion"]
    assert records["crepe/syst_combined/unseen_in_laion"]["metrics"]["mean_negatives"] == 2.0
    assert records["crepe/atom/complexity_4"]["metrics"]["R@1"] == 50.0
    syst = records["crepe/syst_comp/unseen_in_laion"]
    assert syst["metrics"]["R@1"] == 100.0 and "never for OpenAI CLIP" in syst["protocol"]["validity"]
    assert "pessimistic" in syst["protocol"]["tie_policy"] and "blind" in syst["metrics"]


def test_bad_input(root, tmp_path):
    path = crepe.prod_file(root, "swap", 5)
    write_csv(path, COLUMNS, [[3, "a red square", 0, 0, 4, 4, "['x']"]])
    with pytest.raises(EvalDataError, match=r"line 2: image 3.jpg is in neither .*VG_100K nor .*VG_100K_2"):
        crepe.load_file(root, path, "hard_negs", "swap/complexity_5")
    write_csv(path, COLUMNS, [[1, "a red square", 0, 0, 0, 4, "['x']"]])
    with pytest.raises(EvalDataError, match="width and height must be positive"):
        crepe.load_file(root, path, "hard_negs", "swap/complexity_5")
    write_csv(path, COLUMNS, [[1, "a red square", 0, 0, 4, 4, "x, y"]])
    with pytest.raises(EvalDataError, match="column 'hard_negs' must hold a Python list"):
        crepe.load_file(root, path, "hard_negs", "swap/complexity_5")
    with pytest.raises(EvalDataError, match="lacks column"):
        crepe.load_file(root, path, "valid_hard_negs_atom", "swap/complexity_5")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalDataError, match="no CREPE CSV under .*fetch crepe"):
        crepe.parts(None, empty)
