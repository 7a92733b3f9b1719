"""COCO-style caption metrics (BLEU-4, CIDEr-D, ROUGE-L, METEOR) via ``pycocoevalcap`` 1.2.

Protocol (spec ``alignvlm.md`` section 5): tokenize references and hypotheses with the PTB tokenizer,
remove pycocoevalcap's punctuation list, then score with ``Bleu(4)`` (BLEU-4 reported), ``Cider()``
(which *is* CIDEr-D: n = 4, sigma = 6, clipped counts, Gaussian length penalty, x10, IDF over the
evaluated reference set), ``Rouge()`` (ROUGE-L, beta = 1.2) and ``Meteor()`` (Java only).

Two tokenizer paths:

* ``tokenizer="ptb"``: pycocoevalcap's own ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 jar, needs ``java``).
  This is the reference protocol.
* ``tokenizer="python"`` (default): :func:`tokenize`, a pure-Python re-implementation of what
  ``PTBTokenizer -preserveLines -lowerCase`` followed by pycocoevalcap's punctuation filter yields on
  ordinary caption text. No Java needed. Known deviations are listed in :func:`tokenize`.

METEOR is computed only when a ``java`` executable is on ``PATH``; otherwise the result holds
``"meteor_skipped"`` with the reason instead of ``"meteor"``.

Note: CIDEr-D's IDF is ``log(#images)``-based, so on a single-image corpus every CIDEr score is 0
(``log(1) = 0``). Scores are only meaningful on the full evaluated split.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "PUNCTUATIONS",
    "tokenize",
    "caption_scores",
    "java_available",
    "load_karpathy_captions",
    "write_predictions",
]

# Verbatim copy of pycocoevalcap 1.2 ``tokenizer/ptbtokenizer.py`` ``PUNCTUATIONS``. It is compared
# against the Java tokenizer's *lower-cased* output, so "-LRB-" etc. never match there: brackets
# survive as "-lrb-", "-rrb-", "-lcb-", "-rcb-", "-lsb-", "-rsb-" tokens. :func:`tokenize` reproduces
# that quirk so that both paths give the same scores.
PUNCTUATIONS = ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";"]
_PUNCT_SET = frozenset(PUNCTUATIONS)

_METRICS = ("bleu4", "cider", "rouge_l", "meteor")

# --------------------------------------------------------------------------------------------------
# pure-Python PTB tokenizer
# --------------------------------------------------------------------------------------------------

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
_UNICODE_MAP = {
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'",
    "\u2014": " -- ", "\u2013": " -- ", "\u2026": " ... ", "\u00a0": " ",
}
# Abbreviations whose final period PTBLexer keeps attached (subset of its ABBREV lists that
# plausibly occurs in captions). Anything else loses its trailing period.
_ABBREV = frozenset("""
mr mrs ms dr st jr sr mt ft prof gen gov sen rep capt lt col sgt cpl pvt rev hon pres vs etc inc
corp co ltd bros messrs jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur
thurs fri sat sun ave blvd rd hwy dept univ fig e.g i.e
""".split())
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]?\.?$")  # u.s. / e.g. / a.m. / single initial "a."
_CLITIC = re.compile(r"^(.+?)(n't|'s|'d|'m|'re|'ve|'ll)$")
_WHOLE_CLITICS = frozenset(["'s", "'d", "'m", "'re", "'ve", "'ll", "n't", "'n'", "'n"])
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                "wanna": ["wan", "na"], "lemme": ["lem", "me"], "gimme": ["gim", "me"]}


def _split_symbols(chunk: str) -> List[str]:
    """Isolate punctuation that PTB always splits off, wherever it occurs in a chunk."""
    s = chunk
    s = s.replace("...", " ... ")
    s = re.sub(r"--+", " -- ", s)
    s = re.sub(r'([(){}\[\]!?;"+=])', r" \1 ", s)
    s = re.sub(r",(?!\d)|(?<!\d),", " , ", s)       # keep 1,000
    s = re.sub(r":(?!\d|//)|(?<!\d):(?!//)", " : ", s)  # keep 3:30, http://
    s = re.sub(r"\$(?=\d)", " $ ", s)
    s = re.sub(r"(?<=\d)%", " % ", s)
    return s.split()


def _split_token(tok: str, next_tok: Optional[str]) -> List[str]:
    if tok in _PUNCT_SET or tok in _BRACKETS or len(tok) == 1:
        return [tok]
    front: List[str] = []
    back: List[str] = []
    # opening single quotes / backticks, unless the token is itself a clitic ('s, 'n' ...)
    while tok and tok[0] in "'`" and tok not in _WHOLE_CLITICS and len(tok) > 1:
        front.append(tok[0])
        tok = tok[1:]
    # trailing period (not an abbreviation) and closing quotes, in any order
    changed = True
    while changed and len(tok) > 1:
        changed = False
        if tok.endswith(".") and not tok.endswith(".."):
            stem = tok[:-1]
            keep = (stem in _ABBREV or _DOTTED.match(tok) is not None
                    or (stem == "no" and next_tok is not None and next_tok[:1].isdigit()))
            if not keep:
                back.insert(0, ".")
                tok = stem
                changed = True
        if len(tok) > 1 and tok[-1] in "'`" and tok not in _WHOLE_CLITICS:
            back.insert(0, tok[-1])
            tok = tok[:-1]
            changed = True
    mid: List[str] = []
    if tok in _SPLIT_WORDS:
        mid = list(_SPLIT_WORDS[tok])
    else:
        clitics: List[str] = []
        m = _CLITIC.match(tok)
        while m is not None:
            tok, cl = m.group(1), m.group(2)
            clitics.insert(0, cl)
            m = _CLITIC.match(tok)
        mid = [tok] + clitics
    return front + [t for t in mid if t] + back


def tokenize(text: str) -> str:
    """Pure-Python approximation of pycocoevalcap's PTB tokenization of one caption.

    Emulates ``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` (CoreNLP 3.4.1)
    followed by removal of :data:`PUNCTUATIONS`, and returns the space-joined tokens:

    * lower-cases; newlines become spaces; collapses whitespace;
    * splits off and drops ``. , ! ? ; : -- ...`` and all quotes (straight, curly, backtick);
      keeps ``1,000``, ``3.5``, ``3:30``, hyphenated words (``black-and-white``), ``cat/dog``;
    * keeps the period of dotted abbreviations/initials (``u.s.``, ``e.g.``, ``a.m.``, ``a.``),
      of a list of common abbreviations (``mr.``, ``st.``, ``dr.``, ``etc.`` ...) and of ``no.``
      before a number (PTB's ABBREV rules); any other trailing period is dropped;
    * clitics: ``man's -> man 's``, ``isn't -> is n't``, ``can't -> ca n't``, ``won't -> wo n't``,
      ``they'd've -> they 'd 've``, ``boys' -> boys``; ``cannot -> can not``, ``gonna -> gon na``;
    * ``$5 -> $ 5``, ``50% -> 50 %``, ``a+b=c -> a + b = c``;
    * brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` and are *kept*, exactly as in
      pycocoevalcap (its filter compares upper-case ``-LRB-`` with lower-cased output).

    Known deviations from the Java tokenizer (rare in captions): PTB's full abbreviation lists and
    its sentence-final-abbreviation rule (``etc. .``) are only approximated; emoticons (``:)`` ->
    ``:-rrb-`` in Java), SGML tags, ``'tis``, ``y'all``, ``rock'n'roll`` and words with internal
    apostrophes other than the clitics above, and non-ASCII normalisations beyond curly quotes,
    dashes and the ellipsis character are not reproduced.
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects str, got {type(text).__name__}")
    s = text.lower()
    for a, b in _UNICODE_MAP.items():
        s = s.replace(a, b)
    chunks: List[str] = []
    for raw in s.split():
        chunks.extend(_split_symbols(raw))
    out: List[str] = []
    for i, tok in enumerate(chunks):
        nxt = chunks[i + 1] if i + 1 < len(chunks) else None
        out.extend(_split_token(tok, nxt))
    out = [_BRACKETS.get(t, "``" if t == '"' else t) for t in out]
    return " ".join(t for t in out if t not in _PUNCT_SET)


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------

def java_available() -> bool:
    """True when a ``java`` executable is on PATH (needed for METEOR and ``tokenizer="ptb"``)."""
    return shutil.which("java") is not None


def _validate(references: Mapping[Hashable, Sequence[str]],
              predictions: Mapping[Hashable, str]) -> None:
    if not references:
        raise ValueError("references is empty")
    missing_pred = [k for k in references if k not in predictions]
    missing_ref = [k for k in predictions if k not in references]
    if missing_pred:
        raise KeyError(f"{len(missing_pred)} id(s) in references have no prediction, "
                       f"e.g. {missing_pred[:5]!r}")
    if missing_ref:
        raise KeyError(f"{len(missing_ref)} id(s) in predictions have no references, "
                       f"e.g. {missing_ref[:5]!r}")
    for k, refs in references.items():
        if isinstance(refs, str):
            raise TypeError(f"references[{k!r}] must be a list of strings, got a single str")
        if len(refs) == 0:
            raise ValueError(f"references[{k!r}] is an empty reference list")
        for r in refs:
            if not isinstance(r, str):
                raise TypeError(f"references[{k!r}] contains a non-string {type(r).__name__}")
    for k, p in predictions.items():
        if not isinstance(p, str):
            raise TypeError(f"predictions[{k!r}] must be a str, got {type(p).__name__}")


def _tokenize_all(references, predictions, tokenizer: str):
    if tokenizer == "python":
        gts = {k: [tokenize(r) for r in refs] for k, refs in references.items()}
        res = {k: [tokenize(predictions[k])] for k in references}
        return gts, res
    if tokenizer == "ptb":
        if not java_available():
            raise RuntimeError('tokenizer="ptb" needs a java executable on PATH; '
                               'use tokenizer="python" instead')
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        # pycocoevalcap keys by image id; use positions so arbitrary hashable ids work
        keys = list(references)
        ptb = PTBTokenizer()
        gts_i = ptb.tokenize({i: [{"caption": r} for r in references[k]] for i, k in enumerate(keys)})
        res_i = ptb.tokenize({i: [{"caption": predictions[k]}] for i, k in enumerate(keys)})
        return ({k: gts_i[i] for i, k in enumerate(keys)},
                {k: res_i.get(i, [""]) for i, k in enumerate(keys)})
    raise ValueError(f'tokenizer must be "python" or "ptb", got {tokenizer!r}')


def _meteor_score(gts, res) -> float:
    from pycocoevalcap.meteor.meteor import Meteor
    m = Meteor()
    try:
        score, _ = m.compute_score(gts, res)
    finally:
        # Meteor.__del__ would do this at an arbitrary GC time; end the JVM deterministically.
        # __del__ stays safe afterwards (close/kill/wait on a reaped process are no-ops).
        p = m.meteor_p
        for f in (p.stdin, p.stdout, p.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        p.kill()
        p.wait()
        m.lock = threading.Lock()  # in case compute_score raised while holding it
    return float(score)


def caption_scores(references: Mapping[Hashable, Sequence[str]],
                   predictions: Mapping[Hashable, str],
                   metrics: Sequence[str] = _METRICS,
                   tokenizer: str = "python") -> Dict[str, float]:
    """Corpus-level COCO caption metrics through pycocoevalcap.

    Args:
        references: ``{id: [ref caption, ...]}`` (raw text, at least one per id).
        predictions: ``{id: caption}`` (raw text); must have exactly the ids of ``references``.
        metrics: subset of ``("bleu4", "cider", "rouge_l", "meteor")``.
        tokenizer: ``"python"`` (:func:`tokenize`, no Java) or ``"ptb"`` (pycocoevalcap's Java
            ``PTBTokenizer``).

    Returns:
        ``{"bleu4": ..., "cider": ..., "rouge_l": ..., "meteor": ...}`` as raw pycocoevalcap
        values (not x100; CIDEr-D is already x10). When METEOR is requested but ``java`` is missing,
        ``"meteor"`` is absent and ``"meteor_skipped"`` holds the reason (a str).
    """
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in _METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {_METRICS}")
    if not metrics:
        raise ValueError("metrics is empty")
    _validate(references, predictions)
    gts, res = _tokenize_all(references, predictions, tokenizer)

    out: Dict[str, float] = {}
    if "bleu4" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu
        bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out["bleu4"] = float(bleus[3])
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider
        out["cider"] = float(Cider().compute_score(gts, res)[0])
    if "rouge_l" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "meteor" in metrics:
        if java_available():
            out["meteor"] = _meteor_score(gts, res)
        else:
            out["meteor_skipped"] = "no java executable on PATH"  # type: ignore[assignment]
    return out


# --------------------------------------------------------------------------------------------------
# Karpathy-format I/O
# --------------------------------------------------------------------------------------------------

def load_karpathy_captions(path: str, image_root: str = "",
                           check_images: bool = False) -> Tuple[List[str], Dict[str, List[str]]]:
    """Read a COCO Karpathy test/val file: ``[{"image": "val2014/x.jpg", "caption": [...]}, ...]``.

    Returns ``(image_paths, references)``: ``image_paths[i] = os.path.join(image_root, image)`` in
    file order, and ``references`` keyed by that same path (so predictions can be keyed by it).
    A single caption string is accepted as a one-element list. Raises ``FileNotFoundError`` /
    ``ValueError`` with the offending entry index on malformed input, duplicates or empty captions;
    with ``check_images=True`` also when an image file is missing.
    """
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder; expected a Karpathy-format JSON file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Karpathy caption file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); expected a Karpathy-format JSON file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not valid JSON (not UTF-8 text); expected a Karpathy-format JSON file") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'image', 'caption'}} entries, "
                         f"got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: no entries")
    paths: List[str] = []
    refs: Dict[str, List[str]] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
            raise ValueError(f"{path}: entry {i} must be an object with 'image' and 'caption' keys")
        image, caps = entry["image"], entry["caption"]
        if not isinstance(image, str) or not image:
            raise ValueError(f"{path}: entry {i} has a non-string or empty 'image'")
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError(f"{path}: entry {i} ('{image}') 'caption' must be a list of strings")
        caps = [c for c in caps if c.strip()]
        if not caps:
            raise ValueError(f"{path}: entry {i} ('{image}') has no non-empty reference caption")
        full = os.path.join(image_root, image) if image_root else image
        if full in refs:
            raise ValueError(f"{path}: entry {i} duplicates image '{image}'")
        if check_images and not os.path.isfile(full):
            raise FileNotFoundError(f"{path}: entry {i}: image file not found: {full}")
        paths.append(full)
        refs[full] = list(caps)
    return paths, refs


def write_predictions(path: str, predictions: Mapping[Hashable, str]) -> None:
    """Atomically write ``[{"image_id": id, "caption": caption}, ...]`` (COCO results format).

    Written to a temp file in the destination directory and ``os.replace``-d into place, so a
    crash never leaves a truncated file. Ids must be JSON-serialisable (str/int).
    """
    items = []
    for k, v in predictions.items():
        if not isinstance(v, str):
            raise TypeError(f"predictions[{k!r}] must be a str, got {type(v).__name__}")
        if not isinstance(k, (str, int)) or isinstance(k, bool):
            raise TypeError(f"prediction id {k!r} must be str or int for JSON output")
        items.append({"image_id": k, "caption": v})
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_pred_", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(items, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
