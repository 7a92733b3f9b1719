"""A tiny *randomly initialised* Idefics3 (SmolVLM family) model + processor written to a local folder, for tests
and demos of ``--vlm smolvlm`` without any download (like ``--lm tiny-llama``; it is not a captioner).

    python -m open_clip_align.vlm.tiny_smolvlm /tmp/tiny-smolvlm      # then --vlm smolvlm --vlm-path /tmp/tiny-smolvlm

It has what a real SmolVLM has, at toy size: a SigLIP-style vision model on 32-px tiles (patch 8: 16 patches),
pixel shuffle ×2 (4 ``<image>`` tokens per tile), image splitting (images are resized to a longest edge of 64 px
and cut into up to 2×2 tiles plus the global view), a Llama text model (2 layers, hidden 32) over a character
tokenizer with SmolVLM's special tokens (``<image>``, ``<fake_token_around_image>``, ``<global-img>``,
``<row_i_col_j>``, ``<end_of_utterance>``) and SmolVLM's chat template. Seeded: every call writes the same model.
"""
import argparse
import os
import sys
from typing import Union

import torch

__all__ = ["CHAT_TEMPLATE", "tiny_smolvlm_tokenizer", "write_tiny_smolvlm"]

TILE, PATCH, SCALE = 32, 8, 2
# SmolVLM-Instruct's chat template (user / assistant turns, "<image>" where an image goes).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
SPECIALS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|im_start|>"]
            + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])


def tiny_smolvlm_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (lower-cased printable ASCII and newline; ``<pad> <s> </s>
    <unk>`` are ids 0-3) with SmolVLM's special tokens added."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tokenizer


def write_tiny_smolvlm(directory: Union[str, os.PathLike], seed: int = 0, chat_template: bool = True,
                       image_splitting: bool = True) -> str:
    """Write the tiny model, its processor and tokenizer to ``directory`` (loadable with ``local_files_only``);
    returns the directory."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    tokenizer = tiny_smolvlm_tokenizer()
    image_processor = Idefics3ImageProcessor(do_image_splitting=image_splitting, size={"longest_edge": 2 * TILE},
                                             max_image_size={"longest_edge": TILE})
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=(TILE // PATCH) ** 2 // SCALE ** 2,
                                  chat_template=CHAT_TEMPLATE if chat_template else None)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=TILE, patch_size=PATCH),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        scale_factor=SCALE, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat-template", action="store_true", help="plain <image>prompt layout instead")
    parser.add_argument("--no-image-splitting", action="store_true", help="one tile (the global view) per image")
    args = parser.parse_args(argv)
    print(write_tiny_smolvlm(args.directory, args.seed, not args.no_chat_template, not args.no_image_splitting))
    return 0


if __name__ == "__main__":
    sys.exit(main())
