"""Registry of plugin model architectures (the ``arch`` of a config's ``open_clip_align`` block).

One decorator, one dict, one listing function, as in timm's ``register_model``::

    @register_arch("hardneg")
    class HardNegCLIP(CLIP): ...
"""
from typing import Callable, Dict, List

_ARCHS: Dict[str, Callable] = {}


def register_arch(name: str):
    """Class decorator registering a model class under ``name``; the class is built as ``cls(**model_cfg)``."""
    def wrap(cls):
        if name in _ARCHS and _ARCHS[name] is not cls:
            raise ValueError(f"model arch {name!r} is already registered by {_ARCHS[name].__qualname__}")
        _ARCHS[name] = cls
        return cls
    return wrap


def list_archs() -> List[str]:
    return sorted(_ARCHS)


def get_arch(name: str) -> Callable:
    try:
        return _ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown model arch {name!r}; registered: {', '.join(list_archs())}") from None
