"""The model a training run builds: its model config (written into every checkpoint) and the model itself,
from scratch, from a stage-A checkpoint (``--init-from``) or from the checkpoint a run resumes."""
import os
from pathlib import Path
from typing import Optional

from ..build import build_model, check_tower, tower_quick_gelu
from ..checkpoint import load_trained_weights, read_run_config, recorded_model_config, trained_lm_dirs
from ..lm import check_lm_spec
from ..smolvlm import SMOLVLM, check_smolvlm_dir
from .flags import TrainingConfigError

__all__ = ["build", "check_model_flags", "model_config", "tower_force_quick_gelu"]


def check_model_flags(args) -> None:
    """The tower and LM (or the SmolVLM directory) can be built: checked before any data or model is read."""
    if args.vlm == SMOLVLM:
        check_smolvlm_dir(args.vlm_path)
        return
    check_tower(args.model, args.pretrained)
    check_lm_spec(args.lm)


def tower_force_quick_gelu(args, source: Optional[Path]) -> Optional[bool]:
    """The tower's ``force_quick_gelu``: the recorded one of a ``--resume``/``--init-from`` checkpoint (its
    connector was trained on that tower), else ``--force-quick-gelu`` or what the tag needs (one log line).
    None for a SmolVLM (its tower is its own)."""
    if args.vlm == SMOLVLM:
        return None
    if source is None:
        return tower_quick_gelu(args.model, args.pretrained, True if args.force_quick_gelu else None)
    recorded = recorded_model_config(read_run_config(source))["force_quick_gelu"]
    if args.force_quick_gelu and not recorded:
        raise TrainingConfigError(f"--force-quick-gelu: {source} was trained on the GELU tower (force_quick_gelu "
                                  "false in its run_config.json); its connector expects those features: drop the "
                                  "flag, or start a new stage A")
    return recorded


def model_config(args, force_quick_gelu: Optional[bool] = None) -> dict:
    """The model config (vlm/build.py) of ``args``; ``force_quick_gelu`` None: decided from the flags and tag."""
    mode = "frozen" if args.stage == "A" else ("lora" if args.lora else "full")
    lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout} if args.lora else None
    if args.vlm == SMOLVLM:
        return {"vlm": SMOLVLM, "vlm_path": os.path.abspath(args.vlm_path), "connector": args.connector,
                "connector_kwargs": {}, "lm_training": mode, "prompt": args.prompt,
                "max_caption_tokens": args.max_caption_tokens, "lora": lora}
    if force_quick_gelu is None:
        force_quick_gelu = tower_force_quick_gelu(args, None)
    kwargs = {"reduction": None if args.reduction == "none" else args.reduction,
              "reduction_factor": args.reduction_factor}
    return {"model": args.model, "pretrained": args.pretrained, "force_quick_gelu": force_quick_gelu,
            "lm": args.lm, "connector": args.connector, "connector_kwargs": kwargs, "lm_training": mode,
            "prompt": args.prompt, "max_caption_tokens": args.max_caption_tokens, "lora": lora}


def build(config: dict, source: Optional[Path]):
    """Model, tokenizer (a processor for a SmolVLM), preprocess; weights from ``source`` (a resume or
    --init-from checkpoint) if given."""
    lm_dir = lora_dir = None
    if source is not None:
        lm_dir, lora_dir = trained_lm_dirs(source)
        if lora_dir is not None and config["lm_training"] != "lora":
            raise TrainingConfigError(f"{source} holds LoRA adapters; continue them with --stage B --lora")
    model, tokenizer, preprocess = build_model(config, lm_dir=lm_dir, lora_dir=lora_dir)
    if source is not None:
        load_trained_weights(model, source)
    return model, tokenizer, preprocess
