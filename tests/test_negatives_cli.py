"""The negative-caption tool (open_clip_align.negatives): inputs, generation loop, resume after SIGKILL, converters,
and training on its output. A fake backend (registered here, importable by the CLI with ``--import``) returns
negatives that are valid by construction for captions of the form "a red cube near a blue ball".
"""
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO, train_argv
from open_clip_align.negatives import DEGLA_TYPES, NEG_TYPES, convert, read_captions, register_backend
from open_clip_align.negatives.cli import chunk_size, generate, generate_parser, main, request_seed, summary_path
from open_clip_align.negatives.io import InputError, JsonlAppender, finished_rows

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
OBJECTS = ["cube", "ball", "cone", "ring", "star", "box"]
RELATIONS = ["near", "behind", "under", "above"]
RGB = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
THIS_MODULE = Path(__file__).stem


def fake_negatives(caption: str, neg_type: str, n: int, seed: int):
    """``n`` negatives of ``neg_type`` for "a C1 O1 REL a C2 O2", rotated by ``seed``; repeats when n is large."""
    _, c1, o1, rel, _, c2, o2 = caption.split()

    def cap(*w):
        return "a {} {} {} a {} {}".format(*w)
    variants = {
        "reshuffle_order": [cap(c2, o2, rel, c1, o1)],
        "swap_nouns": [cap(c1, o2, rel, c2, o1)],
        "swap_adjectives": [cap(c2, o1, rel, c1, o2)],
        "replace_adjectives": [cap(c, o1, rel, c2, o2) for c in COLOURS if c not in (c1, c2)],
        "replace_nouns": [cap(c1, o, rel, c2, o2) for o in OBJECTS if o not in (o1, o2)],
        "replace_relation": [cap(c1, o1, r, c2, o2) for r in RELATIONS if r != rel],
        "add_object": [f"a {c1} {o1} and a {o} {rel} a {c2} {o2}" for o in OBJECTS if o not in (o1, o2)],
        "add_attribute": [f"a {a} {c1} {o1} {rel} a {c2} {o2}" for a in ("small", "large", "shiny")],
    }[neg_type]
    offset = seed % len(variants)
    return [variants[(offset + k) % len(variants)] for k in range(n)]


class FakeBackend:
    """Deterministic backend; ``stubborn`` caption ids always get their own caption back (always rejected),
    ``silent`` ones no candidate at all."""

    name = "fake"

    def __init__(self, delay: float = 0.0, stubborn=(), silent=()):
        self.delay, self.stubborn, self.silent = delay, set(stubborn), set(silent)
        self.calls, self.closed = Counter(), False

    def generate(self, requests):
        time.sleep(self.delay)
        out = []
        for r in requests:
            self.calls[r.caption_id, r.neg_type] += 1
            if r.caption_id in self.silent:
                out.append([])
            else:
                out.append([r.caption] * r.n if r.caption_id in self.stubborn
                           else fake_negatives(r.caption, r.neg_type, r.n, r.seed))
        return out

    def close(self):
        self.closed = True


@register_backend("fake")
def _fake(args):
    return FakeBackend(delay=float(os.environ.get("FAKE_NEG_DELAY", "0")))


class _Miscounting(FakeBackend):
    def generate(self, requests):
        return super().generate(requests)[:-1]


register_backend("fake-miscount")(lambda args: _Miscounting())


# ----------------------------------------------------------------------------- data

def captions(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        (c1, c2), (o1, o2) = rng.sample(list(RGB), 2), rng.sample(OBJECTS[:4], 2)
        out.append(f"a {c1} {o1} {rng.choice(RELATIONS)} a {c2} {o2}")
    return out


def write_coco(path: Path, texts, images: bool = True, pngs: bool = False) -> Path:
    """COCO captions JSON: annotation ids 1000+i, image ids 100+i, files img/i.png (drawn when ``pngs``)."""
    data = {"annotations": [{"id": 1000 + i, "image_id": 100 + i, "caption": t} for i, t in enumerate(texts)]}
    if images:
        data["images"] = [{"id": 100 + i, "file_name": f"img/{i}.png"} for i in range(len(texts))]
    if pngs:
        (path.parent / "img").mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            words = text.split()
            img = Image.new("RGB", (64, 64), (0, 0, 0))
            img.paste(RGB[words[1]], (4, 20, 24, 40))
            img.paste(RGB[words[5]], (40, 20, 60, 40))
            img.save(path.parent / "img" / f"{i}.png")
    path.write_text(json.dumps(data))
    return path


def read_jsonl(path: Path):
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in raw.splitlines()]


def run_args(inp: Path, out: Path, *extra: str):
    return generate_parser().parse_args(["--input", str(inp), "--output", str(out), "--backend", "fake", "--quiet",
                                         *extra])


# ----------------------------------------------------------------------------- generation

def test_generate_writes_one_row_per_caption_with_every_type(tmp_path, capsys):
    inp = write_coco(tmp_path / "caps.json", captions(10))
    out = tmp_path / "negs.jsonl"
    assert main(["--input", str(inp), "--output", str(out), "--backend", "fake", "--quiet",
                 "--batch-size", "3", "--types", *NEG_TYPES]) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [str(1000 + i) for i in range(10)]
    for i, (row, text) in enumerate(zip(rows, captions(10))):
        assert row["image"] == f"img/{i}.png" and row["original"] == text
        assert row["types"] == list(NEG_TYPES) and len(set(row["enhanced"])) == len(NEG_TYPES)
        assert text not in row["enhanced"]
    summary = json.loads(Path(summary_path(str(out))).read_text())
    assert summary_path(str(out)) == str(tmp_path / "negs.summary.json")
    assert summary["run"]["produced"] == {t: 10 for t in NEG_TYPES}
    assert summary["run"]["short_captions"] == 0 and summary["run"]["backend_calls"] == 4
    assert summary["file"] == {"rows": 10, "negatives": {t: 10 for t in NEG_TYPES}, "short_captions": 0,
                               "ids_not_in_input": 0}
    printed = capsys.readouterr().out
    assert "swap_nouns" in printed and "--num-hardneg 8" in printed and "hardneg-fill" not in printed


def test_rules_backend_end_to_end(tmp_path):
    texts = ["A man riding a brown horse on the beach.", "Two dogs playing with a red ball in the grass.",
             "A woman in a blue dress holding an umbrella.", "A cat sitting on a wooden table next to a laptop."]
    inp = tmp_path / "caps.jsonl"
    inp.write_text("".join(json.dumps({"image": f"{i}.jpg", "caption": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "negs.jsonl"
    assert main(["--input", str(inp), "--output", str(out), "--backend", "rules", "--types", *NEG_TYPES,
                 "--quiet"]) == 0
    rows = read_jsonl(out)
    assert [r["original"] for r in rows] == texts
    for row in rows:
        assert row["types"] == [t for t in NEG_TYPES if t in row["types"]]  # grouped in --types order
        assert len(set(row["enhanced"])) == len(row["enhanced"]) >= 5 and row["original"] not in row["enhanced"]
    produced = json.loads(Path(summary_path(str(out))).read_text())["run"]["produced"]
    assert produced["replace_nouns"] == produced["replace_adjectives"] == 4


def test_chunks_fill_a_concurrent_backend():
    class Concurrent(FakeBackend):
        concurrency = 32
    assert chunk_size(8, 5, FakeBackend()) == 8 and chunk_size(50, 5, Concurrent()) == 50
    assert chunk_size(8, 5, Concurrent()) == 26 and chunk_size(8, 1, Concurrent()) == 128


def test_request_seeds_do_not_depend_on_chunking():
    seeds = {request_seed(0, str(i), t, a) for i in range(20) for t in DEGLA_TYPES for a in range(3)}
    assert len(seeds) == 300 and all(0 <= s < 2 ** 31 for s in seeds)
    assert request_seed(0, "7", "swap_nouns", 0) == request_seed(0, "7", "swap_nouns", 0) != \
        request_seed(1, "7", "swap_nouns", 0)


def test_retries_short_captions_dedupe_and_keep_rejected(tmp_path):
    inp = write_coco(tmp_path / "caps.json", captions(6))
    out, rejected = tmp_path / "negs.jsonl", tmp_path / "rejected.jsonl"
    backend = FakeBackend(stubborn={"1002"}, silent={"1004"})
    args = run_args(inp, out, "--types", "swap_nouns", "replace_nouns", "--per-type", "2", "--max-attempts", "3",
                    "--keep-rejected", str(rejected))
    summary = generate(args, backend=backend)
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert len(rows) == 6 and not backend.closed  # a backend passed in is the caller's to close
    assert rows["1002"]["enhanced"] == rows["1004"]["enhanced"] == [] and rows["1002"]["types"] == []
    for ident, row in rows.items():
        if ident not in ("1002", "1004"):  # swap_nouns has one possible negative, so its second copy is a duplicate
            assert row["types"] == ["swap_nouns", "replace_nouns", "replace_nouns"]
            assert len(set(row["enhanced"])) == 3
    # a type short after validation is asked again, up to --max-attempts times in all; an empty answer ends it
    assert backend.calls["1002", "swap_nouns"] == 3 and backend.calls["1002", "replace_nouns"] == 3
    assert backend.calls["1000", "swap_nouns"] == 3 and backend.calls["1000", "replace_nouns"] == 1
    assert backend.calls["1004", "swap_nouns"] == backend.calls["1004", "replace_nouns"] == 1
    run = summary["run"]
    assert run["produced"] == {"swap_nouns": 4, "replace_nouns": 8}
    assert run["short"] == {"swap_nouns": 6, "replace_nouns": 2} and run["short_captions"] == 6
    # 4 captions x 3 attempts repeat their one swap; the stubborn caption: 2 candidates x 3 attempts per type
    assert run["rejected"] == {"swap_nouns": {"duplicate": 12, "same_as_positive": 6},
                               "replace_nouns": {"same_as_positive": 6}}
    kept = read_jsonl(rejected)
    assert len(kept) == sum(sum(c.values()) for c in run["rejected"].values())
    assert {(k["id"], k["type"], k["attempt"]) for k in kept if k["id"] == "1002"} == \
        {("1002", t, a) for t in ("swap_nouns", "replace_nouns") for a in (1, 2, 3)}
    assert all(k["reason"] and k["original"] for k in kept)
    assert summary["file"]["short_captions"] == 6


def test_no_dedupe_keeps_repeats(tmp_path):
    inp = write_coco(tmp_path / "caps.json", captions(2))
    generate(run_args(inp, tmp_path / "o.jsonl", "--types", "swap_nouns", "--per-type", "2", "--no-dedupe"),
             backend=FakeBackend())
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert all(len(r["enhanced"]) == 2 and r["enhanced"][0] == r["enhanced"][1] for r in rows)


def test_resume_skips_finished_ids_and_truncates_a_torn_line(tmp_path):
    inp = write_coco(tmp_path / "caps.json", captions(9))
    out = tmp_path / "negs.jsonl"
    assert main(["--input", str(inp), "--output", str(out), "--backend", "fake", "--quiet", "--limit", "4"]) == 0
    first = out.read_bytes()
    with open(out, "ab") as f:
        f.write(b'{"id": "1004", "image": "img/4.png", "orig')
    backend = FakeBackend()
    summary = generate(run_args(inp, out), backend=backend)
    assert out.read_bytes().startswith(first)
    assert [r["id"] for r in read_jsonl(out)] == [str(1000 + i) for i in range(9)]
    assert {ident for ident, _ in backend.calls} == {str(1000 + i) for i in range(4, 9)}
    assert summary["already_done"] == 4 and summary["run"]["captions"] == 5
    straight = tmp_path / "straight.jsonl"
    generate(run_args(inp, straight), backend=FakeBackend())
    assert out.read_bytes() == straight.read_bytes()  # deterministic whatever the interruptions
    # rerunning a finished job needs no backend (here: an endpoint that is down)
    assert main(["--input", str(inp), "--output", str(out), "--backend", "openai", "--base-url",
                 "http://127.0.0.1:9/v1", "--quiet"]) == 0
    assert out.read_bytes() == straight.read_bytes()


class _ChatHandler(BaseHTTPRequestHandler):
    """OpenAI-compatible stand-in: lists one model; answers an add_object rewrite of the prompt's input caption."""

    protocol_version = "HTTP/1.1"

    def _reply(self, body: dict):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply({"object": "list", "data": [{"id": "local-model", "object": "model"}]})

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
        caption = prompt.rsplit("Input text:", 1)[-1].split("\n", 1)[0].strip()
        self._reply({"choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": f"{caption} and a dog"}}]})

    def log_message(self, *args):
        pass


def test_openai_backend_through_the_cli(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        inp = write_coco(tmp_path / "caps.json", captions(10))
        out = tmp_path / "negs.jsonl"
        assert main(["--input", str(inp), "--output", str(out), "--backend", "openai", "--base-url",
                     f"http://127.0.0.1:{server.server_address[1]}/v1", "--workers", "4", "--types", "add_object",
                     "--quiet", "--no-pos-check"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    rows = read_jsonl(out)
    assert [r["enhanced"] for r in rows] == [[f"{t} and a dog"] for t in captions(10)]
    summary = json.loads(Path(summary_path(str(out))).read_text())
    assert summary["config"]["model"] == "local-model" and summary["config"]["chunk_captions"] == 16
    assert summary["backend_stats"]["requests"] == 10 and summary["backend_stats"]["failed"] == 0


def _cli(*argv, env=None, **kwargs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "open_clip_align.negatives", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_midway_then_rerun_gives_every_caption_exactly_once(tmp_path):
    n = 120
    inp = tmp_path / "caps.jsonl"
    inp.write_text("".join(json.dumps({"key": f"c{i}", "pic": f"{i}.png", "text": t}) + "\n"
                           for i, t in enumerate(captions(n, seed=1))))
    out = tmp_path / "negs.jsonl"
    argv = ["--input", str(inp), "--output", str(out), "--backend", "fake", "--import", THIS_MODULE, "--quiet",
            "--id-key", "key", "--image-key", "pic", "--caption-key", "text", "--batch-size", "2", "--no-pos-check"]
    proc = _cli(*argv, env={"FAKE_NEG_DELAY": "0.05"})
    deadline = time.monotonic() + 120
    while _complete_lines(out) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    killed_at = _complete_lines(out)
    assert 10 <= killed_at < n
    with open(out, "ab") as f:  # as if the kill had landed inside a write
        f.write(b'{"id": "c99", "image"')
    proc = _cli(*argv)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert f"{n - killed_at} captions written ({killed_at} already done)" in stdout
    rows = read_jsonl(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n and set(ids) == {f"c{i}" for i in range(n)}
    assert all(r["types"] == list(DEGLA_TYPES) and len(r["enhanced"]) == 5 for r in rows)
    straight = tmp_path / "straight.jsonl"
    generate(run_args(inp, straight, "--id-key", "key", "--image-key", "pic", "--caption-key", "text"),
             backend=FakeBackend())
    assert sorted(out.read_text().splitlines()) == sorted(straight.read_text().splitlines())


# ----------------------------------------------------------------------------- inputs and errors

def test_input_formats_give_the_same_rows(tmp_path):
    texts = captions(3)
    (tmp_path / "a.csv").write_text("filepath,title,uid\n"
                                    + "".join(f"{i}.png,{t},u{i}\n" for i, t in enumerate(texts)))
    (tmp_path / "a.tsv").write_text("image\tcaption\n\n" + "".join(f"{i}.png\t{t}\n" for i, t in enumerate(texts)))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "caption": t}) + "\n\n"
                                              for i, t in enumerate(texts)))
    csv_rows = read_captions(str(tmp_path / "a.csv"), caption_key="title", image_key="filepath", id_key="uid")
    assert [(r.caption_id, r.image, r.caption) for r in csv_rows] == [(f"u{i}", f"{i}.png", t)
                                                                      for i, t in enumerate(texts)]
    tsv_rows = read_captions(str(tmp_path / "a.tsv"))
    assert [r.caption_id for r in tsv_rows] == ["1", "2", "3"] and [r.caption for r in tsv_rows] == texts
    jsonl_rows = read_captions(str(tmp_path / "a.jsonl"))
    assert [r.caption_id for r in jsonl_rows] == ["1", "3", "5"] and [r.image for r in jsonl_rows] == \
        [r.image for r in tsv_rows]
    coco = read_captions(str(write_coco(tmp_path / "c.json", texts, images=False)))
    assert [(r.caption_id, r.image) for r in coco] == [("1000", 100), ("1001", 101), ("1002", 102)]
    odd = tmp_path / "odd.jsonl"  # U+2028 is a line break to str.splitlines, not to JSON lines
    odd.write_text(json.dumps({"image": "x.png", "caption": "a cat\u2028on a mat"}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    assert [r.caption for r in read_captions(str(odd))] == ["a cat\u2028on a mat"]
    with JsonlAppender(str(tmp_path / "o.jsonl")) as out:
        out.write({"id": "1", "image": "x.png", "original": "a cat\u2028on a mat", "enhanced": [], "types": []})
    assert finished_rows(str(tmp_path / "o.jsonl"))[0]["original"] == "a cat\u2028on a mat"
    (tmp_path / "a.txt").write_text((tmp_path / "a.jsonl").read_text())
    assert read_captions(str(tmp_path / "a.txt"), fmt="jsonl") == jsonl_rows  # an explicit format wins


_GOOD = json.dumps({"image": "x.png", "caption": "a red cube near a blue ball"})


@pytest.mark.parametrize("name,content,extra,expected", [
    ("c.json", "{oops", [], ["c.json", "invalid JSON at line 1"]),
    ("c.json", json.dumps([1, 2]), [], ["c.json", "COCO captions object"]),
    ("c.json", json.dumps({"annotations": [{"id": 1, "image_id": 2, "caption": "x"}, {"id": 2, "caption": "y"}]}),
     [], ["c.json, annotation 2", "missing field(s) ['image_id']"]),
    ("c.json", json.dumps({"annotations": [{"id": 1, "image_id": 7, "caption": "x"}], "images": []}),
     [], ["c.json, annotation 1", "image_id 7 is not in \"images\""]),
    ("c.json", json.dumps({"annotations": [{"id": 1, "image_id": 2, "caption": "x"},
                                           {"id": 1, "image_id": 3, "caption": "y"}]}),
     [], ["c.json, annotation 2", "caption id '1' already used at", "annotation 1"]),
    ("c.csv", "image,text\na.png,hello\n", [], ["c.csv", "missing column(s) ['caption']", "['image', 'text']"]),
    ("c.csv", "image,caption\na.png,hello\nb.png,\n", [], ["c.csv, line 3", "empty caption"]),
    ("c.tsv", "image\tcaption\na.png\thello\textra\n", [], ["c.tsv, line 2", "3 fields, the header has 2"]),
    ("c.jsonl", _GOOD + "\n[1]\n", [], ["c.jsonl, line 2", "expected a JSON object, got array"]),
    ("c.jsonl", _GOOD + "\n" + json.dumps({"image": "y.png", "caption": 5}) + "\n", [],
     ["c.jsonl, line 2", "must be a string, got number"]),
    ("c.txt", "hello\n", [], ["c.txt", "--input-format"]),
    ("c.jsonl", "", [], ["c.jsonl", "no caption rows"]),
    ("c.jsonl", _GOOD + "\n", ["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"],
     ["cannot reach", "127.0.0.1:9"]),
    ("c.jsonl", _GOOD + "\n", ["--backend", "hf", "--hf-model", "{tmp}/none"], ["--hf-model", "not a directory"]),
    ("c.jsonl", _GOOD + "\n", ["--backend", "nope"], ["unknown backend 'nope'", "fake"]),
    ("c.jsonl", _GOOD + "\n", ["--backend", "fake-miscount"], ["returned 0 candidate lists for 1 requests"]),
    ("c.jsonl", _GOOD + "\n", ["--types", "swap_nouns", "swap_nouns"], ["--types lists a type twice"]),
    ("c.jsonl", _GOOD + "\n", ["--import", "no_such_module_xyz"], ["--import no_such_module_xyz"]),
    ("c.jsonl", _GOOD + "\n", ["--keep-rejected", "{tmp}/o.jsonl"],
     ["--output", "is the same file as --keep-rejected"]),
    ("c.jsonl", _GOOD + "\n", ["--output", "{tmp}/c.jsonl/o.jsonl"],
     ["--output {tmp}/c.jsonl/o.jsonl: {tmp}/c.jsonl is a file, not a folder"]),
    ("c.jsonl", _GOOD + "\n", ["--output", "{tmp}"], ["--output {tmp}: is a folder (expected a file path)"]),
    ("c.jsonl", _GOOD + "\n", ["--keep-rejected", "{tmp}/c.jsonl/r.jsonl"],
     ["--keep-rejected {tmp}/c.jsonl/r.jsonl: {tmp}/c.jsonl is a file"]),
    ("c.jsonl", _GOOD + "\n", ["--temperature", "nan"], ["--temperature must be a finite number, got nan"]),
    ("c.jsonl", _GOOD + "\n", ["--temperature", "-0.5"], ["--temperature must be at least 0"]),
    ("c.jsonl", _GOOD + "\n", ["--timeout", "inf"], ["--timeout must be a finite number, got inf"]),
    ("c.jsonl", _GOOD + "\n", ["--timeout", "nan"], ["--timeout must be a finite number, got nan"]),
    ("c.jsonl", _GOOD + "\n", ["--input", "{tmp}"], ["{tmp}: is a folder; expected a captions file"]),
    ("c.jsonl", _GOOD + "\n", ["--backend", "openai", "--base-url", "localhost:8000/v1"],
     ["--base-url localhost:8000/v1: expected an http:// or https:// URL"]),
], ids=["coco-json", "coco-shape", "coco-field", "coco-image", "coco-dup-id", "csv-column", "csv-empty",
        "tsv-fields", "jsonl-array", "jsonl-type", "extension", "empty", "unreachable", "hf-path", "unknown-backend",
        "miscount", "dup-type", "import", "same-file", "output-under-a-file", "output-a-folder",
        "rejected-under-a-file", "temperature-nan", "temperature-negative", "timeout-inf", "timeout-nan",
        "input-a-folder", "base-url-scheme"])
def test_errors_are_one_line_with_file_and_row(tmp_path, capsys, name, content, extra, expected):
    (tmp_path / name).write_text(content)
    argv = ["--input", str(tmp_path / name), "--output", str(tmp_path / "o.jsonl"), "--backend", "fake",
            "--types", "swap_nouns", "--quiet", *(e.replace("{tmp}", str(tmp_path)) for e in extra)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for part in expected:
        part = part.replace("{tmp}", str(tmp_path))
        assert part in err, (part, err)


def test_a_corrupt_output_line_is_an_error_not_a_silent_loss(tmp_path):
    inp = write_coco(tmp_path / "caps.json", captions(2))
    out = tmp_path / "negs.jsonl"
    out.write_text('{"id": "1000"}\n')
    with pytest.raises(InputError, match=r"negs.jsonl, line 1: missing field"):
        generate(run_args(inp, out), backend=FakeBackend())
    out.write_text("not json\n")
    with pytest.raises(InputError, match=r"negs.jsonl, line 1: invalid JSON"):
        finished_rows(str(out))


def test_help_lists_flags_and_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--per-type", "--max-attempts", "--keep-rejected", "--concurrency", "--import", "convert --help"):
        assert flag in text
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert "degla-json" in capsys.readouterr().out


# ----------------------------------------------------------------------------- converters and training

class _StringTokenizer:
    """Maps each distinct string to its own id, so loaders' token rows decode back to the text."""

    def __init__(self):
        self.ids, self.texts = {}, {}

    def __call__(self, texts):
        for t in texts:
            self.texts.setdefault(self.ids.setdefault(t, len(self.ids) + 1), t)
        return torch.tensor([[self.ids[t]] for t in texts])

    def decode(self, rows):
        return [self.texts[int(r[0])] for r in rows if int(r[0])]


def test_converters_read_back_through_the_training_loaders(tmp_path, capsys):
    from open_clip_train.params import parse_args as upstream_parse_args
    from torchvision.transforms import ToTensor

    from open_clip_align.data.hardneg import get_hardneg_train_data
    from open_clip_align.params import build_preparser

    inp = write_coco(tmp_path / "caps.json", captions(8), pngs=True)
    out = tmp_path / "negs.jsonl"
    generate(run_args(inp, out), backend=FakeBackend())
    expected = sorted((r["original"], tuple(r["enhanced"])) for r in read_jsonl(out))

    with open(out, "ab") as f:
        f.write(b'{"torn": ')  # converting a file from a killed run ignores its torn last line

    def loaded(fmt, train_data, **overrides):
        args = upstream_parse_args(["--train-data", str(train_data)])
        vars(args).update(vars(build_preparser().parse_args(["--hardneg-format", fmt])))
        vars(args).update(distributed=False, world_size=1, rank=0, workers=0, batch_size=2, num_hardneg=5)
        vars(args).update(overrides)
        tok = _StringTokenizer()
        got = []
        for _, texts in get_hardneg_train_data(args, ToTensor(), tok).dataloader:
            got += [(tok.decode(t[:1])[0], tuple(tok.decode(t[1:]))) for t in texts]
        return sorted(got)

    assert main(["convert", str(out), str(tmp_path / "t.csv"), "--to", "csv"]) == 0
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert header == "filepath\ttitle\tneg_caption\tneg_types"
    assert loaded("csv", tmp_path / "t.csv", hardneg_sampling="first") == expected
    assert main(["convert", str(out), str(tmp_path / "t.json"), "--to", "degla-json"]) == 0
    assert json.loads((tmp_path / "t.json").read_text())[0]["types"] == list(DEGLA_TYPES)
    assert loaded("degla-json", tmp_path / "t.json") == expected
    result = convert(str(out), str(tmp_path / "shards"), "wds", shard_size=3)
    assert [Path(f).name for f in result["files"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert result["train_data"] == str(tmp_path / "shards" / "shard-{000000..000002}.tar")
    with tarfile.open(result["files"][0]) as tar:
        assert tar.getnames() == [f"00000000{i}.{ext}" for i in range(3) for ext in ("png", "txt", "json")]
    assert loaded("wds", result["train_data"], train_num_samples=8) == expected
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["convert", str(out), str(tmp_path / "shards"), "--to", "wds"])
    assert "already holds shards" in capsys.readouterr().err


def test_convert_errors(tmp_path):
    out = tmp_path / "negs.jsonl"
    generate(run_args(write_coco(tmp_path / "caps.json", captions(2), images=False), out), backend=FakeBackend())
    with pytest.raises(InputError, match=r"row id '1000': image '.*100' has extension ''"):
        convert(str(out), str(tmp_path / "w"), "wds")
    with pytest.raises(InputError, match=r"cannot read image '.*COCO_100.png'"):
        convert(str(out), str(tmp_path / "w"), "wds", image_template="COCO_{}.png")
    convert(str(out), str(tmp_path / "t.csv"), "csv", image_root="/data", image_template="x/{:04d}.jpg")
    assert (tmp_path / "t.csv").read_text().splitlines()[1].startswith("/data/x/0100.jpg\t")
    with pytest.raises(InputError, match="cannot format image 100"):
        convert(str(out), str(tmp_path / "t.csv"), "csv", image_template="{:z}")
    with pytest.raises(InputError, match="not found"):
        convert(str(tmp_path / "nope.jsonl"), str(tmp_path / "t.csv"), "csv")


def test_output_trains_through_training_main(tmp_path):
    from training.main import main as plugin_main

    inp = write_coco(tmp_path / "caps.json", captions(16), pngs=True)
    out = tmp_path / "negs.jsonl"
    generate(run_args(inp, out), backend=FakeBackend())
    argv = train_argv(tmp_path, "negs", "--model", "hardneg-tiny-ViT", "--loss", "negclip",
                      "--hardneg-format", "jsonl", "--train-data", str(out), "--num-hardneg", "4")
    assert plugin_main(argv) is None
    assert (tmp_path / "logs" / "negs" / "checkpoints" / "epoch_1.pt").is_file()


def test_a_binary_example_pool_is_named(tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text(_GOOD + "\n")
    (tmp_path / "pool.jsonl").write_bytes(bytes(range(128, 256)))
    with pytest.raises(SystemExit) as exc:
        main(["--input", str(tmp_path / "c.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--backend", "openai",
              "--base-url", "http://127.0.0.1:9/v1", "--examples", str(tmp_path / "pool.jsonl"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"{tmp_path / 'pool.jsonl'}: not UTF-8 text; expected a JSONL example pool" in err


def test_convert_names_the_users_paths_and_leaves_nothing_half_written(tmp_path, capsys):
    """Outputs in impossible places, a folder for a file (and back), the input as its own output: one line naming
    the user's path (never an internal temp file), the input untouched, no shard folder left by a failure."""
    out = tmp_path / "negs.jsonl"
    generate(run_args(write_coco(tmp_path / "caps.json", captions(2), images=False), out), backend=FakeBackend())
    before = out.read_bytes()
    (tmp_path / "afile").write_text("x")
    cases = [([str(tmp_path / "afile" / "t.csv"), "--to", "csv"], f"OUT {tmp_path / 'afile' / 't.csv'}: "
                                                                  f"{tmp_path / 'afile'} is a file, not a folder"),
             ([str(tmp_path), "--to", "degla-json"], f"OUT {tmp_path}: is a folder (expected a file path)"),
             ([str(tmp_path / "afile"), "--to", "wds"], f"OUT {tmp_path / 'afile'}: exists and is not a folder"),
             ([str(out), "--to", "degla-json"], f"{out}: is the input file"),
             ([str(tmp_path / "shards"), "--to", "wds", "--image-template", "COCO_{}.png"], "cannot read image")]
    for argv, fragment in cases:
        with pytest.raises(SystemExit) as exc:
            main(["convert", str(out), *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert fragment in err and ".tmp-" not in err, err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "caps.json", "negs.jsonl", "negs.summary.json"]
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path), str(tmp_path / "t.csv"), "--to", "csv"])
    assert "is a folder; expected the JSONL output" in capsys.readouterr().err
