"""The use road: every method scores a user's own files, from the command line and from Python.

Like test_every_method, this names no method: each registered method is reached by its registry name,
its ``tiny`` variant and its task.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as photos

from zoo import registry
from zoo.cli import main
from zoo.errors import ZooError
from zoo.module import ZooModule
from zoo.tasks import get_task

METHODS = registry.methods.names()
GOOD = ["astronaut.png", "coffee.jpg", "rocket.webp", "sub/camera_gray.png", "sub/chelsea_rgba.png"]
BAD = {"broken.jpg": "truncated or corrupt", "dangling.png": "broken or looping symbolic link"}


@pytest.fixture(scope="module")
def own_images(tmp_path_factory):
    """A user's folder: PNG, JPEG, WebP, grayscale and RGBA photographs, a corrupt file, a dangling link, a note,
    and a hidden folder holding an image."""
    root = tmp_path_factory.mktemp("my-images")
    (root / "sub").mkdir()

    def small(array):
        return Image.fromarray(array).resize((96, 80))

    small(photos.astronaut()).save(root / "astronaut.png")
    small(photos.coffee()).save(root / "coffee.jpg", quality=90)
    small(photos.rocket()).save(root / "rocket.webp")
    small(photos.camera()).save(root / "sub" / "camera_gray.png")
    chelsea = small(photos.chelsea()).convert("RGBA")
    chelsea.putalpha(128)
    chelsea.save(root / "sub" / "chelsea_rgba.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    os.symlink(root / "gone.png", root / "dangling.png")
    (root / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()  # a hidden folder is skipped and counted, its images with it
    small(photos.astronaut()).save(root / ".cache" / "thumbnail.png")
    return root


@pytest.fixture(scope="module")
def pairs_csv(own_images):
    path = own_images / "pairs.csv"
    path.write_text("generated,real\nastronaut.png,astronaut.png\ncoffee.jpg,rocket.webp\n"
                    "sub/camera_gray.png,missing.png\n")
    return path


def tiny_checkpoint(name, folder):
    torch.manual_seed(0)
    return registry.methods.load(name).from_variant("tiny").save_pretrained(folder)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_scores_a_folder_of_own_images(name, own_images, pairs_csv, tmp_path, capsys):
    cls = registry.methods.load(name)
    ckpt = tiny_checkpoint(name, tmp_path / "ckpt")
    out = tmp_path / "predictions.csv"
    if cls.task == "copy_detection":
        assert main(["predict", "--ckpt_path", str(ckpt), "--pairs", str(pairs_csv), "--output", str(out)]) == 0
        frame = pd.read_csv(out)
        assert list(frame["generated"]) == [str(own_images / p) for p in ("astronaut.png", "coffee.jpg",
                                                                          "sub/camera_gray.png")]
        assert frame["error"].isna().tolist() == [True, True, False]
        assert "row 4" in frame["error"][2] and "missing.png" in frame["error"][2]
        assert frame["level"][:2].between(0, 5).all()
        if "pdf_0" in frame.columns:
            pdf = frame[[f"pdf_{k}" for k in range(6)]][:2].to_numpy()
            assert abs(pdf.sum(axis=1) - 1).max() < 1e-5
            assert frame["level_argmax"][:2].isin(range(6)).all()
        # exact copies are a property of pixels, reported by every copy-detection method: an image against itself
        assert frame["exact_copy"][:2].tolist() == [1, 0] and frame["level"][0] == 5
        for column in ("level_argmax", "level_expected"):  # read from the PDF, where the method gives one
            if column in frame.columns:
                assert frame[column][0] == 5, column
        assert "scored 2 of 3 inputs, 1 failed" in capsys.readouterr().err
        return
    assert main(["predict", "--ckpt_path", str(ckpt), "--inputs", str(own_images), "--output", str(out)]) == 0
    frame = pd.read_csv(out)
    expected = sorted([*GOOD, *BAD])
    assert list(frame["path"]) == [str(own_images / p) for p in expected], "one row per image, in order"
    for path, error in zip(expected, frame["error"], strict=True):
        if path in BAD:
            assert BAD[path] in error
        else:
            assert pd.isna(error), error
    good = frame[frame["error"].isna()]
    assert good["score"].notna().all()
    task = get_task(cls.task)
    if "uncalibrated" in frame.columns:  # a threshold at its default states no decision, and every row says so
        assert frame["uncalibrated"].all() and good["decision"].isna().all() and good["verdict"].isna().all()
    else:
        assert good["decision"].isin([0, 1]).all() and set(good["verdict"]) <= {task.positive, task.negative}
    if cls.task == "fake_detection":
        assert good["score"].between(0, 1).all(), "fake detection reports a probability"
        assert torch.allclose(torch.sigmoid(torch.tensor(good["logit"].to_numpy())),
                              torch.tensor(good["score"].to_numpy()), atol=1e-6)
    if cls.task == "attribution":
        assert good["p_value"].between(0, 1).all() and (good["loss"] >= 0).all()
    if cls.task == "copyright":
        assert all(os.path.isfile(p) for p in good["artifact"]), "each image has its evidence picture"
    err = capsys.readouterr().err.strip().splitlines()
    # the note (pairs.csv, notes.txt) and the hidden folder are skipped, said where they are met and counted again
    # in the summary line, the last one
    assert any(line.startswith(f"folder {own_images}: skipped 1 hidden, 2 not images (") for line in err), err
    assert err[-1].startswith("zoo predict: ") and ("scored 5 of 7 inputs, 2 failed (see the error column); skipped "
                                                     "1 hidden, 2 not images") in err[-1], err


def test_python_api_scores_paths_and_pil_images(own_images):
    torch.manual_seed(0)
    model = registry.methods.load("DescriptorSimilarity").from_variant("tiny").eval()
    same = model.compare(str(own_images / "astronaut.png"), Image.open(own_images / "astronaut.png"))
    assert list(same.columns[:2]) == ["generated", "real"] and same["similarity"][0] == pytest.approx(1.0, abs=1e-5)
    several = model.compare([str(own_images / "coffee.jpg")] * 2, [str(own_images / "rocket.webp"), "gone.png"])
    assert several["error"].isna().tolist() == [True, False]
    with pytest.raises(ZooError, match="scores pairs"):
        model.predict_images(own_images)
    batch = {"generated": torch.rand(2, 3, 32, 32), "real": torch.rand(2, 3, 32, 32), "id": ["a", "b"]}
    assert model(batch)["level"].shape == (2,), "model(batch) is the task's predictions, no labels needed"


def test_predict_images_takes_a_folder_a_glob_and_pil_images(own_images, tmp_path):
    model = ZooModule.from_pretrained(tiny_checkpoint("CNNDetector", tmp_path / "cnn"))
    frame = model.predict_images([Image.open(own_images / "coffee.jpg"), str(own_images / "sub" / "*.png")])
    assert list(frame["path"]) == ["<image 0>", *(str(own_images / p) for p in GOOD[3:])]
    assert frame["error"].isna().all() and frame["score"].between(0, 1).all()
    with pytest.raises(ZooError, match="broken.jpg"):
        model.predict_images(own_images, skip_bad_images=False)


def assert_one_error_line(err: str, message: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {name: tiny_checkpoint(name, root / name) for name in ("CNNDetector", "DescriptorSimilarity")}


@pytest.mark.parametrize(("args", "message"), [
    (["--inputs", "{images}", "--skip_bad_images", "false"], "broken.jpg: truncated or corrupt image"),
    (["--inputs", "{empty}"], "holds no images"),
    (["--inputs", "{images}/*.tif"], "holds no images"),
    (["--pairs", "{pairs}"], "CNNDetector is a fake_detection method: give its images with --inputs"),
    (["--inputs", "{images}", "--output", "x.xlsx"], "the format follows the extension"),
    (["--inputs", "{images}", "--model.no_such_argument", "1"], "'no_such_argument' is not an argument of CNNDetector"),
])
def test_bad_input_to_an_image_method_is_one_clear_line(args, message, checkpoints, own_images, pairs_csv, tmp_path,
                                                         capsys):
    (tmp_path / "empty").mkdir()
    fill = {"images": own_images, "empty": tmp_path / "empty", "pairs": pairs_csv}
    argv = ["predict", "--ckpt_path", str(checkpoints["CNNDetector"]), "--output", str(tmp_path / "p.csv")]
    argv += [a.format(**fill) for a in args]
    assert main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "p.csv").exists(), "a refused run writes nothing"


@pytest.mark.parametrize(("csv", "args", "message"), [
    ("generated,reference\na.png,b.png\n", [], "missing column(s) 'real'"),
    (None, ["--inputs", "a.png", "b.png", "c.png"], "give --pairs pairs.csv"),
    ("generated,real\n\"unclosed,b.png\n", [], "not a readable CSV"),
])
def test_bad_input_to_a_pair_method_is_one_clear_line(csv, args, message, checkpoints, tmp_path, capsys):
    argv = ["predict", "--ckpt_path", str(checkpoints["DescriptorSimilarity"]), "--output", str(tmp_path / "p.csv")]
    if csv is not None:
        (tmp_path / "pairs.csv").write_text(csv)
        argv += ["--pairs", str(tmp_path / "pairs.csv")]
    assert main(argv + args) == 2
    assert_one_error_line(capsys.readouterr().err, message)


def test_fit_of_a_method_with_nothing_to_train_exports_what_predict_uses(own_images, pairs_csv, tmp_path, capsys):
    argv = ["fit", "--model", "DescriptorSimilarity", "--variant", "tiny", "--data", "MiniCopyDetection",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    assert main(argv) == 0
    export = tmp_path / "lightning_logs" / "version_0" / "zoo"
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    model = ZooModule.from_pretrained(export)
    assert bool(model.level_map.fitted), "fit calibrated the level map on the mini set"
    out = tmp_path / "levels.jsonl"
    assert main(["predict", "--ckpt_path", str(export), "--pairs", str(pairs_csv), "--output", str(out)]) == 0
    rows = pd.read_json(out, lines=True)
    assert len(rows) == 3 and rows["level"][0] == pytest.approx(5.0, abs=1e-4), "an image against itself is a copy"


def test_python_api_takes_a_run_folder_and_checks_its_arguments(own_images, tmp_path, capsys):
    """``from_pretrained`` and ``zoo.hub.resolve`` take a run folder of ``zoo fit`` as ``zoo predict --ckpt_path``
    does (its newest export, by version number); ``predict`` refuses a batch size or worker count as the CLI does."""
    from zoo import hub
    from zoo.predict import image_items, predict

    run = tmp_path / "runs" / "cnn"
    for version in (2, 10):  # version_10 is the newer one
        torch.manual_seed(version)
        registry.methods.load("CNNDetector").from_variant("tiny").save_pretrained(
            run / "lightning_logs" / f"version_{version}" / "zoo")
    newest = run / "lightning_logs" / "version_10" / "zoo"
    assert hub.resolve(run) == hub.resolve(run / "lightning_logs") == newest
    model = ZooModule.from_pretrained(run)
    expected = ZooModule.from_pretrained(newest)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values(),
                                                 strict=True))
    assert "newest export" in capsys.readouterr().err
    with pytest.raises(ZooError, match="no zoo checkpoint in this folder"):
        ZooModule.from_pretrained(tmp_path / "runs")
    items = image_items(str(own_images / "coffee.jpg"))
    for kwargs, message in (({"batch_size": 0}, "batch_size=0"), ({"batch_size": 2.5}, "batch_size=2.5"),
                            ({"num_workers": -1}, "num_workers=-1"), ({"batch_size": True}, "batch_size=True")):
        with pytest.raises(ZooError, match=message):
            predict(model, items, **kwargs)
    assert len(predict(model, items, batch_size=1)) == 1
