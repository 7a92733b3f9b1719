"""ComAlign precompute throughput: component extraction vs plain CLIP encoding, on the same data and model.

The baseline arms are what zero-shot CLIP costs (each image encoded once, whole; each caption once). The
ComAlign arms add the box provider, the view rendering and up to n_entity + n_relation extra encodes per image
(pads skipped), and on the text side spaCy parsing and one encode per component phrase. Ratios are seconds
relative to the baseline of the same side. A last run writes a full store (``embed_to_store``) for the
end-to-end images/s and captions/s, HDF5 writing included.

    python benchmarks/bench_comalign_embed.py                          # tiny random model, ShapeCrepe ci, 1 thread
    python benchmarks/bench_comalign_embed.py --model ViT-B-32-quickgelu --pretrained openai --threads 2
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import open_clip  # noqa: E402

import open_clip_align  # noqa: E402,F401
from open_clip_align.comalign.annotations import load_annotations  # noqa: E402
from open_clip_align.comalign.boxes import make_box_provider  # noqa: E402
from open_clip_align.comalign.embed import embed_captions, embed_images, embed_to_store, encode_strings  # noqa: E402
from open_clip_align.comalign.embed import store_attrs  # noqa: E402
from open_clip_align.comalign.text import ComponentParser  # noqa: E402
from open_clip_align.data.synthetic import generate  # noqa: E402
from harness import time_arms, write_json  # noqa: E402


def _global_only(model, preprocess, items, batch_size: int):
    """Baseline: every image loaded, preprocessed and encoded once, whole (what zero-shot CLIP costs)."""
    from PIL import Image
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            pixels = torch.stack([preprocess(Image.open(item.path).convert("RGB"))
                                  for item in items[start:start + batch_size]])
            model.encode_image(pixels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hardneg-tiny-ViT", help="any open_clip or plugin model name")
    parser.add_argument("--pretrained", default=None, help="tag or checkpoint (default: random weights, seed 0)")
    parser.add_argument("--data", type=Path, default=None, help="existing ShapeCrepe root (default: generate ci)")
    parser.add_argument("--images", type=int, default=300, help="training images used (ci has 300)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_comalign_embed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "shapes"
            generate(data, preset="ci", progress=False)
        items = load_annotations(data / "train.csv")[:args.images]
        captions = [c for item in items for c in item.captions]
        model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained)
        model.eval()
        tokenizer = open_clip.get_tokenizer(args.model)
        components = ComponentParser()
        providers = {"gt": make_box_provider("gt", scenes=str(data / "scenes.jsonl")),
                     "segment": make_box_provider("segment"), "grid": make_box_provider("grid")}

        def views(name):
            return lambda: sum(1 for _ in embed_images(model, preprocess, items, providers[name],
                                                       batch_size=args.batch_size))

        image_arms = {"clip global only": lambda: _global_only(model, preprocess, items, args.batch_size),
                      **{f"views, {name} boxes": views(name) for name in providers}}
        text_arms = {"clip caption only": lambda: encode_strings(model, tokenizer, captions),
                     "parse + components": lambda: embed_captions(model, tokenizer, components, captions)}
        times = time_arms({**image_arms, **text_arms}, repeats=args.repeats, warmup=1)
        real_views = {name: 0 for name in providers}
        for name in providers:
            for image in embed_images(model, preprocess, items, providers[name], batch_size=args.batch_size):
                real_views[name] += int(image["entity_mask"].sum() + image["relation_mask"].sum()) + 1

        attrs = store_attrs(model, args.model, str(args.pretrained), "fp32", providers["gt"], components, "grey",
                            False, 5, str(data / "train.csv"), "csv")
        stats = embed_to_store(model, preprocess, tokenizer, items, providers["gt"], components,
                               Path(tmp) / "store.h5", attrs, batch_size=args.batch_size, resume=False,
                               progress=False)

    best = {name: min(samples) for name, samples in times.items()}
    rows = []
    for side, arms, count, unit in (("image", image_arms, len(items), "images"),
                                    ("text", text_arms, len(captions), "captions")):
        base = best[next(iter(arms))]
        for name in arms:
            rows.append({"side": side, "arm": name, "seconds": round(best[name], 3),
                         "per_second": round(count / best[name], 1), "unit": unit,
                         "ratio_to_baseline": round(best[name] / base, 2),
                         "encoded_views": real_views.get(name.split(", ")[-1].split(" ")[0])
                         if name.startswith("views") else None})
    result = {"model": args.model, "pretrained": args.pretrained, "threads": torch.get_num_threads(),
              "images": len(items), "captions": len(captions), "batch_size": args.batch_size,
              "repeats": args.repeats, "arms": rows,
              "end_to_end": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()
                             if k != "path"}}
    print(f"\nComAlign precompute on ShapeCrepe ({len(items)} images, {len(captions)} captions), model "
          f"{args.model}, {result['threads']} thread(s), best of {args.repeats}")
    print(f"{'arm':<24}{'seconds':>9}{'items/s':>10}{'x baseline':>12}{'views encoded':>15}")
    for row in rows:
        views_text = "" if row["encoded_views"] is None else str(row["encoded_views"])
        print(f"{row['arm']:<24}{row['seconds']:>9.2f}{row['per_second']:>10.1f}{row['ratio_to_baseline']:>12.2f}"
              f"{views_text:>15}")
    e2e = result["end_to_end"]
    print(f"end to end (gt boxes, store written): {e2e['images_per_s']:.1f} images/s (image side), "
          f"{e2e['captions_per_s']:.1f} captions/s (text side), {e2e['write_seconds']:.2f} s writing")
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
