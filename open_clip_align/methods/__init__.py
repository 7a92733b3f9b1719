"""Training methods by name (``--loss NAME``): the registry and the built-in methods.

``clip`` (open_clip's own loss), ``negclip``, ``degla`` and ``ce-clip`` live here, one module each; ComAlign's
method lives with the rest of ComAlign (``open_clip_align.comalign.method``). A user method is a module that
subclasses ``Method`` (or ``HardNegativeMethod``) and decorates it with ``register_method``; pass the module to
``training.main --import``.
"""
from . import ceclip, clip, degla, negclip  # noqa: F401  (register the built-in methods)
from .hardneg import SOFTMAX_REFUSALS, HardNegativeMethod
from .registry import (Method, ModelNeeds, UsageError, add_method_arguments, create_loss, get_method, list_methods,
                       method_flag_owner, register_loss, register_method)

__all__ = ["HardNegativeMethod", "Method", "ModelNeeds", "SOFTMAX_REFUSALS", "UsageError", "add_method_arguments",
           "create_loss", "get_method", "list_methods", "method_flag_owner", "register_loss", "register_method"]
