"""ComAlign training: the loss against explicit loops (and on 2 gloo processes), the ``--comalign-data``
features/images paths (same model inputs), and training through ``training.main`` (only the head trains,
resume, one-line flag errors)."""
import argparse
import ast
import csv
import json
import math
import multiprocessing
import re
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F

import comalign_dist_worker
from conftest import train_argv
from open_clip_align.errors import UsageError
from open_clip_align.comalign import embed
from open_clip_align.comalign.annotations import ComAlignDataError
from open_clip_align.comalign.text import TextComponents
from open_clip_align.comalign.data import ComAlignFeatureDataset, draw_caption, get_comalign_train_data
from open_clip_align.comalign.slots import phrase_tokens
from open_clip_align.data.synthetic import generate
from open_clip_align.comalign.loss import ComAlignLoss
from open_clip_align.methods import create_loss
from open_clip_align.comalign.loss import global_contrastive_loss, role_contrastive_loss
from open_clip_align.params import build_preparser
from training.main import cli as train_cli
from training.main import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "comalign-tiny-ViT"
NE = NR = 10  # the tiny config's slots
HEAD = "comalign_head."


# ------------------------------------------------------------------------------------- explicit loops

def _maxmean(img, img_mask, txt, txt_mask, padding, smooth):
    """(s_I2T, s_T2I) of one image [P,d] and one caption [K,d], written out element by element."""
    def best(values):
        if smooth is None:
            return max(values)
        return smooth * math.log(sum(math.exp(v / smooth) for v in values))

    if padding == "reference":  # text pads are zero vectors and count; every image slot counts
        txt = [t if real else torch.zeros_like(t) for t, real in zip(txt, txt_mask)]
        ps, ks = range(len(img)), range(len(txt))
    else:
        ps = [p for p in range(len(img)) if img_mask[p]]
        ks = [k for k in range(len(txt)) if txt_mask[k]]
        if not ps or not ks:
            return 0.0, 0.0
    dot = [[float(torch.dot(img[p], txt[k])) for k in range(len(txt))] for p in range(len(img))]
    i2t = sum(best([dot[p][k] for k in ks]) for p in ps) / len(ps)
    t2i = sum(best([dot[p][k] for p in ps]) for k in ks) / len(ks)
    return i2t, t2i


def _cross_entropy(scores, label, temperature):
    logits = [s / temperature for s in scores]
    top = max(logits)
    return -(logits[label] - top - math.log(sum(math.exp(x - top) for x in logits)))


def _role_loss(img, img_mask, txt, txt_mask, temperature, padding="masked", smooth=None, rows=None):
    """½ [CE(I2T rows) + CE(T2I rows)] summed over the query rows whose image and caption both have a real
    component, divided by the number V of such rows in the whole batch (times N / n_rows for a subset)."""
    n = len(img)
    rows = range(n) if rows is None else rows
    pair = [[_maxmean(img[b], img_mask[b], txt[c], txt_mask[c], padding, smooth) for c in range(n)]
            for b in range(n)]  # pair[image][caption]
    qualifying = [b for b in range(n) if any(img_mask[b]) and any(txt_mask[b])]
    total = sum(_cross_entropy([pair[b][c][0] for c in range(n)], b, temperature)
                + _cross_entropy([pair[c][b][1] for c in range(n)], b, temperature)
                for b in rows if b in qualifying)
    return total / 2 / len(qualifying) * n / len(rows)


def _global_loss(refined, text, temperature, rows):
    n = len(refined)
    dot = [[float(torch.dot(refined[i], text[t])) for t in range(n)] for i in range(n)]
    return sum(_cross_entropy(dot[b], b, temperature) + _cross_entropy([dot[c][b] for c in range(n)], b, temperature)
               for b in rows) / 2 / len(rows)


def _unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


# image 2 and caption 3 have no real component: rows 2 and 3 are dropped, their columns stay (masked: score 0)
IMAGE_MASK = _mask([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [1, 0, 1]])
TEXT_MASK = _mask([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 1, 0]])


# ------------------------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("padding,smooth", [("masked", None), ("reference", None), ("masked", 0.05),
                                            ("reference", 0.3)])
def test_role_loss_equals_explicit_loops(padding, smooth):
    img, txt = _unit(5, 3, 4, seed=1), _unit(5, 3, 4, seed=2)  # text pads are non-zero: they must be ignored
    got = role_contrastive_loss(img, IMAGE_MASK, txt, TEXT_MASK, 0.1, padding=padding, smooth=smooth)
    assert got.item() == pytest.approx(_role_loss(img, IMAGE_MASK, txt, TEXT_MASK, 0.1, padding, smooth), abs=1e-5)
    # the subset form (--local-loss): each half against all columns; the halves average to the full loss
    halves = [role_contrastive_loss(img[:4], IMAGE_MASK[:4], txt[:4], TEXT_MASK[:4], 0.1, padding, smooth,
                                    row_offset=r, n_rows=2) for r in (0, 2)]
    for r, half in zip((0, 2), halves):
        want = _role_loss(img[:4], IMAGE_MASK[:4], txt[:4], TEXT_MASK[:4], 0.1, padding, smooth, rows=range(r, r + 2))
        assert half.item() == pytest.approx(want, abs=1e-5)
    full = role_contrastive_loss(img[:4], IMAGE_MASK[:4], txt[:4], TEXT_MASK[:4], 0.1, padding, smooth)
    assert (halves[0] + halves[1]).item() / 2 == pytest.approx(full.item(), abs=1e-6)


def test_smooth_max_is_a_soft_upper_bound_of_the_hard_max():
    """τ_m·logsumexp ≥ max, → max as τ_m → 0; the loss moves with it."""
    img, txt = _unit(5, 3, 4, seed=1), _unit(5, 3, 4, seed=2)
    hard = role_contrastive_loss(img, IMAGE_MASK, txt, TEXT_MASK, 0.1)
    near = role_contrastive_loss(img, IMAGE_MASK, txt, TEXT_MASK, 0.1, smooth=1e-4)
    soft = role_contrastive_loss(img, IMAGE_MASK, txt, TEXT_MASK, 0.1, smooth=0.5)
    assert near.item() == pytest.approx(hard.item(), abs=1e-4) and abs(soft.item() - hard.item()) > 1e-2
    i2t, t2i = _maxmean(img[0], IMAGE_MASK[0], txt[1], TEXT_MASK[1], "masked", 0.5)
    hard_i2t, hard_t2i = _maxmean(img[0], IMAGE_MASK[0], txt[1], TEXT_MASK[1], "masked", None)
    assert i2t > hard_i2t and t2i > hard_t2i


def test_role_loss_without_any_qualifying_row_is_zero_in_the_graph():
    img = _unit(3, 2, 4, seed=3).requires_grad_(True)
    txt = _unit(3, 2, 4, seed=4)
    no_text = torch.zeros(3, 2, dtype=torch.bool)
    loss = role_contrastive_loss(img, torch.ones(3, 2, dtype=torch.bool), txt, no_text, 0.07)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(img.grad, torch.zeros_like(img))
    # a subset whose rows do not qualify contributes 0 while the others carry the whole batch's mean
    mask = _mask([[1, 1], [0, 0], [1, 0]])
    part = role_contrastive_loss(img.detach(), mask, txt, mask, 0.07, row_offset=1, n_rows=1)
    assert part.item() == 0.0


def test_global_loss_equals_explicit_loops():
    refined, text = _unit(4, 6, seed=5), _unit(4, 6, seed=6)
    got = global_contrastive_loss(refined, text, 0.2)
    assert got.item() == pytest.approx(_global_loss(refined, text, 0.2, range(4)), abs=1e-5)
    local = global_contrastive_loss(refined, text, 0.2, row_offset=2, n_rows=2)
    assert local.item() == pytest.approx(_global_loss(refined, text, 0.2, range(2, 4)), abs=1e-5)


def _outputs(seed=7, n=5):
    img_e, img_r = _unit(n, 3, 4, seed=seed), _unit(n, 3, 4, seed=seed + 1)
    txt_e, txt_r = _unit(n, 3, 4, seed=seed + 2), _unit(n, 3, 4, seed=seed + 3)
    return dict(refined_global=_unit(n, 4, seed=seed + 4), text_features=_unit(n, 4, seed=seed + 5),
                image_features=_unit(n, 4, seed=seed + 6), image_entity=img_e, image_entity_mask=IMAGE_MASK,
                image_relation=img_r, image_relation_mask=IMAGE_MASK.flip(0), text_entity=txt_e,
                text_entity_mask=TEXT_MASK, text_relation=txt_r, text_relation_mask=TEXT_MASK.flip(1),
                logit_scale=torch.tensor(100.0))


def _loss_args(**overrides):
    values = dict(comalign_temperature=0.07, comalign_entity_weight=1.0, comalign_relation_weight=1.0,
                  comalign_global_weight=1.0, comalign_padding="masked", comalign_smooth_max=0.0, local_loss=False,
                  gather_with_grad=False, rank=0, world_size=1, horovod=False)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_comalign_loss_weights_flags_and_registration():
    out = _outputs()
    loss = create_loss("comalign", _loss_args(comalign_temperature=0.2, comalign_entity_weight=0.5,
                                              comalign_relation_weight=2.0, comalign_global_weight=0.25,
                                              comalign_padding="reference", comalign_smooth_max=0.1))
    assert (loss.temperature, loss.padding, loss.smooth) == (0.2, "reference", 0.1)
    terms = loss(**out, output_dict=True)
    assert set(terms) == {"entity_loss", "relation_loss", "global_loss"}
    for role, weight in (("entity", 0.5), ("relation", 2.0)):
        want = _role_loss(out[f"image_{role}"], out[f"image_{role}_mask"], out[f"text_{role}"],
                          out[f"text_{role}_mask"], 0.2, "reference", 0.1)
        assert terms[f"{role}_loss"].item() == pytest.approx(weight * want, abs=1e-5)
    assert terms["global_loss"].item() == pytest.approx(
        0.25 * _global_loss(out["refined_global"], out["text_features"], 0.2, range(5)), abs=1e-5)
    assert loss(**out).item() == pytest.approx(sum(t.item() for t in terms.values()), abs=1e-6)
    assert create_loss("comalign", _loss_args()).smooth is None  # --comalign-smooth-max 0: the hard max
    off = ComAlignLoss(relation_weight=0.0)(**out, output_dict=True)
    assert off["relation_loss"].item() == 0.0 and off["entity_loss"].item() > 0
    for kwargs, flag in (({"temperature": 0.0}, "--comalign-temperature"), ({"padding": "zeros"}, "--comalign-padding"),
                         ({"smooth": -1.0}, "--comalign-smooth-max")):
        with pytest.raises(ValueError, match=flag):
            ComAlignLoss(**kwargs)


def test_comalign_loss_names_the_missing_component_outputs():
    plain = {"image_features": _unit(4, 6, seed=1), "text_features": _unit(4, 6, seed=2),
             "logit_scale": torch.tensor(10.0)}
    with pytest.raises(ValueError, match=r"lacks \['refined_global', 'text_entity', 'image_entity'\]"):
        ComAlignLoss()(**plain)


def test_gradients_reach_only_the_head():
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL)
    tokenizer = open_clip.get_tokenizer(MODEL)
    views = torch.zeros(3, NE + NR + 1, 3, 64, 64)
    views[:, -1] = torch.randn(3, 3, 64, 64)
    views[:, :2] = torch.randn(3, 2, 3, 64, 64)     # two entity views per image
    views[:2, NE] = torch.randn(2, 3, 64, 64)       # one relation view on images 0 and 1
    captions = ["a red circle above a blue square", "a green star left of a cross", "a big triangle"]
    parts = [TextComponents(["red circle", "blue square"], ["red circle above a blue square"]),
             TextComponents(["green star", "cross"], ["green star left of a cross"]),
             TextComponents(["big triangle"], [])]
    tokens = torch.stack([phrase_tokens(tokenizer, c, p, NE, NR) for c, p in zip(captions, parts)])
    loss = ComAlignLoss()(**model(image=views, text=tokens))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if not n.startswith(HEAD))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith(HEAD) for n in trained)
    assert not any(n.startswith(HEAD + "bottleneck_encoder") for n in trained)  # the unused block stays frozen
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in trained)


def test_two_processes_equal_one_process_with_and_without_local_loss(tmp_path):
    """Each rank holds half the batch (ranks hold 1 and 3 rows with relations): every term equals the
    1-process loss on the full batch, and with --local-loss the ranks' losses average to it, gradients
    included (gathered with grad)."""
    ctx = multiprocessing.get_context("fork")  # the test process has everything imported already
    out = tmp_path / "losses.json"
    procs = [ctx.Process(target=comalign_dist_worker.run, args=(rank, 2, str(tmp_path / "init"), str(out)))
             for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung and [p.exitcode for p in procs] == [0, 0]
    results = json.loads(out.read_text())
    assert set(results) == set(comalign_dist_worker.CONFIGS)
    for name, entry in results.items():
        assert set(entry["single"]) == {"entity_loss", "relation_loss", "global_loss"}
        assert all(v > 0 for v in entry["single"].values()), name
        for mode in ("distributed", "local"):
            assert entry[mode] == pytest.approx(entry["single"], abs=1e-5), (name, mode)
        assert entry["local_grad_error"] < 1e-5, name


# ----------------------------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """8 ShapeCrepe ci images with two captions each (the caption and its first hard negative), a seeded tiny
    ComAlign model saved as a file, a store of all images embedded with it (gt boxes) and one with 3/2 slots."""
    root = tmp_path_factory.mktemp("comalign_training")
    generate(root, preset="ci", train_size=8, pretrain_size=0, test_pairs=1, zeroshot_per_class=0, progress=False,
             workers=1)
    with open(root / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with open(root / "captions.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for row in rows:
            writer.writerow([row["filepath"], row["title"]])
            writer.writerow([row["filepath"], ast.literal_eval(row["neg_caption"])[0]])
    torch.manual_seed(0)
    torch.save(open_clip.create_model(MODEL).state_dict(), root / "tiny.pt")
    common = ["--model", MODEL, "--pretrained", str(root / "tiny.pt"), "--annotations", str(root / "captions.tsv"),
              "--boxes", "gt", "--scenes", str(root / "scenes.jsonl"), "--quiet"]
    embed.main([*common, "--out", str(root / "store.h5")])
    embed.main([*common, "--n-entity", "3", "--n-relation", "2", "--limit", "4", "--out", str(root / "small.h5")])
    return root


def _data_args(*argv: str):
    """training.main's parsed arguments (plugin flags merged as its pre-parser does), one process."""
    from open_clip_train.params import parse_args

    ours, rest = build_preparser().parse_known_args(["--model", MODEL, "--loss", "comalign", "--batch-size", "4",
                                                     "--workers", "0", "--seed", "3", *argv])
    args = parse_args(rest)
    for key, value in vars(ours).items():
        setattr(args, key, value)
    args.world_size, args.rank = 1, 0
    return args


def test_draw_caption_is_deterministic_and_changes_with_the_epoch():
    draws = [[draw_caption(5, 0, epoch, index) for index in range(20)] for epoch in range(4)]
    assert draws == [[draw_caption(5, 0, epoch, index) for index in range(20)] for epoch in range(4)]
    assert all(0 <= j < 5 for row in draws for j in row)
    assert len({tuple(row) for row in draws}) == 4  # each epoch pairs the images differently
    assert [draw_caption(5, 1, 0, i) for i in range(20)] != draws[0]  # and so does the seed
    assert {draw_caption(1, 0, e, i) for e in range(3) for i in range(5)} == {0}


def test_phrase_tokens_layout():
    tokenizer = open_clip.get_tokenizer(MODEL)
    parts = TextComponents(["red circle", "blue square", "green star", "cross"], ["red circle above a blue square"])
    tokens = phrase_tokens(tokenizer, "a red circle above a blue square", parts, 3, 2)
    want = tokenizer(["a red circle above a blue square", "red circle", "blue square", "green star",
                      "red circle above a blue square"])
    assert tokens.shape == (1 + 3 + 2, want.shape[1])
    assert torch.equal(tokens[:4], want[:4])          # caption, then the first 3 entities (the 4th is cut)
    assert torch.equal(tokens[4], want[4])            # relations start at 1 + n_entity
    assert (tokens[5] == 0).all()                     # an unused relation slot is a pad row
    few = phrase_tokens(tokenizer, "a cross", TextComponents(["cross"], []), 3, 2)
    assert torch.equal(few[:2], tokenizer(["a cross", "cross"])) and (few[2:] == 0).all()


def test_features_and_images_give_the_same_model_inputs(shapes):
    """The store path and the image path (same images, same model, same gt boxes, same drawn caption) feed the
    model the same components: every ComAlignCLIP output agrees to 1e-5."""
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(shapes / "tiny.pt"))
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    features = get_comalign_train_data(_data_args("--comalign-data", "features", "--train-data",
                                                  str(shapes / "store.h5")), preprocess, tokenizer, epoch=2)
    images = get_comalign_train_data(_data_args("--comalign-data", "images", "--train-data",
                                                str(shapes / "captions.tsv"), "--comalign-boxes", "gt",
                                                "--comalign-scenes", str(shapes / "scenes.jsonl")),
                                     preprocess, tokenizer, epoch=2)
    assert features.dataloader.num_samples == images.dataloader.num_samples == 8
    assert features.dataloader.num_batches == 2
    feat_ds, img_ds = features.dataloader.dataset, images.dataloader.dataset
    arrays = feat_ds.arrays
    assert arrays["image_ids"] == [r.image_id for r in img_ds.records]
    drawn = [draw_caption(2, 3, 2, i) for i in range(3)]
    assert 0 in drawn and 1 in drawn  # both caption slots are exercised
    with torch.no_grad():
        for i in range(3):
            caption = img_ds.records[i].captions[drawn[i]]
            assert arrays["caption_strings"][feat_ds.captions[i][drawn[i]]] == caption
            views, tokens = img_ds[i]
            slots, text_slots = feat_ds[i]
            assert views.shape == (NE + NR + 1, 3, 64, 64) and tokens.shape[0] == 1 + NE + NR
            a = model(image=views[None], text=tokens[None])
            b = model(image=slots[None], text=text_slots[None])
            assert a.keys() == b.keys()
            for key in a:
                if a[key].dtype == torch.bool:
                    assert torch.equal(a[key], b[key]), key
                else:
                    torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
            assert a["image_entity_mask"].sum() == 2 and a["image_relation_mask"].sum() == 1
            assert a["text_entity_mask"].sum() >= 1
    # the epoch reaches both datasets through their shared epoch (DataInfo.set_epoch)
    features.set_epoch(7)
    images.set_epoch(7)
    assert feat_ds.shared_epoch.get_value() == img_ds.shared_epoch.get_value() == 7


def test_a_store_with_other_slot_counts_is_refused(shapes):
    args = _data_args("--comalign-data", "features", "--train-data", str(shapes / "small.h5"))
    with pytest.raises(ComAlignDataError, match=r"small\.h5: stored 3 entity / 2 relation slots, but --model "
                                                r"comalign-tiny-ViT has 10 / 10"):
        get_comalign_train_data(args, None, None)


def test_feature_dataset_refuses_images_without_captions():
    arrays = {"image_ids": ["a", "b"], "caption_image": torch.tensor([0, 0])}
    with pytest.raises(ComAlignDataError, match="1 image\\(s\\) have no caption \\(first: image 1\\)"):
        ComAlignFeatureDataset(arrays, where="x.h5")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_indexed_and_an_old_store_give_identical_batches(shapes, tmp_path, workers):
    """The same store with its row index (rows read from the memory-mapped file, per worker) and without it (the
    layout of earlier versions, loaded whole): the same batches, bit for bit, over two epochs."""
    import h5py
    import shutil
    from open_clip_align.comalign.store import INDEX_GROUP, StoredRows

    old = shutil.copy(shapes / "store.h5", tmp_path / "old.h5")
    with h5py.File(old, "a") as f:
        del f[INDEX_GROUP]
    loaders = [get_comalign_train_data(_data_args("--comalign-data", "features", "--train-data", str(path),
                                                  "--comalign-max-captions", "2", "--workers", str(workers)),
                                       None, None) for path in (shapes / "store.h5", old)]
    indexed, loaded = (data.dataloader.dataset.arrays for data in loaders)
    assert isinstance(indexed["entity"], StoredRows) and isinstance(loaded["entity"], torch.Tensor)
    for epoch in (0, 1):
        for data in loaders:
            data.set_epoch(epoch)
        batches = [list(data.dataloader) for data in loaders]
        assert len(batches[0]) == len(batches[1]) == 2
        for (images_a, texts_a), (images_b, texts_b) in zip(*batches):
            assert images_a.shape == (4, NE + NR + 1, images_a.shape[-1]) and texts_a.shape[1] == 1 + NE + NR
            assert torch.equal(images_a, images_b) and torch.equal(texts_a, texts_b)
            assert images_a.abs().sum() > 0 and texts_a.abs().sum() > 0


# ------------------------------------------------------------------------------------------- training

@pytest.fixture(autouse=True)
def _own_log_handlers(own_log_handlers):
    """Every test here drops the log handlers its in-process runs add (see conftest)."""


def _state(path):
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj.get("state_dict", obj), obj


def _assert_only_the_head_changed(start, end):
    assert start.keys() == end.keys()
    for key, value in start.items():
        if not key.startswith(HEAD):
            assert torch.equal(end[key], value), key
    changed = [k for k in start if k.startswith(HEAD) and not torch.equal(end[k], start[k])]
    assert any(k.startswith(HEAD + "transformer_encoder_box.") for k in changed)
    assert not any(k.startswith(HEAD + "bottleneck_encoder") for k in changed)


def _comalign_argv(tmp_path, shapes, name, *extra):
    return train_argv(tmp_path, name, "--model", MODEL, "--pretrained", str(shapes / "tiny.pt"), "--loss", "comalign",
                      "--log-every-n-steps", "1", *extra)


def test_train_on_features_then_resume(tmp_path, shapes):
    argv = _comalign_argv(tmp_path, shapes, "feat", "--comalign-data", "features", "--train-data",
                          str(shapes / "store.h5"), "--save-most-recent")
    assert train_main(argv) is None
    start, _ = _state(shapes / "tiny.pt")
    ckpts = tmp_path / "logs" / "feat" / "checkpoints"
    first, first_obj = _state(ckpts / "epoch_1.pt")
    _assert_only_the_head_changed(start, first)
    log = (tmp_path / "logs" / "feat" / "out.log").read_text()
    assert all(term in log for term in ("Entity_loss", "Relation_loss", "Global_loss"))

    argv = _comalign_argv(tmp_path, shapes, "feat", "--comalign-data", "features", "--train-data",
                          str(shapes / "store.h5"), "--save-most-recent", "--resume", "latest")
    argv[argv.index("--epochs") + 1] = "2"
    assert train_main(argv) is None
    second, second_obj = _state(ckpts / "epoch_2.pt")
    assert (first_obj["epoch"], second_obj["epoch"]) == (1, 2)
    assert "=> resuming checkpoint" in (tmp_path / "logs" / "feat" / "out.log").read_text()
    _assert_only_the_head_changed(first, second)
    steps = [s["step"].item() for s in second_obj["optimizer"]["state"].values()]
    assert steps and max(steps) == 2 * 2  # 8 images, batch 4: the step count continues from epoch 1


def test_train_on_images_with_gt_boxes(tmp_path, shapes):
    argv = _comalign_argv(tmp_path, shapes, "img", "--comalign-data", "images", "--train-data",
                          str(shapes / "captions.tsv"), "--comalign-boxes", "gt", "--comalign-scenes",
                          str(shapes / "scenes.jsonl"))
    assert train_main(argv) is None
    start, _ = _state(shapes / "tiny.pt")
    end, _ = _state(tmp_path / "logs" / "img" / "checkpoints" / "epoch_1.pt")
    _assert_only_the_head_changed(start, end)


@pytest.mark.parametrize("case", ["loss-without-data", "data-without-loss", "plain-model", "missing-store",
                                  "gt-without-scenes"])
def test_flag_errors(tmp_path, shapes, case, monkeypatch, capsys):
    """Each mistake: the error class with a clear message from training.main.main, and through its console
    entry (training.main.cli) one line and exit status 2."""
    store = ["--train-data", str(shapes / "store.h5")]
    extra, error, message = {
        "loss-without-data": (["--model", MODEL, "--loss", "comalign", *store], SystemExit,
                              "--loss comalign trains on ComAlign components and needs --comalign-data"),
        "data-without-loss": (["--model", MODEL, "--comalign-data", "features", *store], SystemExit,
                              "--comalign-data needs --loss comalign"),
        "plain-model": (["--model", "hardneg-tiny-ViT", "--loss", "comalign", "--comalign-data", "features", *store],
                        UsageError, "--model hardneg-tiny-ViT is not a ComAlign model.*comalign-tiny-ViT"),
        "missing-store": (["--model", MODEL, "--loss", "comalign", "--comalign-data", "features", "--train-data",
                           str(tmp_path / "nope.h5")], ComAlignDataError, "--train-data .*nope.h5: no such file"),
        "gt-without-scenes": (["--model", MODEL, "--loss", "comalign", "--comalign-data", "images", "--train-data",
                               str(shapes / "captions.tsv"), "--comalign-boxes", "gt"], ComAlignDataError,
                              "--comalign-boxes gt needs --comalign-scenes"),
    }[case]
    with pytest.raises(error) as raised:
        train_main(train_argv(tmp_path, "direct", *extra))
    if error is SystemExit:  # the pre-parser's argparse error
        assert raised.value.code == 2
    else:
        assert raised.match(message)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["training.main", *train_argv(tmp_path, "cli", *extra)])
    with pytest.raises(SystemExit) as exited:
        train_cli()
    err = capsys.readouterr().err
    assert exited.value.code == 2
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), err
