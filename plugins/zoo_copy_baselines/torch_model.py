"""The math of the protocol-driven copy-detection baselines, without Lightning.

* ``gem`` / ``SSCDNet``: the SSCD descriptor (trunk, GeM pooling, linear projection, L2 normalisation).
* ``info_nce_loss`` and ``entropy_loss``: SSCD's training objective (Pizzi et al., CVPR 2022, eq. 3-6).
* ``augment``: per-image random augmentations of a batch, on the accelerator.
* ``ScoreNormaliser``: SSCD's score normalisation against a background set (eq. 8).
* ``LevelMapping``: a monotone map from a similarity to a replication level 0..5.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.backbones import Encoder, parse_spec
from zoo.errors import ZooError

MAX_LEVEL = 5.0
MAPPINGS = ("isotonic", "binned")


def gem(features: Tensor, p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling of a (B, C, H, W) map over H and W: (mean x^p)^(1/p), x clamped at ``eps``."""
    return features.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class SSCDNet(nn.Module):
    """SSCD descriptor: a CNN trunk's last feature map, GeM pooling, a linear projection, L2 normalisation.

    Args:
        encoder: a timm spec of the trunk, e.g. ``timm:resnet50``.
        pretrained: load the trunk's pretrained weights.
        dim: descriptor size.
        gem_p: GeM exponent.
        image_size: input size of the trunk's pre-processing.
        encoder_kwargs: extra timm constructor arguments (the tiny variant's widths and depths).
    """

    def __init__(self, encoder: str, pretrained: bool, dim: int, gem_p: float, image_size: int | None,
                 encoder_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if parse_spec(encoder)[0] != "timm":
            raise ZooError(f"encoder={encoder!r}: SSCD needs a timm CNN spec such as 'timm:resnet50'")
        # global_pool="" keeps timm's feature map, so that GeM replaces the average pooling
        self.trunk = Encoder(encoder, pretrained=pretrained, image_size=image_size,
                             model_kwargs={**(encoder_kwargs or {}), "global_pool": ""})
        self.gem_p = gem_p
        self.projection = nn.Linear(self.trunk.dim, dim)
        # sscd/models/model.py (torchvision trunk): the projection fc starts Xavier-uniform, bias 0
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, images: Tensor) -> Tensor:
        features = self.trunk(images)
        if features.dim() != 4:
            raise ZooError(f"SSCD trunk {self.trunk.spec!r} returns shape {tuple(features.shape)}, not a (B, C, H, W) map")
        return F.normalize(self.projection(gem(features, self.gem_p)), dim=-1)


def _masks(instance_ids: Tensor) -> tuple[Tensor, Tensor]:
    same = instance_ids[:, None] == instance_ids[None, :]
    identity = torch.eye(len(instance_ids), dtype=torch.bool, device=instance_ids.device)
    return same & ~identity, ~same  # positives (other views of the same image), negatives


def info_nce_loss(embeddings: Tensor, instance_ids: Tensor, temperature: float) -> Tensor:
    """InfoNCE over every view of a batch: each view must find the other views of its image among the rest.

    Args:
        embeddings: (N, D) L2-normalised descriptors of all views.
        instance_ids: (N,) the source image of each view; views of one image are positives, the rest negatives.
        temperature: softmax temperature.
    """
    positives, negatives = _masks(instance_ids)
    logits = embeddings @ embeddings.T / temperature
    # the denominator of a positive pair holds that pair and every negative of the anchor, as in SSCD eq. 4
    negative_lse = torch.logsumexp(logits.masked_fill(~negatives, -math.inf), dim=1, keepdim=True)
    log_prob = logits - torch.logaddexp(logits, negative_lse)
    return -(log_prob * positives).sum() / embeddings.shape[0]


def entropy_loss(embeddings: Tensor, instance_ids: Tensor) -> Tensor:
    """Differential-entropy (KoLeo) regulariser: minus the mean log distance to the nearest negative.

    It is large when descriptors of different images collapse together and small when they spread out.
    """
    _, negatives = _masks(instance_ids)
    nearest = (embeddings @ embeddings.T).masked_fill(~negatives, -math.inf).max(dim=1).values
    # distance between unit vectors from their cosine; the clamp keeps the log finite for exact duplicates
    distance = (2.0 - 2.0 * nearest).clamp(min=1e-6).sqrt()
    return -distance.log().mean()


def augment(images: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator | None = None,
            crop_scale: tuple[float, float] = (0.08, 1.0), jitter: float = 0.8, jitter_prob: float = 0.8,
            gray_prob: float = 0.2, blur_prob: float = 0.5, blur_range: tuple[float, float] = (1.0, 5.0),
            flip_prob: float = 0.5) -> Tensor:
    """An independent random view of every image of a normalised batch (crop, flip, colour, grey, blur).

    The defaults are SSCD's default ``STRONG_BLUR`` setting (``sscd/transforms/settings.py``) without its
    hue jitter: colour jitter 0.8 with probability 0.8 (brightness, contrast and saturation in a random
    order, as torchvision's ``ColorJitter``), greyscale 0.2, blur radius 1..5 px at 224 px with probability
    0.5. Each image gets its own parameters; the work is batched, so it runs on the accelerator. The crop
    is taken from the pre-processed batch and resampled with ``roi_align``; its box is clamped into the
    image where torchvision's ``RandomResizedCrop`` draws again (see the plugin README).
    """
    b, _, h, w = images.shape
    device = images.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device="cpu").to(device)

    x = images * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    # random resized crop: area fraction in crop_scale, aspect ratio in [3/4, 4/3] (log-uniform)
    area = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * rand(b)
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * rand(b))
    cw = (area * ratio).sqrt().clamp(max=1.0) * w
    ch = (area / ratio).sqrt().clamp(max=1.0) * h
    x0, y0 = rand(b) * (w - cw), rand(b) * (h - ch)
    boxes = torch.stack([torch.arange(b, device=device, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch], dim=1)
    from torchvision.ops import roi_align

    x = roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = rand(b) < flip_prob
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    # colour jitter: brightness, contrast, saturation factors in [1 - jitter, 1 + jitter], in an order drawn
    # per image (torchvision's ColorJitter draws torch.randperm of its operations on every call), each
    # clipped to [0, 1] as torchvision's blend (and PIL's 8-bit ImageEnhance) is
    on = (rand(b) < jitter_prob).view(b, 1, 1, 1)
    factors = (1 - jitter + 2 * jitter * rand(3, b)).view(3, b, 1, 1, 1)
    order = rand(b, 3).argsort(dim=1)  # a uniform random permutation of the three operations per image
    jittered = color_jitter(x, factors, order)
    x = torch.where(on, jittered, x)
    x = torch.where((rand(b) < gray_prob).view(b, 1, 1, 1), _gray(x).expand_as(x), x)
    # blur sigma (PIL's radius) in blur_range pixels at 224 px, scaled to the image size
    sigma = (blur_range[0] + (blur_range[1] - blur_range[0]) * rand(b)) * h / 224
    x = torch.where((rand(b) < blur_prob).view(b, 1, 1, 1), _gaussian_blur(x, sigma), x)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Brightness, contrast and saturation (torchvision's ``adjust_*`` blends) in a per-image order.

    Args:
        x: (B, 3, H, W) images in [0, 1].
        factors: (3, B, 1, 1, 1) brightness, contrast and saturation factors.
        order: (B, 3) a permutation of 0 (brightness), 1 (contrast), 2 (saturation) per image.
    """
    b = x.shape[0]
    for position in range(3):
        level = _gray(x).mean(dim=(-2, -1), keepdim=True)
        options = (x * factors[0], (x - level) * factors[1] + level, (x - _gray(x)) * factors[2] + _gray(x))
        chosen = order[:, position].view(b, 1, 1, 1)
        x = torch.where(chosen == 0, options[0], torch.where(chosen == 1, options[1], options[2])).clamp(0, 1)
    return x


def _gray(x: Tensor) -> Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one standard deviation (pixels) per image."""
    b, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


class ScoreNormaliser(nn.Module):
    """SSCD score normalisation: s'(q, r) = s(q, r) - beta * mean similarity of q to its k nearest background images.

    The background descriptors live in a fixed-size buffer, so that they are saved with the model.

    Args:
        dim: descriptor size.
        size: capacity of the background set (0 disables normalisation).
        k: neighbours averaged.
        beta: weight of the subtracted term.
    """

    def __init__(self, dim: int, size: int, k: int, beta: float) -> None:
        super().__init__()
        self.k, self.beta = k, beta
        self.register_buffer("background", torch.zeros(size if k > 0 else 0, dim))
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))

    @property
    def active(self) -> bool:
        return self.k > 0 and int(self.count) > 0

    def set_background(self, descriptors: Tensor, seed: int = 0) -> Tensor:
        """Keep at most ``size`` of ``descriptors`` (a seeded random subset); returns the indices kept."""
        capacity = self.background.shape[0]
        keep = torch.arange(len(descriptors))
        if len(descriptors) > capacity:
            keep = torch.randperm(len(descriptors), generator=torch.Generator().manual_seed(seed))[:capacity].sort().values
        self.background.zero_()
        self.background[: len(keep)] = descriptors[keep].to(self.background)
        self.count.fill_(len(keep))
        return keep

    def forward(self, query: Tensor, scores: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Normalised ``scores`` (B,) of queries (B, D); ``exclude`` (B,) names a background row to skip (-1: none)."""
        if not self.active:
            return scores
        sims = query @ self.background[: int(self.count)].to(query).T
        if exclude is not None:
            rows = torch.nonzero(exclude >= 0).squeeze(1)
            sims[rows, exclude[rows]] = -math.inf
        k = min(self.k, sims.shape[1] - (1 if exclude is not None else 0))
        if k <= 0:
            return scores
        return scores - self.beta * sims.topk(k, dim=1).values.mean(dim=1)


class LevelMapping(nn.Module):
    """A monotone non-decreasing, piecewise-linear map from a similarity to a level in [0, 5].

    The map is ``max_knots`` knots (x, y) in buffers, so a saved model reloads it exactly. Until it is
    fitted it is the line level = 5 * clamp(similarity, 0, 1).

    Args:
        method: ``isotonic`` (scikit-learn isotonic regression on every training pair) or ``binned``
            (mean level in equal-count similarity bins, then made monotone by the same regression).
        bins: number of bins of the ``binned`` method.
        max_knots: buffer size; an isotonic fit with more knots keeps ``max_knots`` of them, evenly spaced.
    """

    def __init__(self, method: str = "isotonic", bins: int = 20, max_knots: int = 256) -> None:
        super().__init__()
        if method not in MAPPINGS:
            raise ZooError(f"mapping={method!r}: choose one of {', '.join(MAPPINGS)}")
        if max_knots < 2 or bins < 1:
            raise ZooError(f"max_knots={max_knots} must be at least 2 and bins={bins} at least 1")
        self.method, self.bins = method, bins
        x = torch.linspace(0.0, 1.0, max_knots, dtype=torch.float64)
        self.register_buffer("knots_x", x)
        self.register_buffer("knots_y", x * MAX_LEVEL)
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, scores: Tensor, levels: Tensor) -> None:
        """Fit the map on training similarities ``scores`` (N,) and their levels (N,)."""
        from sklearn.isotonic import IsotonicRegression

        x = scores.detach().double().cpu().numpy()
        y = levels.detach().double().cpu().numpy()
        if len(x) == 0:
            raise ZooError("the level mapping needs at least one training pair")
        weights = None
        if self.method == "binned":
            order = np.argsort(x, kind="stable")
            groups = [g for g in np.array_split(order, min(self.bins, len(x))) if len(g)]
            weights = np.array([len(g) for g in groups], dtype=np.float64)
            x = np.array([x[g].mean() for g in groups])
            y = np.array([y[g].mean() for g in groups])
        regression = IsotonicRegression(y_min=0.0, y_max=MAX_LEVEL, increasing=True, out_of_bounds="clip")
        regression.fit(x, y, sample_weight=weights)
        kx, ky = regression.X_thresholds_, regression.y_thresholds_
        size = self.knots_x.shape[0]
        if len(kx) > size:
            pick = np.unique(np.linspace(0, len(kx) - 1, size).round().astype(int))
            kx, ky = kx[pick], ky[pick]
        if len(kx) == 1:  # one distinct similarity: a constant map
            kx, ky = np.array([kx[0], kx[0]]), np.array([ky[0], ky[0]])
        # pad by repeating the last knot: the interpolation ignores zero-width segments
        pad = size - len(kx)
        self.knots_x.copy_(torch.from_numpy(np.concatenate([kx, np.full(pad, kx[-1])])))
        self.knots_y.copy_(torch.from_numpy(np.concatenate([ky, np.full(pad, ky[-1])])))
        self.fitted.fill_(True)

    def forward(self, scores: Tensor) -> Tensor:
        xp, yp = self.knots_x, self.knots_y
        x = scores.detach().to(xp.device).double().clamp(float(xp[0]), float(xp[-1])).contiguous()
        idx = torch.searchsorted(xp, x, right=True).clamp(1, len(xp) - 1)
        x0, x1, y0, y1 = xp[idx - 1], xp[idx], yp[idx - 1], yp[idx]
        width = x1 - x0
        t = torch.where(width > 0, (x - x0) / torch.where(width > 0, width, 1.0), torch.zeros_like(x))
        return (y0 + t * (y1 - y0)).to(device=scores.device, dtype=torch.float32)
