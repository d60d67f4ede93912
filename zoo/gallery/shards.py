"""Descriptor shards on disk and the manifests that describe them.

Shard ``k`` is ``shard-0000k.safetensors`` (``embeddings``, the ids in its metadata) and its manifest
``shard-0000k.json`` (count, dimension, dtype, sha256), written in that order, each atomically: a shard
whose manifest and checksum agree is complete. ``gallery.json`` describes the whole embedded gallery.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.errors import ZooError

MANIFEST = "gallery.json"
MODEL_DIR = "model"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
# what every gallery.json holds, and the type of each entry
MANIFEST_FIELDS = {"source": str, "kind": str, "id_column": str, "image_column": str, "count": int,
                   "shard_size": int, "num_shards": int, "dtype": str, "model_sha256": str, "complete": bool}


def inside(folder: Path, *parts: str, what: str = "--output") -> Path:
    """``folder / parts``, refused unless it resolves inside ``folder`` (a ``..`` or a link cannot lead out).

    Raises:
        ZooError: the path would be written outside ``folder``.
    """
    path = folder.joinpath(*parts)
    root = folder.resolve()
    if not path.resolve().is_relative_to(root) or path.resolve() == root:
        raise ZooError(f"{what}: {'/'.join(parts)!r} would be written outside {folder} (at {path.resolve()}); "
                       "give a plain name")
    return path


def shard_name(k: int) -> str:
    """File stem of shard ``k``."""
    return f"shard-{k:05d}"


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed), or a ZooError naming the folder."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        raise ZooError(f"cannot write {path}: {err.strerror or err}") from err


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object read from ``path``, or a ZooError that names the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ZooError(f"{path} not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZooError(f"{path} ({what}) is corrupt: {err}") from err
    except OSError as err:
        raise ZooError(f"{path} ({what}) cannot be read: {err.strerror or err}") from err
    if not isinstance(data, dict):
        raise ZooError(f"{path} ({what}) is corrupt: a JSON object was expected, got {type(data).__name__}")
    return data


def check_manifest(manifest: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``manifest`` checked to have every field of ``MANIFEST_FIELDS`` with consistent values."""
    for key, kind in MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ZooError(f"{path} is corrupt: {key!r} should be of type {kind.__name__}, got {value!r}")
    if manifest["dtype"] not in DTYPES:
        raise ZooError(f"{path} is corrupt: dtype {manifest['dtype']!r} is not one of {', '.join(DTYPES)}")
    if manifest["count"] < 1 or manifest["shard_size"] < 1 or (
            manifest["num_shards"] != math.ceil(manifest["count"] / manifest["shard_size"])):
        raise ZooError(f"{path} is corrupt: count {manifest['count']}, shard_size {manifest['shard_size']} and "
                       f"num_shards {manifest['num_shards']} disagree")
    return dict(manifest)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The ``gallery.json`` of an embedded gallery, checked to be complete and well formed."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ZooError(f"{directory} is not an embedded gallery (no {MANIFEST}); run `zoo embed` first")
    manifest = check_manifest(read_json(path, "the manifest of an embedded gallery"), path)
    if not manifest["complete"]:
        raise ZooError(f"{directory}: `zoo embed` has not finished (some shards are missing); run it again")
    return manifest


def write_shard(directory: str | Path, k: int, ids: list[str], embeddings: Tensor) -> Path:
    """Write shard ``k`` atomically: the safetensors file first, then its manifest with the checksum."""
    from safetensors.torch import save_file

    directory = Path(directory)
    target = directory / f"{shard_name(k)}.safetensors"
    tmp = directory / f".{shard_name(k)}.safetensors.tmp{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)  # ranks started by torchrun/SLURM may come before rank 0
        save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata={"ids": json.dumps(ids)})
        os.replace(tmp, target)
    except OSError as err:
        raise ZooError(f"cannot write {target}: {err.strerror or err}") from err
    write_json(directory / f"{shard_name(k)}.json", {
        "shard": k, "count": len(ids), "dim": int(embeddings.shape[1]),
        "dtype": str(embeddings.dtype).removeprefix("torch."), "sha256": sha256_file(target),
    })
    return target


def shard_info(directory: Path, k: int) -> dict[str, Any]:
    """The manifest of shard ``k`` (``count``, ``dim``, ``dtype``, ``sha256``)."""
    return read_json(directory / f"{shard_name(k)}.json", "a shard manifest")


def shard_problem(directory: Path, k: int, count: int | None = None) -> str | None:
    """None when shard ``k`` is complete and intact, else what is wrong with it."""
    data, meta = directory / f"{shard_name(k)}.safetensors", directory / f"{shard_name(k)}.json"
    if not meta.is_file():
        return "missing or unfinished"
    try:
        info = shard_info(directory, k)
        expected = info["sha256"]
    except (ZooError, KeyError):
        return f"its manifest {meta.name} is corrupt"
    if not data.is_file():
        return f"{data.name} is missing"
    if sha256_file(data) != expected:
        return f"{data.name} is corrupt (its sha256 does not match {meta.name})"
    if count is not None and info.get("count") != count:
        return f"{meta.name} says {info.get('count')} images, {count} were expected"
    return None


def read_shard(directory: str | Path, k: int, count: int | None = None) -> tuple[list[str], Tensor]:
    """The ids and float32 descriptors of shard ``k``, checked; a damaged shard is an error, never skipped."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    directory = Path(directory)
    path = directory / f"{shard_name(k)}.safetensors"
    problem = shard_problem(directory, k, count)
    if problem:
        raise ZooError(f"gallery shard {path}: {problem}; run `zoo embed` again to (re)write it")
    try:
        with safe_open(str(path), framework="pt") as handle:
            ids = json.loads(handle.metadata()["ids"])
            embeddings = handle.get_tensor("embeddings").float()
    except (SafetensorError, KeyError, TypeError, json.JSONDecodeError, OSError) as err:
        raise ZooError(f"gallery shard {path} cannot be read: {err}") from err
    if len(ids) != embeddings.shape[0]:
        raise ZooError(f"gallery shard {path}: {len(ids)} ids for {embeddings.shape[0]} descriptors")
    return ids, embeddings


def shard_counts(manifest: Mapping[str, Any]) -> list[int]:
    """Number of images in each shard."""
    n, size = manifest["count"], manifest["shard_size"]
    return [min(size, n - k * size) for k in range(manifest["num_shards"])]


def iter_shards(directory: str | Path, manifest: Mapping[str, Any]) -> Iterator[tuple[int, list[str], Tensor]]:
    """Shard number, ids and descriptors of every shard, one shard in memory at a time."""
    for k, count in enumerate(shard_counts(manifest)):
        ids, embeddings = read_shard(directory, k, count)
        yield k, ids, embeddings


def check_shards(directory: Path, manifest: Mapping[str, Any]) -> list[str]:
    """The sha256 of every shard, each checked first; a missing or damaged shard is an error."""
    checksums = []
    for k, count in enumerate(shard_counts(manifest)):
        problem = shard_problem(directory, k, count)
        if problem:
            raise ZooError(f"gallery shard {directory / shard_name(k)}.safetensors: {problem}; "
                           "run `zoo embed` again")
        checksums.append(shard_info(directory, k)["sha256"])
    return checksums


def _data_offset(path: Path, handle: Any) -> tuple[dict[str, Any], int]:
    """The safetensors header of an open shard file and the byte offset of its ``embeddings``, checked."""
    size = int.from_bytes(handle.read(8), "little")
    try:
        header = json.loads(handle.read(size))
        entry = header["embeddings"]
        start = int(entry["data_offsets"][0])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise ZooError(f"gallery shard {path} cannot be read: its header is corrupt ({err})") from err
    return header, 8 + size + start


def read_rows(directory: Path, k: int, rows: np.ndarray) -> tuple[list[str], Tensor]:
    """The ids and float32 descriptors of the given rows of shard ``k``, read from a memory map of the file.

    Only the pages of those rows are read, so the memory is bounded by the rows, not by the shard: this is how
    ``zoo match`` reads the candidates it re-ranks. The whole file's checksum is not computed here (that would
    read the shard whole); ``zoo index`` checked it, and ``read_index`` refuses an index whose shard manifests
    changed since. The file's length is checked against its header.

    Raises:
        ZooError: the shard or its manifest is missing, or its header disagrees with the file.
    """
    path = directory / f"{shard_name(k)}.safetensors"
    try:
        with open(path, "rb") as handle:
            header, offset = _data_offset(path, handle)
        ids = json.loads(header["__metadata__"]["ids"])
        entry = header["embeddings"]
        dtype = {"F16": np.float16, "F32": np.float32}[entry["dtype"]]
        shape = tuple(int(x) for x in entry["shape"])
        needed = offset + shape[0] * shape[1] * np.dtype(dtype).itemsize if len(shape) == 2 else 0
        if len(shape) != 2 or len(ids) != shape[0] or path.stat().st_size < needed:
            raise ValueError(f"its header ({len(ids)} ids, descriptors {shape}) does not match the file's "
                             f"{path.stat().st_size} bytes; run `zoo embed` again")
        data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        vectors = torch.from_numpy(np.asarray(data[rows], dtype=np.float32))
        del data
    except FileNotFoundError as err:
        raise ZooError(f"gallery shard {path} is missing; run `zoo embed` again") from err
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ZooError(f"gallery shard {path} cannot be read: {err}") from err
    except OSError as err:
        raise ZooError(f"gallery shard {path} cannot be read: {err.strerror or err}") from err
    return [ids[r] for r in rows.tolist()], vectors


def gallery_rows(gallery: Path, manifest: Mapping[str, Any], positions: np.ndarray) -> tuple[np.ndarray, Tensor]:
    """Ids and descriptors at global ``positions`` (any shape; -1 gives ``""`` and zeros), read by row.

    Position ``p`` is row ``p % shard_size`` of shard ``p // shard_size``: only the rows asked for are read.
    """
    flat = positions.reshape(-1)
    dim = shard_info(gallery, 0)["dim"]
    out = torch.zeros(len(flat), dim)
    ids = np.full(len(flat), "", dtype=object)
    size = manifest["shard_size"]
    for k in np.unique(flat[flat >= 0] // size):
        where = np.nonzero((flat >= 0) & (flat // size == k))[0]
        shard_ids, vectors = read_rows(gallery, int(k), flat[where] % size)
        out[torch.from_numpy(where)] = vectors
        ids[where] = shard_ids
    return ids.reshape(positions.shape), out.reshape(*positions.shape, -1)


def gallery_vectors(gallery: Path, manifest: Mapping[str, Any], positions: np.ndarray) -> Tensor:
    """Descriptors at global ``positions`` (any shape; -1 gives zeros), read by row (see ``gallery_rows``)."""
    return gallery_rows(gallery, manifest, positions)[1]


def shard_ids(directory: Path, k: int) -> list[str]:
    """The ids of shard ``k``, from its header alone (the descriptors are not read)."""
    path = directory / f"{shard_name(k)}.safetensors"
    try:
        with open(path, "rb") as handle:
            header, _ = _data_offset(path, handle)
        return json.loads(header["__metadata__"]["ids"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ZooError(f"gallery shard {path} cannot be read: {err}") from err
    except OSError as err:
        raise ZooError(f"gallery shard {path} cannot be read: {err.strerror or err}") from err


def gallery_digest(directory: Path, manifest: Mapping[str, Any]) -> str:
    """sha256 naming one embedded gallery: its model, ids, shard layout and every shard's recorded checksum.

    Read from the manifests alone (no shard is read), so every step of a distributed ``zoo index`` can check
    cheaply that its inputs come from the same gallery.
    """
    counts = shard_counts(manifest)
    shards = []
    for k in range(len(counts)):
        try:
            shards.append(shard_info(directory, k)["sha256"])
        except (ZooError, KeyError) as err:
            raise ZooError(f"gallery shard {directory / shard_name(k)}.json: missing or corrupt; "
                           "run `zoo embed` again") from err
    identity = {key: manifest.get(key) for key in ("model_sha256", "ids_sha256", "count", "shard_size", "dtype")}
    return hashlib.sha256(json.dumps({**identity, "shards": shards}, sort_keys=True).encode()).hexdigest()
