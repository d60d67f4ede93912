"""The use road's command lines: where pictures are written, refused arguments, finding an export, one column order.

Each test drives ``zoo`` itself (``zoo.cli.main`` in-process, or a subprocess where the exit code and the
whole of stderr are the point) on scikit-image photographs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_unets
from PIL import Image
from skimage import data as photos

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _photo(array, path: Path, size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert("RGB").resize((size, size)).save(path)
    return path


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ pictures
@pytest.fixture(scope="module")
def diffusion_pair(tmp_path_factory):
    return tiny_unets(tmp_path_factory.mktemp("unets"))


def _cgi_dm(diffusion_pair) -> list[str]:
    return ["predict", "--model", "CGIDM", "--model.pretrained", str(diffusion_pair / "pre"), "--model.finetuned",
            str(diffusion_pair / "ft"), "--model.steps", "1", "--model.encoder", "open_clip:zoo-tiny-clip",
            "--model.encoder_pretrained", "false"]


def test_cgi_dm_writes_one_picture_per_input_inside_artifacts(diffusion_pair, tmp_path, monkeypatch):
    """An absolute input two levels deep once wrote ``/-tmp-<name>.png``; photo.png and photo.jpg shared a file."""
    folder = tmp_path / "deep" / "photos"
    shallow = Path("/tmp") / f"zoo-{uuid.uuid4().hex[:12]}.png"  # an absolute path two levels deep
    escaped = Path("/") / f"-tmp-{shallow.stem}.png"  # where the picture of it used to go
    inputs = [_photo(photos.astronaut(), folder / "photo.png"), _photo(photos.coffee(), folder / "photo.jpg"),
              _photo(photos.rocket(), shallow)]
    monkeypatch.chdir(tmp_path)
    try:
        code = main([*_cgi_dm(diffusion_pair), "--inputs", *map(str, inputs), "--artifacts", "p/art",
                     "--output", "p/out.csv"])
        assert not escaped.exists(), f"a picture was written outside --artifacts, at {escaped}"
    finally:
        shallow.unlink(missing_ok=True)
        escaped.unlink(missing_ok=True)
    assert code == 0
    frame = pd.read_csv(tmp_path / "p" / "out.csv")
    art = (tmp_path / "p" / "art").resolve()
    written = [Path(p).resolve() for p in frame["artifact"]]
    assert len(set(written)) == 3, "each input has a picture of its own"
    assert all(p.parent == art and p.is_file() for p in written)
    assert sorted(p.name for p in art.iterdir()) == sorted(p.name for p in written)
    assert ".png" in written[0].name and ".jpg" in written[1].name, "the input's extension stays in the name"


def test_artifact_names_stay_in_the_folder_and_a_planted_link_is_refused(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from gallery_fixture_method import GalleryFixtureMethod

    from zoo.errors import ZooError

    model = GalleryFixtureMethod()
    model.artifact_root = tmp_path / "art"
    names = ["/data/a.png", "../../../x.png", "photo.png", "photo.jpg", "a/b/c/d.png", "z/b/c/d.png", "", ".."]
    paths = model.artifact_paths(names)
    assert len({p.name for p in paths}) == len(names)
    assert all(p.resolve().parent == (tmp_path / "art").resolve() for p in paths)
    assert not any(p.name.startswith(".") for p in paths)
    assert model.artifact_paths(["photo.png"]) == paths[2:3], "a re-run writes the same file again"

    paths[2].symlink_to(tmp_path / "outside.png")
    with pytest.raises(ZooError, match="outside"):
        model.artifact_paths(["photo.png"])


# ------------------------------------------------------------------------------------------ refused arguments
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    return [str(_photo(photos.astronaut(), root / "a.png")), str(_photo(photos.chelsea(), root / "b.png"))]


PREDICT_REFUSALS = [
    (["--batch_size", "0"], "--batch_size"),
    (["--batch_size", "-3"], "--batch_size"),
    (["--batch_size", "abc"], "--batch_size"),
    (["--num_workers", "-1"], "--num_workers"),
    (["--device", "bogus"], "--device"),
]
if not torch.cuda.is_available():
    PREDICT_REFUSALS.append((["--device", "cuda"], "--device"))


@pytest.mark.parametrize(("flags", "argument"), PREDICT_REFUSALS, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else None)
def test_predict_refuses_a_bad_argument_in_one_line(flags, argument, pair, tmp_path, capsys):
    out = tmp_path / "out.csv"
    code = main(["predict", "--model", "DescriptorSimilarity", "--variant", "tiny", "--inputs", *pair,
                 "--output", str(out), *flags])
    lines = _stderr_lines(capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("zoo: error:") and argument in lines[0], lines
    assert not out.exists()


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory):
    """A PairFolder of photographs: each against itself (level 5), against a crop (3) and another photo (0)."""
    root = tmp_path_factory.mktemp("pairs")
    images = {"astronaut": photos.astronaut(), "coffee": photos.coffee(), "chelsea": photos.chelsea(),
              "rocket": photos.rocket()}
    for split in ("train", "val"):
        rows = ["generated,real,level"]
        for i, (name, array) in enumerate(images.items()):
            other = list(images)[(i + 1) % len(images)]
            _photo(array, root / split / f"{name}.png")
            _photo(array[: array.shape[0] // 2, : array.shape[1] // 2], root / split / f"{name}_crop.png")
            rows += [f"{name}.png,{name}.png,5", f"{name}_crop.png,{name}.png,3", f"{name}.png,{other}.png,0"]
        (root / split / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"]


def _fit(pair_folder, *flags) -> list[str]:
    return ["fit", "--model", "DescriptorSimilarity", "--variant", "tiny", "--data", "PairFolder", "--data.root",
            str(pair_folder), *QUIET, *flags]


@pytest.mark.parametrize(("flags", "argument"), [
    (["--data.batch_size", "-1"], "batch_size"),
    (["--data.val_fraction", "2"], "val_fraction"),
    (["--data.batch_size", "abc"], "--data.batch_size"),
    (["--data.bogus", "3"], "bogus"),
], ids=["batch_size -1", "val_fraction 2", "batch_size abc", "unknown"])
def test_fit_refuses_a_bad_data_argument_in_one_line(flags, argument, pair_folder, tmp_path, capsys):
    code = main(_fit(pair_folder, "--trainer.default_root_dir", str(tmp_path), *flags))
    errors = [line for line in _stderr_lines(capsys) if "error" in line.lower()]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("zoo: error:") and argument in errors[0], errors
    assert not any(tmp_path.iterdir()), "nothing ran"


@pytest.mark.parametrize(("flag", "text", "argument"), [
    ("--config", "trainer:\n  max_epochs: many\n", "--trainer.max_epochs"),
    ("--trainer", "max_epochs: !!python/object/apply:os.system [\"echo hi\"]\n", "python/object/apply"),
], ids=["max_epochs many", "python tag in a group's config"])
def test_a_bad_config_value_is_one_line_naming_it(flag, text, argument, pair_folder, tmp_path):
    """In a subprocess: the exit code and the whole of stderr are the point (no usage, no traceback)."""
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    done = subprocess.run([sys.executable, "-m", "zoo.cli", *_fit(pair_folder, flag, str(config))],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2
    assert lines and lines[-1].startswith("zoo: error:") and argument in lines[-1], done.stderr
    assert not any("usage" in line or "Traceback" in line for line in lines), done.stderr
    assert "hi" not in done.stdout.split(), "nothing in a config is run"


# ------------------------------------------------------------------------------------------ finding an export
def test_two_fits_then_predict_with_the_run_folder(pair_folder, pair, tmp_path, capsys):
    run = tmp_path / "runs" / "desc"
    for version in (0, 1):
        assert main(_fit(pair_folder, "--trainer.default_root_dir", str(run))) == 0
        lines = _stderr_lines(capsys)
        assert lines[-1] == f"zoo fit: exported {run / 'lightning_logs' / f'version_{version}' / 'zoo'}"

    out = tmp_path / "levels.csv"
    assert main(["predict", "--ckpt_path", str(run), "--inputs", *pair, "--output", str(out)]) == 0
    picked = [line for line in _stderr_lines(capsys) if "newest export" in line]
    assert len(picked) == 1 and str(run / "lightning_logs" / "version_1" / "zoo") in picked[0]
    assert pd.read_csv(out)["error"].isna().all()

    # version_10 is newer than version_9, though it sorts first as text and was written first
    logs = run / "lightning_logs"
    for version in (10, 9):
        shutil.copytree(logs / "version_1" / "zoo", logs / f"version_{version}" / "zoo")
    for given in (run, logs):
        assert main(["predict", "--ckpt_path", str(given), "--inputs", *pair, "--output", str(out)]) == 0
        assert str(logs / "version_10" / "zoo") in capsys.readouterr().err
    assert main(["predict", "--ckpt_path", str(logs / "version_9"), "--inputs", *pair, "--output", str(out)]) == 0
    assert str(logs / "version_9" / "zoo") in capsys.readouterr().err


def test_a_folder_without_an_export_is_named_with_what_was_looked_for(pair, tmp_path, capsys):
    empty = tmp_path / "runs" / "nothing" / "lightning_logs" / "version_0"
    empty.mkdir(parents=True)
    assert main(["predict", "--ckpt_path", str(tmp_path / "runs" / "nothing"), "--inputs", *pair]) == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"zoo: error: {tmp_path / 'runs' / 'nothing'}:"), lines
    assert "config.json" in lines[0] and "version_N/zoo" in lines[0], "it says what it looked for, and where"


# ------------------------------------------------------------------------------------------ one column order
def test_every_format_has_the_same_columns_in_the_same_order(pair, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    shutil.copy(pair[0], tmp_path / "a.png")
    shutil.copy(pair[1], tmp_path / "b.png")
    pairs.write_text("generated,real\nmissing.png,a.png\na.png,b.png\n")  # the first row fails
    orders = {}
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"levels{suffix}"
        assert main(["predict", "--model", "DescriptorSimilarity", "--variant", "tiny", "--pairs", str(pairs),
                     "--output", str(out)]) == 0
        if suffix == ".csv":
            orders[suffix] = list(pd.read_csv(out).columns)
        elif suffix == ".jsonl":
            orders[suffix] = list(json.loads(out.read_text().splitlines()[0]))
        else:
            orders[suffix] = list(pd.read_parquet(out).columns)
    assert orders[".csv"] == orders[".jsonl"] == orders[".parquet"], orders
    assert orders[".csv"][-1] == "error" and orders[".csv"][:2] == ["generated", "real"]
