"""The method: correlate the image's high-pass residual with the watermark's pattern, then a logistic map."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zoo.data.base import default_transform
from zoo.module import ZooModule
from zoo_watermark.pattern import KEY, SIZE, key_pattern


def high_pass(images: Tensor) -> Tensor:
    """The images less their 3 x 3 local mean: the photograph's content mostly gone, the pattern kept."""
    return images - nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)


class WatermarkCorrelator(ZooModule):
    """The residual's correlation with the key's pattern, in grey levels, through a learned logistic map.

    Args:
        key: the watermark's key (the seed of its pattern).
        size: the side the images are read at (the pattern's).
        lr: Adam's learning rate for the map's scale and bias.
    """

    task = "watermark_detection"
    paper = "(a toy watermark, for the plugin test)"
    variants = {"tiny": {}}
    tiny_trainer = {"max_epochs": 3}

    def __init__(self, key: int = KEY, size: int = SIZE, lr: float = 0.1) -> None:
        super().__init__()
        self.size, self.lr = size, lr
        pattern = high_pass(key_pattern(key, size)[None])[0]
        self.register_buffer("pattern", pattern, persistent=False)  # rebuilt from the key, never stored
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(-1.5))

    def image_transform(self) -> Callable[[Any], Tensor]:
        return default_transform(self.size)

    def strength(self, images: Tensor) -> Tensor:
        """(B,) the pattern's amplitude in the images, in grey levels (about 0 without it)."""
        residual = high_pass(images.float())
        return 255 * (residual * self.pattern).mean(dim=(1, 2, 3)) / self.pattern.pow(2).mean()

    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"score": self.scale * self.strength(batch["image"]) + self.bias}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        score = self.predict_batch(batch)["score"]
        loss = nn.functional.binary_cross_entropy_with_logits(score, batch["label"].float())
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
