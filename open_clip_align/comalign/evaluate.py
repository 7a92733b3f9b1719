"""ComAlign image-text retrieval from a component store: CLIP alone, the paper's mean and the reference weights.

    python -m open_clip_align.comalign.evaluate --model comalign-ViT-B-32 --pretrained openai \\
        --head-checkpoint ComAlign-CLIP-VIT-B32.pt --padding reference --store val2017_components.h5 --out val2017.json
    python -m open_clip_align.comalign.evaluate --model comalign-ViT-B-32 --pretrained openai \\
        --head-checkpoint ComAlign-CLIP-VIT-B32.pt --padding reference --store val2017_components.h5 \\
        --reference-dir embeddings/ --out val2017_reference_components.json

The store (``python -m open_clip_align.comalign.embed``) fixes the protocol: embedded from COCO's
``captions_val2017.json`` with ``--max-captions 5`` it is the reference's val2017 protocol (5,000 images in
order of first appearance, first 5 captions each, 25,000 queries); embedded from ``coco_karpathy_test.json`` it
is the Karpathy 5k test split of the literature. ``--reference-dir`` swaps in the released component embeddings
(the 4-file layout) and keeps only the store's CLIP globals and caption embeddings, for parity with the
reference numbers.

Every run reports three scorings, each Recall@{1,5,10,50} (%) in both directions (image→text: a hit if any of
the image's captions is in the top k; text→image: a hit if the caption's image is; a tie with a wrong candidate
counts as a miss): ``clip`` = C only (zero-shot CLIP, the same-protocol baseline), ``paper`` = the equal mean of
the refined global and the two role scores, ``reference`` = the released hand-set weights with transductive
(test-set) normalisation. Results: JSON (``--out``, checked for writability first; with the protocol, the
activation the store's vectors were embedded with and the normalisation constants) and a Markdown table on stdout.
Scores are exact (fixed point in float64, as in the evaluation suite: equal captions tie exactly) and computed in
tiles of ``--chunk-size`` images × captions, so memory does not grow with the gallery (the dense matrices of all
scorings took ~6 GB at 5k × 25k); the reference scoring's test-set normalisation reads the tiles twice.

An unfinished store (a ``.partial`` file whose embedding run stopped or still runs) is refused with the number
of images it holds, unless ``--allow-partial`` asks to score those images (recorded in the protocol); a store
without any complete image is always refused.
"""
import argparse
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from ..cli_checks import console_logging, device_problem, non_finite_flags, output_problem, range_problem
from ..errors import run_cli
from ..eval.report import write_results
from ..eval.retrieval import CHUNK_SIZE, ranks_metrics, scoring_ranks
from ..models.activation import activation_name, force_quickgelu_kwargs, needs_quickgelu
from .annotations import ComAlignDataError
from .scoring import PADDINGS, REFERENCE_WEIGHTS, combine, compute_scores, tiled_normalisation_constants
from .slots import store_image_slots

KS = (1, 5, 10, 50)
SCORINGS = ("clip", "paper", "reference")


@torch.inference_mode()
def encode_store_images(model, arrays: dict, batch_size: int = 256, device="cpu") -> Dict[str, torch.Tensor]:
    """Run the head over every stored image: ``image_features`` (ĝ), ``refined_global``, ``image_entity``,
    ``image_relation`` and their masks, concatenated on CPU (fp32)."""
    n = len(arrays["image_ids"])
    parts = []
    for start in range(0, n, batch_size):
        slots = store_image_slots(arrays, slice(start, start + batch_size)).to(device)
        out = model(image=slots)
        parts.append({k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()
                      if k.startswith("image_") or k == "refined_global"})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def store_text(arrays: dict) -> Dict[str, torch.Tensor]:
    """The text side as ``compute_scores`` takes it: frozen CLIP caption and phrase embeddings from the store."""
    return {"text_features": arrays["text"], "text_entity": arrays["text_entity"],
            "text_entity_mask": arrays["text_entity_mask"], "text_relation": arrays["text_relation"],
            "text_relation_mask": arrays["text_relation_mask"]}


def _take(outputs: Dict[str, torch.Tensor], index: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {k: v[index] for k, v in outputs.items()}


def score_arrays(image: Dict[str, torch.Tensor], text: Dict[str, torch.Tensor], caption_image: torch.Tensor,
                 padding: str = "masked", ks: Sequence[int] = KS, chunk_size: int = CHUNK_SIZE) -> Dict[str, dict]:
    """``{scoring: eval.retrieval.ranks_metrics(...)}`` for ``SCORINGS`` from the head's image outputs
    (``encode_store_images``) and the store's text side (``store_text``): image→text ranks from I2T, text→image
    ranks from T2I, plus each scoring's normalisation constants.

    Scored in tiles of ``chunk_size`` images × captions (``eval.retrieval.scoring_ranks``) with exact scores
    (``compute_scores(exact=True)``: a pair's scores depend on that pair alone, and equal captions tie exactly), so
    the ranks are those of the full [n_images, n_captions] matrices, which are never built. The reference
    scoring's test-set constants take one more pass over the tiles first (``tiled_normalisation_constants``).
    """
    n_images = len(image["image_features"])

    def terms(rows: torch.Tensor, cols: torch.Tensor):
        return compute_scores(_take(image, rows), _take(text, cols), padding=padding, exact=True)

    used = sorted({*REFERENCE_WEIGHTS["i2t"], *REFERENCE_WEIGHTS["t2i"]})
    constants = tiled_normalisation_constants(terms, n_images, len(caption_image), used, REFERENCE_WEIGHTS,
                                              chunk_size)

    def tiles(rows: torch.Tensor, cols: torch.Tensor):
        scores = terms(rows, cols)
        paper = combine(scores, mode="paper")
        reference = combine(scores, mode="reference", normalise="fixed", constants=constants)
        return {"clip": (scores.clip, None), "paper": (paper.i2t, paper.t2i),
                "reference": (reference.i2t, reference.t2i)}

    ranks = scoring_ranks(tiles, caption_image, n_images, chunk_size)
    results = {name: ranks_metrics(ranks[name], ks) for name in SCORINGS}
    results["paper"]["normalisation_constants"] = {}
    results["reference"]["normalisation_constants"] = constants
    return results


def evaluate_arrays(model, arrays: dict, padding: str = "masked", ks: Sequence[int] = KS,
                    batch_size: int = 256, device="cpu", chunk_size: int = CHUNK_SIZE) -> Dict[str, dict]:
    """``score_arrays`` of the store's ``arrays`` with ``model``'s head run over every stored image."""
    if arrays.get("global") is None or arrays.get("text") is None:
        raise ComAlignDataError("the CLIP global image and caption embeddings are missing (reference files alone do "
                                "not hold them): pass --store with the same images")
    image = encode_store_images(model, arrays, batch_size=batch_size, device=device)
    return score_arrays(image, store_text(arrays), arrays["caption_image"], padding, ks, chunk_size)


def store_activation(attrs: dict) -> str:
    """The activation of the tower that embedded a store (its ``quick_gelu`` root attribute)."""
    return "quick_gelu" if attrs.get("quick_gelu") else "gelu"


def check_store(store, allow_partial: bool = False) -> dict:
    """Refuse a store that holds no complete image, and an unfinished one unless ``allow_partial``; returns
    the protocol's ``store_status`` (``finished``, ``images``, ``images_planned``)."""
    status = {"finished": store.finished, "images": len(store), "images_planned": store.images_planned}
    if not len(store):
        raise ComAlignDataError(f"{store.path}: holds no complete image ({store.progress()}); rerun python -m "
                                "open_clip_align.comalign.embed with the same flags to fill it")
    if not store.finished and not allow_partial:
        raise ComAlignDataError(f"{store.path}: an unfinished store ({store.progress()}); rerun python -m "
                                "open_clip_align.comalign.embed with the same flags to complete it, or pass "
                                "--allow-partial to score these images only")
    return status


def _protocol(attrs: dict, arrays: dict, args, status: dict, model_activation: str) -> dict:
    fmt = attrs.get("annotation_format")
    split = {"coco": "COCO captions file (the reference's val2017 protocol when it is captions_val2017.json)",
             "karpathy": "Karpathy test JSON (the literature's 5k/1k test split)"}.get(fmt, f"{fmt} annotations")
    return {"split": split, "annotations": attrs.get("annotations"), "n_images": len(arrays["image_ids"]),
            "n_captions": int(arrays["caption_image"].numel()), "max_captions": attrs.get("max_captions"),
            "padding": args.padding, "components": "reference files" if args.reference_dir else "store",
            "boxes": attrs.get("box_provider"), "render_mode": attrs.get("render_mode"),
            "store_model": attrs.get("model"), "store_pretrained": attrs.get("pretrained"),
            "activation": store_activation(attrs), "model_activation": model_activation,
            "store_status": status, "partial": not status["finished"],
            "tie_policy": "a wrong candidate scoring equal to the right one ranks ahead of it",
            "scorings": {"clip": "C only (zero-shot CLIP)", "paper": "equal mean of refined global, entity and "
                         "relation scores, no normalisation", "reference": "hand-set direction-specific weights, "
                         "test-set normalisation (transductive)"}}


def markdown(results: Dict[str, dict], ks: Sequence[int] = KS) -> str:
    head = [f"I→T R@{k}" for k in ks] + [f"T→I R@{k}" for k in ks]
    lines = ["| scoring | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name in SCORINGS:
        r = results[name]
        cells = [f"{r['image_to_text'][k]:.2f}" for k in ks] + [f"{r['text_to_image'][k]:.2f}" for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_clip_align.comalign.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a comalign-* model name (e.g. comalign-ViT-B-32)")
    p.add_argument("--pretrained", default=None,
                   help="base tag (e.g. openai, already cached) or a checkpoint file (a combined base + head "
                        "checkpoint, e.g. from training.main, restores the head too)")
    p.add_argument("--head-checkpoint", default=None, help="head weights (the released file or ours)")
    p.add_argument("--store", required=True, type=Path, help="component store from open_clip_align.comalign.embed")
    p.add_argument("--reference-dir", type=Path, default=None,
                   help="folder of the reference's 4 released .h5 files: use their components instead of the store's")
    p.add_argument("--reference-split", default="val2017")
    p.add_argument("--reference-tag", default="ViT-B-32_openai")
    p.add_argument("--max-captions", type=int, default=5, help="captions kept per image (the reference: 5)")
    p.add_argument("--padding", default="masked", choices=PADDINGS,
                   help="'reference': zero text pads stay in the means, image slots always count (the released "
                        "scorer); 'masked': real components only (for heads trained with masking)")
    p.add_argument("--ks", type=int, nargs="+", default=list(KS), help="recall cut-offs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=CHUNK_SIZE,
                   help="images and captions per tile of the retrieval scoring: memory grows with its square, "
                        "never with the gallery (results do not depend on it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-partial", action="store_true",
                   help="score the complete images of an unfinished store (.partial) instead of refusing it; "
                        "recorded in the results")
    p.add_argument("--out", type=Path, default=None,
                   help="write the results here (JSON; checked for writability before the evaluation)")
    return p


def _check_args(args) -> None:
    problem = (non_finite_flags(args) or range_problem("--ks", args.ks, minimum=1)
               or range_problem("--batch-size", args.batch_size, minimum=1)
               or range_problem("--chunk-size", args.chunk_size, minimum=1)
               or range_problem("--max-captions", args.max_captions, minimum=1)
               or device_problem("--device", args.device)
               or (output_problem(args.out, "--out") if args.out is not None else None))
    if problem:
        raise ComAlignDataError(problem)


def _build_model(args, attrs: dict):
    """The ComAlign model, its tower built with the activation the store was embedded with (QuickGELU when the
    store records it, else QuickGELU when the tag needs it: one log line)."""
    import open_clip

    from ..models.factory import pretrained_problem, unreadable_checkpoint

    problem = pretrained_problem(args.model, args.pretrained) if args.pretrained else None
    if problem is None and args.pretrained and os.path.isfile(args.pretrained):
        problem = unreadable_checkpoint(args.pretrained)
    if problem:
        raise ComAlignDataError(f"--pretrained {args.pretrained}: {problem}")
    if not attrs.get("quick_gelu") and needs_quickgelu(attrs.get("model"), attrs.get("pretrained")):
        logging.warning(f"{args.store} was embedded by {attrs.get('model')} with GELU although its --pretrained "
                        f"{attrs.get('pretrained')} weights need QuickGELU (--keep-gelu, or an older embed); the "
                        f"results record activation gelu")
    quick = ({"force_quick_gelu": True} if attrs.get("quick_gelu")
             else force_quickgelu_kwargs(args.model, args.pretrained, where="comalign.evaluate"))
    return open_clip.create_model(args.model, pretrained=args.pretrained, device=args.device, **quick)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console_logging()
    run_cli(lambda: _evaluate(args), "python -m open_clip_align.comalign.evaluate",
            interrupted="nothing was written")


def _evaluate(args) -> None:
    import open_clip_align  # noqa: F401  (comalign-* model names)
    from ..models import plugin_block
    from .model import load_comalign_head
    from .store import ComponentStore, read_reference_layout

    _check_args(args)
    if (plugin_block(args.model) or {}).get("arch") != "comalign":
        raise ComAlignDataError(f"--model {args.model} is not a ComAlign model (comalign-*)")
    with ComponentStore(args.store) as store:
        status = check_store(store, args.allow_partial)
        attrs = store.attrs
        model = _build_model(args, attrs)
        if args.head_checkpoint:  # after --pretrained, so it wins over the head of a combined checkpoint
            load_comalign_head(model.comalign_head, args.head_checkpoint)
        model.eval()
        if args.reference_dir is not None:
            arrays = read_reference_layout(args.reference_dir, args.reference_split, args.reference_tag,
                                           max_captions=args.max_captions, image_ids=store.ids(), source=store)
        else:
            arrays = store.load_arrays(max_captions=args.max_captions)
    stored = (arrays["entity"].shape[1], arrays["relation"].shape[1])
    if stored != (model.n_entity, model.n_relation):
        raise ComAlignDataError(f"{args.reference_dir or args.store}: {stored[0]} entity / {stored[1]} relation "
                                f"slots per image, but --model {args.model} has {model.n_entity} / "
                                f"{model.n_relation}")
    results = evaluate_arrays(model, arrays, padding=args.padding, ks=args.ks, batch_size=args.batch_size,
                              device=args.device, chunk_size=args.chunk_size)
    record = {"model": args.model, "pretrained": args.pretrained, "head_checkpoint": args.head_checkpoint,
              "task": "comalign_retrieval", "metrics": results,
              "protocol": _protocol(attrs, arrays, args, status, activation_name(model))}
    print(markdown(results, args.ks))
    if args.out is not None:
        write_results(args.out, record)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
