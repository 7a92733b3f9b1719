"""open_clip_align: compositional alignment methods as an open_clip plugin.

Importing the package registers its model configs and model classes with open_clip (``open_clip.create_model``
builds plugin names; ``registration``) and its training methods (``--loss NAME``; ``methods``); ComAlign
registers its model, method and evaluation scorer from ``open_clip_align.comalign``.
"""
from . import methods, models, registration
from .comalign import method as _comalign_method  # noqa: F401  (registers --loss comalign)
from .comalign import model as _comalign_model  # noqa: F401  (registers the comalign arch)
from .comalign import scorer as _comalign_scorer  # noqa: F401  (registers its evaluation scorer)
from .methods import Method, create_loss, list_methods, register_loss, register_method

__version__ = "0.1.0"

registration.install()

list_losses = list_methods  # the values --loss accepts

__all__ = ["Method", "create_loss", "list_losses", "list_methods", "methods", "models", "register_loss",
           "register_method"]
