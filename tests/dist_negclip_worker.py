"""Run under torchrun (gloo): each rank scores its shard of a fixed batch; rank 0 writes the losses as JSON."""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from open_clip_align.losses import NegCLIPLoss


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    n, k, d = 8, 4, 16
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    neg = F.normalize(torch.randn(n, k, d, generator=g), dim=-1)
    valid = torch.rand(n, k, generator=g) > 0.2
    scale = torch.tensor(30.0)
    shard = slice(rank * n // world, (rank + 1) * n // world)
    args = (image[shard], text[shard], scale)
    kw = dict(neg_text_features=neg[shard], neg_text_valid=valid[shard])
    full = NegCLIPLoss(rank=rank, world_size=world)(*args, **kw)
    local = NegCLIPLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)(*args, **kw)
    dist.all_reduce(local)
    if rank == 0:
        single = NegCLIPLoss()(image, text, scale, **dict(neg_text_features=neg, neg_text_valid=valid))
        with open(out_path, "w") as f:
            json.dump({"distributed": full.item(), "local_mean": local.item() / world, "single": single.item()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
