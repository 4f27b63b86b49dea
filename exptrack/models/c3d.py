"""C3D as the original README lists it, with a width multiplier for small runs.

Five blocks of 3x3x3 convolutions (each followed by BatchNorm and ReLU), max pools (1,2,2) then
(2,2,2), global average pooling and a two-layer classifier. At width 1.0 and 17 classes it has
27,797,137 parameters for input (B, 3, 16, 112, 112). Any clip length and frame size work: a
pool never shrinks a dimension that is already 1.

`static_removal` (0 to 1) subtracts that share of each pixel's mean over the clip before the
first convolution. An exercise is a motion; what stays still in a clip (the room, the clothes)
is what a model memorises on a few subjects and what fails on the next one. With `stabilize`,
each frame is first shifted onto the clip's middle frame, so that a shaking camera does not
turn the room into motion (models/stabilize.py). Neither has
parameters, so the model and its parameter count are the paper's either way, and being part of
the module it applies wherever the model runs (evaluate, predict, GradCAM, MLflow pyfunc).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .stabilize import stabilize as stabilize_frames

# (output channels of each conv) per block, at width 1.0
BLOCKS = ((64,), (128,), (256, 256), (512, 512), (512, 512))
HIDDEN = 256


class Pool(nn.Module):
    """Max pool (kernel = stride) that keeps a dimension of size 1 instead of failing."""

    def __init__(self, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = tuple(min(k, s) for k, s in zip(self.kernel, x.shape[2:], strict=True))  # x: (B, C, T, H, W)
        return F.max_pool3d(x, kernel_size=k, stride=k)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def remove_static(x: torch.Tensor, share: float, stabilize: bool) -> torch.Tensor:
    """(B, C, T, H, W) clips minus `share` of each pixel's mean over the clip, after shifting
    each frame onto the middle one when `stabilize` (only then: with share 0 nothing is removed)."""
    if not share:
        return x
    if stabilize:
        x = stabilize_frames(x)  # (B, C, T, H, W), each frame moved onto the middle one
    return x - share * x.mean(dim=2, keepdim=True)  # (B, C, T, H, W) minus (B, C, 1, H, W)


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # ReLU is not in-place so that a hook on a block sees its real activation (GradCAM).
    return [nn.Conv3d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm3d(cout), nn.ReLU()]


class C3D(nn.Module):
    def __init__(self, num_classes: int = 17, width: float = 1.0, dropout: float = 0.5,
                 dropout_fc: float = 0.3, in_channels: int = 3, static_removal: float = 0.0,
                 stabilize: bool = False) -> None:
        super().__init__()
        self.num_classes, self.width, self.static_removal = num_classes, width, static_removal
        self.stabilize = stabilize
        cin = in_channels
        for i, channels in enumerate(BLOCKS, start=1):
            layers: list[nn.Module] = []
            for c in channels:
                cout = max(4, round(c * width))
                layers += conv_bn_relu(cin, cout)
                cin = cout
            layers.append(Pool((1, 2, 2) if i == 1 else (2, 2, 2)))  # block 1 keeps time
            setattr(self, f"block{i}", nn.Sequential(*layers))
        hidden = max(8, round(HIDDEN * width))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(cin, hidden), nn.ReLU(), nn.Dropout(dropout_fc), nn.Linear(hidden, num_classes)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = getattr(self, f"block{i}")(x)
        return x

    def remove_static(self, x: torch.Tensor) -> torch.Tensor:
        return remove_static(x, self.static_removal, self.stabilize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.remove_static(x))  # (B, C, T', H', W')
        x = self.pool(x).flatten(1)  # (B, C)
        return self.classifier(x)  # (B, num_classes)


class C3DEnsemble(nn.Module):
    """Several C3Ds of one config (a seed or fold group's members) as one model: the output is
    the log of their mean class probabilities, so that softmax and argmax of it are the
    ensemble's, as for a single C3D's logits. Its state dict holds every member
    (`members.<i>.<C3D key>`), so it is stored, logged and loaded like any model."""

    def __init__(self, members: list[C3D]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.num_classes, self.width = members[0].num_classes, members[0].width
        self.static_removal, self.stabilize = members[0].static_removal, members[0].stabilize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members])  # (M, B, num_classes)
        return probs.mean(0).clamp_min(1e-12).log()  # (B, num_classes)


def build_model(model_config) -> C3D | C3DEnsemble:
    """C3D from a ModelConfig (an ensemble of model.ensemble of them when that is above 1)."""
    def one() -> C3D:
        return C3D(num_classes=model_config.outputs, width=model_config.width, dropout=model_config.dropout,
                   dropout_fc=model_config.dropout_fc, static_removal=model_config.static_removal,
                   stabilize=model_config.stabilize)

    members = getattr(model_config, "ensemble", 1)
    return one() if members == 1 else C3DEnsemble([one() for _ in range(members)])


def ensemble_state_dict(members: list[dict]) -> dict:
    """The state dict of a C3DEnsemble holding these C3D state dicts, in order."""
    return {f"members.{i}.{key}": value for i, state in enumerate(members) for key, value in state.items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_with_weights(model_config, state_dict: dict) -> C3D | C3DEnsemble:
    """A C3D holding `state_dict`, built on the meta device: no random initialisation, so loading
    a model never draws from torch's global RNG (a model logged by the tracking thread while the
    training thread trains would otherwise change its dropout masks) and wastes no time.
    Raises RuntimeError when the weights do not fit the config (as load_state_dict does)."""
    with torch.device("meta"):
        model = build_model(model_config)
    model.load_state_dict(state_dict, assign=True)
    return model
