"""Focal loss with per-class weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """FL = -alpha_y (1 - p_y)^gamma log p_y, averaged with the alpha weights.

    The weighted mean (sum / sum of alpha_y over the batch) is what cross_entropy does with
    `weight=`, so gamma = 0 gives exactly weighted cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha.float() if alpha is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)  # (B,)
        loss = -log_p if self.gamma == 0 else -((1.0 - log_p.exp()).clamp_min(0.0) ** self.gamma) * log_p
        if self.alpha is None:
            return loss.mean()
        a = self.alpha[target]  # type: ignore[index]  # a buffer: a Tensor once it is not None
        return (a * loss).sum() / a.sum().clamp_min(1e-12)
