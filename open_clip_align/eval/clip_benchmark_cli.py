"""``open-clip-align-clip-benchmark``: CLIP_benchmark's own CLI with this plugin imported first.

CLIP_benchmark's CLI does not import plugins (LAION-AI/CLIP_benchmark#144), so plugin model names such as
``degla-ViT-B-32`` are unknown to it. This entry point registers them, then hands every argument to
``clip_benchmark.cli.main`` unchanged:

    open-clip-align-clip-benchmark eval --model degla-ViT-B-32 --pretrained ckpt.pt \\
        --dataset sugar_crepe/swap_att --dataset_root /data/sugarcrepe --no_amp --recall_k 1 5 10

Protocol differences to know: CLIP_benchmark's ``sugar_crepe`` takes argmax over [positive, negative], so a
**tie counts as correct** (the official rule, and ``python -m open_clip_align.eval``, count it wrong; an
order-blind text tower scores 100% instead of 0% on bag-identical items); read ``acc``, not the trivial
``image_acc``. Its retrieval default is R@5 only (pass ``--recall_k 1 5 10``), and on CPU pass ``--no_amp``.
Install it with ``pip install 'open_clip_align[eval]'`` (clip-benchmark 1.6.2).
"""
import sys


def main() -> None:
    import open_clip_align  # noqa: F401  (registers plugin model configs before CLIP_benchmark builds models)

    try:
        from clip_benchmark import cli
    except ImportError as err:
        print(f"open-clip-align-clip-benchmark: error: CLIP_benchmark is not installed ({err}); "
              f"pip install 'open_clip_align[eval]' (clip-benchmark==1.6.2)", file=sys.stderr)
        sys.exit(2)
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
