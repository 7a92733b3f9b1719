"""Quickstart: DeGLA and NegCLIP vs plain CLIP fine-tuning on the synthetic ShapeCrepe benchmark, on CPU.

Stages (each skipped when its output already exists, so an interrupted run resumes):
  1. generate ShapeCrepe data (training rows with rule-made hard negatives, SugarCrepe-format test sets);
  2. pretrain a tiny CLIP on bag-of-words captions: it learns which colours/shapes are present, not which
     object has which (the non-binding CLIP that DeGLA-style fine-tuning starts from);
  3. fine-tune it three times through ``training.main`` with identical data, seeds and steps: ``--loss clip``,
     ``--loss negclip`` (one rule-made swapped-attribute negative caption per image, NegCLIP's recipe) and
     ``--loss degla`` (the same negatives plus IGC, TGC and self-distillation to an EMA teacher);
  4. score the four checkpoints on both test splits (iid, held-out colour-shape combinations) with the
     official SugarCrepe rule (strict pos > neg), and on general ability: retrieval with bag-of-words
     captions, the skill pretraining taught (the stand-in for zero-shot ability that hard-negative fine-tuning
     erodes and DeGLA's self-distillation is meant to keep); print a table, write results.json and results.png.
"""
import argparse
import json
import os
import random
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
from open_clip_align.data.synthetic import caption_words, generate  # noqa: E402
from open_clip_align.eval import sugarcrepe  # noqa: E402
from open_clip_align.eval.retrieval import evaluate_retrieval  # noqa: E402
from open_clip_align.eval.scoring import DualEncoderScorer  # noqa: E402
from open_clip_align.eval.sugarcrepe import SUBSETS  # noqa: E402

ARMS = ("pretrained", "clip", "negclip", "degla")
SPLITS = ("iid", "heldout")
GENERAL_SUBSETS = ("replace_obj", "replace_att")  # images whose paired scenes differ in their bag of words


def _log(message: str) -> None:
    print(f"[quickstart {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _train(args, name: str, model: str, epochs: int, batch_size: int, cwd: Path, flags: list) -> Path:
    """Run ``python -m training.main`` unless its final checkpoint exists; stream its progress lines."""
    ckpt = args.out / "logs" / name / "checkpoints" / f"epoch_{epochs}.pt"
    if ckpt.is_file():
        _log(f"{name}: found {ckpt}, skipping")
        return ckpt
    run_dir = args.out / "logs" / name
    if run_dir.exists():  # an interrupted run: start it again cleanly
        shutil.rmtree(run_dir)
    argv = [sys.executable, "-m", "training.main", "--logs", str(args.out / "logs"), "--name", name,
            "--model", model, "--device", "cpu", "--precision", "fp32", "--workers", str(args.workers),
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


def _bag_of_words_set(root: Path, seed: int):
    """iid test images with their caption's words in a seeded random order (pretraining's caption style)."""
    items = sugarcrepe.load(root, GENERAL_SUBSETS)
    images = list(dict.fromkeys(it.images[0] for it in items))
    first_caption = {}
    for it in items:
        first_caption.setdefault(it.images[0], it.captions[0])
    captions = []
    for i, image in enumerate(images):
        words = caption_words(first_caption[image])
        random.Random(f"{seed}/{i}").shuffle(words)
        captions.append([" ".join(words)])
    return images, captions


def _evaluate(args, checkpoints: dict) -> dict:
    bow_images, bow_captions = _bag_of_words_set(args.out / "data" / "sugarcrepe" / "iid", args.seed)
    results = {}
    for arm, (model_name, ckpt) in checkpoints.items():
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(ckpt))
        model.eval()
        scorer = DualEncoderScorer(model, preprocess, open_clip.get_tokenizer(model_name), progress=sys.stdout.isatty())
        results[arm] = {split: sugarcrepe.evaluate(scorer, args.out / "data" / "sugarcrepe" / split) for split in SPLITS}
        bow = evaluate_retrieval(scorer, bow_images, bow_captions, ks=(1, 5))
        bow["mean_r1"] = (bow["image_to_text"][1] + bow["text_to_image"][1]) / 2
        results[arm]["general"] = {"bag_of_words_retrieval": bow}
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
    for label, direction, k in (("BoW i->t R@1", "image_to_text", 1), ("BoW t->i R@1", "text_to_image", 1),
                                ("BoW i->t R@5", "image_to_text", 5), ("BoW t->i R@5", "text_to_image", 5)):
        lines.append(f"{'general':<9}{label:<13}" + "".join(
            f"{results[arm]['general']['bag_of_words_retrieval'][direction][k]:>12.1f}" for arm in ARMS))
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS) + 1, figsize=(16, 4.2), sharey=True,
                             gridspec_kw={"width_ratios": [len(SUBSETS)] * len(SPLITS) + [2]})
    width = 0.8 / len(ARMS)
    offset = (len(ARMS) - 1) / 2
    for ax, split in zip(axes, SPLITS):
        for i, arm in enumerate(ARMS):
            values = [results[arm][split]["subsets"][s]["acc"] for s in SUBSETS]
            ax.bar([x + (i - offset) * width for x in range(len(SUBSETS))], values, width, label=arm)
        ax.axhline(50, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(SUBSETS)), SUBSETS, rotation=30)
        ax.set_title(f"ShapeCrepe {split} split (strict pos > neg)")
        ax.set_ylim(0, 100)
    general = axes[-1]
    for i, arm in enumerate(ARMS):
        bow = results[arm]["general"]["bag_of_words_retrieval"]
        general.bar([x + (i - offset) * width for x in range(2)], [bow["image_to_text"][1], bow["text_to_image"][1]],
                    width)
    general.set_xticks(range(2), ["image->text", "text->image"], rotation=30)
    general.set_title("general: BoW retrieval R@1")
    axes[0].set_ylabel("accuracy / recall (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(ARMS), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart", help="output directory")
    parser.add_argument("--model", default="shapes-tiny-ViT", help="model of the pretrain, clip and negclip arms")
    parser.add_argument("--degla-model", default="degla-shapes-tiny-ViT",
                        help="the same architecture with an EMA teacher, for the degla arm")
    parser.add_argument("--degla-distill-weight", type=float, default=0.08,
                        help="λ_D; the paper's 0.005 at global batch 256 is 0.08 at the fine-tuning batch of 16 "
                             "(the summed distill term grows with the batch)")
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

    pretrained = _train(args, "pretrain", args.model, args.pretrain_epochs, args.pretrain_batch_size, data, [
        "--loss", "clip", "--dataset-type", "csv", "--train-data", "pretrain.csv",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--lr", str(args.pretrain_lr)])
    finetune = ["--pretrained", str(pretrained), "--hardneg-format", "csv", "--train-data", str(data / "train.csv"),
                "--num-hardneg", "1", "--lr", str(args.finetune_lr)]
    checkpoints = {"pretrained": (args.model, pretrained)}
    method_flags = {"clip": [], "negclip": [],
                    "degla": ["--degla-distill-weight", str(args.degla_distill_weight)]}
    for loss, extra in method_flags.items():
        model = args.degla_model if loss == "degla" else args.model
        checkpoints[loss] = (model, _train(args, f"finetune-{loss}", model, args.finetune_epochs,
                                           args.finetune_batch_size, data, ["--loss", loss, *finetune, *extra]))

    results = _evaluate(args, checkpoints)
    table = _table(results)
    print("\n" + table)
    gaps = {f"{arm}_minus_clip": {split: {s: results[arm][split]["subsets"][s]["acc"]
                                         - results["clip"][split]["subsets"][s]["acc"] for s in ("swap_obj", "swap_att")}
                                  for split in SPLITS} for arm in ("negclip", "degla")}
    general = {arm: results[arm]["general"]["bag_of_words_retrieval"]["mean_r1"] for arm in ARMS}
    summary = {"arms": results, "swap_gaps": gaps, "general_mean_r1": general,
               "config": {k: str(v) for k, v in vars(args).items()}, "seconds": round(time.time() - start, 1)}
    tmp = args.out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out / "results.json")
    _plot(results, args.out / "results.png")
    for name, per_split in gaps.items():
        for split, gap in per_split.items():
            _log(f"{name.replace('_minus_', ' - ')} on {split}: " + ", ".join(f"{s} {v:+.1f} pt" for s, v in gap.items()))
    _log("general ability (BoW retrieval, mean R@1): " + ", ".join(f"{arm} {v:.1f}" for arm, v in general.items()))
    _log(f"done in {summary['seconds']:.0f} s: {args.out / 'results.json'}, {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
