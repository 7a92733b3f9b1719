"""The benchmarks the CLI runs, by name: each turns (scorer, data root, options) into result parts.

A part is one result record's content: ``dataset``, ``task``, ``metrics``, ``protocol``, and for pairwise
benchmarks the ``items`` and ``metrics_fn`` that the blind text-only baselines are scored with.
"""
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

from . import aro, retrieval, sugarcrepe, valse, winoground, zeroshot
from .items import EvalDataError


class Part(NamedTuple):
    dataset: str
    task: str
    metrics: dict
    protocol: dict
    items: list = None
    metrics_fn: Callable = None


def _pairwise(dataset, module, scorer, items, protocol=None) -> Part:
    return Part(dataset, "compositionality", module.metrics(items, scorer.score_items(items)),
                dict(protocol or module.PROTOCOL), items, module.metrics)


def _split_protocol(module, metrics: dict) -> tuple:
    protocol = {**module.PROTOCOL, **metrics.pop("protocol", {})}
    return metrics, protocol


def run_sugarcrepe(scorer, root, options) -> List[Part]:
    return [_pairwise("sugar_crepe", sugarcrepe, scorer, sugarcrepe.load(root))]


def run_aro(scorer, root, options) -> List[Part]:
    return [Part(f"aro/{name}", "compositionality", metrics, protocol, items, metrics_fn)
            for name, items, metrics, protocol, metrics_fn in aro.run(scorer, root, datasets=options.aro_datasets,
                                                                      seed=options.seed,
                                                                      spacy_model=options.spacy_model)]


def run_valse(scorer, root, options) -> List[Part]:
    items = valse.load(root, mturk_filter=not options.valse_unfiltered)
    return [_pairwise("valse", valse, scorer, items, valse.protocol(not options.valse_unfiltered))]


def run_winoground(scorer, root, options) -> List[Part]:
    return [_pairwise("winoground", winoground, scorer, winoground.load(root))]


def run_retrieval(scorer, root, options) -> List[Part]:
    metrics = retrieval.evaluate(scorer, root, dataset=options.retrieval_dataset,
                                 max_captions=options.retrieval_max_captions)
    metrics, protocol = _split_protocol(retrieval, metrics)
    name = {"coco": "mscoco_captions", "flickr": "flickr30k"}[options.retrieval_dataset]
    return [Part(name, "zeroshot_retrieval", metrics, protocol)]


def run_zeroshot(scorer, root, options) -> List[Part]:
    metrics = zeroshot.evaluate(scorer, root, split=options.zeroshot_split)
    metrics, protocol = _split_protocol(zeroshot, metrics)
    return [Part(f"zeroshot/{Path(root).name}", "zeroshot_classification", metrics, protocol)]


def run_synthetic(scorer, root, options) -> List[Part]:
    """ShapeCrepe (``python -m open_clip_align.data.synthetic``) through the SugarCrepe and Winoground paths."""
    root = Path(root)
    splits = sorted(p.name for p in (root / "sugarcrepe").glob("*") if p.is_dir())
    if not splits:
        raise EvalDataError(f"synthetic: no split folders under {root / 'sugarcrepe'}; expected the output of "
                            f"`python -m open_clip_align.data.synthetic --out {root}`")
    parts = []
    for split in splits:
        items = sugarcrepe.load(root / "sugarcrepe" / split)
        parts.append(_pairwise(f"shapecrepe/{split}/sugar_crepe", sugarcrepe, scorer, items,
                               {**sugarcrepe.PROTOCOL, "split": f"ShapeCrepe {split}"}))
        pairs = root / "winoground" / split
        if pairs.is_dir():
            parts.append(_pairwise(f"shapecrepe/{split}/winoground", winoground, scorer, winoground.load(pairs),
                                   {**winoground.PROTOCOL, "split": f"ShapeCrepe {split}"}))
        zs = root / "zeroshot" / split
        if zs.is_dir():
            metrics, protocol = _split_protocol(zeroshot, zeroshot.evaluate(scorer, zs, split="test"))
            parts.append(Part(f"shapecrepe/{split}/zeroshot", "zeroshot_classification", metrics, protocol))
    return parts


BENCHMARKS: Dict[str, Callable] = {
    "sugarcrepe": run_sugarcrepe, "aro": run_aro, "valse": run_valse, "winoground": run_winoground,
    "retrieval": run_retrieval, "zeroshot": run_zeroshot, "synthetic": run_synthetic,
}
LAYOUTS = {
    "sugarcrepe": sugarcrepe.LAYOUT, "aro": aro.LAYOUT, "valse": valse.LAYOUT, "winoground": winoground.LAYOUT,
    "retrieval": retrieval.LAYOUT, "zeroshot": zeroshot.LAYOUT,
    "synthetic": "<root>/sugarcrepe/<split>/ and <root>/winoground/<split>/ as written by "
                 "python -m open_clip_align.data.synthetic --out <root>",
}
