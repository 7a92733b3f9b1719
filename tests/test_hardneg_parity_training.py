"""The released baselines' data through training.main: NegCLIP's hard-negative images (with NegCLIP-style
absolute paths rebased by --csv-img-root) and CE-CLIP's pickled .npy lists."""
import re

import numpy as np
import open_clip
import pytest
import torch

from conftest import _write_tiny_csv, train_argv
from open_clip_align.data.hardneg import HardNegDataError
from open_clip_align.losses import ceclip, negclip
from training.main import main as plugin_main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hardneg_model_encodes_both_halves_of_a_hard_image_batch():
    model = open_clip.create_model("hardneg-tiny-ViT").eval()
    model.emit_hardneg = True
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    images = torch.randn(3, 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokenizer = open_clip.get_tokenizer("hardneg-tiny-ViT")
    texts = tokenizer([f"caption {i}" for i in range(3 * 2 * 3)]).reshape(3, 2, 3, -1)
    texts[1, 1, 2] = 0  # a padded negative of a hard image's caption
    with torch.no_grad():
        out = model(images, texts)
        for half, prefix in ((0, ""), (1, "hard_")):
            torch.testing.assert_close(out[f"{prefix}image_features"],
                                       model.encode_image(images[:, half], normalize=True), atol=1e-5, rtol=0)
            flat = model.encode_text(texts[:, half].reshape(-1, texts.shape[-1]), normalize=True).reshape(3, 3, -1)
            torch.testing.assert_close(out[f"{prefix}text_features"], flat[:, 0], atol=1e-5, rtol=0)
            valid = out[f"{prefix}neg_text_valid"]
            expected = torch.where(valid[..., None], flat[:, 1:], flat[:, :1])  # invalid slots: the positive's
            torch.testing.assert_close(out[f"{prefix}neg_text_features"], expected, atol=1e-5, rtol=0)
        assert out["hard_neg_text_valid"].tolist() == [[True, True], [True, False], [True, True]]
        model.emit_hardneg = False  # a loss without negatives: only the samples, as plain CLIP outputs
        plain = model(images, texts)
    assert set(plain) == {"image_features", "text_features", "logit_scale"}
    torch.testing.assert_close(plain["image_features"], out["image_features"])


def _negclip_tsv(root):
    """conftest's 16 tiny rows, rewritten with absolute paths from 'another machine' and NegCLIP's neg_image."""
    lines = _write_tiny_csv(root).read_text().splitlines()
    out = [lines[0] + "\tneg_image"]
    for i, line in enumerate(lines[1:]):
        image, rest = line.split("\t", 1)
        out.append(f"/home/someone/negclip/data/{image}\t{rest}\t{[(i + 1) % 16, (i + 5) % 16]}")
    path = root / "train_neg_clip.tsv"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.mark.parametrize("extra,calls", [([], [(4, 64)] * 4), (["--accum-freq", "2"], [(8, 64)] * 4)],
                         ids=["plain", "accum"])
def test_negclip_trains_with_hard_images_through_training_main(tmp_path, monkeypatch, extra, calls):
    seen = []
    forward = negclip.NegCLIPLoss.forward

    def spy(self, image_features, text_features, logit_scale, **kw):
        seen.append(None if kw.get("hard_image_features") is None else tuple(kw["hard_image_features"].shape))
        return forward(self, image_features, text_features, logit_scale, **kw)

    monkeypatch.setattr(negclip.NegCLIPLoss, "forward", spy)
    tsv = _negclip_tsv(tmp_path)
    argv = train_argv(tmp_path, "hardimg", "--model", "hardneg-tiny-ViT", "--loss", "negclip", "--hardneg-format",
                      "csv", "--train-data", str(tsv), "--csv-hardimg-key", "neg_image", "--num-hardneg", "1",
                      "--csv-img-root", str(tmp_path / "img"), *extra)
    assert plugin_main(argv) is None
    assert seen == calls  # every loss call got the hard-negative images of its (accumulated) batch
    log = (tmp_path / "logs" / "hardimg" / "out.log").read_text()
    assert "Contrastive_loss" in log and "csv_hardimg_key: neg_image" in log
    assert re.search(r"absolute image paths under /home/someone/negclip/data/img resolve under", log)


def test_hard_images_with_another_loss_stop_before_training(tmp_path, capsys):
    argv = train_argv(tmp_path, "refused", "--model", "degla-tiny-ViT", "--loss", "degla", "--hardneg-format", "csv",
                      "--train-data", str(_negclip_tsv(tmp_path)), "--csv-hardimg-key", "neg_image")
    with pytest.raises(SystemExit):
        plugin_main(argv)
    assert re.search("--csv-hardimg-key .* is used by --loss negclip only", capsys.readouterr().err)
    assert not (tmp_path / "logs").exists()


def _ceclip_npy(root, n=8):
    from PIL import Image
    entries = []
    for i in range(n):
        image_id = 1000 + i
        (root / "coco" / "train2014").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (30 * i, 100, 200 - 20 * i)).save(
            root / "coco" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg", format="PNG")
        colour = ["red", "green", "blue", "yellow"][i % 4]
        entries.append({"image_id": image_id, "caption": f"a {colour} square left of a circle",
                        "relation_aug_caption": "###" if i % 3 == 0 else f"a circle left of a {colour} square",
                        "adj_aug_caption": f"a pale {colour} square left of a circle",
                        "noun_aug_caption": f"a {colour} square left of a dog",
                        "verb_aug_caption": f"a {colour} square right of a circle",
                        "valid_caption": [1, 0 if i % 3 == 0 else 1, 1, 1, 1]})
    (root / "npy").mkdir()
    np.save(root / "npy" / "processed_dataset0.npy", np.array(entries, dtype=object), allow_pickle=True)
    return root / "npy"


def test_ceclip_trains_on_its_released_npy_format(tmp_path, monkeypatch):
    masks = []
    forward = ceclip.CEClipLoss.forward

    def spy(self, image_features, text_features, logit_scale, **kw):
        masks.append(kw["neg_text_valid"].clone())
        return forward(self, image_features, text_features, logit_scale, **kw)

    monkeypatch.setattr(ceclip.CEClipLoss, "forward", spy)
    argv = train_argv(tmp_path, "ceclip", "--model", "hardneg-tiny-ViT", "--loss", "ce-clip",
                      "--hardneg-format", "ceclip-npy", "--train-data", str(_ceclip_npy(tmp_path)),
                      "--trust-pickled-data", "--hardneg-image-root", str(tmp_path / "coco"),
                      "--ceclip-threshold-type", "max", "--ceclip-imc-mode", "reference")
    assert plugin_main(argv) is None
    log = (tmp_path / "logs" / "ceclip" / "out.log").read_text()
    assert all(key in log for key in ("Contrastive_loss", "Imc_loss", "Cmr_loss"))
    valid = torch.cat(masks)
    assert valid.shape == (8, 4) and valid[:, 1:].all() and (~valid[:, 0]).sum() == 3  # '###' relations masked


def test_ceclip_npy_needs_the_trust_flag(tmp_path):
    argv = train_argv(tmp_path, "untrusted", "--model", "hardneg-tiny-ViT", "--loss", "ce-clip",
                      "--hardneg-format", "ceclip-npy", "--train-data", str(_ceclip_npy(tmp_path)))
    with pytest.raises(HardNegDataError, match="--trust-pickled-data"):
        plugin_main(argv)
