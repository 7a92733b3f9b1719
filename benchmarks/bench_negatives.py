"""Benchmark: throughput of the negative-caption generators (``python -m open_clip_align.negatives``).

1. ``rules`` backend on one core (CPU affinity pinned to one core, OMP/torch threads 1; the rules path does not
   use torch, the package imports it): captions/second for the backend alone (one spaCy parse per chunk, all
   requested types) and for the CLI's chunk loop (backend + validation with part-of-speech checks + re-asking
   short types: ``--max-attempts 3`` and ``1``, and without the part-of-speech checks), on varied COCO-style
   captions.
2. ``openai`` backend (not pinned) against a local HTTP server, in its own process on 127.0.0.1, that answers
   every chat completion after a fixed latency (default 50 ms): requests/second at concurrency 1, 8, 32 and
   the speed-up over concurrency 1 (ideal: equal to the concurrency); then the CLI's chunk loop at the highest
   concurrency with chunks of ``--batch-size`` captions vs the automatic chunk size (``cli.chunk_size``).

Arms are repeated ``--rounds`` times and medians reported. Prints a table and writes JSON (default
benchmarks/results/bench_negatives.json, atomically).

    OMP_NUM_THREADS=1 python benchmarks/bench_negatives.py [--captions 400] [--latency-ms 50]
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402

from open_clip_align.negatives import DEGLA_TYPES, NEG_TYPES, Request, create_backend, list_backends  # noqa: E402
from open_clip_align.negatives.cli import (RunStats, chunk_size, default_checker, generate_parser,  # noqa: E402
                                           process_chunk, request_seed, validation_nlp)
from open_clip_align.negatives.io import CaptionRow  # noqa: E402
from harness import write_json  # noqa: E402

CAPTIONS = [
    "A man riding a brown horse on the beach.", "Two dogs playing with a red ball in the grass.",
    "A woman in a blue dress holding an umbrella.", "A cat sitting on a wooden table next to a laptop.",
    "A large white plate with a sandwich and fries.", "A young boy throwing a frisbee in a park.",
    "A red double decker bus parked on the street.", "Snow covered mountains behind a small lake.",
    "A little girl eating a slice of pizza at a table.", "An old man reading a newspaper on a bench.",
    "A black and white cat sleeping on a couch.", "A group of people standing around a kitchen counter.",
    "A kitchen with a stove, a sink and a refrigerator.", "A plane flying over a city at sunset.",
    "A bowl of fruit with apples and bananas on a counter.", "A skateboarder doing a trick on a ramp.",
]
_SUBJECTS = ["man", "woman", "dog", "cat", "boy", "girl", "horse", "child", "player", "bird"]
_OBJECTS = ["ball", "kite", "frisbee", "bicycle", "umbrella", "book", "phone", "bag", "hat", "surfboard"]
_PLACES = ["field", "street", "beach", "park", "kitchen", "room", "table", "road", "river", "snow"]
_ADJ = ["red", "blue", "small", "large", "young", "old", "white", "black", "green", "wooden"]
_VERBS = ["holding", "carrying", "throwing", "pulling", "watching", "chasing"]
_PREPS = ["on", "in", "near", "under", "behind"]


def make_captions(n: int, seed: int = 0):
    """``n`` distinct COCO-style captions: the hand-written ones, then templated variations."""
    rng = random.Random(seed)
    out, seen = list(CAPTIONS), set(CAPTIONS)
    while len(out) < n:
        text = (f"A {rng.choice(_ADJ)} {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} a {rng.choice(_ADJ)} "
                f"{rng.choice(_OBJECTS)} {rng.choice(_PREPS)} the {rng.choice(_PLACES)}.")
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out[:n]


class _OneCore:
    """Context: this process pinned to one CPU (where supported) and torch to one thread; ``core`` is the CPU."""

    def __enter__(self):
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        self.previous = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
        self.core = min(self.previous) if self.previous else None
        if self.previous:
            os.sched_setaffinity(0, {self.core})
        return self

    def __exit__(self, *exc):
        if self.previous:
            os.sched_setaffinity(0, self.previous)


def _cli_args(*extra: str):
    return generate_parser().parse_args(["--input", "-", "--output", "-", *extra])


def _median_rate(units: int, times):
    median = statistics.median(times)
    return {"median_s": median, "per_s": units / median, "units": units}


def bench_rules(n: int, types, per_type: int, batch: int, rounds: int) -> dict:
    """Each arm and round gets its own captions, so no parse or validation cache carries over between them."""
    args = _cli_args("--backend", "rules", "--types", *types, "--per-type", str(per_type))
    backend = create_backend("rules", args)
    checkers = {True: default_checker(validation_nlp(args, backend)), False: default_checker(None)}
    backend.generate([Request("warm", "A dog on a mat.", types[0], 1, 0)])  # load spaCy outside the clock

    def backend_only(rows, sink):
        for start in range(0, len(rows), batch):
            backend.generate([Request(r.caption_id, r.caption, t, per_type, request_seed(0, r.caption_id, t, 0))
                              for r in rows[start:start + batch] for t in types])

    def pipeline(max_attempts: int, pos_check: bool = True):
        checker = checkers[pos_check]

        def run(rows, sink):
            stats = RunStats(types)
            for start in range(0, len(rows), batch):
                process_chunk(backend, rows[start:start + batch], types, per_type, 0, max_attempts, checker, stats)
            sink["stats"] = stats.as_dict()
        return run

    arms = {"backend only": backend_only, "CLI loop, --max-attempts 3": pipeline(3),
            "CLI loop, --max-attempts 1": pipeline(1), "CLI loop, --no-pos-check": pipeline(3, False)}
    texts = make_captions(n * rounds * len(arms))
    slices = iter(range(0, len(texts), n))
    times, sinks = {name: [] for name in arms}, {name: {} for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            first = next(slices)
            rows = [CaptionRow(str(i), f"{i}.jpg", texts[i]) for i in range(first, first + n)]
            start = time.perf_counter()
            fn(rows, sinks[name])
            times[name].append(time.perf_counter() - start)
    backend.close()
    stats = sinks["CLI loop, --max-attempts 3"]["stats"]
    return {"arms": {name: _median_rate(n, ts) for name, ts in times.items()},
            "produced_per_type": stats["produced"], "short_per_type": stats["short"],
            "rejected_per_type": stats["rejected"], "backend_calls_max_attempts_3": stats["backend_calls"],
            "backend_calls_max_attempts_1": sinks["CLI loop, --max-attempts 1"]["stats"]["backend_calls"]}


class _LatencyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def _handler(latency_s: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, body: dict):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply({"object": "list", "data": [{"id": "bench-model", "object": "model"}]})

        def do_POST(self):
            """After the latency, an add_object negative of the prompt's input caption (valid by construction)."""
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            prompt = body["messages"][-1]["content"]
            caption = prompt.rsplit("Input text:", 1)[-1].split("\n", 1)[0].strip().rstrip(".")
            time.sleep(latency_s)
            self._reply({"choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": f"{caption} and a dog."}}]})

        def log_message(self, *args):
            pass
    return Handler


def _pipeline_arms(url: str, concurrency: int, n: int, batch: int, rounds: int) -> dict:
    """The CLI's chunk loop (``add_object``, validation included) at ``concurrency``: chunks of ``batch``
    captions vs the automatic chunk size, each round on fresh captions."""
    backend = create_backend("openai", _cli_args("--backend", "openai", "--base-url", url,
                                                 "--concurrency", str(concurrency), "--max-retries", "0"))
    checker = default_checker(None)
    texts = make_captions(2 * n * rounds, seed=1)
    slices = iter(range(0, len(texts), n))
    arms = {f"CLI loop, chunk {batch} captions": batch,
            f"CLI loop, chunk {chunk_size(batch, 1, backend)} captions (auto)": chunk_size(batch, 1, backend)}
    times = {name: [] for name in arms}
    for _ in range(rounds):
        for name, size in arms.items():
            first = next(slices)
            rows = [CaptionRow(str(i), f"{i}.jpg", texts[i]) for i in range(first, first + n)]
            stats = RunStats(["add_object"])
            start = time.perf_counter()
            for begin in range(0, n, size):
                process_chunk(backend, rows[begin:begin + size], ["add_object"], 1, 0, 3, checker, stats)
            times[name].append(time.perf_counter() - start)
            assert stats.produced["add_object"] == n, stats.as_dict()
    backend.close()
    return {name: _median_rate(n, ts) for name, ts in times.items()}


def _serve(latency_s: float, ports) -> None:
    """Child process: the latency server on a free port (sent back through ``ports``) until terminated."""
    server = _LatencyServer(("127.0.0.1", 0), _handler(latency_s))
    ports.put(server.server_address[1])
    server.serve_forever()


def bench_openai(levels, latency_ms: float, per_slot: int, rounds: int, batch: int) -> dict:
    """The server runs in its own process, so that it does not compete with the client for the GIL."""
    context = multiprocessing.get_context("fork")
    ports = context.Queue()
    server = context.Process(target=_serve, args=(latency_ms / 1000, ports), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
    results = {}
    try:
        for level in levels:
            backend = create_backend("openai", _cli_args("--backend", "openai", "--base-url", url,
                                                         "--concurrency", str(level), "--max-retries", "0"))
            n = max(32, per_slot * level)
            requests = [Request(str(i), CAPTIONS[i % len(CAPTIONS)], DEGLA_TYPES[i % 5], 1, i) for i in range(n)]
            backend.generate(requests[:level])  # open the pool's threads outside the clock
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                out = backend.generate(requests)
                times.append(time.perf_counter() - start)
                assert all(out), "the local server's reply was not parsed into a candidate"
            backend.close()
            results[str(level)] = _median_rate(n, times)
        pipeline = _pipeline_arms(url, levels[-1], per_slot * levels[-1], batch, rounds)
    finally:
        server.terminate()
        server.join()
    base = results[str(levels[0])]["per_s"]
    for level in levels:
        r = results[str(level)]
        r["speedup_vs_1"] = r["per_s"] / base
        r["ideal_per_s"] = level * 1000 / latency_ms
        r["efficiency"] = r["per_s"] / r["ideal_per_s"]
    return {"backend": results, "pipeline_concurrency": levels[-1], "pipeline": pipeline}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=400, help="captions per rules pass")
    parser.add_argument("--types", nargs="+", default=list(DEGLA_TYPES), choices=NEG_TYPES)
    parser.add_argument("--per-type", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="captions per chunk (the CLI's default)")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-slot", type=int, default=8,
                        help="openai: requests per level = max(32, this x concurrency)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_negatives.json"))
    args = parser.parse_args(argv)

    result = {"config": vars(args), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if "rules" in list_backends():  # registered by open_clip_align.negatives.rules
        with _OneCore() as pinned:
            result["rules_cpu_core"] = pinned.core
            result["rules"] = bench_rules(args.captions, args.types, args.per_type, args.batch_size, args.rounds)
    else:
        result["rules"] = None
        print("rules: skipped, no backend named 'rules' is registered "
              "(open_clip_align.negatives does not import its rules module yet)")
    if "openai" not in list_backends():
        parser.error("no backend named 'openai' is registered (open_clip_align.negatives.openai_backend)")
    result["openai"] = bench_openai(args.concurrency, args.latency_ms, args.requests_per_slot, args.rounds,
                                    args.batch_size)

    print(f"{'benchmark':<10}{'arm':<38}{'median s':>10}{'units/s':>10}{'x vs c=1':>10}{'efficiency':>12}")
    for arm, r in (result["rules"] or {}).get("arms", {}).items():
        print(f"{'rules':<10}{arm:<38}{r['median_s']:>10.3f}{r['per_s']:>10.1f}")
    for level, r in result["openai"]["backend"].items():
        print(f"{'openai':<10}{f'concurrency {level}':<38}{r['median_s']:>10.3f}{r['per_s']:>10.1f}"
              f"{r['speedup_vs_1']:>10.2f}{r['efficiency']:>12.2f}")
    ideal = result["openai"]["pipeline_concurrency"] * 1000 / args.latency_ms
    for arm, r in result["openai"]["pipeline"].items():
        print(f"{'openai':<10}{arm:<38}{r['median_s']:>10.3f}{r['per_s']:>10.1f}{'':>10}{r['per_s'] / ideal:>12.2f}")
    if result["rules"]:
        print(f"rules (units: captions x {len(args.types)} types): produced {result['rules']['produced_per_type']}")
    print(f"openai units: requests (backend) or captions x add_object (CLI loop, concurrency "
          f"{result['openai']['pipeline_concurrency']}), {args.latency_ms:g} ms server latency")
    out = Path(args.out)
    write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
