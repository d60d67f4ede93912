"""ZooModule: checks, calibration, save/load without pickle, .ckpt conversion."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import fast_trainer
from safetensors.torch import load_file, save_file

from zoo import registry
from zoo.checkpoint import FORMAT_VERSION, convert_checkpoint, load_folder, read_config
from zoo.data.mini_datamodules import MiniCopyDetection, MiniFakeDetection
from zoo.errors import ZooError
from zoo.module import ZooModule


@pytest.fixture
def detector(example_plugin):
    torch.manual_seed(0)
    return registry.methods.load("ImageStatsDetector").from_variant("tiny")


def _scores(model, datamodule):
    model.eval()
    with torch.no_grad():
        return torch.cat([model.predictions(b)["score"] for b in datamodule.test_dataloader()])


def test_fit_calibrates_the_threshold_on_validation(detector):
    dm = MiniFakeDetection()
    fast_trainer(max_epochs=2).fit(detector, dm)
    calibrated = float(detector.threshold)
    assert calibrated != ZooModule.default_threshold
    results = fast_trainer().test(detector, dm)[0]
    assert results["test/threshold"] == pytest.approx(calibrated)
    for key in ("test/acc", "test/auroc", "test/ap", "test/tpr_at_1fpr"):
        assert 0.0 <= results[key] <= 1.0


def test_save_and_load_give_identical_predictions(detector, tmp_path):
    dm = MiniFakeDetection()
    fast_trainer(max_epochs=1).fit(detector, dm)
    detector.save_pretrained(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["name"] == "ImageStatsDetector" and config["task"] == "fake_detection"
    assert config["init_args"] == {"lr": 0.05}
    loaded = ZooModule.from_pretrained(tmp_path / "export")
    assert type(loaded) is type(detector)
    assert torch.equal(_scores(detector, dm), _scores(loaded, dm))
    assert torch.equal(loaded.threshold, detector.threshold)


def test_loading_never_unpickles(detector, tmp_path, monkeypatch):
    detector.save_pretrained(tmp_path / "export")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called to load a zoo checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    assert isinstance(load_folder(tmp_path / "export"), ZooModule)


def test_wrong_checkpoint_names_the_first_mismatching_key(detector, tmp_path):
    folder = detector.save_pretrained(tmp_path / "export")
    state = load_file(str(folder / "model.safetensors"))
    state["head.weight"] = torch.zeros(1, 5)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ZooError, match=r"key 'head.weight' has shape \(1, 5\), the model expects \(1, 12\)"):
        ZooModule.from_pretrained(folder)
    del state["head.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ZooError, match="missing key 'head.weight'"):
        ZooModule.from_pretrained(folder)


def test_bad_config_json_is_reported(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ZooError, match="config.json is not valid JSON"):
        ZooModule.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"name": "NoSuchMethod", "init_args": {}}))
    with pytest.raises(ZooError, match="unknown method 'NoSuchMethod'"):
        ZooModule.from_pretrained(tmp_path)


def test_lightning_ckpt_converts_losslessly(detector, tmp_path):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(detector, MiniFakeDetection())
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = convert_checkpoint(ckpt, tmp_path / "converted")
    converted = load_file(str(folder / "model.safetensors"))
    original = detector.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    assert json.loads((folder / "config.json").read_text()) == detector.zoo_config()


def test_a_config_without_a_format_version_is_read_as_version_1(detector, tmp_path):
    """A config.json that names no format_version (hand-written, or older) has version 1's layout."""
    folder = detector.save_pretrained(tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("format_version") == FORMAT_VERSION == 1
    (folder / "config.json").write_text(json.dumps(config))
    assert read_config(folder / "config.json")["format_version"] == 1
    loaded = load_folder(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in detector.state_dict().items())


def test_a_newer_format_is_refused_with_one_line_on_every_road(detector, tmp_path):
    """A folder and a Lightning .ckpt written by a newer zoo are refused, never half-read."""
    import lightning.pytorch as pl

    folder = detector.save_pretrained(tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": FORMAT_VERSION + 1}))
    newer = f"was written by a newer provenance-zoo (format {FORMAT_VERSION + 1}); this one reads up to {FORMAT_VERSION}"
    with pytest.raises(ZooError, match=re.escape(newer)):
        load_folder(folder)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(detector, MiniFakeDetection())
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["zoo"]["format_version"] = FORMAT_VERSION + 1
    torch.save(checkpoint, ckpt)
    with pytest.raises(ZooError, match=re.escape(newer)):
        convert_checkpoint(ckpt, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_unknown_variant_and_task_mismatch(detector):
    with pytest.raises(ZooError, match="has no variant 'huge'"):
        type(detector).from_variant("huge")
    with pytest.raises(ZooError, match="is a fake_detection method but MiniCopyDetection gives copy_detection"):
        fast_trainer().test(detector, MiniCopyDetection())


def test_a_method_must_declare_a_valid_task():
    with pytest.raises(ZooError, match="must be one of"):
        type("Odd", (ZooModule,), {"task": "deepfakes"})


def test_a_method_deciding_by_its_own_rule_is_not_recalibrated(detector):
    own_rule = type("OwnRule", (type(detector),), {"calibrates_threshold": False})()
    fast_trainer(max_epochs=1).fit(own_rule, MiniFakeDetection())
    assert float(own_rule.threshold) == ZooModule.default_threshold
    assert "test/threshold" not in fast_trainer().test(own_rule, MiniFakeDetection())[0]


def test_fit_exports_the_best_checkpoint_not_the_last_epoch(tmp_path):
    """A run that early-stops or keeps its best checkpoint ships that checkpoint."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from safetensors.torch import load_file

    from zoo import registry
    from zoo.checkpoint import read_weights_only
    from zoo.cli.lightning import ExportOnFitEnd

    class FirstEpochIsBest(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.log("order", float(trainer.current_epoch))

    torch.manual_seed(0)
    model = registry.methods.load("CNNDetector").from_variant("tiny")
    data = registry.datamodules.load("MiniFakeDetection")(batch_size=8)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="order", mode="min", save_top_k=1)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                         logger=CSVLogger(tmp_path), callbacks=[FirstEpochIsBest(), best, ExportOnFitEnd()],
                         enable_progress_bar=False, enable_model_summary=False)
    last = None

    class KeepLast(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            nonlocal last
            last = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    trainer.callbacks.insert(0, KeepLast())
    trainer.fit(model, datamodule=data)
    assert "epoch=0" in best.best_model_path
    exported = load_file(str(tmp_path / "lightning_logs" / "version_0" / "zoo" / "model.safetensors"))
    first = read_weights_only(best.best_model_path)["state_dict"]
    assert all(torch.equal(exported[k], first[k]) for k in exported)
    assert any(not torch.equal(exported[k], last[k]) for k in exported), "the last epoch differs from the best"
