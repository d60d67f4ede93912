"""CNN detectors of generated images: a timm encoder fine-tuned end to end with the paper's training recipe."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from zoo.module import ZooModule
from zoo.recipes.fake_detection import Augment, FakeDetectorRecipe, normalization_of
from zoo_cnn_detector.torch_model import CNNDetectorNet


class CNNDetector(FakeDetectorRecipe, ZooModule):
    """A timm encoder fine-tuned end to end with a one-logit head.

    Args:
        encoder: any ``timm:<name>[.<tag>]`` spec, e.g. ``timm:resnet50``, ``timm:swin_tiny_patch4_window7_224``,
            ``timm:legacy_xception``.
        pretrained: start from timm's ImageNet weights.
        image_size: input size; None keeps the encoder's own (224 for the paper's three).
        optimizer / lr / momentum / weight_decay / min_lr_ratio / pos_weight / augment: the recipe, see
            ``zoo.recipes.fake_detection.FakeDetectorRecipe``.
        model_kwargs: extra timm constructor arguments.
    """

    variants = {
        "tiny": {"encoder": "timm:test_resnet", "pretrained": False, "image_size": 64},
        "resnet50": {"encoder": "timm:resnet50.tv2_in1k"},
        "swin_t": {"encoder": "timm:swin_tiny_patch4_window7_224.ms_in1k"},
        "xception": {"encoder": "timm:legacy_xception.tf_in1k"},
    }

    def __init__(
        self,
        encoder: str = "timm:resnet50.tv2_in1k",  # release: torchvision resnet50(weights=IMAGENET1K_V2)
        pretrained: bool = True,  # paper: fine-tuned from ImageNet weights
        image_size: int | None = None,
        optimizer: str = "sgd",  # paper: SGD
        lr: float = 0.1,  # paper: SGD, learning rate 0.1
        momentum: float = 0.0,  # release train.py: SGD without momentum
        weight_decay: float = 1e-7,  # paper: weight decay 1e-7
        min_lr_ratio: float = 1e-3,  # paper: cosine decay to lr x 1e-3
        pos_weight: float | None = None,  # paper: BCE pos_weight = #real / #generated
        augment: bool = True,  # release images_dataset.py: JPEG, noise, flip, colour, grayscale, shift-scale-rotate
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = CNNDetectorNet(encoder, pretrained=pretrained, image_size=image_size, model_kwargs=model_kwargs)
        self.augmenter = Augment(*normalization_of(self.net.encoder.transform)) if augment else None

    def image_transform(self) -> Callable[[Any], Tensor]:
        return self.net.encoder.transform

    def logits(self, batch: Mapping[str, Any], augment: bool = False) -> Tensor:
        images = batch["image"]
        if augment and self.augmenter is not None:
            images = self.augmenter(images)
        return self.net(images)

