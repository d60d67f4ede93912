"""PDF-Embedding (ICDiff, NeurIPS 2024): the math, without Lightning.

A ViT with six output tokens encodes each image of a pair into six vectors. The six vectors are paired
index by index between the two images; their cosine similarities, scaled by a temperature and passed
through a softmax, are a probability over the six replication levels (token ``i`` stands for level
``5 - i``, as in the released code). Training pulls that probability towards a smooth target PDF centred
on the annotated level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ZooError

NUM_LEVELS = 6
MAX_LEVEL = NUM_LEVELS - 1
RELEASED_PREFIX = "module.base.0."  # DataParallel(model).base[0] in the released checkpoints
TARGETS = ("gaussian", "linear", "exponential", "onehot", "regression")


def target_pdf(level: Tensor, kind: str, width: float) -> Tensor:
    """The supervision PDF over the six normalised levels {0, 0.2, ..., 1}, centred on ``level / 5``.

    Args:
        level: (B,) integer levels 0..5.
        kind: ``gaussian`` exp(-(x-p)^2 / 2 width^2), ``linear`` max(0, 1 - |x-p| / width)
            (``width`` = 1/k), ``exponential`` exp(-|x-p| / width), or ``onehot``.
        width: sigma, 1/k or beta, in normalised-level units (ignored by ``onehot``).

    Returns:
        (B, 6) float, rows summing to 1, index = level.
    """
    # distances in normalised units, computed from integers so the true level is exactly at distance 0
    distance = (torch.arange(NUM_LEVELS, device=level.device) - level.long().unsqueeze(1)).abs().double() / MAX_LEVEL
    if kind == "onehot":
        density = (distance == 0).double()
    elif width <= 0:
        raise ZooError(f"the width of the {kind} target PDF must be > 0, got {width}")
    elif kind == "gaussian":
        density = torch.exp(-(distance**2) / (2 * width**2))
    elif kind == "linear":
        density = (1 - distance / width).clamp(min=0)
    elif kind == "exponential":
        density = torch.exp(-distance / width)
    else:
        raise ZooError(f"unknown target PDF {kind!r}; choose one of gaussian, linear, exponential, onehot")
    return (density / density.sum(dim=1, keepdim=True)).float()


class PDFEmbeddingNet(nn.Module):
    """A timm VisionTransformer with five tokens beside the class token, and the pairwise level head.

    Args:
        img_size, patch_size, embed_dim, depth, num_heads: the ViT (DeiT-B/16 at 224 by default).
        num_classes: the classifier head, unused by the method but present in the released checkpoints.
        drop_path_rate: stochastic depth of the last block (timm's linear rule over the blocks).
        temperature: the initial softmax temperature of the scaled cosine similarities.
        learn_temperature: learn the temperature (as a log-scale) or keep it fixed.
        regression: predict a scalar level from the six similarities instead of a PDF.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        num_classes: int = 1000,
        drop_path_rate: float = 0.1,
        temperature: float = 0.05,
        learn_temperature: bool = True,
        regression: bool = False,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if temperature <= 0:
            raise ZooError(f"temperature must be > 0, got {temperature}")
        # the released code's extra `dist_token` (1, 5, D) is concatenated after the class token and before
        # the patches, with the position embedding over all 6 + N positions: timm's register tokens
        # (reg_tokens=5, no_embed_class=False) are exactly that
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            num_classes=num_classes, reg_tokens=NUM_LEVELS - 1, drop_path_rate=drop_path_rate,
        )
        scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)
        # scalar regression of the level from the six similarities (the non-PDF baseline)
        self.regressor = nn.Linear(NUM_LEVELS, 1) if regression else None

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    def tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 6, D): tokens 0..5 of the final normed sequence."""
        return self.vit.forward_features(images)[:, :NUM_LEVELS]

    def embed(self, images: Tensor) -> Tensor:
        """(B, 6 * D) descriptors: the six L2-normalised tokens / sqrt(6), so a dot product is the mean cosine."""
        return (F.normalize(self.tokens(images), dim=-1) / math.sqrt(NUM_LEVELS)).flatten(1)

    def similarities(self, generated_emb: Tensor, real_emb: Tensor) -> Tensor:
        """(B, 6) cosine similarity of token i of one image with token i of the other, from ``embed`` output."""
        b = generated_emb.shape[0]
        g = generated_emb.reshape(b, NUM_LEVELS, -1)
        r = real_emb.reshape(b, NUM_LEVELS, -1)
        return (g * r).sum(-1) * NUM_LEVELS  # each block has norm 1/sqrt(6)

    def level_logits(self, sims: Tensor) -> Tensor:
        """(B, 6) logits indexed by level: token i stands for level 5 - i."""
        return (sims * self.log_scale.exp()).flip(1)

    def regress(self, sims: Tensor) -> Tensor:
        """(B,) normalised level in [0, 1] (regression variant)."""
        if self.regressor is None:
            raise ZooError("this PDFEmbeddingNet was built without the regression head")
        return torch.sigmoid(self.regressor(sims).squeeze(1))

    def forward(self, generated: Tensor, real: Tensor) -> Tensor:
        """Both images through the encoder in one batch; returns the (B, 6) similarities."""
        emb = self.embed(torch.cat([generated, real]))
        return self.similarities(*emb.chunk(2))


def released_key(zoo_key: str) -> str:
    """The released checkpoint's name of a key of ``PDFEmbeddingNet.vit``."""
    return RELEASED_PREFIX + ("dist_token" if zoo_key == "reg_token" else zoo_key)


def map_released_state(state: Mapping[str, Tensor], vit: nn.Module, source: str) -> dict[str, Tensor]:
    """The released state dict renamed for ``vit``, checked strictly key by key.

    Raises:
        ZooError: naming the first key that is missing, unexpected or of the wrong shape.
    """
    own = vit.state_dict()
    mapped = {}
    for key, value in own.items():
        name = released_key(key)
        if name not in state:
            raise ZooError(f"{source}: missing key {name!r} (expected shape {tuple(value.shape)})")
        if not isinstance(state[name], Tensor) or tuple(state[name].shape) != tuple(value.shape):
            shape = tuple(state[name].shape) if isinstance(state[name], Tensor) else type(state[name]).__name__
            raise ZooError(f"{source}: key {name!r} has shape {shape}, the model expects {tuple(value.shape)}")
        mapped[key] = state[name]
    expected = {released_key(k) for k in own}
    for name in state:
        if name not in expected:
            raise ZooError(f"{source}: unexpected key {name!r} (released checkpoints hold {RELEASED_PREFIX}<timm ViT>)")
    return mapped


def init_from_pretrained_vit(vit: nn.Module, name: str) -> None:
    """Initialise ``vit`` from a pretrained single-class-token timm ViT (e.g. ``deit_base_patch16_224.fb_in1k``).

    As the released ``deit_base_query_patch16_224``: the five extra tokens do not exist in the source and
    start from a truncated normal of std 0.02; their positions start as the class token's position.
    """
    import timm
    from timm.layers import trunc_normal_

    from zoo import backbones

    # the name may come from a file: the encoder's rules (a string; a local-dir: inside a checkpoint's folder)
    backbones.parse_spec(f"timm:{name}")
    try:
        source = timm.create_model(backbones.timm_name(name, f"timm:{name}"), pretrained=True,
                                   num_classes=vit.num_classes).state_dict()
    except (OSError, RuntimeError) as err:  # the Hub client's download and cache errors are OSErrors
        raise ZooError(f"timm cannot build pretrained {name!r}: {err}") from err
    own = vit.state_dict()
    extra = NUM_LEVELS - 1
    with torch.no_grad():
        cls_pos, patch_pos = source["pos_embed"][:, :1], source["pos_embed"][:, 1:]
        state = dict(source)
        state["pos_embed"] = torch.cat([cls_pos, cls_pos.expand(-1, extra, -1), patch_pos], dim=1)
        state["reg_token"] = trunc_normal_(torch.empty(1, extra, source["cls_token"].shape[-1]), std=0.02)
    missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if missing:
        raise ZooError(f"pretrained {name!r} does not fit the PDF-Embedding ViT: first mismatching key {missing[0]!r}")
    vit.load_state_dict({k: state[k] for k in own}, strict=True)
