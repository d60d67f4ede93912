"""PDF-Embedding: target PDFs, the pairwise head, the released-checkpoint layout, training and the perf script."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, fast_trainer
from PIL import Image
from zoo_pdf_embedding.lightning_model import IMAGENET_MEAN, IMAGENET_STD, TINY_VIT, PDFEmbedding
from zoo_pdf_embedding.torch_model import PDFEmbeddingNet, map_released_state, released_key, target_pdf

from zoo import cli, registry
from zoo.data import mini
from zoo.data.copy_detection import DRepParquet
from zoo.data.mini_datamodules import MiniCopyDetection
from zoo.errors import ZooError
from zoo.module import ZooModule

VARIANTS = ("gaussian", "linear", "exponential", "onehot", "regression")
PREFIX = "module.base.0."


# ----------------------------------------------------------------- target PDFs
@pytest.mark.parametrize(("kind", "width", "narrow"), [("gaussian", 0.1, 1e-3), ("linear", 1 / 3, 1e-3),
                                                       ("exponential", 0.1, 1e-3)])
def test_target_pdf_shape(kind: str, width: float, narrow: float) -> None:
    levels = torch.arange(6)
    pdf = target_pdf(levels, kind, width)
    assert pdf.shape == (6, 6)
    torch.testing.assert_close(pdf.sum(1), torch.ones(6))
    assert torch.equal(pdf.argmax(1), levels)
    for level in range(6):
        row = pdf[level]
        # strictly smaller one step further away, until it reaches zero (the linear PDF has finite support)
        for side in (range(level, 5), range(level, 0, -1)):
            for i in side:
                j = i + 1 if side.step == 1 else i - 1
                assert row[j] < row[i] or row[j] == row[i] == 0
        assert row[level] > row[(level + 1) % 6]
    assert (pdf[:, :] > 0).sum() > 6  # smooth: neighbours get mass
    torch.testing.assert_close(target_pdf(levels, kind, narrow), torch.eye(6))
    torch.testing.assert_close(target_pdf(levels, "onehot", 0.0), torch.eye(6))


def test_target_pdf_values() -> None:
    pdf = target_pdf(torch.tensor([2]), "gaussian", 0.1)[0]
    x = torch.arange(6) / 5
    expected = torch.exp(-((x - 0.4) ** 2) / (2 * 0.1**2))
    torch.testing.assert_close(pdf, expected / expected.sum())
    linear = target_pdf(torch.tensor([0]), "linear", 1 / 3)[0]  # k = 3: 1, 0.4, 0, ...
    torch.testing.assert_close(linear, torch.tensor([1, 0.4, 0, 0, 0, 0]) / 1.4)


def test_bad_arguments() -> None:
    with pytest.raises(ZooError, match="width"):
        target_pdf(torch.tensor([1]), "gaussian", 0.0)
    with pytest.raises(ZooError, match="target"):
        PDFEmbedding.from_variant("tiny", target="cauchy")
    with pytest.raises(ZooError, match="sigma"):
        PDFEmbedding.from_variant("tiny", sigma=-1.0)
    with pytest.raises(ZooError, match="level_from"):
        PDFEmbedding.from_variant("tiny", level_from="median")
    with pytest.raises(TypeError, match="exact_copy_eps"):  # exact copies are the task's, decided on pixels
        PDFEmbedding.from_variant("tiny", exact_copy_eps=1e-3)


# ----------------------------------------------------------------- the pairwise head and the retrieval API
def test_registered() -> None:
    cls = registry.methods.load("PDFEmbedding")
    assert cls is PDFEmbedding and cls.task == "copy_detection" and "tiny" in cls.variants
    assert set(VARIANTS) <= set(cls.variants)


def test_image_transform_sizes_and_modes() -> None:
    transform = PDFEmbedding.from_variant("tiny").image_transform()
    images = [Image.new("L", (50, 70), 255), Image.new("RGBA", (64, 64), (255, 255, 255, 0)),
              Image.new("RGB", (90, 40), (255, 255, 255))]
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for image in images:
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        torch.testing.assert_close(out.mean(dim=(1, 2)), white, atol=1e-4, rtol=0)


def test_image_transform_is_the_released_pil_bicubic_resize() -> None:
    import numpy as np

    transform = PDFEmbedding.from_variant("tiny").image_transform()
    gen = np.random.default_rng(0)
    image = Image.fromarray(gen.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    # the released preprocessor: image.resize((224, 224)) (PIL's default, bicubic), ToTensor, Normalize
    resized = torch.from_numpy(np.array(image.resize((32, 32)))).permute(2, 0, 1).float() / 255
    expected = (resized - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(transform(image), expected, atol=1e-6, rtol=0)


def test_drop_path_is_the_released_rate() -> None:
    model = PDFEmbedding.from_variant("tiny")
    rates = [float(getattr(block.drop_path1, "drop_prob", 0.0)) for block in model.net.vit.blocks]
    assert rates[-1] == pytest.approx(0.1) and rates[0] == 0.0  # timm's linear rule, as released
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), model.embed(x))  # no stochastic depth at evaluation


@pytest.mark.parametrize("target", ["gaussian", "regression"])
@pytest.mark.parametrize("level_from", ["argmax", "expected"])
def test_an_exact_copy_is_level_5_and_flagged(target: str, level_from: str) -> None:
    """The same pixels are level 5 (the task's rule); equal descriptors alone are flagged, never a level."""
    torch.manual_seed(0)
    model = PDFEmbedding.from_variant("tiny", target=target, level_from=level_from).eval()
    images = torch.randn(12, 3, 32, 32)
    ids = [str(i) for i in range(12)]
    with torch.no_grad():
        same = model.predictions({"generated": images, "real": images.clone(), "id": ids})
        other = model.predictions({"generated": images, "real": images.roll(1, dims=0), "id": ids})
        near = model.predictions({"generated": images, "real": images + 1e-3, "id": ids})
        # from stored descriptors, float16 ones included: identical descriptors are flagged as such
        emb = model.embed(images).half()
        stored = model.pair_from_embeddings(emb, emb.clone())
    assert same["exact_copy"].dtype == torch.int64 and same["exact_copy"].tolist() == [1] * 12
    assert same["level"].tolist() == [5.0] * 12
    assert other["exact_copy"].tolist() == [0] * 12 and near["exact_copy"].tolist() == [0] * 12
    if target == "gaussian":  # the released PDF of a copy is flat: its argmax alone would be noise
        assert float((same["pdf"] - 1 / 6).abs().max()) < 1e-3
    assert "exact_copy" not in stored and stored["descriptor_identical"].tolist() == [1] * 12
    without_pixels = model._predict(model.net.similarities(emb.float(), emb.float()))
    torch.testing.assert_close(stored["level"], without_pixels["level"])  # the level stays the method's


def test_predictions_match_an_independent_computation() -> None:
    torch.manual_seed(0)
    model = PDFEmbedding.from_variant("tiny", level_from="argmax").eval()
    generated, real = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        pred = model.predictions({"generated": generated, "real": real, "level": torch.zeros(4, dtype=torch.long),
                                  "id": list("abcd")})
        tg = model.net.vit.forward_features(generated)[:, :6]
        tr = model.net.vit.forward_features(real)[:, :6]
        cos = F.cosine_similarity(tg, tr, dim=-1)  # (B, 6), token i
        pdf = torch.softmax(cos / 0.05, dim=1)  # initial temperature 0.05
        by_level = pdf.flip(1)  # token i stands for level 5 - i
        torch.testing.assert_close(pred["pdf"], by_level, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pred["level"], (5 - pdf.argmax(1)).float())
        # embed: a dot product of descriptors is the mean token cosine
        g, r = model.embed(generated), model.embed(real)
        assert g.shape == (4, 6 * TINY_VIT["embed_dim"])
        torch.testing.assert_close((g * r).sum(1), cos.mean(1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(g.norm(dim=1), torch.ones(4))
        # re-ranking from stored descriptors gives the same predictions as the full forward
        again = model.pair_from_embeddings(g, r)
        torch.testing.assert_close(again["pdf"], pred["pdf"])
        torch.testing.assert_close(again["level"], pred["level"])
        model.level_from = "expected"
        expected = model.pair_from_embeddings(g, r)["level"]
        torch.testing.assert_close(expected, (by_level * torch.arange(6.0)).sum(1), atol=1e-5, rtol=1e-4)


def test_token_i_stands_for_level_5_minus_i() -> None:
    model = PDFEmbedding.from_variant("tiny", level_from="argmax").eval()
    d = TINY_VIT["embed_dim"]
    for token in range(6):
        gen = torch.zeros(1, 6, d)
        gen[..., 0] = 1.0
        real = gen.clone()
        real[0, [i for i in range(6) if i != token], 0] = -1.0  # only token `token` agrees
        out = model.pair_from_embeddings(gen.flatten(1) / math.sqrt(6), real.flatten(1) / math.sqrt(6))
        assert out["level"].item() == 5 - token
        assert out["pdf"][0].argmax().item() == 5 - token


def _released_level(pdf_features_real: torch.Tensor, pdf_features_gen: torch.Tensor) -> torch.Tensor:
    """WangWenhao0716/PDF-Embedding, README.md "Matching" (the released rule), as a function: the level."""
    cosine_similarity = F.cosine_similarity(pdf_features_real, pdf_features_gen, dim=2)
    _, indices = torch.max(cosine_similarity, dim=1)
    return (5 - indices).float()


def test_an_exact_tie_takes_the_released_highest_level() -> None:
    """Row "pairing and level": on an exact tie the release's torch.max takes the first token, the highest level."""
    model = PDFEmbedding.from_variant("tiny", level_from="argmax").eval()
    d = TINY_VIT["embed_dim"]
    gen = torch.zeros(2, 6, d)
    gen[..., 0] = 1.0
    real = gen.clone()
    real[0, [0, 2, 3, 5], 0] = -1.0  # tokens 1 and 4 tie (cosine 1): levels 4 and 1
    real[1, :, 0] = 0.0
    real[1, :, 1] = 1.0
    real[1, [2, 5], 0] = 1.0  # tokens 2 and 5 tie at cos 1/sqrt(2), below the exact-copy rule: levels 3 and 0
    released = _released_level(real, gen)
    assert released.tolist() == [4.0, 3.0]
    with torch.no_grad():
        out = model.pair_from_embeddings(F.normalize(gen, dim=-1).flatten(1) / math.sqrt(6),
                                         F.normalize(real, dim=-1).flatten(1) / math.sqrt(6))
    torch.testing.assert_close(out["level"], released)


def test_regression_variant_predicts_a_scalar() -> None:
    model = PDFEmbedding.from_variant("tiny", target="regression").eval()
    with torch.no_grad():
        out = model.predict_batch({"generated": torch.randn(3, 3, 32, 32), "real": torch.randn(3, 3, 32, 32)})
    assert set(out) == {"level", "similarity"} and out["level"].shape == (3,)
    assert ((out["level"] >= 0) & (out["level"] <= 5)).all()


def test_fixed_temperature_is_not_learnt() -> None:
    learnt = PDFEmbedding.from_variant("tiny")
    fixed = PDFEmbedding.from_variant("tiny", learn_temperature=False, temperature=0.1)
    assert any(n == "net.log_scale" for n, _ in learnt.named_parameters())
    assert all(n != "net.log_scale" for n, _ in fixed.named_parameters())
    assert math.isclose(float(fixed.net.log_scale.exp()), 10.0, rel_tol=1e-6)


# ----------------------------------------------------------------- released checkpoints
def reference_forward(state: dict[str, torch.Tensor], images: torch.Tensor, depth: int, heads: int,
                      patch: int) -> torch.Tensor:
    """DeiT with a (1, 5, D) dist token, written out from the released tensors alone: tokens 0..5."""
    def w(name: str) -> torch.Tensor:
        return state[PREFIX + name]

    x = F.conv2d(images, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=patch)
    x = x.flatten(2).transpose(1, 2)
    b, _, d = x.shape
    x = torch.cat([w("cls_token").expand(b, -1, -1), w("dist_token").expand(b, -1, -1), x], dim=1) + w("pos_embed")

    def norm(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(t, (d,), w(f"{name}.weight"), w(f"{name}.bias"), eps=1e-6)

    for i in range(depth):
        p = f"blocks.{i}."
        h = norm(x, p + "norm1")
        qkv = F.linear(h, w(p + "attn.qkv.weight"), w(p + "attn.qkv.bias")).reshape(b, -1, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, -1, d)
        x = x + F.linear(h, w(p + "attn.proj.weight"), w(p + "attn.proj.bias"))
        h = F.gelu(F.linear(norm(x, p + "norm2"), w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias")))
        x = x + F.linear(h, w(p + "mlp.fc2.weight"), w(p + "mlp.fc2.bias"))
    return norm(x, "norm")[:, :6]


def released_layout(embed_dim: int, depth: int, patch: int, img: int, classes: int = 1000) -> dict[str, tuple]:
    """Key -> shape of a released checkpoint, written from the DeiT architecture, not from the model."""
    d, n = embed_dim, (img // patch) ** 2
    layout = {"cls_token": (1, 1, d), "dist_token": (1, 5, d), "pos_embed": (1, n + 6, d),
              "patch_embed.proj.weight": (d, 3, patch, patch), "patch_embed.proj.bias": (d,)}
    for i in range(depth):
        p = f"blocks.{i}."
        layout.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "attn.qkv.weight": (3 * d, d),
                       p + "attn.qkv.bias": (3 * d,), p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                       p + "norm2.weight": (d,), p + "norm2.bias": (d,), p + "mlp.fc1.weight": (4 * d, d),
                       p + "mlp.fc1.bias": (4 * d,), p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
    layout.update({"norm.weight": (d,), "norm.bias": (d,), "head.weight": (classes, d), "head.bias": (classes,)})
    return {PREFIX + k: v for k, v in layout.items()}


def random_released_state(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=gen) * 0.1 for k, shape in layout.items()}
    for key in state:
        if "norm" in key and key.endswith("weight"):
            state[key] = 1 + state[key]
    return state


def test_deit_b_released_layout_matches_exactly() -> None:
    with torch.device("meta"):
        net = PDFEmbeddingNet()
    ours = {released_key(k): tuple(v.shape) for k, v in net.vit.state_dict().items()}
    assert ours == released_layout(768, 12, 16, 224)
    assert ours[PREFIX + "pos_embed"] == (1, 202, 768) and ours[PREFIX + "dist_token"] == (1, 5, 768)
    meta_state = {k: torch.empty(s, device="meta") for k, s in released_layout(768, 12, 16, 224).items()}
    assert set(map_released_state(meta_state, net.vit, "x")) == set(net.vit.state_dict())


@pytest.mark.parametrize("wrapped", [True, False])
def test_convert_released_matches_reference(tmp_path: Path, wrapped: bool) -> None:
    state = random_released_state(released_layout(32, 2, 8, 32))
    path = tmp_path / "vit_gauss_760.pth.tar"
    torch.save({"state_dict": state, "epoch": 3} if wrapped else state, path)
    model = PDFEmbedding.convert_released(path, **TINY_VIT, level_from="argmax")
    images = torch.randn(2, 3, 32, 32)
    reals = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.net.tokens(images)
        ref = reference_forward(state, images, depth=2, heads=2, patch=8)
        torch.testing.assert_close(tokens, ref, atol=1e-4, rtol=1e-4)
        ref_cos = F.cosine_similarity(ref, reference_forward(state, reals, depth=2, heads=2, patch=8), dim=-1)
        pred = model.predict_batch({"generated": images, "real": reals})
        torch.testing.assert_close(pred["pdf"], torch.softmax(ref_cos / 0.05, 1).flip(1), atol=1e-4, rtol=1e-4)
    # and converts to the zoo's safetensors form, losslessly
    folder = model.save_pretrained(tmp_path / "zoo")
    assert (folder / "model.safetensors").is_file()
    again = ZooModule.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(again.predict_batch({"generated": images, "real": reals})["pdf"], pred["pdf"])


def test_convert_released_names_the_first_mismatch(tmp_path: Path) -> None:
    layout = released_layout(32, 2, 8, 32)
    cases = {
        "missing key 'module.base.0.dist_token'": lambda s: s.pop(PREFIX + "dist_token"),
        "key 'module.base.0.pos_embed' has shape": lambda s: s.__setitem__(PREFIX + "pos_embed", torch.zeros(1, 17, 32)),
        "unexpected key 'module.base.0.blocks.2.norm1.weight'": lambda s: s.__setitem__(
            PREFIX + "blocks.2.norm1.weight", torch.zeros(32)),
        "missing key 'module.base.0.cls_token'": lambda s: [s.__setitem__(k[len("module."):], s.pop(k)) for k in list(s)],
    }
    for i, (message, spoil) in enumerate(cases.items()):
        state = random_released_state(layout)
        spoil(state)
        path = tmp_path / f"bad{i}.pth.tar"
        torch.save(state, path)
        with pytest.raises(ZooError, match=message.replace("(", r"\(")):
            PDFEmbedding.convert_released(path, **TINY_VIT)
    torch.save([1, 2], tmp_path / "list.pth.tar")
    with pytest.raises(ZooError, match="not a state dict"):
        PDFEmbedding.convert_released(tmp_path / "list.pth.tar", **TINY_VIT)
    with pytest.raises(ZooError, match="not found"):
        PDFEmbedding.convert_released(tmp_path / "absent.pth.tar")


# ----------------------------------------------------------------- training and evaluation end to end
def assert_metrics(results: list[dict[str, float]]) -> None:
    for name in ("pcc", "rd", "muap", "auroc"):
        assert math.isfinite(results[0][f"test/{name}"]), results


def test_cli_fit_and_test_on_the_mini_set(tmp_path: Path) -> None:
    config = ROOT / "configs" / "pdf_embedding" / "mini_gaussian.yaml"
    common = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    assert cli.main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1", *common]) == 0
    exports = list(tmp_path.rglob("zoo/config.json"))
    assert len(exports) == 1
    assert json.loads(exports[0].read_text())["name"] == "PDFEmbedding"
    assert cli.main(["test", "--config", str(config), "--ckpt_path", str(exports[0].parent),
                     "--trainer.default_root_dir", str(tmp_path / "test"), *common]) == 0


@pytest.mark.parametrize("target", VARIANTS)
def test_every_variant_trains_and_tests(target: str) -> None:
    torch.manual_seed(0)
    model = PDFEmbedding.from_variant("tiny", target=target)
    data = MiniCopyDetection()
    # a few steps: the full tiny_trainer schedule is the mini benchmark's job
    trainer = fast_trainer(max_steps=4, limit_val_batches=1)
    trainer.fit(model, data)
    assert trainer.global_step == 4
    assert data.transform is not None and data.dataset("test")[0]["generated"].shape == (3, 32, 32)
    results = trainer.test(model, data, verbose=False)
    assert_metrics(results)
    # the D-Rep parquet layout, read by the real-data datamodule
    drep = mini.ensure("copy_detection") / "drep"
    parquet = DRepParquet(train=str(drep / "train.parquet"), test=str(drep / "test.parquet"), batch_size=16)
    trainer = fast_trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(model, parquet)
    assert trainer.global_step == 2
    assert_metrics(trainer.test(model, parquet, verbose=False))


def test_bad_parquet_fixture_names_the_row(tmp_path: Path) -> None:
    frame = pd.read_parquet(mini.ensure("copy_detection") / "drep" / "test.parquet").head(4)
    bad_level = frame.copy()
    bad_level.loc[2, "Level"] = 7
    bad_level.to_parquet(tmp_path / "level.parquet", index=False)
    missing = frame.copy()
    missing["real_images"] = [c if i != 1 else {"bytes": None, "path": None} for i, c in enumerate(missing.real_images)]
    missing.to_parquet(tmp_path / "missing.parquet", index=False)
    model = PDFEmbedding.from_variant("tiny")
    for name, message in (("level", r"row 2 .*level 7"), ("missing", r"row 1 .*missing image in column 'real_images'")):
        data = DRepParquet(test=str(tmp_path / f"{name}.parquet"))
        with pytest.raises(ZooError, match=message):
            fast_trainer().test(model, data, verbose=False)


# ----------------------------------------------------------------- perf script (CPU path)
def test_perf_script_runs_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "perf.json"
    monkeypatch.setattr(sys, "argv", ["pdf_embedding.py", "--out", str(out), "--batch-size", "8", "--iters", "1"])
    runpy.run_path(str(ROOT / "benchmarks" / "perf" / "pdf_embedding.py"), run_name="__main__")
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert result["benchmark"] == "pdf_embedding_extraction" and result["device"] == "cpu"
    assert figures["images_per_s_batched"] > 0 and figures["images_per_s_fp32_batch1"] > 0
    assert math.isclose(result["ratio"], figures["images_per_s_batched"] / figures["images_per_s_fp32_batch1"])
    # the CPU of a shared machine gives noisy rates, so MFU is checked for its definition, not its size
    assert math.isclose(result["mfu"], figures["model_tflops"] / figures["matmul_peak_tflops"])
    assert result["mfu"] > 0 and figures["gflops_per_image"] > 0
    assert result["targets"] == {"mfu": 0.45, "ratio": 50.0}


def test_init_from_a_single_token_pretrained_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from zoo import backbones

    torch.manual_seed(0)
    source = VisionTransformer(**TINY_VIT, num_classes=1000)  # one class token, 1 + 16 positions
    calls = []

    def create_model(name: str, pretrained: bool = False, **kwargs):  # stands in for the download
        calls.append((name, pretrained))
        return source

    monkeypatch.setattr(timm, "create_model", create_model)
    model = PDFEmbedding(encoder="deit_tiny_stand_in", pretrained=True, **TINY_VIT)
    assert calls == [("deit_tiny_stand_in", True)]
    vit, src = model.net.vit.state_dict(), source.state_dict()
    torch.testing.assert_close(vit["blocks.1.mlp.fc2.weight"], src["blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(vit["cls_token"], src["cls_token"])
    torch.testing.assert_close(vit["pos_embed"][:, 6:], src["pos_embed"][:, 1:])
    torch.testing.assert_close(vit["pos_embed"][:, 1:6], src["pos_embed"][:, :1].expand(-1, 5, -1))
    # as released: the five extra tokens are new, truncated-normal(0.02) parameters, not copies of the class token
    assert 0.01 < float(vit["reg_token"].std()) < 0.03 and float(vit["reg_token"].abs().max()) < 0.1
    assert len({tuple(t.tolist()) for t in vit["reg_token"][0]}) == 5
    with backbones.no_pretrained_download():
        PDFEmbedding(encoder="deit_tiny_stand_in", pretrained=True, **TINY_VIT)
    assert len(calls) == 1


def test_released_sizes_and_constants_are_the_defaults() -> None:
    """Rows "encoder" (DeiT-B/16 at 224, dist_token (1, 5, 768), 6 + 196 positions, LayerNorm eps 1e-6), "drop path"
    (0.1), "PDF" (temperature 0.05) and "training" (σ 0.1, k 3, β 0.1, AdamW 5e-5, wd 0.05): the zoo's defaults."""
    import inspect

    with torch.device("meta"):
        net = PDFEmbeddingNet()
    vit = net.vit
    assert tuple(vit.reg_token.shape) == (1, 5, 768) and tuple(vit.cls_token.shape) == (1, 1, 768)
    assert tuple(vit.pos_embed.shape) == (1, 6 + 196, 768)
    assert vit.patch_embed.patch_size == (16, 16) and vit.patch_embed.img_size == (224, 224)
    assert len(vit.blocks) == 12 and vit.blocks[0].attn.num_heads == 12
    assert vit.norm.eps == 1e-6 and vit.blocks[0].norm1.eps == 1e-6
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    defaults = {k: v.default for k, v in inspect.signature(PDFEmbedding).parameters.items()}
    assert (defaults["img_size"], defaults["temperature"], defaults["drop_path_rate"]) == (224, 0.05, 0.1)
    assert (defaults["sigma"], defaults["k"], defaults["beta"]) == (0.1, 3.0, 0.1)
    assert (defaults["lr"], defaults["weight_decay"], defaults["encoder"]) == (5e-5, 0.05, "deit_base_patch16_224.fb_in1k")
    optimiser = PDFEmbedding.from_variant("tiny", lr=5e-5, weight_decay=0.05).configure_optimizers()
    assert isinstance(optimiser, torch.optim.AdamW)
    assert (optimiser.defaults["lr"], optimiser.defaults["weight_decay"]) == (5e-5, 0.05)
