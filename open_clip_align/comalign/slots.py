"""The slot layout of ``ComAlignCLIP``'s component form: one definition for training data, the store, the
evaluation scorer and tests.

    image slots [B, Ne+Nr+1, d]: entity views 0..Ne-1, relation views Ne..Ne+Nr-1, the unnormalised global last
    text slots  [B, 1+Ne+Nr, d]: the caption, its entity phrases, its relation phrases
    phrase tokens [1+Ne+Nr, L]: the same text layout as token rows, before encoding

Pads are zero rows (the model reads a zero row as a pad).
"""
import torch

from .text import TextComponents


def image_slots(entity: torch.Tensor, entity_mask: torch.Tensor, relation: torch.Tensor,
                relation_mask: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
    """entity [B,Ne,d], relation [B,Nr,d], masks [B,Ne]/[B,Nr] bool, global_ [B,d] -> [B, Ne+Nr+1, d]."""
    return torch.cat([entity * entity_mask[..., None], relation * relation_mask[..., None], global_[:, None]], dim=1)


def text_slots(text: torch.Tensor, entity: torch.Tensor, entity_mask: torch.Tensor, relation: torch.Tensor,
               relation_mask: torch.Tensor) -> torch.Tensor:
    """text [B,d], entity [B,Ne,d], relation [B,Nr,d], masks bool -> [B, 1+Ne+Nr, d]."""
    return torch.cat([text[:, None], entity * entity_mask[..., None], relation * relation_mask[..., None]], dim=1)


def store_image_slots(arrays: dict, index) -> torch.Tensor:
    """Image slots of images ``index`` (an index tensor or slice) of a ``ComponentStore.load_arrays`` dict."""
    return image_slots(arrays["entity"][index], arrays["entity_mask"][index], arrays["relation"][index],
                       arrays["relation_mask"][index], arrays["global"][index])


def store_text_slots(arrays: dict, index) -> torch.Tensor:
    """Text slots of captions ``index`` of a ``ComponentStore.load_arrays`` dict."""
    return text_slots(arrays["text"][index], arrays["text_entity"][index], arrays["text_entity_mask"][index],
                      arrays["text_relation"][index], arrays["text_relation_mask"][index])


def phrase_tokens(tokenizer, caption: str, components: TextComponents, n_entity: int,
                  n_relation: int) -> torch.Tensor:
    """Token rows ``[1 + n_entity + n_relation, L]``: the caption, its entity phrases, its relation phrases;
    unused slots are all-zero rows (pads)."""
    texts = [caption, *components.entities[:n_entity], *components.relations[:n_relation]]
    tokens = tokenizer(texts)
    out = torch.zeros((1 + n_entity + n_relation, tokens.shape[-1]), dtype=tokens.dtype)
    n_e = min(len(components.entities), n_entity)
    out[0] = tokens[0]
    out[1:1 + n_e] = tokens[1:1 + n_e]
    out[1 + n_entity:1 + n_entity + len(tokens) - 1 - n_e] = tokens[1 + n_e:]
    return out
