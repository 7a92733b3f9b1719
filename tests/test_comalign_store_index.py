"""The ComAlign store's row index: rows read by offset equal the per-image groups, old stores still read, the
side-file index of an old store (python -m open_clip_align.comalign.store index) is atomic and resumable."""
import logging
import pickle
import re
import shutil

import h5py
import numpy as np
import pytest
import torch

from open_clip_align.comalign import store as store_module
from open_clip_align.comalign.annotations import ComAlignDataError
from open_clip_align.comalign.store import (INDEX_GROUP, ComponentStore, ComponentStoreWriter, StoredRows,
                                            build_index, escape_key, index_side_file, main)

D, NE, NR = 6, 3, 2
ATTRS = {"model": "toy", "n_entity": NE, "n_relation": NR, "embed_dim": D}
IDS = ["%2F/x", "7", "images/a b.png", "139", ".hidden"]
IMAGE_FIELDS = ("global", "entity", "entity_mask", "relation", "relation_mask", "entity_boxes", "relation_boxes")
CAPTION_FIELDS = ("text", "entity", "entity_mask", "relation", "relation_mask")


def _image(rng) -> dict:
    n_e, n_r = int(rng.integers(0, NE + 1)), int(rng.integers(0, NR + 1))
    return {"global": rng.standard_normal(D), "entity": rng.standard_normal((NE, D)) * (np.arange(NE) < n_e)[:, None],
            "entity_mask": np.arange(NE) < n_e, "relation": rng.standard_normal((NR, D)),
            "relation_mask": np.arange(NR) < n_r, "entity_boxes": rng.random((NE, 5)),
            "relation_boxes": rng.random((NR, 5))}


def _caption(rng, string) -> dict:
    return {"string": string, "entities": [f"e{rng.integers(9)}"], "relations": ["r"], "text": rng.standard_normal(D),
            "entity": rng.standard_normal((NE, D)), "entity_mask": rng.random(NE) < 0.5,
            "relation": rng.standard_normal((NR, D)), "relation_mask": rng.random(NR) < 0.5}


def _write(path, ids=IDS, seed=0):
    """A store whose images have 0-3 captions, written in an order that differs from the annotation order."""
    rng = np.random.default_rng(seed)
    with ComponentStoreWriter(path, ATTRS) as writer:
        for index, image_id in reversed(list(enumerate(ids))):
            writer.write(image_id, f"/data/{index}.png", index, _image(rng),
                         [_caption(rng, f"caption {index}.{j}") for j in range(index % 4)])
    return path


def _strip_index(path):
    """What a store written before the index existed looks like (the groups, no /.index)."""
    with h5py.File(path, "a") as f:
        del f[INDEX_GROUP]
    return path


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_rows_equal_the_groups_for_every_image_and_caption(tmp_path):
    path = _write(tmp_path / "store.h5")
    with ComponentStore(path) as store, h5py.File(path, "r") as f:
        assert store.indexed and store.ids() == sorted(IDS, key=IDS.index)
        rows = store.rows()
        assert all(isinstance(rows[name], StoredRows) for name in IMAGE_FIELDS)
        row = 0
        for i, image_id in enumerate(IDS):  # each row against h5py's own read of its dataset
            group = f[escape_key(image_id)]
            for name in IMAGE_FIELDS:
                want = torch.from_numpy(group[name][()])
                assert rows[name][i].dtype == want.dtype and torch.equal(rows[name][i], want), (image_id, name)
            assert rows["image_paths"][i] == group.attrs["path"]
            for j in range(len(group.get("captions", {}))):
                caption = group[f"captions/{j}"]
                assert rows["caption_image"][row] == i and rows["caption_strings"][row] == caption.attrs["string"]
                for name in CAPTION_FIELDS:
                    key = "text" if name == "text" else f"text_{name}"
                    assert torch.equal(rows[key][row], torch.from_numpy(caption[name][()])), (image_id, j, name)
                row += 1
        assert row == len(rows["caption_image"]) == 0 + 1 + 2 + 3 + 0
        batch = rows["entity"][torch.tensor([4, 0, 4])]  # any index form, repeats included
        assert torch.equal(batch, torch.stack([rows["entity"][4], rows["entity"][0], rows["entity"][4]]))
        assert torch.equal(rows["text"][1:4], torch.stack([rows["text"][k] for k in (1, 2, 3)]))
        spawned = pickle.loads(pickle.dumps(rows["entity"]))  # what a spawned DataLoader worker gets
        assert torch.equal(spawned[[4, 0]], rows["entity"][[4, 0]])
    with ComponentStore(path) as indexed, ComponentStore(path, index=False) as groups:
        assert not groups.indexed and groups.ids() == indexed.ids()  # the group scan skips /.index
        for max_captions in (None, 1, 2):
            _assert_same(indexed.load_arrays(max_captions), groups.load_arrays(max_captions))
        first = indexed.rows(max_captions=1)
        assert first["caption_image"].tolist() == [1, 2, 3]
        assert first["caption_strings"] == ["caption 1.0", "caption 2.0", "caption 3.0"]


def test_an_old_store_reads_and_its_side_index_is_built_atomically(tmp_path, capsys):
    path = _strip_index(_write(tmp_path / "old.h5"))
    with ComponentStore(path) as old:
        assert not old.indexed
        want = old.load_arrays()
        with pytest.raises(ComAlignDataError, match=r"old\.h5 has no row index: build it with python -m "
                                                    r"open_clip_align\.comalign\.store index"):
            old.rows()
    main(["index", str(path)])
    assert capsys.readouterr().out.strip() == f"wrote {index_side_file(path)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5", "old.h5.index"]
    with ComponentStore(path) as indexed:
        assert indexed.indexed
        _assert_same(indexed.load_arrays(), want)
    main(["index", str(path)])
    assert capsys.readouterr().out.strip() == f"{path}: already indexed"
    # adding images to the store writes its own index and drops the side file
    with ComponentStoreWriter(path, ATTRS) as writer:
        writer.write("new", "/data/new.png", 9, _image(np.random.default_rng(9)), [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]
    with ComponentStore(path) as grown:
        assert grown.indexed and grown.ids() == [*IDS, "new"]


def test_an_index_that_no_longer_matches_is_ignored_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path / "store.h5")
    copy = _strip_index(shutil.copy(path, tmp_path / "copy.h5"))
    assert build_index(copy, progress=False) == index_side_file(copy)
    stale = shutil.copy(index_side_file(copy), tmp_path / "stale.index")
    with ComponentStoreWriter(copy, ATTRS) as writer:  # the store grows; then lose its own index
        writer.write("new", "/data/new.png", 9, _image(np.random.default_rng(9)), [])
    _strip_index(copy)
    shutil.copy(stale, index_side_file(copy))
    with caplog.at_level(logging.WARNING), ComponentStore(copy) as store:
        assert not store.indexed and store.ids() == [*IDS, "new"]  # read by scanning, correctly
    assert "ignoring the row index" in caplog.text and "it lists 5 images, the store holds 6 entries" in caplog.text


def test_the_side_index_build_resumes_after_an_interruption(tmp_path, monkeypatch):
    path = _strip_index(_write(tmp_path / "old.h5"))
    monkeypatch.setattr(store_module, "INDEX_CHUNK", 2)
    real = store_module._IndexBuilder.append
    calls = []

    def interrupted(self, keys):
        calls.append(list(keys))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(self, keys)

    monkeypatch.setattr(store_module._IndexBuilder, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(path, progress=False)
    partial = tmp_path / "old.h5.index.partial"
    assert partial.exists() and not index_side_file(path).exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["images_done"] == 2
    assert build_index(path, progress=False) == index_side_file(path)
    assert [len(c) for c in calls] == [2, 2, 2, 1]  # continued at image 2, not from the start
    assert not partial.exists()
    with ComponentStore(path) as indexed, ComponentStore(path, index=False) as groups:
        assert indexed.indexed
        _assert_same(indexed.load_arrays(), groups.load_arrays())
    # a partial file that cannot be continued (torn by a kill, or from another state of the store) starts over
    index_side_file(path).unlink()
    partial.write_bytes(b"torn")
    assert build_index(path, progress=False) == index_side_file(path) and not partial.exists()
    with ComponentStore(path) as indexed:
        assert indexed.indexed and indexed.ids() == IDS


def test_index_command_errors_are_one_line(tmp_path, capsys):
    writer = ComponentStoreWriter(tmp_path / "run.h5", ATTRS)
    writer.write("a", "/a.png", 0, _image(np.random.default_rng(0)), [])
    writer.abort()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    for target, message in ((tmp_path / "run.h5", "run.h5.partial is there: its embedding run has not finished"),
                            (tmp_path / "run.h5.partial", "an unfinished store \\(1 images complete\\)"),
                            (tmp_path / "junk.h5", "junk.h5: not a readable HDF5 file")):
        with pytest.raises(SystemExit) as exited:
            main(["index", str(target)])
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("python -m open_clip_align.comalign.store index: error:")
        assert re.search(message, err), err
