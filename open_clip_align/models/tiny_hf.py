"""A tiny random ``CustomTextCLIP`` with a Hugging Face text tower, written offline (tests and benchmarks only).

open_clip builds an HF text tower from ``text_cfg.hf_model_name`` (a folder with ``config.json`` and weights, which
``create_model`` loads when no full checkpoint is given) and tokenizes with ``hf_tokenizer_name`` (a folder a
``PreTrainedTokenizerFast`` was saved to). ``register_tiny_hf_clip(root)`` writes both (a 2-layer BERT, hidden 32, and a word-level
tokenizer with ``[PAD] = 0``, so padded rows are all zeros like every tokenizer's here) plus a model config, and
registers the config with open_clip under ``name``. Nothing is downloaded.
"""
import json
from pathlib import Path
from typing import Sequence

import torch

WORDS = ("a", "an", "the", "red", "green", "blue", "yellow", "square", "circle", "triangle", "left", "right", "of",
         "above", "below", "and", "with", "photo", "cat", "dog")


def register_tiny_hf_clip(root, name: str = "tiny-hftext-ViT", words: Sequence[str] = WORDS,
                          context_length: int = 16) -> str:
    """Write a tiny BERT text tower, its tokenizer and an open_clip config under ``root``; register and return
    ``name`` (build it with ``open_clip.create_model(name)``, tokenize with ``open_clip.get_tokenizer(name)``)."""
    import open_clip
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = Path(root)
    tower, tok_dir, cfg_dir = root / "bert", root / "tokenizer", root / "configs"
    for folder in (tower, tok_dir, cfg_dir):
        folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate([*specials, *dict.fromkeys(words)])}
    config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(tower)  # open_clip loads the tower's own weights
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(tok_dir)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"hf_model_name": str(tower), "hf_tokenizer_name": str(tok_dir),
                     "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear", "context_length": context_length},
    }
    (cfg_dir / f"{name}.json").write_text(json.dumps(model_cfg, indent=2))
    open_clip.add_model_config(cfg_dir)
    return name
