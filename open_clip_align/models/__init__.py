"""Plugin model classes and their registry."""
from .factory import create_plugin_model, load_plugin_checkpoint, plugin_block
from .hardneg import (HardNegCLIP, HardNegCoCa, HardNegCustomTextCLIP, HardNegMixin, enable_hardneg, make_teacher,
                      plain_state_dict)
from .registry import get_arch, list_archs, register_arch

__all__ = ["HardNegCLIP", "HardNegCoCa", "HardNegCustomTextCLIP", "HardNegMixin", "create_plugin_model",
           "enable_hardneg", "get_arch", "list_archs", "load_plugin_checkpoint", "make_teacher", "plain_state_dict",
           "plugin_block", "register_arch"]
