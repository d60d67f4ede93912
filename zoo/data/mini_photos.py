"""What every mini set stands on: the photographs inside scikit-image, their split bands, and the build cache.

The sets of ``zoo.data.mini``, the learned generator of ``zoo.data.mini_generators`` and a plugin's own
sets all cut the same photographs into the same bands and build into the same cache, once, under a lock.
This module imports neither of them, so that both can import it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

# The photographs that scikit-image ships inside its wheel (no download), with a caption each.
PHOTOS: dict[str, str] = {
    "astronaut": "an astronaut in a space suit",
    "camera": "a man with a camera on a tripod",
    "chelsea": "a tabby cat",
    "coffee": "a cup of coffee on a saucer",
    "coins": "old coins on a table",
    "hubble_deep_field": "galaxies in deep space",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "moon": "the surface of the moon",
    "page": "a page of printed text",
    "retina": "a photograph of a human retina",
    "rocket": "a rocket on a launch pad",
    "text": "handwritten and printed text",
    "clock": "a clock on a wall",
    "cell": "a cell under a microscope",
    "brick": "a brick wall",
    "grass": "a patch of grass",
    "gravel": "a patch of gravel",
}
BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
SIZE = 64  # side of every mini image, in pixels
# the photographs whose val and test bands are at least SIZE pixels tall, so that every split is cut
# at the same native scale (the others' test bands are 34-61 px tall)
FAKE_PHOTOS = ("astronaut", "camera", "coffee", "hubble_deep_field", "immunohistochemistry", "moon", "retina",
               "rocket", "cell", "brick", "grass", "gravel")


def cache_root() -> Path:
    """Where the mini sets are built."""
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "provenance-zoo")) / "mini"


def photo(name: str) -> Image.Image:
    """The scikit-image photograph ``name`` as RGB."""
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8) if array.dtype.kind == "f" else array.astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def band(image: Image.Image, split: str) -> Image.Image:
    """The horizontal band of ``image`` that belongs to ``split``."""
    top, bottom = BANDS[split]
    return image.crop((0, int(top * image.height), image.width, int(bottom * image.height)))


def fixed_box(image: Image.Image, side: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random ``side`` x ``side`` box inside ``image``: a window at the photograph's own scale."""
    if min(image.size) < side:
        raise ValueError(f"a {image.width}x{image.height} band has no {side}x{side} window")
    x = int(rng.integers(0, image.width - side + 1))
    y = int(rng.integers(0, image.height - side + 1))
    return (x, y, x + side, y + side)


def build_once(kind: str, version: int, seed: int, build: Callable[[Path, int], None], estimate: str,
               root: str | Path | None = None) -> Path:
    """The folder of a set, built by ``build`` first if it is not there yet (``zoo.data.mini.ensure`` documents it).

    The folder is keyed by ``kind``, ``version`` and ``seed``: the builds are deterministic, so a folder once
    complete is reused by every later process. A build runs under a file lock, into a temporary folder that
    is renamed into place when complete, so that concurrent processes build it once and never read half a set.
    """
    from filelock import FileLock

    target = Path(root) if root else cache_root() / f"{kind}-v{version}-seed{seed}"
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / ".complete").is_file():  # built by another process while this one waited
            return target
        print(f"zoo: building {kind} (v{version}, seed {seed}) once into {target}: {estimate}", file=sys.stderr,
              flush=True)
        work = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
        try:
            build(work, seed)
            (work / ".complete").write_text("built\n")
            if target.exists():  # left incomplete by a killed build; nobody else writes it while we hold the lock
                shutil.rmtree(target)
            work.rename(target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return target
