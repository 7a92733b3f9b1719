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

QuickGELU: CLIP_benchmark builds ``--model ViT-B-32 --pretrained openai`` (and its ``--pretrained_model openai``
collection, which lists plain names) as GELU, with embeddings that differ from the released model. Here its
open_clip loader is replaced by one that builds such pairs with QuickGELU and says so in one line.
"""
import logging
import sys

from ..errors import UserError, run_cli

PROG = "open-clip-align-clip-benchmark"


def load_open_clip(model_name: str = "ViT-B-32-quickgelu", pretrained: str = "laion400m_e32", cache_dir: str = None,
                   device="cpu"):
    """CLIP_benchmark's ``load_open_clip`` (same signature and result: model, transform, tokenizer) with
    ``force_quick_gelu`` when ``pretrained`` is an OpenAI tag and ``model_name`` builds GELU."""
    import open_clip

    from ..models.activation import force_quickgelu_kwargs
    from .cli import info_lines_shown

    with info_lines_shown():
        quick_gelu = force_quickgelu_kwargs(model_name, pretrained, where=PROG)
    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                cache_dir=cache_dir, **quick_gelu)
    return model.to(device), transform, open_clip.get_tokenizer(model_name)


def install_loader() -> bool:
    """Point CLIP_benchmark's ``open_clip`` model type at ``load_open_clip``; False (with a warning) when this
    CLIP_benchmark version has no ``clip_benchmark.models.TYPE2FUNC`` to do it with."""
    try:
        from clip_benchmark import models
    except ImportError:
        models = None
    table = getattr(models, "TYPE2FUNC", None)
    if not isinstance(table, dict) or "open_clip" not in table:
        logging.warning(f"{PROG}: this CLIP_benchmark has no TYPE2FUNC['open_clip']; OpenAI weights on a plain "
                        f"model name will run with GELU (pass the -quickgelu model name)")
        return False
    table["open_clip"] = load_open_clip
    return True


def main() -> None:
    import open_clip_align  # noqa: F401  (registers plugin model configs before CLIP_benchmark builds models)

    def run():
        try:
            from clip_benchmark import cli
        except ImportError as err:
            raise UserError(f"CLIP_benchmark is not installed ({err}); pip install 'open_clip_align[eval]' "
                            f"(clip-benchmark==1.6.2)") from None
        install_loader()
        return cli.main()

    sys.exit(run_cli(run, PROG))


if __name__ == "__main__":
    main()
