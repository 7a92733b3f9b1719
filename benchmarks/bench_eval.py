"""Evaluation speed: the suite's scorer vs the official scripts' per-item loops, identical results required.

``--task sugarcrepe``: the official ``main_eval.py`` encodes, for every item, its image and its two captions one
item at a time, so a COCO image shared by several items (or subsets) is encoded once per item. The suite encodes
each unique image once per run and batches images and captions. Identical accuracies are required.

``--task sugarcrepe_pp``: SugarCrepe++ (``VLMs/test_Variants_CLIP.py``) encodes, per item, the image and each of
its three captions in its own forward pass and compares cosines for the image-to-text (ITT) and text-only (TOT)
tasks. The data is ShapeCrepe's five replace/swap subsets rewritten in the official SugarCrepe++ format, with a
second positive that inverts the relation in another template ("a red circle left of a blue square" → "a blue
square is to the right of a red circle"). Identical per-item decisions (ITT, TOT, both diagnostics) are required.

Both run on the same ShapeCrepe data and model; the tables report seconds and the speed-up ratio.

    python benchmarks/bench_eval.py                      # both tasks; tiny random model, ShapeCrepe default preset
    python benchmarks/bench_eval.py --task sugarcrepe_pp --items-per-subset 300
    python benchmarks/bench_eval.py --pretrained runs/quickstart/logs/finetune-negclip/checkpoints/epoch_1.pt
    python benchmarks/bench_eval.py --model ViT-S-32-alt --items-per-subset 200
"""
import json
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
from open_clip_align.data.synthetic import TEMPLATES, Caption, generate, parse_caption  # noqa: E402
from open_clip_align.eval import sugarcrepe, sugarcrepe_pp  # noqa: E402
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


INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def second_positive(caption: str) -> str:
    """The same scene said the other way round in the next template: subject and object swapped, relation
    inverted (true whenever the caption is, since ShapeCrepe relations are clear-cut)."""
    parsed = parse_caption(caption)
    names = list(TEMPLATES)
    template = names[(names.index(parsed.template) + 1) % len(names)]
    return str(Caption(parsed.obj, INVERSE[parsed.rel], parsed.subj, parsed.extras, template))


def write_sugarcrepe_pp(shapes_split: Path, out: Path) -> int:
    """ShapeCrepe's replace/swap subsets of one split as SugarCrepe++ ``data/<subset>.json`` lists (images linked
    as ``val2017/``); returns the item count."""
    (out / "data").mkdir(parents=True)
    (out / "val2017").symlink_to((shapes_split / "val2017").resolve(), target_is_directory=True)
    count = 0
    for subset in sugarcrepe_pp.SUBSETS:
        raw = json.loads((shapes_split / f"{subset}.json").read_text())
        records = [{"id": k, "filename": e["filename"], "caption": e["caption"],
                    "caption2": second_positive(e["caption"]), "negative_caption": e["negative_caption"]}
                   for k, e in enumerate(raw.values())]
        (out / "data" / f"{subset}.json").write_text(json.dumps(records))
        count += len(records)
    return count


@torch.inference_mode()
def official_scpp(model, preprocess, tokenizer, items) -> torch.Tensor:
    """test_Variants_CLIP.py's loop: per item, the image and each caption in its own forward pass, normalised,
    ``nn.CosineSimilarity(dim=1, eps=1e-6)``. → ``[n, 6]`` = cos(I,p1), cos(I,p2), cos(I,n), cos(p1,p2),
    cos(p1,n), cos(p2,n)."""
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-6)
    rows = []
    for item in items:
        image = model.encode_image(preprocess(item.images[0].load()).unsqueeze(dim=0), normalize=True)
        p1, p2, neg = (model.encode_text(tokenizer(c), normalize=True) for c in item.captions)
        rows.append(torch.cat([cos(image, p1), cos(image, p2), cos(image, neg), cos(p1, p2), cos(p1, neg),
                               cos(p2, neg)]))
    return torch.stack(rows)


def official_decisions(rows: torch.Tensor) -> dict:
    """The script's four comparisons per item, strict. ``rows [n, 6]`` from ``official_scpp``."""
    p1, p2 = rows[:, 0] > rows[:, 2], rows[:, 1] > rows[:, 2]
    return {"itt": p1 & p2, "img_p1_neg": p1, "img_p2_neg": p2,
            "tot": (rows[:, 3] > rows[:, 4]) & (rows[:, 3] > rows[:, 5])}


def bench_sugarcrepe_pp(args, model, preprocess, tokenizer, shapes_split: Path, tmp: Path) -> dict:
    """Suite (``sugarcrepe_pp.evaluate``'s path: unique images once, batched, exact scores) vs the official loop."""
    root = tmp / "sugarcrepe_pp"
    n = write_sugarcrepe_pp(shapes_split, root)
    items = sugarcrepe_pp.load(root)
    scorer = DualEncoderScorer(model, preprocess, tokenizer, batch_size=args.batch_size, progress=False)

    def suite():
        scores, text = scorer.score_items(items), scorer.score_text_pairs(items)
        return sugarcrepe_pp.metrics(items, scores, text), scores, text

    (metrics, scores, text), suite_s = _timed(suite)
    official_rows, official_s = _timed(lambda: official_scpp(model, preprocess, tokenizer, items))
    ours = sugarcrepe_pp.decisions(torch.stack([s[0] for s in scores]), torch.stack(text))
    theirs = official_decisions(official_rows)
    differing = {k: int((ours[k] != theirs[k]).sum()) for k in theirs}
    official_acc = {k: 100.0 * int(v.sum()) / n for k, v in theirs.items()}
    suite_rows = torch.stack([torch.cat([s[0], t[0, 1:], t[1, 2:]]) for s, t in zip(scores, text)])
    return {"task": "sugarcrepe_pp", "model": args.model, "pretrained": args.pretrained, "items": n,
            "unique_images": len({it.images[0] for it in items}), "threads": torch.get_num_threads(),
            "suite_seconds": round(suite_s, 3), "naive_seconds": round(official_s, 3),
            "speedup": round(official_s / suite_s, 2), "identical_decisions": not any(differing.values()),
            "differing_decisions": differing, "n_itt_ties": metrics["n_ties"], "n_tot_ties": metrics["tot_ties"],
            "max_score_difference": (suite_rows.double() - official_rows.double()).abs().max().item(),
            "accuracies": metrics["micro"], "official_accuracies": official_acc,
            "images_encoded": scorer.images_encoded}


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
    parser.add_argument("--task", default="both", choices=("sugarcrepe", "sugarcrepe_pp", "both"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_eval.json",
                        help="SugarCrepe result; the SugarCrepe++ one goes next to it as <stem>_sugarcrepe_pp.json")
    args = parser.parse_args(argv)
    if args.data is not None and args.task != "sugarcrepe":
        parser.error("--data (an existing ShapeCrepe root) is read by --task sugarcrepe only")
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
        if args.task in ("sugarcrepe_pp", "both"):
            scpp = bench_sugarcrepe_pp(args, model, preprocess, tokenizer, root, Path(tmp))
            _report_sugarcrepe_pp(scpp, args.out.with_name(f"{args.out.stem}_sugarcrepe_pp.json"))
            if args.task == "sugarcrepe_pp":
                return
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


def _report_sugarcrepe_pp(result: dict, out: Path) -> None:
    print(f"\nSugarCrepe++ evaluation (ITT + TOT), {result['items']} items ({result['unique_images']} images), model "
          f"{result['model']}, {result['threads']} threads")
    print(f"{'method':<32}{'seconds':>10}{'ratio':>10}")
    print(f"{'official per-item loop':<32}{result['naive_seconds']:>10.2f}{1.0:>10.2f}")
    print(f"{'suite (unique, batched, exact)':<32}{result['suite_seconds']:>10.2f}{result['speedup']:>10.2f}x")
    print(f"identical decisions: {result['identical_decisions']} (differing: {result['differing_decisions']}; ties: "
          f"ITT {result['n_itt_ties']}, TOT {result['n_tot_ties']}; max score difference "
          f"{result['max_score_difference']:.1e})")
    print("accuracies (suite / official): " + ", ".join(
        f"{k} {result['accuracies'][k]:.2f}/{value:.2f}" for k, value in result["official_accuracies"].items()))
    write_json(result, out)
    print(f"wrote {out}")
    if not result["identical_decisions"]:
        raise SystemExit("SugarCrepe++ decisions differ between the suite and the official per-item loop")


if __name__ == "__main__":
    main()
