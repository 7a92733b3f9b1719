"""The import-time seam into open_clip: the only place this package changes open_clip itself.

``install()`` (run by ``import open_clip_align``) registers ``model_configs/`` with open_clip and wraps
``create_model`` (both ``open_clip.create_model`` and ``open_clip.factory.create_model``) so configs with an
``open_clip_align`` block build plugin classes; every other name reaches the original untouched. It is safe to
call more than once.
"""
import functools
from pathlib import Path

import open_clip
import open_clip.factory as oc_factory

from .models import create_plugin_model, plugin_block

CONFIG_DIR = Path(__file__).parent / "model_configs"
_WRAPPED = "_open_clip_align_wrapped"


def _wrap_create_model(original):
    @functools.wraps(original)
    def create_model(model_name, *args, **kwargs):
        if plugin_block(model_name) is not None:
            return create_plugin_model(model_name, *args, **kwargs)
        return original(model_name, *args, **kwargs)

    setattr(create_model, _WRAPPED, original)
    return create_model


def install() -> None:
    """Register configs and wrap ``create_model``; safe to call more than once."""
    if str(CONFIG_DIR) not in [str(p) for p in oc_factory._MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(CONFIG_DIR)
    if not hasattr(oc_factory.create_model, _WRAPPED):
        oc_factory.create_model = _wrap_create_model(oc_factory.create_model)
    open_clip.create_model = oc_factory.create_model
