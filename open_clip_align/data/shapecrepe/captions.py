"""ShapeCrepe's captions: templates, structured captions, closed-world truth, parsing a caption back, and the
rule-made negatives of training rows."""
import re
from dataclasses import dataclass

from .scenes import COLOURS, RELATIONS, SHAPES, Phrase, Scene, relation

TRAIN_NEG_TYPES = ("swap_att", "swap_obj", "replace_att", "replace_obj", "replace_rel")
_LONG = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
TEMPLATES = {  # name -> (format, relation words); extra objects are listed in {objects} or appended "and ..."
    "plain": ("{s} {r} {o}", _LONG),
    "copula": ("{s} is {r} {o}", _LONG),
    "with": ("{o} with {s} {r}", {"left": "to its left", "right": "to its right", "above": "above it",
                                  "below": "below it"}),
    "there_is": ("there is {objects}; the {ss} is {r} the {os}",
                 {"left": "left of", "right": "right of", "above": "above", "below": "below"}),
}


@dataclass(frozen=True)
class Caption:
    """A structured caption: ``subj`` is ``rel`` of ``obj``; ``extras`` are further objects (no relation)."""
    subj: Phrase
    rel: str
    obj: Phrase
    extras: tuple = ()
    template: str = "plain"

    @property
    def phrases(self) -> tuple:
        return (self.subj, self.obj, *self.extras)

    def __str__(self):
        fmt, words = TEMPLATES[self.template]
        phrases = [str(p) for p in self.phrases]
        listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        text = fmt.format(s=phrases[0], o=phrases[1], r=words[self.rel], objects=listed,
                          ss=self.subj.shape, os=self.obj.shape)
        return text if "{objects}" in fmt else text + "".join(f" and {p}" for p in phrases[2:])


def describe(scene: Scene, template: str = "plain", subject: int = 0) -> Caption:
    """The closed-world caption of ``scene``: object ``subject`` related to the other of the first two
    (subject 1 gives the inverted relation), followed by any further objects."""
    first, second = scene.objects[subject], scene.objects[1 - subject]
    return Caption(first.phrase, relation(first, second), second.phrase,
                   tuple(o.phrase for o in scene.objects[2:]), template)


def caption_is_true(scene: Scene, caption: Caption) -> bool:
    """Closed-world truth: the caption names exactly the scene's objects (shape, colour, size) and its
    relation holds between the two related objects."""
    if sorted(caption.phrases) != sorted(o.phrase for o in scene.objects):
        return False
    by_phrase = {o.phrase: o for o in scene.objects}
    return relation(by_phrase[caption.subj], by_phrase[caption.obj]) == caption.rel


def caption_words(text: str) -> list:
    """The words of a caption, without punctuation (the bag-of-words view)."""
    return re.findall(r"[a-z]+", text)


_PHRASE_RE = rf"an? (?:(?:small|large) )?(?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"


def _template_regex(fmt: str, words: dict):
    alternatives = {"s": _PHRASE_RE, "o": _PHRASE_RE, "r": "|".join(map(re.escape, words.values())),
                    "ss": "|".join(SHAPES), "os": "|".join(SHAPES),
                    "objects": rf"{_PHRASE_RE}(?:(?:, | and ){_PHRASE_RE})+"}
    pattern = "".join(f"(?P<{part[1:-1]}>{alternatives[part[1:-1]]})" if part.startswith("{") else re.escape(part)
                      for part in re.split(r"(\{\w+\})", fmt))
    if "{objects}" not in fmt:
        pattern += rf"(?P<extras>(?: and {_PHRASE_RE})*)"
    return re.compile(pattern)


_TEMPLATE_RES = {name: _template_regex(*spec) for name, spec in TEMPLATES.items()}


def _parse_phrase(text: str) -> Phrase:
    words = text.split()[1:]
    return Phrase(words[-1], words[-2], words[0] if len(words) == 3 else "medium")


def parse_caption(text: str) -> Caption:
    """The structured form of a caption written by ShapeCrepe (inverse of ``str(caption)``)."""
    for name, regex in _TEMPLATE_RES.items():
        match = regex.fullmatch(text)
        if match:
            break
    else:
        raise ValueError(f"not a ShapeCrepe caption: {text!r}")
    rel = {w: r for r, w in TEMPLATES[name][1].items()}[match["r"]]
    if name != "there_is":
        extras = tuple(_parse_phrase(p) for p in match["extras"].split(" and ")[1:])
        return Caption(_parse_phrase(match["s"]), rel, _parse_phrase(match["o"]), extras, name)
    phrases = [_parse_phrase(p) for p in re.split(", | and ", match["objects"])]
    named = {p.shape: p for p in phrases}
    if match["ss"] not in named or match["os"] not in named:
        raise ValueError(f"relation names an unlisted object: {text!r}")
    subj, obj = named[match["ss"]], named[match["os"]]
    return Caption(subj, rel, obj, tuple(p for p in phrases if p not in (subj, obj)), name)


def caption_edits(caption: Caption, neg_type: str, cfg) -> list:
    """All negatives of one training type for a two-object caption (not yet checked against the scene)."""
    subj, rel, obj, template = caption.subj, caption.rel, caption.obj, caption.template
    if neg_type == "swap_att":
        return [Caption(Phrase(subj.shape, obj.colour, subj.size), rel, Phrase(obj.shape, subj.colour, obj.size),
                        (), template)]
    if neg_type == "swap_obj":
        return [Caption(obj, rel, subj, (), template)]
    if neg_type == "replace_rel":
        return [Caption(subj, r, obj, (), template) for r in RELATIONS if r != rel]
    edited = []
    for phrase, other, subject_first in ((subj, obj, True), (obj, subj, False)):
        if neg_type == "replace_obj":
            new = [Phrase(s, phrase.colour, phrase.size) for s in cfg.shapes if s not in (subj.shape, obj.shape)]
        else:  # replace_att: an absent colour, or the opposite non-medium size
            new = [Phrase(phrase.shape, c, phrase.size) for c in cfg.colours if c not in (subj.colour, obj.colour)]
            if phrase.size != "medium":
                new.append(Phrase(phrase.shape, phrase.colour, "large" if phrase.size == "small" else "small"))
        edited += [Caption(p, rel, other, (), template) if subject_first else Caption(other, rel, p, (), template)
                   for p in new]
    return edited
