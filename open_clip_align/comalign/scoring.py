"""ComAlign scoring (spec comalign.md §3): max-mean role scores and the final score combinations.

Tensors in, tensors out; no model. Inputs are L2-normalised components (``l2_normalize``: eps 1e-8, so zero
pads stay zero). For one image (components Î_p, p<P) and one caption (components T̂_k, k<K) of one role,
with M[p,k] = ⟨Î_p, T̂_k⟩::

    s_T2I = mean_k max_p M[p,k]      (each text component finds its best image component)
    s_I2T = mean_p max_k M[p,k]      (each image component finds its best text component)

Padding:

* ``"reference"`` (the released scorer): text pads are zero vectors (pads given by a mask are zeroed), so their
  column of M is 0 and they stay in the K denominator (the figure's 0.583 = (0.85 + 0.90 + 0)/3) and floor
  every max_k at 0; image pad slots are ordinary slots (after the head they are non-zero), P is fixed.
* ``"masked"`` (newly trained heads): max and mean run over real entries only (K = real text components,
  P = real image components). When either side has **no** real component of the role, both scores are **0**.

``smooth=τ_m`` replaces every max by τ_m·logsumexp(x/τ_m) over the same entries (a training option: denser
gradients than the hard max).

Gallery scoring is blocked: one [bi·P, d] × [bt·K, d]ᵀ matmul per (image block, caption block), reduced at once,
so peak memory is one [bi, P, bt, K] block (~210 MB at 256 × 2048 × 10 × 10) whatever the gallery size, where
the reference materialises [N_img, chunk, P, K] (~10 GB for 5000 × 5000).
"""
from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

PADDINGS = ("reference", "masked")
MODES = ("paper", "reference", "custom")
NORMALISE = ("test-set", "fixed", "none")
GLOBAL_TERMS = ("refined", "clip")
# excluded entries are filled with this before a max: scores are cosines in [-1, 1], and a finite value keeps
# logsumexp gradients finite where a whole row is excluded (those rows are zeroed afterwards)
_EXCLUDED = -1.0e4

# spec §3 "Reference ranking"; fine_* are the role sums F = entity·F^e + relation·F^r ("rel_coef = 1" of the
# reference multiplies the entity term)
REFERENCE_WEIGHTS = {
    "t2i": {"clip": 10.0, "refined": 1.0, "fine_t2i": 1.0},
    "i2t": {"clip": 2.0, "refined": 0.06, "fine_i2t": 0.06, "fine_t2i": 0.02},
    "entity": 1.0,
    "relation": 1.0,
}
TERMS = ("clip", "refined", "fine_i2t", "fine_t2i", "entity_i2t", "entity_t2i", "relation_i2t", "relation_t2i")


def l2_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / max(‖x‖, eps) over the last dim; zero vectors stay zero."""
    return F.normalize(x, dim=-1, eps=eps)


def _check(image_comp, text_comp, image_mask, text_mask, padding, smooth):
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if smooth is not None and not smooth > 0:
        raise ValueError(f"smooth (τ_m) must be > 0 or None, got {smooth}")
    if image_comp.ndim != 3 or text_comp.ndim != 3 or image_comp.shape[-1] != text_comp.shape[-1]:
        raise ValueError(f"expected image components [Ni,P,d] and text components [Nt,K,d], got "
                         f"{tuple(image_comp.shape)} and {tuple(text_comp.shape)}")
    if image_mask is not None and image_mask.shape != image_comp.shape[:2]:
        raise ValueError(f"image_mask must be [Ni,P]={tuple(image_comp.shape[:2])}, got {tuple(image_mask.shape)}")
    if text_mask is not None and text_mask.shape != text_comp.shape[:2]:
        raise ValueError(f"text_mask must be [Nt,K]={tuple(text_comp.shape[:2])}, got {tuple(text_mask.shape)}")


def _prepare(image_comp, text_comp, image_mask, text_mask, padding):
    """Float32 (at least) inputs and boolean masks; reference mode zeroes masked text pads and drops the masks."""
    dtype = torch.promote_types(torch.promote_types(image_comp.dtype, text_comp.dtype), torch.float32)
    image_comp, text_comp = image_comp.to(dtype), text_comp.to(dtype)
    if padding == "reference":
        if text_mask is not None:
            text_comp = text_comp * text_mask.to(device=text_comp.device, dtype=dtype)[..., None]
        return image_comp, text_comp, None, None
    if image_mask is None:
        image_mask = torch.ones(image_comp.shape[:2], dtype=torch.bool, device=image_comp.device)
    if text_mask is None:
        text_mask = torch.ones(text_comp.shape[:2], dtype=torch.bool, device=text_comp.device)
    image_mask = image_mask.to(image_comp.device, torch.bool)
    return image_comp, text_comp, image_mask, text_mask.to(text_comp.device, torch.bool)


def _max(x: torch.Tensor, dim: int, smooth: Optional[float]) -> torch.Tensor:
    if smooth is None:
        return x.amax(dim=dim)
    return smooth * torch.logsumexp(x / smooth, dim=dim)


def _exclude(m: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Fill entries where ``keep`` is False; in place unless autograd needs ``m``."""
    return m.masked_fill(~keep, _EXCLUDED) if m.requires_grad else m.masked_fill_(~keep, _EXCLUDED)


def _reduce_block(m: torch.Tensor, image_keep: Optional[torch.Tensor], text_keep: Optional[torch.Tensor],
                  smooth: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max-mean of one block of similarities.

    m [bi,P,bt,K]; image_keep broadcastable as [bi,P,1,1] and text_keep as [*,1,bt,K] (None: reference
    padding, every entry counts). Returns (i2t [bi,bt], t2i [bi,bt]) — t2i still image-major.
    """
    if image_keep is None:
        i2t = _max(m, 3, smooth).mean(dim=1)
        t2i = _max(m, 1, smooth).mean(dim=-1)
        return i2t, t2i
    img_w = image_keep[:, :, 0, 0].to(m.dtype)                      # [bi,P]
    txt_w = text_keep[:, 0].to(m.dtype)                             # [*,bt,K]
    n_img = img_w.sum(dim=1)                                        # [bi]
    n_txt = txt_w.sum(dim=-1)                                       # [*,bt]
    m = _exclude(m, text_keep)
    i2t = (_max(m, 3, smooth) * img_w[:, :, None]).sum(dim=1) / n_img.clamp_min(1)[:, None]
    m = _exclude(m, image_keep)
    t2i = (_max(m, 1, smooth) * txt_w).sum(dim=-1) / n_txt.clamp_min(1)
    empty = (n_img[:, None] == 0) | (n_txt == 0)
    return i2t.masked_fill(empty, 0.0), t2i.masked_fill(empty, 0.0)


def maxmean_scores(image_comp: torch.Tensor, text_comp: torch.Tensor, image_mask: Optional[torch.Tensor] = None,
                   text_mask: Optional[torch.Tensor] = None, padding: str = "reference",
                   smooth: Optional[float] = None, block_images: int = 256,
                   block_texts: int = 2048) -> Tuple[torch.Tensor, torch.Tensor]:
    """All-pairs max-mean scores of one role.

    image_comp [Ni,P,d], text_comp [Nt,K,d] L2-normalised; masks [Ni,P] / [Nt,K] bool, True = real (default:
    all real). Returns ``i2t [Ni,Nt]`` (s_I2T of image i with caption t) and ``t2i [Nt,Ni]``. Computed in
    ``block_images × block_texts`` blocks (peak extra memory ≈ block_images·P·block_texts·K floats);
    differentiable.
    """
    _check(image_comp, text_comp, image_mask, text_mask, padding, smooth)
    if block_images < 1 or block_texts < 1:
        raise ValueError(f"block sizes must be >= 1, got {block_images}, {block_texts}")
    image_comp, text_comp, image_mask, text_mask = _prepare(image_comp, text_comp, image_mask, text_mask, padding)
    (n_img, p, d), (n_txt, k, _) = image_comp.shape, text_comp.shape
    i2t = image_comp.new_zeros(n_img, n_txt)
    t2i = image_comp.new_zeros(n_txt, n_img)
    for i0 in range(0, n_img, block_images):
        img = image_comp[i0:i0 + block_images]
        bi = img.shape[0]
        img_flat = img.reshape(bi * p, d)
        image_keep = None if image_mask is None else image_mask[i0:i0 + bi, :, None, None]
        for t0 in range(0, n_txt, block_texts):
            txt = text_comp[t0:t0 + block_texts]
            bt = txt.shape[0]
            m = (img_flat @ txt.reshape(bt * k, d).T).view(bi, p, bt, k)
            text_keep = None if text_mask is None else text_mask[None, None, t0:t0 + bt]
            block_i2t, block_t2i = _reduce_block(m, image_keep, text_keep, smooth)
            del m  # free this block before the next matmul allocates one
            i2t[i0:i0 + bi, t0:t0 + bt] = block_i2t
            t2i[t0:t0 + bt, i0:i0 + bi] = block_t2i.T
    return i2t, t2i


def paired_maxmean(image_comp: torch.Tensor, text_comp: torch.Tensor, image_mask: Optional[torch.Tensor] = None,
                   text_mask: Optional[torch.Tensor] = None, padding: str = "reference",
                   smooth: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max-mean scores of matched pairs (image b with caption b): image_comp [B,P,d], text_comp [B,K,d] →
    ``(i2t [B], t2i [B])``; same semantics as ``maxmean_scores`` (its diagonal)."""
    _check(image_comp, text_comp, image_mask, text_mask, padding, smooth)
    if image_comp.shape[0] != text_comp.shape[0]:
        raise ValueError(f"paired_maxmean needs as many images as captions, got {image_comp.shape[0]} and "
                         f"{text_comp.shape[0]}")
    image_comp, text_comp, image_mask, text_mask = _prepare(image_comp, text_comp, image_mask, text_mask, padding)
    m = torch.einsum("bpd,bkd->bpk", image_comp, text_comp)[:, :, None]     # [B,P,1,K]
    image_keep = None if image_mask is None else image_mask[:, :, None, None]
    text_keep = None if text_mask is None else text_mask[:, None, None]      # [B,1,1,K]
    i2t, t2i = _reduce_block(m, image_keep, text_keep, smooth)
    return i2t[:, 0], t2i[:, 0]


# ---------------------------------------------------------------------------------------------- full scores

@dataclass
class ComAlignScores:
    """Every score matrix of a gallery: images i < Ni, captions t < Nt.

    clip = C[i,t] = ĝ_i·t̂_t, refined = G[i,t] = ĉ_i·t̂_t ([Ni,Nt]); entity/relation max-mean scores
    ``*_i2t`` [Ni,Nt] and ``*_t2i`` [Nt,Ni]; ``*_has_*`` say whether an image/caption has any real component
    of a role (all True under reference padding, where every role always counts).
    """
    clip: torch.Tensor
    refined: torch.Tensor
    entity_i2t: torch.Tensor
    entity_t2i: torch.Tensor
    relation_i2t: torch.Tensor
    relation_t2i: torch.Tensor
    image_has_entity: torch.Tensor
    image_has_relation: torch.Tensor
    text_has_entity: torch.Tensor
    text_has_relation: torch.Tensor
    padding: str


def _mask(out: Dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The mask output ``<key>_mask``, or non-zero rows when absent (e.g. the reference h5 components)."""
    mask = out.get(f"{key}_mask")
    return out[key].ne(0).any(dim=-1) if mask is None else mask.bool()


def compute_scores(image: Dict[str, torch.Tensor], text: Dict[str, torch.Tensor], padding: str = "reference",
                   smooth: Optional[float] = None, block_images: int = 256,
                   block_texts: int = 2048, exact: bool = False) -> ComAlignScores:
    """All score matrices from ``ComAlignCLIP`` outputs (concatenated over the gallery).

    image: ``image_features`` (ĝ), ``refined_global`` (ĉ) [Ni,d], ``image_entity`` [Ni,Ne,d],
    ``image_relation`` [Ni,Nr,d], optional ``image_entity_mask``/``image_relation_mask``; text:
    ``text_features`` (t̂) [Nt,d], ``text_entity``, ``text_relation``, optional masks. Missing masks mean
    "non-zero rows". Everything is (re-)normalised with eps 1e-8, so raw cached embeddings work too.

    ``exact=True`` (evaluation): the normalised vectors are rounded to fixed point (``eval.scoring.fixed_point``
    with bits for means over up to max(P, K) components) and every score is computed in float64, where all
    dot products, maxima and sums are exact: a pair's scores then depend on that pair alone, never on the
    gallery's shapes or order (equal captions tie exactly). Matrices are float64. Not with ``smooth``.
    """
    missing = [f"image[{k!r}]" for k in ("image_features", "refined_global", "image_entity", "image_relation")
               if k not in image] + [f"text[{k!r}]" for k in ("text_features", "text_entity", "text_relation")
                                     if k not in text]
    if missing:
        raise KeyError(f"compute_scores needs ComAlign component outputs; missing {', '.join(missing)}")
    if exact and smooth is not None:
        raise ValueError("exact=True scores with the hard max; smooth (τ_m) is a training option")
    if exact:
        from ..eval.scoring import exact_bits, fixed_point
        # a max-mean sums at most max(P, K) maxima, each one exact dot product
        bits = exact_bits(max(side[f"{name}_{role}"].shape[1] for side, name in ((image, "image"), (text, "text"))
                              for role in ("entity", "relation")))

        def prepare(x):
            return fixed_point(l2_normalize(x), bits)
    else:
        prepare = l2_normalize
    t_hat = prepare(text["text_features"].float())
    clip = prepare(image["image_features"].float()) @ t_hat.T
    refined = prepare(image["refined_global"].float()) @ t_hat.T
    roles, has = {}, {}
    for role in ("entity", "relation"):
        img_mask, txt_mask = _mask(image, f"image_{role}"), _mask(text, f"text_{role}")
        roles[role] = maxmean_scores(prepare(image[f"image_{role}"].float()),
                                     prepare(text[f"text_{role}"].float()), img_mask, txt_mask,
                                     padding=padding, smooth=smooth, block_images=block_images,
                                     block_texts=block_texts)
        if padding == "reference":
            has[role] = (torch.ones(clip.shape[0], dtype=torch.bool, device=clip.device),
                         torch.ones(clip.shape[1], dtype=torch.bool, device=clip.device))
        else:
            has[role] = (img_mask.any(dim=1).to(clip.device), txt_mask.any(dim=1).to(clip.device))
    return ComAlignScores(clip=clip, refined=refined, entity_i2t=roles["entity"][0], entity_t2i=roles["entity"][1],
                          relation_i2t=roles["relation"][0], relation_t2i=roles["relation"][1],
                          image_has_entity=has["entity"][0], image_has_relation=has["relation"][0],
                          text_has_entity=has["entity"][1], text_has_relation=has["relation"][1], padding=padding)


# ---------------------------------------------------------------------------------------------- combining

class CombinedScores(NamedTuple):
    """Final scores: ``i2t [Ni,Nt]`` (rank captions per image), ``t2i [Nt,Ni]`` (rank images per caption), and
    the normalisation constant divided out of each term matrix (empty when ``normalise="none"``)."""
    i2t: torch.Tensor
    t2i: torch.Tensor
    constants: Dict[str, float]


def _term_matrices(scores: ComAlignScores, entity: float = 1.0, relation: float = 1.0) -> Dict[str, torch.Tensor]:
    """Term name → matrix in its own orientation ([Ni,Nt] for clip/refined/*_i2t, [Nt,Ni] for *_t2i)."""
    return {
        "clip": scores.clip, "refined": scores.refined,
        "entity_i2t": scores.entity_i2t, "entity_t2i": scores.entity_t2i,
        "relation_i2t": scores.relation_i2t, "relation_t2i": scores.relation_t2i,
        "fine_i2t": entity * scores.entity_i2t + relation * scores.relation_i2t,
        "fine_t2i": entity * scores.entity_t2i + relation * scores.relation_t2i,
    }


def normalisation_constant(matrix: torch.Tensor) -> float:
    """|mean over rows of the row-wise max| (rows = images for [Ni,Nt] terms, captions for ``*_t2i``)."""
    return abs(matrix.max(dim=1).values.mean().item())


def tiled_normalisation_constants(term_tile: Callable[[torch.Tensor, torch.Tensor], ComAlignScores], n_images: int,
                                  n_captions: int, names: Sequence[str], weights: Optional[Dict] = None,
                                  chunk_size: int = 1024) -> Dict[str, float]:
    """``normalisation_constant`` of the term matrices ``names`` of a gallery served in tiles: ``term_tile(rows [bi],
    cols [bt])`` gives the ``ComAlignScores`` of those images and captions (``chunk_size`` of each per tile). The
    row-wise maxima run over the tiles, so with exact scores (``compute_scores(exact=True)``) every constant equals
    the full matrices' bit for bit while memory stays one tile. ``weights``: the ``fine_*`` role coefficients."""
    weights, maxima = weights or {}, {}
    for t0 in range(0, n_captions, chunk_size):
        cols = torch.arange(t0, min(t0 + chunk_size, n_captions))
        for i0 in range(0, n_images, chunk_size):
            rows = torch.arange(i0, min(i0 + chunk_size, n_images))
            terms = _term_matrices(term_tile(rows, cols), weights.get("entity", 1.0), weights.get("relation", 1.0))
            for name in names:
                tile_max, of = terms[name].max(dim=1).values, (cols if name.endswith("_t2i") else rows)
                if name not in maxima:
                    maxima[name] = torch.full((n_captions if name.endswith("_t2i") else n_images,), float("-inf"),
                                              dtype=tile_max.dtype)
                maxima[name][of] = torch.maximum(maxima[name][of], tile_max)
    return {name: abs(m.mean().item()) for name, m in maxima.items()}


def normalisation_constants(scores: ComAlignScores, weights: Optional[Dict] = None) -> Dict[str, float]:
    """The constant of every term matrix (``TERMS``), e.g. measured once on a calibration split and passed to
    ``combine(..., normalise="fixed", constants=...)``. ``weights`` supplies the entity/relation coefficients of
    the ``fine_*`` role sums (default 1, 1)."""
    weights = weights or {}
    terms = _term_matrices(scores, weights.get("entity", 1.0), weights.get("relation", 1.0))
    return {name: normalisation_constant(m) for name, m in terms.items()}


def _check_weights(weights: Dict) -> Dict:
    unknown = set(weights) - {"i2t", "t2i", "entity", "relation"}
    for direction in ("i2t", "t2i"):
        unknown |= {f"{direction}.{t}" for t in weights.get(direction, {}) if t not in TERMS}
    if unknown:
        raise ValueError(f"unknown score weight(s) {sorted(unknown)}: expected {{'i2t': {{term: w}}, 't2i': "
                         f"{{term: w}}, 'entity': w, 'relation': w}} with terms from {TERMS}")
    return weights


def _paper_terms(scores: ComAlignScores, global_term: str) -> Tuple[Dict, Dict]:
    """Per-direction term weights of the paper's equal mean; with masked padding a role that is empty for a
    pair is dropped from that pair's mean (weights are then [Ni,Nt] tensors)."""
    if scores.padding == "reference":
        third = 1.0 / 3.0
        return ({global_term: third, "entity_i2t": third, "relation_i2t": third},
                {global_term: third, "entity_t2i": third, "relation_t2i": third})
    ent = (scores.image_has_entity[:, None] & scores.text_has_entity[None, :]).float()
    rel = (scores.image_has_relation[:, None] & scores.text_has_relation[None, :]).float()
    share = 1.0 / (1.0 + ent + rel)                                         # [Ni,Nt]
    i2t = {global_term: share, "entity_i2t": ent * share, "relation_i2t": rel * share}
    t2i = {global_term: share.T, "entity_t2i": (ent * share).T, "relation_t2i": (rel * share).T}
    return i2t, t2i


def combine(scores: ComAlignScores, mode: str = "paper", weights: Optional[Dict] = None,
            normalise: Optional[str] = None, global_term: str = "refined",
            constants: Optional[Dict[str, float]] = None) -> CombinedScores:
    """Final retrieval scores from the term matrices.

    * ``mode="reference"``: spec §3's hand-set weights (``REFERENCE_WEIGHTS``) on the role sums
      F = F^e + F^r; T2I = 10·Ĉ + F̂_T2I + Ĝ, I2T = 2·Ĉ + 0.06·Ĝ + 0.06·F̂_I2T + 0.02·F̂_T2I. Default
      ``normalise="test-set"`` (transductive, as released).
    * ``mode="paper"``: T2I = mean(global, s^e_T2I, s^r_T2I), I2T = mean(global, s^e_I2T, s^r_I2T), with
      ``global_term`` ĉ (``"refined"``, default) or ĝ (``"clip"``); under masked padding a role empty for a pair
      leaves that pair's mean. Default ``normalise="none"``.
    * ``mode="custom"``: ``weights = {"i2t": {term: w}, "t2i": {term: w}, "entity": a, "relation": b}``, terms
      from ``TERMS`` (``fine_*`` = a·F^e + b·F^r; ``*_t2i`` terms enter I2T transposed and vice versa).
      Default ``normalise="none"``.

    ``normalise``: ``"test-set"`` divides each term matrix by ``normalisation_constant`` measured on these
    scores; ``"fixed"`` by ``constants[term]`` (from ``normalisation_constants`` on a calibration split);
    ``"none"`` leaves them. A zero constant leaves its (all-zero-max) matrix unscaled.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    normalise = normalise or ("test-set" if mode == "reference" else "none")
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
    if global_term not in GLOBAL_TERMS:
        raise ValueError(f"global_term must be one of {GLOBAL_TERMS}, got {global_term!r}")
    if (weights is not None) != (mode == "custom"):
        raise ValueError("weights are given exactly when mode='custom'")
    if mode == "paper":
        i2t_w, t2i_w = _paper_terms(scores, global_term)
        terms = _term_matrices(scores)
    else:
        weights = _check_weights(REFERENCE_WEIGHTS if mode == "reference" else weights)
        i2t_w, t2i_w = weights.get("i2t", {}), weights.get("t2i", {})
        terms = _term_matrices(scores, weights.get("entity", 1.0), weights.get("relation", 1.0))
    used = sorted({t for t, w in list(i2t_w.items()) + list(t2i_w.items())
                   if not (isinstance(w, (int, float)) and w == 0)})
    if normalise == "test-set":
        constants = {t: normalisation_constant(terms[t]) for t in used}
    elif normalise == "fixed":
        missing = [t for t in used if constants is None or t not in constants]
        if missing:
            raise ValueError(f"normalise='fixed' needs constants for {missing} (see normalisation_constants)")
        constants = {t: float(constants[t]) for t in used}
    else:
        constants = {}
    scaled = {t: terms[t] / constants[t] if constants.get(t, 0.0) > 0 else terms[t] for t in used}

    def total(direction_weights: Dict, direction: str) -> torch.Tensor:
        out = torch.zeros_like(scores.clip if direction == "i2t" else scores.clip.T)
        for term, w in direction_weights.items():
            if term not in scaled:
                continue
            m = scaled[term]
            same = term.endswith("_t2i") == (direction == "t2i")
            out = out + w * (m if same else m.T)
        return out

    return CombinedScores(i2t=total(i2t_w, "i2t"), t2i=total(t2i_w, "t2i"), constants=constants)
