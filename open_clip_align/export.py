"""Export a training checkpoint as a folder that plain open_clip loads with the ``local-dir:`` scheme.

Why: plugin model names only resolve while ``open_clip_align`` is imported (their configs carry an
``open_clip_align`` block that open_clip's ``CLIP`` rejects), and plugin classes may hold weights that plain
open_clip has no place for (an EMA ``teacher``, a ComAlign head). The export writes

* ``open_clip_config.json``: ``{"model_cfg": <config without the plugin block>, "preprocess_cfg": {...}}``
* ``open_clip_model.safetensors``: exactly the weights of a plain open_clip ``CLIP``

so that, with only open_clip >= 3.0 installed:

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:OUT_DIR")
    tokenizer = open_clip.get_tokenizer("local-dir:OUT_DIR")

The model name comes from ``--model`` or from the run's ``params.txt`` (``CHECKPOINT/../../params.txt``). The
training-time overrides recorded there (``--force-quick-gelu``, ``--force-image-size``,
``--force-context-length``, ``--force-custom-text``, ``--siglip``, ``--image-mean/-std/-interpolation/-resize-mode``
and the normalisation of a ``--pretrained`` tag) go into the exported config: a run recorded with
``force_quick_gelu: True`` (OpenAI weights under a GELU name) exports ``"quick_gelu": true``, so plain open_clip
rebuilds the QuickGELU model that was trained. The folder is built in a temporary sibling, loaded back with
open_clip to verify it, and only then renamed to OUT_DIR.
"""
import argparse
import ast
import json
import logging
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import open_clip
import torch
from open_clip import factory as oc_factory
from open_clip.model import get_model_preprocess_cfg
from open_clip.pretrained import get_pretrained_cfg
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from safetensors.torch import save_file

from .cli_checks import output_problem
from .errors import UserError, run_cli
from .models.activation import needs_quickgelu, quickgelu_advice
from .models.factory import PLUGIN_KEY, plugin_block, unreadable_checkpoint
from .models.hardneg import plain_state_dict

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
PathLike = Union[str, os.PathLike]

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "ExportError", "export_local_dir", "load_checkpoint_state", "main", "read_params",
]

_log = logging.getLogger(__name__)


class ExportError(UserError):
    """The export cannot proceed; the message says why and what to do."""


def read_params(path: PathLike) -> Dict[str, str]:
    """Parse an open_clip_train ``params.txt`` (``name: value`` lines) into raw strings."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not a training run's params.txt (cannot read it as text: "
                          f"{getattr(e, 'strerror', None) or type(e).__name__}); pass --model NAME") from None
    params = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            params[key.strip()] = value.strip()
    return params


def _literal(text: Optional[str]) -> Any:
    """A params.txt value as a Python value (``None``, bools, numbers, lists), else the raw string."""
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


@contextmanager
def _quiet_logging():
    """Hide the factories' "initialized randomly" warnings: the export loads its own weights."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _run_settings(params: Dict[str, str], base: Optional[str], model_name: Optional[str] = None) -> Dict[str, Any]:
    """``create_model`` keyword arguments that reproduce the training run's model and preprocessing.

    The activation is the one the run trained: QuickGELU when ``params.txt`` records ``force_quick_gelu: True``
    (or the config has it); a run that started GELU ``model_name`` from QuickGELU weights without it trained
    GELU, which is kept, with a warning."""
    image_size = _literal(params.get("force_image_size"))
    if isinstance(image_size, (list, tuple)) and len(image_size) == 1:
        image_size = image_size[0]
    settings: Dict[str, Any] = {
        "force_quick_gelu": _literal(params.get("force_quick_gelu")) is True,
        "force_custom_text": _literal(params.get("force_custom_text")) is True,
        "force_image_size": image_size,
        "force_context_length": _literal(params.get("force_context_length")),
    }
    if _literal(params.get("siglip")) is True:
        settings.update(init_logit_scale=math.log(10), init_logit_bias=-10.0)
    pretrained_tag = params.get("pretrained")
    if model_name and not settings["force_quick_gelu"] and needs_quickgelu(model_name, pretrained_tag):
        _log.warning(f"the run trained {model_name} with GELU from --pretrained {pretrained_tag} (params.txt has no "
                     f"force_quick_gelu: True); exporting GELU, as trained. "
                     f"{quickgelu_advice(model_name, pretrained_tag)}")

    preprocess: Dict[str, Any] = {}
    pretrained = params.get("pretrained")
    if base and pretrained not in (None, "None") and not os.path.isfile(pretrained):
        tag_cfg = get_pretrained_cfg(base, pretrained) or {}
        preprocess.update((k, v) for k, v in tag_cfg.items() if k != "size")
    for key in ("mean", "std", "interpolation", "resize_mode"):
        value = _literal(params.get(f"image_{key}"))
        if value is not None:
            preprocess[key] = tuple(value) if isinstance(value, list) else value
    settings["force_preprocess_cfg"] = merge_preprocess_dict({}, preprocess)
    return settings


def _export_model_cfg(model_name: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The registered config with the plugin block removed and the run's overrides applied, as upstream does."""
    cfg = oc_factory.get_model_config(model_name.replace("/", "-"))
    cfg.pop(PLUGIN_KEY, None)
    if settings["force_quick_gelu"]:
        cfg["quick_gelu"] = True
    if settings["force_custom_text"]:
        cfg["custom_text"] = True
    if settings["force_image_size"] is not None:
        cfg["vision_cfg"]["image_size"] = settings["force_image_size"]
    if settings["force_context_length"] is not None:
        cfg["text_cfg"]["context_length"] = settings["force_context_length"]
    for key in ("init_logit_scale", "init_logit_bias"):
        if key in settings:
            cfg[key] = settings[key]
    return cfg


def _resolve_model_name(checkpoint: Path, model_name: Optional[str]) -> Tuple[str, Dict[str, str]]:
    """``(model name, params)``: ``--model`` wins; params are only used when they describe that model."""
    params_path = checkpoint.absolute().parent.parent / "params.txt"
    params = read_params(params_path) if params_path.is_file() else {}
    if model_name:
        if params.get("model") not in (None, model_name):
            _log.warning(f"{params_path} is for model {params['model']!r}, not {model_name!r}: "
                         "ignoring its training-time overrides")
            params = {}
        return model_name, params
    if "model" not in params:
        where = f"{params_path} has no 'model:' line" if params_path.is_file() else f"no {params_path}"
        raise ExportError(f"cannot tell the model of {checkpoint} ({where}); pass --model NAME")
    return params["model"], params


def load_checkpoint_state(checkpoint: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict of a training checkpoint (``{"state_dict": ...}``) or bare state dict, ``module.`` stripped.

    A file that is not one (random bytes, JSON, a truncated or damaged checkpoint, pickled objects) raises
    ``ExportError`` in one sentence naming it, never torch's own advice."""
    problem = unreadable_checkpoint(os.fspath(checkpoint))
    if problem:
        raise ExportError(f"cannot read checkpoint: {problem}")
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{checkpoint} is neither a training checkpoint with a 'state_dict' nor a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _build_reference(model_name: str, settings: Dict[str, Any]) -> torch.nn.Module:
    """The model the checkpoint must match: ``open_clip.create_model`` with random init and the run's settings."""
    kwargs = {k: v for k, v in settings.items() if k not in ("init_logit_scale", "init_logit_bias")}
    model_kwargs = {k: settings[k] for k in ("init_logit_scale", "init_logit_bias") if k in settings}
    try:
        with _quiet_logging():
            return open_clip.create_model(model_name, **kwargs, **model_kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        raise ExportError(f"cannot build model {model_name!r}: {e}") from e


def _select_weights(state: Dict[str, torch.Tensor], model: torch.nn.Module, checkpoint: Path,
                    model_name: str) -> Dict[str, torch.Tensor]:
    """Check ``state`` against ``model`` and drop the keys under its ``plugin_state_prefixes``."""
    owned = tuple(getattr(model, "plugin_state_prefixes", ()) or ())
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(owned)}
    kept = {k: v for k, v in state.items() if not k.startswith(owned)}
    missing = [k for k in expected if k not in kept]
    unexpected = [k for k in kept if k not in expected]
    if missing or unexpected:
        raise ExportError(
            f"checkpoint {checkpoint} does not match model {model_name!r}: "
            f"missing keys [{_few(missing)}], unexpected keys [{_few(unexpected)}]")
    wrong = [f"{k} {tuple(kept[k].shape)} vs {tuple(s)}" for k, s in expected.items() if kept[k].shape != s]
    if wrong:
        raise ExportError(f"checkpoint {checkpoint} does not match model {model_name!r}: "
                          f"shape mismatch (checkpoint vs model) [{_few(wrong, 3)}]")
    return {k: kept[k] for k in expected}


def _write_folder(folder: Path, model_cfg: Dict[str, Any], preprocess_cfg: Dict[str, Any],
                  weights: Dict[str, torch.Tensor]) -> None:
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    os.chmod(folder / WEIGHTS_NAME, (folder / CONFIG_NAME).stat().st_mode & 0o777)  # safetensors writes 0600


def _verify_folder(folder: Path, weights: Dict[str, torch.Tensor]) -> None:
    """Load ``folder`` the way users will (strict ``local-dir:`` load) and compare every tensor."""
    try:
        with _quiet_logging():
            loaded = oc_factory.create_model(f"local-dir:{folder}").state_dict()
    except Exception as e:
        hint = ("; a plugin class must list every weight that plain CLIP lacks in plugin_state_prefixes"
                if "state_dict" in str(e) else "")
        reason = " ".join(str(e).split())
        raise ExportError(f"the export does not load into plain open_clip ({type(e).__name__}: {reason}){hint}") from e
    different = [k for k, v in weights.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))]
    if different:
        raise ExportError(f"weights changed when loaded back from {folder}: {_few(different)}")


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _check_target(out: Path, overwrite: bool) -> None:
    if (out.exists() or out.is_symlink()) and (not out.is_dir() or out.is_symlink()):
        raise ExportError(f"{out} exists and is not a directory; remove it or choose another OUT_DIR")
    problem = output_problem(out, "OUT_DIR", directory=True)  # a file on the way, a read-only place
    if problem:
        raise ExportError(problem)
    if out.exists() and not _is_empty_dir(out) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace it")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is only moved away once ``tmp`` is complete."""
    _check_target(out, overwrite)
    if _is_empty_dir(out):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_local_dir(checkpoint: PathLike, out_dir: PathLike, model_name: Optional[str] = None,
                     overwrite: bool = False) -> Path:
    """Export ``checkpoint`` to ``out_dir`` for ``open_clip.create_model_and_transforms('local-dir:OUT_DIR')``.

    Returns the absolute OUT_DIR. Raises ``ExportError`` (nothing written) for a missing or mismatched
    checkpoint, an unknown model or an existing non-empty OUT_DIR without ``overwrite``.
    """
    checkpoint, out = Path(checkpoint), Path(out_dir).absolute()
    if checkpoint.is_dir():
        epochs = [*checkpoint.glob("checkpoints/epoch_*.pt"), *checkpoint.glob("epoch_*.pt")]
        newest = max(epochs, key=lambda p: int(p.stem[6:]) if p.stem[6:].isdigit() else -1, default=None)
        hint = f", e.g. {newest}" if newest else " (<logs>/<name>/checkpoints/epoch_K.pt)"
        raise ExportError(f"checkpoint {checkpoint} is a folder, not a file; pass a checkpoint file{hint}")
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {checkpoint} is not a file")
    _check_target(out, overwrite)
    name, params = _resolve_model_name(checkpoint, model_name)
    if ":" in name:
        raise ExportError(f"model {name!r}: names with a schema (hf-hub:, local-dir:) cannot be exported")
    if oc_factory.get_model_config(name.replace("/", "-")) is None:
        raise ExportError(f"unknown model {name!r}: neither an open_clip nor an open_clip_align config "
                          "(see open_clip.list_models())")
    block = plugin_block(name)
    base = block.get("base") if block is not None else name.replace("/", "-")
    settings = _run_settings(params, base, name)

    state = plain_state_dict(load_checkpoint_state(checkpoint))  # LoRA merged (fp32), teacher.* dropped
    reference = _build_reference(name, settings)
    weights = _select_weights(state, reference, checkpoint, name)
    model_cfg = _export_model_cfg(name, settings)
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), get_model_preprocess_cfg(reference))
    del reference, state

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        _write_folder(tmp, model_cfg, preprocess_cfg, weights)
        _verify_folder(tmp, weights)
        _publish(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python -m open_clip_align.export CHECKPOINT OUT_DIR [--model NAME] [--overwrite]",
        description=__doc__.replace("``", ""),
        epilog="example:\n  python -m open_clip_align.export logs/run/checkpoints/epoch_5.pt exported/run\n"
               "  python -c \"import open_clip; open_clip.create_model_and_transforms('local-dir:exported/run')\"")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="training checkpoint (<logs>/<name>/checkpoints/epoch_K.pt) or a bare state dict")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must be absent or empty)")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="model config name; default: the 'model:' line of CHECKPOINT/../../params.txt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    return parser


def main(argv=None) -> None:
    """CLI entry point; errors print ``export: error: ...`` and exit with status 2."""
    args = _parser().parse_args(argv)

    def export() -> None:
        out = export_local_dir(args.checkpoint, args.out_dir, model_name=args.model, overwrite=args.overwrite)
        print(f"exported {args.checkpoint} to {out}; load it with "
              f"open_clip.create_model_and_transforms('local-dir:{out}')")

    run_cli(export, "export", also=(OSError,))


if __name__ == "__main__":
    main()
