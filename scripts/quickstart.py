"""Quickstart: hard negatives vs plain CLIP on the synthetic ShapeCrepe benchmark, end to end on CPU.

Stages (each skipped when its output already exists, so an interrupted run resumes):
  1. generate ShapeCrepe data (training rows with rule-made hard negatives, SugarCrepe-format test sets);
  2. pretrain a tiny CLIP on bag-of-words captions: it learns which colours/shapes are present, not which
     object has which (the non-binding CLIP that DeGLA-style fine-tuning starts from);
  3. fine-tune it twice through ``training.main`` with identical data, seeds and steps: ``--loss clip``
     and ``--loss negclip`` (one rule-made swapped-attribute negative caption per image, NegCLIP's recipe);
  4. score the three checkpoints on both test splits (iid, held-out colour-shape combinations) with the
     official SugarCrepe rule (strict pos > neg), print a table, write results.json and results.png.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import open_clip  # noqa: E402

import open_clip_align  # noqa: E402,F401
from open_clip_align.data.synthetic import generate  # noqa: E402
from open_clip_align.eval.sugarcrepe import SUBSETS, evaluate_sugarcrepe  # noqa: E402

ARMS = ("pretrained", "clip", "negclip")
SPLITS = ("iid", "heldout")


def _log(message: str) -> None:
    print(f"[quickstart {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _train(args, name: str, epochs: int, batch_size: int, cwd: Path, flags: list) -> Path:
    """Run ``python -m training.main`` unless its final checkpoint exists; stream its progress lines."""
    ckpt = args.out / "logs" / name / "checkpoints" / f"epoch_{epochs}.pt"
    if ckpt.is_file():
        _log(f"{name}: found {ckpt}, skipping")
        return ckpt
    run_dir = args.out / "logs" / name
    if run_dir.exists():  # an interrupted run: start it again cleanly
        shutil.rmtree(run_dir)
    argv = [sys.executable, "-m", "training.main", "--logs", str(args.out / "logs"), "--name", name,
            "--model", args.model, "--device", "cpu", "--precision", "fp32", "--workers", str(args.workers),
            "--batch-size", str(batch_size), "--epochs", str(epochs), "--seed", str(args.seed),
            "--warmup", "20", "--wd", "0.1", "--log-every-n-steps", "10", "--save-frequency", "0", *flags]
    _log(f"{name}: " + " ".join(argv[1:]))
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        match = re.search(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\].*?Contrastive_loss: ([0-9.]+)", line)
        if match:
            epoch, _, _, pct, loss = match.groups()
            _log(f"{name}: epoch {int(epoch) + 1}/{epochs} {pct:>3}%  loss {float(loss):.3f}")
    if proc.wait() != 0 or not ckpt.is_file():
        sys.stderr.write("".join(tail))
        raise SystemExit(f"quickstart: training run {name!r} failed (full log in {run_dir / 'out.log'})")
    return ckpt


def _evaluate(args, checkpoints: dict) -> dict:
    results = {}
    for arm, ckpt in checkpoints.items():
        model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=str(ckpt))
        model.eval()
        tokenizer = open_clip.get_tokenizer(args.model)
        results[arm] = {split: evaluate_sugarcrepe(model, preprocess, tokenizer, args.out / "data" / "sugarcrepe" / split,
                                                    progress=sys.stdout.isatty())
                        for split in SPLITS}
        _log(f"scored {arm}")
    return results


def _table(results: dict) -> str:
    header = f"{'split':<9}{'subset':<13}" + "".join(f"{arm:>12}" for arm in ARMS)
    lines = [header, "-" * len(header)]
    for split in SPLITS:
        for subset in SUBSETS:
            lines.append(f"{split:<9}{subset:<13}" + "".join(
                f"{results[arm][split]['subsets'][subset]['acc']:>12.1f}" for arm in ARMS))
        lines.append(f"{split:<9}{'micro':<13}" + "".join(f"{results[arm][split]['micro']:>12.1f}" for arm in ARMS))
        lines.append("")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS), figsize=(13, 4.2), sharey=True)
    width = 0.8 / len(ARMS)
    for ax, split in zip(axes, SPLITS):
        for i, arm in enumerate(ARMS):
            values = [results[arm][split]["subsets"][s]["acc"] for s in SUBSETS]
            ax.bar([x + (i - 1) * width for x in range(len(SUBSETS))], values, width, label=arm)
        ax.axhline(50, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(SUBSETS)), SUBSETS, rotation=30)
        ax.set_title(f"ShapeCrepe {split} split (strict pos > neg)")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("accuracy (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(ARMS), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart", help="output directory")
    parser.add_argument("--model", default="shapes-tiny-ViT")
    parser.add_argument("--preset", default="default", choices=("default", "ci"), help="ShapeCrepe size preset")
    parser.add_argument("--train-size", type=int, default=None,
                        help="override the preset's training (and pretraining) rows")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="epochs of bag-of-words pretraining")
    parser.add_argument("--pretrain-batch-size", type=int, default=128)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-epochs", type=int, default=1, help="epochs of each fine-tuning arm")
    parser.add_argument("--finetune-batch-size", type=int, default=16,
                        help="small batches leave plain CLIP few in-batch binding contrasts, as at real scale")
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    start = time.time()

    data = args.out / "data"
    if (data / "manifest.json").is_file():
        _log(f"data: found {data}, skipping generation")
    else:
        _log("data: generating ShapeCrepe")
        generate(data, preset=args.preset, seed=args.seed, overwrite=data.exists(), train_size=args.train_size,
                 pretrain_size=args.train_size, num_negatives=1, train_neg_types=("swap_att",),
                 progress=sys.stdout.isatty())

    pretrained = _train(args, "pretrain", args.pretrain_epochs, args.pretrain_batch_size, data, [
        "--loss", "clip", "--dataset-type", "csv", "--train-data", "pretrain.csv",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--lr", str(args.pretrain_lr)])
    finetune = ["--pretrained", str(pretrained), "--hardneg-format", "csv", "--train-data", str(data / "train.csv"),
                "--num-hardneg", "1", "--lr", str(args.finetune_lr)]
    checkpoints = {"pretrained": pretrained}
    for loss in ("clip", "negclip"):
        checkpoints[loss] = _train(args, f"finetune-{loss}", args.finetune_epochs, args.finetune_batch_size, data,
                                   ["--loss", loss, *finetune])

    results = _evaluate(args, checkpoints)
    table = _table(results)
    print("\n" + table)
    gaps = {split: {s: results["negclip"][split]["subsets"][s]["acc"] - results["clip"][split]["subsets"][s]["acc"]
                    for s in ("swap_obj", "swap_att")} for split in SPLITS}
    summary = {"arms": results, "negclip_minus_clip_swap": gaps, "config": {k: str(v) for k, v in vars(args).items()},
               "seconds": round(time.time() - start, 1)}
    tmp = args.out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out / "results.json")
    _plot(results, args.out / "results.png")
    for split, gap in gaps.items():
        _log(f"negclip - clip on {split}: " + ", ".join(f"{s} {v:+.1f} pt" for s, v in gap.items()))
    _log(f"done in {summary['seconds']:.0f} s: {args.out / 'results.json'}, {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
