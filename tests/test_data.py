"""Image reading, the real-layout datamodules, bad input, and the mini suite."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from zoo.data import mini
from zoo.data.copy_detection import DRepParquet, PairFolder
from zoo.data.folders import FakeImageFolders
from zoo.data.images import ImageLimits, open_image
from zoo.data.mini_datamodules import MiniCopyDetection, MiniFakeDetection
from zoo.errors import ZooError


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb(seed: int = 0, size: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------- bad image files
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a picture", "not an image"),
        (_png(_rgb())[:60], "truncated or corrupt"),
    ],
    ids=["empty", "non-image", "truncated"],
)
def test_bad_files_are_reported_with_their_path(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ZooError, match=message) as err:
        open_image(path)
    assert str(path) in str(err.value)


def test_corrupt_jpeg_body_is_reported(tmp_path):
    buffer = io.BytesIO()
    _rgb(size=64).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    data[200:-2] = bytes(len(data) - 202)  # header intact, scan data destroyed and cut
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ZooError, match=str(path)):
        open_image(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ZooError, match="not found"):
        open_image(tmp_path / "nothing.png")


def test_image_over_the_pixel_limit_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(path)
    with pytest.raises(ZooError, match=r"200x100 = 20000 pixels is over the limit of 10000"):
        open_image(path, limits=ImageLimits(max_pixels=10_000))
    assert open_image(path, limits=ImageLimits(max_pixels=20_000)).size == (200, 100)


def test_modes_are_converted_to_8bit_rgb(tmp_path):
    gray = Image.fromarray(np.full((4, 4), 100, dtype=np.uint8), mode="L")
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    palette = Image.new("RGB", (4, 4), (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE)
    sixteen = Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16))  # 16-bit 25700 is 8-bit 100
    for name, image, expected in [
        ("gray.png", gray, (100, 100, 100)),
        ("rgba.png", rgba, (10, 20, 30)),
        ("palette.png", palette, (200, 10, 10)),
        ("sixteen.png", sixteen, (100, 100, 100)),
    ]:
        image.save(tmp_path / name)
        out = open_image(tmp_path / name)
        assert out.mode == "RGB", name
        assert out.getpixel((1, 1)) == expected, name


# ------------------------------------------------------------------------------- D-Rep parquet
def _drep_shard(path: Path, rows: list[tuple]) -> Path:
    frame = pd.DataFrame(rows, columns=["Name", "Level", "generated_images", "real_images"])
    frame.to_parquet(path, index=False)
    return path


def test_drep_parquet_reads_struct_and_raw_bytes(tmp_path):
    image = _png(_rgb())
    _drep_shard(tmp_path / "a.parquet", [("p0", 3, {"bytes": image, "path": "g.png"}, {"bytes": image, "path": "r.png"})])
    _drep_shard(tmp_path / "b.parquet", [("p1", 0, image, image)])
    dm = DRepParquet(test=str(tmp_path), image_size=8)
    dm.setup()
    assert [r.id for r in dm.splits["test"]] == ["p0", "p1"]
    batch = next(iter(dm.test_dataloader()))
    assert batch["generated"].shape == (2, 3, 8, 8)
    assert batch["level"].tolist() == [3, 0]


@pytest.mark.parametrize(("level", "row"), [(6, 1), (-1, 1), (2.5, 1)])
def test_drep_level_outside_range_names_the_row(tmp_path, level, row):
    image = _png(_rgb())
    _drep_shard(tmp_path / "s.parquet", [("ok", 1, image, image), ("bad", level, image, image)])
    with pytest.raises(ZooError, match=rf"s.parquet row {row} \(Name='bad'\): level .* is not an integer from 0 to 5"):
        DRepParquet(test=str(tmp_path / "s.parquet")).setup()


def test_drep_missing_image_names_the_row(tmp_path):
    image = _png(_rgb())
    _drep_shard(tmp_path / "s.parquet", [("ok", 1, image, image), ("hole", 2, image, None)])
    with pytest.raises(ZooError, match=r"row 1 \(Name='hole'\): missing image in column 'real_images'"):
        DRepParquet(test=str(tmp_path / "s.parquet")).setup()


def test_drep_missing_column_and_no_shard(tmp_path):
    pd.DataFrame({"Name": ["a"], "Level": [1]}).to_parquet(tmp_path / "s.parquet")
    with pytest.raises(ZooError, match="missing column"):
        DRepParquet(test=str(tmp_path / "s.parquet")).setup()
    with pytest.raises(ZooError, match="no parquet shard"):
        DRepParquet(test=str(tmp_path / "none*.parquet")).setup()


def test_validation_is_held_out_from_train_when_absent(tmp_path):
    image = _png(_rgb())
    _drep_shard(tmp_path / "train.parquet", [(f"p{i}", i % 6, image, image) for i in range(20)])
    dm = DRepParquet(train=str(tmp_path / "train.parquet"), val_fraction=0.25, seed=3)
    dm.setup()
    train, val = {r.id for r in dm.splits["train"]}, {r.id for r in dm.splits["val"]}
    assert len(val) == 5 and len(train) == 15 and not train & val


def test_pair_folder_and_its_errors(tmp_path):
    split = tmp_path / "test"
    split.mkdir()
    _rgb(1).save(split / "g.png")
    _rgb(2).save(split / "r.png")
    (split / "labels.csv").write_text("generated,real,level\ng.png,r.png,4\n")
    dm = PairFolder(str(tmp_path))
    dm.setup()
    assert dm.splits["test"][0].level == 4 and dm.splits["train"] == []
    (split / "labels.csv").write_text("generated,real,level\ng.png,r.png,4\ng.png,gone.png,1\n")
    with pytest.raises(ZooError, match=r"labels.csv row 3: real image .*gone.png not found"):
        PairFolder(str(tmp_path)).setup()


def test_bad_image_in_a_pair_is_reported_when_loaded(tmp_path):
    split = tmp_path / "test"
    split.mkdir()
    _rgb().save(split / "g.png")
    (split / "r.png").write_bytes(b"")
    (split / "labels.csv").write_text("generated,real,level\ng.png,r.png,4\n")
    dm = PairFolder(str(tmp_path))
    with pytest.raises(ZooError, match=r"r.png: empty file"):
        next(iter(dm.test_dataloader()))


# ------------------------------------------------------------------------------- image folders
def _folders(root: Path, counts: dict[str, int], split: str = "train") -> None:
    for source, count in counts.items():
        (root / split / source).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _rgb(i).save(root / split / source / f"{i}.png")


def test_skipped_images_are_counted_and_printed(tmp_path, capsys):
    _folders(tmp_path, {"real": 3, "gen": 3}, "test")
    (tmp_path / "test" / "gen" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "test" / "real" / "notes.txt").write_text("not an image")
    dm = FakeImageFolders(str(tmp_path), generators=["gen"], skip_bad_images=True)
    dm.setup()
    err = capsys.readouterr().err
    assert len(dm.splits["test"]) == 6
    assert len(dm.skipped["test"]) == 1 and "broken.png" in dm.skipped["test"][0][1]
    assert "skipped 1 of 7 test samples" in err
    assert "ignored 1 files that are not images" in err
    # without skipping, the bad file stops the run with its path
    dm = FakeImageFolders(str(tmp_path), generators=["gen"])
    with pytest.raises(ZooError, match="broken.png"):
        list(dm.test_dataloader())


def test_one_class_or_an_empty_generator_is_an_error_before_training(tmp_path):
    _folders(tmp_path, {"real": 2, "gen": 2})
    (tmp_path / "train" / "other").mkdir()
    with pytest.raises(ZooError, match=r"other: no images of source 'other'"):
        FakeImageFolders(str(tmp_path), generators=["gen", "other"]).setup()
    # a split folder holding one class only
    _folders(tmp_path, {"gen": 2}, "val")
    with pytest.raises(ZooError, match=r"val/real: no images of source 'real'"):
        FakeImageFolders(str(tmp_path), generators=["gen"]).setup()
    with pytest.raises(ZooError, match=r"\['real'\] named as both classes"):
        FakeImageFolders(str(tmp_path), generators=["real"], real=["real"])


def test_captions_requested_but_missing(tmp_path):
    _folders(tmp_path, {"real": 2, "gen": 2})
    with pytest.raises(ZooError, match="captions were requested"):
        FakeImageFolders(str(tmp_path), generators=["gen"], captions=True).setup()
    (tmp_path / "train" / "captions.csv").write_text("file,text\nreal/0.png,a\n")
    with pytest.raises(ZooError, match="column 'caption' is missing"):
        FakeImageFolders(str(tmp_path), generators=["gen"], captions=True).setup()


def test_max_samples_keeps_a_seeded_slice_of_each_split_in_order(tmp_path):
    image = _png(_rgb())
    _drep_shard(tmp_path / "train.parquet", [(f"p{i:02d}", i % 6, image, image) for i in range(20)])
    _drep_shard(tmp_path / "test.parquet", [(f"t{i}", i % 6, image, image) for i in range(3)])
    paths = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    dm = DRepParquet(**paths, val_fraction=0.25, max_samples=4, seed=1)
    dm.setup()
    train = [r.id for r in dm.splits["train"]]
    assert len(train) == 4 and train == sorted(train) and len(dm.splits["val"]) == 4
    assert len(dm.splits["test"]) == 3  # a smaller split is kept whole
    again = DRepParquet(**paths, val_fraction=0.25, max_samples=4, seed=1)
    again.setup()
    assert [r.id for r in again.splits["train"]] == train
    with pytest.raises(ZooError, match="max_samples=0"):
        DRepParquet(**paths, max_samples=0)


def test_unknown_perturbation_is_refused(tmp_path):
    _folders(tmp_path, {"real": 1, "gen": 1})
    with pytest.raises(ZooError, match="perturb='blur'"):
        FakeImageFolders(str(tmp_path), generators=["gen"], perturb="blur")


# ------------------------------------------------------------------------------- the mini suite
def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".csv")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_mini_sets_are_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(mini, "FAKE_PER_SOURCE", {"train": 3, "val": 2, "test": 2})  # the builder, not the size
    for kind in ("fake_detection", "copyright"):
        first = mini.ensure(kind, tmp_path / f"{kind}-a")
        second = mini.ensure(kind, tmp_path / f"{kind}-b")
        assert _digest(first) == _digest(second)
        assert _digest(first) != _digest(mini.ensure(kind, tmp_path / f"{kind}-c", seed=1))


def test_mini_copy_detection_levels_and_formats_agree():
    dm = MiniCopyDetection()
    dm.setup()
    sizes = dm.sizes()
    assert sizes == {split: 6 * n for split, n in mini.COPY_PAIRS_PER_LEVEL.items()}
    levels = [r.level for r in dm.splits["test"]]
    assert sorted(set(levels)) == [0, 1, 2, 3, 4, 5]
    # the pair-folder copy of the same set holds the same pairs and levels
    folder = PairFolder(str(mini.ensure("copy_detection") / "pairs"))
    folder.setup()
    assert [(r.id, r.level) for r in folder.splits["test"]] == [(r.id, r.level) for r in dm.splits["test"]]
    # level 5 is a near copy of its real image, level 0 is not
    def distance(record):
        g = np.asarray(open_image(record.generated), dtype=float)
        r = np.asarray(open_image(record.real), dtype=float)
        return np.abs(g - r).mean()
    by_level = {lvl: np.mean([distance(r) for r in dm.splits["test"] if r.level == lvl]) for lvl in (0, 5)}
    assert by_level[5] < 5 < by_level[0]


def test_mini_splits_share_no_pixels():
    # train, val and test regions come from disjoint horizontal bands of every photograph
    image = mini.photo("astronaut")
    bands = {split: mini.band(image, split) for split in mini.BANDS}
    assert sum(b.height for b in bands.values()) <= image.height
    assert bands["train"].height == int(0.6 * image.height)


def test_mini_fake_detection_sources_counts_and_captions():
    dm = MiniFakeDetection(captions=True, test_generators=["autoencoder"])
    dm.setup()
    assert {r.source for r in dm.splits["train"]} == {"real", "upsampler", "smoother", "autoencoder"}
    assert {r.source for r in dm.splits["test"]} == {"real", "autoencoder"}
    assert all(r.caption for r in dm.splits["val"])
    for split, records in dm.splits.items():
        counts = pd.Series([r.source for r in records]).value_counts()
        assert set(counts) == {mini.FAKE_PER_SOURCE[split]}, split
    assert mini.FAKE_PER_SOURCE["train"] >= 120


def _find_window(band: np.ndarray, window: np.ndarray) -> bool:
    """Whether ``window`` is, pixel for pixel, a window of ``band`` (both uint8 RGB arrays)."""
    height, width = window.shape[:2]
    first = window[0].tobytes()
    for y in range(len(band) - height + 1):
        row, x = band[y].tobytes(), -1
        while (x := row.find(first, x + 1)) >= 0:
            if x % 3 == 0 and np.array_equal(band[y:y + height, x // 3:x // 3 + width], window):
                return True
    return False


def test_mini_fake_detection_images_are_native_windows_of_their_own_band():
    # every real image of every split is a window of its photograph at one scale (never resampled), cut
    # from its split's band and from no other band: test pixels are never seen in training
    root = mini.ensure("fake_detection")
    for split in mini.BANDS:
        for path in sorted((root / split / "real").glob("*.png"))[:: len(mini.FAKE_PHOTOS) + 1][:4]:
            name = next(n for n in mini.FAKE_PHOTOS if path.stem.endswith(n))
            window = np.asarray(Image.open(path))
            assert window.shape == (mini.SIZE, mini.SIZE, 3)
            found = {s for s in mini.BANDS if _find_window(np.asarray(mini.band(mini.photo(name), s)), window)}
            assert found == {split}, (path, found)


def test_mini_autoencoder_is_learned_and_its_traces_survive_jpeg():
    from zoo.data.mini_generators import MiniAutoencoder, train_autoencoder

    regions = torch.rand(8, 3, 32, 32)
    first, second = train_autoencoder(regions, seed=0, steps=2), train_autoencoder(regions, seed=0, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in MiniAutoencoder().decoder)  # learned up-sampling
    # the cached, trained generator leaves traces that four texture features find on unseen test windows,
    # also after a JPEG round trip at quality 75
    from scipy.ndimage import laplace
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    root = mini.ensure("fake_detection")

    def features(path: Path, quality: int | None = None) -> list[float]:
        image = Image.open(path).convert("RGB")
        gray = np.asarray(mini.jpeg(image, quality) if quality else image, dtype=float).mean(2)
        dx = np.abs(np.diff(gray, axis=1)) + 1e-3
        lap = np.abs(laplace(gray)).mean() + 1e-3
        return [np.log(lap), np.log(dx.mean()), np.log(lap / dx.mean()), abs(np.log(dx[:, 0::2].mean() / dx[:, 1::2].mean()))]

    def load(split: str, quality: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = {s: [features(p, quality) for p in sorted((root / split / s).glob("*.png"))] for s in ("real", "autoencoder")}
        return np.array(x["real"] + x["autoencoder"]), np.array([0] * len(x["real"]) + [1] * len(x["autoencoder"]))

    classifier = LogisticRegression(max_iter=1000).fit(*load("train"))
    for quality in (None, 75):
        x, y = load("test", quality)
        assert roc_auc_score(y, classifier.decision_function(x)) > 0.75, quality


def test_mini_attribution_has_a_sibling_of_the_model_under_test():
    from safetensors.torch import load_file
    from zoo_inversion_attribution.data import NEGATIVES, MiniAttribution, ensure_attribution

    root = ensure_attribution()
    weights = {name: load_file(str(root / "generators" / name / "model.safetensors"))
               for name in ("generated", "sibling", "other_model")}
    assert weights["generated"].keys() == weights["sibling"].keys()  # the same family, trained again
    assert not torch.equal(weights["generated"]["project.weight"], weights["sibling"]["project.weight"])
    dm = MiniAttribution()
    dm.setup()
    assert {r.source for r in dm.splits["test"] if r.label == 0} == set(NEGATIVES) == {"sibling", "other_model", "real"}
    assert all(Image.open(r.path).size == (32, 32) for r in dm.splits["test"][:8])
