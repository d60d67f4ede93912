"""The fake detectors against their releases' own code, reproduced here on small tensors with the source cited.

Releases: davide-coccomini/Detecting-Images-Generated-by-Diffusers at ce5a2a8 (CLIP-MLP, CNN detectors) and
Yuheng-Li/UniversalFakeDetect at 1abc486; albumentations 1.3.0 for the CNN detectors' colour augmentation.
"""

from __future__ import annotations

import io

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zoo.module import ZooModule
from zoo.recipes.fake_detection import FakeDetectorRecipe, fancy_pca


class LinearProbe(FakeDetectorRecipe, ZooModule):
    """The smallest detector of the paper's recipe: a linear layer over 4 features."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 1e-7,
                 min_lr_ratio: float = 1e-3, pos_weight: float | None = 1.0, augment: bool = False) -> None:
        super().__init__()
        self.head = nn.Linear(4, 1)
        self.rates: list[float] = []

    def logits(self, batch, augment=False):
        return self.head(batch["image"]).squeeze(1)

    def on_train_batch_start(self, batch, batch_idx):
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])  # the rate this batch trains at


def release_rates(epochs: int, batches: int, lr: float = 0.1) -> list[float]:
    """The rate each batch of the release trains at.

    davide-coccomini/Detecting-Images-Generated-by-Diffusers ``train.py`` (main, training loop), reproduced:
    ``num_steps = int(opt.num_epochs * len(dl))``; ``CosineLRScheduler(optimizer, t_initial=num_steps,
    lr_min=config['training']['lr'] * 1e-3, cycle_limit=9, t_in_epochs=False)``; then per batch
    ``optimizer.step()`` followed by ``lr_scheduler.step_update((t * (train_batches) + index))``.
    """
    from timm.scheduler.cosine_lr import CosineLRScheduler

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, weight_decay=1e-7)
    scheduler = CosineLRScheduler(optimizer, t_initial=int(epochs * batches), lr_min=lr * 1e-3, cycle_limit=9,
                                  t_in_epochs=False)
    rates = []
    for t in range(epochs):
        for index in range(batches):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step_update(t * batches + index)
    return rates


def test_schedule_row_each_batch_trains_at_the_releases_rate() -> None:
    """CLIP-MLP table, row "schedule" (the CNN table defers to it): the rate of every batch over 10 x 30 steps."""
    epochs, batches = 10, 30
    data = [{"image": torch.randn(4), "label": i % 2} for i in range(batches * 2)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    model = LinearProbe()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=loader)
    expected = release_rates(epochs, batches)
    assert len(model.rates) == len(expected) == 300
    assert model.rates == pytest.approx(expected, rel=0, abs=1e-12)
    assert expected[0] == expected[1] == 0.1  # batch 0 and batch 1 both train at the base rate


def release_fancy_pca(img: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    """albumentations 1.3.0 ``albumentations/augmentations/functional.py`` ``fancy_pca``, reproduced.

    The release (``images_dataset.py`` ``create_train_transforms``) uses albumentations' ``FancyPCA()``, whose
    ``get_params`` draws ``alpha = random.gauss(0, 0.1)`` once and calls this function with it.
    """
    orig_img = img.astype(float).copy()
    img = img / 255.0
    img_rs = img.reshape(-1, 3)
    img_centered = img_rs - np.mean(img_rs, axis=0)
    img_cov = np.cov(img_centered, rowvar=False)
    eig_vals, eig_vecs = np.linalg.eigh(img_cov)
    sort_perm = eig_vals[::-1].argsort()
    eig_vals[::-1].sort()
    eig_vecs = eig_vecs[:, sort_perm]
    m1 = np.column_stack(eig_vecs)  # written np.column_stack((eig_vecs)) in 1.3.0: the same call
    m2 = np.zeros((3, 1))
    m2[:, 0] = alpha * eig_vals[:]
    add_vect = m1 @ m2  # np.matrix(m1) * np.matrix(m2) in 1.3.0; 1.4 writes it with @
    for idx in range(3):
        orig_img[..., idx] += add_vect[idx] * 255
    orig_img = np.clip(orig_img, 0.0, 255.0)
    return orig_img.astype(np.uint8)


@pytest.mark.parametrize("alpha", [0.1, -0.25, 3.0])
def test_colour_row_fancy_pca_is_albumentations(alpha: float) -> None:
    """CNN table, row "colour": FancyPCA equals albumentations' function to the byte on a fixed image and alpha."""
    rng = np.random.default_rng(0)
    # a coloured image with correlated channels, so that the three components differ
    base = rng.integers(0, 200, (48, 40, 1))
    array = np.clip(base + rng.integers(0, 56, (48, 40, 3)) * np.array([1, 2, 3]) // 3, 0, 255).astype(np.uint8)
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    got = (fancy_pca(image, alpha=alpha) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    expected = release_fancy_pca(array, alpha)
    assert not np.array_equal(expected, array)
    assert np.array_equal(got, expected)


def test_colour_row_fancy_pca_draws_one_alpha_of_std_0_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """CNN table, row "colour": one scalar alpha ~ N(0, 0.1) per image (albumentations' ``FancyPCA.get_params``)."""
    drawn = []
    real = torch.randn

    def spy(*shape, **kwargs):
        out = real(*shape, **kwargs)
        drawn.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "randn", spy)
    image = torch.rand(3, 16, 16)
    fancy_pca(image)
    assert drawn == [()]
    import inspect

    assert inspect.signature(fancy_pca).parameters["alpha_std"].default == 0.1


def pil_jpeg(array: np.ndarray, quality: int) -> np.ndarray:
    """Yuheng-Li/UniversalFakeDetect ``data/datasets.py`` ``pil_jpg``, reproduced."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="jpeg", quality=quality)
    return np.array(Image.open(out))


def test_saved_model_row_the_resnet50_config_exports_the_epoch_early_stopping_judged_best(tmp_path) -> None:
    """CNN and CLIP-MLP tables, row "saved model": fit ``configs/cnn_detector/resnet50.yaml`` itself (made tiny:
    the tiny variant's encoder on the mini set, a few epochs, on the CPU); the export is the best epoch's."""
    from conftest import ROOT
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from safetensors.torch import load_file

    from zoo.cli import ZooCLI

    cli = ZooCLI(["--config", str(ROOT / "configs/cnn_detector/resnet50.yaml"),
                  # the tiny variant's encoder, no augmentation, a few short epochs on the CPU
                  "--model.init_args.encoder=timm:test_resnet", "--model.init_args.pretrained=false",
                  "--model.init_args.image_size=64", "--model.init_args.augment=false",
                  # the rate rises a thousandfold over the run, so that the last epochs are worse than the best
                  "--model.init_args.min_lr_ratio=1000",
                  # root=null: the mini set from its cache, not built into the config's relative data/fake/coco
                  "--data", "MiniFakeDetection", "--data.root=null", "--data.generators=[upsampler]",
                  "--data.test_generators=[smoother]",
                  "--data.num_workers=0", "--trainer.max_epochs=5", "--trainer.limit_train_batches=3",
                  "--trainer.limit_val_batches=3", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                  "--seed_everything=0", f"--trainer.default_root_dir={tmp_path}"],
                 run=False)
    stopping = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(stopping) == 1 and len(checkpoints) == 1  # the config's own, and no other checkpoint callback
    assert (checkpoints[0].monitor, checkpoints[0].mode) == (stopping[0].monitor, stopping[0].mode) == ("val/loss", "min")

    epochs: list[tuple[float, dict]] = []

    class EveryEpoch(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
                epochs.append((float(trainer.callback_metrics["val/loss"]), state))

    cli.trainer.callbacks.insert(0, EveryEpoch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    losses = [loss for loss, _ in epochs]
    best = losses.index(min(losses))
    assert best != len(losses) - 1, f"the run must end past its best epoch to tell them apart: {losses}"
    exported = load_file(str(tmp_path / "lightning_logs" / "version_0" / "zoo" / "model.safetensors"))
    assert exported.keys() <= epochs[best][1].keys()
    assert all(torch.equal(exported[k], epochs[best][1][k]) for k in exported)
    assert any(not torch.equal(exported[k], epochs[-1][1][k]) for k in exported)


def test_universal_validation_row_fit_validates_on_the_releases_degraded_images() -> None:
    """UniversalFakeDetect table, row "validation pre-processing": blur sigma 1.5 (p 0.5), PIL JPEG 65 (p 0.5),
    no flip, while fitting only; each equal to the byte to the release's functions."""
    from scipy.ndimage import gaussian_filter
    from zoo_clip_mlp.lightning_model import UniversalFakeDetect

    from zoo.data.mini_datamodules import MiniFakeDetection

    model = UniversalFakeDetect.from_variant("tiny")
    val = model.val_augmenter
    assert (val.blur_p, val.blur_sigma, val.jpeg_p, val.jpeg_quality, val.flip_p) == (0.5, (1.5, 1.5), 0.5,
                                                                                      (65, 65), 0.0)
    # both applied (p 1): the release's gaussian_blur (scipy, in place per channel), then pil_jpg at 65
    val.blur_p = val.jpeg_p = 1.0
    mean, std = val.mean[0], val.std[0]
    array = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = ((torch.from_numpy(array).permute(2, 0, 1) / 255 - mean) / std)[None]
    got = ((val(image)[0] * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    expected = array.copy()
    for channel in range(3):
        gaussian_filter(expected[:, :, channel], output=expected[:, :, channel], sigma=1.5)
    assert np.array_equal(got, pil_jpeg(expected, 65))

    seen: list[torch.Tensor] = []
    forward = model.net.image_features

    def record(images):
        if not model.training:
            seen.append(images.clone())
        return forward(images)

    model.net.image_features = record
    data = MiniFakeDetection(batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)
    clean = next(iter(data.val_dataloader()))["image"]
    fitting, validating = seen
    assert torch.equal(validating, clean)  # zoo validate: the clean images
    assert not torch.allclose(fitting, clean, atol=1e-3)  # fit: blurred and JPEG'd, as the release's val_opt
