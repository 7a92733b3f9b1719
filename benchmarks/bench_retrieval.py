"""Benchmark: retrieval scoring in tiles (``eval.retrieval.scoring_ranks``) vs the dense matrices it replaced.

Dual encoder (the suite's ``retrieval`` benchmark, NegBench's retrieval tasks): N images × M captions (COCO
Karpathy 5k: 5,000 × 25,000), d-dim unit features, 5 captions per image, many captions repeated across images (as
COCO has) so that exact ties occur.

* dense: the previous path, ``exact_cosines`` [N, M] float32 then ``retrieval_ranks`` (own-caption mask, masked
  copy and comparison masks over the whole matrix);
* chunked C: ``tiled_ranks(cosine_tiles(...), chunk_size=C)``, one arm per ``--chunks`` entry (default: the
  CLI's default and two others).

ComAlign (``--comalign-images``, default 500 × 5 captions, 10 + 10 components; its exact float64 max-mean costs
~P·K times a cosine, so the size is smaller): dense = ``compute_scores(exact=True)`` over the whole gallery,
``combine`` per scoring and ``metrics`` (the previous ``comalign.evaluate``); chunked = ``score_arrays``.

Peak memory: each arm runs once in a fresh subprocess that resets its peak RSS after building its inputs
(``/proc/self/clear_refs``) and reads it (``VmHWM``) after scoring; peak minus the RSS at the reset is the arm's
peak extra memory (features excluded). Time: the arms alternate
in this process (``harness.time_arms``), median and min. Every chunked arm's ranks and ties must equal the dense
ones exactly (the run fails otherwise). Prints a table and writes JSON (default
benchmarks/results/bench_retrieval.json).

    python benchmarks/bench_retrieval.py [--images 5000] [--captions-per-image 5] [--dim 512]
        [--chunks 256,1024,4096] [--repeats 3] [--comalign-images 500] [--threads N]
"""
import argparse
import json
import gc
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from harness import time_arms, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from open_clip_align.comalign.evaluate import score_arrays  # noqa: E402
from open_clip_align.comalign.scoring import combine, compute_scores  # noqa: E402
from open_clip_align.eval.retrieval import (CHUNK_SIZE, cosine_tiles, metrics, retrieval_ranks,  # noqa: E402
                                            tiled_ranks)
from open_clip_align.eval.scoring import exact_cosines  # noqa: E402

COMALIGN_KS = (1, 5, 10, 50)


def dual_inputs(n_images: int, per_image: int, dim: int, seed: int = 0):
    """Unit image [N, d] and caption [N·per_image, d] features (captions grouped by image); one caption in ten
    repeats another image's caption exactly."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=gen), dim=-1)
    owner = torch.arange(n_images).repeat_interleave(per_image)
    captions = 0.5 * images[owner] + torch.randn(len(owner), dim, generator=gen) / dim ** 0.5
    captions = torch.nn.functional.normalize(captions, dim=-1)
    repeated = torch.arange(0, len(owner), 10)
    captions[repeated] = captions[torch.randint(len(owner), (len(repeated),), generator=gen)]
    return images, captions, owner


def comalign_inputs(n_images: int, per_image: int, comps: int, dim: int, seed: int = 0):
    """Head outputs of ``n_images`` images and store text (``comalign.evaluate``'s inputs), masked components."""
    gen = torch.Generator().manual_seed(seed)

    def side(n, prefix, keys):
        out = {k: torch.randn(n, dim, generator=gen) for k in keys}
        for role in ("entity", "relation"):
            out[f"{prefix}_{role}"] = torch.randn(n, comps, dim, generator=gen)
            out[f"{prefix}_{role}_mask"] = torch.arange(comps)[None] < torch.randint(1, comps + 1, (n, 1),
                                                                                    generator=gen)
        return out

    owner = torch.arange(n_images).repeat_interleave(per_image)
    return (side(n_images, "image", ("image_features", "refined_global")), side(len(owner), "text", ("text_features",)),
            owner)


def dual_arm(chunk, inputs):
    images, captions, owner = inputs
    if chunk is None:
        return retrieval_ranks(exact_cosines(images, captions), owner)
    return tiled_ranks(cosine_tiles(images, captions), owner, len(images), chunk)


def comalign_arm(chunk, inputs):
    image, text, owner = inputs
    if chunk is not None:
        return score_arrays(image, text, owner, "masked", COMALIGN_KS, chunk)
    scores = compute_scores(image, text, padding="masked", exact=True)
    out = {"clip": metrics(scores.clip, owner, COMALIGN_KS)}
    for mode in ("paper", "reference"):
        combined = combine(scores, mode=mode)
        out[mode] = metrics(combined.i2t, owner, COMALIGN_KS, text_to_image=combined.t2i)
        out[mode]["normalisation_constants"] = combined.constants
    return out


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak) of this process from /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_mb() -> float:
    """Reset this process's peak RSS to its current RSS (``clear_refs`` 5, Linux ≥ 4.0), so that the peak read
    later is the arm's alone and not that of building its inputs; returns the current RSS."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _inputs(kind: str, args):
    if kind == "dual":
        return dual_inputs(args.images, args.captions_per_image, args.dim)
    return comalign_inputs(args.comalign_images, args.captions_per_image, args.components, args.dim)


def worker(args) -> None:
    """One arm (``KIND:dense`` or ``KIND:CHUNK``), once, in this fresh process: print its peak extra memory."""
    torch.set_num_threads(args.threads)
    kind, arm = args.worker.split(":")
    inputs = _inputs(kind, args)
    before = _reset_peak_mb()
    with torch.inference_mode():
        (dual_arm if kind == "dual" else comalign_arm)(None if arm == "dense" else int(arm), inputs)
    print(json.dumps({"baseline_mb": before, "peak_extra_mb": _status_mb("VmHWM") - before}))


def measure_memory(kind: str, chunk, argv) -> dict:
    arm = f"{kind}:{'dense' if chunk is None else chunk}"
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", arm], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {arm} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _name(chunk) -> str:
    return "dense" if chunk is None else f"chunked {chunk}"


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def run_kind(kind: str, args, shared_argv) -> dict:
    chunks = [None, *args.chunks]
    memory = {_name(c): measure_memory(kind, c, shared_argv) for c in chunks}
    inputs = _inputs(kind, args)
    fn = dual_arm if kind == "dual" else comalign_arm
    outputs = {}

    def timed(chunk):
        def run():
            with torch.inference_mode():
                outputs[_name(chunk)] = fn(chunk, inputs)
        return run

    repeats = args.repeats if kind == "dual" else max(1, args.repeats - 2)
    times = time_arms({_name(c): timed(c) for c in chunks}, repeats)
    arms = {}
    for chunk in chunks:
        name = _name(chunk)
        arms[name] = {"median_s": statistics.median(times[name]), "min_s": min(times[name]), "times_s": times[name],
                      **memory[name]}
        if chunk is not None:
            arms[name].update(time_over_dense=arms[name]["median_s"] / arms["dense"]["median_s"],
                              peak_memory_over_dense=arms[name]["peak_extra_mb"] / arms["dense"]["peak_extra_mb"],
                              identical_to_dense=_same(outputs[name], outputs["dense"]))
    dense = outputs["dense"]
    ties = (int(dense["image_to_text_tie"].sum() + dense["text_to_image_tie"].sum()) if kind == "dual"
            else sum(dense[s]["n_ties"] for s in dense))
    n_images = args.images if kind == "dual" else args.comalign_images
    return {"images": n_images, "captions": n_images * args.captions_per_image, "dim": args.dim, "ties": ties,
            "arms": arms}


def _print(title: str, result: dict) -> None:
    print(f"\n{title}: {result['images']} images x {result['captions']} captions, d={result['dim']}, "
          f"{result['ties']} queries with an exact tie")
    print(f"{'arm':<16}{'median s':>10}{'min s':>8}{'peak extra MB':>15}{'time ratio':>12}{'mem ratio':>11}"
          f"{'identical':>11}")
    for name, r in result["arms"].items():
        extra = ("" if name == "dense" else f"{r['time_over_dense']:>12.3f}{r['peak_memory_over_dense']:>11.3f}"
                 f"{str(r['identical_to_dense']):>11}")
        print(f"{name:<16}{r['median_s']:>10.2f}{r['min_s']:>8.2f}{r['peak_extra_mb']:>15.0f}{extra}")


def parse_chunks(text: str):
    try:
        chunks = [int(x) for x in text.split(",")]
    except ValueError:
        chunks = []
    if not chunks or min(chunks) < 1:
        raise argparse.ArgumentTypeError(f"expected CHUNK[,CHUNK...] of positive integers, got {text!r}")
    return chunks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunks", type=parse_chunks, default=parse_chunks(f"256,{CHUNK_SIZE},4096"),
                        help="chunked arms: images and captions per tile, comma-separated")
    parser.add_argument("--comalign-images", type=int, default=500, help="0 skips the ComAlign table")
    parser.add_argument("--components", type=int, default=10, help="ComAlign: P = K per role (two roles)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for every arm")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_retrieval.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # KIND:dense or KIND:CHUNK, memory only
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    shared = [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in
              ("images", "captions-per-image", "dim", "comalign-images", "components", "threads")]
    result = {"config": {k: v for k, v in vars(args).items() if k != "worker"}, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "dual_encoder": run_kind("dual", args, shared)}
    _print("Dual-encoder retrieval (exact cosines, strict ties)", result["dual_encoder"])
    if args.comalign_images:
        result["comalign"] = run_kind("comalign", args, shared)
        _print(f"ComAlign store retrieval (clip + paper + reference scorings, {args.components}+{args.components} "
               f"components, masked)", result["comalign"])
    write_json(result, args.out)
    print(f"wrote {args.out}")
    kinds = [result["dual_encoder"]] + ([result["comalign"]] if "comalign" in result else [])
    if not all(r.get("identical_to_dense", True) for kind in kinds for r in kind["arms"].values()):
        raise SystemExit("a chunked arm's ranks differ from the dense ones")


if __name__ == "__main__":
    sys.exit(main())
