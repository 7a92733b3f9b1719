"""Benchmark: ComAlign gallery scoring, our blocked max-mean vs the reference's dense all-pairs einsum.

Retrieval scoring of N images × M captions with P entity + P relation components per image and K + K per
caption (d-dim, L2-normalised; captions have 1..K real components, the rest zero pads): both roles, both
directions (s_I2T [N,M], s_T2I [M,N]), reference padding.

* dense (the released scorer's layout, spec comalign.md §3 "Memory"): per chunk of captions one
  ``einsum('ipd,tkd->itpk')`` [N, chunk, P, K] tensor, reduced by max/mean;
* blocked (``open_clip_align.comalign.scoring.maxmean_scores``): [bi·P, d] × [bt·K, d]ᵀ per block, one arm
  per ``--blocks`` entry (default: the function's default 256x2048, and 128x1024).

Peak memory: each arm runs once in a fresh subprocess that reads ``ru_maxrss`` after building its inputs
(in place, so setup leaves no headroom) and again after scoring; the difference is the arm's peak extra memory.
Time: the arms alternate in this process (harness.time_arms); median and min reported, ratios from medians.
Every blocked arm's score matrices are compared with the dense ones (max abs difference, top-1 rankings).
Prints a table and writes JSON (default benchmarks/results/bench_comalign_scoring.json).

    python benchmarks/bench_comalign_scoring.py [--images 1000] [--captions 5000] [--components 10] [--dim 512]
        [--blocks 256x2048,128x1024] [--ref-chunk 5000] [--repeats 3] [--threads 1]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from harness import time_arms, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from open_clip_align.comalign.scoring import maxmean_scores  # noqa: E402

ROLES = ("entity", "relation")


def make_inputs(n_img: int, n_txt: int, comps: int, dim: int, seed: int = 0) -> dict:
    """Unit image components [N,P,d] and caption components [M,K,d] with zero pads, built in place."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {}
    for role in ROLES:
        img = torch.randn(n_img, comps, dim, generator=gen)
        img.div_(img.norm(dim=-1, keepdim=True))
        txt = torch.randn(n_txt, comps, dim, generator=gen)
        txt.div_(txt.norm(dim=-1, keepdim=True))
        real = torch.randint(1, comps + 1, (n_txt, 1), generator=gen)
        txt.masked_fill_((torch.arange(comps)[None, :] >= real)[..., None], 0.0)
        inputs[role] = (img, txt)
    return inputs


def dense_scores(img: torch.Tensor, txt: torch.Tensor, chunk: int):
    """The reference layout: a [N, chunk, P, K] similarity tensor per caption chunk."""
    i2t, t2i = [], []
    for t0 in range(0, txt.shape[0], chunk):
        sim = torch.einsum("ipd,tkd->itpk", img, txt[t0:t0 + chunk])
        i2t.append(sim.amax(dim=3).mean(dim=2))
        t2i.append(sim.amax(dim=2).mean(dim=2).T)
        del sim
    return torch.cat(i2t, dim=1), torch.cat(t2i, dim=0)


def parse_blocks(text: str):
    try:
        blocks = [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        blocks = []
    if not blocks or any(len(b) != 2 or min(b) < 1 for b in blocks):
        raise argparse.ArgumentTypeError(f"expected IMAGESxTEXTS[,IMAGESxTEXTS...] such as 256x2048, got {text!r}")
    return blocks


def arm_name(block) -> str:
    return "dense" if block is None else f"blocked {block[0]}x{block[1]}"


def run_arm(block, inputs: dict, ref_chunk: int) -> dict:
    """``block`` None: the dense reference; (bi, bt): ours with those block sizes."""
    out = {}
    for role, (img, txt) in inputs.items():
        if block is None:
            out[role] = dense_scores(img, txt, ref_chunk)
        else:
            out[role] = maxmean_scores(img, txt, padding="reference", block_images=block[0], block_texts=block[1])
    return out


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(args) -> None:
    """One arm, once, in this fresh process: print its peak extra memory as JSON."""
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.images, args.captions, args.components, args.dim)
    before = _maxrss_mb()
    block = None if args.worker == "dense" else parse_blocks(args.worker)[0]
    with torch.no_grad():
        run_arm(block, inputs, args.ref_chunk)
    print(json.dumps({"baseline_mb": before, "peak_extra_mb": _maxrss_mb() - before}))


def measure_memory(block, argv) -> dict:
    worker_arg = "dense" if block is None else f"{block[0]}x{block[1]}"
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", worker_arg], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker for {arm_name(block)!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--components", type=int, default=10, help="P = K per role (two roles)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ref-chunk", type=int, default=5000, help="captions per dense einsum chunk (reference: 5000)")
    parser.add_argument("--blocks", type=parse_blocks, default=parse_blocks("256x2048,128x1024"),
                        help="blocked arms as IMAGESxTEXTS block sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both arms")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_comalign_scoring.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # 'dense' or IMAGESxTEXTS: one arm, memory only
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    shared = [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in ("images", "captions", "components", "dim",
                                                                      "ref-chunk", "threads")]
    arms_blocks = [None, *args.blocks]
    memory = {arm_name(b): measure_memory(b, shared) for b in arms_blocks}

    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.images, args.captions, args.components, args.dim)
    results = {}

    def timed(block):
        def run():
            with torch.no_grad():
                results[arm_name(block)] = run_arm(block, inputs, args.ref_chunk)
        return run

    times = time_arms({arm_name(b): timed(b) for b in arms_blocks}, args.repeats)
    p = k = args.components
    n_chunk = min(args.ref_chunk, args.captions)
    arms = {}
    for block in arms_blocks:
        name = arm_name(block)
        largest = args.images * n_chunk if block is None else min(block[0], args.images) * min(block[1], args.captions)
        arms[name] = {"median_s": statistics.median(times[name]), "min_s": min(times[name]), "times_s": times[name],
                      **memory[name],
                      "largest_tensor_mb": largest * p * k * 4 / 2 ** 20}
        if block is None:
            continue
        pairs = [(results["dense"][r][j], results[name][r][j]) for r in ROLES for j in (0, 1)]
        arms[name].update(
            time_over_dense=arms[name]["median_s"] / arms["dense"]["median_s"],
            peak_memory_over_dense=arms[name]["peak_extra_mb"] / arms["dense"]["peak_extra_mb"],
            max_abs_difference=max((a - b).abs().max().item() for a, b in pairs),
            bitwise_identical=all(torch.equal(a, b) for a, b in pairs),
            top1_rankings_identical=all(torch.equal(a.argmax(dim=1), b.argmax(dim=1)) for a, b in pairs))
    result = {"config": {k_: v for k_, v in vars(args).items() if k_ != "worker"},
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "arms": arms}
    print(f"{args.images} images x {args.captions} captions, {p}+{p} components, d={args.dim}, "
          f"{args.threads} thread(s), reference padding, both roles and directions")
    print(f"{'arm':<20}{'median s':>10}{'min s':>8}{'peak extra MB':>15}{'largest tensor MB':>19}{'time ratio':>12}"
          f"{'mem ratio':>11}{'max |diff|':>12}{'top-1 same':>12}")
    for name, r in arms.items():
        extra = ("" if name == "dense" else f"{r['time_over_dense']:>12.3f}{r['peak_memory_over_dense']:>11.3f}"
                 f"{r['max_abs_difference']:>12.1e}{str(r['top1_rankings_identical']):>12}")
        print(f"{name:<20}{r['median_s']:>10.2f}{r['min_s']:>8.2f}{r['peak_extra_mb']:>15.0f}"
              f"{r['largest_tensor_mb']:>19.0f}{extra}")
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
