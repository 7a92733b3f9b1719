"""Vision-language connectors (AlignVLM): the ALIGN connector, an MLP baseline and token reduction."""
from .connector import (
    AlignConnector,
    MLPConnector,
    avg_pool_tokens,
    pixel_shuffle_tokens,
    pixel_unshuffle_tokens,
    reduce_tokens,
    vocab_subset_from_probs,
)

__all__ = [
    "AlignConnector",
    "MLPConnector",
    "avg_pool_tokens",
    "pixel_shuffle_tokens",
    "pixel_unshuffle_tokens",
    "reduce_tokens",
    "vocab_subset_from_probs",
]
