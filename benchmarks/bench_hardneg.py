"""Benchmark: hard-negative data and the NegCLIP training step, each against its baseline in the same run.

1. Dataset throughput (samples/s, ``__getitem__`` in-process): our csv hard-negative dataset (image +
   1+K captions tokenized) vs open_clip_train's ``CsvDataset`` (image + 1 caption) on the same rows.
2. One optimizer step (forward, backward, AdamW) at equal batch: ``--loss negclip`` with K negatives vs
   ``--loss clip`` (open_clip's ClipLoss) on the same model config.

Rounds alternate between the two arms so machine noise hits both; medians are reported. Prints a table
and writes JSON (default benchmarks/results/bench_hardneg.json).

    python benchmarks/bench_hardneg.py [--model shapes-tiny-ViT] [--batch-size 64] [--num-hardneg 4]
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import open_clip
import open_clip_align  # noqa: F401  (plugin configs and losses)
from open_clip.loss import ClipLoss
from open_clip_train.data import CsvDataset
from open_clip_align.data.hardneg import get_hardneg_train_data
from open_clip_align.data.synthetic import generate
from open_clip_align.losses import NegCLIPLoss
from open_clip_align.params import build_preparser
from harness import time_arms, write_json


def _hardneg_args(train_csv: Path, k: int, batch_size: int) -> argparse.Namespace:
    args = build_preparser().parse_args(["--hardneg-format", "csv", "--num-hardneg", str(k)])
    args.__dict__.update(train_data=str(train_csv), csv_img_key="filepath", csv_caption_key="title",
                         csv_separator="\t", batch_size=batch_size, workers=0, distributed=False,
                         world_size=1, rank=0, seed=0, train_num_samples=None, dataset_resampled=False)
    return args


def bench_dataset(data_dir: Path, k: int, n: int, rounds: int, model: str) -> dict:
    _, preprocess, _ = open_clip.create_model_and_transforms(model)
    tokenizer = open_clip.get_tokenizer(model)
    ours = get_hardneg_train_data(_hardneg_args(data_dir / "train.csv", k, 16), preprocess, tokenizer)
    ours = ours.dataloader.dataset
    # CsvDataset opens paths as given: hand it absolute ones in a copy of the file
    lines = (data_dir / "train.csv").read_text().splitlines()
    absolute = [lines[0]] + [f"{data_dir / ln.split(chr(9), 1)[0]}\t{ln.split(chr(9), 1)[1]}" for ln in lines[1:]]
    upstream_csv = data_dir / "train_abs.csv"
    upstream_csv.write_text("\n".join(absolute) + "\n")
    theirs = CsvDataset(str(upstream_csv), preprocess, "filepath", "title", tokenizer=tokenizer)
    n = min(n, len(ours))

    def run(dataset):
        return lambda: [dataset[i] for i in range(n)]

    times = time_arms({"CsvDataset": run(theirs), f"hardneg csv (K={k})": run(ours)}, rounds)
    return {name: {"samples_per_s": n / statistics.median(ts), "median_s": statistics.median(ts), "samples": n}
            for name, ts in times.items()}


def bench_step(model_name: str, batch: int, k: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = open_clip.create_model(model_name)
    context = model.context_length
    size = model.visual.image_size[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(batch, 3, size, size)
    texts = torch.randint(1, 49000, (batch, 1 + k, context))

    def step(loss_fn, emit):
        def run():
            model.emit_hardneg = emit
            out = model(images, texts)
            loss = loss_fn(**out)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    arms = {"clip": step(ClipLoss(), False), f"negclip (K={k})": step(NegCLIPLoss(), True)}
    times = time_arms(arms, rounds, warmup=1)
    return {name: {"median_s": statistics.median(ts), "samples_per_s": batch / statistics.median(ts)}
            for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-tiny-ViT")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-hardneg", type=int, default=4)
    parser.add_argument("--samples", type=int, default=512, help="rows per dataset pass")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_hardneg.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "data", preset="ci", train_size=args.samples, num_negatives=args.num_hardneg)
        data = bench_dataset(Path(tmp) / "data", args.num_hardneg, args.samples, args.rounds, args.model)
    step = bench_step(args.model, args.batch_size, args.num_hardneg, args.rounds)

    (base_d, ours_d), (base_s, ours_s) = data.values(), step.values()
    result = {
        "config": vars(args), "torch_threads": torch.get_num_threads(), "dataset": data, "train_step": step,
        "ratios": {"dataset_throughput_hardneg_over_csv": ours_d["samples_per_s"] / base_d["samples_per_s"],
                   "step_time_negclip_over_clip": ours_s["median_s"] / base_s["median_s"]},
    }
    print(f"{'benchmark':<34}{'arm':<22}{'median s':>10}{'samples/s':>12}")
    for section in ("dataset", "train_step"):
        for arm, r in result[section].items():
            print(f"{section:<34}{arm:<22}{r['median_s']:>10.4f}{r['samples_per_s']:>12.1f}")
    for name, value in result["ratios"].items():
        print(f"ratio  {name:<46}{value:>8.3f}")
    out = Path(args.out)
    write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
