"""A checkpoint is data, never code; every crash a user can cause is one clear line.

Each poisoned file names code to run (a process that would write a marker file); the tests show that the
marker is never written and that the user gets one ``zoo: error`` line.
"""

from __future__ import annotations

import json
import os
import pickle

import pandas as pd
import pytest
import torch
from PIL import Image
from test_hub import online, server  # noqa: F401 - the local Hub server and a client pointed at it

from zoo import registry
from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, convert_checkpoint
from zoo.cli import main
from zoo.errors import ZooError
from zoo.module import ZooModule


def assert_one_error_line(err: str, *messages: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for message in messages:
        assert message in errors[0], err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny DescriptorSimilarity checkpoint (its ``model_kwargs`` is a dict-typed argument)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    return registry.methods.load("DescriptorSimilarity").from_variant("tiny").save_pretrained(folder)


def poisoned_copy(tiny, tmp_path, marker, **init_args):
    folder = tmp_path / "poisoned"
    folder.mkdir()
    (folder / WEIGHTS_NAME).write_bytes((tiny / WEIGHTS_NAME).read_bytes())
    config = json.loads((tiny / CONFIG_NAME).read_text())
    config["init_args"].update(init_args or {"model_kwargs": {"x": {
        "class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}}})
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("command", ["test", "predict", "from_pretrained"])
def test_a_nested_class_path_in_config_json_is_refused(command, tiny, tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = poisoned_copy(tiny, tmp_path, marker)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("generated,real\na.png,a.png\n")
    if command == "from_pretrained":
        with pytest.raises(ZooError, match="may not name code to import"):
            ZooModule.from_pretrained(folder)
    else:
        argv = {"test": ["test", "--ckpt_path", str(folder), "--data", "MiniCopyDetection"],
                "predict": ["predict", "--ckpt_path", str(folder), "--pairs", str(pairs)]}[command]
        assert main(argv) == 2
        assert_one_error_line(capsys.readouterr().err, "'model_kwargs'", "may not name code to import")
    assert not marker.exists()


def _upload(hub, repo_id: str, folder) -> None:
    """A checkpoint folder committed to the local test Hub, as someone would push it."""
    hub.add_commit("model", repo_id, "main",
                   {name: (folder / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}, "upload")


def test_a_poisoned_checkpoint_on_the_hub_is_refused(tiny, tmp_path, capsys, request):
    hub = request.getfixturevalue("server")
    request.getfixturevalue("online")
    marker = tmp_path / "pwned"
    folder = poisoned_copy(tiny, tmp_path, marker)
    _upload(hub, "someone/poisoned", folder)
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["predict", "--ckpt_path", "hf-hub:someone/poisoned", "--inputs", str(tmp_path / "a.png"),
                 str(tmp_path / "a.png"), "--output", str(tmp_path / "p.csv")]) == 2
    assert_one_error_line(capsys.readouterr().err, "may not name code to import")
    assert main(["test", "--ckpt_path", "hf-hub:someone/poisoned", "--data", "MiniCopyDetection"]) == 2
    assert_one_error_line(capsys.readouterr().err, "may not name code to import")
    assert not marker.exists()


class _Marker:
    """Unpickling this object would create a file: what a malicious .ckpt does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_lightning_ckpt_that_holds_code_is_refused(tiny, tmp_path, capsys):
    marker = tmp_path / "pwned"
    model = ZooModule.from_pretrained(tiny)
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": model.state_dict(), "zoo": model.zoo_config(), "extra": _Marker(marker)}, ckpt,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    assert main(["test", "--model", "DescriptorSimilarity", "--variant", "tiny", "--data", "MiniCopyDetection",
                 "--ckpt_path", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, "evil.ckpt is refused: it holds more than tensors and plain data",
                          "a checkpoint is data, never code")
    assert len(err.strip().splitlines()) == 1 and "weights_only" not in err and "likely succeed" not in err, err
    with pytest.raises(ZooError, match="evil.ckpt is refused"):
        convert_checkpoint(ckpt, tmp_path / "out")
    assert not marker.exists()


def test_convert_refuses_a_ckpt_whose_config_names_code(tiny, tmp_path):
    model = ZooModule.from_pretrained(tiny)
    config = model.zoo_config()
    config["init_args"]["model_kwargs"] = {"class_path": "os.system", "init_args": {"command": "true"}}
    torch.save({"state_dict": model.state_dict(), "zoo": config}, tmp_path / "run.ckpt")
    with pytest.raises(ZooError, match="may not name code to import"):
        convert_checkpoint(tmp_path / "run.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda f: (f / WEIGHTS_NAME).unlink(), "has no model.safetensors"),
    (lambda f: (f / WEIGHTS_NAME).write_bytes((f / WEIGHTS_NAME).read_bytes()[:1000]), "truncated or corrupt"),
    (lambda f: (f / CONFIG_NAME).write_text(json.dumps({**json.loads((f / CONFIG_NAME).read_text()),
                                                         "init_args": {"lr": 0.1}})), "'lr' is not an argument"),
    (lambda f: (f / CONFIG_NAME).write_text(json.dumps({"name": "os.system", "init_args": {}})),
     "must be the registry name of a method"),
])
def test_a_broken_checkpoint_folder_is_one_line(break_it, message, tiny, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (folder / name).write_bytes((tiny / name).read_bytes())
    break_it(folder)
    assert main(["test", "--ckpt_path", str(folder), "--data", "MiniCopyDetection"]) == 2
    assert_one_error_line(capsys.readouterr().err, message)


def test_yaml_syntax_error_in_a_config_names_the_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  class_path: PDFEmbedding\n  init_args: {lr: 0.1\n")
    assert main(["fit", "--config", str(config)]) == 2
    assert_one_error_line(capsys.readouterr().err, "bad.yaml line", "not valid YAML")


def test_unparsable_labels_and_captions_are_one_line(tmp_path, capsys):
    split = tmp_path / "pairs" / "test"
    split.mkdir(parents=True)
    (split / "labels.csv").write_bytes(b"generated,real,level\n\xff\xfe,\x00,1\n")
    assert main(["test", "--model", "DescriptorSimilarity", "--variant", "tiny", "--data", "PairFolder",
                 "--data.root", str(tmp_path / "pairs")]) == 2
    assert_one_error_line(capsys.readouterr().err, "labels.csv: not a readable CSV")
    from zoo.data.folders import FakeImageFolders

    for name in ("real", "gen"):
        (tmp_path / "fake" / "test" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "fake" / "test" / name / "a.png")
    (tmp_path / "fake" / "test" / "captions.csv").write_text('file,caption\n"real/a.png,unclosed\n')
    with pytest.raises(ZooError, match="captions.csv: not a readable CSV"):
        FakeImageFolders(str(tmp_path / "fake"), generators=["gen"], captions=True).setup()


def test_a_bad_image_read_by_a_worker_is_one_line(tmp_path, capsys):
    for name in ("real", "gen"):
        (tmp_path / "test" / name).mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "test" / "real" / "a.png")
    (tmp_path / "test" / "gen" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["test", "--model", "CNNDetector", "--variant", "tiny", "--data", "FakeImageFolders",
                 "--data.root", str(tmp_path), "--data.generators", "[gen]", "--data.num_workers", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]) == 2
    assert_one_error_line(capsys.readouterr().err, "b.png: not an image file PIL can read")


def test_broken_links_in_a_folder_layout_are_counted_not_dropped(tmp_path, capsys):
    from zoo.data.folders import FakeImageFolders

    for name in ("real", "gen"):
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / name / "a.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "test" / "gen" / "b.png")
    os.symlink(tmp_path / "test" / "gen" / "loop.png", tmp_path / "test" / "gen" / "loop.png")
    strict = FakeImageFolders(str(tmp_path), generators=["gen"])
    strict.setup()
    with pytest.raises(ZooError, match="b.png: broken or looping symbolic link"):
        next(iter(strict.test_dataloader()))
    lenient = FakeImageFolders(str(tmp_path), generators=["gen"], skip_bad_images=True)
    lenient.setup()
    assert len(lenient.splits["test"]) == 2 and len(lenient.skipped["test"]) == 2
    assert "skipped 2 of 4 test samples" in capsys.readouterr().err


def test_drep_ids_must_be_unique_and_empty_cells_are_skipped_when_asked(tmp_path, capsys):
    from zoo.data.copy_detection import DRepParquet, read_drep_parquet

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    data = image.read_bytes()
    frame = pd.DataFrame({"Name": ["p1", "p2", "p1"], "Level": [1, 2, 3], "generated_images": [data, data, data],
                          "real_images": [data, data, data]})
    frame.to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(ZooError, match="row 2: Name 'p1' is also at .*row 0"):
        read_drep_parquet(str(tmp_path / "dup.parquet"))
    frame.assign(Name=["p1", None, "p3"]).to_parquet(tmp_path / "null.parquet")
    with pytest.raises(ZooError, match="row 1: empty Name"):
        read_drep_parquet(str(tmp_path / "null.parquet"))
    frame.assign(Name=["p1", "p2", "p3"], real_images=[data, b"", data]).to_parquet(tmp_path / "test.parquet")
    dm = DRepParquet(test=str(tmp_path / "test.parquet"), skip_bad_images=True)
    dm.setup()
    assert [r.id for r in dm.splits["test"]] == ["p1", "p3"]
    assert "p2 (real): empty file" in capsys.readouterr().err


def test_an_unreachable_pretrained_encoder_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["predict", "--model", "DescriptorSimilarity", "--variant", "clip_vit_b32", "--inputs", "a", "b"]) == 2
    assert_one_error_line(capsys.readouterr().err, "pretrained weights of open_clip:ViT-B-32@openai could not be "
                          "fetched")


def _kwargs_payload(tiny, tmp_path, marker, **init_args):
    """A copy of ``tiny`` whose config asks open_clip to unpickle a payload beside it (weights_only off)."""
    folder = poisoned_copy(tiny, tmp_path, marker, **(init_args or {"model_kwargs": {
        "pretrained_image_path": str(tmp_path / "poisoned" / "payload.pt"), "weights_only": False}}))
    torch.save({"x": _Marker(marker)}, folder / "payload.pt")
    return folder


@pytest.mark.parametrize("road", ["from_pretrained", "predict", "embed", "match"])
def test_model_kwargs_from_a_checkpoint_cannot_reach_the_library(road, tiny, tmp_path, capsys):
    # open_clip.create_model(pretrained_image_path=..., weights_only=False) unpickles the file it names
    marker = tmp_path / "pwned"
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), name[0] == "a" and "red" or "blue").save(images / name)
    if road == "match":  # the gallery keeps the checkpoint's config in <gallery>/model/config.json
        gallery = tmp_path / "gallery"
        assert main(["embed", "--gallery", str(images), "--output", str(gallery), "--model", str(tiny)]) == 0
        assert main(["index", "--gallery", str(gallery), "--index_type", "flat"]) == 0
        capsys.readouterr()
        folder = _kwargs_payload(tiny, tmp_path, marker)
        (gallery / "model" / CONFIG_NAME).write_bytes((folder / CONFIG_NAME).read_bytes())
        (gallery / "model" / "payload.pt").write_bytes((folder / "payload.pt").read_bytes())
        (gallery / "model" / CONFIG_NAME).write_text((gallery / "model" / CONFIG_NAME).read_text().replace(
            str(folder / "payload.pt"), str(gallery / "model" / "payload.pt")))
    else:
        folder = _kwargs_payload(tiny, tmp_path, marker)
    refused = "'pretrained_image_path' is not among the open_clip arguments the zoo passes on"
    if road == "from_pretrained":
        with pytest.raises(ZooError, match=refused):
            ZooModule.from_pretrained(folder)
    else:
        argv = {"predict": ["predict", "--ckpt_path", str(folder), "--inputs", str(images / "a.png"),
                            "--output", str(tmp_path / "p.csv")],
                "embed": ["embed", "--gallery", str(images), "--output", str(tmp_path / "g2"), "--model", str(folder)],
                "match": ["match", "--gallery", str(tmp_path / "gallery"), "--generated", f"x={images}",
                          "--output", str(tmp_path / "m")]}[road]
        assert main(argv) == 2
        assert_one_error_line(capsys.readouterr().err, refused)
    assert not marker.exists()


def test_model_kwargs_from_the_hub_cannot_reach_the_library(tiny, tmp_path, capsys, request):
    hub = request.getfixturevalue("server")
    request.getfixturevalue("online")
    marker = tmp_path / "pwned"
    folder = _kwargs_payload(tiny, tmp_path, marker)
    _upload(hub, "someone/kwargs", folder)
    main(["download", "hf-hub:someone/kwargs"])
    capsys.readouterr()
    with pytest.raises(ZooError, match="'pretrained_image_path' is not among"):
        ZooModule.from_pretrained("hf-hub:someone/kwargs")
    assert not marker.exists()


@pytest.mark.parametrize("encoder", ["open_clip:zoo-tiny-clip@{outside}", "open_clip:zoo-tiny-clip@../payload.pt",
                                     "open_clip:local-dir:{outside_dir}"])
def test_a_path_in_a_checkpoint_must_lie_inside_its_folder(encoder, tiny, tmp_path):
    outside = tmp_path / "payload.pt"
    torch.save({"x": 1}, outside)
    folder = poisoned_copy(tiny, tmp_path, tmp_path / "unused", encoder=encoder.format(
        outside=outside, outside_dir=tmp_path))
    with pytest.raises(ZooError, match="is outside the checkpoint folder"):
        ZooModule.from_pretrained(folder)


def test_the_encoder_vouches_for_its_kwargs_on_every_road():
    from zoo.backbones import Encoder

    with pytest.raises(ZooError, match="'checkpoint_path' is not among the timm arguments"):
        Encoder("timm:resnet18", pretrained=False, model_kwargs={"checkpoint_path": "/etc/passwd"})
    with pytest.raises(ZooError, match="'layers' must be a number, a string or a list of them"):
        Encoder("timm:resnet18", pretrained=False, model_kwargs={"layers": {"class_path": "os.system"}})
    tiny = Encoder("timm:resnet18", pretrained=False, model_kwargs={"layers": [1, 1, 1, 1], "stem_width": 8,
                                                                     "channels": [8, 16, 32, 64]})
    assert tiny.dim == 64


@pytest.mark.parametrize(("content", "message"), [
    (lambda c: json.dumps({**c, "init_args": {**c["init_args"], "encoder": 5}}),
     "init argument 'encoder' must be str, got a number 5"),
    (lambda c: b"\xff\xfe" + json.dumps(c).encode("utf-16-le"), "is not UTF-8 text"),
    (lambda c: json.dumps("a string"), "must hold a JSON object with 'name' and 'init_args', not a string"),
    (lambda c: "3.5", "must hold a JSON object with 'name' and 'init_args', not a number"),
    (lambda c: json.dumps({**c, "init_args": [1]}), "'init_args' must be a JSON object, not an array"),
    (lambda c: json.dumps({**c, "format_version": 99}),
     "was written by a newer provenance-zoo (format 99); this one reads up to 1: upgrade"),
    (lambda c: json.dumps({**c, "format_version": "1"}), 'format_version "1" is not a format version'),
    (lambda c: json.dumps({**c, "format_version": 1.5}), "format_version 1.5 is not a format version"),
    (lambda c: json.dumps({**c, "format_version": True}), "format_version true is not a format version"),
    (lambda c: json.dumps({**c, "format_version": 0}), "format_version 0 is not a format version"),
    (lambda c: json.dumps({**c, "init_args": {**c["init_args"], "bins": 7}}).replace('"bins": 7', '"bins": NaN'),
     "NaN is not a JSON number"),
])
def test_a_bad_config_json_is_one_line(content, message, tiny, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / WEIGHTS_NAME).write_bytes((tiny / WEIGHTS_NAME).read_bytes())
    text = content(json.loads((tiny / CONFIG_NAME).read_text()))
    (folder / CONFIG_NAME).write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["predict", "--ckpt_path", str(folder), "--inputs", str(tmp_path / "x.png")]) == 2
    assert_one_error_line(capsys.readouterr().err, "config.json", message)


def test_save_pretrained_writes_ordinary_files(tiny):
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert stat.S_IMODE((tiny / name).stat().st_mode) == 0o666 & ~mask, name


@pytest.mark.parametrize("case", ["int_state", "list_state", "output_is_a_file", "broken_zip", "text_file",
                                  "released_int_state"])
def test_zoo_convert_bad_input_is_one_line(case, tiny, tmp_path, capsys):
    model = ZooModule.from_pretrained(tiny)
    ckpt, output, released = tmp_path / "run.ckpt", tmp_path / "out", []
    state: object = model.state_dict()
    if case == "int_state":
        state = {**model.state_dict(), "extra": 3}
    elif case == "list_state":
        state = list(model.state_dict().values())
    torch.save({"state_dict": state, "zoo": model.zoo_config()}, ckpt)
    message = {"int_state": "'state_dict' entry 'extra' is int, not a tensor",
               "list_state": "'state_dict' is list, not a mapping", "output_is_a_file": "is an existing file",
               "broken_zip": "is a damaged zip archive", "text_file": "text.pt is not a PyTorch checkpoint file",
               "released_int_state": "entry 'conv1.weight' is a int, not a tensor"}[case]
    if case == "output_is_a_file":
        output.write_text("keep me")
    elif case == "broken_zip":
        data = bytearray(ckpt.read_bytes())
        cd = data.rfind(b"PK\x01\x02")
        data[cd:cd + 4] = b"XXXX"  # the central directory's first record
        (tmp_path / "sscd.pt").write_bytes(bytes(data))
        ckpt, released = tmp_path / "sscd.pt", ["--released", "SSCD"]
    elif case == "text_file":
        ckpt = tmp_path / "text.pt"
        ckpt.write_text("index of things\n")
    elif case == "released_int_state":
        torch.save({"conv1.weight": 3, "fc.weight": torch.zeros(2)}, tmp_path / "sscd.pt")
        ckpt, released = tmp_path / "sscd.pt", ["--released", "SSCD"]
    assert main(["convert", str(ckpt), str(output), *released]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, message)
    assert len(err.strip().splitlines()) == 1, err
    if case == "output_is_a_file":
        assert output.read_text() == "keep me"


# ---------------------------------------------------------------- plugins: what a checkpoint may name
def _method_checkpoint(model, tmp_path, **init_args):
    """``model`` saved, with ``init_args`` written over its config.json (what a crafted checkpoint holds)."""
    folder = model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["init_args"].update(init_args)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def _load_both_roads(folder, tmp_path, capsys, message):
    """The crafted checkpoint is refused by ``from_pretrained`` and by ``zoo predict --ckpt_path``."""
    with pytest.raises(ZooError, match=message):
        ZooModule.from_pretrained(folder)
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "red").save(image)
    assert main(["predict", "--ckpt_path", str(folder), "--inputs", str(image), "--output", str(tmp_path / "p.csv")]) == 2
    assert_one_error_line(capsys.readouterr().err, message)


@pytest.fixture(scope="module")
def inversion():
    from zoo_inversion_attribution.lightning_model import InversionAttribution

    return InversionAttribution(generator="tiny-decoder", iterations=1, restarts=1)


def test_a_checkpoint_may_not_name_a_generator_module(inversion, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    (tmp_path / "zoo_payload_generator.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef make():\n    raise SystemExit('the payload ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = _method_checkpoint(inversion, tmp_path, generator="module:zoo_payload_generator:make")
    _load_both_roads(folder, tmp_path, capsys, "names code to import, which a checkpoint may not")
    assert not marker.exists()
    # a Python caller still may
    from zoo_inversion_attribution.generators import load_generator

    with pytest.raises(SystemExit, match="the payload ran"):
        load_generator("module:zoo_payload_generator:make")
    assert marker.exists()


@pytest.mark.parametrize("field", ["diffusers:{outside}", "vae-decoder:../outside", "mini-decoder:{outside}",
                                   "calibration"])
def test_a_generator_folder_in_a_checkpoint_must_lie_inside_it(field, inversion, tmp_path, capsys):
    from zoo_inversion_attribution.mini_decoder import MiniDecoder, save_mini_decoder

    outside = save_mini_decoder(MiniDecoder(4, 8), tmp_path / "outside")  # a folder each loader would read
    for i in range(3):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(outside / f"{i}.png")
    args = ({"calibration": str(outside), "min_calibration": 3} if field == "calibration"
            else {"generator": field.format(outside=outside)})
    folder = _method_checkpoint(inversion, tmp_path, **args)
    _load_both_roads(folder, tmp_path, capsys, "is outside the checkpoint folder")


def test_a_generator_folder_inside_the_checkpoint_and_a_hub_id_stay_allowed(inversion, tmp_path):
    from zoo_inversion_attribution.mini_decoder import MiniDecoder, save_mini_decoder

    from zoo.backbones import checkpoint_source, from_checkpoint

    folder = _method_checkpoint(inversion, tmp_path, generator="mini-decoder:decoder")
    save_mini_decoder(MiniDecoder(4, 8), folder / "decoder")
    assert ZooModule.from_pretrained(folder).generator.input_shape == (4,)
    with from_checkpoint(folder):
        assert checkpoint_source("stabilityai/stable-diffusion-2-base", "x") == "stabilityai/stable-diffusion-2-base"
        assert checkpoint_source("decoder", "x") == str(folder / "decoder")
        with pytest.raises(ZooError, match="is outside the checkpoint folder"):
            checkpoint_source("../outside", "x")


@pytest.fixture(scope="module")
def cgidm(tmp_path_factory):
    """A CGIDM checkpoint whose two models are one tiny pixel-space pipeline in its own ``pipe`` folder."""
    from zoo_cgi_dm.lightning_model import CGIDM

    from zoo.diffusion import tiny_scheduler, tiny_unet

    torch.manual_seed(0)
    pipe = tmp_path_factory.mktemp("cgidm") / "pipe"
    tiny_unet(conditional=False, in_channels=3).save_pretrained(pipe / "unet")
    tiny_scheduler().save_pretrained(pipe / "scheduler")
    model = CGIDM(pretrained=str(pipe), finetuned=str(pipe), encoder="open_clip:zoo-tiny-clip",
                  encoder_pretrained=False, steps=1)
    return model, pipe


@pytest.mark.parametrize("init_args", [{"finetuned": "{outside}"}, {"pretrained": "{outside}"},
                                       {"finetuned": "../outside", "finetune_type": "lora"}])
def test_cgidm_model_folders_in_a_checkpoint_must_lie_inside_it(init_args, cgidm, tmp_path, capsys):
    import shutil

    model, pipe = cgidm
    outside = shutil.copytree(pipe, tmp_path / "outside")  # a pipeline the loader would read
    folder = _method_checkpoint(model, tmp_path, **{"pretrained": "pipe", "finetuned": "pipe", **{
        k: v.format(outside=outside) for k, v in init_args.items()}})
    shutil.copytree(pipe, folder / "pipe")
    _load_both_roads(folder, tmp_path, capsys, "is outside the checkpoint folder")


def test_cgidm_model_folders_inside_the_checkpoint_load(cgidm, tmp_path):
    import shutil

    model, pipe = cgidm
    folder = _method_checkpoint(model, tmp_path, pretrained="pipe", finetuned="pipe")
    shutil.copytree(pipe, folder / "pipe")
    loaded = ZooModule.from_pretrained(folder)
    assert loaded._pre.source == str(folder / "pipe")


def test_a_feature_cache_named_by_a_checkpoint_is_not_used(tmp_path, capsys):
    # the cache is the user's speed-up, not part of the model: a checkpoint may not make the zoo read or write it
    outside = tmp_path / "outside"
    torch.manual_seed(0)
    model = registry.methods.load("CLIPMLP").from_variant("tiny", feature_cache=str(outside))
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((folder / CONFIG_NAME).read_text())["init_args"]["feature_cache"] == str(outside)
    for name in ("real", "gen"):
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), name == "real" and "red" or "blue").save(tmp_path / "data" / "test" / name / "a.png")
    assert main(["test", "--ckpt_path", str(folder), "--data", "FakeImageFolders", "--data.root", str(tmp_path / "data"),
                 "--data.generators", "[gen]", "--trainer.enable_progress_bar", "false",
                 "--trainer.logger", "false"]) == 0, capsys.readouterr().err
    assert not outside.exists()


def test_pdf_embedding_builds_its_encoder_by_the_encoder_rules(tmp_path):
    # from a checkpoint no pretrained weights are fetched; a suite or a caller building inside from_checkpoint
    # still may not point timm at a folder outside the checkpoint
    from zoo.backbones import from_checkpoint

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 0}))
    pdf = registry.methods.load("PDFEmbedding")
    with from_checkpoint(tmp_path / "ckpt"), pytest.raises(ZooError, match="is outside the checkpoint folder"):
        pdf.from_variant("tiny", pretrained=True, encoder=f"local-dir:{outside}")
    with pytest.raises(ZooError, match="encoder spec 'timm:' must look like"):
        pdf.from_variant("tiny", pretrained=True, encoder="")


def test_cgidm_folders_the_user_names_may_lie_anywhere(cgidm, tmp_path):
    """An override on the command line, or the config a benchmark job was fitted from, is the user's word."""
    import shutil

    from zoo.checkpoint import load_folder

    model, pipe = cgidm
    outside = str(shutil.copytree(pipe, tmp_path / "outside"))
    folder = _method_checkpoint(model, tmp_path, pretrained=outside, finetuned=outside)
    with pytest.raises(ZooError, match="is outside the checkpoint folder"):
        load_folder(folder)  # read from the file: refused
    assert load_folder(folder, finetuned=outside, pretrained=outside)._pre.source == outside  # named by the caller
    assert load_folder(folder, trusted={"pretrained": outside, "finetuned": outside})._pre.source == outside
    other = str(shutil.copytree(pipe, tmp_path / "other"))
    with pytest.raises(ZooError, match="is outside the checkpoint folder"):
        load_folder(folder, finetuned=other)  # the pretrained folder is still the file's, and refused


def test_a_generator_folder_the_user_names_may_lie_anywhere(inversion, tmp_path):
    """``mini-decoder:/models/x`` named by the caller: the folder after the prefix is the user's word."""
    from zoo_inversion_attribution.mini_decoder import MiniDecoder, save_mini_decoder

    from zoo.checkpoint import load_folder

    outside = save_mini_decoder(MiniDecoder(4, 8), tmp_path / "outside")
    folder = _method_checkpoint(inversion, tmp_path, generator=f"mini-decoder:{outside}")
    with pytest.raises(ZooError, match="is outside the checkpoint folder"):
        load_folder(folder)
    assert load_folder(folder, trusted={"generator": f"mini-decoder:{outside}"}) is not None
    assert load_folder(folder, generator=f"mini-decoder:{outside}") is not None
