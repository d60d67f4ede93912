"""One rule of which files are images, for the datamodules and for ``zoo predict`` alike (``zoo.data.images``)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from zoo import predict
from zoo.data import images
from zoo.data.folders import FakeImageFolders


def _source(folder: Path) -> None:
    """A generator's folder: a PNG, a JFIF, a hidden file, a hidden folder's image, a note and a broken link."""
    (folder / ".cache").mkdir(parents=True)
    for name in ("a.png", "b.jfif", ".hidden.png", ".cache/c.png"):
        Image.new("RGB", (8, 8), (len(name) * 20, 0, 0)).save(folder / name, format="PNG" if name.endswith("png")
                                                                else "JPEG")
    (folder / "notes.txt").write_text("not an image")
    os.symlink(folder / "gone.png", folder / "d.png")


def test_datamodules_and_zoo_predict_list_the_same_images(tmp_path, capsys):
    for source in ("real", "gen"):
        _source(tmp_path / "test" / source)
    dm = FakeImageFolders(str(tmp_path), generators=["gen"], skip_bad_images=True)
    dm.setup()
    # .jfif is an image, hidden files and hidden folders are not; the broken link is a record that fails to read
    listed = sorted(Path(r.path).relative_to(tmp_path / "test").as_posix() for r in dm.splits["test"])
    assert listed == ["gen/a.png", "gen/b.jfif", "real/a.png", "real/b.jfif"]
    assert sorted(Path(r).name for r, _ in dm.skipped["test"]) == ["d.png", "d.png"]
    err = capsys.readouterr().err
    assert "ignored 2 files that are not images and 4 hidden files or folders" in err, err
    scored = [item.names[0] for item in predict.expand(tmp_path / "test" / "gen")]
    assert scored == [str(tmp_path / "test" / "gen" / n) for n in ("a.png", "b.jfif", "d.png")]
    assert predict.image_files is images.image_files and predict.image_suffixes is images.image_suffixes
