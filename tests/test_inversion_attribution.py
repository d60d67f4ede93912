"""Origin attribution by input reverse-engineering (RONAN): inversion, belonging test, mini suite, perf."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, fast_trainer
from PIL import Image
from torch import nn
from zoo_inversion_attribution.generators import ModuleGenerator, load_generator
from zoo_inversion_attribution.lightning_model import InversionAttribution
from zoo_inversion_attribution.torch_model import BelongingTest, Inverter

from zoo.errors import ZooError


def _load(folder: Path) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
                        for p in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="session")
def mini_root(zoo_cache: Path) -> Path:
    """The mini attribution set with its two trained generators, built once per session."""
    from zoo_inversion_attribution.data import ensure_attribution

    return ensure_attribution()


@pytest.fixture(scope="session")
def mini_generator(mini_root: Path):
    return load_generator("mini")


def test_mini_set_layout_and_generators_are_trained(mini_root: Path, mini_generator) -> None:
    for split in ("val", "test"):
        for source in ("generated", "other_model", "real"):
            assert len(list((mini_root / split / source).glob("*.png"))) >= 8, (split, source)
    assert len(list((mini_root / "calibration" / "generated").glob("*.png"))) >= 10
    # a trained decoder makes varied images, not the constant grey of an untrained one
    with torch.no_grad():
        images = mini_generator(mini_generator.sample_input(16, torch.Generator().manual_seed(0)))
    assert images.shape == (16, 3, 32, 32)
    assert float(images.std(0).mean()) > 0.02


def test_inversion_lowers_the_loss(mini_root: Path, mini_generator) -> None:
    real = _load(mini_root / "val" / "real")[:4]
    result = Inverter(mini_generator, iterations=10, restarts=1).invert(real)
    assert result.iterations == 10
    assert bool((result.loss < result.initial).all())
    # the DDIM path is differentiable end to end: a few steps through a toy latent diffusion model help too
    ddim = load_generator("tiny-ddim", ddim_steps=1, gradient_checkpointing=True)
    images = torch.rand(2, 3, *ddim.output_size)
    result = Inverter(ddim, iterations=3, restarts=1, lr=0.05).invert(images)
    assert bool((result.loss < result.initial).all())


def test_own_images_reconstruct_better_than_real_photos(mini_root: Path, mini_generator) -> None:
    inverter = Inverter(mini_generator, iterations=40, restarts=2)
    own = inverter.invert(_load(mini_root / "val" / "generated")[:6]).loss
    real = inverter.invert(_load(mini_root / "val" / "real")[:6]).loss
    assert float(own.median()) * 10 < float(real.median())
    assert float(own.max()) < float(real.median())


class _FixedStarts(ModuleGenerator):
    """A generator whose "random" starts are given, to check which restart wins."""

    def __init__(self, module: nn.Module, starts: torch.Tensor) -> None:
        super().__init__(module, (starts.shape[1],), output_range=(0.0, 1.0))
        self.starts = starts

    def sample_input(self, n, generator=None, device=None):
        return self.starts[:n].clone()


def test_score_is_the_minimum_over_restarts(mini_generator) -> None:
    decoder = mini_generator.module
    truth = torch.randn(1, decoder.latent_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        image = decoder(truth)
    far = truth + 3.0
    # restart 0 starts far away, restart 1 starts at the true input
    both = Inverter(_FixedStarts(decoder, torch.cat([far, truth])), iterations=5, restarts=2).invert(image)
    only_far = Inverter(_FixedStarts(decoder, far), iterations=5, restarts=1).invert(image)
    assert both.per_restart.shape == (1, 2)
    assert torch.equal(both.loss, both.per_restart.min(1).values)
    assert float(both.per_restart[0, 1]) < 1e-10 < float(both.per_restart[0, 0])
    assert float(both.loss) < float(only_far.loss)
    assert torch.allclose(both.inputs, truth)
    # the plateau stop: from the true input the loss cannot improve, so it stops after `patience` iterations
    stopped = Inverter(_FixedStarts(decoder, truth), iterations=50, restarts=1, patience=3).invert(image)
    assert stopped.iterations == 4


def test_belonging_test_decision_rule_on_synthetic_numbers() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    reference = torch.from_numpy(np.exp(rng.normal(-5.0, 0.5, 20)))
    test = BelongingTest(alpha=0.05, test="t", min_size=10)
    test.fit(reference)
    logs = np.log(reference.numpy())
    mean, sd, n = logs.mean(), logs.std(ddof=1), len(logs)
    critical = stats.t.ppf(0.95, n - 1)
    assert test.critical_value() == pytest.approx(critical)

    def loss_at(statistic: float) -> torch.Tensor:  # the loss whose t statistic is ``statistic``
        return torch.tensor([math.exp(mean + statistic * sd * math.sqrt(1 + 1 / n))], dtype=torch.float64)

    assert float(test.statistic(loss_at(1.3))) == pytest.approx(1.3, rel=1e-4)
    assert test.decide(loss_at(critical - 0.01)).item() == 1
    assert test.decide(loss_at(critical + 0.01)).item() == 0
    assert test.decide(loss_at(-4.0)).item() == 1  # a loss far below the model's own: still "from the model"
    assert float(test.p_value(loss_at(critical))) == pytest.approx(0.05, rel=1e-3)

    z = BelongingTest(alpha=0.01, test="z", min_size=10)
    z.fit(reference)
    assert z.critical_value() == pytest.approx(stats.norm.ppf(0.99))
    assert z.decide(torch.tensor([math.exp(mean + 2.3 * sd)])).item() == 1
    assert z.decide(torch.tensor([math.exp(mean + 2.4 * sd)])).item() == 0


def test_errors(mini_generator) -> None:
    with pytest.raises(ZooError, match="fewer than the minimum of 10"):
        BelongingTest(min_size=10).fit(torch.rand(5), "my calibration set")
    with pytest.raises(ZooError, match="no reference"):
        BelongingTest().statistic(torch.rand(2))

    class Detached(nn.Module):
        def forward(self, z):
            return mini_generator.module(z).detach()

    class Rounded(nn.Module):
        def forward(self, z):
            return torch.round(mini_generator.module(z) * 255) / 255

    images = torch.rand(1, 3, 32, 32)
    for module in (Detached(), Rounded()):
        with pytest.raises(ZooError, match="not differentiable"):
            Inverter(ModuleGenerator(module, (16,), (0.0, 1.0)), iterations=2, restarts=1).invert(images)
    with pytest.raises(ZooError, match="distance='l3'"):
        Inverter(mini_generator, distance="l3")
    with pytest.raises(ZooError, match="unknown generator spec"):
        load_generator("gan:nowhere")

    refuse = InversionAttribution.from_variant("tiny", on_size_mismatch="error")
    batch = {"image": torch.rand(2, 3, 40, 40), "label": torch.tensor([1, 0]), "id": ["a.png", "b.png"],
             "source": ["generated", "real"]}
    with pytest.raises(ZooError, match="a.png.*on_size_mismatch='error'"):
        refuse._fit_size(batch["image"], batch["id"])
    with pytest.raises(ZooError, match="on_size_mismatch='error'"):
        refuse.image_transform()(Image.new("RGB", (40, 40)))
    resize = InversionAttribution.from_variant("tiny")
    assert resize._fit_size(batch["image"], batch["id"]).shape == (2, 3, 32, 32)
    assert resize.image_transform()(Image.new("RGB", (40, 48))).shape == (3, 32, 32)


def test_distances_are_zero_on_identical_images_only(mini_generator) -> None:
    from zoo_inversion_attribution.torch_model import DISTANCES, distance_fn

    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for name in DISTANCES:
        d = distance_fn(name)
        assert float(d(a, a).abs().max()) < 1e-4, name
        assert bool((d(a, b) > 1e-3).all()), name


def test_end_to_end_on_the_mini_suite(mini_root: Path, tmp_path: Path) -> None:
    from zoo import registry

    model = registry.methods.load("InversionAttribution").from_variant("tiny")
    data = registry.datamodules.load("MiniAttribution")()
    trainer = fast_trainer(**InversionAttribution.tiny_trainer)
    trainer.validate(model, datamodule=data)
    assert model.belonging.fitted and int(model.belonging.count) == 16
    results = trainer.test(model, datamodule=data)[0]
    for source in ("other_model", "real"):
        assert results[f"test/{source}/auroc_raw"] >= 0.9
        assert results[f"test/{source}/auroc"] >= 0.9
        assert results[f"test/{source}/acc"] >= 0.75
    # the sibling (same family, same photos, another seed) is the hard negative: ranked above chance
    assert results["test/sibling/auroc_raw"] >= 0.7
    # the calibration travels with the saved method; the generator is reloaded from its spec
    loaded = InversionAttribution.from_pretrained(model.save_pretrained(tmp_path / "export"))
    assert torch.equal(loaded.belonging.mean, model.belonging.mean)
    assert "generator" not in " ".join(loaded.state_dict())


def test_calibration_folder_too_small(tmp_path: Path) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i, i, i)).save(folder / f"{i}.png")
    model = InversionAttribution.from_variant("tiny", calibration=str(folder))
    with pytest.raises(ZooError, match=r"few: 3 images, fewer than the minimum of 10"):
        model.calibrate()


def test_perf_script_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "perf.json"
    monkeypatch.setattr(sys, "argv", ["inversion.py", "--out", str(out), "--batch", "2", "--iterations", "1", "--steps", "1"])
    runpy.run_path(str(ROOT / "benchmarks" / "perf" / "inversion.py"), run_name="__main__")
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert result["benchmark"] == "inversion_attribution"
    assert figures["seconds_per_image_batched"] > 0
    assert figures["seconds_per_image_fp32_one_at_a_time"] > 0
    assert figures["flops_per_image_iteration"] > 0
    assert result["ratio"] > 0


def test_diffusers_folders_load_as_differentiable_generators(tmp_path: Path) -> None:
    from zoo.diffusion import tiny_scheduler, tiny_unet, tiny_vae

    torch.manual_seed(0)
    tiny_unet(conditional=False, in_channels=3).save_pretrained(tmp_path / "ddpm" / "unet")
    tiny_scheduler("DDIMScheduler").save_pretrained(tmp_path / "ddpm" / "scheduler")
    tiny_vae().save_pretrained(tmp_path / "ldm" / "vae")
    pixel = load_generator(f"diffusers:{tmp_path / 'ddpm'}", ddim_steps=2)
    decoder = load_generator(f"vae-decoder:{tmp_path / 'ldm'}", latent_size=8)
    assert pixel.vae is None and pixel.output_size == (8, 8) and len(pixel.timesteps) == 2
    assert decoder.output_size == (16, 16)
    for generator in (pixel, decoder):
        z = generator.sample_input(1).requires_grad_(True)
        image = generator(z)
        assert image.shape == (1, 3, *generator.output_size)
        image.sum().backward()
        assert float(z.grad.abs().sum()) > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_generator_samples_as_diffusers_ddim_pipeline(tmp_path: Path, prediction_type: str) -> None:
    """The sampler follows the model's scheduler config (prediction type, SD's offset and final alpha)."""
    from diffusers import DDIMPipeline, DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from zoo.diffusion import tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet(conditional=False, in_channels=3).eval()
    # Stable Diffusion's scheduler config, with the prediction type under test (SD 2.x 768-v: v_prediction)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    unet.save_pretrained(tmp_path / "unet")
    scheduler.save_pretrained(tmp_path / "scheduler")
    generator = load_generator(f"diffusers:{tmp_path}", ddim_steps=4)
    assert generator.timesteps == [751, 501, 251, 1]
    x_t = randn_tensor((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = generator(x_t)
        reference = DDIMPipeline(unet=unet, scheduler=scheduler)(
            batch_size=2, generator=torch.Generator().manual_seed(0), eta=0.0, num_inference_steps=4,
            output_type="np").images
    # the model's raw output leaves [0, 1]: the pipeline clamps it, and so must the generator
    assert float(reference.min()) == 0.0 or float(reference.max()) == 1.0
    torch.testing.assert_close(ours.permute(0, 2, 3, 1), torch.from_numpy(reference), atol=1e-5, rtol=0)
    # and still differentiable end to end, back to x_T
    z = x_t.clone().requires_grad_(True)
    generator(z).sum().backward()
    assert float(z.grad.abs().sum()) > 0


def _released_entropy_2d(grey: np.ndarray) -> float:
    """RONAN's complexity.calcEntropy2dSpeedUp(grey, 3, 3), transcribed loop for loop."""
    from collections import Counter

    padded = np.pad(grey, 1)
    pairs = []
    for i in range(1, padded.shape[1] - 1):
        for j in range(1, padded.shape[0] - 1):
            patch = padded[j - 1:j + 2, i - 1:i + 2]
            center = patch[1, 1]
            pairs.append((center, (np.sum(patch) - center) / 8))
    p = np.array([count / padded.size for count in Counter(pairs).values()])
    return float(np.sum(-p * np.log2(p)))


def test_complexity_is_the_released_global_2d_entropy() -> None:
    from zoo_inversion_attribution.torch_model import entropy_2d

    gen = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (2, 1, 12, 9), generator=gen)
    grey[1, :, :, :4] = 7  # a flat region: fewer distinct pairs, lower entropy
    images = (grey.float() / 255).expand(-1, 3, -1, -1)  # equal channels: the grey is the value itself
    ours = entropy_2d(images)
    for i in range(2):
        assert math.isclose(float(ours[i]), _released_entropy_2d(grey[i, 0].numpy().astype(np.uint8)), rel_tol=1e-6)
    assert ours[1] < ours[0]
    # as released, 8 bits by truncation, and BGR2GRAY on an RGB array: red weighs 0.114, blue 0.299
    red, blue = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    red[:, 0, :2], blue[:, 2, :2] = 0.999, 0.999
    expected = {round(254 * 0.114): red, round(254 * 0.299): blue}
    for value, image in expected.items():
        grey_image = np.zeros((4, 4), np.uint8)
        grey_image[:2] = value
        assert math.isclose(float(entropy_2d(image)), _released_entropy_2d(grey_image), rel_tol=1e-6)


def test_bfloat16_precision_applies_on_cuda_only(mini_root: Path, mini_generator) -> None:
    """On the CPU the generator runs in fp32 whatever ``precision`` says (CPU bf16 is emulated and slow)."""
    real = _load(mini_root / "val" / "real")[:2]
    fp32 = Inverter(mini_generator, iterations=3, restarts=1).invert(real)
    bf16 = Inverter(mini_generator, iterations=3, restarts=1, autocast_dtype=torch.bfloat16).invert(real)
    assert torch.equal(fp32.loss, bf16.loss)


def test_search_settings_are_the_released_commands() -> None:
    """Row "search": Adam, lr 0.1, 1500 iterations, L2 (ZhentingWang/RONAN README.md commands, main.py)."""
    import inspect

    import yaml

    for cls in (InversionAttribution, Inverter):
        defaults = {k: v.default for k, v in inspect.signature(cls).parameters.items()}
        assert (defaults["lr"], defaults["iterations"], defaults["distance"]) == (0.1, 1500, "l2"), cls.__name__
    for name in ("sd2_base_ddim", "sd15_ddim", "sd15_decoder"):
        args = yaml.safe_load((ROOT / f"configs/inversion_attribution/{name}.yaml").read_text())["model"]["init_args"]
        assert (args["lr"], args["iterations"], args["distance"]) == (0.1, 1500, "l2"), name


def test_l2_distance_is_the_released_per_image_mse() -> None:
    """Row "distance": ZhentingWang/RONAN main.py (l. 52, 82): MSELoss(reduction="none") averaged per image."""
    from zoo_inversion_attribution.torch_model import distance_fn

    torch.manual_seed(0)
    image0, image = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    criterion = torch.nn.MSELoss(reduction="none")
    released = criterion(image0, image).mean(-1).mean(-1).mean(-1)  # main.py's min_value before its .min()
    torch.testing.assert_close(distance_fn("l2")(image, image0), released)


def test_sd_configs_name_the_released_model_and_steps() -> None:
    """Rows "model under test (SD)" and "sampler steps": SD-2-base at 50 steps as released; SD 1.5 at 10 (zoo)."""
    import yaml

    def args(name: str) -> dict:
        return yaml.safe_load((ROOT / f"configs/inversion_attribution/{name}.yaml").read_text())["model"]["init_args"]

    released = {"generator": "diffusers:stabilityai/stable-diffusion-2-base", "ddim_steps": 50}
    assert {k: args("sd2_base_ddim")[k] for k in released} == released
    assert {k: InversionAttribution.variants["sd2-base"][k] for k in released} == released
    zoo_choice = {"generator": "diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5", "ddim_steps": 10}
    assert {k: args("sd15_ddim")[k] for k in zoo_choice} == zoo_choice
    assert {k: InversionAttribution.variants["sd15"][k] for k in zoo_choice} == zoo_choice
