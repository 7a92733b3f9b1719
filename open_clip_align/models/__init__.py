"""Plugin model classes and their registry."""
from .comalign import (ComAlignCLIP, ComAlignHead, PositionalEncoding, comalign_positional_encoding,
                       load_comalign_head)
from .factory import create_plugin_model, load_plugin_checkpoint, plugin_block
from .hardneg import HardNegCLIP
from .registry import get_arch, list_archs, register_arch

__all__ = [
    "ComAlignCLIP", "ComAlignHead", "HardNegCLIP", "PositionalEncoding", "comalign_positional_encoding",
    "create_plugin_model", "get_arch", "list_archs", "load_comalign_head", "load_plugin_checkpoint",
    "plugin_block", "register_arch",
]
