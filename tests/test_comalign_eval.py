"""ComAlign evaluation: store retrieval (``python -m open_clip_align.comalign.evaluate``) against an independent
computation, the reference 4-file layout, direction-specific retrieval ranks, and the evaluation suite with a
ComAlign model (``ComAlignScorer``)."""
import ast
import json

import h5py
import open_clip
import pytest
import torch
import torch.nn.functional as F

from open_clip_align.comalign import embed
from open_clip_align.comalign.boxes import make_box_provider
from open_clip_align.comalign.evaluate import evaluate_arrays
from open_clip_align.comalign.evaluate import main as evaluate_main
from open_clip_align.comalign.scorer import ComAlignScorer
from open_clip_align.comalign.store import ComponentStore
from open_clip_align.data.synthetic import generate
from open_clip_align.eval import sugarcrepe, winoground
from open_clip_align.eval.cli import main as eval_main
from open_clip_align.eval.items import EvalDataError, ImageRef
from open_clip_align.eval.retrieval import evaluate_retrieval, metrics, recall_at_k, retrieval_ranks

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "comalign-tiny-ViT"
KS = (1, 2, 5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """ShapeCrepe ci (8 training images; 2 test pairs per subset), a seeded tiny ComAlign model saved as a
    combined checkpoint, a COCO-format file with two captions per training image (numeric ids, as the reference
    layout needs), the store embedded from it with gt boxes, and a store with 3/2 slots."""
    root = tmp_path_factory.mktemp("comalign_eval")
    generate(root, preset="ci", train_size=8, pretrain_size=0, test_pairs=2, zeroshot_per_class=0, progress=False,
             workers=1)
    lines = (root / "train.csv").read_text().splitlines()[1:]
    images, annotations = [], []
    for i, line in enumerate(lines):
        path, caption, negatives = line.split("\t")[:3]
        images.append({"id": 100 + i, "file_name": path})
        annotations += [{"image_id": 100 + i, "id": 2 * i, "caption": caption},
                        {"image_id": 100 + i, "id": 2 * i + 1, "caption": ast.literal_eval(negatives)[1]}]
    (root / "coco.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(MODEL).state_dict(), root / "tiny.pt")
    common = ["--model", MODEL, "--pretrained", str(root / "tiny.pt"), "--annotations", str(root / "coco.json"),
              "--boxes", "gt", "--scenes", str(root / "scenes.jsonl"), "--quiet"]
    embed.main([*common, "--out", str(root / "store.h5")])
    embed.main([*common, "--n-entity", "3", "--n-relation", "2", "--limit", "2", "--out", str(root / "small.h5")])
    return root


@pytest.fixture(scope="module")
def model(data):
    return open_clip.create_model(MODEL, pretrained=str(data / "tiny.pt")).eval()


@pytest.fixture(scope="module")
def arrays(data):
    with ComponentStore(data / "store.h5") as store:
        return store.load_arrays()


# ----------------------------------------------------------------------------------- explicit computation

def _maxmean(m, img_real, txt_real, padding):
    """(s_I2T, s_T2I) from one similarity matrix m [P][K] (lists); reference padding counts every slot."""
    ps = range(len(m)) if padding == "reference" else [p for p in range(len(m)) if img_real[p]]
    ks = range(len(m[0])) if padding == "reference" else [k for k in range(len(m[0])) if txt_real[k]]
    if not ps or not ks:
        return 0.0, 0.0
    return (sum(max(m[p][k] for k in ks) for p in ps) / len(ps),
            sum(max(m[p][k] for p in ps) for k in ks) / len(ks))


def _role_tables(image, text, padding):
    """{role: (i2t [Ni][Nt], t2i [Nt][Ni])} and {role: has [Ni][Nt]} from normalised components and masks."""
    tables, has = {}, {}
    for role in ("entity", "relation"):
        img, txt = image[f"image_{role}"], text[f"text_{role}"]
        img_mask, txt_mask = image[f"image_{role}_mask"].tolist(), text[f"text_{role}_mask"].tolist()
        n_img, n_txt = len(img), len(txt)
        pairs = [[_maxmean((img[i] @ txt[t].T).tolist(), img_mask[i], txt_mask[t], padding) for t in range(n_txt)]
                 for i in range(n_img)]
        tables[role] = ([[pairs[i][t][0] for t in range(n_txt)] for i in range(n_img)],
                        [[pairs[i][t][1] for i in range(n_img)] for t in range(n_txt)])
        has[role] = [[padding == "reference" or (any(img_mask[i]) and any(txt_mask[t])) for t in range(n_txt)]
                     for i in range(n_img)]
    return tables, has


def _ranks(i2t, t2i, owner):
    """0-based ranks (ties against the right answer) from score lists."""
    n_img, n_txt = len(i2t), len(t2i)
    image = []
    for i in range(n_img):
        best = max(i2t[i][t] for t in range(n_txt) if owner[t] == i)
        image.append(sum(1 for t in range(n_txt) if owner[t] != i and i2t[i][t] >= best))
    text = [sum(1 for i in range(n_img) if i != owner[t] and t2i[t][i] >= t2i[t][owner[t]]) for t in range(n_txt)]
    return image, text


def _assert_metrics(result, i2t, t2i, owner):
    image, text = _ranks(i2t, t2i, owner)
    for direction, ranks in (("image_to_text", image), ("text_to_image", text)):
        for k in KS:
            assert result[direction][k] == pytest.approx(100.0 * sum(r < k for r in ranks) / len(ranks)), direction
        assert result["mean_rank"][direction] == pytest.approx(sum(r + 1 for r in ranks) / len(ranks))


def _constant(rows):
    return abs(sum(max(row) for row in rows) / len(rows))


def _cos(a, b):
    return (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).tolist()


def _transpose(m):
    return [list(col) for col in zip(*m)]


@pytest.mark.parametrize("padding", ["reference", "masked"])
def test_store_scorings_equal_an_independent_computation(model, arrays, padding):
    results = evaluate_arrays(model, arrays, padding=padding, ks=KS)
    owner = arrays["caption_image"].tolist()
    assert len(owner) == 16 and set(results) == {"clip", "paper", "reference"}
    clip = _cos(arrays["global"], arrays["text"])
    _assert_metrics(results["clip"], clip, _transpose(clip), owner)

    slots = torch.cat([arrays["entity"] * arrays["entity_mask"][..., None],
                       arrays["relation"] * arrays["relation_mask"][..., None], arrays["global"][:, None]], dim=1)
    with torch.no_grad():
        image = model(image=slots)
    text = {"text_entity": F.normalize(arrays["text_entity"], dim=-1, eps=1e-8),
            "text_relation": F.normalize(arrays["text_relation"], dim=-1, eps=1e-8),
            "text_entity_mask": arrays["text_entity_mask"], "text_relation_mask": arrays["text_relation_mask"]}
    refined = _cos(image["refined_global"], arrays["text"])
    roles, has = _role_tables(image, text, padding)
    n_img, n_txt = len(clip), len(owner)
    (e_i2t, e_t2i), (r_i2t, r_t2i) = roles["entity"], roles["relation"]

    # paper: equal mean of the refined global and the roles present for the pair, no normalisation
    def paper(i, t, e, r):
        terms = [refined[i][t]] + [s for s, present in ((e, has["entity"][i][t]), (r, has["relation"][i][t]))
                                   if present]
        return sum(terms) / len(terms)

    paper_i2t = [[paper(i, t, e_i2t[i][t], r_i2t[i][t]) for t in range(n_txt)] for i in range(n_img)]
    paper_t2i = [[paper(i, t, e_t2i[t][i], r_t2i[t][i]) for i in range(n_img)] for t in range(n_txt)]
    _assert_metrics(results["paper"], paper_i2t, paper_t2i, owner)
    assert results["paper"]["normalisation_constants"] == {}

    # reference: role sums, each term divided by its test-set constant, the released weights
    fine_i2t = [[e_i2t[i][t] + r_i2t[i][t] for t in range(n_txt)] for i in range(n_img)]
    fine_t2i = [[e_t2i[t][i] + r_t2i[t][i] for i in range(n_img)] for t in range(n_txt)]
    c = {"clip": _constant(clip), "refined": _constant(refined), "fine_i2t": _constant(fine_i2t),
         "fine_t2i": _constant(fine_t2i)}
    assert results["reference"]["normalisation_constants"] == pytest.approx(c, rel=1e-5)
    ref_t2i = [[10 * clip[i][t] / c["clip"] + fine_t2i[t][i] / c["fine_t2i"] + refined[i][t] / c["refined"]
                for i in range(n_img)] for t in range(n_txt)]
    ref_i2t = [[2 * clip[i][t] / c["clip"] + 0.06 * refined[i][t] / c["refined"] + 0.06 * fine_i2t[i][t] /
                c["fine_i2t"] + 0.02 * fine_t2i[t][i] / c["fine_t2i"] for t in range(n_txt)] for i in range(n_img)]
    _assert_metrics(results["reference"], ref_i2t, ref_t2i, owner)


def _write_reference_layout(directory, arrays, split="val2017", tag="ViT-B-32_openai"):
    """The released 4-file layout (spec §4) holding ``arrays``' components, keyed by image id."""
    directory.mkdir()
    names = {"noun": f"{split}_noun_yolo_emb_{tag}.h5", "rel": f"{split}_rel_yolo_emb_{tag}.h5",
             "att": f"{split}_att_sentence_{tag}_sep.h5", "relation": f"{split}_relation_sentence_{tag}_sep.h5"}
    files = {k: h5py.File(directory / v, "w") for k, v in names.items()}
    owner = arrays["caption_image"]
    for i, image_id in enumerate(arrays["image_ids"]):
        caps = (owner == i).nonzero().flatten()
        files["noun"][image_id] = arrays["entity"][i].numpy()
        files["rel"][image_id] = arrays["relation"][i].numpy()
        files["att"][image_id] = arrays["text_entity"][caps][:, None].numpy()     # (n_cap, 1, N_e, d)
        files["relation"][image_id] = arrays["text_relation"][caps].numpy()        # (n_cap, N_r, d)
    for f in files.values():
        f.close()


def test_cli_results_and_the_reference_dir(data, model, arrays, tmp_path, capsys):
    out = tmp_path / "store.json"
    argv = ["--model", MODEL, "--pretrained", str(data / "tiny.pt"), "--store", str(data / "store.h5"),
            "--ks", *map(str, KS)]
    evaluate_main([*argv, "--out", str(out)])
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in ("clip", "paper", "reference")) and f"wrote {out}" in table
    record = json.loads(out.read_text())
    assert record["task"] == "comalign_retrieval" and record["protocol"]["components"] == "store"
    assert (record["protocol"]["n_images"], record["protocol"]["n_captions"]) == (8, 16)
    direct = evaluate_arrays(model, arrays, ks=KS)
    for name in ("clip", "paper", "reference"):
        assert record["metrics"][name]["image_to_text"] == pytest.approx(
            {str(k): v for k, v in direct[name]["image_to_text"].items()})
        assert record["metrics"][name]["mean_rank"] == pytest.approx(direct[name]["mean_rank"])
    assert set(record["metrics"]["reference"]["normalisation_constants"]) == {"clip", "refined", "fine_i2t",
                                                                              "fine_t2i"}

    # the released layout with other components (each image gets the next image's): those are what is scored,
    # while the CLIP globals and caption embeddings still come from the store
    rolled = dict(arrays)
    for key in ("entity", "entity_mask", "relation", "relation_mask"):
        rolled[key] = arrays[key].roll(1, dims=0)
    _write_reference_layout(tmp_path / "embeddings", rolled)
    evaluate_main([*argv, "--reference-dir", str(tmp_path / "embeddings"), "--out", str(tmp_path / "ref.json")])
    record = json.loads((tmp_path / "ref.json").read_text())
    assert record["protocol"]["components"] == "reference files"
    want = evaluate_arrays(model, rolled, ks=KS)
    for name in ("clip", "paper", "reference"):
        assert record["metrics"][name]["mean_rank"] == pytest.approx(want[name]["mean_rank"]), name
        assert record["metrics"][name]["text_to_image"] == pytest.approx(
            {str(k): v for k, v in want[name]["text_to_image"].items()}), name
    assert record["metrics"]["reference"]["normalisation_constants"] == pytest.approx(
        want["reference"]["normalisation_constants"])


def test_cli_head_checkpoint_replaces_the_head_of_a_combined_checkpoint(data, arrays, tmp_path, capsys):
    torch.manual_seed(1)
    other = open_clip.create_model(MODEL)
    torch.save(other.comalign_head.state_dict(), tmp_path / "head.pt")
    other.load_state_dict({**torch.load(data / "tiny.pt", weights_only=True),
                           **{f"comalign_head.{k}": v for k, v in other.comalign_head.state_dict().items()}})
    evaluate_main(["--model", MODEL, "--pretrained", str(data / "tiny.pt"), "--head-checkpoint",
                   str(tmp_path / "head.pt"), "--store", str(data / "store.h5"), "--ks", *map(str, KS), "--out",
                   str(tmp_path / "out.json")])
    got = json.loads((tmp_path / "out.json").read_text())["metrics"]
    want = evaluate_arrays(other.eval(), arrays, ks=KS)
    for name in ("paper", "reference"):
        assert got[name]["mean_rank"] == pytest.approx(want[name]["mean_rank"]), name
    assert got["reference"]["normalisation_constants"] == pytest.approx(want["reference"]["normalisation_constants"])


@pytest.mark.parametrize("case", ["missing-store", "plain-model", "slot-counts", "missing-reference", "bad-head"])
def test_cli_bad_inputs_exit_2_with_one_line(data, tmp_path, capsys, case):
    base = ["--pretrained", str(data / "tiny.pt")]
    argv, message = {
        "missing-store": (["--model", MODEL, *base, "--store", str(tmp_path / "nope.h5")], "nope.h5"),
        "plain-model": (["--model", "hardneg-tiny-ViT", "--store", str(data / "store.h5")],
                        "--model hardneg-tiny-ViT is not a ComAlign model"),
        "slot-counts": (["--model", MODEL, *base, "--store", str(data / "small.h5")],
                        "small.h5: 3 entity / 2 relation slots per image, but --model comalign-tiny-ViT has 10 / 10"),
        "missing-reference": (["--model", MODEL, *base, "--store", str(data / "store.h5"), "--reference-dir",
                               str(tmp_path)], "val2017_noun_yolo_emb_ViT-B-32_openai.h5 not found"),
        "bad-head": (["--model", MODEL, *base, "--store", str(data / "store.h5"), "--head-checkpoint",
                      str(data / "store.h5")], "cannot be read as a tensor state dict"),
    }[case]
    with pytest.raises(SystemExit) as exited:
        evaluate_main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err


# ------------------------------------------------------------------------------------------- retrieval

def test_retrieval_ranks_with_a_separate_text_to_image_matrix():
    similarity = torch.tensor([[0.9, 0.1, 0.5],
                               [0.2, 0.3, 0.4]])
    owner = torch.tensor([0, 0, 1])
    text_to_image = torch.tensor([[0.1, 0.8],    # caption 0 (image 0): image 1 ranks first
                                  [0.7, 0.7],    # caption 1 (image 0): a tie, counted against it
                                  [0.6, 0.2]])   # caption 2 (image 1): image 0 ranks first
    ranks = retrieval_ranks(similarity, owner, text_to_image)
    assert ranks["image_to_text"].tolist() == [0, 0]           # I→T always reads `similarity`
    assert ranks["text_to_image"].tolist() == [1, 1, 1]
    assert ranks["text_to_image_tie"].tolist() == [False, True, False]
    plain = retrieval_ranks(similarity, owner)                  # default: similarity.T
    assert plain["text_to_image"].tolist() == [0, 1, 1] and not plain["text_to_image_tie"].any()
    recall = recall_at_k(similarity, owner, ks=(1, 2), text_to_image=text_to_image)
    assert recall == {"image_to_text": {1: 100.0, 2: 100.0}, "text_to_image": {1: 0.0, 2: 100.0}}
    result = metrics(similarity, owner, ks=(1, 2), text_to_image=text_to_image)
    assert result["mean_rank"] == {"image_to_text": 1.0, "text_to_image": 2.0}
    assert result["ties"] == {"image_to_text": 0, "text_to_image": 1} and result["n_items"] == 5


def test_retrieval_uses_a_scorers_direction_specific_scores():
    class Directional:
        def retrieval_scores(self, refs, texts):
            assert [r.path for r in refs] == ["a.png", "b.png"] and texts == ["a0", "a1", "b0"]
            i2t = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.4]])
            return i2t, torch.tensor([[0.1, 0.8], [0.7, 0.7], [0.6, 0.2]])

        def image_features(self, refs):
            raise AssertionError("a direction-specific scorer is not asked for features")

    result = evaluate_retrieval(Directional(), [ImageRef("a.png"), ImageRef("b.png")], [["a0", "a1"], ["b0"]],
                                ks=(1, 2))
    assert result["text_to_image"] == {1: 0.0, 2: 100.0} and result["image_to_text"][1] == 100.0


# ----------------------------------------------------------------------------------- the evaluation suite

def _paper_pair(image, text, padding, global_key):
    """½ (I2T + T2I) of one image and one caption from their stored components, paper form."""
    g = float(image[global_key] @ text["text_features"])
    i2t, t2i = [g], [g]
    for role in ("entity", "relation"):
        img_mask, txt_mask = image[f"image_{role}_mask"].tolist(), text[f"text_{role}_mask"].tolist()
        if padding == "masked" and not (any(img_mask) and any(txt_mask)):
            continue  # a role absent on either side leaves the mean
        m = (image[f"image_{role}"] @ text[f"text_{role}"].T).tolist()
        s_i2t, s_t2i = _maxmean(m, img_mask, txt_mask, padding)
        i2t.append(s_i2t)
        t2i.append(s_t2i)
    return (sum(i2t) / len(i2t) + sum(t2i) / len(t2i)) / 2


@pytest.mark.parametrize("padding,global_term", [("masked", "refined"), ("reference", "clip")])
def test_scorer_score_items_is_the_paper_form_of_its_components(data, model, padding, global_term):
    _, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    scorer = ComAlignScorer(model, preprocess, open_clip.get_tokenizer(MODEL),
                            make_box_provider("gt", scenes=str(data / "scenes.jsonl")), padding=padding,
                            global_term=global_term, progress=False)
    items = sugarcrepe.load(data / "sugarcrepe" / "iid", ["swap_att", "replace_rel"])[:3]
    items += winoground.load(data / "winoground" / "iid")[:2]  # 2 images x 2 captions
    scores = scorer.score_items(items)
    global_key = "refined_global" if global_term == "refined" else "image_features"
    for item, score in zip(items, scores):
        images, texts = scorer.image_components(item.images), scorer.text_components(item.captions)
        assert score.shape == (len(item.images), len(item.captions))
        for i, ref in enumerate(item.images):
            assert images[ref]["image_entity_mask"].sum() >= 1  # gt boxes: every scene has objects
            for j, caption in enumerate(item.captions):
                want = _paper_pair(images[ref], texts[caption], padding, global_key)
                assert score[i, j].item() == pytest.approx(want, abs=1e-5), (item.id, i, j)


def test_eval_suite_runs_a_comalign_model(data, tmp_path, capsys):
    out = tmp_path / "suite.json"
    eval_main(["--model", MODEL, "--pretrained", str(data / "tiny.pt"), "--benchmark", "synthetic", "--data-root",
               f"synthetic={data}", "--comalign-boxes", "gt", "--comalign-scenes", str(data / "scenes.jsonl"),
               "--no-blind", "--quiet", "--out", str(out)])
    assert "sugar_crepe" in capsys.readouterr().out
    records = {r["dataset"]: r for r in json.loads(out.read_text())}
    assert set(records) == {f"shapecrepe/{split}/{bench}" for split in ("iid", "heldout")
                            for bench in ("sugar_crepe", "winoground")}
    assert all(r["model"] == MODEL and r["metrics"] for r in records.values())
    # the suite scored with the ComAlign components (gt boxes, masked paper form), not the base CLIP
    _, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    model = open_clip.create_model(MODEL, pretrained=str(data / "tiny.pt")).eval()
    scorer = ComAlignScorer(model, preprocess, open_clip.get_tokenizer(MODEL),
                            make_box_provider("gt", scenes=str(data / "scenes.jsonl")), progress=False)
    items = sugarcrepe.load(data / "sugarcrepe" / "iid")
    want = sugarcrepe.metrics(items, scorer.score_items(items))
    got = records["shapecrepe/iid/sugar_crepe"]["metrics"]
    assert got["n_items"] == want["n_items"] == len(items)
    assert {s: v["acc"] for s, v in got["subsets"].items()} == pytest.approx(
        {s: v["acc"] for s, v in want["subsets"].items()})
    assert got["micro"] == pytest.approx(want["micro"])


def test_build_scorer_makes_a_comalign_scorer_whose_head_flag_wins(data, tmp_path):
    """--comalign-head is loaded after --pretrained: it replaces the head of a combined checkpoint."""
    from open_clip_align.comalign.boxes import GroundTruthBoxes
    from open_clip_align.eval.cli import _parser, build_scorer

    torch.manual_seed(1)
    other = open_clip.create_model(MODEL).comalign_head.state_dict()
    torch.save(other, tmp_path / "head.pt")
    args = _parser().parse_args(["--model", MODEL, "--pretrained", str(data / "tiny.pt"), "--benchmark", "synthetic",
                                 "--comalign-boxes", "gt", "--comalign-scenes", str(data / "scenes.jsonl"),
                                 "--comalign-head", str(tmp_path / "head.pt"), "--quiet"])
    scorer = build_scorer(args)
    assert isinstance(scorer, ComAlignScorer) and isinstance(scorer.provider, GroundTruthBoxes)
    assert (scorer.padding, scorer.global_term, scorer.render) == ("masked", "refined", "grey")
    saved = torch.load(data / "tiny.pt", weights_only=True)
    for key, value in scorer.model.comalign_head.state_dict().items():
        assert torch.equal(value, other[key]), key
    assert torch.equal(scorer.model.visual.conv1.weight, saved["visual.conv1.weight"])
    args.comalign_head = str(data / "store.h5")
    with pytest.raises(EvalDataError, match="store.h5: cannot be read as a tensor state dict"):
        build_scorer(args)


@pytest.mark.parametrize("case", ["gt-without-scenes", "head-for-a-plain-model"])
def test_eval_suite_comalign_flag_errors(data, capsys, case):
    argv, message = {
        "gt-without-scenes": (["--model", MODEL, "--comalign-boxes", "gt"],
                              "--comalign-boxes gt needs --comalign-scenes"),
        "head-for-a-plain-model": (["--model", "hardneg-tiny-ViT", "--comalign-head", str(data / "tiny.pt")],
                                   "--comalign-head needs a ComAlign model (comalign-*), not --model hardneg-tiny-ViT"),
    }[case]
    with pytest.raises(SystemExit) as exited:
        eval_main([*argv, "--pretrained", str(data / "tiny.pt"), "--benchmark", "synthetic", "--data-root",
                   f"synthetic={data}", "--no-blind", "--quiet"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err


def test_scorer_ties_repeated_captions_and_scores_pairs_alike(data, model):
    """A caption repeated within an item ties exactly, and an (image, caption) pair gets the same bits in every
    item and position (exact component scores), as the strict rule needs."""
    from open_clip_align.eval.items import Item

    _, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    scorer = ComAlignScorer(model, preprocess, open_clip.get_tokenizer(MODEL),
                            make_box_provider("gt", scenes=str(data / "scenes.jsonl")), progress=False)
    base = sugarcrepe.load(data / "sugarcrepe" / "iid", ["swap_att", "replace_rel"])[:3]
    images = [it.images[0] for it in base]
    captions = [c for it in base for c in it.captions]
    items = [Item("same", [images[0]], [captions[0], captions[0]], [[True, False]], "swap_att",
                  {"bag_identical": True}),
             Item("mixed", [images[1], images[0]], [captions[2], captions[0], captions[3], captions[0], captions[0]],
                  [[True, False, False, False, False], [False, True, False, False, False]], "x"),
             Item("alone", [images[0]], [captions[0]], [[True]], "x")]
    scores = scorer.score_items(items)
    same, mixed, alone = scores
    assert same[0, 0] == same[0, 1]
    assert sugarcrepe.metrics(items[:1], scores[:1])["n_ties"] == 1
    assert torch.equal(mixed[1, [1, 3, 4]], alone[0, 0].expand(3)) and torch.equal(same[0, 0], alone[0, 0])
