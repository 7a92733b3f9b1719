"""open_clip_align: compositional alignment methods as an open_clip plugin.

Importing the package registers its model configs and model classes with open_clip (``open_clip.create_model``
builds plugin names) and its training losses (``open_clip_align.losses.list_losses()``).
"""
from . import _patches, losses, models
from .losses import create_loss, list_losses, register_loss

__version__ = "0.1.0"

_patches.install()

__all__ = ["create_loss", "list_losses", "losses", "models", "register_loss"]
