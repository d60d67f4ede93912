"""The mini suite: small, deterministic data sets built from the photographs inside scikit-image.

Everything runs offline and from nothing: the first use builds a set into the cache folder
(``$ZOO_CACHE`` or ``~/.cache/provenance-zoo``) and later uses read it back. The same seed gives the
same files on every machine with the same Pillow and scikit-image.

Each photograph is cut into three horizontal bands: the top 60% feeds train, the next 20% val and the
last 20% test, so no pixel of a test image was seen in training.

What these sets are: real photographs, and transformations of them whose ground truth is known by
construction. What they are not: images of diffusion models, or samples of any real benchmark. A
number measured on them checks that a method runs and learns what the set encodes; it says nothing
about the method's accuracy in the wild.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

# the photographs, their bands and the build cache live below both this module and the learned generator
from zoo.data.mini_photos import (  # noqa: F401 (BANDS and cache_root are this module's public names too)
    BANDS,
    FAKE_PHOTOS,
    PHOTOS,
    SIZE,
    band,
    build_once,
    cache_root,
    fixed_box,
    photo,
)

# bump a set's version when its builder changes, so old caches are not reused
VERSIONS = {"copy_detection": 1, "fake_detection": 2, "copyright": 1}


def random_box(image: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.6, 1.0)) -> tuple[int, ...]:
    """A random square box inside ``image`` whose side is a fraction ``scale`` of the image's short side."""
    short = min(image.size)
    side = max(8, int(short * rng.uniform(*scale)))
    x = int(rng.integers(0, image.width - side + 1))
    y = int(rng.integers(0, image.height - side + 1))
    return (x, y, x + side, y + side)


def square(image: Image.Image, box: tuple[int, ...]) -> Image.Image:
    """``box`` of ``image`` resized to the mini size."""
    return image.crop(box).resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """``image`` after a JPEG round trip at ``quality``."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def jitter(image: Image.Image, rng: np.random.Generator, amount: float) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor in [1 - amount, 1 + amount]."""
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(1 - amount, 1 + amount)))
    return image


def shrink(box: tuple[int, ...], fraction: float, rng: np.random.Generator) -> tuple[int, ...]:
    """A box keeping ``1 - fraction`` of ``box``'s side, at a random offset inside it."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    keep = max(8, int(side * (1 - fraction)))
    dx, dy = (int(v) for v in rng.integers(0, side - keep + 1, size=2))
    return (x0 + dx, y0 + dy, x0 + dx + keep, y0 + dy + keep)


# ---------------------------------------------------------------- copy detection: the level ladder
LADDER = {
    5: "the same region after a JPEG round trip at quality 85 (total replication)",
    4: "90% of the region, colours jittered by up to 10%, JPEG 75",
    3: "75% of the region, mirrored, blurred (radius 1), colours jittered by up to 20%",
    2: "left half of the region spliced with the right half of another photograph",
    1: "another region of the same photograph: same subject and style, none of the content",
    0: "a region of a different photograph",
}


def replicate(level: int, bands: dict[str, Image.Image], name: str, box: tuple[int, ...],
              rng: np.random.Generator) -> Image.Image:
    """The generated image of a pair at ``level`` for the real region ``box`` of photo ``name``."""
    source = bands[name]
    others = [n for n in bands if n != name]
    if level == 5:
        return jpeg(square(source, box), 85)
    if level == 4:
        return jpeg(jitter(square(source, shrink(box, 0.1, rng)), rng, 0.1), 75)
    if level == 3:
        image = square(source, shrink(box, 0.25, rng)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return jitter(image.filter(ImageFilter.GaussianBlur(1)), rng, 0.2)
    if level == 2:
        other = bands[others[int(rng.integers(len(others)))]]
        left = np.asarray(square(source, box))
        right = np.asarray(square(other, random_box(other, rng)))
        return jitter(Image.fromarray(np.concatenate([left[:, : SIZE // 2], right[:, SIZE // 2 :]], axis=1)), rng, 0.1)
    if level == 1:
        return jitter(square(source, random_box(source, rng, (0.4, 0.7))), rng, 0.1)
    other = bands[others[int(rng.integers(len(others)))]]
    return square(other, random_box(other, rng))


COPY_PAIRS_PER_LEVEL = {"train": 24, "val": 8, "test": 10}


def build_copy_detection(root: Path, seed: int = 0) -> None:
    """Write the mini copy-detection set as D-Rep parquet shards (``<split>.parquet``) and pair folders."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    photos = {name: photo(name) for name in PHOTOS}
    names = list(PHOTOS)
    for split, per_level in COPY_PAIRS_PER_LEVEL.items():
        bands = {name: band(image, split) for name, image in photos.items()}
        rows, folder = [], root / "pairs" / split
        (folder / "generated").mkdir(parents=True, exist_ok=True)
        (folder / "real").mkdir(parents=True, exist_ok=True)
        for level in range(6):
            for i in range(per_level):
                name = names[(i + level) % len(names)]
                box = random_box(bands[name], rng)
                real = square(bands[name], box)
                generated = replicate(level, bands, name, box, rng)
                pair = f"{split}_{level}_{i:03d}_{name}"
                rows.append((pair, level, _png(generated), _png(real)))
                generated.save(folder / "generated" / f"{pair}.png")
                real.save(folder / "real" / f"{pair}.png")
        frame = pd.DataFrame(rows, columns=["Name", "Level", "generated_images", "real_images"])
        frame["generated_images"] = [{"bytes": b, "path": f"{n}.png"} for n, b in zip(frame.Name, frame.generated_images, strict=True)]
        frame["real_images"] = [{"bytes": b, "path": f"{n}.png"} for n, b in zip(frame.Name, frame.real_images, strict=True)]
        (root / "drep").mkdir(exist_ok=True)
        frame.to_parquet(root / "drep" / f"{split}.parquet", index=False)
        labels = pd.DataFrame(
            {"name": frame.Name, "generated": [f"generated/{n}.png" for n in frame.Name],
             "real": [f"real/{n}.png" for n in frame.Name], "level": frame.Level}
        )
        labels.to_csv(folder / "labels.csv", index=False)


# ---------------------------------------------------------------- fake detection: stand-ins and a learned generator
def upsampler(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Stand-in generator A: 4x down and nearest-neighbour up, plus a fixed 4x4 periodic pattern.

    It imitates the periodic up-sampling artefacts of transposed convolutions in decoders.
    """
    small = image.resize((SIZE // 4, SIZE // 4), Image.Resampling.BILINEAR)
    array = np.asarray(small.resize((SIZE, SIZE), Image.Resampling.NEAREST), dtype=np.int16)
    pattern = np.tile(np.array([[3, -3, 3, -3], [-3, 3, -3, 3], [2, -2, 2, -2], [-2, 2, -2, 2]]), (SIZE // 4, SIZE // 4))
    return Image.fromarray(np.clip(array + pattern[..., None], 0, 255).astype(np.uint8))


def smoother(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Stand-in generator B: over-smoothed, posterised to 5 bits, over-saturated, with fine noise.

    It imitates the waxy textures and vivid colours of a denoising decoder.
    """
    image = ImageEnhance.Color(image.filter(ImageFilter.MedianFilter(3))).enhance(1.4)
    array = (np.asarray(image) >> 3 << 3).astype(np.int16) + rng.normal(0, 2, (SIZE, SIZE, 3)).round().astype(np.int16)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


# the stand-ins: hand-written transformations whose artefacts are known by construction
GENERATORS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "upsampler": upsampler,
    "smoother": smoother,
}
LEARNED = "autoencoder"  # the learned generator: see zoo.data.mini_generators
FAKE_GENERATORS = (*GENERATORS, LEARNED)
FAKE_PER_SOURCE = {"train": 120, "val": 40, "test": 80}


def build_fake_detection(root: Path, seed: int = 0) -> None:
    """Write ``root/<split>/{real,upsampler,smoother,autoencoder}/*.png`` and ``root/<split>/captions.csv``.

    Every image starts as a SIZE x SIZE window of a photograph at its native scale, never resampled, in
    every split; the photographs take turns so that every source shows the same subjects. A generated
    image is a fresh window passed through its generator, so no real image has a generated twin.
    """
    import pandas as pd

    from zoo.data.mini_generators import autoencoder, reconstruct

    learned = autoencoder()  # trained once (seed 0) on the train bands, shared by every seed of the set
    rng = np.random.default_rng(seed)
    photos = {name: photo(name) for name in FAKE_PHOTOS}
    for split, count in FAKE_PER_SOURCE.items():
        bands = {name: band(image, split) for name, image in photos.items()}
        captions = []
        for source in ("real", *FAKE_GENERATORS):
            (root / split / source).mkdir(parents=True, exist_ok=True)
            names = [FAKE_PHOTOS[i % len(FAKE_PHOTOS)] for i in range(count)]
            images = [bands[name].crop(fixed_box(bands[name], SIZE, rng)) for name in names]
            if source == LEARNED:
                images = reconstruct(learned, images)
            elif source != "real":
                images = [GENERATORS[source](image, rng) for image in images]
            for i, (name, image) in enumerate(zip(names, images, strict=True)):
                file = f"{source}/{source}_{i:03d}_{name}.png"
                image.save(root / split / file)
                captions.append((file, PHOTOS[name]))
        pd.DataFrame(captions, columns=["file", "caption"]).to_csv(root / split / "captions.csv", index=False)


# ---------------------------------------------------------------- copyright: members and hold-outs
COPYRIGHT_COUNTS = {"pretrain": 160, "val": 8, "test": 12}  # val/test: images per class
COPYRIGHT_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # the "artist" whose images are fine-tuned on


def build_copyright(root: Path, seed: int = 0) -> None:
    """Write ``root/pretrain/*.png`` and ``root/<split>/{member,holdout}/*.png``.

    Members and hold-outs are different regions of the same four photographs, so only memorisation of
    the members tells them apart. ``pretrain`` holds regions of every photograph's train band, for the
    model that is fine-tuned.
    """
    rng = np.random.default_rng(seed)
    photos = {name: photo(name) for name in PHOTOS}
    names = list(PHOTOS)
    (root / "pretrain").mkdir(parents=True, exist_ok=True)
    bands = {name: band(image, "train") for name, image in photos.items()}
    for i in range(COPYRIGHT_COUNTS["pretrain"]):
        name = names[i % len(names)]
        square(bands[name], random_box(bands[name], rng)).save(root / "pretrain" / f"pretrain_{i:03d}_{name}.png")
    for split in ("val", "test"):
        bands = {name: band(photos[name], split) for name in COPYRIGHT_PHOTOS}
        for cls in ("member", "holdout"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(COPYRIGHT_COUNTS[split]):
                name = COPYRIGHT_PHOTOS[i % len(COPYRIGHT_PHOTOS)]
                square(bands[name], random_box(bands[name], rng)).save(root / split / cls / f"{cls}_{i:03d}_{name}.png")


BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "copy_detection": build_copy_detection,
    "fake_detection": build_fake_detection,
    "copyright": build_copyright,
}


# what a first build costs, said on stderr when one must happen (measured on one idle core)
ESTIMATES = {"copy_detection": "about 5 CPU seconds", "fake_detection": "about 20 CPU seconds",
             "copyright": "about 2 CPU seconds"}


def ensure(kind: str, root: str | Path | None = None, seed: int = 0,
           build: Callable[[Path, int], None] | None = None, version: int | None = None,
           estimate: str | None = None) -> Path:
    """The folder of mini set ``kind``, built first if it is not there yet.

    The folder is keyed by ``kind``, ``version`` and ``seed``: the builds are deterministic, so a folder once
    complete is reused by every later process. A build runs under a file lock, into a temporary folder that
    is renamed into place when complete, so that concurrent processes build it once and never read half a set.

    Args:
        kind: the set's name (a key of ``BUILDERS``, or a plugin's own).
        root: the folder to build into; None: ``cache_root()/<kind>-v<version>-seed<seed>``.
        seed: the build's seed.
        build: writes the set into a folder (default: the core builder of ``kind``); plugins pass their own,
            with a ``version`` of their own, for what they build on top of the mini suite.
        version: the builder's version (bump it when the builder changes); None: ``VERSIONS[kind]``.
        estimate: what the build costs, said on stderr when it must happen.
    """
    return build_once(kind, version if version is not None else VERSIONS.get(kind, 1), seed, build or BUILDERS[kind],
                      estimate or ESTIMATES.get(kind, "a few CPU seconds"), root)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
