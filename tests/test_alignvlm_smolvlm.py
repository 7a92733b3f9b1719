"""ALIGN inside a tiny random Idefics3 (SmolVLM family) written to disk by the test: the replaced projection keeps
the model's image splitting, pixel shuffle and interleaved <image> tokens; P rows sum to 1 and the output is P·E
(in the hull of E); training.alignvlm trains two steps and resumes exactly; left-padded batched generation equals
unpadded generation; save / load of the replaced connector; the MLP arm; vlm.evaluate on a checkpoint and on the
directory as it is. CPU, no downloads."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from open_clip_align.vlm import evaluate
from open_clip_align.vlm.build import build_model
from open_clip_align.vlm.checkpoint import load_checkpoint
from open_clip_align.vlm.interleaved import InterleavedLayout
from open_clip_align.vlm.smolvlm import AlignProjection, load_smolvlm
from open_clip_align.vlm.tiny_smolvlm import write_tiny_smolvlm
from training import alignvlm

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "A short caption:"
CAPTIONS = ["a red square", "two blue circles on the left", "a green star", "an empty grey field",
            "a yellow cross", "three dots", "a tiny purple ring", "a big orange box"]


def _config(path, connector="align", mode="frozen"):
    return {"vlm": "smolvlm", "vlm_path": str(path), "connector": connector, "connector_kwargs": {},
            "lm_training": mode, "prompt": PROMPT, "max_caption_tokens": 48, "lora": None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model directory and 8 images of different aspect ratios (so image splitting gives different tile
    counts and batches need padding) with a TSV and a Karpathy file over them."""
    root = tmp_path_factory.mktemp("smolvlm")
    path = write_tiny_smolvlm(root / "tiny-smolvlm")
    rng = np.random.RandomState(0)
    (root / "img").mkdir()
    for i in range(8):
        size = (24 + 8 * i, 64) if i % 2 else (64, 40)
        Image.fromarray((rng.rand(*size, 3) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
    rows = "".join(f"img/{i}.png\t{c}\n" for i, c in enumerate(CAPTIONS))
    (root / "train.tsv").write_text("filepath\ttitle\n" + rows)
    karpathy = [{"image": f"img/{i}.png", "caption": [c]} for i, c in enumerate(CAPTIONS)]
    (root / "eval.json").write_text(json.dumps(karpathy[:4]))
    (root / "support.json").write_text(json.dumps(karpathy[2:]))          # overlaps the evaluated 2 and 3
    return {"root": root, "path": Path(path)}


def _images(tiny, idx):
    return [Image.open(tiny["root"] / "img" / f"{i}.png").convert("RGB") for i in idx]


def test_align_replaces_only_the_projection_and_keeps_pixel_shuffle(tiny):
    stock, processor = load_smolvlm(tiny["path"])
    torch.manual_seed(0)
    model, proc, _ = build_model(_config(tiny["path"]))
    assert isinstance(model.projection, AlignProjection)
    align = model.connector
    # W2 = a copy of the model's LM head (same values, its own storage); E is read at call time, never stored
    assert torch.equal(align.w2.weight, model.vlm.lm_head.weight)
    assert align.w2.weight.data_ptr() != model.vlm.lm_head.weight.data_ptr()
    assert set(align.state_dict()) == {"w1.weight", "w1.bias", "ln1.weight", "ln1.bias", "w2.weight", "ln2.weight",
                                       "ln2.bias"}
    assert align.w1.in_features == 32 * 2 ** 2                       # d·s²: SmolVLM's pixel shuffle ran before
    # the features reaching our projection are exactly those the stock model's projection gets
    batch = InterleavedLayout(proc).encode([[img] for img in _images(tiny, [0, 1])], [PROMPT] * 2)
    seen = {}
    stock.model.connector.modality_projection.register_forward_hook(lambda m, i, o: seen.update(stock=i[0]))
    model.projection.register_forward_hook(lambda m, i, o: seen.update(ours=i[0], out=o))
    with torch.no_grad():
        stock(**batch)
        _, probs = model(**batch, return_probs=True)
    assert seen["ours"].shape == (5 + 3, 4, 128)                  # 2x2 + global and 1x2 + global tiles, 4 tokens each
    torch.testing.assert_close(seen["ours"], seen["stock"], rtol=0, atol=0)
    # P rows sum to 1; the output is P·E row by row, so it lies in the hull of E (per-coordinate bounds)
    e = model.vlm.get_input_embeddings().weight
    assert probs.dtype == torch.float32 and probs.shape == (8, 4, e.shape[0]) and bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, 4), rtol=0, atol=1e-5)
    flat_p, out = probs.reshape(-1, e.shape[0]), seen["out"].reshape(-1, e.shape[1])
    expected = torch.stack([sum(flat_p[r, v] * e[v] for v in range(e.shape[0])) for r in range(3)])
    torch.testing.assert_close(out[:3], expected, rtol=1e-5, atol=1e-6)
    assert bool((out >= e.min(0).values - 1e-6).all()) and bool((out <= e.max(0).values + 1e-6).all())
    # the interleaved layout: <image> tokens where the processor put them, in blocks of 4 per tile
    ids = batch["input_ids"][1][batch["attention_mask"][1].bool()]
    assert int((ids == proc.image_token_id).sum()) == 3 * 4


def test_labels_cover_the_caption_and_end_of_utterance_only(tiny):
    model, proc, to_rgb = build_model(_config(tiny["path"]))
    batch = model.training_collate(proc, PROMPT, max_caption_tokens=5)([(img, c) for img, c in
                                                                       zip(_images(tiny, [0, 1]), CAPTIONS[:2])])
    eou = proc.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    for row, caption in zip(batch["labels"].tolist(), CAPTIONS[:2]):
        caption_ids = proc.tokenizer.encode(" " + caption, add_special_tokens=False)[:5]
        assert [t for t in row if t != -100] == caption_ids + [eou]
    text = proc.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text.startswith("<|im_start|>user:<fake_token_around_image><row_1_col_1><image>")   # chat template
    assert "<global-img>" in text and text.endswith("assistant: a re<end_of_utterance>")   # 5 characters


def test_left_padded_generation_equals_unpadded(tiny):
    torch.manual_seed(0)
    model, proc, _ = build_model(_config(tiny["path"]), trainable=False)
    images = _images(tiny, [0, 1, 3])
    layout = InterleavedLayout(proc)
    batch = layout.encode([[img] for img in images], [PROMPT] * 3, padding_side="left")
    assert (batch["attention_mask"] == 0).any()                       # different tile counts: padded rows
    with torch.no_grad():
        padded = model.vlm(**batch).logits[:, -1]
        for i, img in enumerate(images):
            alone = model.vlm(**layout.encode([[img]], [PROMPT])).logits[0, -1]
            torch.testing.assert_close(padded[i], alone, rtol=0, atol=1e-5)
    together = model.generate(images, [PROMPT] * 3, proc, max_new_tokens=6, return_ids=True)
    for i, img in enumerate(images):
        assert together[i].tolist()[:6] == model.generate([img], [PROMPT], proc, max_new_tokens=6,
                                                          return_ids=True)[0].tolist()[:6]


def _argv(tiny, name, *extra):
    return ["--train-data", str(tiny["root"] / "train.tsv"), "--vlm", "smolvlm", "--vlm-path", str(tiny["path"]),
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--log-every", "1", "--lr", "1e-2",
            "--logs", str(tiny["root"] / "logs"), "--name", name, *extra]


def _connector(ckpt) -> dict:
    return torch.load(Path(ckpt) / "connector" / "alignvlm_connector.pt", weights_only=True)


def test_train_two_steps_resume_exactly_and_reload(tiny):
    flags = ("--steps", "4", "--save-every", "2", "--keep-last", "0")
    full = alignvlm.main(_argv(tiny, "a", *flags))
    ckpt = Path(full["checkpoint"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["connector", "run_config.json", "trainer_state.pt"]
    metrics = [json.loads(line) for line in (Path(full["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(0 < m["p_max_prob"] <= 1 for m in metrics)
    step2 = Path(full["run_dir"]) / "checkpoints" / "step_00000002"
    resumed = alignvlm.main(_argv(tiny, "a2", *flags, "--resume", str(step2)))
    assert resumed["losses"] == full["losses"][2:]
    assert all(torch.equal(_connector(resumed["checkpoint"])[k], v) for k, v in _connector(ckpt).items())
    # the frozen model is untouched; the checkpoint rebuilds the trained connector from the directory
    model, proc, _, config = load_checkpoint(ckpt)
    assert config["model"]["vlm"] == "smolvlm" and config["model"]["vlm_path"] == str(tiny["path"])
    assert all(torch.equal(v, _connector(ckpt)[k]) for k, v in model.connector.state_dict().items())
    stock, _ = load_smolvlm(tiny["path"])
    assert all(torch.equal(p, q) for p, q in zip(model.vlm.model.text_model.parameters(),
                                                  stock.model.text_model.parameters()))
    before = model.generate(_images(tiny, [0]), [PROMPT], proc, max_new_tokens=4, return_ids=True)
    again, proc2, _, _ = load_checkpoint(ckpt)
    assert torch.equal(again.generate(_images(tiny, [0]), [PROMPT], proc2, max_new_tokens=4, return_ids=True), before)


def test_mlp_arm_and_stage_b_full(tiny):
    mlp = alignvlm.main(_argv(tiny, "mlp", "--steps", "2", "--connector", "mlp"))
    assert set(_connector(mlp["checkpoint"])) == {"proj.weight"}         # the model's own projection, trained
    stock, _ = load_smolvlm(tiny["path"])
    assert not torch.equal(_connector(mlp["checkpoint"])["proj.weight"],
                           stock.model.connector.modality_projection.proj.weight)
    full = alignvlm.main(_argv(tiny, "b", "--steps", "2", "--stage", "B", "--lr", "1e-3", "--connector", "mlp",
                               "--init-from", str(Path(mlp["run_dir"]))))
    ckpt = Path(full["checkpoint"])
    assert (ckpt / "lm" / "model.safetensors").is_file()
    model, _, _, _ = load_checkpoint(ckpt)
    assert not torch.equal(model.vlm.lm_head.weight, stock.lm_head.weight)            # the trained LM is reloaded
    from safetensors.torch import load_file
    assert torch.equal(model.vlm.lm_head.weight, load_file(ckpt / "lm" / "model.safetensors")["lm_head.weight"])


def test_evaluate_checkpoint_few_shot_and_the_directory_as_is(tiny, tmp_path):
    run = alignvlm.main(_argv(tiny, "ev", "--steps", "2"))
    data, support = tiny["root"] / "eval.json", tiny["root"] / "support.json"
    result = evaluate.main(["--checkpoint", run["checkpoint"], "--data", str(data), "--out", str(tmp_path / "z"),
                            "--max-new-tokens", "4", "--batch-size", "3", "--quiet"])
    assert result["shots"] == 0 and result["model"]["vlm"] == "smolvlm"
    few = evaluate.main(["--checkpoint", run["checkpoint"], "--data", str(data), "--out", str(tmp_path / "f"),
                         "--max-new-tokens", "4", "--batch-size", "3", "--quiet", "--shots", "2", "--support",
                         str(support), "--seed", "3"])
    assert few["shots"] == 2 and few["few_shot"]["left_out_evaluated"] == 2
    shots = json.loads((tmp_path / "f" / "shots.json").read_text())
    evaluated = {e["image"] for e in json.loads(data.read_text())}
    assert all(len(r["shots"]) == 2 and not {s["image"] for s in r["shots"]} & evaluated for r in shots)
    # the CLI's batched few-shot captions are what one generate call with those examples gives
    model, proc, _, _ = load_checkpoint(run["checkpoint"])
    root = tiny["root"]
    direct = model.generate(_images(tiny, [0, 1, 2, 3]), [PROMPT] * 4, proc, max_new_tokens=4,
                            shot_images=[[Image.open(root / s["image"]).convert("RGB") for s in r["shots"]]
                                         for r in shots],
                            shot_captions=[[s["caption"] for s in r["shots"]] for r in shots])
    assert [c["caption"] for c in json.loads((tmp_path / "f" / "captions.json").read_text())] == direct
    stock = evaluate.main(["--vlm", "smolvlm", "--vlm-path", str(tiny["path"]), "--data", str(data), "--out",
                           str(tmp_path / "s"), "--max-new-tokens", "4", "--quiet", "--prompt", "Describe:"])
    assert stock["checkpoint"] is None and stock["prompt"] == "Describe:" and stock["model"]["connector"] == "mlp"


@pytest.mark.parametrize("flags,fragment", [
    (["--lm", "tiny-llama"], "--lm does not apply with --vlm smolvlm"),
    (["--reduction", "avg_pool"], "--reduction does not apply with --vlm smolvlm"),
    (["--vlm-path", "{missing}"], "{missing}: not found"),
    (["--vlm-path", "{tsv}"], "is a file"),
])
def test_smolvlm_flags_are_checked(tiny, tmp_path, monkeypatch, capsys, flags, fragment):
    names = {"{missing}": str(tmp_path / "none"), "{tsv}": str(tiny["root"] / "train.tsv")}
    for k, v in names.items():
        flags = [f.replace(k, v) for f in flags]
        fragment = fragment.replace(k, v)
    monkeypatch.setattr(sys, "argv", ["x", *_argv(tiny, "bad"), *flags])
    with pytest.raises(SystemExit) as exc:
        alignvlm.cli()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tiny["root"] / "logs" / "bad").exists()


def test_recipe_script_passes_a_smolvlm_directory(tmp_path):
    """scripts/train_alignvlm.sh with VLM_PATH trains ALIGN inside that SmolVLM (no tower / LM flags)."""
    import os
    import stat
    import subprocess

    from conftest import REPO

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGS_OUT\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PYTHON=str(fake), DATA="data/pixmo", ARGS_OUT=str(tmp_path / "args.txt"),
               VLM_PATH="/models/smolvlm", ACCUM="8", GRAD_CKPT="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "train_alignvlm.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args.txt").read_text().splitlines()
    assert args[args.index("--vlm") + 1] == "smolvlm" and args[args.index("--vlm-path") + 1] == "/models/smolvlm"
    assert args[args.index("--accum-freq") + 1] == "8" and "--grad-checkpointing" in args
    assert not {"--model", "--lm", "--pretrained", "--report-to"} & set(args)
    parsed = alignvlm.parse_args(args[2:])                       # the flags parse as training.alignvlm's
    assert parsed.vlm == "smolvlm" and parsed.accum_freq == 8
