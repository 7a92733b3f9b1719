"""Zero-shot classification with template averaging (CLIP / CLIP_benchmark protocol).

Classifier: for each class, every template filled with the class name is embedded and L2-normalised; the
embeddings are averaged and re-normalised, giving W [C, D]. logits = 100 · normalise(image) · Wᵀ. Metrics:
top-1 and top-5 accuracy (top-k is None with fewer than k classes, as CLIP_benchmark reports top-5 as NaN below
5 classes) and mean per-class recall (top-1 recall averaged over the classes that have test images, sklearn's
``balanced_accuracy_score`` as CLIP_benchmark uses it).

Two local layouts are read:

- an ImageFolder ``<root>/<split>/<class_dir>/<image>`` (class dirs in sorted order give the class indices;
  names from ``<root>/classnames.txt``, one per line in that order, else the dir names with '_' → ' ');
- CLIP_benchmark's ``wds/<name>`` folder: ``classnames.txt``, ``zeroshot_classification_templates.txt``,
  ``dataset_type.txt`` and ``<split>/{nshards.txt, 0.tar, ...}``, webdataset tars whose samples hold an image
  (``.webp``/``.png``/``.jpg``/``.jpeg``) and a class index (``.cls``). Images are extracted once to a cache
  folder so that the scorer (and its on-disk feature cache) sees ordinary files.

Templates (with a ``{c}`` placeholder): the ``templates=`` argument if given, else the dataset's
``zeroshot_classification_templates.txt``, else ``DEFAULT_TEMPLATES`` (OpenAI's 7-template ImageNet ensemble
subset plus "a photo of a {c}.", not the full 80: published numbers use the 80 or CLIP_benchmark's per-dataset
sets). The result's protocol records which.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .items import EvalDataError, ImageRef, require_file
from .scoring import exact_cosines

DEFAULT_TEMPLATES = ("itap of a {c}.", "a bad photo of the {c}.", "a origami {c}.", "a photo of the large {c}.",
                     "a {c} in a video game.", "art of the {c}.", "a photo of the small {c}.", "a photo of a {c}.")
TIE_RULES = {"official": "official: a tie goes to the lower class index (torch.argmax, as CLIP_benchmark's mean "
                         "per-class recall; its topk accuracy breaks ties in an unspecified order)",
             "strict": "strict: a tie with a wrong class is a miss"}
TIE_POLICIES = tuple(TIE_RULES)
PROTOCOL = {"tie_policy": TIE_RULES["official"],
            "averaging": "top-k over images (null with fewer than k classes, as CLIP_benchmark's NaN top-5); "
                         "mean per-class recall over classes with test images",
            "classifier": "per class: mean of L2-normalised template embeddings, re-normalised; "
                          "logits = 100 * normalise(image) @ W.T",
            "split": "test"}
LAYOUT = ("either an ImageFolder <root>/<split>/<class_dir>/<image> (optional <root>/classnames.txt, one name "
          "per line in sorted class-dir order; optional <root>/zeroshot_classification_templates.txt, one "
          "template per line with {c}) or a CLIP_benchmark wds folder: <root>/classnames.txt, "
          "<root>/zeroshot_classification_templates.txt, <root>/dataset_type.txt ('classification'), "
          "<root>/<split>/nshards.txt and <root>/<split>/0.tar ... (samples with .webp/.png/.jpg and .cls)")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
WDS_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclass
class ZeroShotSet:
    """Test images with class indices ``labels[i]`` into ``classnames``; ``meta`` records format and sources."""

    images: List[ImageRef]
    labels: List[int]
    classnames: List[str]
    templates: List[str]
    meta: Dict = field(default_factory=dict)


def zeroshot_classifier(text_features_per_class: Sequence[torch.Tensor]) -> torch.Tensor:
    """W [C, D] from each class's template embeddings ``[T_c, D]`` (or one ``[C, T, D]`` tensor): normalise
    each embedding, average over templates, re-normalise."""
    return torch.stack([F.normalize(F.normalize(feats.float(), dim=-1).mean(dim=0), dim=-1)
                        for feats in text_features_per_class])


def zeroshot_logits(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """logits [N, C] = 100 · normalise(image_features [N, D]) · classifier [C, D]ᵀ (rows L2-normalised).

    The cosines come from ``exact_cosines``: two classes with the same classifier row (e.g. a repeated class
    name) tie exactly, so the tie rule, not float noise, decides between them."""
    return 100.0 * exact_cosines(F.normalize(image_features.float(), dim=-1), classifier)


def class_ranks(logits: torch.Tensor, labels: torch.Tensor, tie_policy: str = "official") -> torch.Tensor:
    """0-based rank [N] of each row's true class. ``official``: classes scoring higher, plus equal-scoring
    classes with a lower index, rank ahead; ``strict``: every other class scoring at least as high ranks ahead."""
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")
    true = logits.gather(1, labels[:, None])
    if tie_policy == "strict":
        return (logits >= true).sum(dim=1) - 1
    lower = torch.arange(logits.shape[1])[None, :] < labels[:, None]
    return (logits > true).sum(dim=1) + ((logits == true) & lower).sum(dim=1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5),
                           tie_policy: str = "official") -> dict:
    """``top{k}`` accuracy (%) for each k (None when k > C: CLIP_benchmark reports top-5 as NaN with fewer than 5
    classes, not a capped number), ``mean_per_class_recall``
    (%, top-1 recall averaged over the classes present in ``labels``), ``n_items``, ``n_classes`` and ``n_ties``
    (rows whose highest logit is shared by two or more classes). ``logits [N, C]``, ``labels [N]``."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    n, n_classes = logits.shape
    if labels.shape != (n,) or n == 0:
        raise ValueError(f"need logits [N, C] and labels [N] with N > 0, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min().item()}..{labels.max().item()}")
    rank = class_ranks(logits, labels, tie_policy)
    result = {f"top{k}": 100.0 * (rank < k).float().mean().item() if k <= n_classes else None for k in ks}
    hit = (rank == 0).float()
    present = labels.unique()
    recall = torch.stack([hit[labels == c].mean() for c in present])
    result["mean_per_class_recall"] = 100.0 * recall.mean().item()
    ties = (logits == logits.max(dim=1, keepdim=True).values).sum(dim=1) > 1
    result.update(n_items=n, n_classes=n_classes, n_ties=int(ties.sum()))
    return result


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> List[List[str]]:
    """``prompts[c][t]`` = template t filled with class name c (``str.format(c=...)``, as CLIP_benchmark)."""
    prompts = []
    for name in classnames:
        row = []
        for template in templates:
            try:
                row.append(template.format(c=name))
            except (KeyError, IndexError, ValueError) as err:
                raise EvalDataError(f"template {template!r} cannot be filled ({err!r}); templates use {{c}} "
                                    f"as their only placeholder") from None
        prompts.append(row)
    return prompts


def _read_lines(path: Path, what: str) -> List[str]:
    """Stripped lines of a text file; an empty line (other than trailing ones) is an error naming it."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise EvalDataError(f"{path}: empty; expected {what}, one per line")
    for number, line in enumerate(lines, 1):
        if not line:
            raise EvalDataError(f"{path}: line {number} is empty; expected {what}, one per line")
    return lines


def read_templates(path) -> List[str]:
    """Templates from a ``zeroshot_classification_templates.txt``; each must contain ``{c}``."""
    templates = _read_lines(Path(path), "templates with a {c} placeholder")
    for number, template in enumerate(templates, 1):
        if "{c}" not in template:
            raise EvalDataError(f"{path}: line {number} ({template!r}) has no {{c}} placeholder")
    return templates


def load_imagefolder(root, split: str = "test") -> Tuple[List[ImageRef], List[int], List[str]]:
    """``(images, labels, classnames)`` from ``<root>/<split>/<class_dir>/...`` (files found recursively)."""
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise EvalDataError(f"zeroshot: {split_dir} not found; expected {LAYOUT}")
    class_dirs = sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    if not class_dirs:
        raise EvalDataError(f"zeroshot: {split_dir} has no class folders; expected {LAYOUT}")
    names_file = root / "classnames.txt"
    if names_file.is_file():
        classnames = _read_lines(names_file, "class names")
        if len(classnames) != len(class_dirs):
            raise EvalDataError(f"{names_file}: {len(classnames)} class names for {len(class_dirs)} class folders "
                                f"in {split_dir}; expected one name per folder, in sorted folder order")
    else:
        classnames = [d.name.replace("_", " ") for d in class_dirs]
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                images.append(ImageRef(str(path)))
                labels.append(label)
    if not images:
        raise EvalDataError(f"zeroshot: no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}")
    return images, labels, classnames


def _tar_samples(tar_path: Path):
    """Yield ``(key, {extension: bytes})`` for runs of consecutive tar members sharing a key (webdataset
    grouping: key = member path up to the first '.' of its file name)."""
    import tarfile

    try:
        tar = tarfile.open(tar_path)
    except (tarfile.TarError, OSError) as err:
        raise EvalDataError(f"{tar_path}: not a readable tar ({err})") from None
    with tar:
        key, sample = None, {}
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not stem or not dot:
                continue
            member_key = f"{directory}/{stem}" if directory else stem
            if member_key != key:
                if sample:
                    yield key, sample
                key, sample = member_key, {}
            sample[ext.lower()] = tar.extractfile(member).read()
        if sample:
            yield key, sample


def load_wds(root, split: str = "test", cache_dir=None) -> Tuple[List[ImageRef], List[int], List[str]]:
    """``(images, labels, classnames)`` from a CLIP_benchmark wds folder; images are written (once; rewritten
    only if their bytes changed) to ``cache_dir/<shard>/`` (default ``<root>/extracted/<split>``)."""
    root = Path(root)
    type_file = root / "dataset_type.txt"
    if type_file.is_file():
        kind = type_file.read_text().strip().lower()
        if kind != "classification":
            raise EvalDataError(f"{type_file}: dataset type {kind!r}; zero-shot classification needs "
                                f"'classification'")
    names_file = root / "classnames.txt"
    require_file(names_file, "zeroshot", LAYOUT)
    classnames = _read_lines(names_file, "class names")
    nshards_file = root / split / "nshards.txt"
    require_file(nshards_file, "zeroshot", LAYOUT)
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError:
        nshards = 0
    if nshards < 1:
        raise EvalDataError(f"{nshards_file}: expected a positive shard count, got {nshards_file.read_text()!r}")
    out = Path(cache_dir) if cache_dir is not None else root / "extracted" / split
    images, labels = [], []
    for shard in range(nshards):
        tar_path = root / split / f"{shard}.tar"
        require_file(tar_path, "zeroshot", LAYOUT)
        for index, (key, sample) in enumerate(_tar_samples(tar_path)):
            ext = next((e for e in WDS_IMAGE_KEYS if e in sample), None)
            if ext is None or "cls" not in sample:
                raise EvalDataError(f"{tar_path}: sample {key!r} has {sorted(sample)}; expected an image "
                                    f"({'/'.join(WDS_IMAGE_KEYS)}) and a class index (cls)")
            try:
                label = int(sample["cls"].decode().strip())
            except (UnicodeDecodeError, ValueError):
                raise EvalDataError(f"{tar_path}: sample {key!r}: .cls is {sample['cls'][:20]!r}, not an "
                                    f"integer class index") from None
            if not 0 <= label < len(classnames):
                raise EvalDataError(f"{tar_path}: sample {key!r}: class index {label} outside 0..{len(classnames) - 1} "
                                    f"({names_file} lists {len(classnames)} classes)")
            target = out / str(shard) / f"{index:07d}_{re.sub(r'[^A-Za-z0-9_-]', '_', key)}.{ext}"
            try:
                if not (target.is_file() and target.read_bytes() == sample[ext]):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(sample[ext])
            except OSError as err:
                raise EvalDataError(f"cannot extract {tar_path} sample {key!r} to {target} ({err}); pass "
                                    f"cache_dir= a writable folder") from None
            images.append(ImageRef(str(target)))
            labels.append(label)
    if not images:
        raise EvalDataError(f"zeroshot: no samples in {root / split}/0..{nshards - 1}.tar")
    return images, labels, classnames


def load(root, split: str = "test", templates: Optional[Sequence[str]] = None, data_format: str = "auto",
         cache_dir=None) -> ZeroShotSet:
    """A zero-shot test set. ``data_format``: ``auto`` (wds if ``<root>/<split>/nshards.txt`` exists, else
    ImageFolder), ``wds`` or ``imagefolder``. Templates: argument, else the dataset's file, else defaults."""
    root = Path(root)
    if data_format == "auto":
        if (root / split / "nshards.txt").is_file():
            data_format = "wds"
        elif (root / split).is_dir():
            data_format = "imagefolder"
        else:
            raise EvalDataError(f"zeroshot: {root / split} not found; expected {LAYOUT}. Nothing is downloaded: "
                                f"place the data there")
    if data_format == "wds":
        images, labels, classnames = load_wds(root, split, cache_dir)
    elif data_format == "imagefolder":
        images, labels, classnames = load_imagefolder(root, split)
    else:
        raise EvalDataError(f"unknown zero-shot data_format {data_format!r}; expected auto, wds or imagefolder")
    if templates is not None:
        templates, source = list(templates), "argument"
        for template in templates:
            if "{c}" not in template:
                raise EvalDataError(f"template {template!r} has no {{c}} placeholder")
        if not templates:
            raise EvalDataError("templates= is empty; pass None to use the dataset's or the default templates")
    elif (root / TEMPLATES_FILE).is_file():
        templates, source = read_templates(root / TEMPLATES_FILE), str(root / TEMPLATES_FILE)
    else:
        templates, source = list(DEFAULT_TEMPLATES), "default (OpenAI 7-template ensemble + 'a photo of a {c}.')"
    return ZeroShotSet(images, labels, classnames, templates,
                       meta={"format": data_format, "split": split, "templates_source": source})


def evaluate(scorer, root, split: str = "test", templates: Optional[Sequence[str]] = None,
             data_format: str = "auto", cache_dir=None, ks: Sequence[int] = (1, 5),
             tie_policy: str = "official") -> dict:
    """``classification_metrics`` for ``scorer`` (``image_features``/``text_features``) on a zero-shot set,
    plus ``protocol`` (``PROTOCOL`` with this run's split, templates and tie policy)."""
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")
    data = load(root, split, templates, data_format, cache_dir)
    prompts = class_prompts(data.classnames, data.templates)
    text = scorer.text_features([p for row in prompts for p in row])
    classifier = zeroshot_classifier([torch.stack([text[p] for p in row]) for row in prompts])
    feats = scorer.image_features(data.images)
    logits = zeroshot_logits(torch.stack([feats[r] for r in data.images]), classifier)
    result = classification_metrics(logits, torch.tensor(data.labels), ks, tie_policy)
    result["protocol"] = {**PROTOCOL, "tie_policy": TIE_RULES[tie_policy], "split": split, "format": data.meta["format"],
                          "templates_source": data.meta["templates_source"], "n_templates": len(data.templates)}
    return result
