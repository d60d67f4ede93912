"""The mini suite's small generator: a VAE decoder (``MiniDecoder``), its training encoder, and its files.

``zoo_inversion_attribution.data`` trains and saves them; ``generators.load_mini_decoder`` loads a saved one as a
generator. Neither module is imported here, so that each imports this one and not the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn


class MiniDecoder(nn.Module):
    """A small DCGAN-like decoder (transposed convolutions): a latent vector to a 32x32 image in [0, 1].

    Args:
        latent_dim: size of the latent vector.
        width: channels of the first feature map.
    """

    def __init__(self, latent_dim: int = 16, width: int = 32) -> None:
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.project = nn.Linear(latent_dim, width * 4 * 4)
        self.body = nn.Sequential(
            nn.SiLU(), nn.ConvTranspose2d(width, width, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(width // 2, width // 4, 4, 2, 1), nn.SiLU(), nn.Conv2d(width // 4, 3, 3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.body(self.project(z).view(-1, self.width, 4, 4)))


class MiniEncoder(nn.Module):
    """The encoder that trains ``MiniDecoder`` as a VAE: a 32x32 image to a latent mean and log-variance."""

    def __init__(self, latent_dim: int = 16, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width // 4, 4, 2, 1), nn.SiLU(), nn.Conv2d(width // 4, width // 2, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(width // 2, width, 4, 2, 1), nn.SiLU(), nn.Flatten(), nn.Linear(width * 16, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.body(x).chunk(2, dim=1)


def save_mini_decoder(decoder: MiniDecoder, folder: Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of a ``MiniDecoder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"kind": "mini_decoder", "latent_dim": decoder.latent_dim, "width": decoder.width}) + "\n")
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(folder / "model.safetensors"))
    return folder
