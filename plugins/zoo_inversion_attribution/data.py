"""The mini attribution suite: a small generator trained on mini data, two others, and real photos.

Built once into ``$ZOO_CACHE`` (deterministically, on one thread):

    generators/generated/     the model under test: a small VAE decoder (``MiniDecoder``) trained on
                              32x32 windows of half of scikit-image's photographs (seed s)
    generators/sibling/       the hard negative: the same family trained on the same photographs with
                              another seed (s + 1); only the seed tells the two models apart
    generators/other_model/   the same family trained on the other half of the photographs (seed s + 2)
    calibration/generated/    images the model under test generated, for the belonging test
    <val|test>/generated/     further images of the model under test (label 1)
    <val|test>/sibling/       images of the sibling (label 0)
    <val|test>/other_model/   images of the model trained on other photographs (label 0)
    <val|test>/real/          32x32 windows of the photographs' val/test bands (label 0)

Every window is cut at the photograph's own scale (never resampled) in every split. Generated images
are decoder outputs at latents drawn from N(0, I), saved as 8-bit PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zoo.data import mini
from zoo.data.folders import AttributionFolders
from zoo_inversion_attribution.mini_decoder import MiniDecoder, MiniEncoder, save_mini_decoder

KIND = "attribution"
VERSION = 2  # bump when the builder changes, so old caches are not reused
IMAGE_SIZE = 32
LATENT_DIM = 16
COUNTS = {"calibration": 16, "val": 8, "test": 24}  # images per source
NEGATIVES = ("sibling", "other_model", "real")
TRAIN_PATCHES, TRAIN_STEPS, TRAIN_BATCH = 256, 120, 32
KL_WEIGHT = 1e-3  # weight of the VAE's KL term per latent dimension relative to the per-pixel MSE


def _patches(names: list[str], split: str, count: int, rng: np.random.Generator) -> torch.Tensor:
    bands = {name: mini.band(mini.photo(name), split) for name in names}
    out = []
    for i in range(count):
        image = bands[names[i % len(names)]]
        out.append(np.asarray(image.crop(mini.fixed_box(image, IMAGE_SIZE, rng))))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def train_mini_decoder(names: list[str], seed: int) -> MiniDecoder:
    """Train a ``MiniDecoder`` as a small VAE on 32x32 regions of the train bands of ``names``."""
    torch.manual_seed(seed)
    data = _patches(names, "train", TRAIN_PATCHES, np.random.default_rng(seed))
    encoder, decoder = MiniEncoder(LATENT_DIM), MiniDecoder(LATENT_DIM)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(TRAIN_STEPS):
        batch = data[torch.randint(len(data), (TRAIN_BATCH,), generator=generator)]
        mu, logvar = encoder(batch)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator)
        recon = (decoder(z) - batch).pow(2).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        loss = recon + KL_WEIGHT * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return decoder.eval()


def _save_samples(decoder: MiniDecoder, folder: Path, count: int, seed: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    z = torch.randn(count, LATENT_DIM, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = (decoder(z) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, array in enumerate(images):
        Image.fromarray(array).save(folder / f"{prefix}_{i:03d}.png")


def build_attribution(root: Path, seed: int = 0) -> None:
    """Train the three mini generators and write every split (see the module docstring)."""
    names = list(mini.PHOTOS)
    threads = torch.get_num_threads()
    # one thread: the same float summation order, hence the same weights, on every machine
    torch.set_num_threads(1)
    try:
        models = {"generated": train_mini_decoder(names[0::2], seed),
                  "sibling": train_mini_decoder(names[0::2], seed + 1),
                  "other_model": train_mini_decoder(names[1::2], seed + 2)}
    finally:
        torch.set_num_threads(threads)
    for name, decoder in models.items():
        save_mini_decoder(decoder, root / "generators" / name)
    _save_samples(models["generated"], root / "calibration" / "generated", COUNTS["calibration"], seed + 100, "generated")
    rng = np.random.default_rng(seed + 200)
    for offset, split in enumerate(("val", "test")):
        count = COUNTS[split]
        for name, decoder in models.items():
            _save_samples(decoder, root / split / name, count, seed + 300 + 10 * offset + len(name), name)
        (root / split / "real").mkdir(parents=True, exist_ok=True)
        real = (_patches(names, split, count, rng) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for i, array in enumerate(real):
            Image.fromarray(array).save(root / split / "real" / f"real_{i:03d}.png")


def ensure_attribution(root: str | Path | None = None, seed: int = 0) -> Path:
    """The folder of the mini attribution set, built first if it is not there yet."""
    return mini.ensure(KIND, root, seed, build=build_attribution, version=VERSION)


def mini_generator_folder(name: str = "generated") -> Path:
    """The saved mini generator ``generated`` (the model under test), ``sibling`` or ``other_model``, built on demand."""
    return ensure_attribution() / "generators" / name


def mini_calibration_folder() -> Path:
    """Images the mini model under test generated, for the belonging test."""
    return ensure_attribution() / "calibration" / "generated"


class MiniAttribution(AttributionFolders):
    """Mini attribution: a small trained VAE decoder's images against two other decoders' and real photos.

    ``other`` picks the negative sources (default all of ``NEGATIVES``: ``sibling``, the same family
    trained on the same photographs with another seed; ``other_model``, trained on other photographs;
    ``real``).
    """

    description = "mini attribution (a trained mini decoder vs its sibling, a decoder of other photos, real photos)"

    def __init__(self, root: str | None = None, other: list[str] | None = None, batch_size: int = 16,
                 image_size: int = IMAGE_SIZE, **kwargs: Any) -> None:
        folder = ensure_attribution(root)
        super().__init__(str(folder), generated=["generated"], other=other or list(NEGATIVES),
                         batch_size=batch_size, image_size=image_size, **kwargs)
        self.calibration_dir = folder / "calibration" / "generated"
