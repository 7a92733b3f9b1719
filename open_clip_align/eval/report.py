"""Result records in CLIP_benchmark's JSON layout, Markdown tables, and side-by-side comparisons with a chart.

A record is ``{"dataset", "model", "pretrained", "task", "metrics", "protocol"}``: the first five are
CLIP_benchmark's own keys (its ``eval`` writes one such object per file, plus ``language``), ``protocol``
carries what decides the numbers (tie policy, averaging, split, precision, seed, n_items, n_ties). A file holds
one record object (what ``clip_benchmark build`` merges) or a JSON list of records.

Tables show each dataset's *headline* metrics: for SugarCrepe-layout metrics the 7 subsets, the bag-identical
slice where it exists, the category means and the micro average; for other datasets the top-level numbers and
small one-level groups (e.g. recall@k per direction), and for ``subsets``/``categories`` groups each member's
numbers. ``n_items``/``n_ties`` are always shown, and blind baselines (``metrics["blind"][name]``, same layout as
the model's metrics) get a column each.

A record may name its *headline* metrics, ``"headline": {label: flattened metric key}`` (set by each benchmark,
e.g. SugarCrepe++ ITT/TOT, WhatsUp's three means); ``headline_metrics`` reads them (records without one fall back
to their category means and micro average, or their first top-level numbers). ``summary`` is the one-page view of
several models: a Markdown table and a heatmap of every headline metric.
"""
import argparse
import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .items import EvalDataError
from .sugarcrepe import CATEGORIES, SUBSETS

RECORD_KEYS = ("dataset", "model", "pretrained", "task", "metrics")
COUNT_KEYS = ("n_items", "n_ties")
MAX_GROUP = 12  # a one-level metric group larger than this (e.g. per-relation accuracies) stays out of tables
MEMBER_GROUPS = ("subsets", "categories")  # {member: {metric: number}} groups shown member by member
FALLBACK_HEADLINES = 4  # top-level numbers a record without a headline contributes to the summary

Row = Tuple[str, str]  # (label shown in tables, flattened metric key)


def _plain(value):
    """JSON-safe copy: string keys, Python scalars (tensor/NumPy items unwrapped), NaN/inf → None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch / NumPy scalars and arrays
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def result_record(dataset: str, model: str, pretrained: Optional[str], task: str, metrics: dict, protocol: dict,
                  precision: str = "fp32", seed: Optional[int] = None,
                  headline: Optional[Dict[str, str]] = None) -> dict:
    """One CLIP_benchmark-layout record; ``protocol`` gains precision and seed (unless it has them) and
    n_items/n_ties from ``metrics``; ``headline`` ({label: flattened metric key}) is kept as ``record["headline"]``.
    Everything is made JSON-safe, so a write/read round trip is lossless."""
    full = {"precision": precision, "seed": seed, **protocol}
    full.update({k: metrics[k] for k in COUNT_KEYS if k in metrics})
    record = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
              "protocol": full}
    if headline:
        record["headline"] = dict(headline)
    return _plain(record)


def write_results(path, records: Union[dict, Sequence[dict]]) -> None:
    """Atomically write one record (as a bare object, CLIP_benchmark style) or a list of records as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _plain(records if isinstance(records, dict) else list(records))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(paths) -> List[dict]:
    """Records from one path or several; each file holds a record object or a list of them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records = []
    for path in paths:
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise EvalDataError(f"result file {path} not found") from None
        except json.JSONDecodeError as err:
            raise EvalDataError(f"result file {path}: not valid JSON ({err})") from None
        entries = [raw] if isinstance(raw, dict) else raw
        if not isinstance(entries, list) or not entries:
            raise EvalDataError(f"result file {path}: expected a result object or a non-empty list of them, got "
                                f"{json.dumps(raw)[:60]}")
        for i, rec in enumerate(entries):
            where = f"result file {path}" + (f", record {i}" if isinstance(raw, list) else "")
            if not isinstance(rec, dict):
                raise EvalDataError(f"{where}: expected an object with keys {list(RECORD_KEYS)}, got "
                                    f"{type(rec).__name__}")
            missing = [k for k in RECORD_KEYS if k not in rec]
            if missing:
                raise EvalDataError(f"{where}: lacks {missing} (CLIP_benchmark layout: {list(RECORD_KEYS)})")
            if not isinstance(rec["metrics"], dict):
                raise EvalDataError(f"{where}: 'metrics' must be an object, got {type(rec['metrics']).__name__}")
        records.extend(entries)
    return records


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def flatten_metrics(metrics: dict, prefix: str = "") -> Dict[str, float]:
    """Nested dicts → ``{"a/b/c": number}``; non-numbers (strings, lists, None, bools) are skipped."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif _is_number(value):
            flat[name] = value
    return flat


def _is_sugarcrepe_layout(metrics: dict) -> bool:
    subsets = metrics.get("subsets")
    return isinstance(subsets, dict) and "micro" in metrics and all(
        isinstance(r, dict) and "acc" in r for r in subsets.values())


def _sugarcrepe_rows(metrics: dict) -> List[Row]:
    subsets = metrics["subsets"]
    names = [s for s in SUBSETS if s in subsets] + [s for s in subsets if s not in SUBSETS]
    rows = [(s, f"subsets/{s}/acc") for s in names]
    for s in names:
        if subsets[s].get("bag_identical_share"):
            rows += [(f"{s} bag-identical share", f"subsets/{s}/bag_identical_share"),
                     (f"{s} bag-identical acc", f"subsets/{s}/bag_identical_acc")]
    rows += [(name.upper(), f"categories/{name}") for name in CATEGORIES if name in metrics.get("categories", {})]
    return rows + [("micro", "micro")]


def _is_flat_group(value) -> bool:
    return isinstance(value, dict) and 0 < len(value) <= MAX_GROUP and all(
        _is_number(v) or v is None for v in value.values())


def _generic_rows(metrics: dict) -> List[Row]:
    rows = []
    for key, value in metrics.items():
        if key in COUNT_KEYS or key == "blind":
            continue
        if _is_number(value) or value is None:  # None: not defined here (e.g. top5 with < 5 classes), shown as –
            rows.append((key, key))
        elif _is_flat_group(value):
            rows += [(f"{key}/{k}", f"{key}/{k}") for k in value]
        elif key in MEMBER_GROUPS and isinstance(value, dict) and 0 < len(value) <= MAX_GROUP:
            for member, numbers in value.items():  # e.g. a SugarCrepe++ subset: its numbers, not its sub-groups
                if isinstance(numbers, dict):
                    rows += [(f"{member} {k}", f"{key}/{member}/{k}") for k, v in numbers.items()
                             if _is_number(v) or v is None]
    return rows


def headline_rows(metrics: dict) -> List[Row]:
    """``[(label, flattened key)]`` of the metrics worth a table row, then n_items and n_ties."""
    rows = _sugarcrepe_rows(metrics) if _is_sugarcrepe_layout(metrics) else _generic_rows(metrics)
    return rows + [(k, k) for k in COUNT_KEYS]


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def model_label(rec: dict) -> str:
    """"model / pretrained" of a record (its column in comparisons and summaries)."""
    return f"{rec['model']}" + (f" / {rec['pretrained']}" if rec.get("pretrained") else "")


def markdown_table(records: Sequence[dict]) -> str:
    """One section per record: a heading (dataset, model, task), the protocol, and a metric table with a column
    for the model and one per blind baseline."""
    sections = []
    for rec in records:
        metrics = rec["metrics"]
        blind = metrics.get("blind") if isinstance(metrics.get("blind"), dict) else {}
        columns = [flatten_metrics(metrics)] + [flatten_metrics(m) for m in blind.values()]
        header = ["metric", "model"] + [f"blind {name}" for name in blind]
        rows = [[label] + [_fmt(flat.get(key)) for flat in columns] for label, key in headline_rows(metrics)]
        title = f"### {rec['dataset']} — {model_label(rec)} ({rec['task']})"
        protocol = rec.get("protocol") or {}
        shown = ", ".join(f"{k}={v}" for k, v in protocol.items() if k not in COUNT_KEYS)
        sections.append("\n".join([title, ""] + ([f"protocol: {shown}", ""] if shown else []) + [_table(header, rows)]))
    return "\n\n".join(sections) + "\n"


def _columns(paths: Sequence) -> List[Tuple[str, str, List[dict]]]:
    """``[(label, path, records)]``: one column per (file, "model / pretrained") in file order, so a file may hold
    several models; labels that several columns share get the path appended."""
    groups = []
    for path in paths:
        by_model: Dict[str, List[dict]] = {}
        for rec in read_results(path):
            by_model.setdefault(model_label(rec), []).append(rec)
        groups += [(label, str(path), recs) for label, recs in by_model.items()]
    labels = [label for label, _, _ in groups]
    return [(f"{label} ({path})" if labels.count(label) > 1 else label, path, recs) for label, path, recs in groups]


def _is_count(key: str) -> bool:
    return any(part in ("n", "ties") or part.startswith("n_") or part.endswith("_ties") for part in key.split("/"))


def compare(paths: Sequence, out_png=None, summary_png=None) -> str:
    """Side-by-side Markdown table (rows ``dataset/metric``, one column per file and model) of the table metrics,
    then the headline ``summary`` table; with ``out_png``, also a grouped bar chart of the model scores every
    column has: float values only, so counts (ints, ``n_*``, ``ties``) and bag-identical shares, which describe
    the data rather than the model, stay table-only; with ``summary_png``, the summary heatmap."""
    columns = _columns(list(paths))
    labels = [label for label, _, _ in columns]
    rows: Dict[str, str] = {}  # row label "dataset/metric" -> flattened key
    values: List[Dict[str, float]] = []
    for _, path, recs in columns:
        col, seen = {}, set()
        for rec in recs:
            if rec["dataset"] in seen:
                raise EvalDataError(f"result file {path}: two records for dataset {rec['dataset']!r} of "
                                    f"{model_label(rec)}; a compare column holds one result per dataset")
            seen.add(rec["dataset"])
            flat = flatten_metrics(rec["metrics"])
            for label, key in headline_rows(rec["metrics"]):
                row = f"{rec['dataset']}/{label}"
                rows.setdefault(row, key)
                col[row] = flat.get(key)
        values.append(col)
    table = _table(["dataset/metric"] + labels, [[row] + [_fmt(col.get(row)) for col in values] for row in rows])
    if out_png is not None:
        shared = [row for row, key in rows.items()
                  if not _is_count(key) and not key.endswith("_share")
                  and all(isinstance(col.get(row), float) for col in values)]
        _bar_chart(out_png, shared, labels, [[col[row] for row in shared] for col in values])
    summary_rows = summary(recs for _, _, recs in columns)
    if summary_png is not None:
        summary_heatmap(summary_png, labels, summary_rows)
    return table + "\n\n" + summary_table(labels, summary_rows)


# ---------------------------------------------------------------- headline summary

def _fallback_headline(metrics: dict) -> Dict[str, str]:
    """For records that name no headline: SugarCrepe-layout category means and micro average, else the first
    ``FALLBACK_HEADLINES`` top-level numbers that are not counts."""
    if _is_sugarcrepe_layout(metrics):
        return {**{name.upper(): f"categories/{name}" for name in CATEGORIES
                   if name in metrics.get("categories", {})}, "micro": "micro"}
    keys = [k for k, v in metrics.items() if _is_number(v) and not _is_count(k) and k not in COUNT_KEYS]
    return {k: k for k in keys[:FALLBACK_HEADLINES]}


def headline_metrics(record: dict) -> Dict[str, Optional[float]]:
    """``{label: value}`` of a record's headline metrics (``record["headline"]``, else ``_fallback_headline``); a
    metric the record lacks (e.g. WhatsUp's mean of A and B when only A ran) is None."""
    flat = flatten_metrics(record["metrics"])
    spec = record.get("headline")
    if not isinstance(spec, dict):
        spec = _fallback_headline(record["metrics"])
    return {str(label): flat.get(key) if isinstance(key, str) else None for label, key in spec.items()}


def summary(columns) -> List[Tuple[str, List[Optional[float]]]]:
    """``[(metric label, [value per column])]`` over every headline metric of every column's records (a column is
    one model's records), in first-seen order; a label that two datasets share is prefixed with its dataset."""
    columns = [list(c) for c in columns]
    seen: Dict[Tuple[str, str], None] = {}
    for recs in columns:
        for rec in recs:
            for label in headline_metrics(rec):
                seen.setdefault((rec["dataset"], label), None)
    datasets_of: Dict[str, set] = {}
    for dataset, label in seen:
        datasets_of.setdefault(label, set()).add(dataset)
    rows = []
    for dataset, label in seen:
        name = label if len(datasets_of[label]) == 1 else f"{dataset} {label}"
        values = []
        for recs in columns:
            rec = next((r for r in recs if r["dataset"] == dataset), None)
            values.append(headline_metrics(rec).get(label) if rec is not None else None)
        rows.append((name, values))
    return rows


def summary_table(labels: Sequence[str], rows: Sequence[Tuple[str, Sequence[Optional[float]]]]) -> str:
    """The summary as Markdown: one row per headline metric, one column per model."""
    if not rows:
        return "(no headline metrics)\n"
    return _table(["headline metric"] + list(labels), [[name] + [_fmt(v) for v in vals] for name, vals in rows]) + "\n"


def summary_heatmap(path, labels: Sequence[str], rows: Sequence[Tuple[str, Sequence[Optional[float]]]]) -> None:
    """A heatmap (rows = headline metrics, columns = models, 0-100 colour scale, values written in the cells, –
    where a model has no value), written atomically as PNG."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.array([[np.nan if v is None else float(v) for v in vals] for _, vals in rows], dtype=float)
    grid = grid.reshape(len(rows), len(labels))
    fig = Figure(figsize=(4.0 + 1.2 * max(1, len(labels)), 1.6 + 0.4 * max(1, len(rows))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid[i, j]
            ax.text(j, i, "–" if np.isnan(value) else f"{value:.1f}", ha="center", va="center", fontsize="small",
                    color="black" if np.isnan(value) or value > 60 else "white")
    ax.set_xticks(range(len(labels)), list(labels), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    if not rows:
        ax.text(0.5, 0.5, "no headline metrics", ha="center", va="center", transform=ax.transAxes)
    fig.colorbar(image, ax=ax, label="%")
    ax.set_title("headline metrics")
    fig.tight_layout()
    _save_png(fig, path)


def _bar_chart(path, rows: Sequence[str], labels: Sequence[str], series: Sequence[Sequence[float]]) -> None:
    """Horizontal grouped bars (one group per metric, one bar per column), written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 1.5 + 0.3 * max(1, len(rows)) * max(1, len(labels))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(labels))
    for j, (label, vals) in enumerate(zip(labels, series)):
        ax.barh([i + j * height for i in range(len(rows))], vals, height=height, label=label)
    ax.set_yticks([i + height * (len(labels) - 1) / 2 for i in range(len(rows))], list(rows))
    ax.invert_yaxis()
    if rows:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(3, len(labels)), fontsize="small")
    else:
        ax.text(0.5, 0.5, "no metric shared by every file", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("score")
    fig.tight_layout()
    _save_png(fig, path)


def _save_png(fig, path) -> None:
    """Write ``fig`` as PNG through a temporary file and a rename (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m open_clip_align.eval.report a.json [b.json ...] [--png chart.png]``: one file prints its
    per-record tables, several print the side-by-side comparison."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--png", default=None, help="also write a bar chart of the shared headline metrics")
    parser.add_argument("--summary-png", default=None, help="also write a heatmap of models x headline metrics")
    args = parser.parse_args(argv)
    if len(args.files) == 1 and args.png is None and args.summary_png is None:
        print(markdown_table(read_results(args.files)), end="")
    else:
        print(compare(args.files, args.png, args.summary_png), end="")


if __name__ == "__main__":
    main()
