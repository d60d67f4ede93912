"""CLIP-MLP, UniversalFakeDetect and the CNN detectors on the mini fake-detection suite."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import ROOT, fast_trainer
from PIL import Image
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter
from zoo_clip_mlp.lightning_model import CLIPMLP, UniversalFakeDetect
from zoo_clip_mlp.torch_model import BlurJpeg, FeatureCache, fit_head, make_head
from zoo_cnn_detector.lightning_model import CNNDetector

from zoo import backbones
from zoo.checkpoint import load_folder
from zoo.cli import ZooCLI, main
from zoo.data import mini
from zoo.data.folders import FakeImageFolders
from zoo.data.mini_datamodules import MiniFakeDetection
from zoo.errors import ZooError
from zoo.module import ZooModule
from zoo.recipes.fake_detection import Augment, count_pos_weight

TINY_VARIANTS = [(cls, v) for cls in (CLIPMLP, UniversalFakeDetect, CNNDetector) for v in cls.variants
                 if v.startswith("tiny")]


def one_batch(model: ZooModule, captions: bool = False, split: str = "test", **data_args) -> dict:
    data = MiniFakeDetection(captions=captions, **data_args)
    data.setup()
    data.transform = model.image_transform()
    return next(iter(getattr(data, f"{split}_dataloader")()))


class CountCalls:
    """Wraps an encoder's forward and counts the images it sees."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.images, self.forward = 0, encoder.forward
        encoder.forward = self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images += len(images)
        return self.forward(images)


@pytest.fixture(scope="module")
def fitted() -> dict:
    """Every tiny variant fitted (one epoch, four batches) and tested on the mini suite, with its test metrics."""
    out = {}
    for cls, variant in TINY_VARIANTS:
        torch.manual_seed(0)
        model = cls.from_variant(variant)
        data = MiniFakeDetection(captions=model.hparams.get("use_text", False))
        head_before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        trainer = fast_trainer(max_epochs=1, limit_train_batches=4)
        trainer.fit(model, data)
        val_loss = float(trainer.callback_metrics["val/loss"])
        (metrics,) = trainer.test(model, data, verbose=False)
        out[(cls.__name__, variant)] = (model, {**metrics, "val/loss": val_loss}, head_before)
    return out


@pytest.mark.parametrize(("cls", "variant"), TINY_VARIANTS, ids=lambda x: getattr(x, "__name__", x))
def test_every_tiny_variant_fits_and_tests(fitted: dict, cls: type, variant: str) -> None:
    model, metrics, head_before = fitted[(cls.__name__, variant)]
    for key in ("test/acc", "test/auroc", "test/ap", "test/tpr_at_1fpr"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, key
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] > 0  # what the release's early stopping watches
    # the validation-calibrated threshold is the one used and reported
    assert metrics["test/threshold"] == pytest.approx(float(model.threshold))
    assert float(model.threshold) != cls.default_threshold
    # training moved the trainable weights, and only those
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, head_before, strict=True))
    if isinstance(model, CLIPMLP):
        assert all(not p.requires_grad for p in model.net.encoder.parameters())
        assert not model.net.encoder.training  # frozen encoder stays in eval mode during fit


@pytest.mark.parametrize(("cls", "variant"), TINY_VARIANTS, ids=lambda x: getattr(x, "__name__", x))
def test_save_load_round_trip_gives_identical_predictions(fitted: dict, cls: type, variant: str,
                                                          tmp_path: Path) -> None:
    model = fitted[(cls.__name__, variant)][0].eval()
    batch = one_batch(model, captions=model.hparams.get("use_text", False))
    model.save_pretrained(tmp_path)
    loaded = ZooModule.from_pretrained(tmp_path)
    assert type(loaded) is cls and float(loaded.threshold) == float(model.threshold)
    with torch.no_grad():
        before, after = model.predictions(batch), loaded.predictions(batch)
    assert torch.equal(before["score"], after["score"])
    assert torch.equal(before["decision"], after["decision"])


def test_pos_weight_is_real_over_generated_of_the_train_split() -> None:
    per_source = mini.FAKE_PER_SOURCE["train"]
    for generators, expected in ((["upsampler"], 1.0), (["upsampler", "smoother"], 0.5)):
        model = CLIPMLP.from_variant("tiny")
        fast_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(
            model, MiniFakeDetection(generators=generators))
        assert model.train_pos_weight == pytest.approx(per_source / (per_source * len(generators)))
        assert model.train_pos_weight == pytest.approx(expected)
    assert count_pos_weight([0, 0, 0, 1], "x") == 3.0
    with pytest.raises(ZooError, match="both real and generated"):
        count_pos_weight([1, 1], "x")
    # an explicit pos_weight wins
    model = CLIPMLP.from_variant("tiny", pos_weight=2.5)
    fast_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(model, MiniFakeDetection())
    assert model.train_pos_weight == 2.5


def test_feature_cache_is_reused_and_invalidated_when_the_encoder_changes(tmp_path: Path) -> None:
    cache = tmp_path / "features"
    sizes = MiniFakeDetection(generators=["upsampler"]).sizes()

    def fit(epochs: int = 1, **overrides) -> tuple[CLIPMLP, CountCalls]:
        model = CLIPMLP.from_variant("tiny", feature_cache=str(cache), **overrides)
        calls = CountCalls(model.net.encoder)
        limits = {} if epochs > 1 else {"limit_train_batches": 2, "limit_val_batches": 1}
        fast_trainer(max_epochs=epochs, **limits).fit(model, MiniFakeDetection(generators=["upsampler"]))
        return model, calls

    first, calls = fit(epochs=2)
    assert calls.images == sizes["train"] + sizes["val"]  # each image encoded once, not once per epoch
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and "zoo-tiny-clip" in files[0].name
    # a second run over the same images with the same encoder never calls it
    second, calls = fit()
    assert calls.images == 0
    # the head trained on cached features sees exactly the encoder's features
    batch = one_batch(second, split="val", generators=["upsampler"])
    calls = CountCalls(second.net.encoder)
    with torch.no_grad():
        cached = second.image_features(batch)
        assert calls.images == 0
        assert torch.allclose(cached, second.net.image_features(batch["image"]), atol=1e-5)
    # another pre-processing (image size) and other weights are another encoder: encoded again, new file
    _, calls = fit(image_size=48)
    assert calls.images == sizes["train"] + sizes["val"]
    assert len(list(cache.glob("*.safetensors"))) == 2
    # the tiny variant's random encoder is seeded, so other weights are made by hand: another key
    other = CLIPMLP.from_variant("tiny", feature_cache=str(cache))
    assert other.cache_key()["weights"] == first.cache_key()["weights"]
    with torch.no_grad():
        next(other.net.encoder.parameters()).add_(1e-3)
    assert other.cache_key()["weights"] != first.cache_key()["weights"]
    # test split: the perturbed test images (robustness rows) are other rows than the clean ones
    for perturb in (None, "jpeg75"):
        calls = CountCalls(second.net.encoder)
        fast_trainer().test(second, MiniFakeDetection(generators=["upsampler"], perturb=perturb), verbose=False)
        assert calls.images == sizes["test"]


def test_feature_cache_of_another_encoder_is_never_read(tmp_path: Path) -> None:
    key = {"spec": "open_clip:ViT-B-32@openai", "transform": "t", "weights": "w", "pretrained": "True"}
    cache = FeatureCache(tmp_path, key)
    assert cache.missing([bytes(16), bytes(16), b"1" * 16]) == [0, 2]  # identical images are encoded once
    cache.add([bytes(16), b"1" * 16], torch.stack([torch.ones(4), torch.zeros(4)]))
    cache.save()
    reread = FeatureCache(tmp_path, key)
    assert reread.missing([bytes(16)]) == []
    assert torch.equal(reread.lookup([b"1" * 16, bytes(16)]), torch.stack([torch.zeros(4), torch.ones(4)]))
    other = FeatureCache(tmp_path, {**key, "spec": "open_clip:RN50@openai"})
    assert other.path != cache.path and other.missing([bytes(16)]) == [0]
    other_tag = FeatureCache(tmp_path, {**key, "spec": "open_clip:ViT-B-32@laion2b_s34b_b79k"})
    assert other_tag.path != cache.path and other_tag.missing([bytes(16)]) == [0]
    # a file renamed into another encoder's name is refused, not read
    cache.path.rename(other.path)
    with pytest.raises(ZooError, match="written for another encoder"):
        FeatureCache(tmp_path, {**key, "spec": "open_clip:RN50@openai"})


def test_use_text_reads_the_captions_and_needs_them() -> None:
    torch.manual_seed(0)
    model = CLIPMLP.from_variant("tiny_text").eval()
    batch = one_batch(model, captions=True)
    with torch.no_grad():
        score = model.predictions(batch)["score"]
        other = model.predictions({**batch, "caption": ["a page of printed text"] * len(batch["id"])})["score"]
    assert not torch.allclose(score, other)  # the caption changes the score
    without = {k: v for k, v in batch.items() if k != "caption"}
    with pytest.raises(ZooError, match="use_text=True.*caption"):
        model.predictions(without)


def write_folder(root: Path, counts: dict[str, int]) -> Path:
    for split in ("train", "val", "test"):
        for source, count in counts.items():
            (root / split / source).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(root / split / source / f"{i}.png")
    return root


@pytest.mark.parametrize(("counts", "generators", "message"), [
    ({"real": 3}, ["sd"], "no images of source 'sd'"),           # one class only: no generator folder
    ({"real": 3, "sd": 0}, ["sd"], "no images of source 'sd'"),  # a named generator with zero images
    ({"real": 3}, [], "sources must both be named"),             # one class only: no generator named
])
def test_bad_folders_stop_before_training(tmp_path: Path, counts: dict, generators: list, message: str) -> None:
    model = CLIPMLP.from_variant("tiny")
    head = [p.detach().clone() for p in model.net.head.parameters()]
    trainer = fast_trainer()
    with pytest.raises(ZooError, match=message):
        trainer.fit(model, FakeImageFolders(str(write_folder(tmp_path, counts)), generators=generators))
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(head, model.net.head.parameters(), strict=True))


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ZooError, match="augment=True and feature_cache"):
        CLIPMLP.from_variant("tiny", augment=True, feature_cache="x")
    with pytest.raises(ZooError, match="head='huge'"):
        CLIPMLP.from_variant("tiny", head="huge")
    with pytest.raises(ZooError, match="open_clip"):
        CLIPMLP.from_variant("tiny", encoder="timm:resnet18")
    with pytest.raises(ZooError, match="timm cannot build"):
        CNNDetector(encoder="timm:no_such_net", pretrained=False)
    # the encoder is spelled as in every method: a bare timm name or another library is refused
    with pytest.raises(ZooError, match="'resnet50' must look like 'timm:<name>'"):
        CNNDetector(encoder="resnet50", pretrained=False)
    with pytest.raises(ZooError, match="encoder='open_clip:zoo-tiny-clip': a CNN detector needs a timm encoder"):
        CNNDetector(encoder="open_clip:zoo-tiny-clip", pretrained=False)


def test_heads_are_the_released_linear_stacks() -> None:
    heads = {name: make_head(name, 1024) for name in ("linear", "mlp", "deep")}
    widths = {name: [m.out_features for m in head] for name, head in heads.items()}
    assert widths == {"linear": [1], "mlp": [512, 512, 1], "deep": [512, 512, 256, 256, 1]}
    # the release's test.py has no activation between the layers
    assert all(isinstance(m, torch.nn.Linear) for head in heads.values() for m in head)
    assert UniversalFakeDetect.display_name == "UniversalFakeDetect"
    assert UniversalFakeDetect.__init__.__defaults__[:3] == ("open_clip:ViT-L-14@openai", True, "linear")


def test_image_and_text_features_are_l2_normalised_each_before_concatenation() -> None:
    torch.manual_seed(0)
    net = CLIPMLP.from_variant("tiny_text").net.eval()
    image, text = torch.randn(4, net.encoder.dim), torch.randn(4, net.encoder.text_dim)
    with torch.no_grad():
        expected = net.head(torch.cat([image / image.norm(dim=1, keepdim=True),
                                       text / text.norm(dim=1, keepdim=True)], dim=1)).squeeze(1)
        assert torch.allclose(net.classify(image, text), expected, atol=1e-6)
        assert torch.allclose(net.classify(5 * image, 0.5 * text), expected, atol=1e-6)
        assert not torch.allclose(net.head(torch.cat([image, text], dim=1)).squeeze(1), expected, atol=1e-3)
        # UniversalFakeDetect's release feeds the raw CLIP features to its linear layer
        ufd = UniversalFakeDetect.from_variant("tiny").net.eval()
        assert torch.allclose(ufd.classify(image), ufd.head(image).squeeze(1))
        assert not torch.allclose(ufd.classify(2 * image), ufd.classify(image))


def test_cnn_augment_has_the_released_probabilities_and_magnitudes() -> None:
    from torchvision.transforms import v2

    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    augment = Augment(mean, std)
    noise, flip, colour, gray, affine = augment.pixels.transforms
    assert augment.jpeg.p == 0.2 and augment.jpeg.transforms[0].quality == [60, 100]
    assert (noise.p, flip.p, colour.p, gray.p, affine.p) == (0.3, 0.5, 0.4, 0.2, 0.5)
    shift_scale_rotate = affine.transforms[0]
    assert list(shift_scale_rotate.degrees) == [-5.0, 5.0] and list(shift_scale_rotate.translate) == [0.1, 0.1]
    assert list(shift_scale_rotate.scale) == [0.8, 1.2]
    assert shift_scale_rotate.interpolation == v2.InterpolationMode.BILINEAR
    images = (torch.rand(8, 3, 32, 32) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.manual_seed(0)
    out = augment(images)
    assert out.shape == images.shape and (out - images).abs().mean() > 0.01
    pixels = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # normalised again from [0, 1] pixels


def test_universal_crop_has_no_resize_and_blur_is_the_releases_gaussian_filter() -> None:
    model = UniversalFakeDetect.from_variant("tiny")
    mean, std = model.augmenter.mean[0], model.augmenter.std[0]  # (3, 1, 1)
    size = model.net.encoder.image_size
    array = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    image = model.image_transform()(Image.fromarray(array))

    def to_uint8(tensor: torch.Tensor) -> np.ndarray:
        return ((tensor * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    top, left = (80 - size) // 2, (100 - size) // 2
    crop = array[top:top + size, left:left + size]
    assert np.array_equal(to_uint8(image), crop)  # the release's test transform: a centre crop, no resize
    # blur alone (p 1, sigma 2) is scipy's gaussian_filter on each 8-bit channel, then maybe a flip
    blur = BlurJpeg(mean.flatten(), std.flatten(), blur_p=1.0, blur_sigma=(2.0, 2.0), jpeg_p=0.0)
    got = to_uint8(blur(image[None])[0])
    expected = crop.copy()
    for channel in range(3):
        gaussian_filter(expected[:, :, channel], output=expected[:, :, channel], sigma=2.0)
    assert np.array_equal(got, expected) or np.array_equal(got, expected[:, ::-1])
    assert not np.array_equal(got, crop)


@pytest.fixture
def fake_clip_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """open_clip's pretrained download, faked offline: a tag gives fixed weights of its own; the tags asked for."""
    real, asked = open_clip.create_model_and_transforms, []

    def create(name: str, pretrained: str | None = None, **kwargs):
        model, train_transform, transform = real(name, pretrained=None, **kwargs)
        if pretrained:
            asked.append(pretrained)
            generator = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for param in model.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        return model, train_transform, transform

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    return asked


def test_pretrained_encoder_is_referenced_not_copied(fake_clip_download: list[str], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CLIPMLP(encoder="open_clip:zoo-tiny-clip@pinned", pretrained=True, head="mlp").eval()
    assert fake_clip_download == ["pinned"]
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert not any(key.startswith("net.encoder.") for key in saved)
    # the head, the threshold, and the validation scores' record (counts and quantiles per class, none yet)
    record = saved["val_score_counts"].numel() + saved["val_score_quantiles"].numel()
    assert saved["val_score_counts"].sum() == 0
    assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in model.net.head.parameters()) + 1 + record
    loaded = load_folder(tmp_path)  # built without a download, then the encoder from its pinned tag
    assert fake_clip_download == ["pinned", "pinned"]
    for (key, value), other in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(value, other), key
    with backbones.no_pretrained_download(), pytest.raises(ZooError, match="not in the checkpoint"):
        load_folder(tmp_path)


def test_random_init_encoder_is_saved_and_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CLIPMLP.from_variant("tiny").eval()
    assert model.reference_state_keys() == set()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict())
    loaded = load_folder(tmp_path)
    for (key, value), other in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(value, other), key


def test_released_universal_head_converts_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = open_clip.create_model_and_transforms

    def no_download(name: str, pretrained: str | None = None, **kwargs):
        assert pretrained is None, "the converter must not download CLIP"
        return real(name, pretrained=None, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_download)
    # the release's pretrained_weights/fc_weights.pth holds these keys and shapes (saved on cuda:0 there)
    released = {"weight": torch.randn(1, 768), "bias": torch.randn(1)}
    path = tmp_path / "fc_weights.pth"
    torch.save(released, path)
    out = tmp_path / "out"
    assert main(["convert", "--released", "UniversalFakeDetect", str(path), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "UniversalFakeDetect"
    assert config["init_args"]["encoder"] == "open_clip:ViT-L-14@openai" and config["init_args"]["pretrained"]
    saved = load_file(out / "model.safetensors")
    # no copy of CLIP; the release stores no validation scores, so their record is empty
    assert set(saved) == {"net.head.0.weight", "net.head.0.bias", "threshold", "val_score_counts", "val_score_quantiles"}
    assert saved["val_score_counts"].sum() == 0
    assert torch.equal(saved["net.head.0.weight"], released["weight"])
    assert torch.equal(saved["net.head.0.bias"], released["bias"])
    assert float(saved["threshold"]) == 0.0  # the release decides at probability 0.5
    assert (out / "model.safetensors").stat().st_size < 10_000
    # a file of other keys or shapes is a one-line error naming it
    torch.save({"fc.weight": torch.zeros(1, 768)}, path)
    with pytest.raises(ZooError, match="fc_weights.pth: not the release's"):
        UniversalFakeDetect.convert_released(path)
    torch.save(released, path)
    with pytest.raises(ZooError, match=r"'weight' has shape \(1, 768\)"):
        UniversalFakeDetect.convert_released(path, encoder="open_clip:zoo-tiny-clip", pretrained=False)


def test_universal_recipe_is_the_releases() -> None:
    model = UniversalFakeDetect.from_variant("tiny")
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-4
    assert optimizer.defaults["weight_decay"] == 0.0
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler["monitor"] == "val/acc" and scheduler["scheduler"].factor == pytest.approx(0.1)
    assert model.hparams.pos_weight == 1.0 and isinstance(model.augmenter, BlurJpeg)


def test_fit_head_learns_separable_cached_features() -> None:
    torch.manual_seed(0)
    labels = torch.arange(2000) % 4 == 0  # 1 generated for 3 real
    features = torch.randn(2000, 64) + labels[:, None].float() * 0.8
    head = make_head("mlp", 64)
    losses = fit_head(head, features, labels.long(), epochs=2, batch_size=256)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        accuracy = ((head(features).squeeze(1) > 0) == labels).float().mean()
    assert accuracy > 0.9


def test_zoo_fit_then_zoo_test_from_the_exported_checkpoint(tmp_path: Path) -> None:
    fit = ZooCLI(["fit", "--config", str(ROOT / "configs/clip_mlp/mini.yaml"), "--trainer.max_epochs=1",
                  f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                  "--trainer.accelerator=cpu", f"--model.init_args.feature_cache={tmp_path / 'cache'}"])
    export = Path(fit.trainer.log_dir) / "zoo"
    assert json.loads((export / "config.json").read_text())["name"] == "CLIPMLP"
    assert list((tmp_path / "cache").glob("*.safetensors"))
    test = ZooCLI(["test", "--ckpt_path", str(export), "--data", "MiniFakeDetection",
                   "--data.generators=[upsampler]", "--data.test_generators=[smoother]", "--data.perturb=half",
                   f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                   "--trainer.accelerator=cpu"])
    metrics = test.trainer.callback_metrics
    assert 0.0 <= float(metrics["test/auroc"]) <= 1.0
    assert float(metrics["test/threshold"]) == pytest.approx(float(fit.model.threshold))


def test_perf_script_runs_on_the_cpu(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks" / "perf"))
    try:
        import clip_features
    finally:
        sys.path.pop(0)
    out = tmp_path / "clip_features.json"
    clip_features.main(["--features", "1000", "--epochs", "2", "--batch-size", "8", "--out", str(out)])
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert result["benchmark"] == "clip_features" and result["device"] == "cpu"
    assert figures["extract_images_per_s"] > 0 and figures["head_train_s"] > 0
    assert figures["head_features"] == 1000 and figures["head_epochs"] == 2
    assert result["mfu"] > 0 and figures["extract_flops_per_image"] > 1e6  # the tiny CLIP: ~3.9 MFLOP per image


def _config(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "configs" / name).read_text())


def _callbacks(config: dict) -> dict[str, dict]:
    return {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in config["trainer"]["callbacks"]}


def test_clip_mlp_rows_state_the_zoos_values() -> None:
    """CLIP-MLP table, rows "optimiser", "schedule", "batch, epochs", "early stopping", "saved model", "MLP head",
    "deep head": the numbers the rows state."""
    import inspect

    recipe = inspect.signature(CLIPMLP).parameters
    assert (recipe["lr"].default, recipe["weight_decay"].default, recipe["momentum"].default) == (0.1, 1e-7, 0.0)
    assert recipe["min_lr_ratio"].default == 1e-3 and recipe["optimizer"].default == "sgd"
    assert sum(p.numel() for p in make_head("deep", 512).parameters()) == 722_689
    assert [m.out_features for m in make_head("mlp", 512)] == [512, 512, 1]
    for name in ("rn50_mlp", "vitb32_mlp", "vitb32_deep", "vitb32_mlp_text"):
        config = _config(f"clip_mlp/{name}.yaml")
        assert config["data"]["init_args"]["batch_size"] == 32 and config["trainer"]["max_epochs"] == 30
        callbacks = _callbacks(config)
        assert callbacks["EarlyStopping"] == {"monitor": "val/loss", "mode": "min", "patience": 5}
        assert callbacks["ModelCheckpoint"] == {"monitor": "val/loss", "mode": "min"}


def test_universal_rows_state_the_zoos_values() -> None:
    """UniversalFakeDetect table, rows "head init", "optimiser", "batch, epochs", "lr schedule", "blur", "JPEG",
    "validation pre-processing", "saved model", "test pre-processing": the numbers the rows state."""
    model = UniversalFakeDetect.from_variant("tiny")
    assert model.hparams.lr == 1e-4 and model.hparams.weight_decay == 0.0
    assert model.net.head[-1].weight.std().item() == pytest.approx(0.02, rel=0.5)  # normal_(0, 0.02) on 1 x d
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert (scheduler.patience, scheduler.threshold, scheduler.threshold_mode) == (4, 0.001, "abs")
    train = model.augmenter
    assert (train.blur_p, train.blur_sigma, train.jpeg_p, train.jpeg_quality, train.flip_p) == (0.5, (0.0, 3.0), 0.5,
                                                                                                (30, 100), 0.5)
    config = _config("clip_mlp/vitl14_linear.yaml")
    assert config["data"]["init_args"]["batch_size"] == 256 and config["trainer"]["max_epochs"] == 100
    callbacks = _callbacks(config)
    assert callbacks["EarlyStopping"] == {"monitor": "val/acc", "mode": "max", "patience": 15, "min_delta": 0.001}
    assert callbacks["ModelCheckpoint"] == {"monitor": "val/acc", "mode": "max"}
    from torchvision import transforms

    crop = model.image_transform().transforms[0]
    assert isinstance(crop, transforms.CenterCrop) and list(crop.size) == [model.net.encoder.image_size] * 2


def test_cnn_rows_state_the_zoos_values() -> None:
    """CNN table, rows "noise", "colour", "ResNet-50", "Swin-T", "Xception", "loss, optimiser, schedule, batch,
    epochs", "early stopping", "saved model": the numbers and names the rows state."""
    import inspect

    from zoo.recipes import fake_detection as recipe

    assert inspect.signature(recipe.gauss_noise).parameters["var_limit"].default == (10.0, 50.0)
    assert inspect.signature(recipe.brightness_contrast).parameters["limit"].default == 0.2
    assert inspect.signature(recipe.fancy_pca).parameters["alpha_std"].default == 0.1
    jitter = Augment((0.5,) * 3, (0.5,) * 3).pixels.transforms[2].transforms[0].transforms[2]
    assert jitter.hue == (-20 / 180, 20 / 180) and jitter.saturation == (1 - 30 / 255, 1 + 30 / 255)
    assert jitter.brightness == (1 - 20 / 255, 1 + 20 / 255)
    assert {k: v["encoder"] for k, v in CNNDetector.variants.items() if k != "tiny"} == {
        "resnet50": "timm:resnet50.tv2_in1k", "swin_t": "timm:swin_tiny_patch4_window7_224.ms_in1k",
        "xception": "timm:legacy_xception.tf_in1k"}
    for name in ("resnet50", "swin_t", "xception"):
        config = _config(f"cnn_detector/{name}.yaml")
        assert config["data"]["init_args"]["batch_size"] == 32 and config["trainer"]["max_epochs"] == 30
        callbacks = _callbacks(config)
        assert callbacks["EarlyStopping"] == {"monitor": "val/loss", "mode": "min", "patience": 5}
        assert callbacks["ModelCheckpoint"] == {"monitor": "val/loss", "mode": "min"}
