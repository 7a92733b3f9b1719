"""The AlignVLM token layout (spec ``alignvlm.md`` §2, "concat"), computed from text alone.

    training   (right-padded):  [BOS] visual(N') prompt caption [EOS] pad ...
    generation (left-padded):   pad ... [BOS] visual(N') prompt
    few-shot   (left-padded):   pad ... [BOS] {visual(N') prompt caption_i [EOS]} x k  visual(N') prompt

Visual positions hold the pad id in ``input_ids`` and are marked in ``visual_mask``; the model scatters the
connector output into them. Everything here is token ids, so it runs in DataLoader workers (collate) as well
as inside :meth:`AlignVLM.tokenize`.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["DEFAULT_PROMPT", "IGNORE_INDEX", "SequenceLayout", "special_token_id"]

IGNORE_INDEX = -100
DEFAULT_PROMPT = "A short caption:"     # the one fixed prompt of training and evaluation (spec §4)


def special_token_id(tokenizer, lm_config, name: str) -> Optional[int]:
    """``tokenizer.<name>_token_id``, else ``lm_config.<name>_token_id`` (first entry of a list), else None."""
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None:
        value = getattr(lm_config, f"{name}_token_id", None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


@dataclass(frozen=True)
class SequenceLayout:
    """How one model lays out ``[BOS] visual prompt caption EOS``.

    Attributes:
        n_visual: N', visual tokens per image (after token reduction).
        bos / eos / pad: special ids (``bos`` may be None: no BOS row; ``pad`` falls back to EOS).
        caption_sep: prepended to a caption that does not start with whitespace, since the caption is tokenised
            separately from the prompt ("prompt caption", not "promptcaption" for BPE tokenizers).
        max_caption_tokens: captions are cut to this many tokens (EOS always kept); None = no limit.
    """
    n_visual: int
    bos: Optional[int]
    eos: Optional[int]
    pad: int
    caption_sep: str = " "
    max_caption_tokens: Optional[int] = None

    @staticmethod
    def _encode(tokenizer, text: str) -> List[int]:
        return list(tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _caption_ids(self, tokenizer, caption: str, after_prompt: bool) -> List[int]:
        if caption and self.caption_sep and after_prompt and not caption[0].isspace():
            caption = self.caption_sep + caption
        ids = self._encode(tokenizer, caption)
        if self.max_caption_tokens is not None:
            ids = ids[:self.max_caption_tokens]
        return ids + [self.eos]

    def encode(self, tokenizer, prompts: Sequence[str], captions: Optional[Sequence[str]] = None,
               padding_side: Optional[str] = None,
               shots: Optional[Sequence[Sequence[str]]] = None) -> Dict[str, torch.Tensor]:
        """Token layout for a batch.

        ``shots`` (optional, k captions per row): k in-context examples ``visual prompt caption EOS`` between the
        BOS and the row's own ``visual prompt``; the row then has (k+1)·N' visual positions, in image order.
        ``padding_side`` defaults to ``"right"`` with captions (training) and ``"left"`` without (generation).
        Returns ``input_ids [B, L]`` (pad id at visual and padding positions), ``attention_mask [B, L]`` (long),
        ``visual_mask [B, L]`` (bool, exactly ``n_visual`` per row; (k+1)·``n_visual`` with shots) and, with
        captions, ``labels [B, L]`` (``-100`` except the caption tokens and EOS).
        """
        prompts = list(prompts)
        b = len(prompts)
        if captions is not None:
            captions = list(captions)
            if len(captions) != b:
                raise ValueError(f"{len(captions)} captions but {b} prompts")
            if self.eos is None:
                raise ValueError("training inputs need an EOS token id (tokenizer.eos_token_id or lm.config)")
        if padding_side is None:
            padding_side = "right" if captions is not None else "left"
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if shots is not None and len(shots) != b:
            raise ValueError(f"{len(shots)} rows of few-shot captions for {b} prompts")
        if shots is not None and any(shots) and self.eos is None:
            raise ValueError("few-shot examples need an EOS token id (tokenizer.eos_token_id or lm.config)")
        rows = []                                          # per sample: (ids, is_visual, labels)
        for i in range(b):
            prefix = [self.bos] if self.bos is not None else []
            prompt_ids = self._encode(tokenizer, prompts[i])
            ids, vis = list(prefix), [False] * len(prefix)
            for shot in (shots[i] if shots is not None else ()):
                shot_ids = prompt_ids + self._caption_ids(tokenizer, shot, bool(prompt_ids))
                ids += [self.pad] * self.n_visual + shot_ids
                vis += [True] * self.n_visual + [False] * len(shot_ids)
            ids += [self.pad] * self.n_visual + prompt_ids
            vis += [True] * self.n_visual + [False] * len(prompt_ids)
            labels = [IGNORE_INDEX] * len(ids)
            if captions is not None:
                cap_ids = self._caption_ids(tokenizer, captions[i], bool(prompt_ids))
                ids += cap_ids
                vis += [False] * len(cap_ids)
                labels += cap_ids
            rows.append((ids, vis, labels))
        length = max(len(r[0]) for r in rows)
        input_ids = torch.full((b, length), self.pad, dtype=torch.long)
        attention = torch.zeros((b, length), dtype=torch.long)
        visual = torch.zeros((b, length), dtype=torch.bool)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, vis, lab) in enumerate(rows):
            n = len(ids)
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            input_ids[i, sl] = torch.tensor(ids)
            attention[i, sl] = 1
            visual[i, sl] = torch.tensor(vis)
            labels[i, sl] = torch.tensor(lab)
        out = {"input_ids": input_ids, "attention_mask": attention, "visual_mask": visual}
        if captions is not None:
            out["labels"] = labels
        return out
