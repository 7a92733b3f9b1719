"""Prompts for the LLM backends, after DeGLA's scheme: a rewrite rule per type plus in-context examples.

The rule texts (``prompts/<type>.txt``) and the example pool (``prompts/examples.jsonl``, hand-written, the
stand-in for the paper's curated Stage-1 examples) are data files so that users can edit them; ``--examples
FILE`` replaces the pool. Every rule asks for a *meaning change* (a contrasting word, not a synonym; who does
what to whom changes), because a meaning-preserving rewrite is a false negative.

One chat message per request: "Please rewrite the input text following the rules and examples below", the
rule, ``n_examples`` examples sampled with the caller's rng, then the input caption, asking for ``n``
alternatives one per line. ``parse_completion`` turns the reply back into a list of candidates.
"""
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .base import NEG_TYPES, Request

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_EXAMPLES = PROMPTS_DIR / "examples.jsonl"

Examples = Dict[str, List[Tuple[str, str]]]


def load_rules(directory: Union[str, Path, None] = None) -> Dict[str, str]:
    """``{type: rule text}`` for every type in ``NEG_TYPES``, read from ``<directory>/<type>.txt``."""
    directory = Path(directory) if directory is not None else PROMPTS_DIR
    rules = {}
    for neg_type in NEG_TYPES:
        path = directory / f"{neg_type}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"missing rule text for negative type {neg_type!r}: {path}")
        text = " ".join(path.read_text(encoding="utf-8").split())
        if not text:
            raise ValueError(f"{path}: empty rule text for negative type {neg_type!r}")
        rules[neg_type] = text
    return rules


def load_examples(path: Union[str, Path, None] = None) -> Examples:
    """``{type: [(caption, negative), ...]}`` from a JSONL pool; default: the shipped one.

    Each non-blank line is ``{"type": one of NEG_TYPES, "caption": str, "negative": str}``; anything else is
    an error naming the file and line. Types without examples get an empty list (the prompt then has the rule
    only).
    """
    path = Path(path) if path is not None else DEFAULT_EXAMPLES
    if not path.is_file():
        raise FileNotFoundError(f"example pool not found: {path}")
    pool: Examples = {t: [] for t in NEG_TYPES}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit in a string
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; expected a JSONL example pool") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg}); expected "
                             '{"type": ..., "caption": ..., "negative": ...}') from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with keys type, caption, negative")
        missing = [k for k in ("type", "caption", "negative") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
        if row["type"] not in pool:
            raise ValueError(f"{where}: unknown type {row['type']!r}; expected one of {', '.join(NEG_TYPES)}")
        for key in ("caption", "negative"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        pool[row["type"]].append((" ".join(row["caption"].split()), " ".join(row["negative"].split())))
    return pool


def build_messages(caption: str, neg_type: str, examples: Examples, n_examples: int, n: int,
                   rng: random.Random, rules: Optional[Dict[str, str]] = None) -> List[Dict[str, str]]:
    """Chat messages asking for ``n`` rewrites of ``caption`` of type ``neg_type``, one per line.

    ``min(n_examples, pool size)`` examples of that type are drawn with ``rng.sample``, so the prompt is a
    function of the rng state. ``rules`` defaults to ``load_rules()``.
    """
    if neg_type not in NEG_TYPES:
        raise ValueError(f"unknown negative type {neg_type!r}; expected one of {', '.join(NEG_TYPES)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rules = rules if rules is not None else _default_rules()
    pool = examples.get(neg_type, [])
    shots = rng.sample(pool, min(max(n_examples, 0), len(pool)))
    parts = ["Please rewrite the input text following the rules and examples below.", "",
             f"Rules: {rules[neg_type]}"]
    if shots:
        parts += ["", "Examples:"]
        for shot_caption, shot_negative in shots:
            parts += [f"Input text: {shot_caption}", f"Output: {shot_negative}", ""]
    else:
        parts.append("")
    if n == 1:
        parts.append("Write one rewrite of the input text on a single line, with nothing else.")
    else:
        parts.append(f"Write {n} different rewrites of the input text, one per line, with nothing else "
                     "(no numbering, no explanation).")
    parts += ["", f"Input text: {' '.join(caption.split())}", "Output:"]
    return [{"role": "user", "content": "\n".join(parts)}]


def request_seed(seed: int, request: Request) -> int:
    """A 31-bit seed from the backend seed and the request's identity: prompts and sampling then do not depend
    on batching, order or resumption."""
    key = f"{seed}|{request.seed}|{request.caption_id}|{request.neg_type}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


def examples_from_args(args) -> Optional[Examples]:
    """The pool named by ``--examples`` (None: the backend uses the shipped one); a missing file names the flag."""
    path = getattr(args, "examples", None)
    if not path:
        return None
    if not Path(path).is_file():
        raise ValueError(f"--examples {path}: file not found (expected a JSONL example pool)")
    return load_examples(path)


_rules_cache: Dict[str, str] = {}


def _default_rules() -> Dict[str, str]:
    if not _rules_cache:
        _rules_cache.update(load_rules())
    return _rules_cache


_BULLET = re.compile(r"^\s*(?:[-*\u2022>]+|\(?\d{1,2}\s*[.):\]]|\(?[a-z][.)])\s*", re.IGNORECASE)
_LABEL = re.compile(r"^(?:output|rewrite|rewritten(?: text| caption)?|negative(?: caption)?|answer)\s*"
                    r"(?:\d+\s*)?:\s*", re.IGNORECASE)
_ECHO = re.compile(r"^(?:input(?: text)?\s*:|rules?\s*:|examples?\s*:|please rewrite|write \S+ (?:different )?rewrites?"
                   r"|sure\b|certainly\b|of course\b|here (?:is|are)\b|note\s*:)", re.IGNORECASE)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
_CLOSING_QUOTE = re.compile("[" + _QUOTES + "](?=[.!?]?$)")


def parse_completion(text: str, n: int, truncated: bool = False) -> List[str]:
    """Up to ``n`` candidates from a completion: one per line, cleaned of list markers and quotes.

    Drops blank lines, echoes of the prompt ("Input text: ...", "Rules: ...") and chatty headers ending with a
    colon ("Here are 3 rewrites:"); strips labels such as "Output:". ``truncated`` (the generation hit its
    token limit) drops the last line, which may be cut off mid-sentence.
    """
    lines = (text or "").replace("\r", "\n").split("\n")
    if truncated:
        lines = lines[:-1]
    out = []
    for line in lines:
        line = line.strip().replace("**", "")
        if not line or _ECHO.match(line):
            continue
        line = _BULLET.sub("", line, count=1)
        line = _LABEL.sub("", line, count=1).strip()
        if line[:1] in _QUOTES:
            line = _CLOSING_QUOTE.sub("", line[1:], count=1).strip()
        if not line or line.endswith(":"):
            continue
        out.append(" ".join(line.split()))
        if len(out) == n:
            break
    return out
