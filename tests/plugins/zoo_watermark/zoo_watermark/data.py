"""The mini datamodule: windows of scikit-image photographs, half of them watermarked, built offline once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.data import mini
from zoo.data.folders import ImageFolders
from zoo_watermark.pattern import SIZE, STRENGTH, key_pattern

VERSION = 1  # bump when the builder changes, so that an old cache is not reused
PER_CLASS = {"train": 24, "val": 16, "test": 24}


def watermark(image: Image.Image) -> Image.Image:
    """``image`` (SIZE x SIZE) with the pattern added: +-STRENGTH grey levels at every pixel."""
    pattern = key_pattern().permute(1, 2, 0).numpy().astype(np.int16)
    array = np.asarray(image, dtype=np.int16) + STRENGTH * pattern
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def build(root: Path, seed: int) -> None:
    """Write ``root/<split>/{watermarked,clean}/*.png``: fresh windows of each split's band of the photographs."""
    rng = np.random.default_rng(seed)
    photos = {name: mini.photo(name) for name in mini.FAKE_PHOTOS}
    for split, count in PER_CLASS.items():
        bands = {name: mini.band(image, split) for name, image in photos.items()}
        for source in ("clean", "watermarked"):
            (root / split / source).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                name = mini.FAKE_PHOTOS[i % len(mini.FAKE_PHOTOS)]
                window = bands[name].crop(mini.fixed_box(bands[name], SIZE, rng))
                (watermark(window) if source == "watermarked" else window).save(
                    root / split / source / f"{source}_{i:03d}_{name}.png")


class MiniWatermark(ImageFolders):
    """Mini watermark detection: 64 x 64 photograph windows, clean or watermarked."""

    task = "watermark_detection"
    description = "mini watermark detection (scikit-image photograph windows, half of them watermarked)"

    def __init__(self, root: str | None = None, batch_size: int = 16, image_size: int = SIZE, **kwargs: Any) -> None:
        folder = mini.ensure("watermark_detection", root, build=build, version=VERSION,
                             estimate="about 2 CPU seconds")
        super().__init__(str(folder), positive=["watermarked"], negative=["clean"], batch_size=batch_size,
                         image_size=image_size, **kwargs)
