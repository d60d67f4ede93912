"""The learned generator of the mini fake-detection set: a small autoencoder trained on the photographs.

A latent diffusion model draws its images through a VAE decoder that up-samples a latent four to eight
times with learned layers; that decoder leaves traces of its own (lost fine texture, learned up-sampling
patterns) in every image, whatever the content. ``MiniAutoencoder`` is the smallest thing with the same
structure: a convolutional encoder to a 4-channel latent at a quarter of the side, and a decoder that
up-samples it back with two learned transposed convolutions. It is trained on native-scale regions of the
photographs' train bands only, so its test images are reconstructions of pixels it never saw.

It is trained once, deterministically (one thread, fixed seed), and cached beside the mini sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from zoo.data.mini_photos import FAKE_PHOTOS, band, build_once, fixed_box, photo
from zoo.errors import ZooError

KIND = "fake_autoencoder"
VERSION = 1  # bump when the network or its training changes
PATCH, BATCH, STEPS, LR = 32, 16, 600, 2e-3  # native-scale training regions, Adam steps


class MiniAutoencoder(nn.Module):
    """Encoder to a (latent, H/4, W/4) latent; decoder back with two stride-2 transposed convolutions.

    Args:
        width: channels of the feature maps.
        latent: channels of the latent.
    """

    def __init__(self, width: int = 32, latent: int = 4) -> None:
        super().__init__()
        self.width, self.latent = width, latent
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(width, latent, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, width, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(width // 2, 3, 3, padding=1),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Images in [0, 1], (B, 3, H, W) with H and W multiples of 4, to their reconstructions in [0, 1]."""
        return torch.sigmoid(self.decoder(self.encoder(images)))


def train_autoencoder(regions: Tensor, seed: int = 0, steps: int = STEPS) -> MiniAutoencoder:
    """Train a ``MiniAutoencoder`` on ``regions`` (N, 3, PATCH, PATCH) in [0, 1] by mean squared error.

    Runs on one thread, so the same seed gives the same weights on every machine with the same torch.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = MiniAutoencoder()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        draw = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            batch = regions[torch.randint(len(regions), (BATCH,), generator=draw)]
            loss = (model(batch) - batch).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def training_regions(photos: dict[str, Image.Image], count: int, rng: np.random.Generator) -> Tensor:
    """``count`` native-scale PATCH x PATCH regions of the train bands of ``photos``, as a tensor in [0, 1]."""
    names = list(photos)
    bands = {name: band(image, "train") for name, image in photos.items()}
    out = []
    for i in range(count):
        image = bands[names[i % len(names)]]
        out.append(np.asarray(image.crop(fixed_box(image, PATCH, rng))))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def save_autoencoder(model: MiniAutoencoder, folder: Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` of a ``MiniAutoencoder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"width": model.width, "latent": model.latent}) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def load_autoencoder(folder: str | Path) -> MiniAutoencoder:
    """A ``MiniAutoencoder`` written by ``save_autoencoder``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ZooError(f"{folder}: no config.json of a mini autoencoder")
    config = json.loads((folder / "config.json").read_text())
    model = MiniAutoencoder(int(config["width"]), int(config["latent"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def build_autoencoder(root: Path, seed: int = 0) -> None:
    """Train the fake-detection set's autoencoder on the photographs' train bands and save it in ``root``."""
    photos = {name: photo(name) for name in FAKE_PHOTOS}
    regions = training_regions(photos, 2048, np.random.default_rng(seed))
    save_autoencoder(train_autoencoder(regions, seed), root)


def autoencoder(seed: int = 0) -> MiniAutoencoder:
    """The trained autoencoder, built into the cache on first use."""
    return load_autoencoder(build_once(KIND, VERSION, seed, build_autoencoder,
                                       "the fake set's autoencoder, about 15 CPU seconds"))


@torch.no_grad()
def reconstruct(model: MiniAutoencoder, images: list[Image.Image]) -> list[Image.Image]:
    """``images`` through the autoencoder, as 8-bit RGB images."""
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255
    out = (model(batch) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(array) for array in out]
