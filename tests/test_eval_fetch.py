"""The opt-in data fetcher against a local HTTP server (a thread on 127.0.0.1): fixture files and archives into
the adapters' layouts, Range resume after a dropped connection (within a call and across runs), published and
first-fetch checksums (a mismatch deletes the file), Hub revision pinning, the licence gate, --dry-run, nothing
written outside DIR, and no connection from any other eval module."""
import ast
import hashlib
import http.server
import io
import json
import os
import runpy
import socket
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from conftest import REPO
from open_clip_align.eval import crepe, fetch, sugarcrepe

COMMIT = "c0ffee" + "0" * 34


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.drops, self.log = {}, {}, []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_port}"


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) with Range support; ``server.drops[path] = (n, at)`` closes the next n
    full-file responses after ``at`` bytes. Paths under /datasets/<repo>/resolve/<rev>/ answer like the Hub: any
    revision resolves to COMMIT, with the sha256 as X-Linked-Etag."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve()

    def _serve(self, head=False):
        path = unquote(self.path)
        hub = path.startswith("/datasets/") and "/resolve/" in path
        key = path
        if hub:  # /datasets/org/repo/resolve/<rev>/file: every revision serves the same bytes
            prefix, _, rest = path.partition("/resolve/")
            key = f"{prefix}/resolve/{rest.split('/', 1)[1]}"
        self.server.log.append((self.command, path, self.headers.get("Range")))
        data = self.server.files.get(key)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        if hub:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.end_headers()
        if head:
            return
        count, at = self.server.drops.get(key, (0, 0))
        if count and not start:
            self.server.drops[key] = (count - 1, at)
            self.wfile.write(data[:at])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server(monkeypatch):
    from huggingface_hub import constants, file_download

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets offline mode for every other test
    monkeypatch.setattr(file_download.time, "sleep", lambda seconds: None)  # http_get's pause between retries
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(red):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (red, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _git_blob(data):
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def _run(*argv):
    """``fetch.main`` in-process: its exit status (0 when it returns)."""
    try:
        fetch.main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code
    return 0


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def _real(name, **checksums):
    """The real benchmark definition with the fixtures' checksums (same URLs, layout and archive handling)."""
    bench = fetch.BENCHMARKS[name]
    return replace(bench, sources=tuple(replace(s, checksum=checksums.get(s.path, s.checksum), size=None)
                                        for s in bench.sources))


def test_fetches_into_the_adapter_layouts_and_reruns_download_nothing(server, tmp_path, monkeypatch, capsys):
    """SugarCrepe (JSON with git blob ids, COCO val2017 shared and linked) and CREPE (zipped CSVs) through their
    real definitions; their loaders then read the result."""
    image = _png(0)
    coco = _zip({"val2017/000000000139.jpg": image})
    swap = json.dumps({"0": {"filename": "000000000139.jpg", "caption": "a dog on a mat",
                             "negative_caption": "a mat on a dog"}}).encode()
    csv_text = b"image_id,caption,x,y,width,height,hard_negs\n1,a dog,0,0,4,4,\"['a cat']\"\n"
    prod = _zip({"prod_hard_negatives/atom/prod_vg_hard_negs_atom_complexity_4.csv": csv_text,
                 "__MACOSX/._junk": b"x"})
    syst = _zip({"syst_vg_hard_negs_seen_compounds_in_laion.csv": csv_text})  # no top folder: placed all the same
    crepe_raw = f"/RAIVNLab/CREPE/raw/{fetch.CREPE_COMMIT}/data"
    server.files.update({"/zips/val2017.zip": coco, f"{crepe_raw}/prod_hard_negatives.zip": prod,
                         f"{crepe_raw}/syst_hard_negatives.zip": syst})
    sc = fetch.BENCHMARKS["sugarcrepe"]
    for source in sc.sources[:-1]:
        server.files[source.url.split("githubusercontent.com")[1]] = swap
    coco_md5 = f"md5:{hashlib.md5(coco).hexdigest()}"
    monkeypatch.setitem(fetch.BENCHMARKS, "sugarcrepe", _real(
        "sugarcrepe", **{s.path: f"git_blob:{_git_blob(swap)}" for s in sc.sources[:-1]}, **{"val2017.zip": coco_md5}))
    monkeypatch.setitem(fetch.BENCHMARKS, "crepe", _real(
        "crepe", **{"crepe_prod_hard_negatives.zip": f"git_blob:{_git_blob(prod)}",
                    "crepe_syst_hard_negatives.zip": f"git_blob:{_git_blob(syst)}"}))
    monkeypatch.setitem(fetch.BENCHMARKS, "negbench", replace(fetch.BENCHMARKS["negbench"], sources=(
        replace(fetch.COCO_VAL2017, checksum=coco_md5, size=None),)))
    dest = tmp_path / "data"
    from huggingface_hub import constants
    hf_home = Path(constants.HF_HOME)
    before = _tree(hf_home) if hf_home.exists() else None

    status = _run("sugarcrepe", "crepe", "negbench", "--dest", dest, "--base-url", server.url,
                  "--accept-licence", "crepe")
    out = capsys.readouterr().out
    assert status == fetch.MANUAL_EXIT  # CREPE's VG images and NegBench's CSVs are manual
    assert out.index("licence: SugarCrepe") < out.index(f"{server.url}/RAIVNLab/sugar-crepe")  # before any URL
    assert "verified: git_blob published by the source" in out and "Google Drive" in out
    assert (dest / "sugarcrepe" / "swap_obj.json").read_bytes() == swap
    assert (dest / "sugarcrepe" / "val2017").is_symlink() and (dest / "negbench" / "val2017").is_symlink()
    assert (dest / "sugarcrepe" / "val2017" / "000000000139.jpg").read_bytes() == image
    items = sugarcrepe.load_subset(dest / "sugarcrepe", "swap_obj")
    assert items[0].meta["bag_identical"] and Path(items[0].images[0].path).is_file()
    assert _tree(dest / "crepe") == ["MANIFEST.json", "prod_hard_negatives", "prod_hard_negatives/atom",
                                     "prod_hard_negatives/atom/prod_vg_hard_negs_atom_complexity_4.csv",
                                     "syst_hard_negatives", "syst_hard_negatives/syst_vg_hard_negs_seen_compounds_in_"
                                     "laion.csv"]
    assert [name for name, _, _ in crepe.present_files(dest / "crepe")][:1] == ["crepe/atom/complexity_4"]
    manifest = json.loads((dest / "sugarcrepe" / "MANIFEST.json").read_text())
    record = manifest["files"]["http://images.cocodataset.org/zips/val2017.zip"]
    assert record["sha256"] == hashlib.sha256(coco).hexdigest() and record["complete"]
    assert sorted(p.name for p in dest.iterdir()) == [".downloads", ".partial", ".shared", "crepe", "negbench",
                                                      "sugarcrepe"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing beside DIR
    assert not list((dest / ".partial").iterdir())
    if before is not None:
        assert _tree(hf_home) == before  # nothing in the Hugging Face cache either
    coco_gets = [entry for entry in server.log if entry[1] == "/zips/val2017.zip"]
    assert len(coco_gets) == 1  # downloaded once for both benchmarks

    server.log.clear()
    assert _run("sugarcrepe", "--dest", dest, "--base-url", server.url) == 0
    assert server.log == [] and "present (recorded in MANIFEST.json)" in capsys.readouterr().out


def test_a_dropped_connection_resumes_with_a_range_request(server, tmp_path, monkeypatch):
    """Within one call (huggingface_hub's http_get retries from the bytes it has), and across runs (the .part file
    in DIR/.partial is continued)."""
    big = os.urandom(11 << 20)  # over http_get's 10 MiB chunk, so a chunk lands before the drop
    small = os.urandom(300_000)
    server.files.update({"/big.bin": big, "/small.bin": small})
    server.drops["/big.bin"] = (1, (10 << 20) + 4096)
    sources = (fetch.Source("https://example.org/big.bin", "big.bin", f"sha256:{hashlib.sha256(big).hexdigest()}"),
               fetch.Source("https://example.org/small.bin", "small.bin",
                            f"sha256:{hashlib.sha256(small).hexdigest()}", len(small)))
    monkeypatch.setitem(fetch.BENCHMARKS, "demo", fetch.Benchmark("demo", "test data", sources))
    dest = tmp_path / "data"
    server.drops["/small.bin"] = (99, 100_000)  # every full response drops: http_get gives up
    assert _run("demo", "--dest", dest, "--base-url", server.url) == 2
    assert (dest / "demo" / "big.bin").read_bytes() == big
    assert ("GET", "/big.bin", f"bytes={10 << 20}-") in server.log
    assert not (dest / "demo" / "small.bin").exists()
    part = dest / ".partial" / "small.bin.part"
    part.write_bytes(small[:123_456])  # as an interrupted run leaves it
    server.drops.clear()
    assert _run("demo", "--dest", dest, "--base-url", server.url) == 0
    assert ("GET", "/small.bin", "bytes=123456-") in server.log
    assert (dest / "demo" / "small.bin").read_bytes() == small and not part.exists()


def test_checksum_mismatch_deletes_the_file_and_first_fetch_records_are_enforced(server, tmp_path, monkeypatch,
                                                                                capsys):
    good, bad = b"the real file\n", b"a tampered file\n"
    server.files.update({"/a.json": bad, "/b.json": good})
    monkeypatch.setitem(fetch.BENCHMARKS, "demo", fetch.Benchmark("demo", "test data", (
        fetch.Source("https://example.org/a.json", "a.json", f"sha256:{hashlib.sha256(good).hexdigest()}"),)))
    dest = tmp_path / "data"
    assert _run("demo", "--dest", dest, "--base-url", server.url) == 2
    assert "checksum mismatch (sha256 " in capsys.readouterr().err
    assert not (dest / "demo" / "a.json").exists() and not list((dest / ".partial").iterdir())

    monkeypatch.setitem(fetch.BENCHMARKS, "demo", fetch.Benchmark("demo", "test data", (
        fetch.Source("https://example.org/b.json", "b.json"),)))
    assert _run("demo", "--dest", dest, "--base-url", server.url) == 0
    assert "sha256 recorded on the first fetch (unverified)" in capsys.readouterr().out
    (dest / "demo" / "b.json").unlink()
    server.files["/b.json"] = bad  # the source changed since the first fetch
    assert _run("demo", "--dest", dest, "--base-url", server.url) == 2
    assert "was recorded on the first fetch" in capsys.readouterr().err
    assert not (dest / "demo" / "b.json").exists()


def test_hub_files_are_pinned_to_a_commit_and_checked_against_the_hub_hash(server, tmp_path, capsys):
    """MMVP-VLM's real definition: Questions.csv, then the images it lists, all at the commit 'main' resolved to."""
    questions = b"Question ID,Type,Statement\n1,Orientation,The dog faces left.\n2,Orientation,The dog faces right.\n"
    base = "/datasets/MMVP/MMVP_VLM/resolve"
    server.files.update({f"{base}/Questions.csv": questions, f"{base}/MLLM_VLM Images/Orientation/1.jpg": _png(1),
                         f"{base}/MLLM_VLM Images/Orientation/2.jpg": _png(2)})
    dest = tmp_path / "data"
    assert _run("mmvp_vlm", "--dest", dest, "--base-url", server.url) == 0
    assert (dest / "mmvp_vlm" / "MLLM_VLM Images" / "Orientation" / "2.jpg").read_bytes() == _png(2)
    assert "verified: sha256 published by the source" in capsys.readouterr().out
    gets = [path for method, path, _ in server.log if method == "GET"]
    assert gets == [f"/datasets/MMVP/MMVP_VLM/resolve/{COMMIT}/Questions.csv",
                    f"/datasets/MMVP/MMVP_VLM/resolve/{COMMIT}/MLLM_VLM Images/Orientation/1.jpg",
                    f"/datasets/MMVP/MMVP_VLM/resolve/{COMMIT}/MLLM_VLM Images/Orientation/2.jpg"]
    manifest = json.loads((dest / "mmvp_vlm" / "MANIFEST.json").read_text())
    assert manifest["files"][fetch.HubFile("MMVP/MMVP_VLM", "Questions.csv").url()]["revision"] == COMMIT


def test_bivlc_shards_are_fetched_then_extracted_into_the_jsonl_layout(server, tmp_path, capsys):
    """The real BiVLC definition: two parquet shards from the Hub, then images/ + test.jsonl (needs pyarrow; without
    it the shards stay and the error says what to install)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pa = None
    rows = [{"image": {"bytes": _png(k), "path": None}, "caption": f"caption {k}",
             "negative_image": {"bytes": _png(200 + k), "path": None}, "negative_caption": f"negative {k}",
             "type": "add", "subtype": "obj"} for k in range(2)]
    for k in range(2):
        if pa is not None:
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows[k:k + 1]), buf)
            data = buf.getvalue()
        else:
            data = b"PAR1 stand-in shard " + bytes([k])
        server.files[f"/datasets/imirandam/BiVLC/resolve/data/test-0000{k}-of-00002.parquet"] = data
    dest = tmp_path / "data"
    status = _run("bivlc", "--dest", dest, "--base-url", server.url)
    assert sorted(p.name for p in (dest / "bivlc" / "data").iterdir()) == ["test-00000-of-00002.parquet",
                                                                          "test-00001-of-00002.parquet"]
    if pa is None:
        assert status == 2 and "needs pyarrow (pip install pyarrow)" in capsys.readouterr().err
        return
    from open_clip_align.eval import bivlc
    assert status == 0 and [it.captions for it in bivlc.load(dest / "bivlc")] == [
        ["caption 0", "negative 0"], ["caption 1", "negative 1"]]


def test_licence_gate_dry_run_archive_escape_and_flags(server, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "data"
    assert _run("crepe", "--dest", dest, "--base-url", server.url) == 2
    assert "pass --accept-licence crepe" in capsys.readouterr().err
    assert server.log == [] and not dest.exists()

    monkeypatch.setenv(fetch.BASE_URL_ENV, server.url)
    assert _run("spec", "crepe", "--dest", dest, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"{server.url}/datasets/wjpoom/SPEC/resolve/{fetch.SPEC_REVISION}/data.zip" in out
    assert "dry run: nothing was written" in out and not dest.exists() and server.log == []

    evil = _zip({"ok.txt": b"x", "../../evil.txt": b"x"})
    server.files["/evil.zip"] = evil
    monkeypatch.setitem(fetch.BENCHMARKS, "demo", fetch.Benchmark("demo", "test data", (
        fetch.Source("https://example.org/evil.zip", "evil.zip", unpack="zip", into="sub"),)))
    assert _run("demo", "--dest", dest) == 2
    assert "would be written outside the extraction folder" in capsys.readouterr().err
    assert not (tmp_path / "evil.txt").exists() and not (dest / "demo" / "sub").exists()

    with pytest.raises(SystemExit):
        fetch.main(["nope", "--dest", str(dest)])
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fetch.main(["spec", "--dest", str(dest), "--accept-licence", "crepe"])
    assert "--accept-licence: 'crepe' is not among" in capsys.readouterr().err
    assert _run("spec", "--dest", dest, "--base-url", "127.0.0.1:80") == 2
    assert "--base-url 127.0.0.1:80: expected scheme://host" in capsys.readouterr().err


NETWORK_MODULES = {"socket", "http", "urllib", "requests", "httpx", "urllib3", "huggingface_hub", "fsspec", "pooch",
                   "aiohttp", "ftplib", "gdown"}


def test_no_eval_module_but_fetch_can_open_a_connection():
    """Only fetch.py imports a network library (the loaders, the CLI and the scorers read local files)."""
    offenders = {}
    for path in sorted((REPO / "open_clip_align" / "eval").glob("*.py")):
        if path.name == "fetch.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            hits = [n for n in names if n.split(".")[0] in NETWORK_MODULES]
            if hits:
                offenders.setdefault(path.name, []).extend(hits)
    assert offenders == {}


def test_runs_as_a_module(tmp_path, monkeypatch, capsys):
    """``python -m open_clip_align.eval.fetch`` (run here with runpy: a subprocess would import torch again)."""
    monkeypatch.setenv(fetch.BASE_URL_ENV, "http://127.0.0.1:9")
    monkeypatch.setattr(sys, "argv", ["fetch", "bivlc", "--dest", str(tmp_path / "d"), "--dry-run"])
    monkeypatch.delitem(sys.modules, "open_clip_align.eval.fetch")  # runpy executes a fresh copy as __main__
    runpy.run_module("open_clip_align.eval.fetch", run_name="__main__")
    out = capsys.readouterr().out
    assert "http://127.0.0.1:9/datasets/imirandam/BiVLC/resolve/main/data/test-00000-of-00002.parquet" in out
    assert not (tmp_path / "d").exists()
