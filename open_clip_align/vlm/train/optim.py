"""AdamW with the AlignVLM parameter groups, and the cosine schedule with linear warm-up."""
import math

import torch

__all__ = ["cosine_with_warmup", "make_optimizer"]


def make_optimizer(model, lr: float, wd: float, w2_lr_mult: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; ALIGN's W2 at ``lr * w2_lr_mult``; no weight decay on vectors
    (biases, LayerNorms)."""
    groups = {"w2": [], "decay": [], "no_decay": []}
    w2 = getattr(model.connector, "w2", None)
    w2_weight = w2.weight if w2 is not None else None
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param is w2_weight:
            groups["w2"].append(param)
        else:
            groups["decay" if param.ndim >= 2 else "no_decay"].append(param)
    spec = [{"params": groups["decay"], "weight_decay": wd, "lr": lr},
            {"params": groups["no_decay"], "weight_decay": 0.0, "lr": lr},
            {"params": groups["w2"], "weight_decay": wd, "lr": lr * w2_lr_mult}]
    return torch.optim.AdamW([g for g in spec if g["params"]])


def cosine_with_warmup(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
