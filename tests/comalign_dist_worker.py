"""One rank of the ComAlign loss parity check (started by ``test_comalign_training`` in a forked process, gloo).

Both ranks build the same global batch; each scores its half with ``ComAlignLoss(rank, world_size)`` and, on the
full batch, with the 1-process loss. Rank 0 writes JSON ``{config: {"distributed", "local", "single": {term:
value}, "local_grad_error": max |grad difference|}}``. ``local`` is the mean over ranks of the ``local_loss``
values (what DDP's gradient averaging optimises); ``local_grad_error`` compares the gradient of that mean with
respect to each rank's own features (gathered with grad) against the 1-process gradient of the full loss.
"""
import json

import torch
import torch.distributed as dist
import torch.nn.functional as F

from open_clip_align.comalign.loss import ComAlignLoss

N, P, K, D = 8, 3, 3, 8
CONFIGS = {
    "masked": {},
    "reference-smooth": {"padding": "reference", "smooth": 0.05},
    "weighted": {"entity_weight": 0.5, "relation_weight": 2.0, "global_weight": 0.25, "temperature": 0.2},
}


def global_batch() -> dict:
    """A fixed batch of N pairs. Relation masks leave 1 qualifying row on rank 0 (rows 0-3) and 3 on rank 1."""
    g = torch.Generator().manual_seed(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, D, generator=g), dim=-1)

    image_relation_mask = torch.ones(N, P, dtype=torch.bool)
    image_relation_mask[[1, 2, 6], :] = False               # images without relation views
    text_relation_mask = torch.zeros(N, K, dtype=torch.bool)
    text_relation_mask[[0, 2, 3, 4, 5, 7], 0] = True          # captions 1 and 6 have no relation phrase
    text_entity_mask = torch.arange(K)[None, :] < torch.tensor([1, 2, 3, 1, 2, 3, 1, 2])[:, None]
    return dict(refined_global=unit(N), text_features=unit(N),
                image_entity=unit(N, P), image_entity_mask=torch.rand(N, P, generator=g) > 0.3,
                image_relation=unit(N, P), image_relation_mask=image_relation_mask,
                text_entity=unit(N, K), text_entity_mask=text_entity_mask,
                text_relation=unit(N, K) * text_relation_mask[..., None], text_relation_mask=text_relation_mask)


FLOAT_KEYS = ("refined_global", "text_features", "image_entity", "image_relation", "text_entity", "text_relation")


def _leaves(batch: dict) -> dict:
    return {k: v.clone().requires_grad_(True) if k in FLOAT_KEYS else v for k, v in batch.items()}


def run(rank: int, world: int, init_file: str, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    full = global_batch()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    shard = {k: v[rows] for k, v in full.items()}
    results = {}
    for name, options in CONFIGS.items():
        single_inputs = _leaves(full)
        single = ComAlignLoss(**options)(**single_inputs, output_dict=True)
        sum(single.values()).backward()
        distributed = ComAlignLoss(rank=rank, world_size=world, **options)(**shard, output_dict=True)

        local_inputs = _leaves(shard)
        local = ComAlignLoss(rank=rank, world_size=world, local_loss=True, gather_with_grad=True, **options)(
            **local_inputs, output_dict=True)
        (sum(local.values()) / world).backward()  # all_gather's backward sums every rank's share
        error = max((local_inputs[k].grad - single_inputs[k].grad[rows]).abs().max().item() for k in FLOAT_KEYS)
        errors = torch.tensor([error])
        dist.all_reduce(errors, op=dist.ReduceOp.MAX)
        mean_local = {}
        for key, value in local.items():
            value = value.detach().clone()
            dist.all_reduce(value)
            mean_local[key] = value.item() / world
        results[name] = {"single": {k: v.item() for k, v in single.items()},
                         "distributed": {k: v.item() for k, v in distributed.items()},
                         "local": mean_local, "local_grad_error": errors.item()}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()
