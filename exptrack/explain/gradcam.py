"""GradCAM on C3D with pytorch-grad-cam, whose GradCAM handles 5-D (B, C, T, H, W) activations.

The hook sits on a whole block (`block3`, `block4` or `block5`): its output is the pooled
activation after ReLU, not a convolution whose output an in-place ReLU would overwrite. The
heatmap has one map per frame, resized from the block's (T', H', W') to the clip's (T, H, W)
and scaled to [0, 1] per clip.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..config import ConfigError
from ..models.c3d import C3D, C3DEnsemble

LAYERS = ("block3", "block4", "block5")


def target_layers(model: C3D | C3DEnsemble, name: str) -> list[torch.nn.Module]:
    """The block `name` of the model (of every member of an ensemble: GradCAM averages their maps)."""
    if name not in LAYERS:
        raise ConfigError(f"GradCAM layer must be one of {', '.join(LAYERS)}, got {name!r}")
    return [getattr(m, name) for m in getattr(model, "members", [model])]


def gradcam(model: C3D | C3DEnsemble, clips: torch.Tensor, layer: str = "block4",
            classes: list[int] | None = None) -> np.ndarray:
    """(B, 3, T, H, W) model input -> (B, T, H, W) float32 heatmaps in [0, 1] for `classes`
    (default: each clip's predicted class)."""
    model.eval()
    # checked here: pytorch-grad-cam's context manager swallows an IndexError from a bad target
    bad = [c for c in classes or [] if not 0 <= int(c) < model.num_classes]
    if bad:
        raise ValueError(f"GradCAM classes {bad}: the model has outputs 0..{model.num_classes - 1}")
    targets = [ClassifierOutputTarget(int(c)) for c in classes] if classes is not None else None
    with GradCAM(model=model, target_layers=target_layers(model, layer)) as cam:  # hooks removed on exit
        heat = cam(input_tensor=clips.float(), targets=targets)  # (B, T, H, W)
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    return np.clip(heat, 0.0, 1.0)
