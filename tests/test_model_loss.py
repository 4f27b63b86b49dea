"""C3D topology and parameter count; focal loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from exptrack.losses import FocalLoss
from exptrack.models.c3d import C3D, count_parameters


def test_parameter_count_matches_the_original():
    assert count_parameters(C3D(num_classes=17)) == 27_797_137


def test_block_layout_and_gradcam_resolutions():
    model = C3D(num_classes=5, width=0.125).eval()
    x = torch.randn(1, 3, 16, 112, 112)
    shapes = {}
    for i in range(1, 6):
        x = getattr(model, f"block{i}")(x)
        shapes[i] = tuple(x.shape[2:])
    # time is kept by block 1 and halved after; space halves each block (README: 14, 7, 3)
    assert shapes == {1: (16, 56, 56), 2: (8, 28, 28), 3: (4, 14, 14), 4: (2, 7, 7), 5: (1, 3, 3)}
    assert not any(getattr(m, "inplace", False) for m in model.modules())  # hooks see real activations


@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (2, 3, 4, 20, 28), (3, 3, 16, 48, 48)])
def test_forward_backward_any_input_size(shape):
    model = C3D(num_classes=4, width=0.125)
    out = model(torch.randn(*shape))
    assert out.shape == (shape[0], 4)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_focal_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    p0 = math.exp(2) / (math.exp(2) + 2)  # prob of the true class, sample 1
    p1 = 1 / (2 + math.e)  # sample 2
    gamma = 2.0
    expected = [-(1 - p0) ** gamma * math.log(p0), -(1 - p1) ** gamma * math.log(p1)]
    assert FocalLoss(gamma)(logits, target).item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    alpha = torch.tensor([0.5, 1.0, 2.0])
    weighted = (0.5 * expected[0] + 2.0 * expected[1]) / (0.5 + 2.0)
    assert FocalLoss(gamma, alpha)(logits, target).item() == pytest.approx(weighted, rel=1e-6)


def test_gamma_zero_is_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(32, 6), torch.randint(0, 6, (32,))
    alpha = torch.rand(6) + 0.1
    assert FocalLoss(0.0, alpha)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=alpha).item(), rel=1e-6)
    assert FocalLoss(0.0)(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_focal_loss_down_weights_easy_examples():
    easy = FocalLoss(2.0)(torch.tensor([[6.0, 0.0]]), torch.tensor([0]))
    hard = FocalLoss(2.0)(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    ce_easy = F.cross_entropy(torch.tensor([[6.0, 0.0]]), torch.tensor([0]))
    assert easy < 0.01 * ce_easy and hard > 0.3


def test_static_removal_ignores_what_stays_still():
    """With static_removal=1, anything constant over the clip (a room, clothes) cancels exactly:
    adding a random still image to every frame does not change the output; without it, it does."""
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 8, 32, 32)  # (B, C, T, H, W)
    scene = torch.randn(2, 3, 1, 32, 32).expand_as(clip)  # the same picture in every frame
    moving = C3D(num_classes=4, width=0.125, static_removal=1.0).eval()
    plain = C3D(num_classes=4, width=0.125, static_removal=0.0).eval()
    plain.load_state_dict(moving.state_dict())  # same weights: no parameters were added
    def first_block(model: C3D, x: torch.Tensor) -> torch.Tensor:  # what the first convolutions see
        return model.block1(model.remove_static(x))

    with torch.no_grad():
        torch.testing.assert_close(first_block(moving, clip + scene), first_block(moving, clip), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(moving(clip + scene), moving(clip), atol=1e-4, rtol=1e-4)
        assert (first_block(plain, clip + scene) - first_block(plain, clip)).abs().mean() > 0.1
    assert count_parameters(C3D(num_classes=17, static_removal=1.0)) == 27_797_137


def test_saved_configs_from_before_static_removal_keep_plain_frames():
    from exptrack.config import Config, config_from_dict, to_nested_dict

    saved = to_nested_dict(Config())
    del saved["model"]["static_removal"]  # a model logged before the key existed
    assert config_from_dict(saved).model.static_removal == 0.0
    saved["model"]["static_removal"] = 0.5
    assert config_from_dict(saved).model.static_removal == 0.5
