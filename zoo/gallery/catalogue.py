"""The images of a gallery, listed in a fixed order without being read, and decoded one at a time.

A gallery is a folder of images (id = relative path without suffix), webdataset ``.tar`` shards (id =
the member key) or parquet shards (an id column and an image column of bytes or ``{"bytes": ...}``).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.data.images import open_image
from zoo.errors import ZooError

SHOWN = 5  # names quoted in a message about many files


def printable(name: str) -> str:
    """``name`` as valid UTF-8: bytes of a file name that do not decode are written as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class Catalog:
    """The images of a gallery in a fixed order, located without being read.

    ``kind`` is ``folder``, ``tar`` or ``parquet``. ``loc[i]`` is (file index, offset, size) for tar,
    (file index, row group, row) for parquet and (file index, 0, 0) for folders. Ids are valid UTF-8
    (see ``printable``); ``files`` keep the names as the file system gives them.
    """

    source: str
    kind: str
    files: list[str]
    ids: list[str]
    loc: np.ndarray
    id_column: str = "id"
    image_column: str = "image"
    skipped: dict[str, int] = field(default_factory=lambda: {"hidden": 0, "not images": 0})

    @classmethod
    def scan(cls, source: str | Path, id_column: str = "id", image_column: str = "image") -> Catalog:
        """List the images of ``source`` (a folder, a ``.tar`` or ``.parquet`` file, or a folder of them).

        Raises:
            ZooError: ``source`` is missing or empty, a shard is unreadable, an id is duplicated or null,
                or image files are broken or looping symbolic links.
        """
        path = Path(source)
        if not path.exists():
            raise ZooError(f"gallery {printable(str(path))} not found")
        if path.is_file():
            files = [path]
        else:
            files = sorted(path.rglob("*.tar")) or sorted(path.rglob("*.parquet"))
        kind = "folder" if not files else files[0].suffix[1:]
        if kind not in ("folder", "tar", "parquet"):
            raise ZooError(f"gallery {path}: give a folder of images, a .tar (webdataset) or a .parquet file")
        catalog = cls(str(path), kind, [], [], np.zeros((0, 3), np.int64), id_column, image_column)
        rows: list[tuple[int, int, int]] = []
        if kind == "folder":
            for f, (file, id_) in enumerate(_scan_folder(path, catalog.skipped)):
                catalog.files.append(file)
                catalog.ids.append(id_)
                rows.append((f, 0, 0))
        for f, file in enumerate(files):
            catalog.files.append(str(file))
            scanned = _scan_tar(file, catalog.skipped) if kind == "tar" else _scan_parquet(file, id_column,
                                                                                           image_column)
            for id_, a, b in scanned:
                catalog.ids.append(id_)
                rows.append((f, a, b))
        if not catalog.ids:
            raise ZooError(f"gallery {printable(str(path))} holds no images{catalog.skipped_text(' (skipped ', ')')}")
        catalog.loc = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        seen: dict[str, int] = {}
        for i, id_ in enumerate(catalog.ids):
            if id_ in seen:
                raise ZooError(f"gallery {printable(str(path))}: duplicate id {id_!r} "
                               f"({catalog.where(seen[id_])} and {catalog.where(i)})")
            seen[id_] = i
        return catalog

    def __len__(self) -> int:
        return len(self.ids)

    def skipped_text(self, before: str = "", after: str = "") -> str:
        """The entries the scan skipped, counted by reason (``2 hidden, 3 not images``), or ``""``."""
        text = ", ".join(f"{n} {'not an image' if why == 'not images' and n == 1 else why}"
                         for why, n in self.skipped.items() if n)
        return f"{before}{text}{after}" if text else ""

    def where(self, i: int) -> str:
        """Human location of image ``i`` for error messages."""
        f, a, b = (int(v) for v in self.loc[i])
        file = printable(self.files[f])
        if self.kind == "folder":
            return file
        if self.kind == "tar":
            return f"{file} member {self.ids[i]!r}"
        return f"{file} row group {a} row {b} (id {self.ids[i]!r})"

    def ids_digest(self) -> str:
        """sha256 of the ordered ids: tells whether an output folder was made from this gallery."""
        digest = hashlib.sha256()
        for id_ in self.ids:
            digest.update(id_.encode() + b"\n")
        return digest.hexdigest()


def _scan_folder(root: Path, skipped: dict[str, int]) -> list[tuple[str, str]]:
    """(path, id) of the image files below ``root``, sorted by id; an entry that cannot be read is an error.

    The files are those of ``zoo.predict.image_files``, the rule of every command; its skips are counted
    into ``skipped``.
    """
    from zoo.predict import image_files

    found = image_files(root)
    if found.broken:
        shown = ", ".join(printable(str(b)) for b in found.broken[:SHOWN]) + (" ..." if len(found.broken) > SHOWN
                                                                             else "")
        raise ZooError(f"gallery {printable(str(root))}: {len(found.broken)} entries cannot be read (broken or "
                       f"looping links, links to a folder listed already, unreadable folders: {shown}); fix or "
                       "remove them")
    skipped["hidden"] += len(found.hidden)
    skipped["not images"] += len(found.others)
    return sorted(((str(f), printable(f.relative_to(root).with_suffix("").as_posix())) for f in found.images),
                  key=lambda item: item[1])


def _hidden_or_not_image(name: str) -> str | None:
    """Why a shard member named ``name`` is skipped (``hidden``, ``not images``), or None for an image."""
    from zoo.predict import image_suffixes

    if any(part.startswith(".") for part in name.split("/") if part):
        return "hidden"
    return None if Path(name).suffix.lower() in image_suffixes() else "not images"


def _scan_tar(file: Path, skipped: dict[str, int]) -> Iterator[tuple[str, int, int]]:
    try:
        with tarfile.open(file, "r:") as tar:
            for member in tar:  # reads headers only and seeks past the data
                if not member.isfile():
                    continue
                reason = _hidden_or_not_image(member.name)
                if reason:  # a webdataset sample's .json/.txt/.cls members are counted here
                    skipped[reason] += 1
                    continue
                folder, _, name = member.name.rpartition("/")
                key = name.split(".", 1)[0]
                yield printable(f"{folder}/{key}" if folder else key), member.offset_data, member.size
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ZooError(f"gallery shard {file} is not a readable uncompressed tar: {err}") from err


def _scan_parquet(file: Path, id_column: str, image_column: str) -> Iterator[tuple[str, int, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        for column in (id_column, image_column):
            if column not in names:
                raise ZooError(f"gallery shard {file} has no column {column!r} (columns: {', '.join(names)})")
        for group in range(parquet.num_row_groups):
            ids = parquet.read_row_group(group, columns=[id_column]).column(0).to_pylist()
            for row, id_ in enumerate(ids):
                if id_ is None or (isinstance(id_, str) and not id_.strip()):
                    raise ZooError(f"gallery shard {file} row group {group} row {row}: the id ({id_column!r}) "
                                   "is empty")
                yield str(id_), group, row
    except (pa.ArrowException, OSError) as err:
        raise ZooError(f"gallery shard {file} is not a readable parquet file: {err}") from err


class ImageReader:
    """Decodes catalogue images; keeps one open tar and one parquet row group (streamed, in order)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._tar: tuple[int, Any] | None = None
        self._group: tuple[int, int, list[Any]] | None = None

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as 8-bit RGB, or a ZooError naming it."""
        c = self.catalog
        f, a, b = (int(v) for v in c.loc[i])
        name = c.where(i)
        if c.kind == "folder":
            return open_image(c.files[f], name=name)
        if c.kind == "tar":
            if self._tar is None or self._tar[0] != f:
                self.close()
                self._tar = (f, open(c.files[f], "rb"))  # noqa: SIM115 - kept open across images
            handle = self._tar[1]
            handle.seek(a)
            data = handle.read(b)
            if len(data) != b:
                raise ZooError(f"{name}: truncated tar shard")
            return open_image(data, name=name)
        if self._group is None or self._group[:2] != (f, a):
            import pyarrow.parquet as pq

            column = pq.ParquetFile(c.files[f]).read_row_group(a, columns=[c.image_column]).column(0)
            self._group = (f, a, column.to_pylist())
        value = self._group[2][b]
        if isinstance(value, dict):
            value = value.get("bytes")
        if not isinstance(value, bytes | bytearray):
            raise ZooError(f"{name}: column {c.image_column!r} holds no image bytes")
        return open_image(bytes(value), name=name)

    def close(self) -> None:
        """Close the open tar shard, if any."""
        if self._tar is not None:
            self._tar[1].close()
            self._tar = None


class SourceImages:
    """The images an embedded folder was made from, by id, read again from where they were embedded.

    ``manifest`` is the ``gallery.json`` of that folder. When the source has moved or cannot be listed,
    ``load`` gives None for every id, so a caller can say what it could not check.
    """

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        try:
            self.catalog: Catalog | None = Catalog.scan(manifest["source"], manifest["id_column"],
                                                        manifest["image_column"])
        except ZooError:
            self.catalog = None
        self.positions = {id_: i for i, id_ in enumerate(self.catalog.ids)} if self.catalog else {}
        self.reader = ImageReader(self.catalog) if self.catalog is not None else None

    def load(self, id_: str) -> Image.Image | None:
        """Image ``id_`` as RGB, or None when it is gone or cannot be decoded any more."""
        if self.reader is None or id_ not in self.positions:
            return None
        try:
            return self.reader.load(self.positions[id_])
        except ZooError:
            return None  # changed since it was embedded

    def close(self) -> None:
        """Close the open shard, if any."""
        if self.reader is not None:
            self.reader.close()
