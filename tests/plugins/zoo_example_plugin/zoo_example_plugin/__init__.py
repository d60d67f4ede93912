"""A third party's generated-image detector, plugged into provenance-zoo by one entry-point line."""

from __future__ import annotations

import torch
from torch import nn

from zoo.module import ZooModule


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and spread, and the energy of horizontal and vertical pixel differences."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(-1, -2))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(-1, -2))
    return torch.cat([images.mean(dim=(-1, -2)), images.std(dim=(-1, -2)), dx, dy], dim=1)


class ImageStatsDetector(ZooModule):
    """Logistic regression on twelve image statistics."""

    task = "fake_detection"
    paper = "(example plugin)"
    variants = {"tiny": {}}

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.norm = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(image_statistics(images))).squeeze(1)

    def predict_batch(self, batch):
        return {"score": self.logits(batch["image"])}

    def training_step(self, batch, batch_idx):
        loss = nn.functional.binary_cross_entropy_with_logits(self.logits(batch["image"]), batch["label"].float())
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
