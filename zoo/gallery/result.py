"""What ``zoo match`` finds for one generator: the data that ``zoo.gallery.match`` writes and the report reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GeneratorResult:
    """The best gallery match of each generated image of one generator."""

    name: str
    ids: list[str]
    match_ids: list[str]
    similarity: np.ndarray
    level: np.ndarray
    pdf: np.ndarray | None
    threshold: float
    exact_copy: np.ndarray  # bool: the two images' decoded pixels are identical at the model's input size
    descriptor_identical: np.ndarray  # bool: equal descriptors, which says nothing about the pixels
    unchecked: int = 0  # descriptor-identical pairs whose pixels could not be read again
    ratio: float = 0.0
    ci: tuple[float, float] = (0.0, 0.0)
    histogram: list[int] = field(default_factory=list)
