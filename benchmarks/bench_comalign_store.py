"""Benchmark: ComAlign training from a component store, the row index vs the per-image groups (the old layout).

A store of ``--images`` images × ``--captions`` captions at ``--dim`` (10 + 10 slots, fp32 random vectors,
written by ``ComponentStoreWriter``: no CLIP runs) is timed through the training loader that ``training.main
--comalign-data features`` uses (``comalign.data.get_comalign_train_data``, batch ``--batch-size``):

* ``old``: the per-image groups, scanned and loaded whole first (how a store without the index reads: earlier
  versions wrote no index; here the store's index is ignored through ``ComponentStore(index=False)``);
* ``index``: the row index in the store (what ``comalign.embed`` writes now): rows read from the memory-mapped
  file per batch;
* ``side index``: the same store without its own index plus the side file ``python -m
  open_clip_align.comalign.store index`` builds (timed too): what an old store gets after that one-off command.

Evaluation loads a store whole (``ComponentStore.load_arrays``); that load is timed once per layout too.

Each arm runs in a fresh subprocess (imports done before the clock starts), with the store evicted from the page
cache first (``posix_fadvise(DONTNEED)``, so every arm reads from disk): time to the first batch (loader built +
first batch), the next ``--batches`` batches, and peak RSS (``VmHWM``: ``ru_maxrss`` would carry over the
launching process's peak, which Linux keeps across fork and exec; the imports' share, torch and
open_clip_train, shown apart, and the rest as "data MB"). The ``old`` and ``index`` arms alternate ``--repeats``
times (medians); ``side index`` runs once at the end. Every arm must draw the same first batch (checked). Prints
a table with ratios to ``old`` and writes JSON (default benchmarks/results/bench_comalign_store.json).

    python benchmarks/bench_comalign_store.py [--images 20000] [--captions 5] [--dim 512] [--batch-size 256]
        [--workers 0] [--repeats 2] [--dir /tmp] [--keep]
"""
import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

N_ENTITY = N_RELATION = 10
MODEL = {512: "comalign-ViT-B-32", 768: "comalign-ViT-L-14"}


def write_store(path: Path, images: int, captions: int, dim: int, seed: int = 0) -> dict:
    """A finished store of random fp32 vectors (some slots padded, as real stores are); returns timings."""
    from open_clip_align.comalign.store import ComponentStoreWriter

    rng = np.random.default_rng(seed)
    attrs = {"model": MODEL.get(dim, f"d{dim}"), "pretrained": "synthetic", "n_entity": N_ENTITY,
             "n_relation": N_RELATION, "embed_dim": dim, "box_provider": "synthetic", "render_mode": "grey"}

    def slots(n: int, real: int):
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors[real:] = 0
        return vectors, np.arange(n) < real

    start = time.perf_counter()
    writer = ComponentStoreWriter(path, attrs, resume=False, flush_seconds=60.0)
    for i in range(images):
        entity, entity_mask = slots(N_ENTITY, int(rng.integers(1, N_ENTITY + 1)))
        relation, relation_mask = slots(N_RELATION, int(rng.integers(0, N_RELATION + 1)))
        image = {"global": rng.standard_normal(dim, dtype=np.float32), "entity": entity, "entity_mask": entity_mask,
                 "relation": relation, "relation_mask": relation_mask}
        rows = []
        for j in range(captions):
            t_entity, t_entity_mask = slots(N_ENTITY, int(rng.integers(1, 5)))
            t_relation, t_relation_mask = slots(N_RELATION, int(rng.integers(0, 3)))
            rows.append({"string": f"caption {j} of image {i}", "entities": ["a thing"], "relations": [],
                         "text": rng.standard_normal(dim, dtype=np.float32), "entity": t_entity,
                         "entity_mask": t_entity_mask, "relation": t_relation, "relation_mask": t_relation_mask})
        writer.write(str(i), f"images/{i:012d}.jpg", i, image, rows)
    groups = time.perf_counter()
    writer.close()  # writes the row index
    done = time.perf_counter()
    return {"write_groups_s": round(groups - start, 1), "write_index_s": round(done - groups, 1),
            "store_bytes": path.stat().st_size}


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache, so the next reader reads from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def peak_rss_mb() -> float:
    """This process's own peak resident set size (``VmHWM``; reset by exec, unlike ``ru_maxrss``)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 1024


def child(arm: str, store: str, batch_size: int, workers: int, batches: int, dim: int) -> dict:
    """One arm, in this (fresh) process: the loader built and its first batches drawn."""
    import open_clip_align  # noqa: F401  (comalign-* model configs)
    from open_clip_train.params import parse_args
    from open_clip_align.comalign import data as data_module
    from open_clip_align.comalign.store import ComponentStore
    from open_clip_align.params import build_preparser

    if arm in ("old", "old load"):
        data_module.ComponentStore = functools.partial(ComponentStore, index=False)
    if arm.endswith("load"):  # what evaluation does: every array in memory (comalign.evaluate: load_arrays)
        imports_mb = peak_rss_mb()
        start = time.perf_counter()
        with data_module.ComponentStore(store) as opened:
            arrays = opened.load_arrays()
        return {"load_s": time.perf_counter() - start, "imports_rss_mb": imports_mb,
                "peak_rss_mb": peak_rss_mb(),
                "checksum": float(arrays["entity"][:256].sum() + arrays["text"][:256].sum())}
    argv = ["--model", MODEL[dim], "--loss", "comalign", "--comalign-data", "features", "--train-data", store,
            "--batch-size", str(batch_size), "--workers", str(workers), "--seed", "0"]
    ours, rest = build_preparser().parse_known_args(argv)
    args = parse_args(rest)
    for key, value in vars(ours).items():
        setattr(args, key, value)
    args.world_size, args.rank = 1, 0
    imports_mb = peak_rss_mb()
    start = time.perf_counter()
    data = data_module.get_comalign_train_data(args, None, None)
    batches_iter = iter(data.dataloader)
    images, texts = next(batches_iter)
    first = time.perf_counter()
    drawn = 0
    for drawn, _ in enumerate(batches_iter, 1):
        if drawn == batches:
            break
    more = time.perf_counter()
    return {"first_batch_s": first - start, "next_batches_s": more - first, "next_batches": drawn,
            "peak_rss_mb": peak_rss_mb(),
            "imports_rss_mb": imports_mb,
            "batch_shapes": [list(images.shape), list(texts.shape)], "checksum": float(images.sum() + texts.sum())}


def run_arm(arm: str, store: Path, cli: argparse.Namespace) -> dict:
    evict(store)
    proc = subprocess.run([sys.executable, __file__, "--child", arm, "--store", str(store), "--batch-size",
                           str(cli.batch_size), "--workers", str(cli.workers), "--batches", str(cli.batches),
                           "--dim", str(cli.dim)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=str(cli.threads)))
    if proc.returncode:
        raise SystemExit(f"arm {arm} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--dim", type=int, default=512, choices=sorted(MODEL))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (RSS is the main process's)")
    parser.add_argument("--batches", type=int, default=10, help="batches drawn after the first one")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the old and index arms, alternating")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the arms")
    parser.add_argument("--dir", type=Path, default=None, help="where the store is written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_comalign_store.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.store, args.batch_size, args.workers, args.batches, args.dim)))
        return

    from open_clip_align.comalign.store import INDEX_GROUP, build_index
    import h5py

    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="bench_comalign_store.", dir=args.dir))
    try:
        store = folder / "store.h5"
        print(f"writing {args.images} images x {args.captions} captions at d={args.dim} to {store} ...", flush=True)
        written = write_store(store, args.images, args.captions, args.dim)
        print(f"  {written['store_bytes'] / 2 ** 30:.2f} GiB: groups {written['write_groups_s']} s, row index "
              f"{written['write_index_s']} s", flush=True)
        samples = {"old": [], "index": []}
        for _ in range(args.repeats):
            for arm in samples:
                samples[arm].append(run_arm(arm, store, args))
                print(f"  {arm}: {samples[arm][-1]['first_batch_s']:.2f} s to the first batch, "
                      f"{samples[arm][-1]['peak_rss_mb']:.0f} MB peak RSS", flush=True)
        loads = {arm: run_arm(arm, store, args) for arm in ("old load", "index load")}
        with h5py.File(store, "a") as f:  # now an old store: its groups only
            del f[INDEX_GROUP]
        start = time.perf_counter()
        evict(store)
        build_index(store, progress=False)
        side_build_s = time.perf_counter() - start
        samples["side index"] = [run_arm("index", store, args)]
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    checksums = {arm: {s["checksum"] for s in runs} for arm, runs in samples.items()}
    assert len(set.union(*checksums.values())) == 1, f"the arms drew different first batches: {checksums}"
    assert loads["old load"]["checksum"] == loads["index load"]["checksum"], loads
    rows = []
    for arm, runs in samples.items():
        rows.append({"arm": arm, "runs": len(runs),
                     "first_batch_s": round(statistics.median(r["first_batch_s"] for r in runs), 3),
                     "next_batches_s": round(statistics.median(r["next_batches_s"] for r in runs), 3),
                     "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
                     "imports_rss_mb": round(statistics.median(r["imports_rss_mb"] for r in runs), 1),
                     "data_rss_mb": round(statistics.median(r["peak_rss_mb"] - r["imports_rss_mb"] for r in runs), 1)})
    old = rows[0]
    for row in rows:
        row["first_batch_ratio_to_old"] = round(row["first_batch_s"] / old["first_batch_s"], 4)
        row["peak_rss_ratio_to_old"] = round(row["peak_rss_mb"] / old["peak_rss_mb"], 4)
    result = {"images": args.images, "captions_per_image": args.captions, "dim": args.dim,
              "slots": [N_ENTITY, N_RELATION], "batch_size": args.batch_size, "workers": args.workers,
              "batches_after_first": args.batches, "repeats": args.repeats, "threads": args.threads,
              "page_cache": "store evicted (posix_fadvise DONTNEED) before every arm", **written,
              "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
              "side_index_build_s": round(side_build_s, 1), "arms": rows, "samples": samples,
              "evaluation_load": {arm: {k: round(v, 3) for k, v in r.items() if k != "checksum"}
                                  for arm, r in loads.items()}}
    print(f"\nComAlign store -> first training batch: {args.images} images x {args.captions} captions, "
          f"d={args.dim}, {written['store_bytes'] / 2 ** 30:.2f} GiB, batch {args.batch_size}, {args.workers} "
          f"workers, cold cache, median of {args.repeats}")
    print(f"{'arm':<12}{'first batch s':>15}{'x old':>8}{f'next {args.batches} s':>12}{'peak RSS MB':>13}{'x old':>8}"
          f"{'of it imports':>15}{'data MB':>9}")
    for row in rows:
        print(f"{row['arm']:<12}{row['first_batch_s']:>15.2f}{row['first_batch_ratio_to_old']:>8.3f}"
              f"{row['next_batches_s']:>12.2f}{row['peak_rss_mb']:>13.0f}{row['peak_rss_ratio_to_old']:>8.3f}"
              f"{row['imports_rss_mb']:>15.0f}{row['data_rss_mb']:>9.0f}")
    old_load, index_load = loads["old load"], loads["index load"]
    print(f"evaluation load (load_arrays, everything in memory): groups {old_load['load_s']:.1f} s, "
          f"{old_load['peak_rss_mb']:.0f} MB peak; row index {index_load['load_s']:.1f} s "
          f"(x{index_load['load_s'] / old_load['load_s']:.3f}), {index_load['peak_rss_mb']:.0f} MB peak")
    print(f"one-off costs: row index at the end of the write {written['write_index_s']} s; side index of the old "
          f"store (python -m open_clip_align.comalign.store index, cold cache) {side_build_s:.1f} s")
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
