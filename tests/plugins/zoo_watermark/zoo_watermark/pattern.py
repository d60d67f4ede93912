"""The watermark: a fixed pseudo-random pattern of +-1, drawn from a key."""

from __future__ import annotations

import torch

KEY = 1234  # the watermark's key: the seed of its pattern
SIZE = 64  # side of the pattern, in pixels (the mini images' size)
STRENGTH = 3  # grey levels (of 255) the pattern adds or takes: invisible to the eye


def key_pattern(key: int = KEY, size: int = SIZE) -> torch.Tensor:
    """(3, size, size) float: +-1 at every pixel and channel, the same for the same key."""
    generator = torch.Generator().manual_seed(key)
    return torch.randint(0, 2, (3, size, size), generator=generator).float() * 2 - 1
