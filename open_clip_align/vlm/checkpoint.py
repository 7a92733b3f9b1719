"""AlignVLM training checkpoints: what is trained is saved, what is referenced is not.

Layout of one checkpoint (``<logs>/<name>/checkpoints/step_00000100/``)::

    run_config.json     {"model": <model config, see build.py>, "training": <flags>, "step": N}
    connector/          alignvlm_connector.pt + .json (save_connector; for a SmolVLM its replaced projection)
    vision_tower.pt     only when the tower has no pretrained weights (a random tower cannot be rebuilt by name)
    lm/                 only when the full LM was trained: save_pretrained weights + tokenizer (loadable as --lm);
                        for a SmolVLM the trained text model + LM head (model.safetensors)
    lora/               only for LoRA: the PEFT adapters (adapter_config.json + adapter_model.safetensors)
    trainer_state.pt    optimizer, scheduler, grad scaler, step, RNG states (for --resume)

A pretrained vision tower and a frozen LM are rebuilt from the names in ``run_config.json`` (``tiny-llama`` is
seeded, so it rebuilds identically; a SmolVLM from its ``vlm_path``); the tower with the recorded activation
(``force_quick_gelu``), so the connector sees the features it was trained on. A checkpoint is written to
``step_N.tmp``, every file and folder in it is fsync'd, and it is renamed into place (then the parent folder is
fsync'd), so a crash or kill never leaves a half-written ``step_N``. :func:`verify_checkpoint` reads every file
of a checkpoint back, so ``--resume latest`` can pass over one that does not load.
"""
import json
import os
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import torch

from ..checkpoints import fsync_path
from ..errors import UserError
from .build import build_model
from .model import CONNECTOR_WEIGHTS_NAME, AlignVLM, ConnectorFileError, load_state_file, state_dict_mismatch

__all__ = [
    "CheckpointError",
    "RUN_CONFIG",
    "TRAINER_STATE",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_trained_weights",
    "load_trainer_state",
    "read_run_config",
    "recorded_model_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "trained_lm_dirs",
    "verify_checkpoint",
]

RUN_CONFIG = "run_config.json"
TRAINER_STATE = "trainer_state.pt"
TOWER_WEIGHTS = "vision_tower.pt"
CONNECTOR_DIR, LM_DIR, LORA_DIR = "connector", "lm", "lora"
PathLike = Union[str, os.PathLike]


class CheckpointError(UserError):
    """A checkpoint path that does not exist or is not an AlignVLM checkpoint."""


def checkpoint_path(run_dir: PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (deepest first), under ``root`` and ``root`` itself."""
    folders = [root]
    for path in root.rglob("*"):
        if path.is_dir():
            folders.append(path)
        else:
            fsync_path(path)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_path(folder)


def save_checkpoint(directory: PathLike, model: AlignVLM, tokenizer, run_config: dict,
                    trainer_state: Optional[dict] = None) -> Path:
    """Write a checkpoint (module docstring) to ``directory`` atomically: into ``<directory>.tmp``, fsync'd, then
    renamed into place. A checkpoint of the same step that already exists is replaced only after the new one is
    complete."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_connector(tmp / CONNECTOR_DIR)
    if run_config["model"].get("vlm") is None and run_config["model"].get("pretrained") is None:
        torch.save({k: v.detach().cpu() for k, v in model.visual.state_dict().items()}, tmp / TOWER_WEIGHTS)
    mode = run_config["model"].get("lm_training", "frozen")
    if mode == "full":
        model.save_trained_lm(tmp / LM_DIR, tokenizer)
    elif mode == "lora":
        model.lm.save_pretrained(tmp / LORA_DIR)
    (tmp / RUN_CONFIG).write_text(json.dumps(run_config, indent=2, sort_keys=True))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    _fsync_tree(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: PathLike) -> List[Path]:
    """Complete checkpoints of a run (``checkpoints/step_*`` with a run config), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.name.split("_")[1].isdigit() and (p / RUN_CONFIG).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_checkpoint(spec: PathLike, run_dir: Optional[PathLike] = None) -> Path:
    """A checkpoint directory from ``"latest"`` (newest in ``run_dir``), a run directory (its newest) or a
    checkpoint directory. Raises :class:`CheckpointError` when there is none."""
    if str(spec) == "latest":
        if run_dir is None:
            raise CheckpointError("--resume latest needs the run's --logs and --name")
        found = list_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"--resume latest: no checkpoint in {Path(run_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"{path}: not found (expected an AlignVLM checkpoint folder or a run directory)")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file; expected an AlignVLM checkpoint folder (checkpoints/step_N, "
                              f"holding {RUN_CONFIG}) or a run directory")
    if (path / RUN_CONFIG).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise CheckpointError(f"{path}: not an AlignVLM checkpoint (no {RUN_CONFIG}) nor a run directory with "
                          "checkpoints/step_*")


def read_run_config(directory: PathLike) -> dict:
    """The checkpoint's ``run_config.json``; :class:`CheckpointError` when it is not one."""
    path = Path(directory) / RUN_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the run config ({err})") from None
    model = config.get("model") if isinstance(config, dict) else None
    smolvlm = isinstance(model, dict) and model.get("vlm") == "smolvlm" and isinstance(model.get("vlm_path"), str)
    if not smolvlm and (not isinstance(model, dict) or not isinstance(model.get("model"), str) or not model.get("lm")):
        raise CheckpointError(f"{path}: not an AlignVLM run config (expected {{\"model\": {{\"model\": ..., "
                              f"\"lm\": ...}}, \"training\": ...}})")
    return config


def trained_lm_dirs(directory: PathLike) -> Tuple[Optional[str], Optional[str]]:
    """``(lm_dir, lora_dir)`` of a checkpoint (None where that part was not trained)."""
    directory = Path(directory)
    lm_dir = directory / LM_DIR
    lora_dir = directory / LORA_DIR
    return (str(lm_dir) if lm_dir.is_dir() else None, str(lora_dir) if lora_dir.is_dir() else None)


def load_trained_weights(model: AlignVLM, directory: PathLike) -> None:
    """Load a checkpoint's connector (checks type, dims and every tensor's shape) and, when saved, its random
    tower into ``model``; a missing, corrupt or foreign file raises :class:`CheckpointError` naming it."""
    directory = Path(directory)
    try:
        model.load_connector(directory / CONNECTOR_DIR)
        if (directory / TOWER_WEIGHTS).is_file():
            tower = load_state_file(directory / TOWER_WEIGHTS, "the weights of an AlignVLM vision tower")
            problem = state_dict_mismatch(tower, model.visual.state_dict())
            if problem:
                raise ConnectorFileError(f"{directory / TOWER_WEIGHTS}: not the weights of the "
                                         f"{model.vision_model_name} tower of this run ({problem})")
            model.visual.load_state_dict(tower)
    except ConnectorFileError as err:
        raise CheckpointError(f"checkpoint {directory}: {err}") from None


def load_trainer_state(directory: PathLike) -> dict:
    """The optimizer, scheduler, scaler, step and RNG states saved for ``--resume`` (a pickle: read only from
    checkpoints you wrote); :class:`CheckpointError` naming the file when it is missing or is not one."""
    path = Path(directory) / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; this checkpoint can start a run (--init-from) but not resume one")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except MemoryError:
        raise
    except Exception as err:  # unpickling/zip errors of every kind
        raise CheckpointError(f"{path}: not an AlignVLM trainer state: torch cannot read it ({type(err).__name__}); "
                              "the file is truncated, damaged or was not written by training.alignvlm") from None
    keys = ("step", "optimizer", "scheduler", "scaler", "rng")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise CheckpointError(f"{path}: not an AlignVLM trainer state (expected a dict with {', '.join(keys)})")
    return state


def verify_checkpoint(directory: PathLike) -> dict:
    """Read every file of a checkpoint back (run config, trainer state, connector and tower weights, the headers of
    the trained LM / LoRA safetensors) and return its trainer state; :class:`CheckpointError` naming the first
    file that does not load (a torn or truncated write)."""
    from safetensors import safe_open

    directory = Path(directory)
    read_run_config(directory)
    state = load_trainer_state(directory)
    try:
        kind = AlignVLM.read_connector_config(directory / CONNECTOR_DIR)["connector_type"]
        load_state_file(directory / CONNECTOR_DIR / CONNECTOR_WEIGHTS_NAME,
                        f"the weights of an AlignVLM {kind} connector")
        if (directory / TOWER_WEIGHTS).is_file():
            load_state_file(directory / TOWER_WEIGHTS, "the weights of an AlignVLM vision tower")
    except ConnectorFileError as err:
        raise CheckpointError(str(err)) from None
    for path in [*sorted((directory / LM_DIR).glob("*.safetensors")),
                 *sorted((directory / LORA_DIR).glob("*.safetensors"))]:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as err:  # safetensors raises its own error types for a torn header or short file
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(err).strip().splitlines()[0]})") \
                from None
    return state


def load_checkpoint(spec: PathLike, trainable: bool = False) -> Tuple[AlignVLM, object, Callable, dict]:
    """``(model, tokenizer, preprocess, run_config)`` rebuilt from a checkpoint (or a run dir: its newest):
    tower and LM from the recorded names, the trained LM or LoRA adapters and the connector from the files."""
    directory = resolve_checkpoint(spec)
    run_config = read_run_config(directory)
    lm_dir, lora_dir = trained_lm_dirs(directory)
    model, tokenizer, preprocess = build_model(recorded_model_config(run_config), lm_dir=lm_dir, lora_dir=lora_dir,
                                               trainable=trainable)
    load_trained_weights(model, directory)
    return model, tokenizer, preprocess, run_config


def recorded_model_config(run_config: dict) -> dict:
    """The model config to rebuild a checkpoint with: a config saved before the tower's activation was recorded
    (no ``force_quick_gelu``) was built as named, so it is rebuilt that way (``False``)."""
    return {"force_quick_gelu": False, **run_config["model"]}
