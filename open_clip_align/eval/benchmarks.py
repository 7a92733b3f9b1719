"""The benchmarks the CLI runs, by name: each turns (scorer, data root, options) into result parts.

A part is one result record's content: ``dataset``, ``task``, ``metrics``, ``protocol``, for pairwise
benchmarks the ``items`` and ``metrics_fn`` that the blind text-only baselines are scored with (None where a
text-only scorer is not meaningful), and ``headline`` = ``{label: flattened metric key}``, the numbers the summary
shows for it.

Register a benchmark with ``@register(name, layout, fetch=...)`` above its runner ``run(scorer, root, options) ->
List[Part]``: that fills ``BENCHMARKS`` (runners, in registration order: ``--benchmark all`` runs them in it),
``LAYOUTS`` (what the root must hold, for error messages) and ``FETCH`` (the fetcher's name for the benchmark,
``python -m open_clip_align.eval.fetch NAME --dest DIR``, for those it can fetch). ``options`` is the CLI's
namespace; runners read their own flags with ``getattr(options, flag, default)`` so that Python callers (e.g.
validation during training) may pass only what they use.
"""
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

from . import (aro, bivlc, colorswap, crepe, eqben, mmvp, negbench, retrieval, spec, sugarcrepe, sugarcrepe_pp, valse,
               whatsup, winoground, zeroshot)
from .items import EvalDataError


class Part(NamedTuple):
    dataset: str
    task: str
    metrics: dict
    protocol: dict
    items: list = None
    metrics_fn: Callable = None
    headline: Optional[Dict[str, str]] = None


BENCHMARKS: Dict[str, Callable] = {}
LAYOUTS: Dict[str, str] = {}
FETCH: Dict[str, str] = {}


def register(name: str, layout: str, fetch: Optional[str] = None) -> Callable:
    """Decorator: register ``run(scorer, root, options) -> List[Part]`` as benchmark ``name`` with the ``layout``
    its root must hold and, if the fetcher can fetch it, the fetcher's ``fetch`` name (a later registration of the
    same name replaces the earlier one)."""
    def add(run: Callable) -> Callable:
        BENCHMARKS[name], LAYOUTS[name] = run, layout
        if fetch is not None:
            FETCH[name] = fetch
        return run
    return add


SUGARCREPE_HEADLINE = {f"SugarCrepe {name.upper()}": f"categories/{name}" for name in sugarcrepe.CATEGORIES}
WINOGROUND_HEADLINE = {f"Winoground {score}": score for score in ("text", "image", "group")}
ARO_HEADLINE = {"vg_relation": {"ARO VG-Relation": "macro"}, "vg_attribution": {"ARO VG-Attribution": "macro"},
                "coco_order": {"ARO COCO-Order": "precision_at_1"},
                "flickr30k_order": {"ARO Flickr30k-Order": "precision_at_1"}}


def _pairwise(dataset, module, scorer, items, protocol=None, headline=None) -> Part:
    return Part(dataset, "compositionality", module.metrics(items, scorer.score_items(items)),
                dict(protocol or module.PROTOCOL), items, module.metrics, headline)


def _split_protocol(module, metrics: dict) -> tuple:
    protocol = {**module.PROTOCOL, **metrics.pop("protocol", {})}
    return metrics, protocol


@register("sugarcrepe", sugarcrepe.LAYOUT)
def run_sugarcrepe(scorer, root, options) -> List[Part]:
    return [_pairwise("sugar_crepe", sugarcrepe, scorer, sugarcrepe.load(root), headline=SUGARCREPE_HEADLINE)]


@register("aro", aro.LAYOUT)
def run_aro(scorer, root, options) -> List[Part]:
    return [Part(f"aro/{name}", "compositionality", metrics, protocol, items, metrics_fn, ARO_HEADLINE[name])
            for name, items, metrics, protocol, metrics_fn in aro.run(scorer, root, datasets=options.aro_datasets,
                                                                      seed=options.seed,
                                                                      spacy_model=options.spacy_model)]


@register("valse", valse.LAYOUT)
def run_valse(scorer, root, options) -> List[Part]:
    items = valse.load(root, mturk_filter=not options.valse_unfiltered)
    return [_pairwise("valse", valse, scorer, items, valse.protocol(not options.valse_unfiltered),
                      {"VALSE avg": "avg"})]


@register("winoground", winoground.LAYOUT)
def run_winoground(scorer, root, options) -> List[Part]:
    return [_pairwise("winoground", winoground, scorer, winoground.load(root), headline=WINOGROUND_HEADLINE)]


@register("retrieval", retrieval.LAYOUT)
def run_retrieval(scorer, root, options) -> List[Part]:
    metrics = retrieval.evaluate(scorer, root, dataset=options.retrieval_dataset,
                                 max_captions=options.retrieval_max_captions,
                                 chunk_size=getattr(options, "chunk_size", retrieval.CHUNK_SIZE))
    metrics, protocol = _split_protocol(retrieval, metrics)
    name = {"coco": "mscoco_captions", "flickr": "flickr30k"}[options.retrieval_dataset]
    headline = {f"{options.retrieval_dataset} I2T R@1": "image_to_text/1",
                f"{options.retrieval_dataset} T2I R@1": "text_to_image/1"}
    return [Part(name, "zeroshot_retrieval", metrics, protocol, headline=headline)]


@register("zeroshot", zeroshot.LAYOUT)
def run_zeroshot(scorer, root, options) -> List[Part]:
    metrics = zeroshot.evaluate(scorer, root, split=options.zeroshot_split)
    metrics, protocol = _split_protocol(zeroshot, metrics)
    name = Path(root).name
    return [Part(f"zeroshot/{name}", "zeroshot_classification", metrics, protocol,
                 headline={f"zero-shot {name} top-1": "top1"})]


@register("synthetic", "<root>/sugarcrepe/<split>/ and <root>/winoground/<split>/ as written by "
                       "python -m open_clip_align.data.synthetic --out <root>")
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
                               {**sugarcrepe.PROTOCOL, "split": f"ShapeCrepe {split}"},
                               {f"ShapeCrepe {split} {name.upper()}": f"categories/{name}"
                                for name in sugarcrepe.CATEGORIES}))
        pairs = root / "winoground" / split
        if pairs.is_dir():
            parts.append(_pairwise(f"shapecrepe/{split}/winoground", winoground, scorer, winoground.load(pairs),
                                   {**winoground.PROTOCOL, "split": f"ShapeCrepe {split}"},
                                   {f"ShapeCrepe {split} pairs {score}": score
                                    for score in ("text", "image", "group")}))
        zs = root / "zeroshot" / split
        if zs.is_dir():
            metrics, protocol = _split_protocol(zeroshot, zeroshot.evaluate(scorer, zs, split="test"))
            parts.append(Part(f"shapecrepe/{split}/zeroshot", "zeroshot_classification", metrics, protocol,
                              headline={f"ShapeCrepe {split} zero-shot top-1": "top1"}))
    return parts


@register("sugarcrepe_pp", sugarcrepe_pp.LAYOUT, fetch=sugarcrepe_pp.NAME)
def run_sugarcrepe_pp(scorer, root, options) -> List[Part]:
    """ITT and TOT (text-text cosines when the scorer has them); blind baselines on ITT only."""
    items = sugarcrepe_pp.load(root)
    metrics = sugarcrepe_pp.metrics(items, scorer.score_items(items), sugarcrepe_pp.text_pair_scores(scorer, items))
    return [Part("sugarcrepe_pp", "compositionality", metrics, dict(sugarcrepe_pp.PROTOCOL), items,
                 sugarcrepe_pp.metrics, sugarcrepe_pp.HEADLINE)]


@register("whatsup", whatsup.LAYOUT, fetch=whatsup.NAME)
def run_whatsup(scorer, root, options) -> List[Part]:
    return [_pairwise("whatsup", whatsup, scorer, whatsup.load(root), headline=whatsup.HEADLINE)]


@register("mmvp_vlm", mmvp.LAYOUT, fetch=mmvp.NAME)
def run_mmvp(scorer, root, options) -> List[Part]:
    """No blind baselines: a statement chooses between images (see ``mmvp.PROTOCOL``)."""
    items = mmvp.load(root)
    return [Part("mmvp_vlm", "compositionality", mmvp.metrics(items, scorer.score_items(items)),
                 dict(mmvp.PROTOCOL), headline=mmvp.HEADLINE)]


@register("eqben", eqben.LAYOUT, fetch=eqben.NAME)
def run_eqben(scorer, root, options) -> List[Part]:
    """No blind baselines (see ``eqben.PROTOCOL``); the layout read is named in the protocol's split."""
    items, layout = eqben.load(root, getattr(options, "eqben_annotation", None))
    protocol = {**eqben.PROTOCOL, "split": eqben.SPLITS[layout], "layout": layout}
    return [Part("eqben", "compositionality", eqben.metrics(items, scorer.score_items(items)), protocol,
                 headline=eqben.headline(layout))]


@register("spec", spec.LAYOUT, fetch=spec.NAME)
def run_spec(scorer, root, options) -> List[Part]:
    """Both directions; blind baselines on the I2T items only (see ``spec.PROTOCOL``)."""
    items = spec.load(root)
    image_to_text = [it for it in items if it.meta["direction"] == "i2t"]
    return [Part("spec", "compositionality", spec.metrics(items, scorer.score_items(items)), dict(spec.PROTOCOL),
                 image_to_text, spec.metrics, spec.HEADLINE)]


def module_parts(module, flags=()) -> Callable:
    """A runner for a module whose ``parts(scorer, root, **flags)`` yields ``(dataset, task, metrics, protocol, items,
    metrics_fn)`` tuples and whose ``HEADLINE`` maps labels to ``"<dataset>/<metric key>"``: each part gets the
    headline entries of its own dataset. ``flags``: the options passed on as keywords, where given."""
    def run(scorer, root, options) -> List[Part]:
        out = []
        given = {flag: getattr(options, flag) for flag in flags if hasattr(options, flag)}
        for dataset, task, metrics, protocol, items, metrics_fn in module.parts(scorer, root, **given):
            prefix = f"{dataset}/"
            headline = {label: key[len(prefix):] for label, key in getattr(module, "HEADLINE", {}).items()
                        if key.startswith(prefix)}
            out.append(Part(dataset, task, metrics, protocol, items, metrics_fn, headline or None))
        return out
    return run


for _module, _flags in ((negbench, ("chunk_size",)), (bivlc, ()), (colorswap, ()), (crepe, ())):
    register(_module.NAME, _module.LAYOUT, fetch=_module.NAME)(module_parts(_module, _flags))
