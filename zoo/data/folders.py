"""Image folders for the three binary tasks: one sub-folder per source, one folder per split.

    root/train/<source>/*.png    root/val/<source>/...    root/test/<source>/...
    root/<split>/captions.csv    optional, columns ``file,caption`` (file relative to the split folder)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.data.base import ImageRecord, ZooDataModule, read_csv, report
from zoo.data.images import FolderImages, image_files
from zoo.errors import ZooError


class ImageFolders(ZooDataModule):
    """Images labelled by the folder they sit in.

    Args:
        root: the folder holding ``train``, ``val`` and ``test``.
        positive: source folders of label 1 (a generator's images, members, the model's images).
        negative: source folders of label 0.
        test_positive / test_negative: other sources for the test split, e.g. another generator for a
            cross-generator evaluation; default: the same as for training.
        captions: read ``captions.csv`` and put a ``caption`` in every sample; every image needs one.
    """

    task = "fake_detection"
    description = "image folders"

    def __init__(
        self,
        root: str,
        positive: list[str],
        negative: list[str],
        test_positive: list[str] | None = None,
        test_negative: list[str] | None = None,
        captions: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.positive, self.negative = list(positive), list(negative)
        self.test_positive = list(test_positive) if test_positive is not None else self.positive
        self.test_negative = list(test_negative) if test_negative is not None else self.negative
        self.captions = captions
        if not self.root.is_dir():
            raise ZooError(f"data root {self.root} is not a folder")
        for pos, neg, what in ((self.positive, self.negative, ""), (self.test_positive, self.test_negative, "test_")):
            if not pos or not neg:
                raise ZooError(f"{type(self).__name__}: {what}positive and {what}negative sources must both be named")
            if set(pos) & set(neg):
                raise ZooError(f"{type(self).__name__}: {sorted(set(pos) & set(neg))} named as both classes")

    def load_split(self, split: str) -> list[ImageRecord]:
        folder = self.root / split
        if not folder.is_dir():
            return []
        positive, negative = (self.test_positive, self.test_negative) if split == "test" else (self.positive, self.negative)
        captions = self._read_captions(folder) if self.captions else None
        records: list[ImageRecord] = []
        skipped = FolderImages([], [], [], [])
        for label, sources in ((1, positive), (0, negative)):
            for source in sources:
                found = image_files(folder / source) if (folder / source).is_dir() else FolderImages([], [], [], [])
                skipped.hidden += found.hidden
                skipped.others += found.others
                # a broken link with an image's extension is a record, so that reading it fails with its path (or,
                # with skip_bad_images, is counted and reported) instead of vanishing
                images = sorted(found.images + found.broken)
                if not images:
                    raise ZooError(f"{folder / source}: no images of source {source!r}, named in the config")
                for path in images:
                    caption = None
                    if captions is not None:
                        key = path.relative_to(folder).as_posix()
                        if key not in captions:
                            raise ZooError(f"{folder / 'captions.csv'}: no caption for {key}")
                        caption = captions[key]
                    records.append(ImageRecord(str(path), label, source, path=str(path), caption=caption))
        parts = [f"{len(skipped.others)} files that are not images" if skipped.others else "",
                 f"{len(skipped.hidden)} hidden files or folders" if skipped.hidden else ""]
        if any(parts):
            report(f"{folder}: ignored {' and '.join(p for p in parts if p)}, e.g. "
                   f"{(skipped.others + skipped.hidden)[0]}")
        return records

    def _read_captions(self, folder: Path) -> dict[str, str]:
        path = folder / "captions.csv"
        if not path.is_file():
            raise ZooError(f"captions were requested but {path} does not exist")
        frame = read_csv(path)
        for column in ("file", "caption"):
            if column not in frame.columns:
                raise ZooError(f"{path}: captions were requested but the column {column!r} is missing")
        empty = [f"row {row} ({name})" for row, (name, caption) in enumerate(zip(frame["file"], frame["caption"],
                                                                                 strict=True), start=2)
                 if not caption.strip()]
        if empty:
            report(f"{path}: {len(empty)} empty caption(s), e.g. {empty[0]}; those images are read with an empty "
                   "caption")
        return dict(zip(frame["file"], frame["caption"], strict=True))


class FakeImageFolders(ImageFolders):
    """Generated-image detection: real photos against the images of one or more generators."""

    task = "fake_detection"

    def __init__(self, root: str, generators: list[str], real: list[str] | None = None,
                 test_generators: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(root, positive=generators, negative=real or ["real"], test_positive=test_generators, **kwargs)


class CopyrightFolders(ImageFolders):
    """Copyright authentication: images used to fine-tune the model (``member``) against ``holdout``."""

    task = "copyright"

    def __init__(self, root: str, member: list[str] | None = None, holdout: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(root, positive=member or ["member"], negative=holdout or ["holdout"], **kwargs)


class AttributionFolders(ImageFolders):
    """Origin attribution: images of the model under test (``generated``) against others (``other``)."""

    task = "attribution"

    def __init__(self, root: str, generated: list[str] | None = None, other: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(root, positive=generated or ["generated"], negative=other or ["other"], **kwargs)
