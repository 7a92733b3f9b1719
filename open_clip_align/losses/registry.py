"""Registry of training losses selectable with ``--loss NAME``.

A loss is registered as a factory ``fn(args) -> nn.Module``. The module's forward takes the model's output
dict as keyword arguments (plus ``output_dict``) and returns a dict of *weighted* terms: open_clip_train
sums every value and logs each key.
"""
from typing import Callable, Dict, List, NamedTuple, Union

import torch


class _Entry(NamedTuple):
    factory: Callable
    uses_hardneg: bool
    uses_teacher: Union[bool, Callable]


_LOSSES: Dict[str, _Entry] = {}


def register_loss(name: str, *, uses_hardneg: bool = False, uses_teacher: Union[bool, Callable] = False):
    """Decorator registering ``factory(args) -> nn.Module`` under ``name``.

    ``uses_hardneg``: the loss consumes ``neg_text_features [B,K,D]``/``neg_text_valid [B,K]``, so the model
    must encode the negatives and the training data must carry them.
    ``uses_teacher``: the loss consumes the EMA teacher's ``teacher_*`` features (a bool, or ``fn(args)``
    when it depends on flags), so the model must own a teacher, run it and update it after each step.
    """
    def wrap(factory):
        if name in _LOSSES and _LOSSES[name].factory is not factory:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = _Entry(factory, uses_hardneg, uses_teacher)
        return factory
    return wrap


def list_losses() -> List[str]:
    return sorted(_LOSSES)


def _entry(name: str) -> _Entry:
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; registered losses: {', '.join(list_losses())}") from None


def create_loss(name: str, args) -> torch.nn.Module:
    """Build the loss registered as ``name`` from an open_clip_train args namespace."""
    return _entry(name).factory(args)


def loss_uses_hardneg(name: str) -> bool:
    return _entry(name).uses_hardneg


def loss_uses_teacher(name: str, args) -> bool:
    uses = _entry(name).uses_teacher
    return bool(uses(args) if callable(uses) else uses)
