"""An offline stand-in for OpenAI's QuickGELU tags: the tiny GELU config ``qgtest-tiny-ViT`` with an ``openai``
tag whose weights are a local file and whose pretrained config says ``quick_gelu``, as OpenAI's tags do.

``quickgelu_tag`` (a fixture: ``from quickgelu_tag import quickgelu_tag``) registers both for one test only and
returns the weights file. Building ``qgtest-tiny-ViT`` with ``pretrained="openai"`` then takes the same code
path as ``ViT-B-16`` + ``openai`` (open_clip only warns), in a second instead of a 600 MB download.
"""
import copy

import open_clip
import pytest
import torch
from open_clip import factory as oc_factory
from open_clip import pretrained as oc_pretrained

MODEL = "qgtest-tiny-ViT"
TAG = "openai"
CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture
def quickgelu_tag(tmp_path, monkeypatch):
    """Register ``qgtest-tiny-ViT`` (GELU) and its QuickGELU ``openai`` tag (seeded weights in a file)."""
    monkeypatch.setitem(oc_factory._MODEL_CONFIGS, MODEL, copy.deepcopy(CONFIG))
    torch.manual_seed(0)
    weights = tmp_path / "qgtest_openai.pt"
    torch.save(open_clip.create_model(MODEL, force_quick_gelu=True).state_dict(), weights)
    monkeypatch.setitem(oc_pretrained._PRETRAINED, MODEL, {TAG: {"file": str(weights), "quick_gelu": True}})
    return weights
