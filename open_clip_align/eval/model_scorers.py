"""Scorers for kinds of models that do not rank by plain cosine, registered by the package that owns the kind.

The evaluation CLI builds every model with open_clip and scores it with ``DualEncoderScorer``; a ``ModelScorer``
registered here takes over for the models it ``matches`` (ComAlign registers one for ``comalign-*`` models, in
``open_clip_align.comalign.scorer``). It brings its own flags (``add_arguments``, refused for other models),
their checks, and ``build``, which wraps the built model into a scorer. The suite names no such kind itself.
"""
import argparse
from typing import Dict, List, Optional

from .items import EvalDataError


class ModelScorer:
    """Base class: set ``name`` and ``title`` (what the kind is, e.g. "ComAlign model (comalign-*)", also the
    ``--help`` heading), override the rest."""

    name: str = ""
    title: str = ""

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        """This kind's flags."""

    def matches(self, model_name: str) -> bool:
        """True for the ``--model`` names this scorer serves (decided before any model is built)."""
        return False

    def check(self, args: argparse.Namespace) -> None:
        """Raise EvalDataError (one line naming the flag) for flags this kind cannot honour."""

    def build(self, args: argparse.Namespace, model, preprocess, tokenizer, base):
        """The scorer for ``model`` (already built and in eval mode); ``base`` is its ``DualEncoderScorer``."""
        raise NotImplementedError


_SCORERS: Dict[str, ModelScorer] = {}


def register_model_scorer(cls):
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    _SCORERS[cls.name] = cls()
    return cls


def model_scorer_for(model_name: Optional[str]) -> Optional[ModelScorer]:
    return next((s for s in _SCORERS.values() if model_name and s.matches(model_name)), None)


def add_model_scorer_arguments(parser: argparse.ArgumentParser) -> None:
    for scorer in _SCORERS.values():
        scorer.add_arguments(parser.add_argument_group(scorer.title or scorer.name))


def _dests(scorer: ModelScorer) -> List[str]:
    parser = argparse.ArgumentParser(add_help=False)
    scorer.add_arguments(parser.add_argument_group(scorer.name))
    return [a.dest for a in parser._actions if a.option_strings]


def check_model_scorer_flags(args: argparse.Namespace, defaults: argparse.Namespace) -> None:
    """Flags of a kind given for a model of another kind would be ignored: refuse them; then the chosen kind's own
    checks."""
    chosen = model_scorer_for(args.model)
    for scorer in _SCORERS.values():
        if scorer is chosen:
            continue
        for dest in _dests(scorer):
            if getattr(args, dest) != getattr(defaults, dest):
                raise EvalDataError(f"--{dest.replace('_', '-')} needs a {scorer.title}, not --model {args.model}")
    if chosen is not None:
        chosen.check(args)
