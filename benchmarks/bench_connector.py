"""Benchmark: the ALIGN connector against vocabulary size, the vocabulary-subset trick and the MLP baseline.

Setting: connector-only training (stage A): features [B, N, Dv] -> connector -> [B, N, H], loss = mean of
squares, E (the LM input table, [V, H]) frozen and passed at call time. Per vocabulary size V:

1. fwd+bwd time (median over rounds, arms alternating so machine noise hits all of them) for ALIGN and the
   MLP baseline, and their ratio;
2. memory, three honest numbers, none of them an allocator peak (CPU torch has no peak counter):
   - ``bnv_fp32_mb``: analytic size of one [B, N, V] fp32 tensor (logits / P; several are live at once);
   - ``saved_mb``: bytes autograd saves for backward in the connector, measured with
     ``torch.autograd.graph.saved_tensors_hooks`` (unique storages; parameters and E excluded);
   - ``rss_delta_mb``: process RSS peak minus RSS before, sampled every ~0.5 ms from /proc/self/statm during
     one fwd+bwd with grads reset to None (so the W2 gradient allocation counts). The allocator reuses
     freed memory, so this can under-state the true peak; 0 means no new pages were needed;
   - ``params_mb``: connector parameters (fp32), for scale (its gradients are the same size again).
3. the vocabulary-subset speed-up: an S-token subset of the largest V vs the full V, both for fwd+bwd and
   forward-only under ``torch.no_grad`` (the paper's eval-time use).

Prints a table and writes JSON (default benchmarks/results/bench_connector.json).

    python benchmarks/bench_connector.py [--vocab 8192 32768 131072] [--batch 2] [--tokens 64] [--subset 8192]
"""
import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from open_clip_align.vlm import AlignConnector, MLPConnector  # noqa: E402
from harness import time_arms, write_json  # noqa: E402

_PAGE = 4096


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _RssPeak:
    """Samples RSS in a background thread; ``delta`` = peak during the block minus RSS at entry."""

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.delta = self.peak - self.start


def _saved_bytes(fn, exclude) -> int:
    """Bytes of unique storages autograd saves for backward while running ``fn`` (``exclude``: data_ptrs)."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _train_step(module, feats, embed):
    def run():
        module.zero_grad(set_to_none=True)
        module(feats, embed).pow(2).mean().backward()
    return run


def _forward_only(module, feats, embed):
    def run():
        with torch.no_grad():
            module(feats, embed)
    return run


def _memory(module, feats, embed) -> dict:
    exclude = {p.untyped_storage().data_ptr() for p in module.parameters()} | {embed.untyped_storage().data_ptr()}
    saved = _saved_bytes(lambda: module(feats, embed).pow(2).mean(), exclude)
    module.zero_grad(set_to_none=True)
    with _RssPeak() as rss:
        _train_step(module, feats, embed)()
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return {"saved_mb": saved / 2**20, "rss_delta_mb": rss.delta / 2**20, "params_mb": params / 2**20}


def bench_vocab(v: int, args) -> dict:
    torch.manual_seed(0)
    b, n, dv, h = args.batch, args.tokens, args.vision_dim, args.hidden
    feats = torch.randn(b, n, dv)
    embed = torch.randn(v, h) * 0.02  # frozen LM input table
    align = AlignConnector(dv, h, v, lm_head_weight=embed)
    mlp = MLPConnector(dv, h)
    arms = {"align": _train_step(align, feats, embed), "mlp": _train_step(mlp, feats, embed)}
    times = {k: statistics.median(ts) for k, ts in time_arms(arms, args.rounds, warmup=1).items()}
    result = {"V": v, "align_fwd_bwd_s": times["align"], "mlp_fwd_bwd_s": times["mlp"],
              "align_over_mlp": times["align"] / times["mlp"], "bnv_fp32_mb": b * n * v * 4 / 2**20,
              "align_mem": _memory(align, feats, embed), "mlp_mem": _memory(mlp, feats, embed)}
    del align, mlp, embed
    return result


def bench_subset(v: int, s: int, args) -> dict:
    torch.manual_seed(0)
    b, n, dv, h = args.batch, args.tokens, args.vision_dim, args.hidden
    feats = torch.randn(b, n, dv)
    embed = torch.randn(v, h) * 0.02
    full = AlignConnector(dv, h, v, lm_head_weight=embed)
    sub = AlignConnector(dv, h, v, lm_head_weight=embed)
    sub.set_vocab_subset(torch.randperm(v)[:s].sort().values)
    arms = {"full fwd+bwd": _train_step(full, feats, embed), "subset fwd+bwd": _train_step(sub, feats, embed),
            "full fwd (no_grad)": _forward_only(full, feats, embed),
            "subset fwd (no_grad)": _forward_only(sub, feats, embed)}
    times = {k: statistics.median(ts) for k, ts in time_arms(arms, args.rounds, warmup=1).items()}
    return {"V": v, "S": s, "times_s": times,
            "speedup_fwd_bwd": times["full fwd+bwd"] / times["subset fwd+bwd"],
            "speedup_fwd": times["full fwd (no_grad)"] / times["subset fwd (no_grad)"],
            "subset_mem": _memory(sub, feats, embed)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--vision-dim", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--subset", type=int, default=8192, help="subset size S, taken from the largest V")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_connector.json"))
    args = parser.parse_args(argv)

    per_vocab = [bench_vocab(v, args) for v in args.vocab]
    subset = bench_subset(max(args.vocab), args.subset, args)
    result = {"config": vars(args), "torch_threads": torch.get_num_threads(), "vocab": per_vocab,
              "subset": subset}

    print(f"B={args.batch} N={args.tokens} Dv={args.vision_dim} H={args.hidden}, E frozen, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}")
    print(f"{'V':>8}{'ALIGN s':>10}{'MLP s':>9}{'ALIGN/MLP':>11}{'[B,N,V] MB':>12}{'saved MB':>10}"
          f"{'RSS d MB':>10}{'params MB':>11}{'MLP saved':>11}")
    for r in per_vocab:
        m = r["align_mem"]
        print(f"{r['V']:>8}{r['align_fwd_bwd_s']:>10.4f}{r['mlp_fwd_bwd_s']:>9.4f}{r['align_over_mlp']:>11.1f}"
              f"{r['bnv_fp32_mb']:>12.1f}{m['saved_mb']:>10.1f}{m['rss_delta_mb']:>10.1f}{m['params_mb']:>11.1f}"
              f"{r['mlp_mem']['saved_mb']:>11.2f}")
    print(f"subset S={subset['S']} of V={subset['V']}:")
    for name, t in subset["times_s"].items():
        print(f"  {name:<22}{t:>10.4f} s")
    print(f"  speed-up fwd+bwd {subset['speedup_fwd_bwd']:.2f}x, fwd only {subset['speedup_fwd']:.2f}x; "
          f"subset saved {subset['subset_mem']['saved_mb']:.1f} MB, RSS d {subset['subset_mem']['rss_delta_mb']:.1f} MB")
    out = Path(args.out)
    write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
