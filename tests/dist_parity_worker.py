"""Run under torchrun (gloo, 2 processes). Rank 0 writes a JSON report:

* ``grad``: for every loss term, with ``--local-loss --gather-with-grad`` and with the default gather, the
  DDP-averaged gradient of a tiny pair of linear encoders on each rank's half of a fixed global batch, compared
  with the single-process gradient on the whole batch divided by W (DDP's mean): ``{config: {term: [maxdiff,
  maxabs]}}``. The terms are taken one at a time (each term's weight 1, the others' 0 where possible), so
  their balance is checked, not only their sum.
* ``values``: NegCLIP with hard-negative images and CE-CLIP's released modes (previous-batch θ over two
  consecutive batches, ``max`` θ, CMR averaged over all pairs), distributed vs single process.
"""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from open_clip_align.losses import CEClipLoss, DeGLALoss, NegCLIPLoss

N, K, D, IN = 8, 4, 16, 12
TERMS = {
    "degla-fixed": (lambda **kw: DeGLALoss(igc_weight=1, tgc_weight=1, distill_weight=1, **kw),
                    ("contrastive_loss", "igc_loss", "tgc_loss", "distill_loss")),
    "degla-reference-mean": (lambda **kw: DeGLALoss(igc_weight=1, tgc_weight=1, distill_weight=1, tgc_mode="reference",
                                                    distill_reduction="mean", **kw),
                             ("tgc_loss", "distill_loss")),
    "negclip": (lambda **kw: NegCLIPLoss(**kw), ("contrastive_loss",)),
    "negclip-hardimg": (lambda **kw: NegCLIPLoss(**kw), ("contrastive_loss",)),
}


class Encoders(torch.nn.Module):
    """Stand-in towers: normalised linear maps of fixed inputs, so parameter gradients are comparable."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(IN, D, bias=False)
        self.text = torch.nn.Linear(IN, D, bias=False)

    def forward(self, images, texts, negs):
        return (F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1),
                F.normalize(self.text(negs), dim=-1))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = dict(images=torch.randn(N, IN, generator=g), texts=torch.randn(N, IN, generator=g),
               negs=torch.randn(N, K, IN, generator=g), hard_images=torch.randn(N, IN, generator=g),
               hard_texts=torch.randn(N, IN, generator=g), hard_negs=torch.randn(N, K, IN, generator=g))
    fixed = dict(teacher_image_features=F.normalize(torch.randn(N, D, generator=g), dim=-1),
                 teacher_text_features=F.normalize(torch.randn(N, D, generator=g), dim=-1),
                 teacher_neg_text_features=F.normalize(torch.randn(N, K, D, generator=g), dim=-1),
                 neg_text_valid=torch.rand(N, K, generator=g) > 0.2,
                 hard_neg_text_valid=torch.rand(N, K, generator=g) > 0.2)
    return raw, fixed


def _features(model, raw, fixed, rows, config):
    image, text, neg = model(raw["images"][rows], raw["texts"][rows], raw["negs"][rows])
    out = dict(image_features=image, text_features=text, neg_text_features=neg, logit_scale=torch.tensor(20.0),
               neg_text_valid=fixed["neg_text_valid"][rows])
    if config.startswith("degla"):
        out.update({k: fixed[k][rows] for k in ("teacher_image_features", "teacher_text_features",
                                                 "teacher_neg_text_features")})
    if config == "negclip-hardimg":
        h_image, h_text, h_neg = model(raw["hard_images"][rows], raw["hard_texts"][rows], raw["hard_negs"][rows])
        out.update(hard_image_features=h_image, hard_text_features=h_text, hard_neg_text_features=h_neg,
                   hard_neg_text_valid=fixed["hard_neg_text_valid"][rows])
    return out


def _grads(model):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])


def _max(value: float) -> float:
    t = torch.tensor(value, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def grad_report(rank, world):
    raw, fixed = _inputs()
    shard = slice(rank * N // world, (rank + 1) * N // world)
    torch.manual_seed(0)
    single = Encoders()
    ddp = torch.nn.parallel.DistributedDataParallel(Encoders(), find_unused_parameters=True)
    ddp.module.load_state_dict(single.state_dict())
    report = {}
    for config, (make, terms) in TERMS.items():
        for mode, kw in (("local", dict(local_loss=True, gather_with_grad=True)), ("global", {})):
            entry = report.setdefault(f"{config}/{mode}", {})
            for term in terms:
                single.zero_grad()
                make()(**_features(single, raw, fixed, slice(None), config), output_dict=True)[term].backward()
                want = _grads(single) / world  # DDP averages the ranks' gradients
                ddp.zero_grad()
                loss = make(rank=rank, world_size=world, **kw)(**_features(ddp, raw, fixed, shard, config),
                                                               output_dict=True)[term]
                loss.backward()
                got = _grads(ddp.module)
                entry[term] = [_max((got - want).abs().max().item()), want.abs().max().item()]
    return report


def _released_batches(seed):
    g = torch.Generator().manual_seed(seed)
    feats = lambda *shape: F.normalize(torch.randn(*shape, D, generator=g), dim=-1)  # noqa: E731
    return dict(image_features=feats(N), text_features=feats(N), neg_text_features=feats(N, K),
                neg_text_valid=torch.rand(N, K, generator=g) > 0.3, logit_scale=torch.tensor(20.0))


def value_report(rank, world):
    shard = slice(rank * N // world, (rank + 1) * N // world)
    report = {}
    raw, fixed = _inputs(1)
    torch.manual_seed(1)
    model = Encoders()
    with torch.no_grad():
        full = _features(model, raw, fixed, slice(None), "negclip-hardimg")
        part = _features(model, raw, fixed, shard, "negclip-hardimg")
    for name, kw in (("negclip-hardimg", {}), ("negclip-hardimg-grad", dict(gather_with_grad=True))):
        report[name] = {"single": NegCLIPLoss()(**full).item(),
                        "distributed": NegCLIPLoss(rank=rank, world_size=world, **kw)(**part).item()}
    released = dict(imc_mode="reference", threshold_type="max", threshold_from="previous", cmr_average="all")
    for name, kw in (("ce-clip-released", released), ("ce-clip-previous-mean", dict(threshold_from="previous"))):
        single, distributed = CEClipLoss(**kw), CEClipLoss(rank=rank, world_size=world, **kw)
        entry = report.setdefault(name, {"single": [], "distributed": [], "theta_single": [], "theta_distributed": []})
        for seed in (2, 3, 4):  # three consecutive batches: θ of batch t is used at t + 1
            batch = _released_batches(seed)
            part = {k: v if k == "logit_scale" else v[shard] for k, v in batch.items()}
            entry["single"].append({k: v.item() for k, v in single(**batch, output_dict=True).items()})
            entry["distributed"].append({k: v.item() for k, v in distributed(**part, output_dict=True).items()})
            entry["theta_single"].append(single.previous_thresholds.tolist())
            theta = distributed.previous_thresholds.clone()
            others = [torch.zeros_like(theta) for _ in range(world)]
            dist.all_gather(others, theta)  # every rank must hold the same θ
            entry["theta_distributed"].append([t.tolist() for t in others])
    return report


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {"grad": grad_report(rank, world), "values": value_report(rank, world)}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
