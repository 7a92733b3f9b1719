"""LoRA on any open_clip tower, as ``torch.nn.utils.parametrize`` parametrizations (spec backbones.md §3).

Each adapted weight W ``[out, in]`` (a Linear's ``weight``, open_clip's fused ``attn.in_proj_weight [3D, D]``, the
``out_proj.weight`` that ``F.multi_head_attention_forward`` reads directly, a conv kernel seen as
``[out, in·kh·kw]``) is replaced, wherever it is read, by

    W_eff = W + (α/r) · B · A          A [r, in] Kaiming-uniform(a=√5), B [out, r] = 0

so the adapted model equals the pretrained one at step 0. W stays a frozen Parameter that nothing writes:
training cannot move it by a single bit (peft's MultiheadAttention LoRA merges and unmerges W around every
forward, which drifts a bf16 W). ``--lora-dropout p`` drops input features of ``A`` (one mask per forward, shared
by every token of the batch, scaled by 1/(1−p)); it is off in eval mode and in every merge.

Training state-dict keys: ``<module>.parametrizations.<name>.original`` (W) and ``….0.lora_A``, ``….0.lora_B``,
``….0.scale`` (α/r, a buffer), so a checkpoint alone says how to merge it (``merge_lora_state_dict``);
``--resume`` needs the same ``--lora-*`` flags (``params.txt`` records them).

Targets (``--lora-targets``, comma-separated): ``attn`` (attention projections: fused in_proj and out_proj of
open_clip/CoCa blocks, timm ``attn.qkv``/``attn.proj``, HF ``query/key/value`` and the attention output,
ModifiedResNet's ``attnpool``), ``mlp`` (open_clip ``mlp.c_fc/c_proj``, timm ``mlp.fc1/fc2``, HF
``intermediate``/``output.dense``, mt5 ``DenseReluDense``), ``conv`` (conv kernels), ``all-linear`` (every Linear
and fused in_proj), or shell-style globs over tensor or module paths (``text.*``, ``visual.trunk.blocks.1*``). The
default is ``attn,mlp`` (plus ``conv`` for a ModifiedResNet image tower, whose convs hold most of its weights).
"""
import fnmatch
import math
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

KEYWORDS = ("attn", "mlp", "conv", "all-linear")
EXTRAS = ("logit_scale", "logit_bias", "proj", "norm", "none")
DEFAULT_EXTRAS = "logit_scale,logit_bias"
SKIP = ("teacher",)  # the EMA teacher follows the student's effective weights: never adapted itself
_MLP_PARTS = {"mlp", "intermediate", "ffn", "feed_forward", "densereludense"}


class LoRADelta(nn.Module):
    """The parametrization W ↦ W + scale · B · A (reshaped to W's shape); see the module docstring."""

    def __init__(self, shape: Sequence[int], r: int, alpha: float, dropout: float = 0.0,
                 dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        fan_in = math.prod(shape[1:])
        self.shape = tuple(shape)
        self.dropout = dropout
        self.lora_A = nn.Parameter(torch.empty(r, fan_in, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(shape[0], r, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("scale", torch.tensor(float(alpha) / r, dtype=torch.float32))

    def delta(self, dropout: bool = False) -> torch.Tensor:
        """scale · B · A as W's shape; ``dropout`` applies the training-time feature dropout."""
        a = self.lora_A
        if dropout and self.training and self.dropout > 0:
            a = a * F.dropout(torch.ones_like(a[:1]), p=self.dropout, training=True)
        return (self.scale.to(a.dtype) * (self.lora_B @ a)).reshape(self.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta(dropout=True).to(weight.dtype)


# ------------------------------------------------------------------------------------------ targets

def candidates(model: nn.Module, skip: Sequence[str] = SKIP) -> Dict[str, Tuple[nn.Module, str, str]]:
    """Every tensor LoRA can adapt: ``{tensor path: (owner module, attribute, kind)}``, kind ∈ linear/fused/conv.

    Linear weights, fused attention ``in_proj_weight`` Parameters (``nn.MultiheadAttention`` and open_clip's
    ``Attention``) and conv kernels; the ``teacher`` subtree is skipped. Already-adapted tensors are listed too."""
    found = {}
    for name, module in model.named_modules():
        if name.split(".")[0] in skip:
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear):
            found[f"{prefix}weight"] = (module, "weight", "linear")
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            found[f"{prefix}weight"] = (module, "weight", "conv")
        for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            weight = _raw(module, attr)  # q/k/v_proj_weight: an nn.MultiheadAttention with kdim != embed_dim
            if isinstance(weight, torch.Tensor) and weight.ndim == 2:
                found[f"{prefix}{attr}"] = (module, attr, "fused")
    return found


def _raw(module: nn.Module, name: str):
    """The stored tensor ``name`` of ``module`` (the ``original`` of a parametrized one)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return module._parameters.get(name)


def _role(path: str, kind: str) -> str:
    """'mlp', 'attn', 'conv' or 'other' for a candidate tensor path (by its module path, see module docstring)."""
    if kind == "conv":
        return "conv"
    parts = [p.lower() for p in path.split(".")[:-1]]
    attention = any("attn" in p or "attention" in p for p in parts)
    if kind == "fused":
        return "attn"
    if any(p in _MLP_PARTS for p in parts) or (parts[-2:] == ["output", "dense"] and not attention):
        return "mlp"
    return "attn" if attention else "other"


def _ancestors(path: str) -> List[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _summary(paths: Iterable[str], limit: int = 12) -> str:
    """Candidate paths with block indices collapsed (``resblocks.*.attn.in_proj_weight``), at most ``limit``."""
    patterns = list(dict.fromkeys(re.sub(r"\.\d+(?=\.)", ".*", p) for p in paths))
    more = f", ... ({len(patterns)} patterns)" if len(patterns) > limit else ""
    return ", ".join(patterns[:limit]) + more


def default_targets(model: nn.Module) -> str:
    """``attn,mlp``, plus ``conv`` when the image tower is open_clip's ModifiedResNet (mostly convolutions)."""
    from open_clip.modified_resnet import ModifiedResNet
    return "attn,mlp,conv" if isinstance(getattr(model, "visual", None), ModifiedResNet) else "attn,mlp"


def resolve_targets(model: nn.Module, spec: str) -> List[str]:
    """The tensor paths ``spec`` selects (see the module docstring), in model order.

    Raises ValueError naming the first token that selects nothing, with the candidates."""
    found = candidates(model)
    chosen = set()
    for token in [t.strip() for t in spec.split(",") if t.strip()]:
        if token == "all-linear":
            hits = {p for p, (_, _, kind) in found.items() if kind != "conv"}
        elif token in KEYWORDS:
            hits = {p for p, (_, _, kind) in found.items() if _role(p, kind) == token}
        else:
            hits = {p for p in found if any(fnmatch.fnmatchcase(a, token) for a in _ancestors(p))}
        if not hits:
            raise ValueError(f"--lora-targets {token!r} matches no module of this model; give {', '.join(KEYWORDS)} "
                             f"or globs over these tensors: {_summary(found)}")
        chosen |= hits
    return [p for p in found if p in chosen]


# ------------------------------------------------------------------------------------------ inject / read / merge

def inject(model: nn.Module, paths: Sequence[str], r: int, alpha: float, dropout: float = 0.0) -> int:
    """Adapt every tensor in ``paths`` (from ``resolve_targets``); returns the number of LoRA parameters added.

    Only the adapters become trainable here; ``freeze_except_adapters`` sets the rest."""
    found = candidates(model)
    added = 0
    for path in paths:
        module, name, _ = found[path]
        if parametrize.is_parametrized(module, name):
            raise ValueError(f"{path} already has a parametrization")
        weight = getattr(module, name)
        delta = LoRADelta(weight.shape, r, alpha, dropout, dtype=weight.dtype, device=weight.device)
        parametrize.register_parametrization(module, name, delta)
        added += delta.lora_A.numel() + delta.lora_B.numel()
    return added


def adapters(model: nn.Module) -> List[Tuple[str, nn.Module, str, LoRADelta]]:
    """``(tensor path, owner module, attribute, LoRADelta)`` for every adapted tensor of ``model``."""
    out = []
    for name, module in model.named_modules():
        plists = getattr(module, "parametrizations", None)
        if not isinstance(plists, nn.ModuleDict):
            continue
        for attr, plist in plists.items():
            for p in plist:
                if isinstance(p, LoRADelta):
                    out.append((f"{name}.{attr}" if name else attr, module, attr, p))
    return out


def is_adapter_parameter(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


OUTPUT_PROJECTIONS = ("text_projection", "visual.proj", "visual.head.proj", "text.text_projection", "text.proj")


def _extra(name: str, extras: Sequence[str], norm_params: set) -> bool:
    if name in ("logit_scale", "logit_bias"):
        return name in extras
    if "proj" in extras and any(name == p or name.startswith(p + ".") for p in OUTPUT_PROJECTIONS):
        return True
    return "norm" in extras and name in norm_params


def freeze_except_adapters(model: nn.Module, extras: Sequence[str] = ("logit_scale", "logit_bias")) -> None:
    """requires_grad only for LoRA A/B and the ``extras`` (logit_scale, logit_bias, proj: the towers' output
    projections ``OUTPUT_PROJECTIONS``, norm: every LayerNorm/GroupNorm/BatchNorm parameter); the ``teacher`` stays
    frozen."""
    norms = {f"{m}.{p}" if m else p for m, mod in model.named_modules()
             if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
             for p, _ in mod.named_parameters(recurse=False)}
    for name, param in model.named_parameters():
        if name.split(".")[0] in SKIP:
            continue
        param.requires_grad_(is_adapter_parameter(name) or _extra(name, extras, norms))


@torch.no_grad()
def effective_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>`` as the model uses it, without dropout: W + scale·B·A for an adapted tensor (computed in
    W's dtype), the stored tensor itself otherwise."""
    if not parametrize.is_parametrized(module, name):
        return getattr(module, name)
    plist = module.parametrizations[name]
    weight = plist.original
    for p in plist:
        weight = weight + p.delta().to(weight.dtype) if isinstance(p, LoRADelta) else p(weight)
    return weight


@torch.no_grad()
def merge(model: nn.Module) -> int:
    """Fold every adapter into its weight (in fp32), leaving plain open_clip modules and keys; returns the count."""
    merged = 0
    for _, module, name, delta in adapters(model):
        original = module.parametrizations[name].original
        weight = (original.float() + delta.delta().float()).to(original.dtype)
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        getattr(module, name).copy_(weight)
        merged += 1
    return merged


def merge_lora_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A training state dict with LoRA keys → the plain one: ``W = original + scale · B · A`` (in fp32, cast back to
    W's dtype) under ``<module>.<name>``; every other key unchanged. Works on the checkpoint alone (``scale`` is
    stored), e.g. for export."""
    out, used = {}, set()
    for key, original in state.items():
        if not key.endswith(".original") or ".parametrizations." not in key:
            continue
        base = key[: -len(".original")]
        owner, _, name = base.rpartition(".parametrizations.")
        weight = original.float()
        i = 0
        while f"{base}.{i}.lora_A" in state:
            a, b = state[f"{base}.{i}.lora_A"].float(), state[f"{base}.{i}.lora_B"].float()
            scale = state[f"{base}.{i}.scale"].float()
            weight = weight + (scale * (b @ a)).reshape(weight.shape)
            used.update(f"{base}.{i}.{k}" for k in ("lora_A", "lora_B", "scale"))
            i += 1
        out[f"{owner}.{name}" if owner else name] = weight.to(original.dtype)
        used.add(key)
    out.update((k, v) for k, v in state.items() if k not in used)
    return out


def parameter_counts(model: nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameters of the student (the ``teacher`` subtree excluded)."""
    trainable = total = 0
    for name, param in model.named_parameters():
        if name.split(".")[0] in SKIP:
            continue
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
