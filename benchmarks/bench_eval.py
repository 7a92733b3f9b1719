"""SugarCrepe-format evaluation speed: the suite's scorer vs the official scripts' per-item loop.

The official ``main_eval.py`` encodes, for every item, its image and its two captions one item at a time, so a
COCO image shared by several items (or subsets) is encoded once per item. The suite encodes each unique image
once per run and batches images and captions. Both run on the same ShapeCrepe data and model here, and must
give identical accuracies; the table reports seconds and the speed-up ratio.

    python benchmarks/bench_eval.py                      # tiny random model, ShapeCrepe default preset
    python benchmarks/bench_eval.py --pretrained runs/quickstart/logs/finetune-negclip/checkpoints/epoch_1.pt
    python benchmarks/bench_eval.py --model ViT-S-32-alt --items-per-subset 200
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import open_clip  # noqa: E402

import open_clip_align  # noqa: E402,F401
from open_clip_align.data.synthetic import generate  # noqa: E402
from open_clip_align.eval import sugarcrepe  # noqa: E402
from open_clip_align.eval.scoring import DualEncoderScorer  # noqa: E402
from harness import write_json  # noqa: E402


@torch.inference_mode()
def naive_scores(model, preprocess, tokenizer, items) -> torch.Tensor:
    """The official per-item loop: encode the item's image and both captions, score, next item. → [n, 2]"""
    scores = []
    for item in items:
        pixels = preprocess(item.images[0].load()).unsqueeze(0)
        image = model.encode_image(pixels, normalize=True)
        texts = model.encode_text(tokenizer(item.captions), normalize=True)
        scores.append((image @ texts.T)[0])
    return torch.stack(scores)


def _suite(scorer, items):
    scores = scorer.score_items(items)
    return sugarcrepe.metrics(items, scores), scores


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-tiny-ViT", help="any open_clip or plugin model name")
    parser.add_argument("--pretrained", default=None,
                        help="tag or checkpoint (e.g. the quickstart's); a random model has many near-ties")
    parser.add_argument("--items-per-subset", type=int, default=500,
                        help="ShapeCrepe test pairs per subset x 2 (counterbalanced items)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=None, help="existing ShapeCrepe root (default: generate one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_eval.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "shapes"
            generate(data, preset="default", seed=0, train_size=64, pretrain_size=0,
                     test_pairs=args.items_per_subset // 2, progress=False)
        root = data / "sugarcrepe" / "iid"
        model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained)
        model.eval()
        tokenizer = open_clip.get_tokenizer(args.model)
        items = sugarcrepe.load(root)

        scorer = DualEncoderScorer(model, preprocess, tokenizer, batch_size=args.batch_size, progress=False)
        (suite, suite_scores), suite_s = _timed(lambda: _suite(scorer, items))
        naive_raw, naive_s = _timed(lambda: naive_scores(model, preprocess, tokenizer, items))

    naive = sugarcrepe.metrics(items, [row.view(1, 2) for row in naive_raw])
    suite_acc = {s: r["acc"] for s, r in suite["subsets"].items()}
    naive_acc = {s: r["acc"] for s, r in naive["subsets"].items()}
    identical = suite_acc == naive_acc
    # batched and one-at-a-time matmuls differ in the last float bits: only exact near-ties can flip
    suite_margin = torch.stack([m[0, 0] - m[0, 1] for m in suite_scores])
    naive_margin = naive_raw[:, 0] - naive_raw[:, 1]
    flipped = int(((suite_margin > 0) != (naive_margin > 0)).sum())
    result = {"model": args.model, "pretrained": args.pretrained, "items": len(items),
              "threads": torch.get_num_threads(), "suite_seconds": round(suite_s, 3),
              "naive_seconds": round(naive_s, 3), "speedup": round(naive_s / suite_s, 2), "target_speedup": 3.0,
              "identical_accuracies": identical, "flipped_decisions": flipped,
              "max_score_difference": (torch.stack([m[0] for m in suite_scores]) - naive_raw).abs().max().item(),
              "images_encoded": scorer.images_encoded, "accuracies": suite_acc, "naive_accuracies": naive_acc}
    print(f"\nSugarCrepe-format evaluation, {len(items)} items, model {args.model}, {result['threads']} threads")
    print(f"{'method':<28}{'seconds':>10}{'ratio':>10}")
    print(f"{'naive per-item loop':<28}{naive_s:>10.2f}{1.0:>10.2f}")
    print(f"{'suite (unique, batched)':<28}{suite_s:>10.2f}{naive_s / suite_s:>10.2f}x  (target >= 3x: "
          f"{'PASS' if naive_s / suite_s >= 3 else 'MISS'})")
    print(f"identical accuracies: {identical} (decisions flipped by float rounding: {flipped}, max score "
          f"difference {result['max_score_difference']:.1e})")
    write_json(result, args.out)
    print(f"wrote {args.out}")
    if not identical:
        raise SystemExit("accuracies differ between the suite and the per-item loop")


if __name__ == "__main__":
    main()
