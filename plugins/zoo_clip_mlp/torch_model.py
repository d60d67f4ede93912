"""CLIP-MLP detectors: a frozen CLIP image encoder, an optional caption embedding, and a small head.

Also the on-disk feature cache that makes training a head cost seconds, and a plain training loop
over cached features (``fit_head``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.backbones import Encoder, freeze
from zoo.errors import ZooError
from zoo.recipes.fake_detection import PixelAugment, release_cosine_schedule

# hidden widths of each head: the release's test.py (model 2, 3, 4) builds Linear(d, 1); Linear(d, 512),
# Linear(512, 512), Linear(512, 1); and Linear(d, 512), Linear(512, 512), Linear(512, 256), Linear(256, 256),
# Linear(256, 1), with no activation between the layers
HEADS: dict[str, tuple[int, ...]] = {"linear": (), "mlp": (512, 512), "deep": (512, 512, 256, 256)}


def make_head(name: str, dim: int) -> nn.Sequential:
    """The head ``name`` on ``dim``-dimensional features: Linear layers ending in one logit, no activation."""
    if name not in HEADS:
        raise ZooError(f"head={name!r}: choose one of {', '.join(HEADS)}")
    layers: list[nn.Module] = []
    for width in HEADS[name]:
        layers.append(nn.Linear(dim, width))
        dim = width
    layers.append(nn.Linear(dim, 1))
    return nn.Sequential(*layers)


class CLIPMLPNet(nn.Module):
    """Frozen open_clip encoder + head. ``use_text`` concatenates the caption's CLIP text embedding.

    Args:
        encoder: an ``open_clip:<arch>[@<tag>]`` spec (see ``zoo.backbones``).
        head: ``linear``, ``mlp`` or ``deep``.
        use_text: also feed the caption's text embedding to the head.
        pretrained: load the encoder's pretrained weights.
        normalize: L2-normalise the image and the text features, each on its own, before the head.
        image_size / model_kwargs: encoder overrides, for tiny variants.
    """

    def __init__(self, encoder: str, head: str = "mlp", use_text: bool = False, pretrained: bool = True,
                 normalize: bool = False, image_size: int | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not encoder.startswith("open_clip:"):
            raise ZooError(f"encoder={encoder!r}: CLIP-MLP needs an 'open_clip:<arch>@<tag>' encoder")
        self.encoder = freeze(Encoder(encoder, pretrained=pretrained, image_size=image_size,
                                      model_kwargs=model_kwargs))
        self.use_text = use_text
        self.normalize = normalize
        dim = self.encoder.dim + (self.encoder.text_dim if use_text else 0)
        self.head = make_head(head, dim)

    def train(self, mode: bool = True) -> CLIPMLPNet:
        super().train(mode)
        self.encoder.eval()  # frozen: batch-norm statistics of RN50 must not move
        return self

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        return self.encoder(images).float()

    @torch.no_grad()
    def text_features(self, captions: Sequence[str]) -> Tensor:
        return self.encoder.encode_text(list(captions)).float()

    def classify(self, image_features: Tensor, text_features: Tensor | None = None) -> Tensor:
        """Logits (B,) from image features and, with ``use_text``, the captions' text features."""
        if self.normalize:
            image_features = nn.functional.normalize(image_features, dim=-1)
        if self.use_text:
            if text_features is None:
                raise ZooError("use_text=True needs the captions' text features")
            if self.normalize:
                text_features = nn.functional.normalize(text_features, dim=-1)
            image_features = torch.cat([image_features, text_features], dim=1)
        return self.head(image_features).squeeze(1)

    def forward(self, images: Tensor, captions: Sequence[str] | None = None) -> Tensor:
        text = self.text_features(captions) if self.use_text and captions is not None else None
        return self.classify(self.image_features(images), text)


class BlurJpeg(PixelAugment):
    """Ojha et al.'s augmentation (``data/datasets.py``, ``data_augment``), then a horizontal flip.

    Each image draws its own: a Gaussian blur (scipy's ``gaussian_filter`` on each 8-bit channel, sigma in
    ``blur_sigma``) with probability ``blur_p``, then JPEG re-compression (libjpeg through PIL, an integer
    quality in ``jpeg_quality``) with probability ``jpeg_p``, then a horizontal flip with probability ``flip_p``.

    Args:
        mean / std: the encoder's normalisation.
        blur_p / blur_sigma / jpeg_p / jpeg_quality: as ``--blur_prob``, ``--blur_sig``, ``--jpg_prob``,
            ``--jpg_qual`` of the release (defaults: the release's training values).
        flip_p: the probability of a horizontal flip (release: ``RandomHorizontalFlip()`` in training only).
    """

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, blur_p: float = 0.5,
                 blur_sigma: tuple[float, float] = (0.0, 3.0), jpeg_p: float = 0.5,
                 jpeg_quality: tuple[int, int] = (30, 100), flip_p: float = 0.5) -> None:
        super().__init__(mean, std)
        self.blur_p, self.blur_sigma = blur_p, blur_sigma
        self.jpeg_p, self.jpeg_quality = jpeg_p, jpeg_quality
        self.flip_p = flip_p

    def augment_uint8(self, image: Tensor) -> Tensor:
        import io

        from PIL import Image
        from scipy.ndimage import gaussian_filter

        array = image.permute(1, 2, 0).numpy().copy()
        if float(torch.rand(())) < self.blur_p:
            low, high = self.blur_sigma
            sigma = low + (high - low) * float(torch.rand(()))
            for channel in range(3):  # in place on the 8-bit channel, as the release does
                gaussian_filter(array[:, :, channel], output=array[:, :, channel], sigma=sigma)
        if float(torch.rand(())) < self.jpeg_p:
            quality = int(torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, ()))
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="jpeg", quality=quality)
            array = np.array(Image.open(buffer).convert("RGB"))
        return torch.from_numpy(array).permute(2, 0, 1)

    def augment_float(self, image: Tensor) -> Tensor:
        return image.flip(-1) if float(torch.rand(())) < self.flip_p else image


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of every tensor of ``module``'s state: two encoders share it only with the same weights."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def content_digest(data: bytes, variant: str = "") -> bytes:
    """16-byte digest of an image file's bytes and of what is done to it before encoding (e.g. a perturbation)."""
    return hashlib.sha256(data + b"\0" + variant.encode()).digest()[:16]


class FeatureCache:
    """Encoder features on disk: one safetensors file per encoder, one row per image content.

    The file's name and its metadata hold the key: the encoder spec (name and pretrained tag), its
    pre-processing and a fingerprint of its weights. Any change gives another file, so features of
    another encoder are never read; a file whose metadata does not match its name is refused. Rows
    are addressed by a digest of the image bytes, so an edited image is encoded again.

    Args:
        directory: where the files live.
        key: what identifies the encoder; see ``CLIPMLP`` for the fields.
    """

    def __init__(self, directory: str | Path, key: dict[str, str]) -> None:
        self.key = json.dumps(key, sort_keys=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", key.get("spec", "encoder")).strip("-")
        self.path = Path(directory) / f"{name}-{hashlib.sha256(self.key.encode()).hexdigest()[:16]}.safetensors"
        self.rows: dict[bytes, int] = {}
        self.features = torch.empty(0)
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                written_by = (handle.metadata() or {}).get("key")
                if written_by != self.key:
                    raise ZooError(f"feature cache {self.path} was written for another encoder "
                                   f"({written_by}); it is not reused: delete it or pick another directory")
                self.features = handle.get_tensor("features")
                digests = handle.get_tensor("digests")
        except ZooError:
            raise
        except Exception as err:
            raise ZooError(f"feature cache {self.path} cannot be read ({err}); delete it to rebuild") from err
        self.rows = {bytes(d.tolist()): i for i, d in enumerate(digests)}

    def missing(self, digests: Iterable[bytes]) -> list[int]:
        """Positions of ``digests`` with no cached row (the first of identical images only)."""
        seen: set[bytes] = set()
        out = []
        for i, digest in enumerate(digests):
            if digest not in self.rows and digest not in seen:
                seen.add(digest)
                out.append(i)
        return out

    def add(self, digests: Sequence[bytes], features: Tensor) -> None:
        """Append rows (kept in memory until ``save``)."""
        features = features.detach().float().cpu()
        start = len(self.rows)
        self.features = features if start == 0 else torch.cat([self.features, features])
        for i, digest in enumerate(digests):
            self.rows[digest] = start + i

    def save(self) -> Path:
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        digests = torch.tensor([list(d) for d in sorted(self.rows, key=self.rows.get)], dtype=torch.uint8)
        tmp = self.path.with_suffix(".tmp")
        save_file({"features": self.features.contiguous(), "digests": digests.reshape(-1, 16)}, str(tmp),
                  metadata={"key": self.key, "format": "zoo-feature-cache-1"})
        tmp.replace(self.path)  # a crash mid-write never leaves a half file under the real name
        return self.path

    def lookup(self, digests: Sequence[bytes]) -> Tensor:
        return self.features[[self.rows[d] for d in digests]]


def fit_head(head: nn.Module, features: Tensor, labels: Tensor, epochs: int = 30, batch_size: int = 32,
             lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 1e-7, min_lr_ratio: float = 1e-3,
             pos_weight: float | None = None, seed: int = 0) -> list[float]:
    """Train ``head`` on cached features with the paper's recipe, without Lightning or a DataLoader.

    The features stay on their device and every epoch draws one permutation, so an epoch over 100,000
    cached features costs only the head's arithmetic. Returns the mean loss of every epoch.
    """
    labels = labels.float().to(features.device)
    if pos_weight is None:
        pos_weight = float((labels == 0).sum() / (labels == 1).sum().clamp(min=1))
    weight = torch.tensor(pos_weight, device=features.device)
    # one fused kernel per step on CUDA: at batch 32 the step count, not the arithmetic, sets the time
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                fused=features.is_cuda or None)
    steps_per_epoch = -(-len(features) // batch_size)
    scheduler = release_cosine_schedule(optimizer, epochs * steps_per_epoch, lr * min_lr_ratio)
    step = 0
    generator = torch.Generator(device="cpu").manual_seed(seed)
    losses = []
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        total = torch.zeros((), device=features.device)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(
                head(features[index]).squeeze(1), labels[index], pos_weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(step)  # the release's per-batch update, after the optimizer step
            step += 1
            total += loss.detach() * len(index)
        losses.append(float(total) / len(order))
    return losses
