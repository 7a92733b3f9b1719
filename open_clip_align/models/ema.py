"""EMA teacher updates, driven by a global optimizer step post-hook.

The update θ_T ← α·θ_T + (1−α)·θ_S must run exactly once per *successful* optimizer step: never in the
forward (which runs 2N times per step under ``--accum-freq N``), and not when AMP's GradScaler skips a step on
inf/NaN gradients (it then does not call ``optimizer.step()``). A hook registered with
``torch.optim.optimizer.register_optimizer_step_post_hook`` fires after every ``optimizer.step()`` of any
optimizer, needs no access to the optimizer that open_clip_train keeps local to its ``main``, and updates only
the tracked models whose trainable parameters that optimizer holds.
"""
import logging
import weakref
from typing import List, Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_TRACKED: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


@torch.no_grad()
def ema_update_(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], decay: float) -> None:
    """In place, fused: ``teacher[i] = decay * teacher[i] + (1 - decay) * student[i]`` for every pair."""
    if decay == 1.0:
        return
    torch._foreach_mul_(teacher, decay)
    torch._foreach_add_(teacher, student, alpha=1.0 - decay)


@torch.no_grad()
def relative_distance(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> float:
    """||θ_S − θ_T|| / ||θ_S|| over all parameters (the EMA drift that gets logged)."""
    diff = torch._foreach_sub(list(student), list(teacher))
    num = torch.stack(torch._foreach_norm(diff)).float().norm()
    den = torch.stack(torch._foreach_norm(list(student))).float().norm()
    return (num / den.clamp_min(1e-12)).item()


def track(model: torch.nn.Module) -> None:
    """Have ``model.update_teacher()`` called after each step of an optimizer that holds its parameters."""
    _TRACKED.add(model)


def tracked() -> List[torch.nn.Module]:
    return list(_TRACKED)


def _owns(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
    probe = model.first_trainable_parameter()
    return probe is not None and any(p is probe for group in optimizer.param_groups for p in group["params"])


def _after_step(optimizer, args, kwargs, log_every: int = 0) -> None:
    for model in list(_TRACKED):
        if _owns(optimizer, model):
            model.update_teacher()
            if log_every and model.ema_steps % log_every == 0:
                logging.info(f"EMA teacher: step {model.ema_steps}, decay {model.ema_decay}, "
                             f"relative distance to student {model.teacher_drift():.3e}")


def install_step_hook(log_every: int = 0):
    """Register the global post-step hook; returns the handle (call ``.remove()`` when done).

    ``log_every``: log the teacher's drift every that many updates (0: never).
    """
    return register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: _after_step(optimizer, args, kwargs, log_every))
