"""The tokenizer shortcut for printable-ASCII captions (``data.caption_tokens.ascii_fast_path``) gives open_clip's
token ids exactly, on the captions it shortcuts and on those it passes to the full cleaning."""
import random
import string

import open_clip
import pytest
import torch
from open_clip import tokenizer as oc_tokenizer

from open_clip_align.data.caption_tokens import CachedTokenizer, PretokenizedCaptions, ascii_fast_path

TRICKY = ["a red cube left of a blue ball", "  A  Red   CUBE\tleft of\na ball  ", "it's a dog's toy, isn't it?",
          "cats &amp; dogs", "cats & dogs", "&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b> text", "café au lait",
          "“curly quotes” and ‘single’", "ﬁsh and ﬂowers", "Ａ fullwidth ｃａｔ", "mojibake: cafÃ©", "nbsp\u00a0here",
          "emoji 🐱 cat", "escape \x1b[31mred\x1b[0m", "line\r\nbreak", "zero\u200bwidth", "123 4.5 6,7 #8 @9",
          "", "   ", "ALL CAPS SENTENCE.", "tab\tinside", "back\\slash and /slash", "~`!@#$%^*()_+-={}[]|:;\"'<>?,./"]


def _fuzz(n: int, seed: int = 0):
    rng = random.Random(seed)
    alphabet = string.printable + "&;#éü“”ﬁ\u00a0"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.mark.parametrize("clean", ["lower", "whitespace"])
def test_same_token_ids_as_open_clip(clean):
    tokenizer = oc_tokenizer.SimpleTokenizer(clean=clean)
    fast = ascii_fast_path(tokenizer)
    assert fast is not tokenizer and tokenizer.clean_fn is not fast.clean_fn  # the original is left as it was
    texts = TRICKY + _fuzz(3000)
    assert torch.equal(fast(texts), tokenizer(texts))


def test_the_shortcut_skips_ftfy_only_where_ftfy_changes_nothing(monkeypatch):
    calls = []
    real = oc_tokenizer.ftfy.fix_text
    monkeypatch.setattr(oc_tokenizer.ftfy, "fix_text", lambda text, *a, **k: calls.append(text) or real(text, *a, **k))
    fast = ascii_fast_path(open_clip.get_tokenizer("ViT-B-32"))
    fast(["a red cube", "cats & dogs", "café", "tab\there"])
    assert calls == ["cats & dogs", "café", "tab\there"]


def test_other_tokenizers_are_used_as_they_are():
    canonical = oc_tokenizer.SimpleTokenizer(clean="canonicalize")
    assert ascii_fast_path(canonical) is canonical

    def plain(texts):
        return torch.zeros(len(texts), 77, dtype=torch.long)
    assert ascii_fast_path(plain) is plain


def test_the_loaders_tokenize_through_the_shortcut_with_identical_rows():
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    captions = TRICKY[:20] + _fuzz(200, seed=1)
    expected = tokenizer(captions)
    cached = CachedTokenizer(tokenizer)
    assert isinstance(cached.tokenizer.clean_fn, type(ascii_fast_path(tokenizer).clean_fn))
    assert torch.equal(cached.rows(captions), expected)
    pre = PretokenizedCaptions(tokenizer, captions)
    assert torch.equal(pre.encode(captions[0], captions[1:5], 4), expected[:5])
