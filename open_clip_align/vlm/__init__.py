"""Vision-language connectors (AlignVLM): the ALIGN connector, an MLP baseline, token reduction and the
AlignVLM model (open_clip tower + connector + causal LM)."""
from .connector import (
    AlignConnector,
    MLPConnector,
    avg_pool_tokens,
    pixel_shuffle_tokens,
    pixel_unshuffle_tokens,
    reduce_tokens,
    vocab_subset_from_probs,
)
from .model import AlignVLM, patch_tokens

__all__ = [
    "AlignConnector",
    "AlignVLM",
    "MLPConnector",
    "patch_tokens",
    "avg_pool_tokens",
    "pixel_shuffle_tokens",
    "pixel_unshuffle_tokens",
    "reduce_tokens",
    "vocab_subset_from_probs",
]
