"""The SmolVLM / Idefics3 token layout (spec ``alignvlm.md`` §2, "placeholder"): the model's own processor expands
every ``<image>`` of the text into ``<fake_token_around_image><row_i_col_j><image>×T ... <global-img><image>×T
<fake_token_around_image>`` (image splitting: up to N tiles plus the global view, ``T = image_seq_len`` tokens
per tile after the pixel shuffle) and makes ``pixel_values [B, tiles, 3, H, W]``; the model scatters the
connector output into the ``<image>`` positions.

One row (with a chat template, as SmolVLM-Instruct has, the turns are rendered by it; without one, plainly)::

    training   (right-padded):  <image>prompt caption<end_of_utterance> pad ...
    generation (left-padded):   pad ... <image>prompt
    few-shot   (left-padded):   pad ... {<image>prompt caption_i<end_of_utterance>} x k  <image>prompt

The caption is tokenised apart from the prompt and appended to the processor's ids, so the labels are ``-100``
everywhere except the caption tokens and the end-of-utterance token that ends them (the LM's own loss shifts
them). Everything here is token ids and images, so it runs in DataLoader workers (collate).
"""
from typing import Dict, List, Optional, Sequence

import torch

from .layout import IGNORE_INDEX

__all__ = ["END_OF_UTTERANCE", "IMAGE_TOKEN", "InterleavedBatcher", "InterleavedLayout"]

IMAGE_TOKEN = "<image>"
END_OF_UTTERANCE = "<end_of_utterance>"


class InterleavedLayout:
    """Token layout of a SmolVLM / Idefics3 ``processor`` (module docstring).

    Args:
        processor: the model's ``Idefics3Processor`` / ``SmolVLMProcessor`` (tokenizer + image processor).
        caption_sep: prepended to a caption that does not start with whitespace ("Assistant: caption").
        max_caption_tokens: captions are cut to this many tokens (the end-of-utterance is always kept).
    """

    def __init__(self, processor, caption_sep: str = " ", max_caption_tokens: Optional[int] = None):
        self.processor = processor
        tokenizer = processor.tokenizer
        self.caption_sep, self.max_caption_tokens = caption_sep, max_caption_tokens
        eou = tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
        self.eos = eou if eou is not None and eou != tokenizer.unk_token_id else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.chat = bool(getattr(processor, "chat_template", None))

    def _turns(self, prompt: str, shots: Sequence[str]) -> str:
        """The text before the caption: k example turns with their captions, then the query turn."""
        if self.chat:
            messages = []
            for caption in shots:
                messages += [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
                             {"role": "assistant", "content": [{"type": "text", "text": caption}]}]
            messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        text = "".join(f"{IMAGE_TOKEN}{prompt}{self._sep(c)}{c}{END_OF_UTTERANCE}" for c in shots)
        return text + f"{IMAGE_TOKEN}{prompt}"

    def _sep(self, caption: str) -> str:
        return self.caption_sep if caption and self.caption_sep and not caption[0].isspace() else ""

    def caption_ids(self, caption: str) -> List[int]:
        """Caption tokens (cut to ``max_caption_tokens``) + the end-of-utterance id."""
        ids = list(self.processor.tokenizer.encode(self._sep(caption) + caption, add_special_tokens=False))
        if self.max_caption_tokens is not None:
            ids = ids[:self.max_caption_tokens]
        return ids + [self.eos]

    def encode(self, images: Sequence[Sequence], prompts: Sequence[str], captions: Optional[Sequence[str]] = None,
               padding_side: Optional[str] = None,
               shots: Optional[Sequence[Sequence[str]]] = None) -> Dict[str, torch.Tensor]:
        """Model inputs for a batch: ``images[i]`` are row i's PIL images in order (its k shots, then its own).

        Returns ``input_ids``, ``attention_mask`` ``[B, L]``, ``pixel_values [B, tiles, 3, H, W]``,
        ``pixel_attention_mask [B, tiles, H, W]`` and, with captions, ``labels [B, L]``. ``padding_side``
        defaults to right with captions (training) and left without (generation).
        """
        prompts = list(prompts)
        shots = [list(s) for s in shots] if shots is not None else [[] for _ in prompts]
        if len(images) != len(prompts) or len(shots) != len(prompts):
            raise ValueError(f"{len(images)} image lists and {len(shots)} shot lists for {len(prompts)} prompts")
        if any(len(imgs) != len(s) + 1 for imgs, s in zip(images, shots)):
            raise ValueError("each row needs one image per few-shot example plus its own")
        if padding_side is None:
            padding_side = "right" if captions is not None else "left"
        texts = [self._turns(p, s) for p, s in zip(prompts, shots)]
        out = self.processor(text=texts, images=[list(i) for i in images], return_tensors="pt", padding=True,
                             padding_side=padding_side if captions is None else "right")
        batch = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"],
                 "pixel_values": out["pixel_values"]}
        if "pixel_attention_mask" in out:
            batch["pixel_attention_mask"] = out["pixel_attention_mask"]
        if captions is None:
            return batch
        if len(captions) != len(prompts):
            raise ValueError(f"{len(captions)} captions but {len(prompts)} prompts")
        rows = []
        for i, caption in enumerate(captions):
            prefix = out["input_ids"][i][out["attention_mask"][i].bool()].tolist()
            cap = self.caption_ids(caption)
            rows.append((prefix + cap, [IGNORE_INDEX] * len(prefix) + cap))
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            sl = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
            input_ids[i, sl] = torch.tensor(ids)
            attention[i, sl] = 1
            labels[i, sl] = torch.tensor(lab)
        batch.update(input_ids=input_ids, attention_mask=attention, labels=labels)
        return batch


class InterleavedBatcher:
    """Collate ``[(PIL image, caption), ...]`` into the SmolVLM training batch (:meth:`InterleavedLayout.encode`)."""

    def __init__(self, layout: InterleavedLayout, prompt: str):
        self.layout, self.prompt = layout, prompt

    def __call__(self, samples) -> dict:
        images, captions = zip(*samples)
        return self.layout.encode([[img] for img in images], [self.prompt] * len(captions), list(captions), "right")
