"""Verdicts a user can trust: no silent untrained model, the same rows on a second run, one meaning per word,
and a Python API that checks its input."""

from __future__ import annotations

import io
import sys

import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as photos

from zoo import registry
from zoo.backbones import Encoder
from zoo.cli import main
from zoo.errors import ZooError
from zoo.module import ZooModule


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name in ("astronaut", "coffee", "rocket"):
        Image.fromarray(getattr(photos, name)()).resize((96, 80)).save(root / f"{name}.png")
    return root


def _predict(capsys, *args):
    code = main(["predict", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", ["PDFEmbedding", "CNNDetector"])
def test_predict_refuses_an_untrained_model_without_untrained(name, images, tmp_path, capsys):
    cls = registry.methods.load(name)
    inputs = [str(images / "astronaut.png"), str(images / "coffee.png")]
    code, err = _predict(capsys, "--model", name, "--variant", "tiny", "--inputs", *inputs,
                         "--output", str(tmp_path / "out.csv"))
    mini = {"copy_detection": "MiniCopyDetection", "fake_detection": "MiniFakeDetection"}[cls.task]
    assert code != 0 and err.startswith("zoo: error: ") and err.count("\n") == 1, err
    assert f"zoo fit --model {name} --variant tiny --data {mini}" in err and "--untrained" in err
    assert not (tmp_path / "out.csv").exists()


def test_untrained_on_purpose_says_so_in_every_row(images, tmp_path, capsys):
    out = tmp_path / "out.csv"
    code, err = _predict(capsys, "--model", "CNNDetector", "--variant", "tiny", "--untrained", "--inputs",
                         str(images), "--output", str(out))
    assert code == 0 and "not trained (--untrained)" in err
    frame = pd.read_csv(out)
    assert len(frame) == 3 and frame["untrained"].tolist() == [True] * 3
    # its threshold is the default, not calibrated: no decision is stated, and every row says why
    assert frame["uncalibrated"].tolist() == [True] * 3
    assert frame["decision"].isna().all() and frame["verdict"].isna().all() and frame["score"].notna().all()
    assert "rows state no decision and say uncalibrated = true" in err


def test_an_unfitted_level_map_is_said_in_every_row_and_a_fitted_one_is_not(images, tmp_path, capsys):
    """DescriptorSimilarity's unfitted map is 5 * clamp(cosine): unrelated photographs get level 4+."""
    inputs = [str(images / "astronaut.png"), str(images / "coffee.png")]
    code, err = _predict(capsys, "--model", "DescriptorSimilarity", "--variant", "tiny", "--inputs", *inputs,
                         "--output", str(tmp_path / "unfitted.csv"))
    assert code == 0 and "levels come from the unfitted default map" in err
    assert pd.read_csv(tmp_path / "unfitted.csv")["uncalibrated"].tolist() == [True]
    # the README's road: zoo fit calibrates the map on the mini set and exports it
    assert main(["fit", "--model", "DescriptorSimilarity", "--variant", "tiny", "--data", "MiniCopyDetection",
                 "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    code, err = _predict(capsys, "--ckpt_path", str(tmp_path / "run"), "--inputs", *inputs,
                         "--output", str(tmp_path / "fitted.csv"))
    assert code == 0 and "uncalibrated" not in err
    assert "uncalibrated" not in pd.read_csv(tmp_path / "fitted.csv").columns


def test_methods_with_nothing_to_train_run_without_untrained(images, tmp_path, capsys):
    out = tmp_path / "out.csv"
    inputs = [str(images / "astronaut.png"), str(images / "coffee.png")]
    code, _ = _predict(capsys, "--model", "DescriptorSimilarity", "--variant", "tiny", "--inputs", *inputs,
                       "--output", str(out))
    assert code == 0 and "untrained" not in pd.read_csv(out).columns  # its unfitted level map: uncalibrated
    code, err = _predict(capsys, "--model", "DescriptorSimilarity", "--variant", "tiny", "--untrained", "--inputs",
                         *inputs)
    assert code != 0 and "nothing to train" in err


@pytest.mark.parametrize(("name", "extra"), [("PDFEmbedding", ["--untrained"]), ("DescriptorSimilarity", []),
                                             ("CLIPMLP", ["--untrained"])])
def test_a_second_run_gives_the_same_rows(name, extra, images, tmp_path, capsys):
    """Random-init weights are seeded: the same command gives the same rows, in a process whose state moved on."""
    task = registry.methods.load(name).task
    inputs = [str(images / "astronaut.png"), str(images / "coffee.png")] if task == "copy_detection" else [
        str(images)]
    runs = []
    for i in range(2):
        torch.manual_seed(100 + i)  # whatever the global random state, the rows are the same
        out = tmp_path / f"run{i}.csv"
        assert main(["predict", "--model", name, "--variant", "tiny", *extra, "--inputs", *inputs,
                     "--output", str(out)]) == 0
        runs.append(out.read_text())
    assert runs[0] == runs[1]


def test_the_tiny_clip_is_one_model_and_leaves_the_global_state(capfd):
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    a = Encoder("open_clip:zoo-tiny-clip", pretrained=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(2)
    b = Encoder("open_clip:zoo-tiny-clip", pretrained=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert "No pretrained weights loaded" not in "".join(capfd.readouterr())


def test_no_weights_warning_when_a_checkpoint_is_loaded(tmp_path, capfd, caplog):
    registry.methods.load("CLIPMLP").from_variant("tiny").save_pretrained(tmp_path / "ckpt")
    capfd.readouterr()
    ZooModule.from_pretrained(tmp_path / "ckpt")
    seen = "".join(capfd.readouterr()) + caplog.text
    assert "No pretrained weights loaded" not in seen


def test_fake_detection_threshold_is_a_probability_with_its_logit_beside(images, tmp_path, capsys):
    model = registry.methods.load("CNNDetector").from_variant("tiny")
    model.threshold.fill_(-1.17)  # a calibrated logit threshold
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "fake.csv"
    assert main(["predict", "--ckpt_path", str(tmp_path / "ckpt"), "--inputs", str(images),
                 "--output", str(out)]) == 0
    frame = pd.read_csv(out)
    assert frame["threshold_logit"].tolist() == pytest.approx([-1.17] * 3)
    assert frame["threshold"].tolist() == pytest.approx([float(torch.sigmoid(torch.tensor(-1.17)))] * 3)
    assert (frame["verdict"] == "generated").tolist() == (frame["logit"] >= -1.17).tolist()


def test_model_call_runs_without_gradients_and_checks_its_input(images):
    model = registry.methods.load("CNNDetector").from_variant("tiny").eval()
    x = model.preprocess([str(images / "astronaut.png"), Image.open(images / "coffee.png")])
    out = model({"image": x, "id": ["a", "b"]})
    assert out["score"].shape == (2,) and out["score"].grad_fn is None and not out["score"].requires_grad
    out["score"] += 1  # a plain tensor, not an inference tensor
    pixels = torch.from_numpy(photos.astronaut()[:64, :64]).permute(2, 0, 1)[None].float()  # 0-255
    pixels = torch.nn.functional.interpolate(pixels, size=x.shape[-2:])
    with pytest.raises(ZooError, match=r"model\.preprocess"):
        model({"image": pixels, "id": ["a"]})
    copies = registry.methods.load("PDFEmbedding").from_variant("tiny").eval()
    g = copies.preprocess(str(images / "astronaut.png"))
    assert copies({"generated": g, "real": g.clone(), "id": ["p"]})["exact_copy"].tolist() == [1]
    with pytest.raises(ZooError, match="'real' holds values"):
        copies({"generated": g, "real": g * 255, "id": ["p"]})


# ----------------------------------------------------------------- the README's rows come from tools/readme_rows.py
def _readme_rows_tool():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("readme_rows", Path(__file__).parents[1] / "tools" / "readme_rows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_rows"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_every_readme_block_shows_its_commands_and_one_row_per_input():
    tool = _readme_rows_tool()
    text = tool.README.read_text()
    for name, block in tool.BLOCKS.items():
        tool.check_commands(text, name)
        frame = pd.read_csv(io.StringIO(tool.readme_rows(text, name)))
        assert len(frame) == block.inputs and frame.columns[-1] == "error", name
        first = "generated" if name == "copy_detection" else "path"
        assert frame.columns[0] == first and frame[first].notna().all(), name
        if name == "copy_detection":
            assert frame["exact_copy"].tolist() == [1, 0, 0] and frame["level"][0] == 5
        else:
            assert frame["error"].notna().tolist() == [False, True, False, False], name


def test_the_readme_attribution_rows_are_what_its_command_gives(tmp_path):
    """End to end for one block: the printed command, run on the same inputs, writes the README's rows."""
    tool = _readme_rows_tool()
    tool.write_inputs(tmp_path)
    block = tool.BLOCKS["attribution"]
    tool.run(block.predict, tmp_path)
    assert (tmp_path / block.output).read_text() == tool.readme_rows(tool.README.read_text(), "attribution")
