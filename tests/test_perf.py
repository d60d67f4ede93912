"""The perf scripts' FLOP counts against closed-form formulas, their MFU denominators, warm-ups and levers."""

from __future__ import annotations

import gc
import importlib.util
import json
import weakref
from pathlib import Path
from types import ModuleType

import pytest
import torch

from zoo.bench import perf

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"perf_{name}", ROOT / "benchmarks" / "perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models on a shared machine run many times faster than with spinning workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vit_formula(tokens: int, width: int, depth: int, mlp: int, patches: int, patch: int,
                head: tuple[int, int] = (0, 0)) -> int:
    """FLOPs of a ViT on one image: per block the q/k/v/output projections, the MLP and the two attention
    products (scores and weighted values), plus the patch embedding and a head on one token."""
    block = 2 * tokens * (4 * width * width + 2 * width * mlp) + 2 * 2 * tokens * tokens * width
    return depth * block + 2 * patches * (3 * patch * patch) * width + 2 * head[0] * head[1]


def unet_formula(config: dict, context_length: int = 77) -> tuple[int, int]:
    """(forward, backward to the latent) FLOPs of a conditional UNet on one image, layer by layer.

    Each convolution, linear layer and attention's two products, from the shapes a meta forward meets;
    in the backward, a layer whose input depends on the latent costs its forward again (input gradient
    only, frozen weights), a self-attention product twice (both operands need a gradient) and a
    cross-attention product once (the context needs none).
    """
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    totals = [0, 0]

    def add(flops: int, on_latent_path: bool, backward_factor: int = 1) -> None:
        totals[0] += flops
        totals[1] += backward_factor * flops if on_latent_path else 0

    def conv(module, inputs, out):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        add(2 * out.numel() * module.in_channels // module.groups * kernel, inputs[0].requires_grad)

    def linear(module, inputs, out):
        add(2 * out.numel() * module.in_features, inputs[0].requires_grad)

    def attention(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        batch, tokens = hidden.shape[0], hidden.shape[1]
        keys = tokens if context is None else context.shape[1]
        add(2 * 2 * batch * tokens * keys * module.inner_dim, hidden.requires_grad, 2 if context is None else 1)

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(config).requires_grad_(False)
        latent = torch.empty(1, config["in_channels"], config["sample_size"], config["sample_size"],
                             requires_grad=True)
        context = torch.empty(1, context_length, config["cross_attention_dim"])
        timestep = torch.tensor([500])
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(conv)
        elif isinstance(module, torch.nn.Linear):
            module.register_forward_hook(linear)
        elif isinstance(module, Attention):
            module.register_forward_hook(attention, with_kwargs=True)
    model(latent * 1, timestep, encoder_hidden_states=context)
    return totals[0], totals[1]


def test_full_size_vit_flops_match_the_formula() -> None:
    import timm

    with torch.device("meta"):
        deit = timm.create_model("deit_base_patch16_224", pretrained=False).eval()
        image = torch.empty(1, 3, 224, 224)
    with torch.inference_mode():
        deit_flops = perf.count_flops(lambda: deit(image))
    deit_formula = vit_formula(197, 768, 12, 3072, 196, 16, head=(768, 1000))
    assert deit_flops == pytest.approx(deit_formula, rel=0.02)
    assert deit_flops == pytest.approx(35.1e9, rel=0.02)

    # PDF-Embedding: DeiT-B/16 with five more tokens (202 in all), the tokens without the head
    pdf = _script("pdf_embedding").full_size_flops()
    assert pdf["deit_b16_224_gflops_per_image"] * 1e9 == pytest.approx(deit_flops)
    assert pdf["pdf_embedding_224_gflops_per_image"] * 1e9 == pytest.approx(
        vit_formula(202, 768, 12, 3072, 196, 16), rel=0.02)

    # CLIP ViT-L/14's image tower: 257 tokens of width 1024, 24 blocks, the 1024 -> 768 projection
    clip = _script("clip_features").full_size_flops()
    assert clip == pytest.approx(vit_formula(257, 1024, 24, 4096, 256, 14, head=(1024, 768)), rel=0.02)
    assert clip > 150e9  # the count that missed the attention blocks gave 103.8e9


def test_attention_is_counted_in_inference_mode_on_the_cpu(one_thread) -> None:
    """nn.MultiheadAttention's inference fast path is invisible to a plain FlopCounterMode."""
    figures = _script("clip_features").measure_extraction(batch_size=2, compile_model=False)
    # zoo-tiny-clip: 32 px, patch 8 (16 patches + the class token), width 64, 2 blocks, projection 64 -> 32
    assert figures["extract_flops_per_image"] == pytest.approx(vit_formula(17, 64, 2, 256, 16, 8, head=(64, 32)))


def test_sd15_unet_forward_backward_flops_match_the_formula() -> None:
    forward, backward = unet_formula(perf.SD15_UNET)
    counted = perf.unet_flops(perf.SD15_UNET)
    assert counted == pytest.approx(forward + backward, rel=0.02)
    assert perf.unet_flops(perf.SD15_UNET, backward=False) == pytest.approx(forward, rel=0.02)
    assert 1.6e12 < counted < 1.9e12


@pytest.mark.parametrize(("name", "card", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.0),
    ("NVIDIA H200", "H200 SXM", 989.0),
    ("NVIDIA H200 NVL", "H200 NVL", 835.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
])
def test_datasheet_peak_of_each_card(name: str, card: str, tflops: float) -> None:
    assert perf.datasheet_peak(name) == (card, tflops * 1e12)


def test_a_result_names_both_mfu_denominators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert perf.datasheet_peak("NVIDIA GeForce GT 710") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert perf.mfu_datasheet(1e12) is None
    perf.write_result(tmp_path / "r.json", "thing", {"x": 1.0}, mfu=0.5)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["mfu"] == 0.5 and result["mfu_datasheet"] is None
    assert "measured in this run" in result["mfu_denominators"]["mfu"]
    assert "no datasheet peak" in result["mfu_denominators"]["mfu_datasheet"]


def test_inversion_flops_add_up_step_by_step(one_thread) -> None:
    """The full-size inversion count adds UNet passes to a one-step sampler: each step costs one more pass."""
    from zoo_inversion_attribution.generators import load_generator

    inversion = _script("inversion")
    one, three = (inversion.flops_per_image_iteration(load_generator("tiny-ddim", ddim_steps=steps))
                  for steps in (1, 3))
    checkpointed = load_generator("tiny-ddim", ddim_steps=1, gradient_checkpointing=True)
    assert inversion.flops_per_image_iteration(checkpointed) == one  # recomputation is not model work
    assert checkpointed.gradient_checkpointing is True  # and the setting is given back
    unet_pass = perf.unet_flops(checkpointed.unet.config, context_length=checkpointed.context.shape[1])
    assert three == pytest.approx(one + 2 * unet_pass)


def test_inversion_warms_up_every_timed_case(monkeypatch: pytest.MonkeyPatch) -> None:
    inversion = _script("inversion")
    calls = []

    class Recorder:
        def __init__(self, generator, iterations, restarts, autocast_dtype):
            self.iterations, self.dtype = iterations, autocast_dtype

        def invert(self, images):
            calls.append((self.iterations, self.dtype, tuple(images.shape)))

    monkeypatch.setattr(inversion, "Inverter", Recorder)
    images = torch.zeros(4, 3, 8, 8)
    inversion.timed(None, images, 7, torch.bfloat16)
    inversion.timed(None, images[:1], 7, None)
    warmup = inversion.WARMUP_ITERATIONS
    assert calls == [(warmup, torch.bfloat16, (4, 3, 8, 8)), (7, torch.bfloat16, (4, 3, 8, 8)),
                     (warmup, None, (1, 3, 8, 8)), (7, None, (1, 3, 8, 8))]


def test_cgi_dm_lever_table() -> None:
    cgi_dm = _script("cgi_dm")
    cases = {"reference": {"s_per_image": 2.0}, "batch 1": {"s_per_image": 20.0},
             "channels-last": {"s_per_image": 4.0}, "math attention": {"case": "math attention", "error": "boom"}}
    rows = {row["lever"]: row for row in cgi_dm.lever_table(cases)}
    assert [row["lever"] for row in cgi_dm.lever_table(cases)] == [
        "batching", "bf16", "fused attention (SDPA)", "channels-last", "torch.compile", "CUDA graphs"]
    assert rows["batching"]["speedup"] == 10.0 and rows["channels-last"]["speedup"] == 0.5
    assert rows["fused attention (SDPA)"]["error"] == "boom" and "speedup" not in rows["fused attention (SDPA)"]
    assert rows["bf16"]["skipped"] == rows["torch.compile"]["skipped"] == "CUDA only"


def test_cgi_dm_cases_hold_only_their_own_unets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                one_thread) -> None:
    """Each case is measured while the only UNets alive are its own two (no shared fp32 base)."""
    cgi_dm = _script("cgi_dm")
    built, alive = [], []
    build, measure = cgi_dm.build_unet, cgi_dm.measure

    def tracked_build(*args, **kwargs):
        unet = build(*args, **kwargs)
        built.append(weakref.ref(unet))
        return unet

    def tracked_measure(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in built))
        return measure(*args, **kwargs)

    monkeypatch.setattr(cgi_dm, "build_unet", tracked_build)
    monkeypatch.setattr(cgi_dm, "measure", tracked_measure)
    result = cgi_dm.main(["--out", str(tmp_path / "cgi.json"), "--batch", "2", "--steps", "1", "--levers"])
    figures = result["figures"]
    cases = figures["cases"]
    # batched (also the reference), released style, batch 1, math attention, channels-last, 2 variants
    assert set(cases) == {"reference", "batch 1", "math attention", "channels-last", "shared noise",
                          "2 timesteps per step"}
    assert alive == [2] * 7
    levers = {row["lever"]: row for row in figures["levers"]}
    for lever in ("batching", "fused attention (SDPA)", "channels-last"):
        assert levers[lever]["speedup"] > 0
    for lever in ("bf16", "torch.compile", "CUDA graphs"):
        assert levers[lever]["skipped"] == "CUDA only"
    # a step's FLOPs: two UNet passes per timestep drawn, so 2 timesteps cost twice the model work per step
    step = {label: case["model_tflops_per_s"] * case["step_s"] / case["batch"] for label, case in cases.items()}
    assert step["2 timesteps per step"] == pytest.approx(2 * step["reference"])
    assert step["reference"] * 1e12 == pytest.approx(2 * figures["unet_fwd_bwd_gflops_per_image"] * 1e9)
    assert 1.6 < figures["sd15_unet_fwd_bwd_tflops_per_image"] < 1.9  # counted exactly in the test above


def test_run_all_judges_mfu_on_the_datasheet_and_lists_levers_and_flops(tmp_path: Path) -> None:
    run_all = _script("run_all")
    result = {"mfu": 0.5, "mfu_datasheet": 0.3, "targets": {"mfu": 0.35}}
    assert run_all.target_met(result) is False  # 0.5 of the measured peak, but 0.3 of the datasheet's
    assert run_all.target_met({**result, "mfu_datasheet": None}) is True
    row = {"script": "cgi_dm.py", "status": "ok", "seconds": 1.0, "benchmark": "cgi_dm", "device": "cuda",
           "hardware": {"gpu": "NVIDIA H100 80GB HBM3", "card": "H100 SXM", "datasheet_bf16_dense_tflops": 989.0},
           "ratio": 30.0, "mfu": 0.5, "mfu_datasheet": 0.3, "targets": {"mfu": 0.35}, "met": False,
           "figures": {"sd15_unet_fwd_bwd_tflops_per_image": 1.726, "levers": [
               {"lever": "batching", "with": "reference", "without": "batch 1", "speedup": 12.5},
               {"lever": "CUDA graphs", "with": "a", "without": "b", "error": "RuntimeError: no"}]}}
    table = run_all.write_table([row], tmp_path).read_text()
    assert "| cgi_dm | cuda | NVIDIA H100 80GB HBM3 = H100 SXM, datasheet dense bf16 989 TFLOP/s" in table
    assert "| 30 | 0.5 | 0.3 |" in table
    assert "| batching | reference | batch 1 | 12.5 |" in table and "| error: RuntimeError: no |" in table
    assert "| cgi_dm | sd15_unet_fwd_bwd_tflops_per_image | 1.726 |" in table
