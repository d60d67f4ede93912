"""PDF-Embedding as a ZooModule: training on D-Rep levels, evaluation, released-checkpoint import."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from zoo import backbones
from zoo.checkpoint import read_weights_only
from zoo.errors import ZooError
from zoo.module import ZooModule
from zoo.tasks.copy_detection import descriptors_identical
from zoo_pdf_embedding.torch_model import (
    MAX_LEVEL,
    NUM_LEVELS,
    TARGETS,
    PDFEmbeddingNet,
    init_from_pretrained_vit,
    map_released_state,
    target_pdf,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


# the released checkpoints of PDFEmbedding, by short name (`zoo list --pretrained`, `zoo download <name>`), as
# timm declares its pretrained configs; `python -m zoo.cli.manifest` copies them into zoo_plugin.json
PRETRAINED: dict[str, dict[str, Any]] = {
    "pdf_embedding.exponential_drep": {
        "method": "PDFEmbedding",
        "description": ("PDF-Embedding, ViT-B/16, exponential target PDF, trained on D-Rep by the authors (ICDiff, "
                        "NeurIPS 2024)"),
        "repo_id": "WenhaoWang/D-Rep",
        "repo_type": "dataset",
        "revision": "main",
        "filename": "vit_exp_563.pth.tar",
        "sha256": {},
        "init_args": {
            "target": "exponential",
        },
        "source": ("https://github.com/WangWenhao0716/PDF-Embedding (pdf_embedding_extractor.py fetches it from "
                   "this dataset repo)"),
        "note": ("revision (a commit id) and sha256 to be pinned from a verified download; the target PDF is the "
                 "one the file name states"),
    },
    "pdf_embedding.gaussian_drep": {
        "method": "PDFEmbedding",
        "description": ("PDF-Embedding, ViT-B/16, Gaussian target PDF, trained on D-Rep by the authors (ICDiff, NeurIPS "
                        "2024)"),
        "repo_id": "WenhaoWang/D-Rep",
        "repo_type": "dataset",
        "revision": "main",
        "filename": "vit_gauss_760.pth.tar",
        "sha256": {},
        "init_args": {
            "target": "gaussian",
        },
        "source": ("https://github.com/WangWenhao0716/PDF-Embedding (pdf_embedding_extractor.py fetches it from "
                   "this dataset repo)"),
        "note": ("revision (a commit id) and sha256 to be pinned from a verified download; the target PDF is the "
                 "one the file name states"),
    },
}


class PDFEmbedding(ZooModule):
    """PDF-Embedding: six tokens per image whose pairwise cosines, softmaxed, are a PDF over the levels.

    Args:
        target: the supervision; ``gaussian``, ``linear``, ``exponential`` (the paper's PDFs), ``onehot``
            (6-way classification) or ``regression`` (a scalar level from the six similarities, MSE).
        sigma: width of the Gaussian PDF, in normalised-level units.
        k: slope of the linear PDF max(0, 1 - k|x - p|).
        beta: scale of the exponential PDF exp(-|x - p| / beta).
        encoder: timm name of the pretrained single-class-token ViT the encoder starts from.
        pretrained: start from ``encoder``'s pretrained weights (False: random init).
        img_size, patch_size, embed_dim, depth, num_heads: the ViT.
        temperature: initial temperature of the softmax over the scaled cosine similarities.
        learn_temperature: learn the temperature with the encoder.
        level_from: which point prediction fills ``level``: ``argmax`` (5 - argmax over the tokens, the
            paper's) or ``expected`` (the mean level under the predicted PDF).
        drop_path_rate: stochastic depth of the ViT during training.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    task = "copy_detection"
    paper = "Image Copy Detection for Diffusion Models (NeurIPS 2024)"
    display_name = "PDF-Embedding"
    variants = {
        "gaussian": {"target": "gaussian"},
        "linear": {"target": "linear"},
        "exponential": {"target": "exponential"},
        "onehot": {"target": "onehot"},
        "regression": {"target": "regression"},
        # random init; the expected level keeps PCC defined while a barely trained model's argmax is constant
        "tiny": {"pretrained": False, **TINY_VIT, "lr": 3e-3, "level_from": "expected"},
    }
    tiny_trainer = {"max_epochs": 5}

    def __init__(
        self,
        target: str = "gaussian",
        sigma: float = 0.1,  # zoo default (neighbour level weight e^-2); the paper ablates the width
        k: float = 3.0,  # zoo default: a neighbour gets 0.4 of the peak, two levels away 0
        beta: float = 0.1,  # zoo default (neighbour level weight e^-2, as the Gaussian's)
        encoder: str = "deit_base_patch16_224.fb_in1k",  # paper: DeiT-B/16 pretrained on ImageNet
        pretrained: bool = True,
        img_size: int = 224,  # paper / released code: 224 x 224
        patch_size: int = 16,  # DeiT-B/16
        embed_dim: int = 768,  # DeiT-B
        depth: int = 12,  # DeiT-B
        num_heads: int = 12,  # DeiT-B
        temperature: float = 0.05,  # zoo choice: the released code withholds training
        learn_temperature: bool = True,  # zoo choice, as CLIP's logit scale
        level_from: str = "argmax",  # paper: predicted level = 5 - argmax
        drop_path_rate: float = 0.1,  # released code: create_model(..., drop_path_rate=0.1)
        lr: float = 5e-5,  # zoo choice for fine-tuning DeiT-B (training is not released)
        weight_decay: float = 0.05,  # DeiT's AdamW weight decay
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ZooError(f"PDFEmbedding target {target!r} is not one of {', '.join(TARGETS)}")
        if level_from not in ("argmax", "expected"):
            raise ZooError(f"PDFEmbedding level_from {level_from!r} must be 'argmax' or 'expected'")
        for name, value in (("sigma", sigma), ("k", k), ("beta", beta)):
            if value <= 0:
                raise ZooError(f"PDFEmbedding argument {name} must be > 0, got {value}")
        self.target, self.level_from = target, level_from
        self.width = {"gaussian": sigma, "linear": 1.0 / k, "exponential": beta}.get(target, 0.0)
        self.img_size = img_size
        self.lr, self.weight_decay = lr, weight_decay
        self.net = PDFEmbeddingNet(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            drop_path_rate=drop_path_rate, temperature=temperature, learn_temperature=learn_temperature,
            regression=target == "regression",
        )
        if backbones.want_pretrained(pretrained):
            init_from_pretrained_vit(self.net.vit, encoder)

    # ----------------------------------------------------------------- pre-processing and retrieval API
    def image_transform(self) -> Callable[[Any], Tensor]:
        """As the released ``preprocessor``: RGB, PIL's bicubic ``resize((224, 224))``, ImageNet mean/std."""
        from torchvision.transforms import v2

        # on a PIL image torchvision calls PIL's own resize: the released pixels exactly
        bicubic = v2.InterpolationMode.BICUBIC
        return v2.Compose([
            v2.Lambda(_rgb), v2.Resize((self.img_size, self.img_size), interpolation=bicubic, antialias=True),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def embed(self, images: Tensor) -> Tensor:
        """(B, 6 * D) cosine-comparable descriptors: a dot product is the mean of the six token cosines."""
        return self.net.embed(images)

    def pair_from_embeddings(self, generated_emb: Tensor, real_emb: Tensor) -> dict[str, Tensor]:
        """Predictions of the task schema from stored ``embed`` descriptors, without the encoder.

        Descriptors are compared in float32. Store them in float32 too: float16 storage moves near-flat
        PDFs enough to change their argmax level. ``descriptor_identical`` flags equal descriptors, which
        are not equal pixels (a collapsed model gives every image the same): the level stays the PDF's.
        """
        out = self._predict(self.net.similarities(generated_emb.float(), real_emb.float()))
        out["descriptor_identical"] = descriptors_identical(generated_emb, real_emb).long()
        return out

    def _predict(self, sims: Tensor) -> dict[str, Tensor]:
        # an exact copy (level 5) is decided on the pixels by the task (zoo.tasks.copy_detection), not here
        out: dict[str, Tensor] = {}
        if self.target == "regression":
            level = self.net.regress(sims).float() * MAX_LEVEL
        else:
            out["pdf"] = pdf = self.net.level_logits(sims).float().softmax(dim=1)
            if self.level_from == "argmax":
                # as released (README "Matching"): torch.max over the token cosines, whose first maximum is
                # the lowest token, i.e. the highest level on an exact tie (an argmax over the PDF indexed by
                # level would take the lowest)
                level = (MAX_LEVEL - sims.float().argmax(dim=1)).float()
            else:
                level = pdf @ torch.arange(NUM_LEVELS, device=pdf.device, dtype=pdf.dtype)
        out["level"] = level
        out["similarity"] = sims.float().mean(dim=1)  # the mean of the six token cosines (= the descriptors' dot)
        return out

    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return self._predict(self.net(batch["generated"], batch["real"]))

    # ----------------------------------------------------------------- training
    def loss(self, sims: Tensor, level: Tensor) -> Tensor:
        """KL(target PDF || predicted PDF), or MSE of the normalised level for ``regression``."""
        if self.target == "regression":
            return F.mse_loss(self.net.regress(sims), level.float() / MAX_LEVEL)
        log_pred = self.net.level_logits(sims).float().log_softmax(dim=1)
        return F.kl_div(log_pred, target_pdf(level, self.target, self.width), reduction="batchmean")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss = self.loss(self.net(batch["generated"], batch["real"]), batch["level"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/temperature", float(torch.exp(-self.net.log_scale.detach())))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # ----------------------------------------------------------------- released checkpoints
    @classmethod
    def convert_released(cls, path: str | Path, **init_args: Any) -> PDFEmbedding:
        """Build from the released ``vit_exp_563.pth.tar`` / ``vit_gauss_760.pth.tar`` (read weights-only).

        Keys are ``module.base.0.<timm ViT key>`` with ``dist_token`` (1, 5, 768) for the five extra tokens;
        every key is mapped, none is ignored. ``init_args`` set the rest (e.g. ``target="exponential"``).

        Example:
            >>> PDFEmbedding.convert_released("vit_gauss_760.pth.tar").save_pretrained("pdf-gauss")
        """
        path = Path(path)
        checkpoint = read_weights_only(path)
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise ZooError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
        with backbones.no_pretrained_download():
            model = cls(**{**init_args, "pretrained": False})
        model.net.vit.load_state_dict(map_released_state(state, model.net.vit, str(path)), strict=True)
        return model.eval()
