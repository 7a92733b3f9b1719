"""Run under torchrun (gloo): each rank scores its shard of one fixed global batch with every sigmoid hard-negative
loss and back-propagates it; rank 0 writes, per configuration, the single-process loss terms and gradients on the
concatenated batch next to what the ranks give: the mean of their terms, their feature gradients divided by W (the
all_gather backward sums every rank's contribution), and the mean of their scale/bias gradients (what DDP applies).
"""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from open_clip_align.losses import SigmoidCEClipLoss, SigmoidDeGLALoss, SigmoidNegCLIPLoss

N, K, D = 8, 3, 16
FEATURES = ("image_features", "text_features", "neg_text_features", "teacher_image_features",
            "teacher_text_features", "teacher_neg_text_features")
CONFIGS = {
    "sig-negclip-own": lambda **kw: SigmoidNegCLIPLoss(hardneg_weight=0.7, **kw),
    "sig-negclip-all": lambda **kw: SigmoidNegCLIPLoss(columns="all", **kw),
    "sig-degla-sum": lambda **kw: SigmoidDeGLALoss(distill_weight=0.05, **kw),
    "sig-degla-mean": lambda **kw: SigmoidDeGLALoss(distill_reduction="mean", igc_scale=20.0, **kw),
    "sig-ce-clip": lambda **kw: SigmoidCEClipLoss(**kw),
    "sig-ce-clip-max-all": lambda **kw: SigmoidCEClipLoss(threshold_type="max", cmr_average="all", columns="all",
                                                          **kw),
}


def _batch():
    g = torch.Generator().manual_seed(0)

    def feats(*shape):
        return F.normalize(torch.randn(*shape, D, generator=g), dim=-1)

    batch = dict(image_features=feats(N), text_features=feats(N), neg_text_features=feats(N, K),
                 teacher_image_features=feats(N), teacher_text_features=feats(N), teacher_neg_text_features=feats(N, K))
    batch["neg_text_valid"] = torch.rand(N, K, generator=g) > 0.25
    return batch


def _run(loss, batch, scale, bias):
    """Terms and gradients (features, scale, bias) of one backward of the summed terms."""
    inputs = {k: v.clone().requires_grad_(k in FEATURES[:3]) if k in FEATURES else v for k, v in batch.items()}
    s, b = torch.tensor(scale, requires_grad=True), torch.tensor(bias, requires_grad=True)
    terms = loss(**inputs, logit_scale=s, logit_bias=b, output_dict=True)
    sum(terms.values()).backward()
    grads = {k: inputs[k].grad for k in FEATURES[:3]}
    return {k: v.item() for k, v in terms.items()}, grads, s.grad, b.grad


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    full = _batch()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    shard = {k: v[rows] for k, v in full.items()}
    results = {}
    for name, make in CONFIGS.items():
        single_terms, single_grads, s_grad, b_grad = _run(make(), full, 12.0, -4.0)
        terms, grads, rank_s, rank_b = _run(make(rank=rank, world_size=world), shard, 12.0, -4.0)
        mean_terms = {}
        for key, value in terms.items():
            total = torch.tensor(value, dtype=torch.float64)
            dist.all_reduce(total)
            mean_terms[key] = total.item() / world
        scalars = torch.stack([rank_s, rank_b]).detach()
        dist.all_reduce(scalars)
        feature_error = 0.0
        for key, grad in grads.items():  # every rank's slice, checked against the single-process gradient
            error = (grad / world - single_grads[key][rows]).abs().max()
            dist.all_reduce(error, op=dist.ReduceOp.MAX)
            feature_error = max(feature_error, error.item())
        results[name] = {"single": single_terms, "distributed": mean_terms, "feature_grad_error": feature_error,
                         "scale_bias_grad": (scalars / world).tolist(), "single_scale_bias_grad": [s_grad.item(),
                                                                                               b_grad.item()]}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
