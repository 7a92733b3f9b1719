"""ComAlign end to end on ShapeCrepe through the public entry points: pretrain a tiny CLIP base, precompute
components (gt boxes), train only the head with ``--loss comalign``, and check that the head raises retrieval
R@1 over the frozen base (the CLIP-only scoring of the same store).

The base must know colours and shapes (a random text tower maps every phrase to nearly the same vector, and the
head then cannot learn), so the test pretrains one for a few epochs on the training captions first.
"""
import json
import os

import open_clip
import pytest
import torch

from open_clip_align.comalign import embed, evaluate
from open_clip_align.data import synthetic
from training.main import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
HEAD = {"dim": 32, "n_entity": 4, "n_relation": 2, "heads": 2, "ffn": 64, "layers": 1, "dropout": 0.1,
        "unused_dim": 0}


def _configs(folder):
    folder.mkdir()
    (folder / "e2e-base.json").write_text(json.dumps({**BASE, "open_clip_align": {"arch": "hardneg"}}))
    (folder / "e2e-comalign.json").write_text(json.dumps({**BASE, "open_clip_align": {"arch": "comalign",
                                                                                       "head": HEAD}}))
    open_clip.add_model_config(folder)


def _karpathy_from_sugarcrepe(root) -> str:
    """Every iid ShapeCrepe test image with its one caption, as a Karpathy-format retrieval file."""
    entries = {}
    for path in sorted((root / "sugarcrepe" / "iid").glob("*.json")):
        for item in json.loads(path.read_text()).values():
            image = f"sugarcrepe/iid/val2017/{item['filename']}"
            entries.setdefault(image, {"image": image, "caption": [item["caption"]]})
    (root / "iid_retrieval.json").write_text(json.dumps(list(entries.values())))
    return "iid_retrieval.json"


def test_trained_head_raises_retrieval_r1(tmp_path, monkeypatch):
    _configs(tmp_path / "configs")
    root = tmp_path / "data"
    synthetic.generate(root, preset="ci", train_size=1000, pretrain_size=0, test_pairs=25, zeroshot_per_class=0,
                       progress=False, workers=1)
    monkeypatch.chdir(root)  # open_clip's CSV loader reads image paths relative to the working directory
    logs = tmp_path / "logs"
    common = ["--device", "cpu", "--precision", "fp32", "--workers", "0", "--seed", "0", "--logs", str(logs),
              "--batch-size", "32", "--warmup", "10", "--log-every-n-steps", "1000"]
    train_main(["--model", "e2e-base", "--loss", "clip", "--dataset-type", "csv", "--train-data", "train.csv",
                "--csv-img-key", "filepath", "--csv-caption-key", "title", "--name", "base", "--epochs", "10",
                "--lr", "3e-3", "--wd", "0.1", *common])
    base = str(logs / "base" / "checkpoints" / "epoch_10.pt")

    test_file = _karpathy_from_sugarcrepe(root)
    for name, annotations in (("train", "train.csv"), ("test", test_file)):
        embed.main(["--model", "e2e-comalign", "--pretrained", base, "--annotations", annotations, "--boxes", "gt",
                    "--scenes", "scenes.jsonl", "--n-entity", "4", "--n-relation", "2", "--out", f"{name}.h5",
                    "--quiet"])
    train_main(["--model", "e2e-comalign", "--pretrained", base, "--loss", "comalign", "--comalign-data", "features",
                "--train-data", "train.h5", "--name", "head", "--epochs", "20", "--lr", "3e-3", "--wd", "0.05",
                *common])
    head = str(logs / "head" / "checkpoints" / "epoch_20.pt")

    out = tmp_path / "retrieval.json"
    evaluate.main(["--model", "e2e-comalign", "--pretrained", head, "--store", "test.h5", "--padding", "masked",
                   "--ks", "1", "5", "10", "--out", str(out)])
    record = json.loads(out.read_text())
    metrics = record["metrics"]
    assert record["protocol"]["n_images"] == record["protocol"]["n_captions"] == 350

    def mean_recall(scoring, k):
        return (metrics[scoring]["image_to_text"][k] + metrics[scoring]["text_to_image"][k]) / 2

    # measured (one thread): clip 7.0 / 29.6, paper 10.7 / 38.3, reference 8.3 / 32.4 (R@1 / R@5, mean of the
    # two directions, 350 images and captions)
    assert mean_recall("paper", "1") > mean_recall("clip", "1") + 1.0
    assert mean_recall("paper", "5") > mean_recall("clip", "5") + 4.0
    # the frozen base is untouched by head training
    start = torch.load(base, map_location="cpu", weights_only=False)["state_dict"]
    end = torch.load(head, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in start.items():
        assert torch.equal(end[key], value), key
    assert any(k.startswith("comalign_head.") for k in end)
    assert os.path.isfile(root / "train.h5") and not os.path.exists(root / "train.h5.partial")
