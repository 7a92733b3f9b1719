"""The plugin seam: configs, the create_model wrapper, argument pre-parsing, the loss registry."""
import inspect
import json

import open_clip
import open_clip.factory as oc_factory
import pytest
import torch
from open_clip.model import CLIP

import open_clip_align
from open_clip_align import registration, training_hooks
from open_clip_align.models import HardNegCLIP
from open_clip_align.models.factory import create_plugin_model

PLUGIN_NAMES = ["hardneg-tiny-ViT", "shapes-tiny-ViT", "negclip-ViT-B-32", "negclip-ViT-B-16"]


def test_import_registers_configs_and_one_wrapper():
    models = open_clip.list_models()
    for name in PLUGIN_NAMES:
        assert name in models
    assert open_clip.create_model is oc_factory.create_model
    original = oc_factory.create_model._open_clip_align_wrapped
    registration.install()  # a second install must not wrap twice
    assert oc_factory.create_model._open_clip_align_wrapped is original
    assert not hasattr(original, "_open_clip_align_wrapped")


def test_builtin_names_behave_exactly_as_before():
    original = oc_factory.create_model._open_clip_align_wrapped
    torch.manual_seed(0)
    ours = open_clip.create_model("ViT-S-32-alt")
    torch.manual_seed(0)
    theirs = original("ViT-S-32-alt")
    assert type(ours) is CLIP and type(theirs) is CLIP
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wrapper_accepts_every_parameter_of_upstream_create_model():
    upstream = inspect.signature(oc_factory.create_model._open_clip_align_wrapped).parameters
    ours = inspect.signature(create_plugin_model).parameters
    missing = [n for n, p in upstream.items() if p.kind is not p.VAR_KEYWORD and n not in ours]
    assert missing == []
    for name in ("model_name", "pretrained", "precision", "device"):
        assert list(ours).index(name) == list(upstream).index(name)  # positional order kept
    # the legacy upstream kwarg is accepted and ignored
    assert isinstance(open_clip.create_model("hardneg-tiny-ViT", pretrained_hf=False), HardNegCLIP)


@pytest.mark.parametrize("entry", ["create_model", "create_model_and_transforms", "create_model_from_pretrained"])
def test_plugin_names_build_plugin_classes_through_every_entry(entry, tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(open_clip.create_model("hardneg-tiny-ViT").state_dict(), weights)
    result = getattr(open_clip, entry)("hardneg-tiny-ViT", pretrained=str(weights))
    model = result[0] if isinstance(result, tuple) else result
    assert isinstance(model, HardNegCLIP)
    assert model.visual.preprocess_cfg["size"] == (64, 64)
    assert open_clip.get_tokenizer("shapes-tiny-ViT")(["a red circle"]).shape == (1, 24)


def test_hardneg_forward_layout_and_values():
    torch.manual_seed(0)
    model = open_clip.create_model("hardneg-tiny-ViT").eval()
    image = torch.randn(3, 3, 64, 64)
    text = torch.randint(1, 1000, (3, 5, 77))
    text[1, 3] = 0  # a padded negative
    out = model(image, text)
    assert set(out) == {"image_features", "text_features", "logit_scale"}  # loss does not use negatives
    model.emit_hardneg = True
    out = model(image, text)
    assert out["neg_text_features"].shape == (3, 4, 64)
    assert out["neg_text_valid"].tolist() == [[True] * 4, [True, True, False, True], [True] * 4]
    with torch.no_grad():
        torch.testing.assert_close(out["text_features"], model.encode_text(text[:, 0], normalize=True))
        torch.testing.assert_close(out["neg_text_features"][2, 1], model.encode_text(text[2, 2:3], normalize=True)[0])
        assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(3))
    two_d = model(image=None, text=text[:, 0])
    assert set(two_d) == {"text_features", "logit_scale"}


def test_pretrained_file_loads_state_dicts_and_training_checkpoints(tmp_path):
    torch.manual_seed(1)
    src = open_clip.create_model("hardneg-tiny-ViT")
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "epoch_1.pt")
    for name in ("plain.pt", "epoch_1.pt"):
        loaded = open_clip.create_model("hardneg-tiny-ViT", pretrained=str(tmp_path / name))
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in src.state_dict().items())
    bad = dict(src.state_dict(), extra_weight=torch.zeros(1))
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="unexpected keys.*extra_weight"):
        open_clip.create_model("hardneg-tiny-ViT", pretrained=str(tmp_path / "bad.pt"))
    with pytest.raises(RuntimeError, match="neither a file nor a tag"):
        open_clip.create_model("hardneg-tiny-ViT", pretrained="openai")
    with pytest.raises(RuntimeError, match="required"):
        open_clip.create_model_from_pretrained("hardneg-tiny-ViT")


def test_pretrained_tag_resolves_through_base_name(tmp_path, monkeypatch):
    torch.manual_seed(2)
    src = open_clip.create_model("hardneg-tiny-ViT")
    torch.save(src.state_dict(), tmp_path / "w.pt")
    cfg = json.loads((registration.CONFIG_DIR / "hardneg-tiny-ViT.json").read_text())
    cfg["open_clip_align"]["base"] = "tiny-base-for-tests"
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tagtest-tiny-ViT.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-base-for-tests",
                        {"local": {"file": str(tmp_path / "w.pt"), "mean": (0.5, 0.5, 0.5), "std": (0.25,) * 3}})
    model, _, preprocess = open_clip.create_model_and_transforms("tagtest-tiny-ViT", pretrained="local")
    assert isinstance(model, HardNegCLIP)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in src.state_dict().items())
    assert model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)
    assert preprocess.transforms[-1].std == (0.25, 0.25, 0.25)


def test_loss_registry():
    assert {"clip", "negclip"} <= set(open_clip_align.list_losses())
    with pytest.raises(ValueError, match="registered losses: .*negclip"):
        open_clip_align.create_loss("nope", None)

    @open_clip_align.register_loss("test-only-loss")
    def _factory(args):
        return torch.nn.Identity()

    assert "test-only-loss" in open_clip_align.list_losses()
    assert isinstance(open_clip_align.create_loss("test-only-loss", None), torch.nn.Identity)
    with pytest.raises(ValueError, match="already registered"):
        open_clip_align.register_loss("test-only-loss")(lambda args: None)


# ------------------------------------------------------------------ argument parsing

def _parse(argv):
    import open_clip_train.main as train_main
    with training_hooks.training_hooks():
        return train_main.parse_args(argv)


def test_loss_flag_is_never_taken_as_loss_dist_impl():
    args = _parse(["--loss", "negclip", "--hardneg-format", "csv", "--train-data", "x.csv"])
    assert args.loss == "negclip" and args.loss_dist_impl is None
    assert args.num_hardneg == 4 and args.hardneg_format == "csv"


def test_leading_double_dash_is_dropped_for_torchrun():
    args = _parse(["--", "--logs", "/tmp/x", "--batch-size", "3"])
    assert args.logs == "/tmp/x" and args.batch_size == 3 and args.loss == "clip"


def test_unknown_loss_lists_registered_losses(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["--loss", "degl"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown loss 'degl'" in err and "clip" in err and "negclip" in err


def test_hardneg_loss_without_hardneg_data_is_refused(capsys):
    with pytest.raises(SystemExit):
        _parse(["--loss", "negclip", "--train-data", "x.csv"])
    assert "--hardneg-format" in capsys.readouterr().err


def test_upstream_unknown_flags_still_fail():
    with pytest.raises(SystemExit) as exc:
        _parse(["--definitely-not-a-flag", "1"])
    assert exc.value.code == 2


def test_help_lists_plugin_and_upstream_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--loss", "--num-hardneg", "--hardneg-format", "--csv-hardneg-key", "--accum-freq", "--lr",
                 "--lora-r", "--lora-targets", "--siglip-hardneg-weight", "--siglip-init-bias"):
        assert flag in out


def test_hooks_restore_upstream_globals():
    import open_clip_train.main as train_main
    before = (train_main.parse_args, train_main.get_data, train_main.create_loss,
              train_main.create_model_and_transforms, torch.nn.parallel.DistributedDataParallel)
    with training_hooks.training_hooks():
        assert train_main.parse_args is not before[0]
        assert torch.nn.parallel.DistributedDataParallel is training_hooks.CpuSafeDDP
    after = (train_main.parse_args, train_main.get_data, train_main.create_loss,
             train_main.create_model_and_transforms, torch.nn.parallel.DistributedDataParallel)
    assert before == after


@pytest.mark.parametrize("name,base", [("tiny-clip-ViT", "CLIP"), ("tiny-customtext-timm-ViT", "CustomTextCLIP"),
                                       ("tiny-captioner-ViT", "CoCa")])
def test_enable_hardneg_swaps_the_class_in_place(name, base):
    """Any plain CLIP/CustomTextCLIP/CoCa becomes its hard-negative class: same object, keys and isinstance, and
    the class pickles (defined at module level); other classes are refused by name."""
    import copy
    import pickle

    from open_clip.coca_model import CoCa
    from open_clip.model import CustomTextCLIP

    from open_clip_align.models import HardNegMixin, enable_hardneg
    from open_clip_align.models.hardneg import UnsupportedFamily

    model = open_clip.create_model(name)
    keys = list(model.state_dict())
    swapped = enable_hardneg(model)
    assert swapped is model and isinstance(model, HardNegMixin)
    assert isinstance(model, {"CLIP": CLIP, "CustomTextCLIP": CustomTextCLIP, "CoCa": CoCa}[base])
    assert type(model).__name__ == f"HardNeg{base}" and list(model.state_dict()) == keys
    assert type(pickle.loads(pickle.dumps(model))) is type(model) and type(copy.deepcopy(model)) is type(model)
    with pytest.raises(UnsupportedFamily, match="ComAlignCLIP is not one of open_clip's CLIP, CustomTextCLIP, CoCa"):
        enable_hardneg(open_clip.create_model("comalign-tiny-ViT"))
