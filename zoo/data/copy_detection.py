"""Copy-detection data: D-Rep parquet shards, and folders of pairs with a ``labels.csv``."""

from __future__ import annotations

import glob
import random
from pathlib import Path
from typing import Any

import pandas as pd

from zoo.data.base import PairRecord, ZooDataModule, read_csv
from zoo.errors import ZooError

DREP_COLUMNS = ("Name", "Level", "generated_images", "real_images")
LEVELS = range(6)


def check_level(value: Any, where: str) -> int:
    """A replication level 0..5, or a ZooError naming ``where``."""
    try:
        level = int(value)
        ok = float(value) == level and level in LEVELS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ZooError(f"{where}: level {value!r} is not an integer from 0 to 5")
    return level


def _image_bytes(cell: Any, where: str, column: str, strict: bool) -> bytes:
    # D-Rep stores images as a struct {"bytes", "path"} (Hugging Face datasets) or as raw bytes
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not isinstance(data, bytes | bytearray) or not data:
        if strict:
            raise ZooError(f"{where}: missing image in column {column!r}")
        return b""  # left out by skip_bad_images, which counts and reports it
    return bytes(data)


def _check_ids(names: list[Any], shard: Path, seen: dict[str, str]) -> None:
    for row, name in enumerate(names):
        if name is None or (isinstance(name, float) and name != name) or str(name) == "":
            raise ZooError(f"{shard} row {row}: empty Name; every pair needs a unique Name")
        where = f"{shard} row {row}"
        if str(name) in seen:
            raise ZooError(f"{where}: Name {name!r} is also at {seen[str(name)]}; every pair needs a unique Name")
        seen[str(name)] = where


def read_drep_parquet(pattern: str, strict: bool = True) -> list[PairRecord]:
    """Pairs of every parquet shard matching ``pattern`` (a path, a folder or a glob)."""
    path = Path(pattern)
    shards = sorted(path.glob("*.parquet")) if path.is_dir() else sorted(Path(p) for p in glob.glob(pattern))
    if not shards:
        raise ZooError(f"no parquet shard matches {pattern!r}")
    records = []
    seen: dict[str, str] = {}
    for shard in shards:
        try:
            frame = pd.read_parquet(shard)
        except Exception as err:
            raise ZooError(f"{shard}: not a readable parquet file ({err})") from err
        missing = [c for c in DREP_COLUMNS if c not in frame.columns]
        if missing:
            raise ZooError(f"{shard}: missing column(s) {', '.join(missing)}; D-Rep shards have {', '.join(DREP_COLUMNS)}")
        _check_ids(list(frame["Name"]), shard, seen)
        for row, item in enumerate(frame.itertuples(index=False)):
            where = f"{shard} row {row} (Name={item.Name!r})"
            records.append(
                PairRecord(
                    id=str(item.Name),
                    level=check_level(item.Level, where),
                    generated=_image_bytes(item.generated_images, where, "generated_images", strict),
                    real=_image_bytes(item.real_images, where, "real_images", strict),
                )
            )
    return records


def read_pair_folder(folder: Path, strict: bool = True) -> list[PairRecord]:
    """Pairs listed in ``folder/labels.csv`` (columns ``generated``, ``real``, ``level``, optional ``name``).

    ``strict``: a missing image stops with its row; otherwise the pair is kept for ``skip_bad_images`` to
    count and report.
    """
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise ZooError(f"{labels} not found")
    frame = read_csv(labels)
    missing = [c for c in ("generated", "real", "level") if c not in frame.columns]
    if missing:
        raise ZooError(f"{labels}: missing column(s) {', '.join(missing)}")
    records = []
    for row, item in enumerate(frame.to_dict("records"), start=2):  # row 1 is the header
        where = f"{labels} row {row}"
        paths = {}
        for column in ("generated", "real"):
            if not item[column]:
                raise ZooError(f"{where}: missing image in column {column!r}")
            paths[column] = folder / item[column]
            if strict and not paths[column].is_file():
                raise ZooError(f"{where}: {column} image {paths[column]} not found")
        records.append(
            PairRecord(
                id=item.get("name") or Path(item["generated"]).stem,
                level=check_level(item["level"], where),
                generated=str(paths["generated"]),
                real=str(paths["real"]),
            )
        )
    return records


class _CopyDetectionData(ZooDataModule):
    task = "copy_detection"

    def __init__(self, val_fraction: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= val_fraction < 1:  # 0: no validation pairs; 1 would leave no training pairs
            raise ZooError(f"{type(self).__name__}: val_fraction={val_fraction!r}: the held-out share of train lies in "
                           "[0, 1)")
        self.val_fraction = val_fraction

    def read(self, split: str) -> list[PairRecord] | None:
        raise NotImplementedError

    def load_split(self, split: str) -> list[PairRecord]:
        if split == "test":
            return self.read("test") or []
        if split == "train" or not hasattr(self, "_held_out"):
            train, val = self.read("train") or [], self.read("val")
            if val is None:
                # no explicit validation split: hold out a seeded fraction of train
                held = set(random.Random(self.seed).sample(range(len(train)), int(len(train) * self.val_fraction)))
                val = [r for i, r in enumerate(train) if i in held]
                train = [r for i, r in enumerate(train) if i not in held]
            self._train, self._held_out = train, val
        return self._train if split == "train" else self._held_out


class DRepParquet(_CopyDetectionData):
    """D-Rep pairs in parquet shards with the columns ``Name``, ``Level``, ``generated_images``, ``real_images``.

    Args:
        train, val, test: a shard, a folder of shards or a glob, per split. Without ``val``, a seeded
            ``val_fraction`` of train is held out.

    Shards are decoded into memory (encoded image bytes, about 6 GB for the whole of D-Rep).
    """

    description = "D-Rep parquet shards"

    def __init__(
        self, train: str | None = None, val: str | None = None, test: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.paths = {"train": train, "val": val, "test": test}

    def read(self, split: str) -> list[PairRecord] | None:
        return read_drep_parquet(self.paths[split], strict=not self.skip_bad_images) if self.paths[split] else None


class PairFolder(_CopyDetectionData):
    """Pairs in folders: ``root/<split>/labels.csv`` with columns ``generated,real,level[,name]``.

    Image paths in ``labels.csv`` are relative to its folder. Without ``root/val``, a seeded
    ``val_fraction`` of train is held out.
    """

    description = "pair folders with labels.csv"

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ZooError(f"{type(self).__name__}: root={root}: not a folder")

    def read(self, split: str) -> list[PairRecord] | None:
        folder = self.root / split
        return read_pair_folder(folder, strict=not self.skip_bad_images) if folder.is_dir() else None
