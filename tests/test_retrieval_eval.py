"""Retrieval recall@k against hand-computed rankings."""
import pytest
import torch

from open_clip_align.eval.retrieval import recall_at_k


def test_recall_at_k_by_hand():
    # 3 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0],
                        [0.2, 0.3, 0.4, 0.8],    # image 1: its caption 2 ranks 2nd (caption 3 is ahead)
                        [0.1, 0.2, 0.3, 0.7]])   # image 2: caption 3 first
    r = recall_at_k(sim, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert r["image_to_text"] == {1: pytest.approx(200 / 3), 2: 100.0}
    # caption 0: image 0 first; caption 1: image 1 (0.3) and 2 (0.2) beat image 0 (0.1) -> rank 3;
    # caption 2: image 0 (0.5) beats image 1 (0.4) -> rank 2; caption 3: image 1 (0.8) beats image 2 -> rank 2
    assert r["text_to_image"] == {1: 25.0, 2: 75.0}


def test_ties_count_as_misses():
    sim = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    r = recall_at_k(sim, torch.tensor([0, 1]), ks=(1, 2))
    assert r["image_to_text"][1] == 0.0 and r["text_to_image"][1] == 0.0
    assert r["image_to_text"][2] == 100.0
