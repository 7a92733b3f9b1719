"""Hard-negative training data (open_clip_align.data.hardneg): formats, sampling, fill, errors, loaders."""
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from open_clip_train.params import parse_args as upstream_parse_args  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402
from torchvision.transforms import ToTensor  # noqa: E402

from open_clip_align.data.hardneg import HardNegDataError, get_hardneg_train_data  # noqa: E402
from open_clip_align.params import build_preparser  # noqa: E402

L = 77


@pytest.fixture(scope="module")
def tok():
    return open_clip.get_tokenizer("ViT-B-32")


def make_args(train_data, fmt, **overrides):
    """Namespace as open_clip_train.main would see it: upstream flags + plugin flags + distributed fields."""
    args = upstream_parse_args(["--train-data", str(train_data)])
    vars(args).update(vars(build_preparser().parse_args(["--hardneg-format", fmt])))
    vars(args).update(distributed=False, world_size=1, rank=0, workers=0, batch_size=2, num_hardneg=2)
    vars(args).update(overrides)
    return args


def build(args, tok, epoch=0):
    return get_hardneg_train_data(args, ToTensor(), tok, epoch=epoch)


def png(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def png_bytes(colour=(30, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_csv(path: Path, rows, header=("filepath", "title", "neg_caption"), sep="\t") -> Path:
    """rows: (image, caption, negatives cell) triples; negatives lists are written as repr()."""
    lines = [sep.join(header)] + [sep.join(c if isinstance(c, str) else repr(c) for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(root: Path, n: int, n_neg: int = 3):
    """n rows with images img/i.png (created) and negatives 'neg i-j'."""
    return [(str(png(root / "img" / f"{i}.png").relative_to(root)), f"caption {i}",
             [f"neg {i}-{j}" for j in range(n_neg)]) for i in range(n)]


def check_tokens(tokens, tok, caption, negatives, k):
    """tokens == [tok(caption); tok(negatives)...; zero rows up to 1+k]."""
    assert tokens.dtype == torch.long and tuple(tokens.shape) == (1 + k, L)
    assert torch.equal(tokens[:1 + len(negatives)], tok([caption, *negatives]))
    assert not tokens[1 + len(negatives):].any()


def row_texts(tokens, tok, candidates):
    """Decode token rows back to the candidate strings they came from."""
    table = {tuple(t.tolist()): c for t, c in zip(tok(list(candidates)), candidates)}
    return [table[tuple(t.tolist())] for t in tokens]


# ----------------------------------------------------------------------------- formats and batches

def test_csv_first_k_in_order_and_batches(tmp_path, tok):
    rows = csv_rows(tmp_path, 4)
    args = make_args(write_csv(tmp_path / "train.csv", rows), "csv", hardneg_sampling="first")
    info = build(args, tok)
    dataset = info.dataloader.dataset
    for i, (_, caption, negs) in enumerate(rows):
        image, tokens = dataset[i]
        assert tuple(image.shape) == (3, 8, 8)
        check_tokens(tokens, tok, caption, negs[:2], k=2)
    batches = list(info.dataloader)
    assert len(batches) == 2
    positives = set()
    for batch in batches:
        assert isinstance(batch, tuple) and len(batch) == 2
        images, texts = batch
        assert tuple(images.shape) == (2, 3, 8, 8) and tuple(texts.shape) == (2, 3, L)
        for t in texts:
            caption = row_texts(t[:1], tok, [r[1] for r in rows])[0]
            positives.add(caption)
            negs = next(r[2] for r in rows if r[1] == caption)
            check_tokens(t, tok, caption, negs[:2], k=2)
    assert positives == {r[1] for r in rows}


def test_csv_comma_separator_and_json_list_cell(tmp_path, tok):
    png(tmp_path / "a.png")
    path = tmp_path / "train.csv"
    path.write_text('filepath,title,neg_caption\na.png,a red square,"[""x y"", ""z w""]"\n'
                    'a.png,a blue square,"[\'p q\', \'r s\']"\n')
    info = build(make_args(path, "csv", csv_separator=",", batch_size=1, hardneg_sampling="first"), tok)
    check_tokens(info.dataloader.dataset[0][1], tok, "a red square", ["x y", "z w"], k=2)
    check_tokens(info.dataloader.dataset[1][1], tok, "a blue square", ["p q", "r s"], k=2)


def test_default_sampling_per_format(tmp_path, tok):
    csv_path = write_csv(tmp_path / "train.csv", csv_rows(tmp_path, 2))
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"image": f"img/{i}.png", "original": f"c {i}", "enhanced": ["a", "b"]})
                             + "\n" for i in range(2)))
    assert build(make_args(csv_path, "csv"), tok).dataloader.dataset.selector.sampling == "random"
    assert build(make_args(jsonl, "jsonl"), tok).dataloader.dataset.selector.sampling == "first"


def test_degla_json_int_ids_template_and_root(tmp_path, tok):
    root = tmp_path / "coco"
    entries = []
    for image_id in (391895, 7):
        png(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
        entries.append({"image_id": image_id, "original": f"photo {image_id}",
                        "enhanced": [f"n{image_id}-{j}" for j in range(5)], "types": ["swap"] * 5})
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "degla.json"
    path.write_text(json.dumps(entries, indent=2))
    args = make_args(path, "degla-json", json_image_key="image_id", hardneg_image_root=str(root), num_hardneg=4,
                     json_image_template="train2014/COCO_train2014_{:012d}.jpg")
    dataset = build(args, tok).dataloader.dataset
    assert dataset.records[0].image == str(root / "train2014" / "COCO_train2014_000000391895.jpg")
    for i, entry in enumerate(entries):
        check_tokens(dataset[i][1], tok, entry["original"], entry["enhanced"][:4], k=4)


def test_jsonl_blank_lines_and_first(tmp_path, tok):
    png(tmp_path / "a.png")
    objs = [{"image": "a.png", "original": f"cap {i}", "enhanced": [f"e{i}{j}" for j in range(3)], "x": 1}
            for i in range(3)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n" + json.dumps(objs[0]) + "\n\n" + json.dumps(objs[1]) + "\n" + json.dumps(objs[2]) + "\n\n")
    dataset = build(make_args(path, "jsonl"), tok).dataloader.dataset
    assert [r.where for r in dataset.records] == [f"{path}, line {n} (image 'a.png')" for n in (2, 4, 5)]
    for i, obj in enumerate(objs):
        check_tokens(dataset[i][1], tok, obj["original"], obj["enhanced"][:2], k=2)


def test_relative_paths_csv_dir_vs_image_root(tmp_path, tok):
    data_dir, root = tmp_path / "data", tmp_path / "root"
    data_dir.mkdir()
    png(data_dir / "img" / "0.png")
    png(root / "img" / "0.png")
    absolute = png(tmp_path / "elsewhere" / "abs.png")
    rows = [("img/0.png", "c0", ["a", "b"]), (str(absolute), "c1", ["a", "b"])]
    path = write_csv(data_dir / "train.csv", rows)
    records = build(make_args(path, "csv", batch_size=1), tok).dataloader.dataset.records
    assert [r.image for r in records] == [str(data_dir / "img" / "0.png"), str(absolute)]
    records = build(make_args(path, "csv", batch_size=1, hardneg_image_root=str(root)), tok).dataloader.dataset.records
    assert [r.image for r in records] == [str(root / "img" / "0.png"), str(absolute)]


# ----------------------------------------------------------------------------- sampling and fill

def test_random_sampling_varies_by_epoch_and_is_seeded(tmp_path, tok):
    negs = [f"negative number {j}" for j in range(6)]
    path = write_csv(tmp_path / "train.csv", [(str(png(tmp_path / "a.png")), "the positive", negs)])

    def draws(seed):
        info = build(make_args(path, "csv", batch_size=1, seed=seed), tok)
        out = []
        for epoch in range(8):
            info.set_epoch(epoch)
            tokens = info.dataloader.dataset[0][1]
            assert row_texts(tokens[:1], tok, ["the positive"]) == ["the positive"]
            out.append(tuple(row_texts(tokens[1:], tok, negs)))
        return out

    first = draws(seed=0)
    assert all(len(set(d)) == 2 for d in first)  # K distinct negatives
    assert len({frozenset(d) for d in first}) > 1  # different subsets across epochs
    assert draws(seed=0) == first  # reproducible
    assert draws(seed=1) != first


def test_fill_replace(tmp_path, tok):
    png(tmp_path / "a.png")
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"image": "a.png", "original": "pos", "enhanced": ["only one"]}) + "\n"
                    + json.dumps({"image": "a.png", "original": "pos2", "enhanced": ["u v", "w x"]}) + "\n")
    dataset = build(make_args(path, "jsonl", num_hardneg=3, hardneg_fill="replace", batch_size=1), tok).dataloader.dataset
    check_tokens(dataset[0][1], tok, "pos", ["only one"] * 3, k=3)
    texts = row_texts(dataset[1][1][1:], tok, ["u v", "w x"])
    assert texts[:2] == ["u v", "w x"] and texts[2] in ("u v", "w x")


def test_fill_pad_gives_zero_rows(tmp_path, tok):
    png(tmp_path / "a.png")
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"image": "a.png", "original": "pos", "enhanced": ["only one"]}) + "\n"
                    + json.dumps({"image": "a.png", "original": "none", "enhanced": []}) + "\n")
    dataset = build(make_args(path, "jsonl", num_hardneg=3, hardneg_fill="pad", batch_size=1), tok).dataloader.dataset
    tokens = dataset[0][1]
    check_tokens(tokens, tok, "pos", ["only one"], k=3)
    assert not tokens[2:].any() and tokens[1].any()
    check_tokens(dataset[1][1], tok, "none", [], k=3)


# ----------------------------------------------------------------------------- errors

def _csv_case(tmp_path, rows, **kw):
    return make_args(write_csv(tmp_path / "train.csv", rows), "csv", **kw)


def _ok(tmp_path, i=0):
    return (str(png(tmp_path / f"{i}.png").name), f"caption {i}", ["n1", "n2"])


def _json_case(tmp_path, text, fmt="degla-json", name="train.json", **kw):
    png(tmp_path / "0.png")
    (tmp_path / name).write_text(text)
    return make_args(tmp_path / name, fmt, **kw)


GOOD = {"image": "0.png", "original": "cap", "enhanced": ["a", "b"]}

ERROR_CASES = {
    "missing file": (lambda p: make_args(p / "nope.csv", "csv"), ["nope.csv", "not found"]),
    "missing column": (lambda p: make_args(write_csv(p / "train.csv", [("0.png", "c")], header=("filepath", "title")),
                                           "csv"),
                       ["train.csv", "missing column", "neg_caption", "available columns", "filepath"]),
    "extra field": (lambda p: _csv_case(p, [_ok(p), ("0.png", "c", "['a', 'b']\textra")]),
                    ["train.csv", "line 3", "cannot parse"]),
    "empty caption": (lambda p: _csv_case(p, [_ok(p), ("0.png", "  ", ["a", "b"])]),
                      ["train.csv, line 3", "empty positive caption"]),
    "not a list literal": (lambda p: _csv_case(p, [("0.png", "c", "[a, b")]),
                           ["train.csv, line 2", "not a list literal"]),
    "list item not a string": (lambda p: _csv_case(p, [_ok(p), ("0.png", "c", "['a', 3]")]),
                               ["train.csv, line 3", "item 2", "expected a string"]),
    "empty list item": (lambda p: _csv_case(p, [("0.png", "c", "['a', ' ']")]),
                        ["train.csv, line 2", "item 2", "empty string"]),
    "cell not a list": (lambda p: _csv_case(p, [("0.png", "c", "'just text'")]),
                        ["train.csv, line 2", "must be a list"]),
    "fewer than K": (lambda p: _csv_case(p, [_ok(p)], num_hardneg=4), ["train.csv, line 2", "fewer than --num-hardneg 4"]),
    "replace needs one": (lambda p: _csv_case(p, [("0.png", "c", [])], hardneg_fill="replace"),
                          ["train.csv, line 2", "no negatives"]),
    "missing image": (lambda p: _csv_case(p, [_ok(p), ("missing.png", "c", ["a", "b"])]),
                      ["train.csv, line 3", "image file not found", "missing.png"]),
    "invalid json": (lambda p: _json_case(p, '[\n {"image": "0.png",\n  "original" "x"}]'),
                     ["train.json", "invalid JSON at line 3"]),
    "json not array": (lambda p: _json_case(p, json.dumps(GOOD)), ["train.json", "expected a JSON array"]),
    "json entry not object": (lambda p: _json_case(p, json.dumps([GOOD, "text"])),
                              ["train.json, entry 2", "expected a JSON object"]),
    "json missing field": (lambda p: _json_case(p, json.dumps([GOOD, {"image_id": 3, "original": "c"}])),
                           ["train.json, entry 2", "missing field", "enhanced", "available fields", "image_id"]),
    "json caption not string": (lambda p: _json_case(p, json.dumps([{**GOOD, "original": 5}])),
                                ["train.json, entry 1", "'0.png'", "must be a string"]),
    "template fails": (lambda p: _json_case(p, json.dumps([{**GOOD, "image": "abc"}]),
                                            json_image_template="COCO_{:012d}.jpg"),
                       ["train.json, entry 1", "'abc'", "--json-image-template"]),
    "jsonl invalid line": (lambda p: _json_case(p, json.dumps(GOOD) + "\n\n{oops\n", fmt="jsonl", name="t.jsonl"),
                           ["t.jsonl, line 3", "invalid JSON"]),
    "jsonl empty caption": (lambda p: _json_case(p, json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "original": ""}),
                                                 fmt="jsonl", name="t.jsonl"),
                            ["t.jsonl, line 2", "empty positive caption"]),
    "K < 1": (lambda p: _csv_case(p, [_ok(p)], num_hardneg=0), ["--num-hardneg must be at least 1"]),
    "too few rows": (lambda p: _csv_case(p, [_ok(p)], batch_size=2), ["train.csv", "fewer than one global batch"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_raises_readable_error(tmp_path, tok, case):
    make, expected = ERROR_CASES[case]
    with pytest.raises(HardNegDataError) as info:
        build(make(tmp_path), tok)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_at_load_time_names_file_and_row(tmp_path, tok, workers):
    rows = [_ok(tmp_path), ("bad.png", "c", ["a", "b"])]
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    args = _csv_case(tmp_path, rows, batch_size=1, workers=workers)
    with pytest.raises(HardNegDataError) as info:
        list(build(args, tok).dataloader)
    message = str(info.value)
    assert "train.csv, line 3" in message and "cannot read image" in message and "bad.png" in message
    assert "Traceback" not in message


def test_skip_bad_images_drops_and_counts(tmp_path, tok, caplog):
    rows = [_ok(tmp_path, i) for i in range(4)] + [("missing.png", "m", ["a", "b"]), ("bad.png", "b", ["a", "b"])]
    (tmp_path / "bad.png").write_bytes(b"corrupt")
    args = _csv_case(tmp_path, rows, batch_size=1, workers=1, hardneg_skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        info = build(args, tok)
    assert len(info.dataloader.dataset) == 5
    assert re.search(r"Skipping 1 of 6 rows whose image file is missing.*train\.csv, line 6", caplog.text)
    for _ in range(2):  # the count is logged every epoch, from the main process
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            batches = list(info.dataloader)
        assert [len(images) for images, _ in batches] == [1] * 5  # the bad row's sample is replaced
        assert re.search(r"Skipped 1 training sample", caplog.text)


# ----------------------------------------------------------------------------- loader metadata

def test_num_batches_and_samples_single_process(tmp_path, tok):
    info = build(_csv_case(tmp_path, csv_rows(tmp_path, 10), batch_size=3), tok)
    loader = info.dataloader
    assert (loader.num_samples, loader.num_batches, len(list(loader))) == (10, 3, 3)
    assert loader.drop_last and info.sampler.num_replicas == 1
    # the order is a function of (seed, epoch) only, so a resumed run sees the same batches
    orders = []
    for epoch in (0, 1, 0):
        info.set_epoch(epoch)
        orders.append(list(info.sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[0]) == list(range(10))


def test_distributed_sampler_and_set_epoch(tmp_path, tok):
    rows = csv_rows(tmp_path, 10)
    seen = []
    for rank in (0, 1):
        info = build(_csv_case(tmp_path, rows, batch_size=2, distributed=True, world_size=2, rank=rank), tok)
        assert isinstance(info.sampler, DistributedSampler) and info.dataloader.sampler is info.sampler
        assert (info.sampler.num_replicas, info.sampler.rank) == (2, rank)
        assert (info.dataloader.num_samples, info.dataloader.num_batches) == (10, 2)
        info.set_epoch(3)
        assert info.sampler.epoch == 3 and info.dataloader.dataset.shared_epoch.get_value() == 3
        seen.append(set(info.sampler))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 10


# ----------------------------------------------------------------------------- webdataset

def write_shard(path: Path, samples) -> Path:
    """samples: (key, {ext: bytes | str | dict}) pairs."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, value in members.items():
                if isinstance(value, dict):
                    value = json.dumps(value)
                data = value.encode() if isinstance(value, str) else value
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def wds_sample(key, caption_in_txt=True):
    members = {"png": png_bytes(), "json": {"enhanced": [f"{key} n{j}" for j in range(3)]}}
    if caption_in_txt:
        members["txt"] = f"caption {key}"
    else:
        members["json"]["original"] = f"caption {key}"
    return key, members


def test_wds_samples_batches_and_counts(tmp_path, tok):
    for s in range(2):
        write_shard(tmp_path / f"shard-{s:03d}.tar", [wds_sample(f"s{s}k{i}", caption_in_txt=i != 1) for i in range(3)])
    url = str(tmp_path / "shard-{000..001}.tar")
    info = build(make_args(url, "wds", train_num_samples=6), tok)
    assert (info.dataloader.num_batches, info.dataloader.num_samples) == (3, 6)
    captions = {f"caption s{s}k{i}": [f"s{s}k{i} n{j}" for j in range(2)] for s in range(2) for i in range(3)}
    seen = []
    for images, texts in info.dataloader:
        assert tuple(images.shape) == (2, 3, 8, 8) and tuple(texts.shape) == (2, 3, L)
        for t in texts:
            caption = row_texts(t[:1], tok, list(captions))[0]
            check_tokens(t, tok, caption, captions[caption], k=2)
            seen.append(caption)
    assert sorted(seen) == sorted(captions)
    # upstream's rounding: every worker yields the same number of full batches
    info = build(make_args(url, "wds", train_num_samples=6, workers=2, world_size=1), tok)
    assert (info.dataloader.num_batches, info.dataloader.num_samples) == (4, 8)
    with pytest.raises(HardNegDataError, match="every worker needs at least one shard"):
        build(make_args(url, "wds", train_num_samples=6, workers=3), tok)


def _bad_shard(tmp_path):
    key, members = wds_sample("nopic")
    del members["png"]
    return write_shard(tmp_path / "shard-000.tar", [wds_sample("a"), (key, members), wds_sample("b")])


def test_wds_bad_sample_names_shard_and_key(tmp_path, tok):
    args = make_args(_bad_shard(tmp_path), "wds", train_num_samples=4)
    with pytest.raises(HardNegDataError) as info:
        list(build(args, tok).dataloader)
    assert "shard-000.tar" in str(info.value) and "'nopic'" in str(info.value) and "no image member" in str(info.value)


def test_wds_skip_flag_counts(tmp_path, tok, caplog):
    args = make_args(_bad_shard(tmp_path), "wds", train_num_samples=4, hardneg_skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        batches = list(build(args, tok).dataloader)
    assert [len(images) for images, _ in batches] == [2, 2]
    # 2 batches need two passes over the shard: the first pass meets the bad sample, the second may not
    assert re.search(r"Skipped [12] training sample", caplog.text)


def test_wds_malformed_negatives_and_missing_flags(tmp_path, tok):
    key, members = wds_sample("x")
    members["json"] = {"enhanced": "not a list"}
    shard = write_shard(tmp_path / "bad.tar", [(key, members), wds_sample("y")])
    with pytest.raises(HardNegDataError, match=r"bad\.tar, sample 'x': 'enhanced' must be a list of strings, got string"):
        list(build(make_args(shard, "wds", train_num_samples=2, hardneg_skip_bad_images=True), tok).dataloader)
    with pytest.raises(HardNegDataError, match="--train-num-samples"):
        build(make_args(shard, "wds"), tok)
    with pytest.raises(HardNegDataError, match="shard.*not found"):
        build(make_args(tmp_path / "nope.tar", "wds", train_num_samples=2), tok)


# ----------------------------------------------------------------------------- NegCLIP hard-negative images

def _colour(i):
    return (20 * i, 200 - 20 * i, 60)


def hardimg_csv(root: Path, hard, n_neg=2, absolute_prefix=None, name="train.tsv") -> Path:
    """One row per entry of ``hard`` (its neg_image list); row i's 8x8 image has colour _colour(i). With
    ``absolute_prefix`` the file holds absolute paths under that prefix (images stay under ``root``)."""
    rows = []
    for i, neighbours in enumerate(hard):
        split = "train2014" if i % 2 == 0 else "val2014"
        png(root / split / f"{i}.png", _colour(i))
        image = f"{absolute_prefix}/{split}/{i}.png" if absolute_prefix else f"{split}/{i}.png"
        rows.append((image, f"caption {i}", [f"neg {i}-{j}" for j in range(n_neg)], repr(neighbours)))
    return write_csv(root / name, rows, header=("filepath", "title", "neg_caption", "neg_image"))


def _row_of(image):
    """Which row's image a [3,8,8] tensor is (by its colour)."""
    rgb = tuple(round(float(c) * 255) for c in image[:, 0, 0])
    return next(i for i in range(10) if _colour(i) == rgb)


def test_hard_images_bring_a_neighbour_row_with_its_caption_and_negatives(tmp_path, tok):
    hard = [[1, 2], [0], [3, 0], [2]]
    args = make_args(hardimg_csv(tmp_path, hard), "csv", csv_hardimg_key="neg_image", loss="negclip",
                     hardneg_sampling="first", num_hardneg=2)
    info = build(args, tok)
    dataset = info.dataloader.dataset
    picks = set()
    for epoch in range(6):
        info.set_epoch(epoch)
        for i in range(4):
            images, tokens = dataset[i]
            assert tuple(images.shape) == (2, 3, 8, 8) and tuple(tokens.shape) == (2, 3, L)
            assert _row_of(images[0]) == i
            h = _row_of(images[1])
            assert h in hard[i]
            check_tokens(tokens[0], tok, f"caption {i}", [f"neg {i}-0", f"neg {i}-1"], k=2)
            check_tokens(tokens[1], tok, f"caption {h}", [f"neg {h}-0", f"neg {h}-1"], k=2)
            picks.add((i, h))
    assert {(0, 1), (0, 2), (2, 3), (2, 0)} <= picks  # both neighbours get drawn over epochs
    info.set_epoch(3)
    first = [_row_of(dataset[i][0][1]) for i in range(4)]
    assert [_row_of(dataset[i][0][1]) for i in range(4)] == first  # seeded: the same draw again
    images, texts = next(iter(info.dataloader))
    assert tuple(images.shape) == (2, 2, 3, 8, 8) and tuple(texts.shape) == (2, 2, 3, L)


def test_csv_img_root_rebases_absolute_paths(tmp_path, tok):
    hard = [[1], [0], [3], [2]]
    path = hardimg_csv(tmp_path / "coco", hard, absolute_prefix="/nfs/their/machine/coco")
    records = build(make_args(path, "csv", csv_img_root=str(tmp_path / "coco")), tok).dataloader.dataset.records
    assert [r.image for r in records] == [str(tmp_path / "coco" / s / f"{i}.png")
                                          for i, s in enumerate(["train2014", "val2014"] * 2)]
    explicit = make_args(path, "csv", csv_img_root=f"/nfs/their/machine={tmp_path}")
    assert build(explicit, tok).dataloader.dataset.records[1].image == str(tmp_path / "coco" / "val2014" / "1.png")
    with pytest.raises(HardNegDataError, match=r"train\.tsv, line 2: image path '/nfs/their/machine/coco/train2014/"
                                                r"0\.png' is not under '/elsewhere'"):
        build(make_args(path, "csv", csv_img_root=f"/elsewhere={tmp_path}"), tok)
    with pytest.raises(HardNegDataError, match="image file not found"):  # without rebasing
        build(make_args(path, "csv"), tok)


REBASE_CASES = {
    "no absolute paths": (dict(csv_img_root="/data"), ["rebases absolute image paths", "has none"]),
    "nothing shared": (dict(csv_img_root="/data", prefixes=("/a/x", "/b/x")), ["share no directory", "OLD=NEW"]),
    "relative OLD": (dict(csv_img_root="coco=/data", prefixes=("/a/x", "/a/x")), ["absolute prefix OLD"]),
}


@pytest.mark.parametrize("case", list(REBASE_CASES))
def test_csv_img_root_refusals(tmp_path, tok, case):
    kw, expected = REBASE_CASES[case]
    prefixes = kw.pop("prefixes", ("", ""))
    rows = [(f"{p}/{i}.png" if p else _ok(tmp_path, i)[0], f"c {i}", ["a", "b"]) for i, p in enumerate(prefixes)]
    with pytest.raises(HardNegDataError) as info:
        build(_csv_case(tmp_path, rows, **kw), tok)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))


def test_skip_bad_images_renumbers_hard_images(tmp_path, tok, caplog):
    """Row 1's image is missing: it is dropped, row 0 (whose only neighbour it was) too; rows 2, 3 keep theirs."""
    path = hardimg_csv(tmp_path, [[1], [2], [3, 1], [2]])
    (tmp_path / "val2014" / "1.png").unlink()
    args = make_args(path, "csv", csv_hardimg_key="neg_image", loss="negclip", batch_size=1,
                     hardneg_skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        records = build(args, tok).dataloader.dataset.records
    assert [r.caption for r in records] == ["caption 2", "caption 3"]
    assert [r.hard_images for r in records] == [(1,), (0,)]
    assert "Skipping 1 more rows whose every hard-negative image is missing" in caplog.text


@pytest.mark.parametrize("skip", [False, True])
def test_unreadable_hard_image_names_both_rows_or_is_replaced(tmp_path, tok, skip):
    path = hardimg_csv(tmp_path, [[1, 2], [0], [0], [0]])
    (tmp_path / "val2014" / "1.png").write_bytes(b"not an image")
    args = make_args(path, "csv", csv_hardimg_key="neg_image", loss="negclip", hardneg_skip_bad_images=skip)
    dataset = build(args, tok).dataloader.dataset
    if not skip:
        with pytest.raises(HardNegDataError, match=r"train\.tsv, line 3: cannot read image.*1\.png, the "
                                                   r"hard-negative image of .*train\.tsv, line 2\)"):
            for epoch in range(8):  # until row 1 is drawn as row 0's hard image
                dataset.shared_epoch.set_value(epoch)
                dataset[0]
        return
    for epoch in range(8):
        dataset.shared_epoch.set_value(epoch)
        assert _row_of(dataset[0][0][1]) == 2  # row 1 is unreadable: always the other neighbour


def _hardimg_case(tmp_path, cell, **kw):
    png(tmp_path / "0.png")
    rows = [("0.png", "c0", ["a", "b"], "[1]"), ("0.png", "c1", ["a", "b"], cell)]
    path = write_csv(tmp_path / "train.csv", rows, header=("filepath", "title", "neg_caption", "neg_image"))
    return make_args(path, "csv", **{"csv_hardimg_key": "neg_image", "loss": "negclip", **kw})


HARDIMG_ERRORS = {
    "missing column": (lambda p: make_args(write_csv(p / "train.csv", [_ok(p)]), "csv", csv_hardimg_key="neg_image",
                                           loss="negclip"),
                       ["missing column(s) ['neg_image']", "--csv-hardimg-key"]),
    "not a literal": (lambda p: _hardimg_case(p, "[1, "), ["train.csv, line 3", "like [12, 7]"]),
    "empty list": (lambda p: _hardimg_case(p, "[]"), ["train.csv, line 3", "non-empty list of row indices"]),
    "not an index": (lambda p: _hardimg_case(p, "['a']"), ["train.csv, line 3", "item 1", "expected a row index"]),
    "out of range": (lambda p: _hardimg_case(p, "[0, 2]"),
                     ["train.csv, line 3", "item 2", "row 2, outside the file's 2 data rows"]),
    "other format": (lambda p: make_args(p / "x.jsonl", "jsonl", csv_hardimg_key="neg_image", loss="negclip"),
                     ["--csv-hardimg-key applies to --hardneg-format csv only"]),
    "img root with json": (lambda p: make_args(p / "x.json", "degla-json", csv_img_root="/data"),
                           ["--csv-img-root applies to --hardneg-format csv only"]),
}


@pytest.mark.parametrize("case", list(HARDIMG_ERRORS))
def test_hard_image_bad_input(tmp_path, tok, case):
    make, expected = HARDIMG_ERRORS[case]
    with pytest.raises(HardNegDataError) as info:
        build(make(tmp_path), tok)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))


# ----------------------------------------------------------------------------- CE-CLIP's pickled .npy lists

def ceclip_entry(image_id, valid=(1, 1, 1, 1, 1), **overrides):
    entry = {"image_id": image_id, "id": 7 * image_id, "caption": f"a photo {image_id}",
             "relation_aug_caption": f"rel {image_id}" if valid[1] else "###",
             "adj_aug_caption": f"adj {image_id}", "noun_aug_caption": f"noun {image_id}",
             "verb_aug_caption": f"verb {image_id}", "valid_caption": list(valid)}
    entry.update(overrides)
    return entry


def write_npy(path: Path, entries) -> Path:
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, np.array(entries, dtype=object), allow_pickle=True)
    return path


def ceclip_dir(root: Path) -> Path:
    """Two .npy splits (as CE-CLIP's generator writes them) and the COCO images they name."""
    for image_id in (9, 25, 391895):
        png(root / "coco" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
    write_npy(root / "npy" / "processed_dataset0.npy", [ceclip_entry(9), ceclip_entry(25, valid=(1, 0, 1, 1, 1))])
    write_npy(root / "npy" / "processed_dataset1.npy", [ceclip_entry(391895)])
    return root / "npy"


def test_ceclip_npy_reads_typed_negatives_and_masks_invalid_ones(tmp_path, tok):
    args = make_args(ceclip_dir(tmp_path), "ceclip-npy", num_hardneg=4, trust_pickled_data=True,
                     hardneg_image_root=str(tmp_path / "coco"))
    info = build(args, tok)
    dataset = info.dataloader.dataset
    assert [r.where for r in dataset.records] == [
        f"{tmp_path / 'npy' / 'processed_dataset0.npy'}, entry 0 (image_id 9)",
        f"{tmp_path / 'npy' / 'processed_dataset0.npy'}, entry 1 (image_id 25)",
        f"{tmp_path / 'npy' / 'processed_dataset1.npy'}, entry 0 (image_id 391895)"]
    assert dataset.records[2].image == str(tmp_path / "coco" / "train2014" / "COCO_train2014_000000391895.jpg")
    _, tokens = dataset[0]
    check_tokens(tokens, tok, "a photo 9", ["rel 9", "adj 9", "noun 9", "verb 9"], k=4)
    _, tokens = dataset[1]  # relation invalid: slot 1 is an all-zero row, the other types keep their slots
    assert not tokens[1].any()
    assert torch.equal(tokens[[0, 2, 3, 4]], tok(["a photo 25", "adj 25", "noun 25", "verb 25"]))
    images, texts = next(iter(info.dataloader))
    assert tuple(images.shape) == (2, 3, 8, 8) and tuple(texts.shape) == (2, 5, L)
    custom = make_args(tmp_path / "npy" / "processed_dataset1.npy", "ceclip-npy", trust_pickled_data=True,
                       num_hardneg=4, batch_size=1, hardneg_image_root=str(tmp_path / "coco" / "train2014"),
                       npy_image_template="COCO_train2014_{:012d}.jpg")
    assert build(custom, tok).dataloader.dataset.records[0].image.endswith("train2014/COCO_train2014_000000391895.jpg")


def _npy_case(tmp_path, entries, **kw):
    png(tmp_path / "train2014" / "COCO_train2014_000000000001.jpg")
    path = write_npy(tmp_path / "d" / "part.npy", entries)
    return make_args(path.parent, "ceclip-npy", **{"trust_pickled_data": True, "num_hardneg": 4, "batch_size": 1,
                                                   "hardneg_image_root": str(tmp_path), **kw})


NPY_ERRORS = {
    "no trust flag": (lambda p: _npy_case(p, [ceclip_entry(1)], trust_pickled_data=False),
                      ["unpickling can run any code", "--trust-pickled-data"]),
    "not found": (lambda p: make_args(p / "nope", "ceclip-npy", trust_pickled_data=True, num_hardneg=4),
                  ["nope", "not found", "directory of .npy files"]),
    "no npy files": (lambda p: make_args(p, "ceclip-npy", trust_pickled_data=True, num_hardneg=4),
                     ["has no .npy files"]),
    "not npy": (lambda p: make_args((p / "x.npy").write_text("hello") and p / "x.npy", "ceclip-npy",
                                    trust_pickled_data=True, num_hardneg=4), ["x.npy", "cannot load as a pickled"]),
    "not a list of dicts": (lambda p: _npy_case(p, [ceclip_entry(1), "text"]),
                            ["part.npy, entry 1", "expected a dict, got str"]),
    "missing key": (lambda p: _npy_case(p, [{k: v for k, v in ceclip_entry(1).items() if k != "noun_aug_caption"}]),
                    ["part.npy, entry 0", "missing key(s) ['noun_aug_caption']"]),
    "bad mask": (lambda p: _npy_case(p, [ceclip_entry(1, valid_caption=[1, 1, 2, 1, 1])]),
                 ["part.npy, entry 0 (image_id 1)", "'valid_caption' must be a list of 5 zeros/ones"]),
    "short mask": (lambda p: _npy_case(p, [ceclip_entry(1, valid_caption=[1, 1])]), ["'valid_caption'"]),
    "invalid positive": (lambda p: _npy_case(p, [ceclip_entry(1, valid_caption=[0, 1, 1, 1, 1])]),
                         ["marks the positive caption invalid"]),
    "valid negative not text": (lambda p: _npy_case(p, [ceclip_entry(1, verb_aug_caption=None)]),
                                ["entry 0 (image_id 1)", "'verb_aug_caption' must be a non-empty string"]),
    "bad template": (lambda p: _npy_case(p, [ceclip_entry(1)], npy_image_template="{:d}/{:d}.jpg"),
                     ["--npy-image-template"]),
    "K is not 4": (lambda p: _npy_case(p, [ceclip_entry(1)], num_hardneg=3), ["--num-hardneg must be 4"]),
    "random sampling": (lambda p: _npy_case(p, [ceclip_entry(1)], hardneg_sampling="random"),
                        ["--hardneg-sampling random is not supported"]),
    "fill replace": (lambda p: _npy_case(p, [ceclip_entry(1)], hardneg_fill="replace"),
                     ["--hardneg-fill replace is not supported"]),
    "trust flag with csv": (lambda p: _csv_case(p, [_ok(p)], trust_pickled_data=True, batch_size=1),
                            ["--trust-pickled-data applies to --hardneg-format ceclip-npy only"]),
}


@pytest.mark.parametrize("case", list(NPY_ERRORS))
def test_ceclip_npy_bad_input(tmp_path, tok, case):
    make, expected = NPY_ERRORS[case]
    with pytest.raises(HardNegDataError) as info:
        build(make(tmp_path), tok)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))


# ----------------------------------------------------------------------------- more bad input (issue 14, item 10)

def test_utf8_bom_is_accepted_in_json_and_jsonl(tmp_path, tok):
    png(tmp_path / "0.png")
    bom = "\ufeff"
    (tmp_path / "a.json").write_text(bom + json.dumps([GOOD]), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(bom + json.dumps(GOOD) + "\n", encoding="utf-8")
    for name, fmt in (("a.json", "degla-json"), ("a.jsonl", "jsonl")):
        dataset = build(make_args(tmp_path / name, fmt, batch_size=1), tok).dataloader.dataset
        check_tokens(dataset[0][1], tok, "cap", ["a", "b"], k=2)


@pytest.mark.parametrize("fmt", ["csv", "degla-json", "jsonl", "wds"])
def test_a_directory_as_train_data_says_so(tmp_path, tok, fmt):
    with pytest.raises(HardNegDataError) as info:
        build(make_args(tmp_path, fmt, train_num_samples=2), tok)
    message = str(info.value)
    assert f"{tmp_path}: is a directory; --hardneg-format {fmt} expects" in message and "not found" not in message


@pytest.mark.parametrize("cut", ["header boundary", "inside a header"])
def test_a_truncated_shard_is_named(tmp_path, tok, cut):
    """Cut before the third sample: tarfile reads the first two without any error."""
    full = write_shard(tmp_path / "full.tar", [wds_sample(f"k{i}") for i in range(4)])
    with tarfile.open(full) as tar:
        offset = next(m.offset for m in tar.getmembers() if m.name.startswith("k2."))
    data = full.read_bytes()[:offset + (0 if cut == "header boundary" else 100)]
    shard = tmp_path / "shard-000.tar"
    shard.write_bytes(data)
    with tarfile.open(shard) as tar:  # the silent failure being guarded against
        assert {m.name.split(".")[0] for m in tar.getmembers()} == {"k0", "k1"}
    with pytest.raises(HardNegDataError) as info:
        build(make_args(shard, "wds", train_num_samples=4), tok)
    assert str(info.value).startswith(f"{shard}: truncated webdataset shard")
    assert len(list(build(make_args(full, "wds", train_num_samples=4), tok).dataloader)) == 2


# ----------------------------------------------------------------------------- tokenizing once

class CountingTokenizer:
    """The real tokenizer, counting its calls and the captions it was given."""

    def __init__(self, tok):
        self.tok, self.calls, self.captions = tok, 0, 0

    def __call__(self, texts):
        self.calls, self.captions = self.calls + 1, self.captions + len(texts)
        return self.tok(texts)


def test_map_style_tokens_equal_the_plain_tokenizers_for_every_sample_and_each_caption_is_tokenized_once(
        tmp_path, tok):
    """Every sample of every epoch (random draws, replacement fill, hard images, negatives shared between rows)
    has exactly the rows of tokenizer([caption, *its negatives]); the tokenizer ran once per unique caption, when
    the dataset was built, and never while reading samples."""
    shared = ["a shared negative", "another shared one"]
    rows = [(str(png(tmp_path / f"{i}.png").name), f"caption {i}", [f"negative {i}-{j}" for j in range(i % 4)] + shared,
             [(i + 1) % 12, (i + 5) % 12]) for i in range(12)]
    path = write_csv(tmp_path / "train.csv", rows, header=("filepath", "title", "neg_caption", "neg_image"))
    counting = CountingTokenizer(tok)
    args = make_args(path, "csv", num_hardneg=4, hardneg_fill="replace", csv_hardimg_key="neg_image")
    dataset = build(args, counting).dataloader.dataset
    assert counting.captions == 12 + 2 + sum(i % 4 for i in range(12)) and counting.calls == 1
    for epoch in range(3):
        dataset.shared_epoch.set_value(epoch)
        for j, record in enumerate(dataset.records):
            _, tokens = dataset[j]
            assert tokens.dtype == torch.long and tuple(tokens.shape) == (2, 5, L)
            check_tokens(tokens[0], tok, record.caption, dataset.selector.select(record.negatives, epoch, j), k=4)
            h = next(h for h in record.hard_images if tokens[1, 0].equal(tok([dataset.records[h].caption])[0]))
            hard = dataset.records[h]
            check_tokens(tokens[1], tok, hard.caption, dataset.selector.select(hard.negatives, epoch, f"{j}/hard/{h}"),
                         k=4)
    assert counting.calls == 1


def test_pretokenized_rows_keep_any_padding_value_and_id_range():
    """The compact storage gives back exactly what the tokenizer gave: pads other than 0, rows without padding,
    ids beyond uint16, and a caption that repeats."""
    from open_clip_align.data.caption_tokens import PretokenizedCaptions

    table = {"pad seven": [5, 6, 7, 7, 7, 7], "no pad": [1, 2, 3, 4, 5, 6], "big ids": [70000, 3, 0, 0, 0, 0],
             "ends in pad value": [9, 0, 9, 9, 9, 9], "all one value": [4, 4, 4, 4, 4, 4]}
    calls = []

    def tokenizer(texts):
        calls.append(list(texts))
        return torch.tensor([table[t] for t in texts])

    captions = PretokenizedCaptions(tokenizer, [*table, "no pad", "pad seven"])
    assert calls == [list(table)] and len(captions) == len(table)
    got = captions.rows(["big ids", "pad seven", "no pad", "ends in pad value", "all one value", "pad seven"])
    assert got.dtype == torch.long
    assert got.tolist() == [table[t] for t in ("big ids", "pad seven", "no pad", "ends in pad value",
                                               "all one value", "pad seven")]
    assert captions.encode("no pad", [None, "big ids"], 3).tolist() == [table["no pad"], [0] * 6, table["big ids"],
                                                                       [0] * 6]


def test_pretokenizing_in_worker_processes_gives_the_same_rows(monkeypatch, tok):
    from open_clip_align.data.caption_tokens import PretokenizedCaptions

    monkeypatch.setattr(PretokenizedCaptions, "batch", 3)  # 4 tokenizer calls, spread over 2 processes
    texts = [f"caption number {i}" for i in range(10)] + ["caption number 3"]
    pooled = PretokenizedCaptions(tok, texts, workers=2)
    assert len(pooled) == 10 and pooled.rows(texts).equal(tok(texts))


def test_wds_tokenizes_a_batch_in_one_call_and_recurring_captions_once(tmp_path, tok):
    """A batch's captions go to the tokenizer in one call, captions cached earlier are not tokenized again, and
    the rows equal the plain tokenizer's for every sample."""
    shared = ["shared n0", "shared n1"]
    samples = [(f"k{i}", {"png": png_bytes(), "txt": f"caption {i}", "json": {"enhanced": shared}}) for i in range(4)]
    url = str(write_shard(tmp_path / "shard-000.tar", samples))
    counting = CountingTokenizer(tok)
    info = build(make_args(url, "wds", train_num_samples=4), counting)
    for epoch in range(2):
        seen = []
        for _, texts in info.dataloader:
            for t in texts:
                caption = row_texts(t[:1], tok, [f"caption {i}" for i in range(4)])[0]
                check_tokens(t, tok, caption, shared, k=2)
                seen.append(caption)
        assert sorted(seen) == [f"caption {i}" for i in range(4)]
        # epoch 0: two batches, one call each; the second batch's shared negatives were cached. Epoch 1: none.
        assert (counting.calls, counting.captions) == (2, 4 + 2)
