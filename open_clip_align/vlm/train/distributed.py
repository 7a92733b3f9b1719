"""Process-group facts for the AlignVLM trainer, on top of ``open_clip_train.distributed``.

``open_clip_train.distributed.init_distributed_device`` starts the process group under torchrun / SLURM (nccl on
GPU, gloo on CPU) and picks this rank's device; ``is_master`` and ``broadcast_object`` are used as they are.
What it lacks is the mean of a float over ranks (the logged loss), added here.
"""
from types import SimpleNamespace
from typing import Optional

import torch
import torch.distributed as dist
from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master

from ...cli_checks import device_problem
from ...errors import UserError

__all__ = ["Dist"]


class Dist:
    """Rank, world size and device of this process; ``device_flag`` is ``--device`` (None: cuda when available).

    Raises ``error_class`` (a :class:`UserError`) for a device that cannot be used, before the group starts.
    """

    def __init__(self, device_flag: Optional[str], error_class=UserError):
        want = device_flag or ("cuda" if torch.cuda.is_available() else "cpu")
        problem = device_problem("--device", want)
        if problem:
            raise error_class(problem)
        self._args = SimpleNamespace(device=want, dist_backend=None, dist_url=None, horovod=False,
                                     no_set_device_rank=False)
        device = init_distributed_device(self._args)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", 0)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device

    @property
    def world(self) -> int:
        return self._args.world_size

    @property
    def rank(self) -> int:
        return self._args.rank

    @property
    def main(self) -> bool:
        return is_master(self._args)

    def broadcast(self, value):
        """``value`` of rank 0 on every rank."""
        return value if self.world == 1 else broadcast_object(self._args, value)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (float64 all-reduce)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
