"""Plugin model classes and their registry."""
from .factory import create_plugin_model, load_plugin_checkpoint, plugin_block
from .hardneg import HardNegCLIP
from .registry import get_arch, list_archs, register_arch

__all__ = ["HardNegCLIP", "create_plugin_model", "get_arch", "list_archs", "load_plugin_checkpoint", "plugin_block",
           "register_arch"]
