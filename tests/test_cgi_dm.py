"""CGI-DM: mask, PGD projection, loss sign on real fine-tunes, NaN handling, bad input, zoo test end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.diffusion import tiny_scheduler, tiny_unet
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[1]
TINY_PGD = {"steps": 3, "save_artifacts": False}


@pytest.fixture(scope="session")
def mini_models(zoo_cache):
    """The tiny pretrained model and its full and LoRA fine-tunes that ``zoo-mini`` names.

    In their ``test`` setting (``$ZOO_CGI_DM_MINI``, set in conftest): about 30 CPU seconds to train, once,
    into the persistent test cache. The mini suite's own models train four times as long.
    """
    from zoo_cgi_dm.finetune import ensure_mini_models

    return ensure_mini_models()


@pytest.fixture(scope="session")
def test_batch(mini_models):
    """The whole test split of the mini copyright suite at the tiny models' resolution."""
    from zoo_cgi_dm.finetune import IMAGE_SIZE

    from zoo.data.base import default_transform
    from zoo.data.mini_datamodules import MiniCopyright

    dm = MiniCopyright(batch_size=64)
    dm.transform = default_transform(IMAGE_SIZE)
    dm.setup("test")
    return next(iter(dm.test_dataloader()))


def _inverter(**kwargs):
    from zoo_cgi_dm.torch_model import ContrastingGradientInversion

    torch.manual_seed(0)
    pre = tiny_unet(conditional=False, in_channels=3, sample_size=8, block_out_channels=(8, 16), attention=False)
    ft = tiny_unet(conditional=False, in_channels=3, sample_size=8, block_out_channels=(8, 16), attention=False)
    return ContrastingGradientInversion(pre, ft, tiny_scheduler().alphas_cumprod, **kwargs)


def test_mask_keeps_top_left_and_bottom_right_quarters_of_every_block():
    from zoo_cgi_dm.torch_model import checkerboard_mask

    mask = checkerboard_mask(8, 12)
    assert mask.shape == (1, 1, 8, 12)
    block = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(mask[0, 0], block.repeat(2, 3))
    assert mask.mean().item() == 0.5


def test_projection_keeps_delta_in_the_ball_and_the_box():
    inverter = _inverter(radius=3.0, clip=1.0)
    start = torch.rand(4, 3, 8, 8) * 2 - 1
    delta = torch.randn(4, 3, 8, 8) * 10
    projected = inverter.project(delta, start)
    assert (projected.flatten(1).norm(dim=1) <= 3.0 + 1e-5).all()
    assert (start + projected).abs().max() <= 1.0 + 1e-6
    small = torch.full((1, 3, 8, 8), 1e-3)
    assert torch.allclose(inverter.project(small, torch.zeros_like(small)), small)  # inside: unchanged


def test_pgd_moves_only_masked_positions_within_the_radius():
    inverter = _inverter(radius=1.5, step_size=1.0, steps=4)
    images = torch.rand(3, 3, 8, 8)
    result = inverter.invert(images, generator=torch.Generator().manual_seed(0))
    keep = inverter.mask(result.latents)
    assert torch.equal(result.recovered_latents * keep, result.latents * keep)  # kept positions: the original
    moved = (result.recovered_latents - result.start_latents) * (1 - keep)
    norms = moved.flatten(1).norm(dim=1)
    assert (norms <= 1.5 + 1e-5).all() and (norms > 0.5).all()
    assert torch.equal(result.start_latents, result.latents * keep)  # pixel space: start = masked image
    assert result.losses.shape == (4, 3) and not result.failed


def test_nan_image_stops_alone_and_is_named():
    inverter = _inverter(radius=2.0, step_size=0.5, steps=3)
    images = torch.rand(3, 3, 8, 8)
    images[1, :, 2, 3] = float("nan")
    result = inverter.invert(images, names=["a.png", "broken.png", "c.png"])
    assert list(result.failed) == [1] and "broken.png" in result.failed[1]
    keep = inverter.mask(result.latents)
    for i in (0, 2):
        assert ((result.recovered_latents[i] - result.start_latents[i]) * (1 - keep[0])).norm() > 0.5
    assert torch.isnan(result.losses[:, 1]).all() and torch.isfinite(result.losses[:, [0, 2]]).all()


def test_max_rule_takes_the_best_recovered_image_of_the_same_set():
    from torchvision.transforms import v2
    from zoo_cgi_dm.torch_model import SimilarityScorer

    class Flatten(nn.Module):
        image_size = 2
        transform = v2.Compose([v2.Normalize([0.5] * 3, [0.5] * 3)])

        def forward(self, x):
            return x.flatten(1)

    scorer = SimilarityScorer(Flatten())
    suspects = torch.rand(4, 3, 2, 2)
    recovered = torch.stack([suspects[1], suspects[0], 1 - suspects[2], suspects[2]])
    pair = scorer(suspects, recovered)
    best = scorer(suspects, recovered, groups=["a", "a", "b", "b"])
    assert pair[0] < 1 - 1e-4 and best[0] == pytest.approx(1.0, abs=1e-5)  # its twin is in its set
    assert best[2] == pytest.approx(1.0, abs=1e-5) and (best >= pair - 1e-6).all()


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_fine_tune_denoises_its_members_better_than_the_pretrained_model(mini_models, test_batch, kind):
    """The loss sign: on members, the fine-tuned error is below the pretrained one, more than on hold-outs."""
    from zoo_cgi_dm import models
    from zoo_cgi_dm.torch_model import ContrastingGradientInversion

    pre = models.load_model(str(mini_models["pretrained"]))
    ft = models.apply_lora(pre, str(mini_models["lora"])) if kind == "lora" else models.load_model(
        str(mini_models["full"]), base=pre)
    inverter = ContrastingGradientInversion(pre.unet, ft.unet, pre.scheduler.alphas_cumprod)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = inverter.encode(test_batch["image"])
        gap = torch.stack([inverter.objective(z, None, None, generator) for _ in range(16)]).mean(0)
    member = test_batch["label"] == 1
    assert gap[member].mean() < 0  # members: the fine-tuned error is lower
    assert gap[member].mean() < gap[~member].mean()


def _save_unet(unet, folder: Path, scheduler=None) -> str:
    unet.save_pretrained(folder / "unet")
    (scheduler or tiny_scheduler()).save_pretrained(folder / "scheduler")
    return str(folder)


def test_models_with_different_latent_shapes_are_refused_before_any_step(mini_models, tmp_path):
    from zoo_cgi_dm.lightning_model import CGIDM

    other = _save_unet(tiny_unet(conditional=False, in_channels=3, sample_size=8, block_out_channels=(16, 32),
                                 attention=False), tmp_path / "small")
    with pytest.raises(ZooError, match="sample_size: 16 vs 8"):
        CGIDM(pretrained="zoo-mini", finetuned=other, **TINY_PGD)


def test_models_with_different_schedulers_are_refused(mini_models, tmp_path):
    import diffusers
    from zoo_cgi_dm.lightning_model import CGIDM

    from zoo.diffusion import load_unet

    linear = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    other = _save_unet(load_unet(str(mini_models["full"])), tmp_path / "linear", scheduler=linear)
    with pytest.raises(ZooError, match="different noise schedules"):
        CGIDM(pretrained="zoo-mini", finetuned=other, **TINY_PGD)


def test_lora_adapter_that_does_not_fit_its_base_names_the_mismatch(mini_models, tmp_path):
    from zoo_cgi_dm.lightning_model import CGIDM

    wrong_target = tmp_path / "wrong_target"
    shutil.copytree(mini_models["lora"], wrong_target)
    config = json.loads((wrong_target / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (wrong_target / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ZooError, match="does not match the base UNet.*no_such_proj"):
        CGIDM(pretrained="zoo-mini", finetuned=str(wrong_target), finetune_type="lora", **TINY_PGD)

    from safetensors.torch import load_file, save_file

    wrong_shape = tmp_path / "wrong_shape"
    shutil.copytree(mini_models["lora"], wrong_shape)
    state = load_file(str(wrong_shape / "adapter_model.safetensors"))
    key = next(k for k in state if "lora_A" in k)
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1, *state[key].shape[2:])
    save_file(state, str(wrong_shape / "adapter_model.safetensors"))
    with pytest.raises(ZooError, match=f"{key}.*has shape"):
        CGIDM(pretrained="zoo-mini", finetuned=str(wrong_shape), finetune_type="lora", **TINY_PGD)


def test_empty_member_set_is_a_clear_error(tmp_path):
    from zoo.data.folders import CopyrightFolders

    for split in ("val", "test"):
        (tmp_path / split / "member").mkdir(parents=True)
        (tmp_path / split / "holdout").mkdir(parents=True)
    dm = CopyrightFolders(str(tmp_path))
    with pytest.raises(ZooError, match="member.*no images"):
        dm.setup("test")


def test_nan_image_in_a_batch_warns_with_its_name_and_others_are_scored(mini_models, test_batch):
    from zoo_cgi_dm.lightning_model import CGIDM

    model = CGIDM.from_variant("tiny", **TINY_PGD)
    batch = {k: v[:3] for k, v in test_batch.items()}
    batch["image"] = batch["image"].clone()
    batch["image"][1] = float("nan")
    with pytest.warns(RuntimeWarning, match=Path(batch["id"][1]).name):
        scores = model.predict_batch(batch)["score"]
    assert torch.isfinite(scores).all() and scores[1] == -1.0 and (scores[[0, 2]] > -1.0).all()


def test_pixel_score_is_minus_the_squared_error_to_the_recovered_image_and_can_be_the_score(mini_models, test_batch):
    from zoo_cgi_dm.lightning_model import CGIDM

    from zoo.errors import ZooError

    batch = {k: v[:4] for k, v in test_batch.items()}
    pred = CGIDM.from_variant("tiny", **TINY_PGD, score="pixel").predict_batch(batch)
    # the same seed recovers the same images
    recovered = CGIDM.from_variant("tiny", **TINY_PGD).invert(batch["image"], list(batch["source"]), list(batch["id"])).recovered_images
    expected = -(batch["image"] - recovered).square().flatten(1).mean(1)
    torch.testing.assert_close(pred["pixel_score"], expected)
    assert torch.equal(pred["score"], pred["pixel_score"]) and (pred["pixel_score"] < 0).all()
    encoder = CGIDM.from_variant("tiny", **TINY_PGD).predict_batch(batch)
    assert torch.equal(encoder["score"], encoder["encoder_score"])
    assert not torch.equal(encoder["score"], encoder["pixel_score"])
    with pytest.raises(ZooError, match="score='ssim'"):
        CGIDM.from_variant("tiny", score="ssim")


@pytest.mark.parametrize("config", ["mini.yaml", "mini_lora.yaml"])
def test_zoo_test_runs_end_to_end_and_reports_auroc_and_accuracy(mini_models, tmp_path, config):
    from zoo.cli import main

    code = main(["test", "--config", str(ROOT / "configs" / "cgi_dm" / config), "--model.init_args.steps", "3",
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    assert code in (0, None)
    run = next((tmp_path / "lightning_logs").glob("version_*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    metrics = {k: float(v) for row in rows for k, v in row.items() if v not in ("", None) and k.startswith("test/")}
    assert 0.0 <= metrics["test/auroc"] <= 1.0 and 0.0 <= metrics["test/acc"] <= 1.0
    assert not math.isnan(metrics["test/threshold"])
    grids = sorted((run / "artifacts").glob("*.png"))  # validation (threshold) and test images, one grid each
    assert len(grids) == 40 and any("test-member" in g.name for g in grids)


def test_perf_script_runs_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("cgi_dm_perf", ROOT / "benchmarks" / "perf" / "cgi_dm.py")
    perf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(perf)
    out = tmp_path / "perf.json"
    perf.main(["--out", str(out), "--steps", "2", "--batch", "4"])
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert result["benchmark"] == "cgi_dm" and result["ratio"] > 0
    for key in ("batched_s_per_image", "released_style_s_per_image"):
        assert figures[key] > 0
    assert 0 < result["mfu"] < 1


def test_save_and_load_keep_threshold_and_encoder_but_not_the_diffusion_models(mini_models, tmp_path):
    from safetensors.torch import load_file

    from zoo.module import ZooModule

    model = _tiny_model()
    model.threshold.fill_(0.25)
    model.calibrated.fill_(True)
    folder = model.save_pretrained(tmp_path / "cgi")
    keys = load_file(str(folder / "model.safetensors"))
    assert not any("unet" in k for k in keys) and any(k.startswith("scorer.encoder") for k in keys)
    loaded = ZooModule.from_pretrained(folder)
    assert float(loaded.threshold) == 0.25 and bool(loaded.calibrated)
    name = next(k for k in keys if k.startswith("scorer.encoder"))
    assert torch.equal(loaded.state_dict()[name], model.state_dict()[name])


def _tiny_model():
    from zoo_cgi_dm.lightning_model import CGIDM

    return CGIDM.from_variant("tiny", **TINY_PGD)


def test_diffusers_lora_weights_load_as_the_file_and_as_its_folder(tmp_path):
    """A ``pytorch_lora_weights.safetensors`` as diffusers' training scripts write it (``unet.`` keys)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file
    from zoo_cgi_dm import models

    torch.manual_seed(0)
    base_unet = tiny_unet(conditional=True).eval()
    base = models.DiffusionModel("tiny-base", base_unet, tiny_scheduler())
    tuned = tiny_unet(conditional=True).eval()
    tuned.load_state_dict(base_unet.state_dict())
    # random B as well as A, so that the adapter changes the output
    tuned.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(tuned))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)
    file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert next(iter(load_file(str(file)))).startswith("unet.") and ".lora.down." in next(iter(load_file(str(file))))
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 4, 32)
    with torch.no_grad():
        expected = tuned(x, t, encoder_hidden_states=context).sample
        untouched = base_unet(x, t, encoder_hidden_states=context).sample
        assert (expected - untouched).abs().max() > 1e-3
        for source in (file, file.parent):
            loaded = models.apply_lora(base, str(source))
            torch.testing.assert_close(loaded.unet(x, t, encoder_hidden_states=context).sample, expected,
                                       atol=1e-5, rtol=1e-4)
        # the base model itself is left as it was
        torch.testing.assert_close(base_unet(x, t, encoder_hidden_states=context).sample, untouched)
    # a LoRA of the text encoder too is refused by name, not half applied
    state = load_file(str(file))
    state["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight"] = torch.zeros(4, 32)
    save_file(state, str(tmp_path / "te.safetensors"))
    with pytest.raises(ZooError, match="text encoder"):
        models.apply_lora(base, str(tmp_path / "te.safetensors"))
    with pytest.raises(ZooError, match="no diffusers LoRA weights"):
        models.apply_lora(base, str(tmp_path / "empty"))


def test_latent_inversion_rounds_masked_and_recovered_images_to_8_bits():
    from zoo_cgi_dm.torch_model import ContrastingGradientInversion

    from zoo.diffusion import tiny_vae

    torch.manual_seed(0)
    unets = [tiny_unet(conditional=False, in_channels=4, sample_size=16, block_out_channels=(8, 16), attention=False)
             for _ in range(2)]
    inverter = ContrastingGradientInversion(*unets, tiny_scheduler().alphas_cumprod, vae=tiny_vae(),
                                            scaling_factor=0.18215, steps=1, radius=1.0, step_size=0.1)
    result = inverter.invert(torch.rand(2, 3, 32, 32))
    for images in (result.masked_images, result.recovered_images):
        levels = images * 255
        torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    # the start latent is the encoding of that 8-bit masked picture
    torch.testing.assert_close(result.start_latents, inverter.encode(result.masked_images))


def test_scorer_preprocesses_as_the_encoders_own_transform():
    """Resize of the shorter side and centre crop (CLIP's preprocess), not a squash of the whole image."""
    import numpy as np
    from PIL import Image
    from zoo_cgi_dm.torch_model import SimilarityScorer

    from zoo.backbones import Encoder

    encoder = Encoder("open_clip:zoo-tiny-clip", pretrained=False)
    scorer = SimilarityScorer(encoder)
    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, (3, 4, 3)).repeat(24, axis=0).repeat(24, axis=1).astype(np.uint8)  # 72 x 96
    image = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    reference = encoder.transform(Image.fromarray(pixels))[None]
    ours = scorer.preprocess(image)
    assert ours.shape == reference.shape
    squashed = torch.nn.functional.interpolate(image, size=reference.shape[-2:], mode="bicubic").clamp(0, 1)
    squashed = (squashed - scorer.mean) / scorer.std
    # tensor and PIL resampling differ a little at block edges; the squash misses the crop entirely
    assert (ours - reference).abs().mean() < 0.05 < (squashed - reference).abs().mean()


def test_dino_scoring_concatenates_the_class_tokens_of_the_last_four_blocks():
    from zoo_cgi_dm.torch_model import SimilarityScorer

    from zoo.backbones import Encoder

    torch.manual_seed(0)
    encoder = Encoder("timm:vit_small_patch16_224", pretrained=False, image_size=32,
                      model_kwargs={"depth": 5, "embed_dim": 24, "num_heads": 2, "patch_size": 8}).eval()
    scorer = SimilarityScorer(encoder, last_blocks=4)
    images = torch.rand(2, 3, 32, 32)
    x = scorer.preprocess(images)
    model = encoder.model
    with torch.no_grad():  # DINO's get_intermediate_layers: the tokens after each block, through the final norm
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        outputs = []
        for block in model.blocks:
            tokens = block(tokens)
            outputs.append(model.norm(tokens)[:, 0])
    reference = torch.nn.functional.normalize(torch.cat(outputs[-4:], dim=-1), dim=-1)
    ours = scorer.embed(images)
    assert ours.shape == (2, 4 * 24)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    with pytest.raises(ZooError, match="last_blocks"):
        SimilarityScorer(Encoder("open_clip:zoo-tiny-clip", pretrained=False), last_blocks=4)


def test_image_transform_resizes_the_shorter_side_and_crops_the_centre(mini_models):
    from PIL import Image
    from zoo_cgi_dm.lightning_model import CGIDM

    model = CGIDM(pretrained="zoo-mini", finetuned="zoo-mini:full", encoder="open_clip:zoo-tiny-clip",
                  encoder_pretrained=False, **TINY_PGD)
    size = model.image_size
    image = Image.new("RGB", (3 * size, 2 * size), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size // 4, 2 * size))  # a red band on the left, outside the centre square
    out = model.image_transform()(image)
    assert out.shape == (3, size, size)
    torch.testing.assert_close(out[:, size // 2, size // 2], torch.tensor([0.0, 0.0, 1.0]))
    assert float(out[0].max()) < 0.05  # the band is cropped away, not squashed in
    grey = model.image_transform()(Image.new("L", (size, size), 128))
    assert grey.shape == (3, size, size)


def _released_dino_preprocess():
    """Nicholas0228/Revelio, dino_distance.py, ImageEmbedder.__init__: the released DINO pre-processing."""
    from torchvision import transforms as pth_transforms

    return pth_transforms.Compose([
        pth_transforms.Resize(256, interpolation=3),
        pth_transforms.CenterCrop(224),
        pth_transforms.ToTensor(),
        pth_transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def test_dino_config_preprocesses_as_the_released_resize_256_and_crop_224():
    """Row "DINO feature": configs/cgi_dm/sd14_dreambooth_dino.yaml resizes to 256 (bicubic), crops 224."""
    import numpy as np
    import yaml
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from zoo_cgi_dm.lightning_model import CGIDM

    args = yaml.safe_load((ROOT / "configs/cgi_dm/sd14_dreambooth_dino.yaml").read_text())["model"]["init_args"]
    scorer = CGIDM._build_scorer(args["encoder"], False, args.get("encoder_kwargs"), args["encoder_blocks"],
                                 args.get("encoder_resize"))
    assert args["encoder_blocks"] == 4  # get_intermediate_layers(x, 4): 4 x 384 = 1536-d
    resize, crop = scorer.geometry
    assert (resize.size, resize.interpolation) in (([256], InterpolationMode.BICUBIC), (256, InterpolationMode.BICUBIC))
    assert list(crop.size) == [224, 224]
    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, (6, 8, 3)).repeat(50, axis=0).repeat(50, axis=1).astype(np.uint8)  # 300 x 400
    image = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    reference = _released_dino_preprocess()(Image.fromarray(pixels))[None]
    ours = scorer.preprocess(image)
    assert ours.shape == reference.shape == (1, 3, 224, 224)
    # timm's own DINO transform (resize 248) crops a different square: far off where ours differs by resampling only
    timm_own = CGIDM._build_scorer(args["encoder"], False, args.get("encoder_kwargs"), args["encoder_blocks"])
    assert (ours - reference).abs().mean() < 0.01 < (timm_own.preprocess(image) - reference).abs().mean()


def test_configs_use_the_released_instance_prompt():
    """Row "prompt": the release fine-tunes and inverts with "sks style" (Trainer.py, Extractor.py)."""
    import yaml

    for name in ("sd14_dreambooth_clip", "sd14_dreambooth_dino", "sd15_lora_clip"):
        args = yaml.safe_load((ROOT / f"configs/cgi_dm/{name}.yaml").read_text())["model"]["init_args"]
        assert args["prompt"] == "sks style", name
        assert set((args.get("prompts") or {}).values()) <= {"sks style"}, name


def _released_l2_pgd(xvar, predict, nb_iter, eps, eps_iter, clip_min, clip_max):
    """Nicholas0228/Revelio, PGD.py perturb_iterative (ord=2, minimize=True as L2PGDAttack(targeted=True) calls it,
    no random start) with normalize_by_pnorm and clamp_by_pnorm, for one image (the release's batch of 1)."""
    delta = torch.zeros_like(xvar).requires_grad_()
    for _ in range(nb_iter):
        loss = -predict(xvar + delta)
        loss.backward()
        grad = delta.grad.data
        grad = grad * (1.0 / torch.norm(grad).unsqueeze(0))
        if torch.isnan(grad).any():
            grad = torch.zeros_like(grad)
        delta.data = delta.data + eps_iter * grad
        delta.data = torch.clamp(xvar.data + delta.data, clip_min, clip_max) - xvar.data
        norm = delta.data.abs().pow(2).reshape(1, -1).sum(dim=1).pow(0.5).clamp(min=1e-4)
        delta.data = torch.min(eps / norm, torch.ones_like(norm)) * delta.data
        delta.grad.data.zero_()
    return torch.clamp(xvar + delta, clip_min, clip_max).detach()


def test_pgd_steps_as_the_released_l2_attack():
    """Row "PGD": gradient over its L2 norm, step 2.0 against the objective, L2 ball 70 (here 1.0, active), box 100."""
    import inspect

    from zoo_cgi_dm.lightning_model import CGIDM
    from zoo_cgi_dm.torch_model import ContrastingGradientInversion

    defaults = {k: v.default for k, v in inspect.signature(CGIDM).parameters.items()}
    assert (defaults["radius"], defaults["step_size"], defaults["steps"], defaults["clip"]) == (70.0, 2.0, 1000, 100.0)
    inv = {k: v.default for k, v in inspect.signature(ContrastingGradientInversion).parameters.items()}
    assert (inv["t_min"], inv["t_max"], inv["mask_block"], inv["shared_noise"]) == (1, 999, 4, False)
    inverter = _inverter(steps=4, radius=1.0, step_size=0.4, clip=100.0)
    torch.manual_seed(1)
    images, target = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    inverter.objective = lambda z, *args, **kwargs: (z - target).square().flatten(1).sum(1)
    result = inverter.invert(images)
    keep = inverter.mask(result.latents)
    for i in range(2):
        ori = result.latents[i:i + 1]  # Extractor.py attack_noise_model.forward: ori * M + x * (1 - M)
        predict = lambda x, i=i, ori=ori: (ori * keep + x * (1 - keep) - target[i:i + 1]).square().sum()  # noqa: E731
        attacked = _released_l2_pgd(result.start_latents[i:i + 1], predict, 4, 1.0, 0.4, -100.0, 100.0)
        released = ori * keep + attacked * (1 - keep)  # Extractor.py, after perturb
        torch.testing.assert_close(result.recovered_latents[i:i + 1], released, atol=1e-5, rtol=1e-5)
    assert float((result.recovered_latents - result.start_latents).flatten(1).norm(dim=1).max()) == pytest.approx(1.0)


def test_image_transform_is_the_released_bilinear_512_resize_and_crop():
    """Row "input image": Extractor.py's transform, Resize(512, BILINEAR) of the shorter side and CenterCrop(512)."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image
    from torchvision import transforms
    from zoo_cgi_dm.lightning_model import CGIDM

    # Nicholas0228/Revelio, Extractor.py, module-level `transform` (then ToTensor, as sdm_utils.preprocess scales)
    released = transforms.Compose([
        transforms.Resize(512, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(512),
        transforms.ToTensor(),
    ])
    pixels = np.random.default_rng(0).integers(0, 256, (300, 700, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    ours = CGIDM.image_transform(SimpleNamespace(image_size=512))(image)  # the SD models' 512-pixel resolution
    torch.testing.assert_close(ours, released(image), atol=1e-6, rtol=0)  # the same 8-bit pixels


def test_sd_configs_name_the_released_encoders_and_pgd():
    """Rows "CLIP encoder", "DINO feature", "PGD": the SD configs' encoder and PGD numbers are the release's."""
    import yaml

    for name, encoder in (("sd14_dreambooth_clip", "open_clip:ViT-B-32@openai"),
                          ("sd14_dreambooth_dino", "timm:vit_small_patch16_224.dino"),
                          ("sd15_lora_clip", "open_clip:ViT-B-32@openai")):
        args = yaml.safe_load((ROOT / f"configs/cgi_dm/{name}.yaml").read_text())["model"]["init_args"]
        assert args["encoder"] == encoder, name
        assert (args["radius"], args["step_size"], args["steps"], args["clip"]) == (70.0, 2.0, 1000, 100.0), name
        assert not args.get("shared_noise", False) and args.get("timesteps_per_step", 1) == 1, name
