"""``python -m open_clip_align.eval.fetch NAME... --dest DIR``: the opt-in benchmark data fetcher.

Nothing else in the suite opens a connection: loaders, the evaluation CLI and the tests read local files only.
This command, and only when typed, downloads each named benchmark from its official source (pinned commits and
revisions) into exactly the layout its adapter reads, ``DIR/<NAME>/``, so ``--data-root DIR`` then finds it.

- The licence note, every URL, its size and its checksum are printed before the first byte; a benchmark whose data
  licence could not be verified needs ``--accept-licence NAME``.
- Downloads resume (HTTP Range) from ``DIR/.partial/`` after an interruption: rerun the same command. A finished
  file is verified, then renamed into place: a file in the layout is never half-written.
- Checksums: the official one where the source publishes it (git blob ids of GitHub files at a pinned commit, the
  Hub's sha256 of LFS files, md5s from torchvision, sha256s from the spec); otherwise the sha256 is recorded on the
  first fetch in ``DIR/<NAME>/MANIFEST.json`` (printed as unverified) and every later download must match it. A
  mismatch deletes the file and stops.
- Archives are kept in ``DIR/.downloads/`` and extracted through a temporary folder (no member may leave it);
  COCO val2017, used by several benchmarks, is extracted once into ``DIR/.shared/`` and linked.
- Data behind a browser (Google Drive, SharePoint) or a token (gated Hugging Face datasets) is never fetched: exact
  manual steps are printed, and the command exits with status 3 when such steps remain.
- ``--base-url URL`` (or ``$OPEN_CLIP_ALIGN_FETCH_BASE_URL``) replaces the scheme and host of every URL, keeping
  the path, to use a mirror (Hugging Face files need a Hub-compatible mirror).
- ``--dry-run`` lists what would be fetched and writes nothing.

Downloads use ``huggingface_hub``: ``get_hf_file_metadata`` resolves a Hub revision to its commit and published
hash, ``file_download.http_get`` streams any URL with Range resume, retries and a tqdm progress bar.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import UserError

PROG = "python -m open_clip_align.eval.fetch"
BASE_URL_ENV = "OPEN_CLIP_ALIGN_FETCH_BASE_URL"
MANIFEST = "MANIFEST.json"
DOWNLOADS, SHARED, PARTIAL = ".downloads", ".shared", ".partial"
MANUAL_EXIT = 3
HUB = "https://huggingface.co"
CHUNK = 1 << 20


class FetchError(UserError):
    """A download, checksum, extraction or flag problem, in one line naming the file or flag."""


@dataclass(frozen=True)
class HubFile:
    """A file of a Hugging Face dataset repository at ``revision`` (a commit pins it; a branch is resolved to its
    commit on the first fetch, which is recorded and reused)."""

    repo: str
    filename: str
    revision: str = "main"

    def url(self, revision: Optional[str] = None) -> str:
        return f"{HUB}/datasets/{self.repo}/resolve/{revision or self.revision}/{quote(self.filename)}"


@dataclass(frozen=True)
class Source:
    """One downloaded file. ``path``: where it lands under ``DIR/<name>/`` (plain files) or its name in
    ``DIR/.downloads/`` (archives). ``checksum``: ``"sha256:<hex>"``, ``"md5:<hex>"``, ``"git_blob:<sha1>"`` or None
    (recorded on first fetch). Archives (``unpack`` zip, tar, tar.gz) are extracted with ``strip_prefix`` removed
    from member names and ``into`` prepended; ``shared`` names a folder of ``DIR/.shared/`` that several benchmarks
    link to instead of extracting again."""

    url: str
    path: str
    checksum: Optional[str] = None
    size: Optional[int] = None
    unpack: Optional[str] = None
    into: str = ""
    strip_prefix: str = ""
    shared: Optional[str] = None
    hub: Optional[HubFile] = None


@dataclass(frozen=True)
class Benchmark:
    """Everything the fetcher knows about one benchmark: its licence note, its sources, the manual steps for the
    rest, and optional steps after the download (``expand``: more sources read from a fetched file; ``post``:
    turn fetched files into the adapter's layout)."""

    name: str
    licence: str
    sources: Tuple[Source, ...] = ()
    manual: str = ""
    licence_verified: bool = True
    expand: Optional[Callable[[Path, "Source"], List[Source]]] = None
    post: Optional[Callable[[Path], None]] = None
    layout: str = ""


# ---------------------------------------------------------------------------------------------- sources


def _hub(repo: str, filename: str, path: Optional[str] = None, revision: str = "main", **kw) -> Source:
    hub = HubFile(repo, filename, revision)
    return Source(url=hub.url(), path=path or filename, hub=hub, **kw)


COCO_VAL2017 = Source("http://images.cocodataset.org/zips/val2017.zip", "val2017.zip",
                      "md5:442b8da7639aecaf257c1dceb8ba8c80", 815585330, unpack="zip", shared="coco_val2017")
COCO_VAL2014 = Source("http://images.cocodataset.org/zips/val2014.zip", "val2014.zip", unpack="zip",
                      shared="coco_val2014")
KARPATHY = "https://storage.googleapis.com/sfr-vision-language-research/datasets"
SUGARCREPE_COMMIT = "0047054b243992f0fad63d6f64f7544862daf846"
SUGARCREPE_BLOBS = {  # git blob id, bytes at SUGARCREPE_COMMIT (read from the repository's tree)
    "add_att": ("71c463725f3f9bae0a9227a01ae5d431db235396", 158863),
    "add_obj": ("289b22a04690f6f542bb048346021d768ec9b24d", 484593),
    "replace_att": ("6393e04971c06cb62a8fed62ef2805ff6c7c5666", 176843),
    "replace_obj": ("1585a4a6998d785c043fb923d8e0248436d9da51", 361126),
    "replace_rel": ("8716359e17fa36d37e75c6eff5e94826cdb047e5", 312629),
    "swap_att": ("375fdd6d372e22e43c0dfbe898c1ec1494016b8c", 154665),
    "swap_obj": ("db5abe6b488fa38c4b67d1d3da87b6b5c2e1e626", 57569)}
SCPP_COMMIT = "c083bbf039a5ca215acaf25e7ee736d2ea6f3864"
SCPP_SHA256 = {  # benchmarks_2026.md §10, recomputed from the repository's blobs
    "replace_att": ("6826413592894754eeca02aeebbcbbc8b95a7456998abcc714e71c033ce6fe87", 226275),
    "replace_obj": ("5c6dc499ec8f511a8aa4ec1b7b5eb0eca90317488abe36ec39573355e2d361ab", 456601),
    "replace_rel": ("040fb95d3f0619bf515db60879e99709a87a5e9b4f524ec3403b127243480fd4", 392738),
    "swap_att": ("450d0fd9fcad3e6f44950dc634e7f901ab1c6d9c60a569ade5ae8ffb3d203ad8", 198206),
    "swap_obj": ("5f33cae824de431a7ecd3c5de6301f689815f9497aa36d96b154bbaf117b201b", 74611)}
VALSE_COMMIT = "2152d90d4aecd11f7f74cf03420abcb63efff9c5"
VALSE_BLOBS = {
    "existence": ("b3a65479f36ddc60f419c243a14da1fbfcba71db", 420403),
    "plurals": ("040fc8c011599574d38ca8ef46376bac5e4204a1", 1097122),
    "counting-hard": ("80db438e1c27393a7d90217cfd52d4be96484154", 537197),
    "counting-small-quant": ("8458f64b94d02275d2d270781000b79aab964b6c", 534996),
    "counting-adversarial": ("72f5ac7a2c45a59a58c44f9d80cbc555324c3cb2", 407394),
    "relations": ("b3f0a30d41ecd3eec6e36a253ba4de00621eae41", 664587),
    "action-replacement": ("7ba2fd2c2039b82755eef5c16283161063759124", 664129),
    "actant-swap": ("6ca5b8ea4031c953a8a2de4a5e06377a5a11ba17", 503017),
    "coreference-standard": ("3dc00f694e14d52f3534e9180e0e2900e5a4d952", 592329),
    "coreference-hard": ("7db2ec7b4b2a02723f4dd3c3e14c81f23e456cc8", 95649),
    "foil-it": ("1f2f1c30631c52b98be3bd2383d40dbe855ba908", 538911)}
CREPE_COMMIT = "1fa81c425f442396fe304f170c8eb6dc0747c814"
SPEC_REVISION = "694dfdc74fe72acdc932fd5fc919b6b0268f7a07"
DRIVE = "https://drive.google.com/file/d/{}/view"
WHATSUP_DRIVE = {  # gdown ids in amitakamath/whatsup_vlms@7c1f255 dataset_zoo/aro_datasets.py
    "controlled_images_dataset.json": "1ap8mmmpQjLIjPGuplkpBgc1hoEHCj4hm",
    "controlled_clevr_dataset.json": "1unNNosLbdy9NDjgj4l8fsQP3WiAAGA6z",
    "controlled_images.tar.gz (extract: controlled_images/)": "19KGYVQjrV3syb00GgcavB2nZTW5NXX0H",
    "controlled_clevr.tar.gz (extract: controlled_clevr/)": "13jdBpg8t3NqW3jrL6FK8HO93vwsUjDxG",
    "coco_qa_one_obj.json": "1RsMdpE9mmwnK4zzMPpC1-wTU_hNis-dq",
    "coco_qa_two_obj.json": "1TCEoM0mgFmz8T4cF7PQ3XJmO6JjtiQ-s",
    "vg_qa_one_obj.json": "1ARMRzRdohs9QTr1gpIfzyUzvW20wYp_p",
    "vg_qa_two_obj.json": "1sjVG5O3QMY8s118k7kQM8zzDZH12i_95",
    "vg_images.tar.gz (extract: vg_images/)": "1idW7Buoz7fQm4-670n-oERw9U-2JLJvE"}
ARO_DRIVE = {  # gdown ids in mertyg/vision-language-models-are-bows dataset_zoo/aro_datasets.py
    "visual_genome_relation.json": "1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3",
    "visual_genome_attribution.json": "13tWvOrNOLHxl3Rm9cR3geAdHx2qR3-Tw",
    "vgr_vga_images.zip (unzip here: images/)": "1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9"}


def _drive_steps(name: str, files: Dict[str, str]) -> str:
    lines = [f"Google Drive (needs a browser, or `pip install gdown` and `gdown <id>`); put into DIR/{name}/:"]
    lines += [f"  {target}: {DRIVE.format(file_id)}" for target, file_id in files.items()]
    return "\n".join(lines)


def _mmvp_images(root: Path, questions: Source) -> List[Source]:
    """MMVP-VLM's 270 images, listed from the fetched ``Questions.csv``: ``MLLM_VLM Images/<Type>/<qid>.jpg``."""
    import csv

    path = root / questions.path
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 3:
        raise FetchError(f"{path}: expected a CSV with columns Question ID, Type, Statement")
    revision = questions.hub.revision
    return [_hub("MMVP/MMVP_VLM", f"MLLM_VLM Images/{row[1].strip()}/{row[0].strip()}.jpg", revision=revision)
            for row in rows[1:] if len(row) >= 3 and row[0].strip().isdigit()]


def _bivlc_extract(root: Path) -> None:
    """The parquet shards (kept unchanged under ``data/``) → ``images/`` + ``test.jsonl`` (``bivlc.LAYOUT``)."""
    from . import bivlc

    if (root / bivlc.ANNOTATIONS).is_file():
        return
    shards = sorted((root / "data").glob("test-*.parquet"))
    tmp = Path(tempfile.mkdtemp(prefix="bivlc-", dir=root))
    try:
        count = bivlc.write_extracted(bivlc.parquet_rows(shards), tmp)
        print(f"  extracted {count} rows: {bivlc.ANNOTATIONS} + images/")
        _replace_tree(tmp / "images", root / "images")
        os.replace(tmp / bivlc.ANNOTATIONS, root / bivlc.ANNOTATIONS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("sugarcrepe", "SugarCrepe code and data: MIT (RAIVNLab/sugar-crepe LICENSE); COCO val2017 images: "
              "Flickr terms of use, annotations CC BY 4.0",
              tuple(Source(f"https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/{SUGARCREPE_COMMIT}/data/"
                           f"{subset}.json", f"{subset}.json", f"git_blob:{blob}", size)
                    for subset, (blob, size) in SUGARCREPE_BLOBS.items()) + (COCO_VAL2017,)),
    Benchmark("sugarcrepe_pp", "SugarCrepe++ data: CC BY 4.0, code MIT (Sri-Harsha/scpp README); COCO val2017 "
              "images: Flickr terms of use",
              tuple(Source(f"https://raw.githubusercontent.com/Sri-Harsha/scpp/{SCPP_COMMIT}/data/{subset}.json",
                           f"data/{subset}.json", f"sha256:{sha}", size) for subset, (sha, size) in SCPP_SHA256.items())
              + (COCO_VAL2017,)),
    Benchmark("aro", "ARO code: MIT (mertyg/vision-language-models-are-bows LICENSE); Visual Genome, COCO and "
              "Flickr30k images under their own terms; Karpathy splits as distributed by BLIP",
              (Source(f"{KARPATHY}/coco_karpathy_test.json", "coco_karpathy_test.json"),
               Source(f"{KARPATHY}/flickr30k_test.json", "flickr30k_test.json"), COCO_VAL2014),
              manual=_drive_steps("aro", ARO_DRIVE) + "\nFlickr30k images (Flickr-Order) need a sign-up: "
                     "https://forms.illinois.edu/sec/229675 ; extract flickr30k-images/ into DIR/aro/"),
    Benchmark("valse", "VALSE code and annotations: MIT (Heidelberg-NLP/VALSE LICENSE); images under their "
              "sources' terms",
              tuple(Source(f"https://raw.githubusercontent.com/Heidelberg-NLP/VALSE/{VALSE_COMMIT}/data/{name}.json",
                           f"{name}.json", f"git_blob:{blob}", size) for name, (blob, size) in VALSE_BLOBS.items()),
              manual="VALSE images come from Visual7W, COCO 2014/2017, SWiG, VisDial v1.0 and FOIL (each behind its "
                     "own terms; links in https://github.com/Heidelberg-NLP/VALSE#data): put each under "
                     "DIR/valse/images/<dataset field>/ (see `python -m open_clip_align.eval --help`, valse layout)"),
    Benchmark("winoground", "Winoground: gated on Hugging Face (accept its terms); see the dataset card",
              manual="Gated Hugging Face dataset facebook/winoground (the fetcher never handles tokens):\n"
                     "  1. accept the terms at https://huggingface.co/datasets/facebook/winoground\n"
                     "  2. hf auth login\n"
                     "  3. hf download facebook/winoground --repo-type dataset --include 'data/*' --local-dir "
                     "DIR/winoground/hf\n"
                     "  4. mv DIR/winoground/hf/data/examples.jsonl DIR/winoground/ && unzip "
                     "DIR/winoground/hf/data/images.zip -d DIR/winoground/ (images must end up at "
                     "DIR/winoground/images/<image>.png)"),
    Benchmark("retrieval", "COCO images: Flickr terms of use; Karpathy splits as distributed by BLIP (Salesforce)",
              (Source(f"{KARPATHY}/coco_karpathy_test.json", "coco_karpathy_test.json"),
               Source(f"{KARPATHY}/flickr30k_test.json", "flickr30k_test.json"), COCO_VAL2014),
              manual="Flickr30k images need a sign-up: https://forms.illinois.edu/sec/229675 ; extract "
                     "flickr30k-images/ into DIR/retrieval/ (COCO runs without it)"),
    Benchmark("whatsup", "WhatsUp code: MIT; the data licence is UNVERIFIED",
              (COCO_VAL2017,), licence_verified=False,
              manual=_drive_steps("whatsup", WHATSUP_DRIVE) + "\n(COCO-spatial reads DIR/whatsup/val2017/, fetched "
                     "here; GQA-spatial reads DIR/whatsup/vg_images/)"),
    Benchmark("eqben", "EqBen code: Apache-2.0; the data licence is UNVERIFIED",
              manual="EqBen is on Google Drive / SharePoint only (links in https://github.com/Wangt-CN/EqBen#data): "
                     "download the 'light' jpg images and the annotation JSON into DIR/eqben/ (one folder per subset, "
                     "e.g. eqbenkubric_attr/, eqbenyoucook2/ with .npy frames)"),
    Benchmark("mmvp_vlm", "MMVP-VLM: MIT (Hugging Face MMVP/MMVP_VLM)",
              (_hub("MMVP/MMVP_VLM", "Questions.csv"),), expand=_mmvp_images),
    Benchmark("spec", "SPEC: the licence is stated neither on Hugging Face nor in the repository (UNVERIFIED)",
              (_hub("wjpoom/SPEC", "data.zip", revision=SPEC_REVISION, unpack="zip", strip_prefix="data/"),),
              licence_verified=False),
    Benchmark("negbench", "NegBench code: MIT (m1k2zoo/negbench LICENSE); COCO and VOC2007 images: Flickr terms",
              (COCO_VAL2017,
               Source("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
                      "VOCtest_06-Nov-2007.tar", "md5:b6e924de25625d8de591ea690078ad9f", unpack="tar")),
              manual="NegBench's CSVs are in a Google Drive folder: "
                     "https://drive.google.com/drive/folders/1kSEq0mkV1t1T8GuOAM65iz_iAA7e5gxB ; put "
                     "COCO_val_mcq_llama3.1_rephrased.csv, VOC2007_mcq_llama3.1_rephrased.csv, COCO_val_retrieval.csv "
                     "and COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv into DIR/negbench/ unchanged "
                     "(their image paths are matched by their trailing part under DIR/negbench/)"),
    Benchmark("bivlc", "BiVLC: MIT (IMirandaM/BiVLC LICENSE; HF dataset card); images: COCO val2017 (Flickr terms) "
              "and generated",
              tuple(_hub("imirandam/BiVLC", f"data/test-0000{k}-of-00002.parquet") for k in range(2)),
              post=_bivlc_extract),
    Benchmark("colorswap", "ColorSwap: MIT (Top34051/colorswap LICENSE)",
              manual=_drive_steps("colorswap", {"the zip (data/test.json, data/images.zip)":
                                                "1xdG94DQdz_eQVH1lrEeaHVz_BNkrVgb5"})
              + "\nthen: test.json into DIR/colorswap/ and images.zip extracted there (images/img_0_1.png, ...). The "
                "Hugging Face copy stanfordnlp/colorswap asks for a token (gated): not fetched"),
    Benchmark("crepe", "CREPE: the repository has no licence file (UNVERIFIED); Visual Genome images CC BY 4.0",
              tuple(Source(f"https://github.com/RAIVNLab/CREPE/raw/{CREPE_COMMIT}/data/{kind}_hard_negatives.zip",
                           f"crepe_{kind}_hard_negatives.zip", f"git_blob:{blob}", unpack="zip",
                           into=f"{kind}_hard_negatives", strip_prefix=f"{kind}_hard_negatives/")
                    for kind, blob in (("prod", "e73068643923319ab8bd38a43404a34221d41b41"),
                                       ("syst", "54eebe3a52eaacd978a08f2a5c1aaa7e53b82b4b"))),
              licence_verified=False,
              manual="Visual Genome images (VG_100K/, VG_100K_2/): https://homes.cs.washington.edu/~ranjay/"
                     "visualgenome/api.html or the CREPE README's Drive folder "
                     "https://drive.google.com/drive/folders/11dMtJByk7zmbQjV47PXVwfmakN3Gr5Ic ; put both folders "
                     "into DIR/crepe/"),
)}


# ---------------------------------------------------------------------------------------------- checksums


def digest(path, algorithm: str) -> str:
    """Hex digest of the file at ``path``: ``sha256``, ``md5``, ``sha1`` or ``git_blob`` (git's object id:
    sha1 of ``b"blob <size>\\0"`` + the bytes)."""
    path = Path(path)
    if algorithm == "git_blob":
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check(path, checksum: str) -> Optional[str]:
    """None if ``path`` matches ``checksum`` (``"<algorithm>:<hex>"``), else what was found instead."""
    algorithm, _, expected = checksum.partition(":")
    found = digest(path, algorithm)
    return None if found == expected.lower() else f"{algorithm} {found}, expected {expected}"


def hub_checksum(etag: Optional[str]) -> Optional[str]:
    """The Hub's published hash of a file from its ETag: sha256 for LFS/Xet files (64 hex), git blob id otherwise
    (40 hex); None for anything else (e.g. a mirror's own ETag)."""
    etag = (etag or "").strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return f"sha256:{etag}"
    if re.fullmatch(r"[0-9a-f]{40}", etag):
        return f"git_blob:{etag}"
    return None


# ---------------------------------------------------------------------------------------------- files


def rebase(url: str, base_url: Optional[str]) -> str:
    """``url`` with the scheme and host (and a path prefix) of ``base_url``, the path kept."""
    if not base_url:
        return url
    base, parts = urlsplit(base_url), urlsplit(url)
    if not base.scheme or not base.netloc:
        raise FetchError(f"--base-url {base_url}: expected scheme://host[:port][/prefix]")
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        return {"files": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FetchError(f"{path}: not valid JSON ({err}); remove it to start this benchmark's record afresh") from None
    manifest.setdefault("files", {})
    return manifest


def _replace_tree(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing what a previous, interrupted extraction left there."""
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)


def _member_path(name: str, source: Source) -> Optional[PurePosixPath]:
    """Where an archive member goes, relative to the extraction folder (``strip_prefix`` removed, ``into``
    prepended); None for folders' own entries and macOS metadata. A path leaving the folder is refused."""
    if name.startswith("__MACOSX/") or PurePosixPath(name).name == ".DS_Store":
        return None
    if source.strip_prefix and name.startswith(source.strip_prefix):
        name = name[len(source.strip_prefix):]
    if not name.strip("/"):
        return None
    path = PurePosixPath(source.into, name) if source.into else PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise FetchError(f"{source.path}: archive member {name!r} would be written outside the extraction folder")
    return path


def extract(archive: Path, source: Source, out: Path) -> int:
    """Extract ``archive`` into the folder ``out`` (members renamed by ``_member_path``); returns the file count.
    Only regular files and folders are written (links and devices in a tar are refused)."""
    count = 0
    if source.unpack == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = _member_path(info.filename, source)
                if target is None or info.is_dir():
                    continue
                (out / target).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, (out / target).open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                count += 1
        return count
    mode = {"tar": "r:", "tar.gz": "r:gz"}.get(source.unpack)
    if mode is None:
        raise FetchError(f"{source.path}: unknown archive type {source.unpack!r}")
    with tarfile.open(archive, mode) as tf:
        for member in tf:
            target = _member_path(member.name, source)
            if target is None or member.isdir():
                continue
            if not member.isfile():
                raise FetchError(f"{source.path}: archive member {member.name!r} is a link or device; refused")
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src, (out / target).open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            count += 1
    return count


# ---------------------------------------------------------------------------------------------- fetching


@dataclass
class Run:
    """One command's settings and counters."""

    dest: Path
    base_url: Optional[str] = None
    dry_run: bool = False
    accepted: Tuple[str, ...] = ()
    manual: List[str] = field(default_factory=list)


def _size(n: Optional[int]) -> str:
    """``"815.6 MB"``-style size, or "size unknown"."""
    if n is None:
        return "size unknown"
    if n < 1000:
        return f"{n} B"
    exponent = min(3, (len(str(n)) - 1) // 3)
    return f"{n / 1000 ** exponent:.1f} {('KB', 'MB', 'GB')[exponent - 1]}"


def _hub_resolve(source: Source, record: Optional[dict], run: Run) -> Source:
    """Pin a Hub file: the revision recorded on the first fetch, else the Hub's answer for the named revision
    (its commit, size and published hash, through ``huggingface_hub.get_hf_file_metadata``)."""
    from huggingface_hub import get_hf_file_metadata

    revision = (record or {}).get("revision") or source.hub.revision
    url = rebase(source.hub.url(revision), run.base_url)
    try:
        meta = get_hf_file_metadata(url, token=False)
    except Exception as err:  # huggingface_hub raises its own HTTP/offline errors
        raise FetchError(f"{url}: {_reason(err)}") from None
    commit = meta.commit_hash or (revision if re.fullmatch(r"[0-9a-f]{40}", revision) else None)
    if commit is None:
        raise FetchError(f"{url}: the server gave no X-Repo-Commit header, so revision {revision!r} cannot be pinned "
                         f"(is --base-url a Hugging Face-compatible mirror?)")
    hub = replace(source.hub, revision=commit)
    return replace(source, url=hub.url(), hub=hub, size=meta.size if meta.size is not None else source.size,
                   checksum=source.checksum or hub_checksum(meta.etag))


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]


def _download(url: str, part: Path, size: Optional[int], label: str) -> None:
    """Stream ``url`` into ``part``, resuming from its current length (HTTP Range)."""
    from huggingface_hub.file_download import http_get

    part.parent.mkdir(parents=True, exist_ok=True)
    resume = part.stat().st_size if part.exists() else 0
    if size is not None and resume > size:
        part.unlink()
        resume = 0
    if resume:
        print(f"    resuming at byte {resume:,}")
    with part.open("ab") as f:
        http_get(url, f, resume_size=resume, expected_size=size, displayed_filename=label)


def _verify(path: Path, source: Source, record: Optional[dict]) -> Tuple[str, str]:
    """``(sha256, how it was verified)``; raises FetchError (after deleting ``path``) on any mismatch."""
    problems = []
    if source.size is not None and path.stat().st_size != source.size:
        problems.append(f"{path.stat().st_size:,} bytes, expected {source.size:,}")
    if source.checksum and not problems:
        problem = check(path, source.checksum)
        if problem:
            problems.append(problem)
    sha256 = digest(path, "sha256") if not problems else ""
    recorded = (record or {}).get("sha256")
    if not problems and not source.checksum and recorded and recorded != sha256:
        problems.append(f"sha256 {sha256}, but {recorded} was recorded on the first fetch")
    if problems:
        path.unlink(missing_ok=True)
        raise FetchError(f"{source.url}: checksum mismatch ({problems[0]}); the file was deleted")
    if source.checksum:
        return sha256, f"{source.checksum.split(':')[0]} published by the source"
    return sha256, "sha256 recorded on the first fetch (unverified)" if not recorded else "matches the first fetch"


def _place(source: Source, archive: Path, root: Path, run: Run) -> None:
    """Extract an archive into ``root`` (through a temporary folder), or link its shared extraction."""
    if source.shared:
        shared = run.dest / SHARED / source.shared
        if not shared.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f"{source.shared}-", dir=_mkdir(run.dest / PARTIAL)))
            try:
                print(f"    extracted {extract(archive, source, tmp):,} files into {shared}")
                os.replace(tmp, _mkdir(shared.parent) / shared.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        for entry in sorted(shared.iterdir()):
            link = root / entry.name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.relpath(entry, root), target_is_directory=entry.is_dir())
                print(f"    linked {link} -> {entry}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=_mkdir(run.dest / PARTIAL)))
    try:
        count = extract(archive, source, tmp)
        for entry in sorted(tmp.iterdir()):
            _replace_tree(entry, root / entry.name)
        print(f"    extracted {count:,} files into {root}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _present(source: Source, root: Path, record: Optional[dict], run: Run) -> bool:
    """True when a previous run completed ``source`` (recorded in the manifest) and its result is still there."""
    if not (record or {}).get("complete"):
        return False
    if not source.unpack:
        target = root / source.path
        return target.is_file() and target.stat().st_size == record["bytes"]
    if source.shared:
        return (run.dest / SHARED / source.shared).is_dir()
    return not source.into or (root / source.into).is_dir()


def _fetch_source(source: Source, root: Path, manifest: dict, run: Run) -> None:
    """Download (resuming), verify and place one source; its record in ``manifest`` (keyed by the URL the benchmark
    declares) is written once it is complete."""
    key = source.url
    record = manifest["files"].get(key)
    if not run.dry_run and _present(source, root, record, run):
        print(f"  {key}\n    present (recorded in {MANIFEST})")
        if source.shared:
            _place(source, run.dest / DOWNLOADS / source.path, root, run)
        return
    if source.hub is not None and not run.dry_run:
        source = _hub_resolve(source, record, run)
    url = rebase(source.url, run.base_url)
    target = run.dest / DOWNLOADS / source.path if source.unpack else root / source.path
    how = source.checksum or "no published checksum: sha256 recorded on the first fetch"
    print(f"  {url}\n    -> {target} ({_size(source.size)}; {how})")
    if source.unpack:
        print(f"    extracted into {run.dest / SHARED / source.shared} and linked from {root}" if source.shared
              else f"    extracted into {root / source.into}")
    if run.dry_run:
        return
    if target.is_file():
        sha256, verified = _verify(target, source, record)
    else:
        part = run.dest / PARTIAL / f"{source.path}.part"
        try:
            _download(url, part, source.size, PurePosixPath(source.path).name)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # network and HTTP errors from huggingface_hub / httpx
            if part.exists() and not part.stat().st_size:
                part.unlink()
            kept = f"; {part.stat().st_size:,} bytes kept in {part}: rerun to resume" if part.exists() else ""
            raise FetchError(f"{url}: download failed ({_reason(err)}){kept}") from None
        sha256, verified = _verify(part, source, record)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
    print(f"    verified: {verified}")
    if source.unpack:
        _place(source, target, root, run)
    manifest["files"][key] = {
        "url": url, "path": str(target.relative_to(run.dest)), "revision": source.hub.revision if source.hub else None,
        "bytes": target.stat().st_size, "sha256": sha256, "checksum": source.checksum, "verified": verified,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": True}
    _write_json(root / MANIFEST, manifest)


def fetch_benchmark(bench: Benchmark, run: Run) -> None:
    """Print the licence and every source, then (unless ``run.dry_run``) fetch them into ``run.dest/<name>``."""
    root = run.dest / bench.name
    note = "" if bench.licence_verified else f" (pass --accept-licence {bench.name} to fetch it)"
    print(f"\n== {bench.name} -> {root}\nlicence: {bench.licence}{note}")
    if not bench.licence_verified and bench.sources and not run.dry_run and bench.name not in run.accepted:
        raise FetchError(f"{bench.name}: the data licence is unverified ({bench.licence}); read it at the source "
                         f"and pass --accept-licence {bench.name} to fetch")
    manifest = _read_manifest(root) if not run.dry_run else {"files": {}}
    if not run.dry_run:
        root.mkdir(parents=True, exist_ok=True)
        manifest["benchmark"] = bench.name
    pending = list(bench.sources)
    while pending:
        source = pending.pop(0)
        _fetch_source(source, root, manifest, run)
        if bench.expand is not None and source is bench.sources[0]:
            if run.dry_run:
                print(f"  ... and the files listed in {source.path}")
            else:
                resolved = _pinned(source, manifest)
                pending.extend(bench.expand(root, resolved))
    if bench.post is not None and not run.dry_run:
        bench.post(root)
    if bench.manual:
        print("manual steps (not fetched):\n" + "\n".join(f"  {line}" for line in bench.manual.splitlines()))
        run.manual.append(bench.name)


def _pinned(source: Source, manifest: dict) -> Source:
    """``source`` at the revision recorded for it (Hub files: the commit its branch resolved to)."""
    record = manifest["files"].get(source.url, {})
    if source.hub is None or not record.get("revision"):
        return source
    return replace(source, hub=replace(source.hub, revision=record["revision"]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", metavar="NAME", help=f"benchmarks to fetch: {', '.join(BENCHMARKS)}")
    p.add_argument("--dest", type=Path, required=True, help="root folder: NAME lands in DEST/NAME (--data-root DEST)")
    p.add_argument("--base-url", default=None,
                   help=f"mirror: replaces scheme and host of every URL, keeps the path (default: ${BASE_URL_ENV})")
    p.add_argument("--dry-run", action="store_true", help="list what would be fetched; write nothing")
    p.add_argument("--accept-licence", nargs="+", default=[], metavar="NAME",
                   help="fetch these benchmarks although their data licence is unverified (read it first)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry (``open-clip-align-fetch``): one line and exit status 2 on an error, 3 when manual steps
    remain, 130 on Ctrl-C (partial downloads are kept for a rerun)."""
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"argument NAME: unknown benchmark {unknown[0]!r}; expected one of {', '.join(BENCHMARKS)}")
    bad = [n for n in args.accept_licence if n not in args.names]
    if bad:
        parser.error(f"argument --accept-licence: {bad[0]!r} is not among the benchmarks to fetch")
    base_url = args.base_url or os.environ.get(BASE_URL_ENV) or None
    run = Run(dest=args.dest, base_url=base_url, dry_run=args.dry_run, accepted=tuple(args.accept_licence))
    try:
        rebase("http://x/", base_url)
        if args.dest.exists() and not args.dest.is_dir():
            raise FetchError(f"--dest {args.dest}: not a folder")
        if not args.dry_run:
            from huggingface_hub import constants
            if constants.HF_HUB_OFFLINE:
                raise FetchError("HF_HUB_OFFLINE is set: huggingface_hub (which downloads here) refuses every "
                                 "connection; unset it for this command")
        for name in dict.fromkeys(args.names):
            fetch_benchmark(BENCHMARKS[name], run)
    except UserError as err:  # FetchError, and EvalDataError from a post step (e.g. BiVLC without pyarrow)
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; partial downloads stay in {args.dest / PARTIAL}: rerun to resume",
              file=sys.stderr)
        sys.exit(130)
    if args.dry_run:
        print("\ndry run: nothing was written" + (f"; manual steps listed for {', '.join(run.manual)}"
                                                  if run.manual else ""))
    elif run.manual:
        print(f"\n{len(run.manual)} benchmark(s) need manual steps (above): {', '.join(run.manual)}")
        sys.exit(MANUAL_EXIT)


if __name__ == "__main__":
    main()
