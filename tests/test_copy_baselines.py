"""The protocol-driven copy-detection baselines: SSCD and off-the-shelf descriptors with a level map."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import fast_trainer
from zoo_copy_baselines.lightning_model import _ordered_train_loader
from zoo_copy_baselines.torch_model import (
    LevelMapping,
    ScoreNormaliser,
    entropy_loss,
    gem,
    info_nce_loss,
)

from zoo import registry
from zoo.errors import ZooError
from zoo.module import ZooModule

METRICS = {"pcc", "rd", "muap", "auroc"}


def mini_data():
    return registry.datamodules.load("MiniCopyDetection")()


@pytest.fixture(scope="module")
def fitted():
    """Each method of the plugin, fitted as the benchmark does (fit if it trains, else validate), then tested."""
    out = {}
    for name in ("SSCD", "DescriptorSimilarity"):
        cls = registry.load_method(name)
        torch.manual_seed(0)
        model, data = cls.from_variant("tiny"), mini_data()
        trainer = fast_trainer(**cls.tiny_trainer)
        if cls.trains:
            trainer.fit(model, datamodule=data)
        else:
            trainer.validate(model, datamodule=data)
        results = trainer.test(model, datamodule=data)[0]
        out[name] = (model, data, results)
    return out


def test_gem_on_known_input():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert gem(x, p=3.0).item() == pytest.approx(((1 + 8 + 27 + 64) / 4) ** (1 / 3), rel=1e-6)
    assert gem(x, p=1.0).item() == pytest.approx(2.5, rel=1e-6)  # p = 1: average pooling
    assert 0.98 < gem(x / 4, p=100.0).item() <= 1.0  # large p tends to max pooling (max of x / 4 is 1)
    assert gem(-x, p=3.0).item() == pytest.approx(1e-6, rel=1e-3)  # negatives are clamped, as GeM needs x > 0


def test_entropy_regulariser_prefers_spread_descriptors():
    torch.manual_seed(0)
    ids = torch.arange(8).repeat(2)
    spread = torch.eye(16)  # every descriptor orthogonal to every other
    collapsed = F.normalize(torch.ones(16, 16) + 0.01 * torch.randn(16, 16), dim=1)
    assert entropy_loss(spread, ids) < entropy_loss(collapsed, ids)
    # and InfoNCE: views of one image that agree beat views that do not
    base = F.normalize(torch.randn(8, 32), dim=1)
    aligned = torch.cat([base, base])
    shuffled = torch.cat([base, base[torch.roll(torch.arange(8), 1)]])
    assert info_nce_loss(aligned, ids, 0.05) < info_nce_loss(shuffled, ids, 0.05)
    assert math.isfinite(float(entropy_loss(torch.cat([base, base]), ids)))  # duplicates stay finite


@pytest.mark.parametrize("method", ["isotonic", "binned"])
def test_level_mapping_is_monotone_and_follows_the_data(method):
    torch.manual_seed(0)
    levels = torch.randint(0, 6, (500,))
    scores = levels / 5 + 0.15 * torch.randn(500)  # noisy but increasing with the level
    mapping = LevelMapping(method, bins=12, max_knots=32)
    assert not bool(mapping.fitted)
    mapping.fit(scores, levels)
    assert bool(mapping.fitted)
    grid = mapping(torch.linspace(-1.0, 2.0, 1001))
    assert torch.all(grid[1:] >= grid[:-1] - 1e-6)
    assert grid.min() >= 0 and grid.max() <= 5
    assert grid[0] < 1.0 and grid[-1] > 4.0
    # the fit tracks the levels: Pearson correlation of the mapped scores with the truth is high
    mapped = mapping(scores)
    assert torch.corrcoef(torch.stack([mapped, levels.float()]))[0, 1] > 0.8
    with pytest.raises(ZooError, match="mapping"):
        LevelMapping("spline")


def test_score_normalisation_subtracts_mean_of_nearest_background():
    normaliser = ScoreNormaliser(dim=2, size=4, k=2, beta=0.5)
    query = torch.tensor([[1.0, 0.0]])
    scores = torch.tensor([0.9])
    assert torch.equal(normaliser(query, scores), scores)  # empty background: unchanged
    background = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]])
    keep = normaliser.set_background(background)  # 5 rows, capacity 4: a seeded subset
    assert len(keep) == 4 and int(normaliser.count) == 4
    sims = (background[keep] @ query.T).squeeze(1)
    expected = 0.9 - 0.5 * sims.topk(2).values.mean()
    assert normaliser(query, scores).item() == pytest.approx(float(expected))
    # excluding the nearest background row moves the subtracted mean down to the next neighbours
    nearest = int(sims.argmax())
    rest = torch.cat([sims[:nearest], sims[nearest + 1:]])
    excluded = normaliser(query, scores, torch.tensor([nearest]))
    assert excluded.item() == pytest.approx(float(0.9 - 0.5 * rest.topk(2).values.mean()))


def test_sscd_tiny_trains_without_labels():
    cls = registry.load_method("SSCD")
    torch.manual_seed(0)
    model = cls.from_variant("tiny")
    batch = {"generated": torch.randn(4, 3, 64, 64), "real": torch.randn(4, 3, 64, 64),
             "level": torch.tensor([0, 1, 4, 5]), "id": list("abcd")}
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        parts = model.sscd_loss(torch.cat([batch["generated"], batch["real"]]))
        assert all(math.isfinite(float(v.detach())) for v in parts.values())
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(float(parts["loss"].detach()))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the descriptor loss never sees the levels: other levels, same augmentation seed, same loss
    model.log_dict = lambda *args, **kwargs: None  # no Trainer to log to
    for levels in (torch.tensor([0, 1, 4, 5]), torch.tensor([5, 5, 0, 0])):
        model._generator.manual_seed(7)
        loss = model.training_step({**batch, "level": levels}, 0)
        losses.append(float(loss.detach()))
    assert losses[-1] == losses[-2]


def test_sscd_fit_without_validation_still_ends_with_a_fitted_map():
    cls = registry.load_method("SSCD")
    torch.manual_seed(0)
    model = cls.from_variant("tiny")
    fast_trainer(max_steps=2, limit_val_batches=0).fit(model, datamodule=mini_data())
    assert bool(model.level_map.fitted) and not model._stale


@pytest.mark.parametrize("name", ["SSCD", "DescriptorSimilarity"])
def test_fit_and_test_on_mini_report_the_protocol_metrics(fitted, name):
    model, _, results = fitted[name]
    assert {f"test/{k}" for k in METRICS} <= set(results)
    assert all(math.isfinite(v) for v in results.values())
    assert bool(model.level_map.fitted)
    # the mini ladder's levels are recoverable from pixel similarity even at random init
    assert results["test/pcc"] > 0.3


@pytest.mark.parametrize("name", ["SSCD", "DescriptorSimilarity"])
def test_level_map_is_fitted_on_train_only(fitted, name):
    model, data, _ = fitted[name]
    fitted_x = model.level_map.knots_x.clone()
    fitted_y = model.level_map.knots_y.clone()
    model.fit_level_mapping(_ordered_train_loader(data))
    assert torch.equal(model.level_map.knots_x, fitted_x) and torch.equal(model.level_map.knots_y, fitted_y)
    model.fit_level_mapping(data.val_dataloader())
    assert not torch.equal(model.level_map.knots_y, fitted_y)
    model.level_map.knots_x.copy_(fitted_x)  # leave the fixture as it was
    model.level_map.knots_y.copy_(fitted_y)


@pytest.mark.parametrize("name", ["SSCD", "DescriptorSimilarity"])
def test_embed_and_pair_from_embeddings_agree_with_predict_batch(fitted, name):
    model, data, _ = fitted[name]
    model.eval()
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        gen, real = model.embed(batch["generated"]), model.embed(batch["real"])
        pred = model.predict_batch(batch)
        again = model.pair_from_embeddings(gen, real)
    assert gen.shape == real.shape and gen.dim() == 2
    assert torch.allclose(gen.norm(dim=1), torch.ones(len(gen)), atol=1e-5)
    assert torch.allclose(pred["level"], again["level"], atol=1e-6)
    assert torch.allclose(again["similarity"], (gen * real).sum(1), atol=1e-6)  # no normalisation in tiny
    assert pred["level"].min() >= 0 and pred["level"].max() <= 5


@pytest.mark.parametrize("name", ["SSCD", "DescriptorSimilarity"])
def test_save_and_load_give_identical_predictions(fitted, name, tmp_path):
    model, data, _ = fitted[name]
    model.eval()
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        before = model.predict_batch(batch)
    loaded = ZooModule.from_pretrained(model.save_pretrained(tmp_path / name))
    assert type(loaded) is type(model) and bool(loaded.level_map.fitted)
    assert torch.equal(loaded.level_map.knots_x, model.level_map.knots_x)
    with torch.no_grad():
        after = loaded.predict_batch(batch)
    assert torch.equal(before["level"], after["level"])
    assert torch.equal(before["similarity"], after["similarity"])


def test_score_normalisation_in_the_method_changes_scores_as_expected():
    cls = registry.load_method("DescriptorSimilarity")
    torch.manual_seed(0)
    model = cls.from_variant("tiny", score_norm_k=3, mapping="binned", bins=8)
    data = mini_data()
    data.transform = model.image_transform()
    model.fit_level_mapping(_ordered_train_loader(data))
    train_size = data.sizes()["train"]
    assert int(model.normaliser.count) == min(train_size, 256)
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        gen, real = model.embed(batch["generated"]), model.embed(batch["real"])
        scores = model.pair_from_embeddings(gen, real)["similarity"]
    background = model.normaliser.background[: int(model.normaliser.count)]
    expected = (gen * real).sum(1) - (gen @ background.T).topk(3, dim=1).values.mean(1)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert not torch.allclose(scores, (gen * real).sum(1))


class _GeM(torch.nn.Module):
    """sscd/models/gem_pooling.py GlobalGeMPool2d, written out."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class _ReleasedSSCD(torch.nn.Module):
    """sscd/models/model.py Model with a torchvision-layout trunk: GeM in place of avgpool, fc the projection."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x))


@pytest.mark.parametrize("kind", ["torchscript", "torchvision"])
def test_sscd_released_files_convert_without_running_their_code(tmp_path, monkeypatch, kind):
    import timm
    from zoo_copy_baselines.lightning_model import SSCD

    tiny = SSCD.variants["tiny"]
    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", num_classes=tiny["dim"], **tiny["encoder_kwargs"])
    backbone.global_pool = _GeM(3.0)
    released = _ReleasedSSCD(backbone).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in released.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"sscd_tiny.{kind}.pt"
    if kind == "torchscript":
        torch.jit.script(released).save(str(path))
    else:
        torch.save(released.state_dict(), path)

    def refuse(*args, **kwargs):
        raise AssertionError("the TorchScript code of a released file must never run")

    monkeypatch.setattr(torch.jit, "load", refuse)
    model = SSCD.convert_released(path, **tiny)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(images), released(images), atol=1e-5, rtol=1e-4)
    # a file of another trunk names the mismatching key
    with pytest.raises(ZooError, match="has shape"):
        SSCD.convert_released(path, **{**tiny, "dim": 16})
    with pytest.raises(ZooError, match="not SSCD's torchvision layout"):
        torch.save({"blocks.0.weight": torch.zeros(1)}, tmp_path / "classy.pt")
        SSCD.convert_released(tmp_path / "classy.pt", **tiny)


def test_loss_equals_sscd_released_formula():
    """sscd/train.py SSCD.loss, transcribed: InfoNCE with its 1e-6 in the partition, entropy x 30."""
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(12, 8), dim=1)
    ids = torch.arange(6).repeat(2)
    similarity = emb @ emb.T
    match = ids[:, None] == ids[None, :]
    identity = torch.eye(12, dtype=torch.bool)
    non_matches, nontrivial = ~match, match & ~identity
    max_non_match = torch.where(non_matches, similarity, torch.tensor(-100.0)).max(dim=1, keepdim=True).values
    logits = (similarity / 0.05).exp()
    partitions = logits + ((non_matches * logits).sum(dim=1) + 1e-6).unsqueeze(1)
    infonce = (-(logits / partitions).log() * nontrivial).sum() / 12
    entropy = -(2 - 2 * max_non_match).clamp(min=1e-6).sqrt().log().mean()
    torch.testing.assert_close(info_nce_loss(emb, ids, 0.05), infonce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy_loss(emb, ids), entropy, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
def test_augmentations_row_colour_jitter_is_torchvisions_in_each_order(order):
    """SSCD table, row "augmentations": brightness, contrast and saturation as torchvision's ``adjust_*``
    (sscd/transforms/settings.py ``STRONG_BLUR`` uses ``ColorJitter``), applied in the order given."""
    from torchvision.transforms.v2 import functional as TF
    from zoo_copy_baselines.torch_model import color_jitter

    torch.manual_seed(0)
    x = torch.rand(1, 3, 24, 24)
    factors = torch.tensor([1.7, 0.4, 1.6]).view(3, 1, 1, 1, 1)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    expected = x
    for op in order:
        expected = adjust[op](expected, float(factors[op]))
    got = color_jitter(x, factors, torch.tensor([order]))
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # grey weights 0.299 (PIL) vs 0.2989


def test_augmentations_row_jitter_order_is_drawn_per_image(monkeypatch):
    """SSCD table, row "augmentations": torchvision's ColorJitter permutes its operations on every call."""
    import zoo_copy_baselines.torch_model as tm

    orders = []
    real = tm.color_jitter
    monkeypatch.setattr(tm, "color_jitter", lambda x, factors, order: orders.append(order) or real(x, factors, order))
    tm.augment(torch.rand(64, 3, 16, 16), torch.zeros(3), torch.ones(3), torch.Generator().manual_seed(0))
    (order,) = orders
    assert all(sorted(row.tolist()) == [0, 1, 2] for row in order)
    assert len({tuple(row.tolist()) for row in order}) == 6  # every order occurs among 64 images


def test_augmentations_row_and_recipe_rows_state_the_zoos_values():
    """SSCD table, rows "augmentations", "pooling", "InfoNCE", "entropy regulariser", "optimiser", "schedule",
    "score normalisation": the numbers the rows state."""
    import inspect

    from zoo_copy_baselines.lightning_model import SSCD
    from zoo_copy_baselines.torch_model import augment

    views = inspect.signature(augment).parameters
    assert views["crop_scale"].default == (0.08, 1.0)  # RandomResizedCrop's default scale
    assert (views["jitter"].default, views["jitter_prob"].default) == (0.8, 0.8)
    assert (views["gray_prob"].default, views["blur_prob"].default, views["flip_prob"].default) == (0.2, 0.5, 0.5)
    assert views["blur_range"].default == (1.0, 5.0)
    recipe = inspect.signature(SSCD).parameters
    assert recipe["gem_p"].default == 3.0 and recipe["dim"].default == 512
    assert recipe["temperature"].default == 0.05 and recipe["entropy_weight"].default == 30.0
    assert recipe["base_lr"].default == 0.3 and recipe["momentum"].default == 0.9
    assert recipe["warmup_fraction"].default == 0.05 and recipe["score_norm_beta"].default == 1.0
    assert SSCD.variants["resnet50_score_norm"]["score_norm_k"] == 3
