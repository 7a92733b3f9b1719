"""ShapeCrepe generator: determinism, counterbalancing, held-out hygiene, ground truth, file formats, CLI."""
import ast
import csv
import io
import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from open_clip_align.data import synthetic as S

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ci(tmp_path_factory):
    """The ci preset, seed 0, generated once for the module: (root, manifest)."""
    root = tmp_path_factory.mktemp("shapecrepe") / "ci"
    return root, S.generate(root, preset="ci", progress=False)


@pytest.fixture(scope="module")
def scenes(ci):
    """Image path (relative to the root) -> Scene, from scenes.jsonl."""
    lines = (json.loads(line) for line in (ci[0] / "scenes.jsonl").read_text().splitlines())
    return {line["image"]: S.Scene.from_dict(line) for line in lines}


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def tree(root):
    """Relative path -> bytes of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sugarcrepe(root, split, subset):
    return json.loads((root / "sugarcrepe" / split / f"{subset}.json").read_text())


def heldout_of(manifest):
    return {tuple(pair) for pair in manifest["heldout_combos"]}


def combos(text):
    return {(p.colour, p.shape) for p in S.parse_caption(text).phrases}


def shards(root):
    import webdataset as wds

    urls = sorted(str(p) for p in (root / "train-wds").glob("shard-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


# ------------------------------------------------------------------------------------------ determinism

def test_same_seed_same_bytes_any_worker_count_and_different_seed_differs(ci, tmp_path):
    root, _ = ci
    S.generate(tmp_path / "again", preset="ci", workers=1, progress=False)
    assert tree(tmp_path / "again") == tree(root)
    S.generate(tmp_path / "other", preset="ci", seed=1, progress=False)
    assert sugarcrepe(tmp_path / "other", "iid", "swap_att") != sugarcrepe(root, "iid", "swap_att")
    assert (tmp_path / "other/images/train/000000.png").read_bytes() != (root / "images/train/000000.png").read_bytes()
    assert (tmp_path / "other/train.csv").read_text() != (root / "train.csv").read_text()
    assert (tmp_path / "other/pretrain.csv").read_text() != (root / "pretrain.csv").read_text()
    assert (tmp_path / "other/zeroshot/iid/scenes.jsonl").read_text() != \
        (root / "zeroshot/iid/scenes.jsonl").read_text()


def test_cli_module_in_a_fresh_process_matches_the_api(ci, tmp_path):
    """A different hash seed must not change anything (no iteration over sets of strings)."""
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "open_clip_align.data.synthetic", "--out", str(tmp_path / "cli"),
                             "--preset", "ci", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "written to" in result.stdout and " s" in result.stdout
    assert tree(tmp_path / "cli") == tree(ci[0])


def test_sizes_do_not_change_the_other_parts(ci, tmp_path):
    S.generate(tmp_path / "small", preset="ci", train_size=7, pretrain_size=3, progress=False)
    for split in S.SPLITS:
        assert (tmp_path / f"small/winoground/{split}/pairs.jsonl").read_bytes() == \
            (ci[0] / f"winoground/{split}/pairs.jsonl").read_bytes()
    S.generate(tmp_path / "more", preset="ci", pretrain_size=700, test_pairs=1, progress=False)
    assert (tmp_path / "more/train.csv").read_bytes() == (ci[0] / "train.csv").read_bytes()
    assert len(read_tsv(tmp_path / "more/pretrain.csv")) == 700


# ------------------------------------------------------------------------------------------- test sets

def test_sugarcrepe_layout(ci):
    root, manifest = ci
    assert set(manifest["files"]["sugarcrepe"]) == set(S.SPLITS)
    for split in S.SPLITS:
        for subset in S.SUBSETS:
            items = sugarcrepe(root, split, subset)
            assert list(items) == [str(i) for i in range(len(items))]
            assert len(items) == 50 == manifest["counts"]["sugarcrepe_items"][split][subset]
            for item in items.values():
                assert set(item) == {"filename", "caption", "negative_caption"}
                assert (root / "sugarcrepe" / split / "val2017" / item["filename"]).is_file()


def test_counterbalanced_so_text_only_scorers_get_exactly_half(ci):
    root, _ = ci
    for split in S.SPLITS:
        for subset in S.SUBSETS:
            items = list(sugarcrepe(root, split, subset).values())
            positives = Counter(item["caption"] for item in items)
            assert positives == Counter(item["negative_caption"] for item in items)
            for i, item in enumerate(items):
                assert item["negative_caption"] != item["caption"]
                assert any(other["caption"] == item["negative_caption"] for j, other in enumerate(items) if j != i)
            crc = [zlib.crc32(item["caption"].encode()) > zlib.crc32(item["negative_caption"].encode())
                   for item in items]
            assert sum(crc) == len(items) / 2


def test_swap_subsets_are_bag_identical_and_the_others_are_not(ci):
    root, manifest = ci
    for split in S.SPLITS:
        for subset in S.SUBSETS:
            same = [sorted(S.caption_words(it["caption"])) == sorted(S.caption_words(it["negative_caption"]))
                    for it in sugarcrepe(root, split, subset).values()]
            expected = subset.startswith("swap")
            assert all(s == expected for s in same), (split, subset)
            assert manifest["bag_identical_share"][split][subset] == float(expected)


def test_test_captions_are_true_of_their_image_only(ci, scenes):
    root, _ = ci
    for split in S.SPLITS:
        for subset in S.SUBSETS:
            for item in sugarcrepe(root, split, subset).values():
                scene = scenes[f"sugarcrepe/{split}/val2017/{item['filename']}"]
                assert S.caption_is_true(scene, S.parse_caption(item["caption"]))
                assert not S.caption_is_true(scene, S.parse_caption(item["negative_caption"]))


def test_subset_edits_do_what_their_names_say(ci):
    root, _ = ci
    for split in S.SPLITS:
        for item in sugarcrepe(root, split, "add_obj").values():
            a, b = S.parse_caption(item["caption"]), S.parse_caption(item["negative_caption"])
            assert {len(a.extras), len(b.extras)} == {0, 1}
        for item in sugarcrepe(root, split, "replace_rel").values():
            a, b = S.parse_caption(item["caption"]), S.parse_caption(item["negative_caption"])
            assert a.rel != b.rel and a.phrases == b.phrases
        for item in sugarcrepe(root, split, "swap_obj").values():
            a, b = S.parse_caption(item["caption"]), S.parse_caption(item["negative_caption"])
            assert (a.subj, a.rel, a.obj) == (b.obj, b.rel, b.subj)


def test_winoground_pairs(ci, scenes):
    root, manifest = ci
    for split in S.SPLITS:
        path = root / manifest["files"]["winoground"][split]
        pairs = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(pairs) == 7 * 25 == manifest["counts"]["winoground_pairs"][split]
        assert Counter(p["tags"][0] for p in pairs) == {subset: 25 for subset in S.SUBSETS}
        for pair in pairs:
            images = [(path.parent / pair[f"image_{i}"]).resolve() for i in (0, 1)]
            assert all(image.is_file() for image in images)
            graphs = [scenes[image.relative_to(root.resolve()).as_posix()] for image in images]
            for i in (0, 1):
                caption = S.parse_caption(pair[f"caption_{i}"])
                assert S.caption_is_true(graphs[i], caption) and not S.caption_is_true(graphs[1 - i], caption)


# ------------------------------------------------------------------------------------------- held-out

def test_heldout_combinations_never_reach_training(ci, scenes):
    root, manifest = ci
    heldout = heldout_of(manifest)
    assert len(heldout) == 8
    captions = []
    for row in read_tsv(root / "train.csv"):
        captions += [row["title"], *ast.literal_eval(row["neg_caption"])]
    for row in json.loads((root / "train_degla.json").read_text()):
        captions += [row["original"], *row["enhanced"]]
    for sample in shards(root):
        sidecar = json.loads(sample["json"])
        captions += [sample["txt"].decode(), sidecar["original"], *sidecar["enhanced"]]
    assert len(captions) == 300 * (5 + 5 + 6)
    assert not set().union(*map(combos, captions)) & heldout
    for path, scene in scenes.items():
        if path.startswith("images/"):  # training images, which pretraining reuses
            assert not {(o.colour, o.shape) for o in scene.objects} & heldout


def test_heldout_split_items_involve_a_heldout_combination_and_iid_items_none(ci, scenes):
    root, manifest = ci
    heldout = heldout_of(manifest)
    for subset in S.SUBSETS:
        for split in S.SPLITS:
            for key, item in sugarcrepe(root, split, subset).items():
                named = combos(item["caption"]) | combos(item["negative_caption"])
                assert bool(named & heldout) == (split == "heldout")
                scene = scenes[f"sugarcrepe/{split}/val2017/{item['filename']}"]
                shown = {(o.colour, o.shape) for o in scene.objects}
                if split == "iid" or int(key) % 2 == 0:  # the first scene of each heldout pair has one
                    assert bool(shown & heldout) == (split == "heldout")


def test_heldout_choice_is_seeded_and_spread():
    picks = [S.choose_heldout(S.make_config(seed=seed)) for seed in (0, 0, 1)]
    assert picks[0] == picks[1] != picks[2]
    colours, shapes = Counter(c for c, _ in picks[0]), Counter(s for _, s in picks[0])
    assert len(picks[0]) == 8 and max(colours.values()) <= 2 and max(shapes.values()) <= 2
    assert S.choose_heldout(S.make_config(heldout_fraction=0)) == ()


def test_no_heldout_fraction_writes_only_the_iid_split(tmp_path):
    manifest = S.generate(tmp_path / "d", preset="ci", heldout_fraction=0, train_size=4, pretrain_size=4,
                          test_pairs=2, progress=False)
    assert list(manifest["files"]["sugarcrepe"]) == ["iid"] and not (tmp_path / "d/sugarcrepe/heldout").exists()
    assert manifest["counts"]["zeroshot_classes"] == {"iid": 48} and not (tmp_path / "d/zeroshot/heldout").exists()


# ------------------------------------------------------------------------------------------- zero-shot

def zeroshot_scenes(root, split):
    """Image path (relative to root/zeroshot/split) -> (seed, Scene)."""
    lines = (json.loads(line) for line in (root / "zeroshot" / split / "scenes.jsonl").read_text().splitlines())
    return {line["image"]: (line["seed"], S.Scene.from_dict(line)) for line in lines}


def test_zeroshot_classes_counts_and_classnames(ci):
    root, manifest = ci
    heldout = {f"{c}_{s}" for c, s in heldout_of(manifest)}
    assert manifest["files"]["zeroshot"] == {split: f"zeroshot/{split}" for split in S.SPLITS}
    classes = {}
    for split in S.SPLITS:
        split_root = root / manifest["files"]["zeroshot"][split]
        dirs = sorted(p.name for p in (split_root / "test").iterdir())
        classes[split] = set(dirs)
        assert dirs == S.zeroshot_classes(S.make_config(preset="ci"), heldout_of(manifest), split)
        assert (split_root / "classnames.txt").read_text().splitlines() == [d.replace("_", " ") for d in dirs]
        templates = (split_root / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert templates == list(S.ZEROSHOT_TEMPLATES) and all("{c}" in t for t in templates)
        for d in dirs:
            assert sorted(p.name for p in (split_root / "test" / d).iterdir()) == [f"{n:05d}.png" for n in range(4)]
        assert manifest["counts"]["zeroshot_classes"][split] == len(dirs)
        assert manifest["counts"]["zeroshot_images"][split] == 4 * len(dirs)
    # like the SugarCrepe splits: heldout = the held-out combinations, iid = all the others, disjoint
    assert classes["heldout"] == heldout and len(heldout) == 8
    assert not classes["iid"] & classes["heldout"]
    assert classes["iid"] | classes["heldout"] == {f"{c}_{s}" for c in S.COLOURS for s in S.SHAPES}
    names = [set((root / f"zeroshot/{split}/classnames.txt").read_text().splitlines()) for split in S.SPLITS]
    assert sum("red circle" in n for n in names) == sum("blue star" in n for n in names) == 1


def test_zeroshot_sets_load_with_the_evaluator(ci):
    from open_clip_align.eval import zeroshot as Z

    root, manifest = ci
    for split in S.SPLITS:
        data = Z.load(root / "zeroshot" / split)
        n_classes = manifest["counts"]["zeroshot_classes"][split]
        assert data.meta["format"] == "imagefolder" and data.templates == list(S.ZEROSHOT_TEMPLATES)
        assert len(data.classnames) == n_classes and Counter(data.labels) == {c: 4 for c in range(n_classes)}
        for image, label in zip(data.images, data.labels):
            assert Path(image.path).parent.name.replace("_", " ") == data.classnames[label]
        prompts = Z.class_prompts(data.classnames, data.templates)
        assert prompts[0][0] == f"a photo of a {data.classnames[0]}."


def test_zeroshot_images_show_one_object_of_their_class(ci):
    root, manifest = ci
    size, sizes = manifest["options"]["image_size"], Counter()
    for split in S.SPLITS:
        scenes_ = zeroshot_scenes(root, split)
        files = sorted(p.relative_to(root / "zeroshot" / split).as_posix()
                       for p in (root / "zeroshot" / split / "test").rglob("*.png"))
        assert sorted(scenes_) == files
        for path, (seed, scene) in scenes_.items():
            colour, shape = path.split("/")[1].split("_")
            (obj,) = scene.objects
            assert (obj.colour, obj.shape) == (colour, shape) and obj.size in S.SIZES
            x0, y0, x1, y1 = obj.bbox
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            sizes[obj.size] += 1
            image = Image.open(root / "zeroshot" / split / path).convert("RGB")
            assert image.size == (size, size)
            assert image.tobytes() == S.render(scene, size, seed).tobytes()
            # the background stays dark; every brighter pixel is the one object's single jittered fill colour
            pixels = np.asarray(image).reshape(-1, 3)
            fills = {tuple(px) for px in pixels[pixels.max(axis=1) > 80].tolist()}
            assert len(fills) == 1
            assert all(abs(a - b) <= S.COLOUR_JITTER for a, b in zip(fills.pop(), S.COLOURS[colour]))
    assert set(sizes) == set(S.SIZES)


def test_zeroshot_leaves_every_other_output_unchanged(ci, tmp_path):
    root, manifest = ci
    off = S.generate(tmp_path / "off", preset="ci", zeroshot_per_class=0, progress=False)
    assert not (tmp_path / "off/zeroshot").exists()
    without = {k: v for k, v in tree(root).items() if not k.startswith("zeroshot/") and k != "manifest.json"}
    assert without == {k: v for k, v in tree(tmp_path / "off").items() if k != "manifest.json"}
    assert off["files"]["zeroshot"] == off["counts"]["zeroshot_images"] == {}
    stripped = json.loads(json.dumps(manifest))
    del stripped["files"]["zeroshot"], stripped["counts"]["zeroshot_classes"], stripped["counts"]["zeroshot_images"]
    stripped["options"]["zeroshot_per_class"] = 0
    del off["files"]["zeroshot"], off["counts"]["zeroshot_classes"], off["counts"]["zeroshot_images"]
    assert json.loads(json.dumps(off)) == stripped
    # a class's images depend on neither its split nor the count: fewer per class give a prefix
    S.generate(tmp_path / "few", preset="ci", zeroshot_per_class=2, heldout_fraction=0, train_size=1,
               pretrain_size=1, test_pairs=1, progress=False)
    for name in ("red_circle", "blue_star"):
        split = S.zeroshot_split(name, heldout_of(manifest))
        for n in range(2):
            assert (tmp_path / f"few/zeroshot/iid/test/{name}/{n:05d}.png").read_bytes() == \
                (root / f"zeroshot/{split}/test/{name}/{n:05d}.png").read_bytes()


# ---------------------------------------------------------------------------------------------- training

def test_training_rows_true_positive_and_false_distinct_negatives(ci, scenes):
    root, manifest = ci
    rows = read_tsv(root / "train.csv")
    degla = json.loads((root / "train_degla.json").read_text())
    assert len(rows) == len(degla) == manifest["counts"]["train"] == 300
    for row, entry in zip(rows, degla):
        negatives, types = ast.literal_eval(row["neg_caption"]), ast.literal_eval(row["neg_types"])
        assert entry == {"image": row["filepath"], "image_id": entry["image_id"], "original": row["title"],
                         "enhanced": negatives, "types": types}
        assert (root / row["filepath"]).is_file()
        scene, positive = scenes[row["filepath"]], S.parse_caption(row["title"])
        assert S.caption_is_true(scene, positive)
        assert len(negatives) == len(set(negatives)) == 4 and row["title"] not in negatives
        assert {"swap_att", "swap_obj"} <= set(types) <= set(S.TRAIN_NEG_TYPES)
        for text, neg_type in zip(negatives, types):
            negative = S.parse_caption(text)
            assert not S.caption_is_true(scene, negative)
            if neg_type == "swap_obj":
                assert (negative.subj, negative.obj) == (positive.obj, positive.subj)
            if neg_type == "swap_att":
                assert (negative.subj.colour, negative.obj.colour) == (positive.obj.colour, positive.subj.colour)
                assert (negative.subj.shape, negative.obj.shape) == (positive.subj.shape, positive.obj.shape)


def test_training_negative_types_and_count_follow_the_options(tmp_path):
    S.generate(tmp_path / "d", preset="ci", num_negatives=2, train_neg_types=["replace_rel", "replace_obj"],
               train_size=20, pretrain_size=1, test_pairs=1, progress=False)
    for row in read_tsv(tmp_path / "d/train.csv"):
        assert len(ast.literal_eval(row["neg_caption"])) == 2
        assert set(ast.literal_eval(row["neg_types"])) <= {"replace_rel", "replace_obj"}


def test_webdataset_shards_match_the_csv(ci):
    root, manifest = ci
    samples = shards(root)
    rows = read_tsv(root / "train.csv")
    sizes = json.loads((root / "train-wds/sizes.json").read_text())
    assert len(samples) == manifest["counts"]["wds_samples"] == sum(sizes.values()) == len(rows)
    assert list(sizes.values()) == [100, 100, 100] and manifest["counts"]["wds_shards"] == 3
    for sample, row in zip(samples, rows):
        assert {"png", "txt", "json"} <= set(sample)
        assert sample["png"] == (root / row["filepath"]).read_bytes()
        assert Image.open(io.BytesIO(sample["png"])).size == (32, 32)
        assert sample["txt"].decode() == row["title"]
        assert json.loads(sample["json"]) == {"original": row["title"],
                                              "enhanced": ast.literal_eval(row["neg_caption"]),
                                              "types": ast.literal_eval(row["neg_types"])}


def test_pretrain_rows_reuse_training_images_with_shuffled_caption_words(ci, scenes):
    root, manifest = ci
    rows, train = read_tsv(root / "pretrain.csv"), read_tsv(root / "train.csv")
    assert len(rows) == manifest["counts"]["pretrain"] == 200
    assert [r["filepath"] for r in rows] == [r["filepath"] for r in train[:200]]
    in_order = 0
    for row in rows:
        scene = scenes[row["filepath"]]
        captions = [S.caption_words(str(S.describe(scene, t, s))) for t in S.TEMPLATES for s in (0, 1)]
        assert sorted(row["title"].split()) in [sorted(words) for words in captions]
        in_order += row["title"].split() in captions
    assert in_order < len(rows) / 10


# ------------------------------------------------------------------------------------------ ground truth

def test_scene_geometry(ci, scenes):
    root, manifest = ci
    size = manifest["options"]["image_size"]
    lines = [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()]
    assert len(lines) == len(scenes) == manifest["counts"]["images"]
    for line in lines:
        scene = scenes[line["image"]]
        objects = scene.objects
        assert line["relation"] == S.relation(objects[0], objects[1], ratio=2.0)
        assert len({o.shape for o in objects}) == len({o.colour for o in objects}) == len(objects)
        for i, a in enumerate(objects):
            x0, y0, x1, y1 = a.bbox
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            lo, hi = (S.RADIUS[a.size] * size * (1 + f * S.RADIUS_JITTER) for f in (-1, 1))
            assert lo - 0.01 <= a.radius <= hi + 0.01
            for b in objects[i + 1:]:
                assert (a.cx - b.cx) ** 2 + (a.cy - b.cy) ** 2 > (a.radius + b.radius) ** 2


def test_captions_parse_back_and_follow_the_closed_world(ci, scenes):
    scene = next(s for s in scenes.values() if len(s.objects) == 3)
    for template in S.TEMPLATES:
        for subject in (0, 1):
            caption = S.describe(scene, template, subject)
            assert S.parse_caption(str(caption)) == caption
            assert S.caption_is_true(scene, caption)
            assert not S.caption_is_true(scene, S.Caption(caption.subj, caption.rel, caption.obj, (), template))
    medium = S.Phrase("circle", "orange")
    assert str(medium) == "an orange circle" and str(S.Phrase("circle", "orange", "large")) == "a large orange circle"
    assert S.parse_caption("there is a red circle and a blue square; the circle is left of the square") == \
        S.Caption(S.Phrase("circle", "red"), "left", S.Phrase("square", "blue"), (), "there_is")
    with pytest.raises(ValueError):
        S.parse_caption("a red circle left of a blue square")


def test_rendered_image_matches_scene_and_seed(ci, scenes):
    root, manifest = ci
    line = json.loads((root / "scenes.jsonl").read_text().splitlines()[0])
    image = S.render(S.Scene.from_dict(line), manifest["options"]["image_size"], line["seed"])
    assert image.tobytes() == Image.open(root / line["image"]).convert("RGB").tobytes()


# ------------------------------------------------------------------------------------------------- CLI

def test_cli_help_explains_the_outputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        S.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("train.csv", "train_degla.json", "train-wds", "pretrain.csv", "sugarcrepe", "winoground",
                 "manifest.json", "zeroshot", "--zeroshot-per-class", "--overwrite", "--preset"):
        assert word in text


def test_cli_refuses_an_existing_dataset_without_overwrite(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "d"), "--preset", "ci", "--quiet", "--train-size", "3", "--pretrain-size", "3",
            "--test-pairs", "1"]
    S.main(argv)
    assert "written to" in capsys.readouterr().out
    before = tree(tmp_path / "d")
    with pytest.raises(SystemExit) as exit_info:
        S.main(argv)
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert tree(tmp_path / "d") == before
    (tmp_path / "d/manifest.json").unlink()  # a half-finished run is refused too
    with pytest.raises(SystemExit):
        S.main(argv)
    (tmp_path / "d/unrelated.txt").write_text("kept")
    S.main(argv + ["--overwrite", "--seed", "3"])
    assert json.loads((tmp_path / "d/manifest.json").read_text())["seed"] == 3
    assert (tmp_path / "d/unrelated.txt").read_text() == "kept"


def test_invalid_options_are_rejected():
    for bad in ({"image_size": 8}, {"heldout_fraction": 0.9}, {"zeroshot_per_class": -1},
                {"train_neg_types": ["add_obj"]}, {"shapes": ["circle", "square"]}, {"preset": "huge"}):
        with pytest.raises(ValueError):
            S.make_config(**bad)
    with pytest.raises(TypeError):
        S.make_config(colour_count=3)


@pytest.mark.parametrize("extra,fragment", [
    (["--out", "{file}"], "--out {file}: exists and is not a folder (expected a folder for the outputs)"),
    (["--out", "{file}/sub"], "--out {file}/sub: {file} is a file, not a folder"),
    (["--train-size", "0"], "--train-size 0 with --pretrain-size 200 (the ci preset's): pretraining rows reuse the "
                            "training images; give --train-size of at least 1, or --pretrain-size 0"),
    (["--train-size", "-3"], "--train-size must be at least 0, got -3"),
    (["--heldout-fraction", "nan"], "--heldout-fraction must be a finite number, got nan"),
    (["--heldout-fraction", "0.7"], "--heldout-fraction must be at most 0.5, got 0.7"),
    (["--image-size", "8"], "--image-size must be at least 16, got 8"),
    (["--shard-size", "0"], "--shard-size must be at least 1, got 0"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--workers", "-2"], "--workers must be at least 1, got -2"),
    (["--train-size", "3", "--pretrain-size", "0", "--test-pairs", "1", "--num-negatives", "60"],
     "num_negatives=60 (--num-negatives) exceeds the"),
])
def test_cli_bad_flags_are_one_line_before_anything_is_written(tmp_path, capsys, extra, fragment):
    (tmp_path / "file").write_text("x")
    extra = [e.replace("{file}", str(tmp_path / "file")) for e in extra]
    fragment = fragment.replace("{file}", str(tmp_path / "file"))
    with pytest.raises(SystemExit) as exit_info:
        S.main(["--out", str(tmp_path / "d"), "--preset", "ci", "--quiet", "--zeroshot-per-class", "0", *extra])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("python -m open_clip_align.data.synthetic: error: ") and fragment in err, err
    assert (tmp_path / "file").read_text() == "x"
    if "--num-negatives" not in extra:
        assert not (tmp_path / "d").exists()


def test_a_test_only_dataset_needs_no_training_rows(tmp_path):
    manifest = S.generate(tmp_path / "d", preset="ci", train_size=0, pretrain_size=0, test_pairs=1,
                          zeroshot_per_class=0, progress=False, workers=1)
    assert manifest["counts"]["train"] == 0 and (tmp_path / "d" / "sugarcrepe" / "iid" / "swap_att.json").is_file()


def test_a_failed_run_leaves_no_shards_and_overwrite_clears_a_killed_runs_staged_ones(tmp_path, monkeypatch):
    """Shards are staged in a hidden folder and moved in at the end: a run that fails while rendering leaves no
    train-wds/ (nor the staging folder), and --overwrite removes one a killed run left behind."""
    from open_clip_align.data.shapecrepe import plan

    real, drawn = plan.png_bytes, []

    def failing(*args):
        drawn.append(1)
        if len(drawn) > 260:  # the second training unit, after 250 samples went into shards
            raise RuntimeError("render failed")
        return real(*args)

    monkeypatch.setattr(plan, "png_bytes", failing)
    with pytest.raises(RuntimeError, match="render failed"):
        S.generate(tmp_path / "d", preset="ci", workers=1, progress=False)
    assert not (tmp_path / "d/train-wds").exists() and not list((tmp_path / "d").glob(".train-wds*"))
    monkeypatch.setattr(plan, "png_bytes", real)
    staged = tmp_path / "d/.train-wds.tmp-killed"
    staged.mkdir()
    (staged / "shard-000000.tar").write_bytes(b"torn")
    S.generate(tmp_path / "d", preset="ci", overwrite=True, train_size=3, pretrain_size=3, test_pairs=1,
               zeroshot_per_class=0, progress=False)
    assert not staged.exists() and (tmp_path / "d/train-wds/shard-000000.tar").is_file()


def test_cli_disk_errors_and_ctrl_c_are_one_line(tmp_path, monkeypatch, capsys):
    from open_clip_align.data.shapecrepe import cli

    argv = ["--out", str(tmp_path / "d"), "--preset", "ci", "--quiet"]
    for raised, code, line in ((OSError(28, "No space left on device"), 2, "error: [Errno 28] No space left on device"),
                               (KeyboardInterrupt(), 130, "interrupted; --out is unfinished (no manifest.json)")):
        def generate(*args, **kwargs):
            raise raised

        monkeypatch.setattr(cli, "generate", generate)
        with pytest.raises(SystemExit) as exit_info:
            S.main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == code and len(err.splitlines()) == 1, err
        assert err.startswith("python -m open_clip_align.data.synthetic: ") and line in err, err
