"""Every file the zoo reads, fuzzed: each outcome is a successful read or one ``ZooError``, never another exception.

The files: a checkpoint's ``config.json``, a gallery's ``gallery.json``, a suite YAML, a pairs CSV (``zoo predict
--pairs`` and PairFolder's ``labels.csv``), a captions CSV (``zoo predict --captions`` and FakeImageFolders'
``captions.csv``), the list of pretrained checkpoints, and the metrics files of ``zoo publish`` (a run's
``metrics.csv`` and ``config.yaml``, a ``--metrics`` JSON). Each is fuzzed three ways: raw bytes, a random JSON or
YAML value as the whole file, and a valid file with one field replaced by a value of any type.

Integers are drawn from a small range: a checkpoint that asks for an image size of 10^9 fails on memory, which is a
resource limit and not a reading error, and would make the run slow.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo import hub, registry
from zoo.errors import ZooError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_infinity=True, allow_nan=True)
           | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
raw_bytes = st.binary(max_size=200)


def outcome(read: Callable[[], Any]) -> None:
    """``read()`` succeeds or raises a ZooError (any other exception fails the test, with its traceback)."""
    try:
        read()
    except ZooError as err:
        assert str(err).strip() and "Traceback" not in str(err)


def json_text(value: Any) -> str:
    return json.dumps(value)  # NaN and Infinity are written as Python's json writes them


def with_field(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def fields(base: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field of ``base``, nested mappings included."""
    out = []
    for key, value in base.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += fields(value, (*prefix, key))
    return out


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------------------------- config.json
@pytest.fixture(scope="module")
def tiny_checkpoint(folder):
    torch.manual_seed(0)
    return registry.methods.load("DescriptorSimilarity").from_variant("tiny").save_pretrained(folder / "tiny")


def load_config_text(tiny: Path, text: str | bytes) -> None:
    from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_folder

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        (ckpt / WEIGHTS_NAME).symlink_to(tiny / WEIGHTS_NAME)
        (ckpt / CONFIG_NAME).write_bytes(text if isinstance(text, bytes) else text.encode())
        outcome(lambda: load_folder(ckpt))


@FUZZ
@given(data=st.data())
def test_config_json_field_of_any_type(tiny_checkpoint, data):
    base = json.loads((tiny_checkpoint / "config.json").read_text())
    path = data.draw(st.sampled_from(fields(base)))
    load_config_text(tiny_checkpoint, json_text(with_field(base, path, data.draw(values))))


@FUZZ
@given(content=values | raw_bytes)
def test_config_json_whole_file(tiny_checkpoint, content):
    load_config_text(tiny_checkpoint, content if isinstance(content, bytes) else json_text(content))


# -------------------------------------------------------------------------------------------- gallery.json
GALLERY = {"source": "g", "kind": "folder", "id_column": "id", "image_column": "image", "count": 3,
           "shard_size": 2, "num_shards": 2, "dtype": "float16", "model_sha256": "0" * 64, "complete": True}


def read_gallery(folder: Path, text: str | bytes) -> None:
    from zoo.gallery.shards import read_manifest

    gallery = folder / "gallery"
    gallery.mkdir(exist_ok=True)
    (gallery / "gallery.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    outcome(lambda: read_manifest(gallery))


@FUZZ
@given(data=st.data())
def test_gallery_json(folder, data):
    how = data.draw(st.sampled_from(["field", "whole", "bytes"]))
    if how == "field":
        text = json_text(with_field(GALLERY, (data.draw(st.sampled_from(list(GALLERY))),), data.draw(values)))
    else:
        text = data.draw(raw_bytes) if how == "bytes" else json_text(data.draw(values))
    read_gallery(folder, text)


# ----------------------------------------------------------------------------------------------- suite YAML
SUITE = {"name": "fuzz", "seeds": [0], "variant": "tiny",
         "tasks": {"copy_detection": {"data": "MiniCopyDetection", "methods": ["DescriptorSimilarity"]}},
         "notes": {"DescriptorSimilarity": "a note"}, "limitations": ["one"]}


@FUZZ
@given(data=st.data())
def test_suite_yaml(folder, data):
    from zoo.bench.suite import load_suite

    how = data.draw(st.sampled_from(["field", "whole", "bytes"]))
    if how == "field":
        value = with_field(SUITE, data.draw(st.sampled_from(fields(SUITE))), data.draw(values))
        text: str | bytes = yaml.safe_dump(value)
    elif how == "whole":
        text = yaml.safe_dump(data.draw(values))
    else:
        text = data.draw(raw_bytes)
    path = folder / "suite.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    outcome(lambda: load_suite(path))


# ------------------------------------------------------------------------------------ pairs and captions CSV
cells = st.text(max_size=10) | st.sampled_from(["a.png", "../a.png", "/", "", "3", "nan", "\x00"])


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def csv_content(data: Any, columns: list[str]) -> str | bytes:
    how = data.draw(st.sampled_from(["rows", "bytes", "text"]))
    if how == "bytes":
        return data.draw(raw_bytes)
    if how == "text":
        return data.draw(st.text(max_size=80))
    header = data.draw(st.lists(st.sampled_from([*columns, "x", ""]), max_size=5) | st.just(columns))
    return csv_text(header, data.draw(st.lists(st.lists(cells, max_size=5), max_size=4)))


@FUZZ
@given(data=st.data())
def test_pairs_csv(folder, data):
    from zoo.data.copy_detection import read_pair_folder
    from zoo.predict import read_pairs

    content = csv_content(data, ["generated", "real", "level", "name"])
    split = folder / "pairs"
    split.mkdir(exist_ok=True)
    (split / "labels.csv").write_bytes(content if isinstance(content, bytes) else content.encode())
    outcome(lambda: read_pairs(split / "labels.csv"))
    outcome(lambda: read_pair_folder(split, strict=data.draw(st.booleans())))


@FUZZ
@given(data=st.data())
def test_captions_csv(folder, data):
    from PIL import Image

    from zoo.data.folders import FakeImageFolders
    from zoo.predict import read_captions

    root = folder / "fake"
    if not root.exists():
        for name in ("real", "gen"):
            (root / "test" / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / "test" / name / "a.png")
    content = csv_content(data, ["file", "caption"])
    path = root / "test" / "captions.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    outcome(lambda: read_captions(path))
    outcome(lambda: FakeImageFolders(str(root), generators=["gen"], captions=True).setup())


# --------------------------------------------------------------------------------------- the pretrained list
ENTRY = {"method": "SSCD", "repo_id": "org/name", "revision": "main", "repo_type": "model",
         "filename": "weights/model.pt", "sha256": {"weights/model.pt": "0" * 64}, "init_args": {"dim": 32},
         "description": "d", "source": "https://example.org", "note": "n"}


@FUZZ
@given(data=st.data())
def test_pretrained_list(folder, data):
    how = data.draw(st.sampled_from(["field", "name", "whole", "bytes"]))
    if how == "field":
        content: Any = {"x": with_field(ENTRY, data.draw(st.sampled_from(fields(ENTRY))), data.draw(values))}
    elif how == "name":
        content = {data.draw(st.text(max_size=12)): ENTRY}
    else:
        content = data.draw(raw_bytes) if how == "bytes" else data.draw(values)
    path = folder / "pretrained.json"
    path.write_bytes(content if isinstance(content, bytes) else json_text(content).encode())
    outcome(lambda: hub.known_checkpoints(path))


# ------------------------------------------------------------------------------------------ the metrics files
@FUZZ
@given(data=st.data())
def test_metrics_files(folder, data):
    run = folder / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    table = csv_text(["epoch", *data.draw(st.lists(st.sampled_from(["val/auroc", "test/accuracy", "test/threshold",
                                                                     "x", ""]), max_size=3))],
                     data.draw(st.lists(st.lists(cells | st.floats().map(str), max_size=4), max_size=3)))
    (run / "metrics.csv").write_bytes(data.draw(st.just(table.encode()) | raw_bytes))
    config = data.draw(values.map(yaml.safe_dump).map(str.encode) | raw_bytes
                       | st.just(b"model: !!python/object/apply:os.system ['true']\n"))
    (run / "config.yaml").write_bytes(config)
    outcome(lambda: hub.run_metadata(run))
    metrics = run / "metrics.json"
    metrics.write_bytes(data.draw(values.map(json_text).map(str.encode) | raw_bytes))
    outcome(lambda: hub.read_metrics(metrics))
