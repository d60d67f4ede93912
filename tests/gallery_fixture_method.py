"""A tiny copy-detection method for the gallery tests: fixed random projection of centred pixels.

It offers the retrieval API of copy-detection methods (``embed``, ``pair_from_embeddings``) without
depending on any plugin. The projection is a seeded buffer, so two instances embed identically; with
``seed=None`` it is drawn from torch's global generator, like the weights of a random-init network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.module import ZooModule


class GalleryFixtureMethod(ZooModule):
    """Descriptor = seeded projection of the 8x8 centred thumbnail; level = 5 * cosine rescaled from [0.8, 1]."""

    task = "copy_detection"
    paper = "test fixture"
    # collapsed: every image gets the same descriptor and the PDF is flat (level 2.5, its mean), as a model
    # that has collapsed; it also flags equal descriptors as exact copies, which a gallery must not believe
    variants = {"tiny": {"dim": 32}, "collapsed": {"dim": 32, "collapsed": True}}
    trains = False

    def __init__(self, dim: int = 32, seed: int | None = 0, collapsed: bool = False) -> None:
        super().__init__()
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(3 * 8 * 8, dim, generator=generator))
        self.collapsed = collapsed

    def embed(self, images: Tensor) -> Tensor:
        small = F.adaptive_avg_pool2d(images.float(), 8).flatten(1)
        small = small - small.mean(dim=1, keepdim=True)
        if self.collapsed:
            return F.normalize(torch.ones(len(images), self.projection.shape[1]), dim=1)
        return F.normalize(small @ self.projection, dim=1)

    def pair_from_embeddings(self, generated_emb: Tensor, real_emb: Tensor) -> dict[str, Tensor]:
        cosine = (F.normalize(generated_emb.float(), dim=1) * F.normalize(real_emb.float(), dim=1)).sum(1)
        if self.collapsed:
            pdf = torch.full((len(cosine), 6), 1 / 6)
            return {"level": pdf @ torch.arange(6.0), "pdf": pdf, "exact_copy": (cosine > 0.999).long()}
        level = (5 * (cosine - 0.8) / 0.2).clamp(0, 5)
        pdf = torch.softmax(-(torch.arange(6.0) - level[:, None]).abs() * 2, dim=1)
        return {"level": level, "pdf": pdf}

    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return self.pair_from_embeddings(self.embed(batch["generated"]), self.embed(batch["real"]))
