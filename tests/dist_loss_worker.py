"""Run under torchrun (gloo): each rank scores its shard of one fixed global batch with every hard-negative
loss; rank 0 writes ``{config: {"distributed": {...}, "local": {...}, "single": {...}}}`` as JSON."""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from open_clip_align.losses import CEClipLoss, DeGLALoss, NegCLIPLoss

N, K, D = 8, 4, 16
CONFIGS = {
    "negclip": lambda **kw: NegCLIPLoss(**kw),
    "degla-fixed": lambda **kw: DeGLALoss(**kw),
    "degla-reference": lambda **kw: DeGLALoss(tgc_mode="reference", **kw),
    "degla-mean-grad": lambda **kw: DeGLALoss(distill_reduction="mean", **kw),
    "ce-clip": lambda **kw: CEClipLoss(**kw),
}
LOCAL_OK = ("negclip", "degla-fixed")  # --local-loss (+ --gather-with-grad): each rank returns its share, they sum


def _batch():
    g = torch.Generator().manual_seed(0)

    def feats(*shape):
        return F.normalize(torch.randn(*shape, D, generator=g), dim=-1)

    return dict(image_features=feats(N), text_features=feats(N), neg_text_features=feats(N, K),
                teacher_image_features=feats(N), teacher_text_features=feats(N), teacher_neg_text_features=feats(N, K),
                neg_text_valid=torch.rand(N, K, generator=g) > 0.2, logit_scale=torch.tensor(30.0))


def _values(loss, inputs):
    return {k: v.item() for k, v in loss(**inputs, output_dict=True).items()}


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    full = _batch()
    shard = {k: v if k == "logit_scale" else v[rank * N // world:(rank + 1) * N // world] for k, v in full.items()}
    results = {}
    for name, make in CONFIGS.items():
        kw = dict(rank=rank, world_size=world, gather_with_grad=name.endswith("grad"))
        entry = {"distributed": _values(make(**kw), shard), "single": _values(make(), full)}
        if name in LOCAL_OK:
            local = make(local_loss=True, **dict(kw, gather_with_grad=True))(**shard, output_dict=True)
            reduced = {}
            for key, value in local.items():
                value = value.detach().clone()
                dist.all_reduce(value)
                reduced[key] = value.item()
            entry["local"] = reduced
        results[name] = entry
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
