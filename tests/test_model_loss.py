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


def test_the_paper_config_builds_the_papers_c3d_and_the_default_adds_a_rest_output():
    from pathlib import Path

    from exptrack.config import Config, load_config
    from exptrack.models.c3d import build_model

    paper = load_config(Path(__file__).resolve().parents[1] / "experiments" / "c3d_paper.yaml", [])
    assert not paper.model.rest_class and count_parameters(build_model(paper.model)) == 27_797_137
    default = Config()
    assert default.model.rest_class and default.model.outputs == default.model.num_classes + 1
    assert build_model(default.model).classifier[-1].out_features == 18


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
    del saved["model"]["stabilize"]
    assert config_from_dict(saved).model.static_removal == 0.0
    assert config_from_dict(saved).model.stabilize is False  # as it ran then
    saved["model"]["static_removal"] = 0.5
    assert config_from_dict(saved).model.static_removal == 0.5
    assert Config().model.stabilize is True


def test_a_model_saved_before_the_rest_output_loads_with_its_17_outputs():
    from exptrack.config import Config, config_from_dict, to_nested_dict
    from exptrack.models.c3d import build_model, model_with_weights

    saved = to_nested_dict(Config())
    del saved["model"]["rest_class"]  # logged before the key existed: no rest output
    config = config_from_dict(saved)
    assert not config.model.rest_class
    old_weights = C3D(num_classes=17, width=0.125).state_dict()
    small = config_from_dict({**saved, "model": {**saved["model"], "width": 0.125}}).model
    assert model_with_weights(small, old_weights).classifier[-1].out_features == 17
    assert build_model(Config().model).classifier[-1].out_features == 18  # today's default adds rest


def _shaken_scene(shifts: list[tuple[int, int]], size: int = 48, margin: int = 6) -> torch.Tensor:
    """(1, 3, T, size, size): one still, textured room seen through a camera that moves by
    `shifts` (dy, dx) pixels, plus a small square (the person) that moves on its own."""
    g = torch.Generator().manual_seed(0)
    room = torch.randn(1, 3, size + 2 * margin, size + 2 * margin, generator=g)
    room = 3.0 * F.avg_pool2d(room, 3, stride=1, padding=1)  # texture with edges a few pixels wide, std 1
    frames = []
    for t, (dy, dx) in enumerate(shifts):
        view = room[..., margin + dy:margin + dy + size, margin + dx:margin + dx + size].clone()
        view[..., 20:26, 10 + t:16 + t] = 2.0  # the person walks right, 1 pixel per frame
        frames.append(view)
    return torch.stack(frames, dim=2)


def test_stabilize_finds_the_camera_shift_and_cancels_it():
    from exptrack.models.stabilize import estimate_shifts, stabilize

    shifts = [(0, 0), (1, -2), (-2, 1), (0, 0), (2, 2), (-1, 0)]
    clip = _shaken_scene(shifts)
    middle = shifts[len(shifts) // 2]
    # frame t(p) = room(p + s_t): relative to the middle frame it shows the room moved by -(s_t - s_mid)
    expected = torch.tensor([[-(dy - middle[0]), -(dx - middle[1])] for dy, dx in shifts], dtype=torch.float32)
    torch.testing.assert_close(estimate_shifts(clip, max_shift=3)[0], expected, atol=0.25, rtol=0)

    def residual(x: torch.Tensor) -> float:  # what static removal keeps, away from the borders
        return float((x - x.mean(dim=2, keepdim=True))[..., 4:-4, 4:-4].pow(2).mean())

    steady = _shaken_scene([(0, 0)] * len(shifts))
    assert residual(clip) > 5 * residual(steady)  # the shake is most of what is left
    # Stabilizing removes most of it (10x here; what is left: fractional-pixel error on sharp texture).
    assert residual(stabilize(clip)) < 3 * residual(steady)
    assert (stabilize(steady) - steady).abs().mean() < 0.02  # a still camera: (almost) unchanged


def test_stabilize_runs_only_with_static_removal():
    clip = _shaken_scene([(0, 0), (2, 0), (0, 2), (1, 1)])
    with torch.no_grad():
        plain = C3D(num_classes=4, width=0.125, static_removal=0.0, stabilize=True).eval()
        torch.testing.assert_close(plain.remove_static(clip), clip)  # masks on: frames as they are
        steady = C3D(num_classes=4, width=0.125, static_removal=1.0, stabilize=True).eval()
        shaky = C3D(num_classes=4, width=0.125, static_removal=1.0, stabilize=False).eval()
        assert steady.remove_static(clip).abs().mean() < 0.5 * shaky.remove_static(clip).abs().mean()


def test_saved_configs_with_keys_since_removed_still_load():
    """Every model logged before model.name was removed saved it ("c3d"); they still load."""
    from exptrack.config import Config, config_from_dict, to_nested_dict

    saved = to_nested_dict(Config())
    saved["model"]["name"] = "c3d"
    assert config_from_dict(saved) == Config()
