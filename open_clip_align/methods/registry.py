"""Training methods selectable with ``--loss NAME``: one class per method declares everything about it.

A ``Method`` says, in one place, what ``python -m training.main --loss NAME`` needs:

* ``add_arguments(group)``: its flags, all spelled ``--<flag_prefix>-...`` (aliases may differ), shown under
  their own heading in ``--help``; given to any other ``--loss`` they are refused;
* ``check(args)``: its rules on flag combinations, as one-line ``UsageError``s;
* ``refused_flags``: the open_clip_train flags it cannot honour (``flag_rules.FlagRule``), refused in one line;
* ``needs(args)``: what it needs from the model (``ModelNeeds``: hard negatives, an EMA teacher, components);
* ``owns_train_data(args)`` / ``train_data(...)``: its own training data, when open_clip's loaders (or the
  shared hard-negative formats) are not it;
* ``setup_model(model, args)``: anything else the model needs before training (e.g. loading a head);
* ``create_loss(args)``: its loss, a module whose forward takes the model's output dict and returns a dict of
  weighted terms (open_clip_train sums and logs them).

``register_method`` is the one decorator (as timm's ``register_model``); ``list_methods``/``get_method`` read the
one dict. The training seam dispatches through this registry only, so a user method in a module passed with
``--import`` works exactly like the built-in ones.
"""
import argparse
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Type, Union

import torch

from ..errors import UsageError
from ..flag_rules import FlagRule


@dataclass(frozen=True)
class ModelNeeds:
    """What a method needs from the model it trains.

    ``hardneg``: encode text ``[B, 1+K, L]`` and emit ``neg_text_features [B,K,D]``/``neg_text_valid [B,K]``.
    ``teacher``: own a frozen EMA teacher, emit its ``teacher_*`` features and update it after every optimizer
    step with decay ``ema_decay``. ``components``: a ComAlign model in component form.
    """

    hardneg: bool = False
    teacher: bool = False
    ema_decay: float = 0.9996
    components: bool = False


class Method:
    """Base class of a training method; subclass, set ``name`` (and ``flag_prefix``), override what differs."""

    name: str = ""
    flag_prefix: str = ""
    summary: str = ""
    refused_flags: Sequence[FlagRule] = ()
    hard_images: bool = False  # its loss reads NegCLIP's hard-negative images (``hard_*`` features)

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Add this method's flags (``--<flag_prefix>-...``) to ``group``."""

    def check(self, args: argparse.Namespace) -> None:
        """Raise ``UsageError`` (one line naming the flags) for a combination this method cannot run."""

    def needs(self, args: argparse.Namespace) -> ModelNeeds:
        return ModelNeeds()

    def owns_train_data(self, args: argparse.Namespace) -> bool:
        """True when ``train_data`` builds the training data (else the hard-negative formats or open_clip's)."""
        return False

    def train_data(self, args: argparse.Namespace, preprocess_fns, tokenizer, epoch: int = 0):
        """open_clip_train's ``DataInfo`` for training (called only when ``owns_train_data``)."""
        raise NotImplementedError(f"method {self.name!r} owns its train data but builds none")

    def setup_model(self, model: torch.nn.Module, args: argparse.Namespace) -> None:
        """Prepare ``model`` beyond ``needs`` (called once, after the pretrained weights loaded)."""

    def create_loss(self, args: argparse.Namespace) -> torch.nn.Module:
        raise NotImplementedError


_METHODS: Dict[str, Method] = {}


def register_method(cls: Type[Method]) -> Type[Method]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (re-registering the same class, as a
    module reload does, replaces it; another class under a taken name is an error)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a method needs a name (the value of --loss)")
    old = _METHODS.get(cls.name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"method {cls.name!r} is already registered (by {type(old).__qualname__})")
    method = cls()
    _check_namespace(method)
    _METHODS[cls.name] = method
    return cls


def _check_namespace(method: Method) -> None:
    """Every flag a method adds must start with ``--<flag_prefix>-``: methods cannot take each other's flags."""
    parser = argparse.ArgumentParser(add_help=False)
    method.add_arguments(parser.add_argument_group(method.name))
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings]
    if flags and not method.flag_prefix:
        raise ValueError(f"method {method.name!r} adds flags {flags} but sets no flag_prefix")
    stray = [f for f in flags if not f.startswith(f"--{method.flag_prefix}-")]
    if stray:
        raise ValueError(f"method {method.name!r}: flags {stray} do not start with --{method.flag_prefix}-")


def list_methods() -> List[str]:
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise UsageError(f"unknown loss {name!r}; registered losses: {', '.join(list_methods())}") from None


def method_flag_owner(dest: str) -> Optional[Method]:
    """The registered method whose flags include ``dest`` (an argparse destination), or None."""
    for method in _METHODS.values():
        parser = argparse.ArgumentParser(add_help=False)
        method.add_arguments(parser.add_argument_group(method.name))
        if any(a.dest == dest for a in parser._actions):
            return method
    return None


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Every registered method's flags, one ``--help`` heading per method."""
    for name in list_methods():
        method = _METHODS[name]
        title = f"open_clip_align: --loss {name}" + (f" ({method.summary})" if method.summary else "")
        method.add_arguments(parser.add_argument_group(title))


# ------------------------------------------------------------------ the loss-only shortcut

def register_loss(name: str, *, uses_hardneg: bool = False,
                  uses_teacher: Union[bool, Callable[[argparse.Namespace], bool]] = False):
    """Register a loss factory ``fn(args) -> nn.Module`` as a method with no flags of its own.

    ``uses_hardneg``: it consumes ``neg_text_features``/``neg_text_valid`` (the run needs ``--hardneg-format``);
    ``uses_teacher``: it consumes the EMA teacher's ``teacher_*`` features (a bool or ``fn(args)``).
    """
    def wrap(factory: Callable[[argparse.Namespace], torch.nn.Module]):
        existing = _METHODS.get(name)
        if existing is not None and getattr(existing, "factory", None) is not factory:
            raise ValueError(f"loss {name!r} is already registered")

        class _LossMethod(Method):
            def needs(self, args):
                teacher = uses_teacher(args) if callable(uses_teacher) else uses_teacher
                return ModelNeeds(hardneg=uses_hardneg, teacher=bool(teacher))

            def create_loss(self, args):
                return factory(args)

        _LossMethod.name = name
        _LossMethod.factory = staticmethod(factory)
        _LossMethod.__qualname__ = f"register_loss({name!r})"
        _METHODS.pop(name, None)
        register_method(_LossMethod)
        return factory
    return wrap


def create_loss(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """The loss of the method registered as ``name``, built from an open_clip_train args namespace."""
    return get_method(name).create_loss(args)
