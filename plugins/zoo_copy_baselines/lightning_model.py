"""Protocol-driven copy-detection baselines: the SSCD descriptor and off-the-shelf descriptors by name.

Both score a pair by the cosine similarity of its two descriptors (optionally score-normalised) and
turn it into a replication level with a monotone map fitted on the training split, so their PCC and
RD compare directly with PDF-Embedding.

How the map is fitted: before a validation or test epoch, when the map has never been fitted or the
descriptor has changed since (SSCD after training steps), the method makes one pass without gradients
over the datamodule's *training* split, in order, and fits the map there. This serves ``zoo fit``
(SSCD, whose labels never reach its descriptor loss) and ``zoo validate``/``zoo test`` (the
zero-training ``DescriptorSimilarity``) alike. A saved model carries its fitted map in its weights and
is not refitted.

Example:
    >>> model = DescriptorSimilarity(encoder="timm:vit_base_patch14_dinov2.lvd142m", image_size=224)
    >>> gallery = model.embed(real_images)                     # (N, D), L2-normalised
    >>> pred = model.pair_from_embeddings(model.embed(generated_images), gallery[matches])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from zoo.backbones import Encoder, freeze
from zoo.errors import ZooError
from zoo.module import ZooModule
from zoo.tasks.copy_detection import descriptors_identical
from zoo_copy_baselines.torch_model import (
    MAX_LEVEL,
    LevelMapping,
    ScoreNormaliser,
    SSCDNet,
    augment,
    entropy_loss,
    info_nce_loss,
)

_TINY_MAP = {"max_knots": 64, "background_size": 256}


# the released checkpoints of SSCD, by short name (`zoo list --pretrained`, `zoo download <name>`), as
# timm declares its pretrained configs; `python -m zoo.cli.manifest` copies them into zoo_plugin.json
PRETRAINED: dict[str, dict[str, Any]] = {
    "sscd.disc_mixup": {
        "method": "SSCD",
        "description": ("SSCD, ResNet-50 + GeM + 512-d projection, trained on DISC21 with advanced + mixup "
                        "augmentations (the authors' recommended default) (Pizzi et al., CVPR 2022)"),
        "repo_id": "dl.fbaipublicfiles.com/sscd-copy-detection",
        "repo_type": "url",
        "revision": "",
        "filename": "sscd_disc_mixup.torchscript.pt",
        "sha256": {},
        "init_args": {},
        "source": "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt",
        "note": ("listed in github.com/facebookresearch/sscd-copy-detection (README, Pretrained models), where "
                 ".torchvision.pt files convert too; the TorchScript archive is read as data (never "
                 "torch.jit.load-ed); sha256 to be pinned from a verified download"),
    },
    "sscd.disc_advanced": {
        "method": "SSCD",
        "description": ("SSCD, ResNet-50 + GeM + 512-d projection, trained on DISC21 with advanced augmentations (Pizzi "
                        "et al., CVPR 2022)"),
        "repo_id": "dl.fbaipublicfiles.com/sscd-copy-detection",
        "repo_type": "url",
        "revision": "",
        "filename": "sscd_disc_advanced.torchscript.pt",
        "sha256": {},
        "init_args": {},
        "source": "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_advanced.torchscript.pt",
        "note": ("listed in github.com/facebookresearch/sscd-copy-detection (README, Pretrained models), where "
                 ".torchvision.pt files convert too; the TorchScript archive is read as data (never "
                 "torch.jit.load-ed); sha256 to be pinned from a verified download"),
    },
    "sscd.disc_blur": {
        "method": "SSCD",
        "description": ("SSCD, ResNet-50 + GeM + 512-d projection, trained on DISC21 with strong-blur augmentations "
                        "(Pizzi et al., CVPR 2022)"),
        "repo_id": "dl.fbaipublicfiles.com/sscd-copy-detection",
        "repo_type": "url",
        "revision": "",
        "filename": "sscd_disc_blur.torchscript.pt",
        "sha256": {},
        "init_args": {},
        "source": "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_blur.torchscript.pt",
        "note": ("listed in github.com/facebookresearch/sscd-copy-detection (README, Pretrained models), where "
                 ".torchvision.pt files convert too; the TorchScript archive is read as data (never "
                 "torch.jit.load-ed); sha256 to be pinned from a verified download"),
    },
}


class _PairDescriptor(ZooModule):
    """Shared glue: cosine similarity of two descriptors, score normalisation, the level map, its fitting."""

    task = "copy_detection"

    def _init_scoring(self, dim: int, mapping: str, bins: int, max_knots: int, score_norm_k: int,
                      score_norm_beta: float, background_size: int) -> None:
        self.level_map = LevelMapping(mapping, bins, max_knots)
        self.normaliser = ScoreNormaliser(dim, background_size, score_norm_k, score_norm_beta)
        self._stale = False  # the descriptor changed since the map was fitted

    def embed(self, images: Tensor) -> Tensor:
        """(B, D) L2-normalised descriptors of pre-processed images."""
        raise NotImplementedError

    def is_calibrated(self) -> bool:
        # unfitted, the map is the line 5 * clamp(similarity, 0, 1): two unrelated photographs get level 4+
        return bool(self.level_map.fitted)

    def similarity(self, generated_emb: Tensor, real_emb: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Cosine similarity of paired descriptors, score-normalised when a background set is held."""
        scores = (generated_emb * real_emb).sum(dim=-1)
        return self.normaliser(generated_emb, scores, exclude)

    def pair_from_embeddings(self, generated_emb: Tensor, real_emb: Tensor) -> dict[str, Tensor]:
        """Predictions of the copy-detection schema from stored descriptors, plus the ``similarity`` used.

        ``descriptor_identical`` flags equal descriptors, which are not equal pixels: the level stays the map's.
        """
        scores = self.similarity(generated_emb.float(), real_emb.float())
        return {"level": self.level_map(scores).clamp(0.0, MAX_LEVEL), "similarity": scores.float(),
                "descriptor_identical": descriptors_identical(generated_emb, real_emb).long()}

    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        # with the pixels at hand the task decides exact copies on them (zoo.tasks.copy_detection)
        out = self.pair_from_embeddings(self.embed(batch["generated"]), self.embed(batch["real"]))
        del out["descriptor_identical"]
        return out

    @torch.no_grad()
    def fit_level_mapping(self, pairs: Iterable[Mapping[str, Any]]) -> None:
        """Fit the score normaliser's background and the level map on training pairs (no gradients).

        The background set is the training pairs' real images. A training pair's own real image is left
        out of its normalisation, so that the fitted scores are distributed like unseen pairs' scores.
        """
        was_training = self.training
        self.eval()
        generated, real, levels = [], [], []
        for batch in pairs:
            generated.append(self.embed(batch["generated"].to(self.device)).float())
            real.append(self.embed(batch["real"].to(self.device)).float())
            levels.append(batch["level"].cpu())
        gen, ref = torch.cat(generated), torch.cat(real)
        exclude = None
        if self.normaliser.k > 0:
            keep = self.normaliser.set_background(ref).to(self.device)
            exclude = torch.full((len(ref),), -1, dtype=torch.int64, device=self.device)
            exclude[keep] = torch.arange(len(keep), device=self.device)
        chunk = 4096  # bounds the (chunk, background) similarity matrix
        scores = torch.cat([
            self.similarity(gen[i:i + chunk], ref[i:i + chunk], None if exclude is None else exclude[i:i + chunk])
            for i in range(0, len(gen), chunk)
        ])
        self.level_map.fit(scores, torch.cat(levels))
        self._stale = False
        self.train(was_training)

    def _ensure_level_mapping(self) -> None:
        if bool(self.level_map.fitted) and not self._stale:
            return
        if self.trainer.sanity_checking:
            return  # the descriptor is about to train: a fit now would be thrown away
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            rank_zero_warn(f"{type(self).__name__}: no datamodule to fit the level map on; "
                           "levels use the unfitted map 5 * clamp(similarity, 0, 1)")
            return
        self.fit_level_mapping(_ordered_train_loader(datamodule))

    def on_train_end(self) -> None:
        # the export written at the end of fit must carry a map of the final descriptor, even when the
        # last epoch had no validation
        self._ensure_level_mapping()

    def on_validation_epoch_start(self) -> None:
        self._ensure_level_mapping()

    def on_test_epoch_start(self) -> None:
        self._ensure_level_mapping()


def _ordered_train_loader(datamodule: Any) -> Iterable[Mapping[str, Any]]:
    # in order, so that the background subset does not depend on a shuffle
    if hasattr(datamodule, "dataset"):
        return torch.utils.data.DataLoader(datamodule.dataset("train"), batch_size=datamodule.batch_size,
                                           shuffle=False, num_workers=datamodule.num_workers)
    return datamodule.train_dataloader()


class SSCD(_PairDescriptor):
    """SSCD: a self-supervised descriptor for image copy detection, trained on unlabelled pair images.

    Both images of every training pair are unlabelled images for the descriptor: each gets two random
    views, and InfoNCE plus the entropy regulariser train the trunk. The replication levels are used
    only by the monotone level map, fitted without gradients.

    Args:
        encoder: timm CNN spec of the trunk.
        pretrained: start the trunk from its pretrained weights.
        image_size: side of the pre-processed images.
        dim: descriptor size.
        gem_p: GeM pooling exponent.
        temperature: InfoNCE temperature.
        entropy_weight: weight lambda of the entropy regulariser.
        base_lr: LARS learning rate per 256 images of a step (scaled linearly, as in SSCD).
        weight_decay: LARS weight decay.
        momentum: LARS momentum.
        warmup_fraction: fraction of the steps with a linear learning-rate warm-up; cosine decay after.
        mapping: ``isotonic`` or ``binned`` similarity-to-level map.
        bins: bins of the ``binned`` map.
        max_knots: knots stored for the map.
        score_norm_k: neighbours of the score normalisation (0: off).
        score_norm_beta: weight of the score normalisation.
        background_size: largest background set kept (training real images).
        encoder_kwargs: extra timm constructor arguments (the tiny variant's widths and depths).
        seed: seed of the augmentations.
    """

    paper = "A Self-Supervised Descriptor for Image Copy Detection (CVPR 2022)"
    variants = {
        "resnet50": {},
        "resnet50_score_norm": {"score_norm_k": 3},
        "tiny": {
            "encoder": "timm:resnet18", "pretrained": False, "image_size": 64, "dim": 32, "entropy_weight": 10.0,
            "encoder_kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8},
            **_TINY_MAP,
        },
    }
    tiny_trainer = {"max_epochs": 2}

    def __init__(
        self,
        encoder: str = "timm:resnet50.tv_in1k",  # SSCD: torchvision ResNet-50 (TV_RESNET50)
        pretrained: bool = True,  # SSCD starts from an ImageNet-trained trunk
        image_size: int = 224,  # SSCD train.py: --train_image_size 224
        dim: int = 512,  # SSCD: 512-d descriptor
        gem_p: float = 3.0,  # SSCD: GeM pooling, p = 3
        temperature: float = 0.05,  # SSCD train.py: --infonce_temperature 0.05
        entropy_weight: float = 30.0,  # SSCD paper: lambda = 30
        base_lr: float = 0.3,  # SSCD train.py: --base_learning_rate 0.3 per 256 images, LARS
        weight_decay: float = 1e-6,  # SSCD train.py: --weight_decay 1e-6
        momentum: float = 0.9,  # SSCD train.py: --momentum 0.9
        warmup_fraction: float = 0.05,  # SSCD train.py: 5 warm-up epochs of 100
        mapping: str = "isotonic",  # zoo: similarity -> level map (the paper scores retrieval only)
        bins: int = 20,  # zoo: bins of the "binned" map
        max_knots: int = 256,  # zoo: knots stored for the map
        score_norm_k: int = 0,  # SSCD evaluation: 3 neighbours ("1.00[0,2]") when on; off by default
        score_norm_beta: float = 1.0,  # SSCD eq. 8: beta = 1
        background_size: int = 4096,  # zoo: background subset kept in the weights
        encoder_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.net = SSCDNet(encoder, pretrained, dim, gem_p, image_size, encoder_kwargs)
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(self.net.trunk.model)
        self.register_buffer("pixel_mean", torch.tensor(config["mean"]), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config["std"]), persistent=False)
        self._generator = torch.Generator().manual_seed(seed)
        self._init_scoring(dim, mapping, bins, max_knots, score_norm_k, score_norm_beta, background_size)

    def image_transform(self) -> Callable[[Any], Tensor]:
        return self.net.trunk.transform

    @classmethod
    def convert_released(cls, path: str | Path, **init_args: Any) -> SSCD:
        """Build from a released ``sscd_*.torchscript.pt`` or ``sscd_*.torchvision.pt`` (data only, no code run).

        The torchvision ResNet's keys map one to one onto the timm trunk; its ``fc`` (2048 -> 512) is the
        projection. Every key is mapped and checked for shape; ``init_args`` set the rest.

        Example:
            >>> SSCD.convert_released("sscd_disc_mixup.torchscript.pt").save_pretrained("sscd-disc-mixup")
        """
        from zoo.backbones import no_pretrained_download
        from zoo_copy_baselines.released import read_sscd_state

        state = read_sscd_state(path)
        with no_pretrained_download():
            model = cls(**{**init_args, "pretrained": False})
        targets = {f"trunk.model.{k}": v for k, v in model.net.trunk.model.state_dict().items()}
        targets.update({f"projection.{k}": v for k, v in model.net.projection.state_dict().items()})
        mapped = {}
        for key, value in state.items():
            name = f"projection.{key[3:]}" if key.startswith("fc.") else f"trunk.model.{key}"
            if name not in targets:
                raise ZooError(f"{path}: unexpected key {key!r} for the {model.hparams.encoder} trunk")
            if tuple(value.shape) != tuple(targets[name].shape):
                raise ZooError(f"{path}: key {key!r} has shape {tuple(value.shape)}, the model expects "
                               f"{tuple(targets[name].shape)}")
            mapped[name] = value
        missing = sorted(set(targets) - set(mapped))
        if missing:
            raise ZooError(f"{path}: missing key {missing[0]!r} (and {len(missing) - 1} more)")
        model.net.load_state_dict(mapped, strict=True)
        return model.eval()

    def embed(self, images: Tensor) -> Tensor:
        return self.net(images)

    def sscd_loss(self, images: Tensor) -> dict[str, Tensor]:
        """SSCD's loss on two random views of each of ``images``: ``loss``, ``infonce`` and ``entropy``."""
        views = torch.cat([augment(images, self.pixel_mean, self.pixel_std, self._generator) for _ in range(2)])
        instance = torch.arange(len(images), device=images.device).repeat(2)
        embeddings = self.net(views)
        infonce = info_nce_loss(embeddings, instance, self.hparams.temperature)
        entropy = entropy_loss(embeddings, instance)
        return {"loss": infonce + self.hparams.entropy_weight * entropy, "infonce": infonce, "entropy": entropy}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        # the images only: the level labels never reach the descriptor
        losses = self.sscd_loss(torch.cat([batch["generated"], batch["real"]]))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True)
        self._stale = True
        return losses["loss"]

    def configure_optimizers(self) -> dict[str, Any]:
        from timm.optim import Lars

        datamodule = getattr(self.trainer, "datamodule", None)
        images_per_step = 2 * int(getattr(datamodule, "batch_size", 128))
        lr = self.hparams.base_lr * images_per_step / 256
        optimizer = Lars(self.parameters(), lr=lr, momentum=self.hparams.momentum,
                         weight_decay=self.hparams.weight_decay, trust_coeff=0.001)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * self.hparams.warmup_fraction)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DescriptorSimilarity(_PairDescriptor):
    """Zero-training baseline: a frozen pretrained encoder (CLIP, DINOv2, ...) and cosine similarity.

    Args:
        encoder: a ``zoo.backbones.Encoder`` spec, e.g. ``open_clip:ViT-B-32@openai``.
        pretrained: load the encoder's pretrained weights.
        image_size: input size; None keeps the encoder's own.
        model_kwargs: extra encoder constructor arguments.
        mapping, bins, max_knots, score_norm_k, score_norm_beta, background_size: as for ``SSCD``.
    """

    paper = "protocol-driven descriptors (CLIP, ICML 2021; DINOv2, TMLR 2024) with cosine similarity"
    display_name = "descriptor cosine"
    trains = False
    variants = {
        "clip_vit_b32": {"encoder": "open_clip:ViT-B-32@openai"},
        "clip_vit_l14": {"encoder": "open_clip:ViT-L-14@openai"},
        "dinov2_vitb14": {"encoder": "timm:vit_base_patch14_dinov2.lvd142m", "image_size": 224},
        "tiny": {"encoder": "open_clip:zoo-tiny-clip", "pretrained": False, **_TINY_MAP},
    }
    tiny_trainer = {"max_epochs": 1}

    def __init__(
        self,
        encoder: str = "open_clip:ViT-B-32@openai",
        pretrained: bool = True,
        image_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        mapping: str = "isotonic",
        bins: int = 20,
        max_knots: int = 256,
        score_norm_k: int = 0,
        score_norm_beta: float = 1.0,
        background_size: int = 4096,
    ) -> None:
        super().__init__()
        self.encoder = freeze(Encoder(encoder, pretrained=pretrained, image_size=image_size,
                                      model_kwargs=model_kwargs))
        self._init_scoring(self.encoder.dim, mapping, bins, max_knots, score_norm_k, score_norm_beta,
                           background_size)

    def image_transform(self) -> Callable[[Any], Tensor]:
        return self.encoder.transform

    def train(self, mode: bool = True) -> DescriptorSimilarity:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout or batch statistics, ever
        return self

    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.encoder(images).float(), dim=-1)
