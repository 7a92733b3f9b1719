"""The suite encodes each image file once per run, whatever the spelling of its path: ShapeCrepe's Winoground pairs
name the SugarCrepe images through ``../..``, and the ``synthetic`` benchmark must not encode them twice."""
import open_clip
import pytest
import torch

from open_clip_align.data.synthetic import generate
from open_clip_align.eval.benchmarks import BENCHMARKS
from open_clip_align.eval.during_training import benchmark_options
from open_clip_align.eval.items import ImageRef
from open_clip_align.eval.scoring import DualEncoderScorer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_file_one_ref_whatever_the_spelling(tmp_path):
    assert ImageRef(f"{tmp_path}/a/../b.png") == ImageRef(f"{tmp_path}/b.png")
    assert ImageRef(f"{tmp_path}/./b.png", (1, 2, 3, 4)).key() == f"{tmp_path}/b.png#1,2,3,4"
    assert len({ImageRef(f"{tmp_path}/x/../b.png"), ImageRef(f"{tmp_path}//b.png"), ImageRef(f"{tmp_path}/b.png")}) == 1


def test_synthetic_encodes_each_image_file_once(tmp_path):
    root = tmp_path / "shapes"
    generate(root, preset="ci", test_pairs=3, zeroshot_per_class=1, train_size=8, pretrain_size=0, progress=False,
             workers=1)
    files = [p for pattern in ("sugarcrepe/*/val2017/*.png", "zeroshot/*/test/*/*.png") for p in root.glob(pattern)]
    assert (root / "winoground" / "iid" / "pairs.jsonl").read_text().count('"../../sugarcrepe/iid/val2017/') > 0
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("hardneg-tiny-ViT")
    scorer = DualEncoderScorer(model.eval(), preprocess, open_clip.get_tokenizer("hardneg-tiny-ViT"), progress=False)
    parts = BENCHMARKS["synthetic"](scorer, root, benchmark_options())
    assert {p.dataset for p in parts} >= {"shapecrepe/iid/winoground", "shapecrepe/heldout/sugar_crepe"}
    assert scorer.images_encoded == len(files)  # the Winoground images were encoded with the SugarCrepe ones
