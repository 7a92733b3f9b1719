"""Vision-to-language connectors: the AlignVLM ALIGN connector (paper form) and an MLP baseline.

ALIGN (spec ``alignvlm.md`` §1, notation d = vision width, D = LM hidden size, V = vocabulary)::

    H1 = LN1(W1 · F)           W1: Linear(d' -> D, bias)        [B, N', D]
    Z  = W2 · H1               W2: Linear(D -> V, no bias)      [B, N', V]   (init: a *copy* of the LM head)
    P  = softmax(LN2(Z))       LN2 over the V logits; LN2 + softmax in fp32
    F' = P · E                 E: the LM's input-embedding table, passed at call time, never stored

``d' = d·s²`` after a pixel shuffle of factor ``s`` and ``d`` otherwise. Every output row is a convex
combination of rows of ``E``. Token reduction (not in the paper) runs on the features before ``W1``.
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AlignConnector",
    "MLPConnector",
    "avg_pool_tokens",
    "pixel_shuffle_tokens",
    "pixel_unshuffle_tokens",
    "probability_stats",
    "reduce_tokens",
    "vocab_subset_from_probs",
]

_REDUCTIONS = {None: None, "none": None, "pixel_shuffle": "pixel_shuffle", "avg_pool": "avg_pool",
               "avgpool": "avg_pool"}


# --------------------------------------------------------------------------------------------- token reduction
def _square_side(n: int, factor: int, what: str) -> int:
    if factor < 1:
        raise ValueError(f"{what}: factor must be >= 1, got {factor}")
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{what} needs a square token grid, got N={n} tokens (not a perfect square); "
                         "drop CLS/prefix tokens first")
    if side % factor:
        raise ValueError(f"{what}: grid side {side} (N={n}) is not divisible by factor {factor}")
    return side


def pixel_shuffle_tokens(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Space-to-depth on a square token grid: ``[B, N, D] -> [B, N/f², D·f²]``.

    Channel order (spec §2, our own): ``(B,H,W,D) -> (B,H/f,f,W/f,f,D) -> (B,H/f,W/f,f,f,D) -> (B,HW/f²,f²D)``,
    i.e. output token ``(i, j)`` concatenates the input tokens ``(i·f + a, j·f + b)`` for ``a``, then ``b``
    (row-major inside the f×f block). Raises ``ValueError`` unless N is a square whose side divides by f.
    """
    b, n, d = x.shape
    side = _square_side(n, factor, "pixel_shuffle_tokens")
    s, g = factor, side // factor
    x = x.reshape(b, g, s, g, s, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, s * s * d)


def pixel_unshuffle_tokens(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Exact inverse of :func:`pixel_shuffle_tokens`: ``[B, N/f², D·f²] -> [B, N, D]``.

    (Named after the spec's "unshuffle∘shuffle = identity"; unlike ``torch.pixel_unshuffle`` it goes
    depth-to-space.)
    """
    b, m, c = x.shape
    g = _square_side(m, 1, "pixel_unshuffle_tokens")
    s = factor
    if c % (s * s):
        raise ValueError(f"pixel_unshuffle_tokens: channels {c} not divisible by factor² = {s * s}")
    d = c // (s * s)
    x = x.reshape(b, g, g, s, s, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * s * g * s, d)


def avg_pool_tokens(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool f×f blocks of a square token grid: ``[B, N, D] -> [B, N/f², D]``."""
    b, n, d = x.shape
    side = _square_side(n, factor, "avg_pool_tokens")
    grid = x.transpose(1, 2).reshape(b, d, side, side)
    pooled = F.avg_pool2d(grid, kernel_size=factor, stride=factor)
    return pooled.flatten(2).transpose(1, 2)


def _normalise_reduction(reduction) -> Tuple[Optional[str], Optional[int]]:
    """Accepts ``None``, a name, or the spec's tuple form ``("pixel_shuffle", s)`` / ``("avgpool", k)``."""
    factor = None
    if isinstance(reduction, (tuple, list)):
        reduction, factor = reduction
    key = reduction.lower() if isinstance(reduction, str) else reduction
    if key not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected None, 'pixel_shuffle' or 'avg_pool'")
    return _REDUCTIONS[key], factor


def reduce_tokens(x: torch.Tensor, reduction: Optional[str], factor: int) -> torch.Tensor:
    """Apply the named token reduction (``None`` = identity) to ``[B, N, D]`` features."""
    reduction, _ = _normalise_reduction(reduction)
    if reduction is None:
        return x
    if reduction == "pixel_shuffle":
        return pixel_shuffle_tokens(x, factor)
    return avg_pool_tokens(x, factor)


def _reduced_dim(vision_dim: int, reduction: Optional[str], factor: int) -> int:
    return vision_dim * factor * factor if reduction == "pixel_shuffle" else vision_dim


# ------------------------------------------------------------------------------------------------------ ALIGN
class AlignConnector(nn.Module):
    """ALIGN connector: ``features [B, N, d]`` + LM input embeddings ``E [V, D]`` -> ``[B, N', D]``.

    Args:
        vision_dim: d, the vision token width.
        lm_hidden: D, the LM hidden size.
        vocab_size: V, rows of the LM head / input-embedding table.
        lm_head_weight: optional ``[V, D]`` LM-head weight; W2 is initialised as a *copy* of it.
        vocab_subset: optional ``LongTensor[S]``; W2 rows, LN2 parameters and E rows are sliced together and
            the softmax runs over S only (see :meth:`set_vocab_subset`).
        reduction: ``None``, ``"pixel_shuffle"`` or ``"avg_pool"`` (also ``("pixel_shuffle", s)``).
        reduction_factor: s (grid side divisor) for the reduction.
        second_ln: apply LN2 over the V logits (paper form). ``False`` gives softmax(Z).
        affine_ln: affine LN1 / LN2 (default) or parameter-free.
        softmax_fp32: run LN2 + softmax in fp32 (default and recommended).
        w1_bias: bias on W1 (default ``True``, as in the unofficial code).
        detach_embeddings: use ``E.detach()`` (connector-only training; the convex hull stays fixed).

    E is never registered as a parameter or buffer: pass the live table
    (``lm.get_input_embeddings().weight``) at every call.
    """

    def __init__(self, vision_dim: int, lm_hidden: int, vocab_size: int,
                 lm_head_weight: Optional[torch.Tensor] = None,
                 vocab_subset: Optional[torch.Tensor] = None,
                 reduction: Union[None, str, tuple] = None, reduction_factor: int = 2, *,
                 second_ln: bool = True, affine_ln: bool = True, softmax_fp32: bool = True,
                 w1_bias: bool = True, detach_embeddings: bool = False):
        super().__init__()
        reduction, tuple_factor = _normalise_reduction(reduction)
        self.reduction = reduction
        self.reduction_factor = int(tuple_factor or reduction_factor)
        self.vision_dim, self.lm_hidden, self.vocab_size = vision_dim, lm_hidden, vocab_size
        self.softmax_fp32 = softmax_fp32
        self.detach_embeddings = detach_embeddings
        in_dim = _reduced_dim(vision_dim, reduction, self.reduction_factor)
        self.w1 = nn.Linear(in_dim, lm_hidden, bias=w1_bias)
        self.ln1 = nn.LayerNorm(lm_hidden, elementwise_affine=affine_ln)
        self.w2 = nn.Linear(lm_hidden, vocab_size, bias=False)
        self.ln2 = nn.LayerNorm(vocab_size, elementwise_affine=affine_ln) if second_ln else None
        self.register_buffer("vocab_subset", None, persistent=False)
        if lm_head_weight is not None:
            self.init_from_lm_head(lm_head_weight)
        if vocab_subset is not None:
            self.set_vocab_subset(vocab_subset)

    # ---------------------------------------------------------------------------------------------- set-up
    @classmethod
    def from_lm(cls, vision_dim: int, lm: nn.Module, **kwargs) -> "AlignConnector":
        """Build from a transformers causal LM: D and V from its embeddings, W2 = a copy of its LM head.

        The connector is created in fp32 on the head's device (the copy is converted to that dtype).
        """
        head = lm.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(lm).__name__} has no output embeddings (LM head) to copy into W2")
        head_weight = head.weight
        embed = lm.get_input_embeddings().weight
        if embed.shape != head_weight.shape:
            raise ValueError(f"LM head {tuple(head_weight.shape)} and input embeddings {tuple(embed.shape)} "
                             "differ in shape; ALIGN needs P over the same vocabulary as E")
        vocab, hidden = head_weight.shape
        module = cls(vision_dim, hidden, vocab, **kwargs)
        module.to(head_weight.device)
        module.init_from_lm_head(head_weight)
        return module

    @torch.no_grad()
    def init_from_lm_head(self, weight: torch.Tensor) -> None:
        """Set W2 to a *copy* (``detach().clone()``) of the LM-head weight ``[V, D]``; never shared storage."""
        expected = (self.vocab_size, self.lm_hidden)
        if tuple(weight.shape) != expected:
            raise ValueError(f"LM-head weight has shape {tuple(weight.shape)}, expected {expected}")
        copy = weight.detach().clone().to(device=self.w2.weight.device, dtype=self.w2.weight.dtype)
        assert copy.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr(), \
            "W2 must not share storage with the LM head"
        self.w2.weight = nn.Parameter(copy, requires_grad=self.w2.weight.requires_grad)

    def set_vocab_subset(self, vocab_subset: Optional[torch.Tensor]) -> None:
        """Restrict the softmax to token ids ``vocab_subset`` (``LongTensor[S]``); ``None`` restores all V."""
        if vocab_subset is None:
            self.vocab_subset = None
            return
        idx = torch.as_tensor(vocab_subset, dtype=torch.long, device=self.w2.weight.device).flatten()
        if idx.numel() == 0:
            raise ValueError("vocab_subset is empty")
        if int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size:
            raise ValueError(f"vocab_subset ids must lie in [0, {self.vocab_size})")
        if idx.unique().numel() != idx.numel():
            raise ValueError("vocab_subset has duplicate ids")
        self.vocab_subset = idx

    # ---------------------------------------------------------------------------------------------- compute
    def _embeddings(self, embed_weight: torch.Tensor) -> torch.Tensor:
        if embed_weight.dim() != 2 or tuple(embed_weight.shape) != (self.vocab_size, self.lm_hidden):
            raise ValueError(f"embed_weight must be [V={self.vocab_size}, D={self.lm_hidden}], "
                             f"got {tuple(embed_weight.shape)}")
        e = embed_weight.detach() if self.detach_embeddings else embed_weight
        return e if self.vocab_subset is None else e.index_select(0, self.vocab_subset)

    def probs(self, features: torch.Tensor) -> torch.Tensor:
        """P = softmax(LN2(W2·LN1(W1·F))): ``[B, N, d] -> [B, N', S]`` (S = V or the subset size), fp32 when
        ``softmax_fp32`` (otherwise the parameter dtype). Rows are non-negative and sum to 1."""
        x = reduce_tokens(features, self.reduction, self.reduction_factor)
        x = x.to(self.w1.weight.dtype)
        h = self.ln1(self.w1(x))
        sub = self.vocab_subset
        w2 = self.w2.weight if sub is None else self.w2.weight.index_select(0, sub)
        z = F.linear(h, w2)
        dtype = torch.float32 if self.softmax_fp32 else z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(dtype)
            if self.ln2 is not None:
                weight, bias = self.ln2.weight, self.ln2.bias
                if sub is not None and weight is not None:
                    weight, bias = weight.index_select(0, sub), bias.index_select(0, sub)
                weight = None if weight is None else weight.to(dtype)
                bias = None if bias is None else bias.to(dtype)
                z = F.layer_norm(z, (z.shape[-1],), weight, bias, self.ln2.eps)
            return torch.softmax(z, dim=-1)

    def forward(self, features: torch.Tensor, embed_weight: torch.Tensor, return_probs: bool = False):
        """``features [B, N, d]``, ``embed_weight [V, D]`` (the LM's live input table) -> ``[B, N', D]`` in
        ``embed_weight``'s dtype; with ``return_probs=True`` returns ``(aligned, P [B, N', S])``."""
        e = self._embeddings(embed_weight)
        p = self.probs(features)
        out = torch.matmul(p.to(e.dtype), e)
        return (out, p) if return_probs else out

    def extra_repr(self) -> str:
        subset = None if self.vocab_subset is None else self.vocab_subset.numel()
        return (f"reduction={self.reduction}, factor={self.reduction_factor}, vocab_subset={subset}, "
                f"softmax_fp32={self.softmax_fp32}, detach_embeddings={self.detach_embeddings}")


@torch.no_grad()
def vocab_subset_from_probs(mean_probs: torch.Tensor, threshold: float = 1e-6,
                            top_k: Optional[int] = None) -> torch.Tensor:
    """Token ids to keep from a calibration mean P ``[V]``: ids with mass > ``threshold``, or the ``top_k``
    ids by mass. Returned sorted ascending (``LongTensor[S]``)."""
    mean_probs = mean_probs.flatten()
    if top_k is not None:
        idx = torch.topk(mean_probs, min(top_k, mean_probs.numel())).indices
    else:
        idx = torch.nonzero(mean_probs > threshold).flatten()
    return idx.sort().values


@torch.no_grad()
def probability_stats(probs: torch.Tensor, top_k: int = 100) -> dict:
    """Diagnostics of ALIGN's P ``[..., S]`` (rows sum to 1), averaged over all rows (spec §4 logging):
    ``entropy`` (nats; uniform = ln S), ``max_prob`` (the largest entry) and ``top{k}_mass`` (sum of the ``k``
    largest entries, ``k`` capped at S). A collapse to uniform or to one token shows in all three."""
    p = probs.detach().float().reshape(-1, probs.shape[-1])
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    k = min(top_k, p.shape[-1])
    top = torch.topk(p, k, dim=-1).values
    return {"entropy": entropy.mean().item(), "max_prob": top[:, 0].mean().item(),
            f"top{top_k}_mass": top.sum(-1).mean().item()}


# -------------------------------------------------------------------------------------------------------- MLP
class MLPConnector(nn.Module):
    """Controlled baseline: ``Linear(d' -> D) -> GELU -> Linear(D -> D)`` on ``[B, N, d] -> [B, N', D]``.

    Same call signature as :class:`AlignConnector`; ``embed_weight`` is accepted and only used for the output
    dtype (so the two connectors are interchangeable). ``hidden`` defaults to D.
    """

    def __init__(self, vision_dim: int, lm_hidden: int, reduction: Union[None, str, tuple] = None,
                 reduction_factor: int = 2, hidden: Optional[int] = None, bias: bool = True):
        super().__init__()
        reduction, tuple_factor = _normalise_reduction(reduction)
        self.reduction = reduction
        self.reduction_factor = int(tuple_factor or reduction_factor)
        self.vision_dim, self.lm_hidden = vision_dim, lm_hidden
        in_dim = _reduced_dim(vision_dim, reduction, self.reduction_factor)
        hidden = hidden or lm_hidden
        self.fc1 = nn.Linear(in_dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, lm_hidden, bias=bias)

    def forward(self, features: torch.Tensor, embed_weight: Optional[torch.Tensor] = None,
                return_probs: bool = False):
        """``features [B, N, d]`` -> ``[B, N', D]`` (``(out, None)`` with ``return_probs=True``)."""
        x = reduce_tokens(features, self.reduction, self.reduction_factor).to(self.fc1.weight.dtype)
        out = self.fc2(self.act(self.fc1(x)))
        if embed_weight is not None:
            out = out.to(embed_weight.dtype)
        return (out, None) if return_probs else out
