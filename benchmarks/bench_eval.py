"""Evaluation at the limit: every benchmark of the suite against plainly encoding what it needs.

For each benchmark (``--benchmarks``, default all registered ones), on realistic-size data in its official format
made from ShapeCrepe scenes (``suite_fixtures``; ``--scale`` multiplies the released sets' item counts):

* **suite**: what ``python -m open_clip_align.eval --benchmark NAME`` does (``cli.evaluate`` with a fresh scorer:
  the adapter's loading, each unique image and token sequence encoded once in batches, exact fixed-point scores,
  metrics, the blind text-only baselines);
* **limit**: plain batched encoding of the unique images and captions the benchmark needs, nothing else (the same
  preprocessing, batch sizes and image loader). Images are unique files, plus one crop per distinct box where a
  benchmark crops (ARO's VG sets, CREPE); captions are unique strings, counting the per-item text variants a
  benchmark makes (ARO-Order's perturbations, zero-shot prompts = classes × templates, SugarCrepe++'s second
  positive). What was counted, and why, is in the table's last column. The sets come from a dry run of the suite
  with a recording scorer (no model, no image opened), with paths normalised (``a/b/../c`` = ``a/c``), so a
  suite that encodes one file under two spellings pays for it against the limit;
* **official**: the official scripts' per-item loop for reference (each item's images and captions encoded
  together, item by item), timed on ``--official-items`` items spread over the set and extrapolated; ``-`` where the
  official code batches (retrieval and zero-shot in CLIP_benchmark). On those items the suite's and the loop's
  score matrices are compared (max |difference|; items whose order of scores differs).

The image files are read once before timing (both arms then find them in the page cache); with ``--repeats`` the
arms alternate which goes first and each keeps its fastest round.

Every benchmark must stay within 1.1× its limit (``PASS``/``MISS``). Prints a table and writes JSON (default
benchmarks/results/bench_eval.json). Run it alone: the ratios are timings of the same machine.

    python benchmarks/bench_eval.py [--model ViT-S-32-alt] [--scale 0.1] [--benchmarks sugarcrepe retrieval ...]
        [--official-items 100] [--repeats 1] [--work DIR] [--threads N]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import open_clip  # noqa: E402

import open_clip_align  # noqa: E402,F401
from open_clip_align.eval import cli  # noqa: E402
from open_clip_align.eval.benchmarks import BENCHMARKS  # noqa: E402
from open_clip_align.eval.during_training import ProbeScorer  # noqa: E402
from open_clip_align.eval.items import ImageRef  # noqa: E402
from open_clip_align.eval.scoring import DualEncoderScorer, _RefDataset  # noqa: E402
from harness import write_json  # noqa: E402
import suite_fixtures  # noqa: E402

TARGET = 1.1
# why a benchmark encodes more than its image files and caption strings (crops and text variants are counted)
WHY = {"aro": "VG: one crop per item; Order: 4 spaCy perturbations per caption",
       "crepe": "one crop per row",
       "zeroshot": "prompts = classes x templates",
       "sugarcrepe_pp": "two positives per item",
       "synthetic": "SugarCrepe, Winoground and zero-shot parts of two splits; Winoground reuses the images"}
BATCHED_OFFICIALLY = {"retrieval": "CLIP_benchmark batches", "zeroshot": "CLIP_benchmark batches"}


def canonical(ref: ImageRef) -> ImageRef:
    """The same image under one spelling: the path made absolute and normalised, the box kept."""
    return ImageRef(os.path.normpath(os.path.abspath(ref.path)), ref.box)


class Recorder(ProbeScorer):
    """A dry run of the suite: zero scores, no model, no image opened; records every image and caption the suite
    asks features for, and the items it scores."""

    def __init__(self):
        super().__init__()
        self.images, self.texts, self.items = {}, {}, []

    def image_features(self, refs):
        self.images.update(dict.fromkeys(canonical(r) for r in refs))
        return super().image_features(refs)

    def text_features(self, texts):
        self.texts.update(dict.fromkeys(texts))
        return super().text_features(texts)

    def score_items(self, items):
        self.items.extend(items)
        return super().score_items(items)


def _options(name: str, root: Path, args) -> argparse.Namespace:
    return cli._parser().parse_args(["--model", args.model, "--benchmark", name, "--data-root", f"{name}={root}",
                                     "--batch-size", str(args.batch_size), "--quiet"])


@torch.inference_mode()
def limit(model, preprocess, tokenizer, images, texts, args) -> None:
    """Encode ``images`` (``ImageRef``s, the suite's loader) and ``texts`` in batches, nothing else."""
    loader = torch.utils.data.DataLoader(_RefDataset(list(images), preprocess), batch_size=args.batch_size)
    for pixels in loader:
        model.encode_image(pixels)
    texts = list(texts)
    for start in range(0, len(texts), args.text_batch_size):
        model.encode_text(tokenizer(texts[start:start + args.text_batch_size]))


@torch.inference_mode()
def official_scores(model, preprocess, tokenizer, items) -> list:
    """The per-item loop: each item's images and captions encoded together, cosines. → one matrix per item."""
    out = []
    for item in items:
        pixels = torch.stack([preprocess(ref.load()) for ref in item.images])
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(tokenizer(item.captions), normalize=True)
        out.append(image @ text.T)
    return out


def _order_differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two score matrices order some pair of entries differently (a tie in one only counts as a change when
    the other orders them)."""
    a, b = a.flatten().double(), b.flatten().double()
    return bool((torch.sign(a[:, None] - a[None, :]) * torch.sign(b[:, None] - b[None, :]) < 0).any())


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_one(name: str, root: Path, model, preprocess, tokenizer, args) -> dict:
    options = _options(name, root, args)
    recorder = Recorder()
    cli.evaluate(options, scorer=recorder)
    images, texts = list(recorder.images), list(recorder.texts)
    for path in {ref.path for ref in images}:  # both arms then read the image files from the page cache
        Path(path).read_bytes()
    limit_times, suite_times = [], []
    for repeat in range(args.repeats):  # alternating which arm goes first
        for arm in (("limit", "suite") if repeat % 2 == 0 else ("suite", "limit")):
            if arm == "limit":
                limit_times.append(_timed(lambda: limit(model, preprocess, tokenizer, images, texts, args))[1])
            else:
                scorer = DualEncoderScorer(model, preprocess, tokenizer, batch_size=args.batch_size, progress=False)
                records, seconds = _timed(lambda: cli.evaluate(options, scorer=scorer))
                suite_times.append(seconds)
    limit_s, suite_s = min(limit_times), min(suite_times)
    result = {"items": len(recorder.items) or None, "unique_images": len(images),
              "crops": sum(r.box is not None for r in images), "unique_texts": len(texts),
              "parts": len(records), "limit_seconds": round(limit_s, 2), "suite_seconds": round(suite_s, 2),
              "limit_times": [round(t, 2) for t in limit_times], "suite_times": [round(t, 2) for t in suite_times],
              "ratio": round(suite_s / limit_s, 3), "within_target": suite_s / limit_s <= TARGET,
              "images_encoded_by_suite": scorer.images_encoded, "why": WHY.get(name, ""),
              "official_seconds": None, "official": BATCHED_OFFICIALLY.get(name)}
    if recorder.items and name not in BATCHED_OFFICIALLY:
        step = max(1, len(recorder.items) // args.official_items)
        sample = recorder.items[::step][:args.official_items]
        theirs, official_s = _timed(lambda: official_scores(model, preprocess, tokenizer, sample))
        ours = scorer.score_items(sample)  # every feature is in memory: no encoding
        result.update(official_seconds=round(official_s * len(recorder.items) / len(sample), 1),
                      official=f"{len(sample)}-item sample, extrapolated",
                      official_over_suite=round(official_s * len(recorder.items) / len(sample) / suite_s, 2),
                      max_score_difference=max((a.double() - b.double()).abs().max().item()
                                               for a, b in zip(ours, theirs)),
                      items_ordered_differently=sum(_order_differs(a, b) for a, b in zip(ours, theirs)),
                      sampled_items=len(sample))
    return result


def _print(results: dict, args) -> None:
    print(f"\nEvaluation suite vs the limit (plain batched encoding of what each benchmark needs), model {args.model}, "
          f"scale {args.scale}, {torch.get_num_threads()} threads")
    head = (f"{'benchmark':<15}{'items':>8}{'images':>8}{'crops':>7}{'texts':>8}{'limit s':>9}{'suite s':>9}"
            f"{'ratio':>7}  {'<=1.1':<6}{'official s':>11}  why more than files and strings")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        official = f"{r['official_seconds']:>11.0f}" if r["official_seconds"] is not None else f"{'-':>11}"
        print(f"{name:<15}{r['items'] or '-':>8}{r['unique_images']:>8}{r['crops']:>7}{r['unique_texts']:>8}"
              f"{r['limit_seconds']:>9.1f}{r['suite_seconds']:>9.1f}{r['ratio']:>7.3f}  "
              f"{'PASS' if r['within_target'] else 'MISS':<6}{official}  {r['why']}")
    total_limit = sum(r["limit_seconds"] for r in results.values())
    total_suite = sum(r["suite_seconds"] for r in results.values())
    print(f"{'all':<15}{'':>8}{'':>8}{'':>7}{'':>8}{total_limit:>9.1f}{total_suite:>9.1f}"
          f"{total_suite / total_limit:>7.3f}")
    differing = {n: r["items_ordered_differently"] for n, r in results.items() if r.get("items_ordered_differently")}
    print("official loop vs suite on the sampled items: max |score difference| "
          f"{max((r.get('max_score_difference', 0.0) for r in results.values()), default=0.0):.1e}; items ordered "
          f"differently (float near-ties): {differing or 'none'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-S-32-alt", help="any open_clip or plugin model name")
    parser.add_argument("--pretrained", default=None, help="tag or checkpoint (default: seeded random weights)")
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the released sets' item counts")
    parser.add_argument("--image-size", type=int, default=256, help="side of the rendered scenes (px)")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS),
                        metavar="NAME", help=f"of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--official-items", type=int, default=100, help="items the per-item loop is timed on")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed rounds of both arms, alternating which goes first; the fastest of each is kept")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (the CLI's default)")
    parser.add_argument("--text-batch-size", type=int, default=256, help="captions per forward pass (the suite's)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the generated data here and reuse it (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_eval.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        pool = suite_fixtures.Pool.make(work / "pool", suite_fixtures.pool_images(args.scale),
                                        suite_fixtures.scaled(suite_fixtures.SIZES["synthetic"]["pairs"], args.scale),
                                        args.image_size)
        model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained)
        model.eval()
        tokenizer = open_clip.get_tokenizer(args.model)
        limit(model, preprocess, tokenizer, [ImageRef(pool.path(0))] * 8, ["warm-up"] * 8, args)
        results = {}
        for name in args.benchmarks:
            root = suite_fixtures.write(name, pool, work / name, args.scale)
            results[name] = bench_one(name, root, model, preprocess, tokenizer, args)
            print(f"{name}: limit {results[name]['limit_seconds']:.1f} s, suite {results[name]['suite_seconds']:.1f} s "
                  f"({results[name]['ratio']:.3f}x)", flush=True)
    _print(results, args)
    write_json({"model": args.model, "pretrained": args.pretrained, "scale": args.scale, "image_size": args.image_size,
                "threads": torch.get_num_threads(), "target_ratio": TARGET, "sizes": suite_fixtures.SIZES,
                "benchmarks": results}, args.out)
    print(f"wrote {args.out}")
    if not all(r["within_target"] for r in results.values()):
        raise SystemExit(f"over {TARGET}x the limit: " + ", ".join(n for n, r in results.items()
                                                                    if not r["within_target"]))


if __name__ == "__main__":
    main()
