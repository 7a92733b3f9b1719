"""NegBench (Alhamoud et al., CVPR 2025; ``m1k2zoo/negbench@2ac009b``): negation, as multiple choice and retrieval.

**MCQ** (``benchmarks/src/evaluation/mcq.py`` L77-110). A CSV with columns ``correct_answer, caption_0..caption_3,
correct_answer_template, image_path``; the image is scored against the 4 captions (cosine of L2-normalised
embeddings), pred = ``torch.argmax`` (the *first* index of the maximum), correct iff pred == ``correct_answer``.
The generator always puts the answer first (``create_mcq.py`` L19, L31), so an argmax tie counts as correct:
``accuracy`` is that official number, ``accuracy_strict`` counts every tie wrong. Accuracy is reported overall and
per ``correct_answer_template`` (``positive`` "This image features A and B", ``negative`` "... does not feature N",
``hybrid`` "... features B, but not N"), and the wrong answers by the type of the option picked (official
``{1: hybrid, 2: positive, 3: negative}``). Headline: the total accuracy.

**Retrieval** (``retrieval.py`` L41-70, L104-114). A CSV with columns ``filepath, captions`` (a Python-list string
per image); every caption is ranked against every image of the file and the official report is **text→image**
recall@1 and @5 only (``image_retrieval_recall@k``), for the standard and the negated file separately. Each row is
one image, as in the official loader (a repeated ``filepath`` is counted and reported: its captions then tie with
the duplicate). torch.topk leaves the order of tied images unspecified; here a tie ranks the right image behind
(strict), and ties are counted.

The CSVs hold the authors' absolute image paths (``datasets.md``: "update these paths"); a path that does not
exist is found by its longest trailing part under the root (``.../val2017/000000000139.jpg`` at
``<root>/val2017/000000000139.jpg``, VOC at ``<root>/VOCdevkit/VOC2007/JPEGImages/...``), so the released files
are read unchanged.
"""
import logging
from collections import Counter
from pathlib import Path, PurePath
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import retrieval
from .aro import first_argmax_decisions
from .csv_files import int_cell, list_cell, read_rows, text_cell
from .items import EvalDataError, ImageRef, Item, data_missing

NAME = "negbench"
MCQ_FILES = {"coco_mcq": "COCO_val_mcq_llama3.1_rephrased.csv", "voc2007_mcq": "VOC2007_mcq_llama3.1_rephrased.csv"}
RETRIEVAL_FILES = {"coco_retrieval": "COCO_val_retrieval.csv",
                   "coco_negated_retrieval": "COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"}
TASKS = (*MCQ_FILES, *RETRIEVAL_FILES)
N_OPTIONS = 4
MCQ_COLUMNS = ("correct_answer", *(f"caption_{i}" for i in range(N_OPTIONS)), "correct_answer_template", "image_path")
TEMPLATES = ("positive", "negative", "hybrid")
WRONG_ANSWER_TYPES = {1: "hybrid", 2: "positive", 3: "negative"}  # mcq.py L49: the option types by index
RETRIEVAL_K = (1, 5)
CSV_DIRS = ("", "images")  # <root>/<file>.csv, or the repository's data/images/<file>.csv
IMAGE_BASES = ("val2017", "VOCdevkit", "VOCdevkit/VOC2007", "VOCdevkit/VOC2007/JPEGImages")  # as the fetcher extracts

LAYOUT = ("NegBench's CSVs (Google Drive folder of datasets.md, unchanged) at <root>/<file> or <root>/images/<file>: "
          + ", ".join(list(MCQ_FILES.values()) + list(RETRIEVAL_FILES.values()))
          + " (MCQ: columns correct_answer, caption_0..caption_3, correct_answer_template, image_path; retrieval: "
            "filepath, captions = a Python-list string); images under <root> by the trailing part of the path the "
            "CSV records: COCO val2017 at <root>/val2017/, VOC2007 at <root>/VOCdevkit/VOC2007/JPEGImages/")
HEADLINE = {"NegBench COCO MCQ": "negbench/coco_mcq/accuracy", "NegBench VOC2007 MCQ": "negbench/voc2007_mcq/accuracy",
            "NegBench COCO negated R@5": "negbench/coco_negated_retrieval/text_to_image/5"}
MCQ_PROTOCOL = {
    "tie_policy": "official: pred = first argmax over the 4 options (torch.argmax), correct iff pred == "
                  "correct_answer; the answer is always caption_0, so a tie counts as correct; accuracy_strict "
                  "counts every tie wrong",
    "averaging": "micro over questions (total accuracy, the headline); per correct_answer_template",
    "score": "cosine of L2-normalised embeddings (the 03/2025 fix of mcq.py; the preprint's Fig. 4 predates it)",
    "official_precision": "no autocast in mcq.py",
    "split": "NegBench MCQ (LLaMA-3.1-rephrased file)"}
RETRIEVAL_PROTOCOL = {
    "tie_policy": "strict: an image scoring equal to the caption's own image ranks ahead of it (the official "
                  "torch.topk leaves tied order unspecified); ties counted",
    "averaging": "text→image recall@k over captions (image_retrieval_recall@k, the only direction NegBench "
                 "reports); each CSV row is one image",
    "official_precision": "AMP autocast in retrieval.py",
    "split": "NegBench COCO retrieval CSV"}


def csv_path(root, filename: str) -> Optional[Path]:
    """``<root>/<filename>`` or ``<root>/images/<filename>``, whichever exists (None if neither)."""
    for folder in CSV_DIRS:
        path = Path(root) / folder / filename
        if path.is_file():
            return path
    return None


def present_tasks(root) -> List[str]:
    """The tasks whose CSV is under ``root``, in ``TASKS`` order."""
    files = {**MCQ_FILES, **RETRIEVAL_FILES}
    return [task for task in TASKS if csv_path(root, files[task]) is not None]


class ImageResolver:
    """Finds the image a CSV row names: the recorded path if it is a file, else its longest trailing part that is a
    file under ``root`` or under one of the image folders of ``IMAGE_BASES`` (so ``/x/VOC2007/JPEGImages/1.jpg`` is
    found at ``<root>/VOCdevkit/VOC2007/JPEGImages/1.jpg``). The match found for one folder is tried first for the
    next path in that folder."""

    def __init__(self, root):
        self.root = Path(root)
        self.bases = [self.root] + [self.root / base for base in IMAGE_BASES if (self.root / base).is_dir()]
        self._found: Dict[str, Tuple[Path, int]] = {}

    def __call__(self, recorded: str, where: str) -> ImageRef:
        path = PurePath(recorded.strip())
        if path.is_absolute() and Path(path).is_file():
            return ImageRef(str(path))
        parts = path.parts[1:] if path.is_absolute() else path.parts
        folder = str(path.parent)
        order = [(base, start) for start in range(len(parts)) for base in self.bases]
        if folder in self._found:
            order.insert(0, self._found[folder])
        for base, start in order:
            candidate = base.joinpath(*parts[start:])
            if candidate.is_file():
                self._found[folder] = (base, start)
                return ImageRef(str(candidate))
        raise EvalDataError(f"{where}: image {recorded!r} was not found, as recorded nor by any trailing part of it "
                            f"under {self.root} or its image folders ({', '.join(IMAGE_BASES)})")


def _required_csv(root, filename: str) -> Path:
    path = csv_path(root, filename)
    if path is None:
        raise data_missing(NAME, f"{filename} not found under {root} or {Path(root) / 'images'}", LAYOUT, NAME, root)
    return path


def load_mcq(root, task: str = "coco_mcq") -> List[Item]:
    """One item per CSV row: the image × [caption_0..caption_3], ``match[0][correct_answer]`` True, ``group`` = the
    correct answer's template."""
    if task not in MCQ_FILES:
        raise EvalDataError(f"unknown NegBench MCQ task {task!r}; expected one of {', '.join(MCQ_FILES)}")
    path, resolve, items = _required_csv(root, MCQ_FILES[task]), ImageResolver(root), []
    for line, row in read_rows(path, MCQ_COLUMNS):
        where = f"{path}: line {line}"
        correct = int_cell(row, "correct_answer", where)
        if not 0 <= correct < N_OPTIONS:
            raise EvalDataError(f"{where}: correct_answer must be 0..{N_OPTIONS - 1}, got {correct}")
        template = (row["correct_answer_template"] or "").strip()
        if template not in TEMPLATES:
            raise EvalDataError(f"{where}: correct_answer_template must be one of {', '.join(TEMPLATES)}, got "
                                f"{template!r}")
        captions = [text_cell(row, f"caption_{i}", where) for i in range(N_OPTIONS)]
        image = resolve(row["image_path"] or "", where)
        items.append(Item(id=f"{task}/{line}", images=[image], captions=captions,
                          match=[[i == correct for i in range(N_OPTIONS)]], group=template,
                          meta={"correct_answer": correct, "line": line}))
    return items


def _rows(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(items) != len(scores) or any(tuple(s.shape) != (1, N_OPTIONS) for s in scores):
        raise ValueError(f"NegBench MCQ needs one [1, {N_OPTIONS}] score matrix per item ({len(items)} items, "
                         f"{len(scores)} matrices)")
    return torch.stack([s[0] for s in scores]) if scores else torch.zeros(0, N_OPTIONS)


def _pct(hits: torch.Tensor) -> Optional[float]:
    return 100.0 * hits.float().mean().item() if len(hits) else None


def mcq_decisions(rows: torch.Tensor, targets: torch.Tensor):
    """``rows [n, K]`` scores, ``targets [n]`` answer indices → ``(correct, correct_strict, tie, pred)``, each
    ``[n]``: pred is the first index of the row maximum (torch.argmax), correct iff pred == target, a tie is a
    target scoring equal to the best other option (counted wrong by ``correct_strict``)."""
    correct = torch.zeros(len(rows), dtype=torch.bool)
    tie = torch.zeros(len(rows), dtype=torch.bool)
    for target in targets.unique().tolist():
        idx = (targets == target).nonzero().flatten()
        correct[idx], tie[idx] = first_argmax_decisions(rows[idx], target)
    is_max = rows == rows.max(dim=1, keepdim=True).values
    pred = torch.where(is_max, torch.arange(rows.shape[1]), rows.shape[1]).min(dim=1).values
    return correct, correct & ~tie, tie, pred


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """MCQ accuracy (%): ``accuracy`` (official, the headline) and ``accuracy_strict``, per template (top level
    ``positive``/``negative``/``hybrid`` and ``per_template`` with counts), and ``wrong_answer_types``: the share
    (%) of wrong answers that picked each option type."""
    rows = _rows(items, scores)
    targets = torch.tensor([it.meta["correct_answer"] for it in items], dtype=torch.long)
    correct, strict, tie, pred = mcq_decisions(rows, targets)
    result = {"accuracy": _pct(correct), "accuracy_strict": _pct(strict)}
    per_template = {}
    for template in TEMPLATES:
        idx = torch.tensor([k for k, it in enumerate(items) if it.group == template], dtype=torch.long)
        result[template] = _pct(correct[idx])
        per_template[template] = {"acc": _pct(correct[idx]), "acc_strict": _pct(strict[idx]), "n": len(idx),
                                  "ties": int(tie[idx].sum())}
    kinds = Counter(WRONG_ANSWER_TYPES.get(p, f"option_{p}") for p in pred[~correct].tolist())
    total = sum(kinds.values())
    names = list(WRONG_ANSWER_TYPES.values()) + sorted(set(kinds) - set(WRONG_ANSWER_TYPES.values()))
    result["wrong_answer_types"] = {kind: 100.0 * kinds[kind] / total for kind in names} if total else {}
    result.update(per_template=per_template, n_items=len(items), n_ties=int(tie.sum()))
    return result


def load_retrieval(root, task: str = "coco_retrieval") -> Tuple[List[ImageRef], List[List[str]]]:
    """``(images, captions)``: one image per CSV row with its list of captions (``ast.literal_eval``)."""
    if task not in RETRIEVAL_FILES:
        raise EvalDataError(f"unknown NegBench retrieval task {task!r}; expected one of {', '.join(RETRIEVAL_FILES)}")
    path, resolve = _required_csv(root, RETRIEVAL_FILES[task]), ImageResolver(root)
    images, captions = [], []
    for line, row in read_rows(path, ("filepath", "captions")):
        where = f"{path}: line {line}"
        captions.append(list_cell(row, "captions", where))
        images.append(resolve(row["filepath"] or "", where))
    repeated = len(images) - len(set(images))
    if repeated:
        logging.warning(f"{path}: {repeated} row(s) repeat an image already listed; each row stays its own image "
                        f"(as officially), so their captions tie with the duplicate and rank behind it")
    return images, captions


def retrieval_metrics(scorer, images: Sequence[ImageRef], captions: Sequence[Sequence[str]],
                      chunk_size: int = retrieval.CHUNK_SIZE) -> dict:
    """Text→image recall@1/@5 (%) over the file's global caption × image matrix (the retrieval core's
    ``global_metrics``, scored in tiles of ``chunk_size``), with tie counts and the number of repeated images."""
    full = retrieval.global_metrics(scorer, images, captions, ks=RETRIEVAL_K, chunk_size=chunk_size)
    return {"text_to_image": full["text_to_image"], "duplicate_images": len(images) - len(set(images)),
            "n_images": full["n_images"], "n_captions": full["n_captions"], "n_items": full["n_captions"],
            "n_ties": full["ties"]["text_to_image"]}


def parts(scorer, root, chunk_size: int = retrieval.CHUNK_SIZE) -> List[tuple]:
    """``(dataset, task, metrics, protocol, items, metrics_fn)`` for every NegBench task whose CSV is present
    (``chunk_size``: the retrieval tasks' tile size, ``retrieval.scoring_ranks``)."""
    tasks = present_tasks(root)
    if not tasks:
        raise data_missing(NAME, f"none of the NegBench CSVs is under {root}", LAYOUT, NAME, root)
    out = []
    for task in tasks:
        if task in MCQ_FILES:
            items = load_mcq(root, task)
            out.append((f"{NAME}/{task}", "compositionality", metrics(items, scorer.score_items(items)),
                        {**MCQ_PROTOCOL, "file": MCQ_FILES[task]}, items, metrics))
        else:
            images, captions = load_retrieval(root, task)
            out.append((f"{NAME}/{task}", "zeroshot_retrieval", retrieval_metrics(scorer, images, captions, chunk_size),
                        {**RETRIEVAL_PROTOCOL, "file": RETRIEVAL_FILES[task], "recall_k": list(RETRIEVAL_K)},
                        None, None))
    return out
