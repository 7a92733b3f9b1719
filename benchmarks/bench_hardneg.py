"""Benchmark: hard-negative data and the NegCLIP training step, each against its baseline in the same run.

1. Map-style dataset throughput (samples/s, ``__getitem__`` in-process, one pass over the same rows with the
   same image pipeline): open_clip_train's ``CsvDataset`` (image + 1 caption) against our csv dataset (image +
   1+K captions) with each way of getting the K+1 token rows that was tried:
   - ``per-sample tokenizer``: the tokenizer on ``[caption, *negatives]`` at every access (the loader before);
   - ``one call per batch``: the same, batched over the B samples of a batch (what a collate could do);
   - ``LRU, first epoch`` / ``LRU, later epochs``: ``CachedTokenizer``, cold (a fresh cache per pass) and warm;
   - ``pre-tokenized``: ``PretokenizedCaptions``, every unique caption tokenized once when the dataset is
     built (the loader now). Building costs time once: reported, and folded into a first-epoch ratio.
2. Webdataset throughput (one epoch through the loader, workers 0): open_clip_train's ``get_wds_dataset`` (image
   + 1 caption) against our ``--hardneg-format wds`` loader with the per-sample tokenizer (before) and with
   ``CachedTokenizer`` in the collation (now: one tokenizer call per batch for the captions not cached), cold
   (a fresh cache per epoch: real data, whose captions rarely recur) and warm (every caption cached); the cold
   one also without ``ascii_fast_path``, to show what the shortcut buys.
3. One optimizer step (forward, backward, AdamW) at equal batch: ``--loss negclip`` with K negatives vs
   ``--loss clip`` (open_clip's ClipLoss) on the same model config.

The ``CachedTokenizer`` and ``PretokenizedCaptions`` arms tokenize through ``ascii_fast_path`` (the loaders do);
the per-sample and per-batch arms call open_clip's tokenizer as it is. Every arm gives the same token ids (checked here on every sample, and in tests/test_hardneg_data.py). Rounds
alternate between the arms of a section so machine noise hits all of them; medians are reported. Run it alone
on the machine. Prints a table and writes JSON (default benchmarks/results/bench_hardneg.json).

    python benchmarks/bench_hardneg.py [--model shapes-tiny-ViT] [--batch-size 64] [--num-hardneg 4]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import open_clip
import open_clip_align  # noqa: F401  (plugin configs and losses)
from open_clip.loss import ClipLoss
from open_clip_train.data import CsvDataset, get_wds_dataset
from open_clip_align.data.caption_tokens import CachedTokenizer, PretokenizedCaptions, sample_tokens
from open_clip_align.data.hardneg import get_hardneg_train_data
from open_clip_align.data.synthetic import generate
from open_clip_align.losses import NegCLIPLoss
from open_clip_align.params import build_preparser
from harness import time_arms, write_json

BASELINE = "baseline"


class TokenizeEach:
    """The loader before: the tokenizer on ``[caption, *negatives]`` at every access."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, caption, negatives, k):  # the loader's _encode before
        rows = [0] + [1 + i for i, neg in enumerate(negatives) if neg is not None]
        tokens = self.tokenizer([caption, *(neg for neg in negatives if neg is not None)])
        out = tokens.new_zeros((1 + k, tokens.shape[-1]))
        out[rows] = tokens
        return out

    def encode_batch(self, samples, k):
        return torch.stack([self.encode(caption, negatives, k) for caption, negatives in samples])


class LruEach:
    """``CachedTokenizer`` asked per sample (the map-style dataset's access pattern)."""

    def __init__(self, tokenizer):
        self.cache = CachedTokenizer(tokenizer)

    def encode(self, caption, negatives, k):
        return self.cache.encode_batch([(caption, negatives)], k)[0]


class Deferred:
    """Hands the captions back instead of tokens, for one tokenizer call per batch."""

    def encode(self, caption, negatives, k):
        return caption, list(negatives)


def _hardneg_args(fmt: str, train_data: str, k: int, batch_size: int, **extra) -> argparse.Namespace:
    args = build_preparser().parse_args(["--hardneg-format", fmt, "--num-hardneg", str(k)])
    args.__dict__.update(train_data=train_data, csv_img_key="filepath", csv_caption_key="title",
                         csv_separator="\t", batch_size=batch_size, workers=0, distributed=False,
                         world_size=1, rank=0, seed=0, train_num_samples=None, dataset_resampled=False,
                         train_data_upsampling_factors=None)
    args.__dict__.update(extra)
    return args


def _stats(times: dict, n: int) -> dict:
    return {name: {"samples_per_s": n / statistics.median(ts), "median_s": statistics.median(ts), "samples": n}
            for name, ts in times.items()}


def bench_dataset(data_dir: Path, k: int, n: int, batch: int, rounds: int, preprocess, tokenizer) -> dict:
    """Section 1: map-style arms over the first ``n`` rows of ShapeCrepe's train.csv."""
    start = time.perf_counter()
    ours = get_hardneg_train_data(_hardneg_args("csv", str(data_dir / "train.csv"), k, batch), preprocess,
                                  tokenizer).dataloader.dataset
    build_s = time.perf_counter() - start
    # CsvDataset opens paths as given: hand it absolute ones in a copy of the file
    lines = (data_dir / "train.csv").read_text().splitlines()
    absolute = [lines[0]] + [f"{data_dir / ln.split(chr(9), 1)[0]}\t{ln.split(chr(9), 1)[1]}" for ln in lines[1:]]
    upstream_csv = data_dir / "train_abs.csv"
    upstream_csv.write_text("\n".join(absolute) + "\n")
    start = time.perf_counter()
    theirs = CsvDataset(str(upstream_csv), preprocess, "filepath", "title", tokenizer=tokenizer)
    baseline_build_s = time.perf_counter() - start
    n = min(n, len(ours))
    pretokenized, warm = ours.captions, LruEach(tokenizer)

    def one_pass(dataset, captions=None):
        def run():
            if captions is not None:
                dataset.captions = captions() if callable(captions) else captions
            return [dataset[i] for i in range(n)]
        return run

    def batched():
        ours.captions = Deferred()
        out = []
        for b in range(0, n, batch):
            items = [ours[i] for i in range(b, min(n, b + batch))]
            texts = [[c, *negs] for _, (c, negs) in items]
            rows = iter(tokenizer([t for sample in texts for t in sample]))
            out += [(image, sample_tokens(torch.stack([next(rows) for _ in sample]), range(1, len(sample)), k))
                    for (image, _), sample in zip(items, texts)]
        return out

    arms = {
        BASELINE: one_pass(theirs),
        "per-sample tokenizer (before)": one_pass(ours, TokenizeEach(tokenizer)),
        "one tokenizer call per batch": batched,
        "LRU cache, first epoch": one_pass(ours, lambda: LruEach(tokenizer)),
        "LRU cache, later epochs": one_pass(ours, warm),
        "pre-tokenized (now)": one_pass(ours, pretokenized),
    }
    reference = [t for _, t in arms["per-sample tokenizer (before)"]()]
    for name, arm in arms.items():
        got = [t for _, t in arm()]
        if name != BASELINE and not (len(got) == n and all(torch.equal(a, b) for a, b in zip(reference, got))):
            raise AssertionError(f"{name}: token ids differ from the tokenizer's")
    result = _stats(time_arms(arms, rounds), n)
    captions = [r.caption for r in ours.records[:n]] + [x for r in ours.records[:n] for x in r.negatives]
    start = time.perf_counter()
    PretokenizedCaptions(tokenizer, captions)
    tokenize_s = time.perf_counter() - start
    base_rate = result[BASELINE]["samples_per_s"]
    first_epoch_s = build_s + len(ours) / result["pre-tokenized (now)"]["samples_per_s"]
    return {"arms": result, "rows": len(ours), "captions": len(captions), "unique_captions": len(set(captions)),
            "build_s": {"pre-tokenized (now)": build_s, BASELINE: baseline_build_s}, "tokenize_all_s": tokenize_s,
            "first_epoch_ratio_incl_build": (len(ours) / first_epoch_s) / (
                len(ours) / (baseline_build_s + len(ours) / base_rate))}


def _without_shortcut(tokenizer) -> CachedTokenizer:
    """``CachedTokenizer`` calling open_clip's tokenizer as it is (``ascii_fast_path`` undone): the arm that shows
    what the shortcut buys."""
    cache = CachedTokenizer(tokenizer)
    cache.tokenizer = tokenizer
    return cache


def bench_wds(data_dir: Path, k: int, n: int, batch: int, rounds: int, preprocess, tokenizer) -> dict:
    """Section 2: one epoch of ShapeCrepe's shards through each loader (workers 0)."""
    shards = sorted(str(p) for p in (data_dir / "train-wds").glob("shard-*.tar"))
    urls = "::".join(shards)
    args = _hardneg_args("wds", urls, k, batch, train_num_samples=n)
    theirs = get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer).dataloader
    ours = get_hardneg_train_data(args, preprocess, tokenizer).dataloader
    stage = next(s.kw["collation_fn"] for s in ours.dataset.pipeline
                 if hasattr(getattr(s, "kw", {}).get("collation_fn"), "captions"))
    warm = CachedTokenizer(tokenizer)

    def epoch(loader, captions=None):
        def run():
            if captions is not None:
                stage.captions = captions() if callable(captions) else captions
            return sum(len(images) for images, _ in loader)
        return run

    arms = {BASELINE: epoch(theirs), "per-sample tokenizer (before)": epoch(ours, TokenizeEach(tokenizer)),
            "first epoch without ASCII shortcut": epoch(ours, lambda: _without_shortcut(tokenizer)),
            "batch call + LRU, first epoch (now)": epoch(ours, lambda: CachedTokenizer(tokenizer)),
            "batch call + LRU, later epochs (now)": epoch(ours, warm)}
    samples = {name: arm() for name, arm in arms.items()}
    return {"arms": _stats(time_arms(arms, rounds), samples[BASELINE]), "shards": len(shards)}


def bench_step(model_name: str, batch: int, k: int, rounds: int) -> dict:
    """Section 3: one optimizer step, negclip against clip."""
    torch.manual_seed(0)
    model = open_clip.create_model(model_name)
    context = model.context_length
    size = model.visual.image_size[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(batch, 3, size, size)
    texts = torch.randint(1, 49000, (batch, 1 + k, context))

    def step(loss_fn, emit):
        def run():
            model.configure_training(emit_hardneg=emit)
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


def _ratios(section: dict) -> dict:
    base = section["arms"][BASELINE]["samples_per_s"]
    return {name: r["samples_per_s"] / base for name, r in section["arms"].items() if name != BASELINE}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-tiny-ViT")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-hardneg", type=int, default=4)
    parser.add_argument("--samples", type=int, default=512, help="rows per dataset pass")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_hardneg.json"))
    args = parser.parse_args(argv)

    _, preprocess, _ = open_clip.create_model_and_transforms(args.model)
    tokenizer = open_clip.get_tokenizer(args.model)
    k, batch = args.num_hardneg, 16
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, preset="ci", train_size=args.samples, num_negatives=k, progress=False)
        dataset = bench_dataset(data, k, args.samples, batch, args.rounds, preprocess, tokenizer)
        wds = bench_wds(data, k, args.samples, batch, args.rounds, preprocess, tokenizer)
    step = bench_step(args.model, args.batch_size, k, args.rounds)
    base_s, ours_s = step.values()
    result = {
        "config": vars(args), "torch_threads": torch.get_num_threads(), "loader_batch_size": batch,
        "dataset": dataset, "wds": wds, "train_step": step,
        "ratios": {"dataset_samples_per_s_over_CsvDataset": _ratios(dataset),
                   "dataset_first_epoch_incl_build_over_CsvDataset": dataset["first_epoch_ratio_incl_build"],
                   "wds_samples_per_s_over_get_wds_dataset": _ratios(wds),
                   "step_time_negclip_over_clip": ours_s["median_s"] / base_s["median_s"]},
    }
    print(f"{'section':<10}{'arm':<38}{'median s':>10}{'samples/s':>12}{'ratio':>8}")
    for section, baseline in (("dataset", "CsvDataset"), ("wds", "get_wds_dataset")):
        arms = result[section]["arms"]
        for arm, r in arms.items():
            ratio = r["samples_per_s"] / arms[BASELINE]["samples_per_s"]
            print(f"{section:<10}{baseline if arm == BASELINE else arm:<38}{r['median_s']:>10.4f}"
                  f"{r['samples_per_s']:>12.1f}{ratio:>8.3f}")
    for arm, r in step.items():
        print(f"{'step':<10}{arm:<38}{r['median_s']:>10.4f}{r['samples_per_s']:>12.1f}")
    print(f"dataset: {dataset['unique_captions']} unique of {dataset['captions']} captions in the timed rows; "
          f"building the pre-tokenized dataset (read, validate, tokenize) took "
          f"{dataset['build_s']['pre-tokenized (now)']:.2f} s, tokenizing alone {dataset['tokenize_all_s']:.2f} s "
          f"(CsvDataset {dataset['build_s'][BASELINE]:.2f} s); first epoch including building: "
          f"{dataset['first_epoch_ratio_incl_build']:.3f}x CsvDataset")
    print(f"step: negclip / clip time {result['ratios']['step_time_negclip_over_clip']:.3f}")
    out = Path(args.out)
    write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
