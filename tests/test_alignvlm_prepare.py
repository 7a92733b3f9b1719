"""python -m open_clip_align.vlm.prepare on tiny fixtures in the sources' own formats: the_cauldron's Localized
Narratives parquet (embedded images), Google's Localized Narratives JSONL, PixMo-Cap parquet (image URLs served by a
local HTTP server, one dead), COCO Karpathy's dataset_coco.json. Outputs are read back with the trainer's readers;
an interrupted conversion continues to the same bytes; a malformed record is one line naming file and row."""
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from alignvlm_fixtures import server  # noqa: F401  (fixture)
from open_clip_align.vlm import prepare
from open_clip_align.vlm.caption_data import check_shards, read_caption_table
from open_clip_align.vlm.caption_metrics import load_karpathy_captions

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _image(colour, fmt="PNG", size=(12, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def _cauldron_parquet(path: Path, rows: int = 5, bad: dict = None) -> list:
    texts = [f"the {i}th picture shows a red thing" for i in range(rows)]
    table = {"images": [[{"bytes": _image((40 * i, 0, 0), "JPEG" if i % 2 else "PNG"), "path": None}]
                        for i in range(rows)],
             "texts": [[{"user": "describe", "assistant": t, "source": "localized_narratives"}] for t in texts]}
    for (column, i), value in (bad or {}).items():
        table[column][i] = value
    pq.write_table(pa.table(table), path, row_group_size=2)
    return texts


def _shard_samples(pattern: str):
    urls, _ = check_shards(pattern, 1)
    samples = []
    for url in urls:
        with tarfile.open(url) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".txt")):
            key = name[:-4]
            image = next(v for k, v in members.items() if k.startswith(key + ".") and not k.endswith(".txt"))
            samples.append((key, members[name].decode(), Image.open(io.BytesIO(image)).size))
    return samples


def test_cauldron_parquet_to_shards_and_an_interrupted_run_continues_to_the_same_bytes(tmp_path, monkeypatch):
    source = tmp_path / "localized_narratives-00000.parquet"
    texts = _cauldron_parquet(source)
    argv = ["localized-narratives", str(source), "--format", "wds", "--shard-size", "2"]
    full = prepare.main([*argv, "--out", str(tmp_path / "full")])
    assert (full["rows"], full["samples"], full["skipped_downloads"]) == (5, 5, 0)
    samples = _shard_samples(full["train_data"])
    assert [c for _, c, _ in samples] == texts and all(size == (12, 8) for _, _, size in samples)
    assert json.loads((tmp_path / "full" / "sizes.json").read_text()) == {"shard-000000.tar": 2, "shard-000001.tar": 2,
                                                                          "shard-000002.tar": 1}
    # interrupted after its first shard: the same command continues from the recorded position
    real, calls = prepare._flush, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(prepare, "_flush", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare.main([*argv, "--out", str(tmp_path / "part")])
    assert sorted(p.name for p in (tmp_path / "part").glob("shard-*")) == ["shard-000000.tar"]
    monkeypatch.setattr(prepare, "_flush", real)
    again = prepare.main([*argv, "--out", str(tmp_path / "part")])
    assert again["samples"] == 5
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "sizes.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    assert prepare.main([*argv, "--out", str(tmp_path / "part")])["already_complete"]


def test_pixmo_cap_downloads_its_urls_and_lists_a_dead_one(tmp_path, server, monkeypatch, capsys):
    root, base = server
    (root / "a.jpg").write_bytes(_image((0, 200, 0), "JPEG"))
    (root / "b.gif").write_bytes(_image((0, 0, 200), "GIF"))
    urls = [f"{base}/a.jpg", f"{base}/gone.png", f"{base}/b.gif"]
    source = tmp_path / "pixmo-cap-train.parquet"
    pq.write_table(pa.table({"image_url": urls, "caption": ["A green field.", "Nothing.", "A blue   sky\nabove."],
                             "transcripts": [["t"], ["t"], ["t"]]}), source)
    result = prepare.main(["pixmo-cap", str(source), "--download", "--format", "csv", "--out", str(tmp_path / "o"),
                           "--download-workers", "2", "--timeout", "5"])
    assert (result["rows"], result["samples"], result["skipped_downloads"]) == (3, 2, 1)
    skipped = [json.loads(line) for line in (tmp_path / "o" / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"where": f"{source}, row 2", "url": urls[1], "reason": skipped[0]["reason"]}]
    assert "404" in skipped[0]["reason"]
    records = read_caption_table(result["train_data"])
    assert [r.caption for r in records] == ["A green field.", "A blue sky above."]
    assert [Path(r.image).suffix for r in records] == [".jpg", ".png"]            # the GIF was re-encoded
    assert Image.open(records[1].image).getpixel((0, 0)) == (0, 0, 200)
    assert "1 download(s) skipped" in capsys.readouterr().out
    # without --download a URL row is a one-line error naming the row
    monkeypatch.setattr(sys, "argv", ["x", "pixmo-cap", str(source), "--out", str(tmp_path / "n")])
    with pytest.raises(SystemExit) as exc:
        prepare.cli()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and f"{source}, row 1: the image is a URL" in err and "--download" in err


def test_localized_narratives_jsonl_and_coco_karpathy_to_csv_and_the_eval_file(tmp_path):
    coco = tmp_path / "coco"
    (coco / "val2014").mkdir(parents=True)
    (coco / "train2017").mkdir()
    for i in (139, 285):
        (coco / "train2017" / f"{i:012d}.jpg").write_bytes(_image((i % 255, 0, 0), "JPEG"))
    ln = tmp_path / "coco_train_localized_narratives-00000-of-00001.jsonl"
    ln.write_text("".join(json.dumps({"dataset_id": "mscoco_train2017", "image_id": str(i), "annotator_id": 7,
                                      "caption": f"In this image we can see {i} cats.", "timed_caption": [],
                                      "traces": []}) + "\n" for i in (139, 285)))
    out = prepare.main(["localized-narratives", str(ln), "--image-root", str(coco / "train2017"), "--format", "csv",
                        "--out", str(tmp_path / "ln")])
    records = read_caption_table(out["train_data"])
    assert [(Path(r.image).name, r.caption) for r in records] == [("000000000139.jpg", "In this image we can see "
                                                                   "139 cats."), ("000000000285.jpg", "In this "
                                                                   "image we can see 285 cats.")]
    images = []
    for i, split in enumerate(["train", "restval", "test", "val"]):
        name = f"COCO_val2014_{i:012d}.jpg"
        (coco / "val2014" / name).write_bytes(_image((0, 50 * i, 0)))
        images.append({"filepath": "val2014", "filename": name, "split": split, "cocoid": i,
                       "sentences": [{"raw": f"Image {i} caption {j}.", "tokens": []} for j in range(2)]})
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": images, "dataset": "coco"}))
    train = prepare.main(["coco-karpathy", str(karpathy), "--split", "train,restval", "--image-root", str(coco),
                          "--format", "csv", "--out", str(tmp_path / "coco-train")])
    assert [r.caption for r in read_caption_table(train["train_data"])] == [
        "Image 0 caption 0.", "Image 0 caption 1.", "Image 1 caption 0.", "Image 1 caption 1."]
    first = prepare.main(["coco-karpathy", str(karpathy), "--split", "train", "--captions", "first", "--image-root",
                          str(coco), "--format", "wds", "--out", str(tmp_path / "coco-wds")])
    assert [c for _, c, _ in _shard_samples(first["train_data"])] == ["Image 0 caption 0."]
    test = prepare.main(["coco-karpathy", str(karpathy), "--split", "test", "--image-root", str(coco), "--format",
                         "karpathy", "--out", str(tmp_path / "coco-test")])
    assert Path(test["file"]).name == "coco_karpathy_test.json"
    paths, refs = load_karpathy_captions(test["file"], image_root=str(coco), check_images=True)
    assert [Path(p).name for p in paths] == ["COCO_val2014_000000000002.jpg"]
    assert refs[paths[0]] == ["Image 2 caption 0.", "Image 2 caption 1."]


def _error(monkeypatch, capsys, argv) -> str:
    monkeypatch.setattr(sys, "argv", ["x", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        prepare.cli()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_malformed_record_is_one_line_naming_file_and_row(tmp_path, monkeypatch, capsys):
    bad_text = tmp_path / "empty-text.parquet"
    _cauldron_parquet(bad_text, bad={("texts", 3): [{"user": "u", "assistant": "  ", "source": "s"}]})
    bad_image = tmp_path / "bad-image.parquet"
    _cauldron_parquet(bad_image, bad={("images", 1): [{"bytes": b"not an image at all", "path": None}]})
    jsonl = tmp_path / "ln.jsonl"
    jsonl.write_text(json.dumps({"dataset_id": "open_images", "image_id": "x1", "caption": "a cat"}) + "\n{oops\n")
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": [{"filepath": "v", "filename": "a.jpg", "split": "train"}]}))
    cases = [(["localized-narratives", bad_text], f"{bad_text}, row 4: texts[].assistant must be a non-empty string"),
             (["localized-narratives", bad_image], f"{bad_image}, row 2: the image is not a readable image file"),
             (["localized-narratives", jsonl, "--image-root", tmp_path], f"{jsonl}, line 1: image file not found: "
                                                                         f"{tmp_path / 'x1.jpg'}"),
             (["coco-karpathy", karpathy, "--split", "train"], f"{karpathy}, row 1: sentences must be a non-empty"),
             (["coco-karpathy", tmp_path / "none.json"], "none.json: not found"),
             (["pixmo-cap", bad_text, "--split", "train"], "--split selects splits of COCO Karpathy")]
    for i, (argv, fragment) in enumerate(cases):
        err = _error(monkeypatch, capsys, [*argv, "--out", tmp_path / f"o{i}", "--format", "csv"])
        assert fragment in err, err
    (tmp_path / "o6").mkdir()
    (jsonl_ok := tmp_path / "ok.jsonl").write_text(json.dumps({"dataset_id": "x", "image_id": "a", "caption": "c"}))
    (tmp_path / "o6" / "notes.txt").write_text("mine")
    err = _error(monkeypatch, capsys, ["localized-narratives", jsonl_ok, "--out", tmp_path / "o6"])
    assert "not empty and no progress.json" in err
    # the part committed before the bad row stays, and the same command refuses other settings for that --out
    assert (tmp_path / "o0" / "progress.json").is_file()
    err = _error(monkeypatch, capsys, ["localized-narratives", bad_text, "--out", tmp_path / "o0", "--format", "csv",
                                       "--shard-size", "7"])
    assert "holds a conversion with other settings (shard_size: 1000 -> 7" in err
