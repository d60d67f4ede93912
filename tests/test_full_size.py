"""Every real configuration under ``configs/`` at its full architecture, with random weights, one step on the CPU.

No weights can be downloaded, so each config runs with its pretrained downloads off and the diffusion models
come from a local folder in the real Stable Diffusion 1.5 layout (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), written with ``save_pretrained``: SD-1.5's UNet, VAE and CLIP
text encoder at full size with random weights, and the real CLIP tokenizer, built offline from the BPE
vocabulary that open_clip ships. The UNet's ``sample_size`` is 16 instead of 64 (128-pixel images instead of
512), so that a sampler step costs seconds on a CPU; its weights and parameter count are SD-1.5's.

Each config runs as a benchmark job (fit or calibrate, export, reload the export, test) on its task's mini set,
eight samples a split (``max_samples``), one batch of two per training and validation step and the whole draw
tested (the draw keeps its split's order, so a single batch can hold one class), with the config's own model arguments except: ``pretrained`` off, the
diffusion models pointed at the local folder, and the long loops cut to one step (PGD steps, inversion
iterations, restarts; three calibration images). The Trainer runs in fp32 on the CPU (``precision: 32-true``):
a CPU without bf16 units emulates the configs' ``bf16-mixed``, about 15 times slower.

Only the configs that name a diffusion model request the SD-1.5 folder (a fixture, built once per module on first
use): a ``-k`` run of other configs writes none. The RONAN config of SD-2-base (``sd2_base_ddim``) runs on the same
SD-1.5 folder, so its UNet and text encoder are SD-1.5's, not SD-2-base's; its arguments are its own. CGI-DM's LoRA
config runs twice: on the peft adapter folder and on a diffusers-format ``pytorch_lora_weights.safetensors``.
Every test metric must be finite and inside its range (AUROC, AP, accuracy, µAP, RD in [0, 1]; PCC in [-1, 1]).

These tests are deselected by default (marker ``full_size``); run them with ``pytest -m full_size``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# SD-1.5's parameter counts (stable-diffusion-v1-5: unet, vae, text_encoder)
SD15_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
SMOKE_SAMPLE_SIZE = 16  # latent side: 128-pixel images (SD-1.5: 64, 512 pixels)
MAX_SAMPLES, BATCH_SIZE = 8, 2  # of each split; images (or pairs) a batch
# fp32: the configs' bf16-mixed is emulated on CPUs without bf16 units (15x slower on SD-1.5's UNet here).
# One training and one validation batch, given as a fraction: Lightning types limit_*_batches `int | float`, and
# jsonargparse may read an integer 1 as 1.0 (every batch), depending on the order in which typing's Union cache
# met `Union[int, float]` and `Union[float, int]`. The test runs every batch of the draw: the draw keeps its split's
# order, so one batch of two can hold a single class, whose AUROC is NaN.
ONE_BATCH = BATCH_SIZE / MAX_SAMPLES
TRAINER = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_epochs": 1, "max_steps": 1,
           "limit_train_batches": ONE_BATCH, "limit_val_batches": ONE_BATCH, "num_sanity_val_steps": 0}
DATA = {
    "copy_detection": "MiniCopyDetection",
    "fake_detection": "MiniFakeDetection",
    "copyright": "MiniCopyright",
    "attribution": "MiniAttribution",
}


def real_configs() -> list[Path]:
    """Every method config that names a real architecture: all but those written for the mini sets."""
    found = []
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        data = config.get("data") or {}
        if "model" in config and isinstance(config["model"], dict) and not str(data.get("class_path", "")).startswith("Mini"):
            found.append(path)
    return found


# ------------------------------------------------------------------------------------------ SD-1.5 layout
def clip_tokenizer(folder: Path) -> Any:
    """The CLIP tokenizer (transformers) built from open_clip's BPE vocabulary, saved in ``folder``."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()
    # open_clip names the two special tokens <start_of_text>/<end_of_text>; CLIP's release and transformers
    # call them <|startoftext|>/<|endoftext|>, with the same ids (49406, 49407)
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): index for token, index in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_stable_diffusion(folder: Path) -> Path:
    """SD-1.5's pipeline at full size with random weights, in diffusers' folder layout."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    # the configs of stable-diffusion-v1-5/stable-diffusion-v1-5 (unet, vae, text_encoder, scheduler)
    unet = UNet2DConditionModel(
        sample_size=SMOKE_SAMPLE_SIZE, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
        pad_token_id=1,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    tokenizer = clip_tokenizer(folder / "tokenizer")
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        count = sum(p.numel() for p in module.parameters())
        assert count == SD15_PARAMS[name], f"{name}: {count} parameters, SD-1.5 has {SD15_PARAMS[name]}"
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def write_lora(base: Path, folder: Path, diffusers_folder: Path) -> tuple[Path, Path]:
    """A rank-4 LoRA on the attention projections of ``base``'s UNet, random (non-zero) weights, written twice:
    as a peft adapter folder and as diffusers' ``pytorch_lora_weights.safetensors`` (``save_lora_weights``, the
    file diffusers' LoRA training scripts write). Returns the folder and the file."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    from zoo.diffusion import load_unet

    torch.manual_seed(1)
    unet = load_unet(str(base))
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    config.base_model_name_or_path = str(base)
    inject_adapter_in_model(config, unet)
    folder.mkdir(parents=True)
    config.save_pretrained(str(folder))
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(unet, save_embedding_layers=False).items()}
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    StableDiffusionPipeline.save_lora_weights(diffusers_folder, unet_lora_layers=convert_state_dict_to_diffusers(state))
    return folder, diffusers_folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def stable_diffusion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd15")
    folder = write_stable_diffusion(root / "stable-diffusion-v1-5")
    lora, diffusers_lora = write_lora(folder, root / "lora", root / "diffusers-lora")
    return {"pipeline": folder, "lora": lora, "diffusers_lora": diffusers_lora}


# ------------------------------------------------------------------------------------------ the smoke runs
DIFFUSION_METHODS = ("CGIDM", "InversionAttribution")
# (low, high) of each metric by its last name part (``other_model/auroc_raw`` -> ``auroc_raw``); others: finite
METRIC_RANGES = {
    **dict.fromkeys(("acc", "auroc", "auroc_raw", "auroc_calibrated", "ap", "tpr_at_1fpr", "muap", "rd"), (0.0, 1.0)),
    "pcc": (-1.0, 1.0),
}


def metric_problems(metrics: dict[str, float]) -> list[str]:
    """Each metric that is not a finite number inside its range, said in words."""
    problems = []
    for name, value in metrics.items():
        low, high = METRIC_RANGES.get(name.rsplit("/", 1)[-1], (-math.inf, math.inf))
        if not math.isfinite(value) or not low <= value <= high:
            problems.append(f"{name} = {value} (expected a finite number in [{low}, {high}])")
    return problems


def test_metric_bounds_catch_nan_and_out_of_range_values() -> None:
    assert metric_problems({"auroc": 0.0, "pcc": -1.0, "threshold": -3.5, "real/auroc_raw": 1.0}) == []
    assert len(metric_problems({"muap": float("nan"), "pcc": 1.5, "other_model/auroc": -0.1, "threshold": math.inf})) == 4


def overrides(method: str, init_args: dict[str, Any], sd: dict[str, Path] | None, lora_format: str = "peft") -> dict[str, Any]:
    """The config's model arguments that cannot run offline, or would run for hours on a CPU."""
    if method == "CGIDM":
        lora = sd["diffusers_lora"] if lora_format == "diffusers" else sd["lora"]
        finetuned = lora if init_args.get("finetune_type") == "lora" else sd["pipeline"]
        return {"pretrained": str(sd["pipeline"]), "finetuned": str(finetuned), "encoder_pretrained": False,
                "steps": 1}
    if method == "InversionAttribution":
        kind = str(init_args["generator"]).partition(":")[0]
        return {"generator": f"{kind}:{sd['pipeline']}", "latent_size": SMOKE_SAMPLE_SIZE, "iterations": 1,
                "restarts": 1, "calibration": None, "calibration_size": 3, "min_calibration": 3,
                "ddim_steps": min(int(init_args.get("ddim_steps", 2)), 2)}
    return {"pretrained": False}


def smoke_cases() -> list[Any]:
    """Every real config, and CGI-DM's LoRA configs once more on a diffusers-format LoRA file."""
    cases = [pytest.param(p, "peft", id=f"{p.parent.name}/{p.stem}") for p in real_configs()]
    for path in real_configs():
        init_args = (yaml.safe_load(path.read_text())["model"].get("init_args") or {})
        if init_args.get("finetune_type") == "lora":
            cases.append(pytest.param(path, "diffusers", id=f"{path.parent.name}/{path.stem}[diffusers-lora-file]"))
    return cases


@pytest.mark.full_size
@pytest.mark.parametrize(("config", "lora_format"), smoke_cases())
def test_real_config_runs_at_full_size(config: Path, lora_format: str, request: pytest.FixtureRequest, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo import registry
    from zoo.bench.runner import run_job
    from zoo.bench.suite import parse_suite
    from zoo.tasks import get_task

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # pretrained downloads off: a download attempt fails the job
    whole = yaml.safe_load(config.read_text())
    model = whole["model"]
    method = model["class_path"].rsplit(".", 1)[-1]
    task = registry.methods.load(method).task
    # the SD-1.5 folder (about 1.07 B parameters written to disk) only for the configs that name a diffusion model
    sd = request.getfixturevalue("stable_diffusion") if method in DIFFUSION_METHODS else None
    entry = {"config": str(config), "init_args": overrides(method, model.get("init_args", {}), sd, lora_format)}
    data = {"batch_size": BATCH_SIZE, "max_samples": MAX_SAMPLES}
    if (whole.get("data") or {}).get("init_args", {}).get("captions"):
        data["captions"] = True  # a text-conditioned method needs the mini set's captions
    raw = {"name": "full_size", "seeds": [0], "trainer": TRAINER,
           "tasks": {task: {"data": {"class_path": DATA[task], "init_args": data}, "methods": [entry]}}}
    (job,) = parse_suite(raw, "the full-size smoke run").jobs
    result = run_job(job, tmp_path / job.id)
    assert result["status"] == "ok", f"{config.name}: {result.get('error')}\n{(tmp_path / job.id / 'error.txt').read_text()}"
    assert result["metrics"], f"{config.name}: no test metric"
    with (tmp_path / job.id / "predictions.csv").open() as f:
        tested = list(csv.DictReader(f))
    assert len(tested) == result["split_sizes"]["test"] == MAX_SAMPLES, "the test covers the whole draw"
    if get_task(task).binary:  # AUROC, AP and TPR need both classes
        assert {row["true_label"] for row in tested} == {"0", "1"}, "the tested samples hold both classes"
    problems = metric_problems(result["metrics"])
    assert not problems, f"{config.name}: " + "; ".join(problems)
    if method not in DIFFUSION_METHODS:  # their diffusion models are named, not saved
        assert result["params"] > 10_000_000, f"{config.name}: {result['params']} parameters is not a full-size model"


def test_every_real_config_is_smoke_tested() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in real_configs()}
    # the real configs of every method family; a new one is picked up by real_configs()
    assert {"pdf_embedding/gaussian", "copy_baselines/sscd", "clip_mlp/vitl14_linear", "cnn_detector/resnet50",
            "cgi_dm/sd15_lora_clip", "inversion_attribution/sd15_ddim"} <= names
    assert not any(name.split("/")[1].startswith("mini") for name in names)


def test_clip_tokenizer_from_open_clip_bpe_matches_open_clip(tmp_path: Path) -> None:
    """The offline CLIP tokenizer gives open_clip's ids (the ids SD's text encoder was trained on)."""
    import open_clip

    tokenizer = clip_tokenizer(tmp_path / "tokenizer")
    texts = ["a painting in sks style", "A photo of an astronaut riding a horse, 4k!", "naïve café — 東京"]
    for text in texts:
        ours = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
        theirs = open_clip.tokenize([text])[0].tolist()
        assert ours[: ours.index(49407) + 1] == theirs[: theirs.index(49407) + 1], text
    assert len(tokenizer) == 49408
