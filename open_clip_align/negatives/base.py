"""Shared vocabulary of the negative-caption pipeline: types, requests, the backend interface and registry.

A *request* asks a backend for ``n`` candidate negatives of one type for one caption; the pipeline validates
every candidate (``validate.py``) before writing it. Backends: ``rules`` (offline, spaCy), ``openai`` (any
OpenAI-compatible chat endpoint), ``hf`` (a local Hugging Face causal LM).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Protocol, Sequence

from ..errors import UserError

#: DeGLA's five types, then SugarCrepe's three.
NEG_TYPES = ("reshuffle_order", "swap_nouns", "swap_adjectives", "replace_adjectives", "replace_nouns",
             "replace_relation", "add_object", "add_attribute")
DEGLA_TYPES = NEG_TYPES[:5]


@dataclass(frozen=True)
class Request:
    """One caption × one negative type; ``n`` candidates wanted; ``seed`` makes sampling reproducible."""

    caption_id: str
    caption: str
    neg_type: str
    n: int = 1
    seed: int = 0


class BackendError(UserError):
    """The backend cannot work at all (unreachable endpoint, missing model): the message says what to fix."""


class Backend(Protocol):
    name: str

    def generate(self, requests: Sequence[Request]) -> List[List[str]]:
        """Candidates for each request, in order (any number each, possibly none; validated afterwards)."""

    def close(self) -> None:
        """Release connections, threads or models."""


_BACKENDS: Dict[str, Callable] = {}


def register_backend(name: str):
    """Decorator: ``factory(args) -> Backend`` selectable with ``--backend name``."""
    def wrap(factory):
        _BACKENDS[name] = factory
        return factory
    return wrap


def list_backends() -> List[str]:
    return sorted(_BACKENDS)


def create_backend(name: str, args) -> Backend:
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(list_backends())}")
    return _BACKENDS[name](args)
