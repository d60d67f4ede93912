"""Replication ratio at gallery scale: ``zoo embed``, ``zoo index`` and ``zoo match``.

ICDiff's headline measurement embeds the images a diffusion model generates and an open-source
gallery, finds each generation's closest gallery images, and counts the generations whose predicted
replication level reaches a threshold. Three commands do it with any copy-detection method that offers
``embed(images)`` and ``pair_from_embeddings(generated_emb, real_emb)``:

``zoo embed``
    Lightning ``predict`` over a gallery (a folder of images, webdataset ``.tar`` shards or parquet
    shards with ``id`` and ``image`` columns), streamed, with a prediction writer that stores the
    descriptors in shards of ``shard_size`` images: ``shard-00000.safetensors`` (``embeddings`` and the
    ids in its metadata) and ``shard-00000.json`` (count, dimension, sha256). Shard ``k`` holds the
    gallery's images ``k * shard_size ...`` in catalogue order and is written by rank ``k % world_size``,
    so the same shards come out on one CPU, one GPU or many GPUs and nodes (the trainer's ``devices``,
    ``num_nodes`` and ``strategy`` decide), and no image is embedded twice (no DistributedSampler, hence
    no padding duplicates). A shard is written to a temporary file and renamed, then its manifest is
    written: a shard whose manifest and checksum agree is skipped, so a killed job resumes. The method is
    saved beside the shards (``model/``) so that ``zoo match`` re-ranks with the same weights.

``zoo index``
    A FAISS index over the shards, read one shard at a time: exact (``flat``) for small galleries,
    ``ivf`` or ``ivfpq`` for large ones (``auto`` picks by size), trained on a random sample of
    ``train_size`` descriptors. ``index.faiss``, ``index.json`` (parameters and the checksums of the
    shards it covers) and the id map ``index-ids.parquet`` are written beside the shards.

``zoo match`` (alias ``zoo replication-ratio``)
    For each generator (a folder of its images, embedded first, or the output of ``zoo embed``), the
    top-``k`` gallery candidates by cosine similarity, re-ranked by the method's predicted replication
    level of each pair (``pair_from_embeddings``, e.g. PDF-Embedding's six-level PDF). It reports the
    replication ratio (share of generations whose best level is at least ``threshold``) with a bootstrap
    confidence interval, the level histogram, a PNG contact sheet of the top matches per generator, and
    a bar chart comparing the generators (``report.json``, ``matches.csv``, ``*.png`` in ``--output``).

Example:
    .. code-block:: bash

        zoo embed --gallery data/laion/shards --output runs/gallery --model PDFEmbedding \\
            --trainer.devices 8 --trainer.strategy ddp
        zoo index --gallery runs/gallery --index_type ivfpq --nlist 4096 --pq_m 64
        zoo match --gallery runs/gallery --generated sdxl=gen/sdxl midjourney=gen/mj \\
            --threshold 3 --output runs/ratio

Every option can come from a YAML file with ``--config`` (see ``configs/gallery/``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zoo.data.images import IMAGE_SUFFIXES, list_images, open_image
from zoo.errors import ZooError
from zoo.tasks.copy_detection import COPY_FROM_LEVEL, NUM_LEVELS

MANIFEST = "gallery.json"
MODEL_DIR = "model"
INDEX_FILE = "index.faiss"
INDEX_MANIFEST = "index.json"
INDEX_IDS = "index-ids.parquet"
DTYPES = {"float16": torch.float16, "float32": torch.float32}


# ================================================================================== gallery sources
@dataclass
class Catalog:
    """The images of a gallery in a fixed order, located without being read.

    ``kind`` is ``folder`` (one file per image), ``tar`` (webdataset shards: members grouped by key, the
    key is the id) or ``parquet`` (``id_column`` and ``image_column``; images as bytes or
    ``{"bytes": ...}``). ``loc[i]`` is (file index, offset, size) for tar, (file index, row group, row)
    for parquet and (file index, 0, 0) for folders.
    """

    source: str
    kind: str
    files: list[str]
    ids: list[str]
    loc: np.ndarray
    id_column: str = "id"
    image_column: str = "image"

    @classmethod
    def scan(cls, source: str | Path, id_column: str = "id", image_column: str = "image") -> Catalog:
        """List the images of ``source`` (a folder, a ``.tar`` or ``.parquet`` file, or a folder of them)."""
        path = Path(source)
        if not path.exists():
            raise ZooError(f"gallery {path} not found")
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
            images, _ = list_images(path)
            catalog.files = [str(p) for p in images]
            catalog.ids = [p.relative_to(path).with_suffix("").as_posix() for p in images]
            rows = [(i, 0, 0) for i in range(len(images))]
        for f, file in enumerate(files):
            catalog.files.append(str(file))
            scanned = _scan_tar(file) if kind == "tar" else _scan_parquet(file, id_column, image_column)
            for id_, a, b in scanned:
                catalog.ids.append(id_)
                rows.append((f, a, b))
        if not catalog.ids:
            raise ZooError(f"gallery {path} holds no images")
        catalog.loc = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        seen: dict[str, int] = {}
        for i, id_ in enumerate(catalog.ids):
            if id_ in seen:
                raise ZooError(
                    f"gallery {path}: duplicate id {id_!r} ({catalog.where(seen[id_])} and {catalog.where(i)})"
                )
            seen[id_] = i
        return catalog

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, i: int) -> str:
        """Human location of image ``i`` for error messages."""
        f, a, b = (int(v) for v in self.loc[i])
        if self.kind == "folder":
            return self.files[f]
        if self.kind == "tar":
            return f"{self.files[f]} member {self.ids[i]!r}"
        return f"{self.files[f]} row group {a} row {b} (id {self.ids[i]!r})"

    def ids_digest(self) -> str:
        """sha256 of the ordered ids: tells whether an output folder was made from this gallery."""
        digest = hashlib.sha256()
        for id_ in self.ids:
            digest.update(id_.encode() + b"\n")
        return digest.hexdigest()


def _scan_tar(file: Path) -> Iterator[tuple[str, int, int]]:
    try:
        with tarfile.open(file, "r:") as tar:
            for member in tar:  # reads headers only and seeks past the data
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                key = name.split(".", 1)[0]
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield (f"{folder}/{key}" if folder else key), member.offset_data, member.size
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
                yield str(id_), group, row
    except (pa.ArrowException, OSError) as err:
        raise ZooError(f"gallery shard {file} is not a readable parquet file: {err}") from err


class _Reader:
    """Decodes catalogue images; keeps one open tar and one parquet row group (streamed, in order)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._tar: tuple[int, Any] | None = None
        self._group: tuple[int, int, list[Any]] | None = None

    def load(self, i: int) -> Image.Image:
        c = self.catalog
        f, a, b = (int(v) for v in c.loc[i])
        name = c.where(i)
        if c.kind == "folder":
            return open_image(c.files[f], name=name)
        if c.kind == "tar":
            if self._tar is None or self._tar[0] != f:
                if self._tar is not None:
                    self._tar[1].close()
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


class _ShardStream(IterableDataset):
    """The images of the given shards, in catalogue order, split among DataLoader workers by shard."""

    def __init__(self, catalog: Catalog, shard_size: int, shards: list[int], transform: Callable) -> None:
        self.catalog, self.shard_size, self.shards, self.transform = catalog, shard_size, shards, transform

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        shards = self.shards if worker is None else self.shards[worker.id :: worker.num_workers]
        reader = _Reader(self.catalog)
        for k in shards:
            start = k * self.shard_size
            for i in range(start, min(start + self.shard_size, len(self.catalog))):
                yield {"image": self.transform(reader.load(i)), "shard": k, "row": i - start}


# ================================================================================== shards on disk
def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_shard(directory: str | Path, k: int, ids: list[str], embeddings: Tensor) -> Path:
    """Write shard ``k`` atomically: the safetensors file first, then its manifest with the checksum."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)  # ranks started by torchrun/SLURM may come before rank 0
    target = directory / f"{_shard_name(k)}.safetensors"
    tmp = directory / f".{_shard_name(k)}.safetensors.tmp{os.getpid()}"
    save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata={"ids": json.dumps(ids)})
    os.replace(tmp, target)
    _write_json(directory / f"{_shard_name(k)}.json", {
        "shard": k, "count": len(ids), "dim": int(embeddings.shape[1]),
        "dtype": str(embeddings.dtype).removeprefix("torch."), "sha256": _sha256(target),
    })
    return target


def shard_problem(directory: Path, k: int, count: int | None = None) -> str | None:
    """None when shard ``k`` is complete and intact, else what is wrong with it."""
    data, meta = directory / f"{_shard_name(k)}.safetensors", directory / f"{_shard_name(k)}.json"
    if not meta.is_file():
        return "missing or unfinished"
    try:
        info = json.loads(meta.read_text())
        expected = info["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"its manifest {meta.name} is corrupt"
    if not data.is_file():
        return f"{data.name} is missing"
    if _sha256(data) != expected:
        return f"{data.name} is corrupt (its sha256 does not match {meta.name})"
    if count is not None and info.get("count") != count:
        return f"{meta.name} says {info.get('count')} images, {count} were expected"
    return None


def read_shard(directory: str | Path, k: int, count: int | None = None) -> tuple[list[str], Tensor]:
    """The ids and float32 descriptors of shard ``k``, checked; a damaged shard is an error, never skipped."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    directory = Path(directory)
    path = directory / f"{_shard_name(k)}.safetensors"
    problem = shard_problem(directory, k, count)
    if problem:
        raise ZooError(f"gallery shard {path}: {problem}; run `zoo embed` again to (re)write it")
    try:
        with safe_open(str(path), framework="pt") as handle:
            ids = json.loads(handle.metadata()["ids"])
            embeddings = handle.get_tensor("embeddings").float()
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise ZooError(f"gallery shard {path} cannot be read: {err}") from err
    if len(ids) != embeddings.shape[0]:
        raise ZooError(f"gallery shard {path}: {len(ids)} ids for {embeddings.shape[0]} descriptors")
    return ids, embeddings


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The ``gallery.json`` of an embedded gallery, checked to be complete."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ZooError(f"{directory} is not an embedded gallery (no {MANIFEST}); run `zoo embed` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ZooError(f"{path} is not valid JSON: {err}") from err
    if not manifest.get("complete"):
        raise ZooError(f"{directory}: `zoo embed` has not finished (some shards are missing); run it again")
    return manifest


def shard_counts(manifest: Mapping[str, Any]) -> list[int]:
    """Number of images in each shard."""
    n, size = manifest["count"], manifest["shard_size"]
    return [min(size, n - k * size) for k in range(manifest["num_shards"])]


def iter_shards(directory: str | Path, manifest: Mapping[str, Any]) -> Iterator[tuple[int, list[str], Tensor]]:
    """Shard number, ids and descriptors of every shard, one shard in memory at a time."""
    for k, count in enumerate(shard_counts(manifest)):
        ids, embeddings = read_shard(directory, k, count)
        yield k, ids, embeddings


# ================================================================================== methods
def load_method(spec: str, variant: str | None = None, init_args: Mapping[str, Any] | None = None,
                class_path: str | None = None) -> Any:
    """A copy-detection method with descriptors, from a registry name, a class path or a checkpoint.

    ``spec`` is a short name (``PDFEmbedding``), a dotted class path, a zoo checkpoint folder or
    ``hf-hub:org/name``. ``class_path`` names the class of a checkpoint whose method is not registered.
    """
    from zoo import backbones, hub, registry
    from zoo.module import CONFIG_NAME, WEIGHTS_NAME, load_state, read_config

    if spec.startswith(hub.HUB_PREFIX) or Path(spec).is_dir():
        from safetensors.torch import load_file

        folder = hub.resolve(spec)
        config = read_config(folder / CONFIG_NAME)
        name = config["name"]
        cls = registry.methods.load(name) if name in registry.methods.entries or not class_path else _import(class_path)
        with backbones.no_pretrained_download():
            method = cls(**config["init_args"])
        load_state(method, load_file(str(folder / WEIGHTS_NAME)), str(folder / WEIGHTS_NAME))
    else:
        cls = registry.methods.load(spec) if spec.isidentifier() else _import(spec)
        args = dict(init_args or {})
        method = cls.from_variant(variant, **args) if variant else cls(**args)
    for attr in ("embed", "pair_from_embeddings"):
        if not callable(getattr(method, attr, None)):
            raise ZooError(
                f"{type(method).__name__} has no {attr}(): gallery search needs a copy-detection method with "
                "descriptors (embed and pair_from_embeddings)"
            )
    return method.eval()


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ZooError(f"cannot import the method class {path!r}: {err}") from err


def fingerprint(method: torch.nn.Module) -> str:
    """sha256 of the method's weights: descriptors of different weights are not comparable."""
    digest = hashlib.sha256(type(method).__name__.encode())
    for key, value in sorted(method.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _Embedder(pl.LightningModule):
    def __init__(self, method: torch.nn.Module) -> None:
        super().__init__()
        self.method = method

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"embedding": self.method.embed(batch["image"]).float().cpu(),
                "shard": batch["shard"].cpu(), "row": batch["row"].cpu()}


class _GalleryData(pl.LightningDataModule):
    def __init__(self, catalog: Catalog, output: Path, shard_size: int, transform: Callable,
                 batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.catalog, self.output, self.shard_size = catalog, output, shard_size
        self.transform, self.batch_size, self.num_workers = transform, batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        num_shards = math.ceil(len(self.catalog) / self.shard_size)
        todo = []
        for k in range(rank, num_shards, world):
            count = min(self.shard_size, len(self.catalog) - k * self.shard_size)
            problem = shard_problem(self.output, k, count)
            if problem and problem != "missing or unfinished":
                print(f"zoo embed: shard {k} of {self.output}: {problem}; embedding it again")
            if problem:
                todo.append(k)
        stream = _ShardStream(self.catalog, self.shard_size, todo, self.transform)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers)


class ShardWriter(BasePredictionWriter):
    """Collects the descriptors of each shard and writes the shard as soon as it is full."""

    def __init__(self, catalog: Catalog, output: Path, shard_size: int, dtype: torch.dtype) -> None:
        super().__init__(write_interval="batch")
        self.catalog, self.output, self.shard_size, self.dtype = catalog, output, shard_size, dtype
        self._open: dict[int, tuple[Tensor, np.ndarray]] = {}

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        embedding, shards, rows = prediction["embedding"], prediction["shard"].tolist(), prediction["row"].tolist()
        for k in sorted(set(shards)):
            count = min(self.shard_size, len(self.catalog) - k * self.shard_size)
            if k not in self._open:
                self._open[k] = (torch.zeros(count, embedding.shape[1], dtype=self.dtype), np.zeros(count, bool))
            buffer, filled = self._open[k]
            mine = [j for j, s in enumerate(shards) if s == k]
            where = torch.tensor([rows[j] for j in mine])
            buffer[where] = embedding[mine].to(self.dtype)
            filled[where.numpy()] = True
            if filled.all():
                start = k * self.shard_size
                write_shard(self.output, k, self.catalog.ids[start : start + count], buffer)
                del self._open[k]

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._open:
            raise ZooError(f"zoo embed: shards {sorted(self._open)} of {self.output} were left incomplete")
        trainer.strategy.barrier("zoo-embed-shards")
        if trainer.is_global_zero:
            manifest = json.loads((self.output / MANIFEST).read_text())
            counts = shard_counts(manifest)
            missing = [k for k, n in enumerate(counts) if shard_problem(self.output, k, n)]
            if missing:
                raise ZooError(f"zoo embed: shards {missing} of {self.output} are missing after the run")
            manifest["complete"] = True
            _write_json(self.output / MANIFEST, manifest)


def embed(gallery: str | Path, output: str | Path, method: Any, *, shard_size: int = 10_000,
          batch_size: int = 64, num_workers: int = 0, dtype: str = "float16", image_size: int = 224,
          id_column: str = "id", image_column: str = "image", trainer: Mapping[str, Any] | None = None,
          method_spec: Mapping[str, Any] | None = None) -> Path:
    """Embed every image of ``gallery`` into descriptor shards in ``output`` (resuming a killed run).

    Args:
        gallery: a folder of images, a webdataset ``.tar``, a ``.parquet`` file or a folder of shards.
        output: the folder of the shards; created if needed.
        method: a copy-detection method with ``embed`` (see ``load_method``).
        shard_size: images per shard.
        batch_size: images per batch.
        num_workers: DataLoader workers per rank.
        dtype: ``float16`` or ``float32`` storage of the descriptors.
        image_size: size of the default transform when the method gives none.
        id_column: parquet column of the ids.
        image_column: parquet column of the encoded images.
        trainer: Trainer arguments (``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ...).
        method_spec: how the method was named, recorded in the manifest.

    Returns:
        ``output``.
    """
    from zoo.data.base import default_transform

    if dtype not in DTYPES:
        raise ZooError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if shard_size < 1:
        raise ZooError("--shard_size must be at least 1")
    output = Path(output)
    catalog = Catalog.scan(gallery, id_column, image_column)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **(trainer or {})}
    kwargs["callbacks"] = [ShardWriter(catalog, output, shard_size, DTYPES[dtype])]
    pl_trainer = pl.Trainer(**kwargs)
    manifest = {
        "source": str(Path(gallery).resolve()), "kind": catalog.kind, "id_column": id_column,
        "image_column": image_column, "count": len(catalog), "ids_sha256": catalog.ids_digest(),
        "shard_size": shard_size, "num_shards": math.ceil(len(catalog) / shard_size), "dtype": dtype,
        "method": type(method).__name__, "class_path": f"{type(method).__module__}.{type(method).__qualname__}",
        "model_sha256": fingerprint(method), "spec": dict(method_spec or {}), "complete": False,
    }
    previous = output / MANIFEST
    if previous.is_file():
        old = json.loads(previous.read_text())
        for key in ("ids_sha256", "shard_size", "dtype", "model_sha256"):
            if old.get(key) != manifest[key]:
                raise ZooError(
                    f"{output} holds shards of another run ({key} differs: {old.get(key)} vs {manifest[key]}); "
                    "give a new --output folder"
                )
    if pl_trainer.is_global_zero:
        output.mkdir(parents=True, exist_ok=True)
        method.save_pretrained(output / MODEL_DIR)
        _write_json(previous, manifest)
    transform = method.image_transform() or default_transform(image_size)
    data = _GalleryData(catalog, output, shard_size, transform, batch_size, num_workers)
    with warnings.catch_warnings():
        # batch indices come from a sampler; the shard writer places rows by (shard, row) instead
        warnings.filterwarnings("ignore", "Couldn't infer the batch indices")
        pl_trainer.predict(_Embedder(method), datamodule=data, return_predictions=False)
    return output


# ================================================================================== index
def build_index(gallery: str | Path, index_type: str = "auto", flat_max: int = 200_000, nlist: int | None = None,
                pq_m: int = 64, pq_bits: int = 8, train_size: int = 100_000, nprobe: int = 16,
                seed: int = 0) -> Path:
    """Build the FAISS index of an embedded gallery, reading one shard at a time.

    Args:
        gallery: the output folder of ``zoo embed``.
        index_type: ``flat`` (exact), ``ivf``, ``ivfpq``, or ``auto`` (flat up to ``flat_max`` images).
        flat_max: the largest gallery ``auto`` indexes exactly.
        nlist: inverted lists of IVF; default ``4 * sqrt(N)``, at most ``N / 39``.
        pq_m: sub-quantisers of PQ (must divide the dimension).
        pq_bits: bits per sub-quantiser code.
        train_size: descriptors sampled to train IVF / PQ.
        nprobe: lists visited per query, stored with the index.
        seed: seed of the training sample.

    Returns:
        the path of ``index.faiss``.
    """
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    gallery = Path(gallery)
    manifest = read_manifest(gallery)
    n = manifest["count"]
    kind = ("flat" if n <= flat_max else "ivfpq") if index_type == "auto" else index_type
    if kind not in ("flat", "ivf", "ivfpq"):
        raise ZooError(f"--index_type {index_type!r}: choose auto, flat, ivf or ivfpq")
    counts = shard_counts(manifest)
    checksums = []
    for k, count in enumerate(counts):  # every shard is checked before any work
        problem = shard_problem(gallery, k, count)
        if problem:
            raise ZooError(f"gallery shard {gallery / _shard_name(k)}.safetensors: {problem}; run `zoo embed` again")
        checksums.append(json.loads((gallery / f"{_shard_name(k)}.json").read_text())["sha256"])
    dim = json.loads((gallery / f"{_shard_name(0)}.json").read_text())["dim"]
    params: dict[str, Any] = {"type": kind, "dim": dim, "metric": "inner_product (cosine of L2-normalised)"}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if dim % pq_m:
                raise ZooError(f"--pq_m {pq_m} must divide the descriptor dimension {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
            params.update(pq_m=pq_m, pq_bits=pq_bits)
        params.update(nlist=nlist, nprobe=nprobe, train_size=min(train_size, n))
        index.train(_sample(gallery, manifest, counts, min(train_size, n), seed))
        index.nprobe = nprobe
    tmp_ids = gallery / f".{INDEX_IDS}.tmp{os.getpid()}"
    with pq.ParquetWriter(tmp_ids, pa.schema([("id", pa.string())])) as writer:
        for _, ids, embeddings in iter_shards(gallery, manifest):
            index.add(normalised(embeddings))
            writer.write_table(pa.table({"id": ids}))
    tmp_index = gallery / f".{INDEX_FILE}.tmp{os.getpid()}"
    faiss.write_index(index, str(tmp_index))
    os.replace(tmp_ids, gallery / INDEX_IDS)
    os.replace(tmp_index, gallery / INDEX_FILE)
    _write_json(gallery / INDEX_MANIFEST, {**params, "count": int(index.ntotal), "shard_sha256": checksums})
    return gallery / INDEX_FILE


def normalised(embeddings: Tensor) -> np.ndarray:
    """Contiguous float32 rows of unit L2 norm: inner product is then cosine similarity."""
    import faiss

    array = np.ascontiguousarray(embeddings.float().numpy())
    faiss.normalize_L2(array)
    return array


def _sample(gallery: Path, manifest: Mapping[str, Any], counts: list[int], size: int, seed: int) -> np.ndarray:
    """``size`` descriptors drawn uniformly from the whole gallery, gathered shard by shard."""
    chosen = np.sort(np.random.default_rng(seed).choice(manifest["count"], size=size, replace=False))
    starts = np.cumsum([0, *counts])
    parts = []
    for k, count in enumerate(counts):
        rows = chosen[(chosen >= starts[k]) & (chosen < starts[k] + count)] - starts[k]
        if len(rows):
            parts.append(normalised(read_shard(gallery, k, count)[1][torch.from_numpy(rows)]))
    return np.concatenate(parts)


# ================================================================================== match
@dataclass
class GeneratorResult:
    """The best gallery match of each generated image of one generator."""

    name: str
    ids: list[str]
    match_ids: list[str]
    similarity: np.ndarray
    level: np.ndarray
    pdf: np.ndarray | None
    threshold: float
    ratio: float = 0.0
    ci: tuple[float, float] = (0.0, 0.0)
    histogram: list[int] = field(default_factory=list)


def bootstrap_ratio(replicated: np.ndarray, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the share of True in ``replicated``.

    Resampling n Bernoulli outcomes with replacement draws the count of True from Binomial(n, p̂), so the
    bootstrap distribution is sampled exactly without materialising the resamples.
    """
    n = len(replicated)
    means = np.random.default_rng(seed).binomial(n, replicated.mean(), size=samples) / n
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def gallery_vectors(gallery: Path, manifest: Mapping[str, Any], positions: np.ndarray) -> Tensor:
    """Descriptors at global ``positions`` (any shape), read shard by shard."""
    flat = positions.reshape(-1)
    out = torch.zeros(len(flat), manifest["dim"])
    size, counts = manifest["shard_size"], shard_counts(manifest)
    for k in np.unique(flat[flat >= 0] // size):
        mask = (flat >= 0) & (flat // size == k)
        _, embeddings = read_shard(gallery, int(k), counts[k])
        out[torch.from_numpy(np.nonzero(mask)[0])] = embeddings[torch.from_numpy(flat[mask] % size)]
    return out.reshape(*positions.shape, -1)


def match(gallery: str | Path, generated: Mapping[str, str | Path], output: str | Path, *, k: int = 10,
          threshold: float = float(COPY_FROM_LEVEL), bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
          top: int = 16, nprobe: int | None = None, batch_size: int = 64, num_workers: int = 0,
          trainer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Replication ratio of each generator against an embedded, indexed gallery.

    Args:
        gallery: the output folder of ``zoo embed`` + ``zoo index``.
        generated: generator name -> a folder/shard source of its images, or a ``zoo embed`` output folder.
        output: where the report, the matches and the figures are written.
        k: gallery candidates retrieved per generated image before re-ranking.
        threshold: a generation replicates when its best predicted level is at least this.
        bootstrap: bootstrap resamples of the confidence interval.
        confidence: level of the interval.
        seed: seed of the bootstrap.
        top: pairs shown in each contact sheet.
        nprobe: IVF lists visited per query (default: the index's).
        batch_size: images per batch when generated images are embedded first.
        num_workers: DataLoader workers for that.
        trainer: Trainer arguments for that.

    Returns:
        the report written to ``report.json``.
    """
    import faiss

    gallery, output = Path(gallery), Path(output)
    manifest = read_manifest(gallery)
    if not (gallery / INDEX_FILE).is_file() or not (gallery / INDEX_MANIFEST).is_file():
        raise ZooError(f"{gallery} has no {INDEX_FILE}; run `zoo index --gallery {gallery}` first")
    index_info = json.loads((gallery / INDEX_MANIFEST).read_text())
    current = [json.loads((gallery / f"{_shard_name(s)}.json").read_text())["sha256"]
               for s in range(manifest["num_shards"])]
    if index_info["shard_sha256"] != current:
        raise ZooError(f"{gallery / INDEX_FILE} was built from other shards; run `zoo index` again")
    manifest = {**manifest, "dim": index_info["dim"]}
    index = faiss.read_index(str(gallery / INDEX_FILE))
    if nprobe is not None and index_info["type"] != "flat":
        faiss.extract_index_ivf(index).nprobe = nprobe
    method = load_method(str(gallery / MODEL_DIR), class_path=manifest["class_path"])
    if fingerprint(method) != manifest["model_sha256"]:
        raise ZooError(f"{gallery / MODEL_DIR} does not hold the weights the gallery was embedded with")
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for name, source in generated.items():
        queries = Path(source)
        if not (queries / MANIFEST).is_file():
            queries = embed(source, output / "embeddings" / name, method, shard_size=manifest["shard_size"],
                            batch_size=batch_size, num_workers=num_workers, dtype=manifest["dtype"],
                            trainer={"devices": 1, "enable_progress_bar": False, **(trainer or {})})
        result = _match_generator(name, queries, gallery, manifest, index, method, k, threshold)
        result.ratio = float(np.mean(result.level >= threshold))
        result.ci = bootstrap_ratio(result.level >= threshold, bootstrap, confidence, seed)
        rounded = np.clip(np.rint(result.level), 0, NUM_LEVELS - 1).astype(int)
        result.histogram = np.bincount(rounded, minlength=NUM_LEVELS).tolist()
        results.append(result)
        _contact_sheet(result, queries, manifest, top, output / f"contact_{name}.png")
    return _report(results, output, k=k, threshold=threshold, confidence=confidence, index=index_info)


def _match_generator(name: str, queries: Path, gallery: Path, manifest: Mapping[str, Any], index: Any,
                     method: Any, k: int, threshold: float) -> GeneratorResult:
    query_manifest = read_manifest(queries)
    if query_manifest["model_sha256"] != manifest["model_sha256"]:
        raise ZooError(f"{queries} was embedded with other weights than the gallery {gallery}")
    parts = list(iter_shards(queries, query_manifest))
    ids = [id_ for _, shard_ids, _ in parts for id_ in shard_ids]
    embeddings = torch.cat([e for _, _, e in parts])
    if embeddings.shape[1] != index.d:
        raise ZooError(
            f"descriptors of {name} ({queries}) have dimension {embeddings.shape[1]}, "
            f"the gallery index {gallery / INDEX_FILE} has {index.d}"
        )
    k = min(k, index.ntotal)
    similarity, positions = index.search(normalised(embeddings), k)
    candidates = gallery_vectors(gallery, manifest, positions)
    level = torch.full((len(ids), k), -1.0)
    pdf = None
    flat_q = embeddings.repeat_interleave(k, dim=0)
    flat_g = candidates.reshape(-1, embeddings.shape[1])
    chunk = 8192
    with torch.no_grad():
        for start in range(0, len(flat_q), chunk):
            out = method.pair_from_embeddings(flat_q[start : start + chunk], flat_g[start : start + chunk])
            level.view(-1)[start : start + chunk] = out["level"].float().cpu()
            if out.get("pdf") is not None:
                if pdf is None:
                    pdf = torch.zeros(len(ids) * k, NUM_LEVELS)
                pdf[start : start + chunk] = out["pdf"].float().cpu()
    level[torch.from_numpy(positions < 0)] = -1.0  # FAISS pads with -1 when fewer than k are found
    # re-rank by the predicted level; the descriptor similarity breaks ties
    best = _best(level.numpy(), similarity)
    rows = np.arange(len(ids))
    ids_map = _id_map(gallery)
    return GeneratorResult(
        name=name, ids=ids, match_ids=[ids_map[p] if p >= 0 else "" for p in positions[rows, best]],
        similarity=similarity[rows, best], level=level.numpy()[rows, best],
        pdf=None if pdf is None else pdf.view(len(ids), k, NUM_LEVELS).numpy()[rows, best], threshold=threshold,
    )


def _best(level: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Column of the highest level in each row, the highest similarity among equal levels."""
    top = level.max(axis=1, keepdims=True)
    return np.where(level == top, similarity, -np.inf).argmax(axis=1)


def _id_map(gallery: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(gallery / INDEX_IDS, columns=["id"]).column(0).to_pylist()


def _contact_sheet(result: GeneratorResult, queries: Path, manifest: Mapping[str, Any], top: int,
                   path: Path) -> None:
    """PNG grid of the ``top`` best matches: generated image, gallery image, level and similarity."""
    from PIL import ImageDraw

    query_manifest = read_manifest(queries)
    sources = {}
    for key, info in (("query", query_manifest), ("gallery", manifest)):
        try:
            catalog = Catalog.scan(info["source"], info["id_column"], info["image_column"])
        except ZooError:
            catalog = None  # the images moved away: the sheet shows the ids only
        sources[key] = (catalog, {id_: i for i, id_ in enumerate(catalog.ids)} if catalog else {})
    order = np.lexsort((-result.similarity, -result.level))[:top]
    thumb, text_h, cols = 96, 28, 4
    rows = max(1, math.ceil(len(order) / cols))
    sheet = Image.new("RGB", (cols * (2 * thumb + 8), rows * (thumb + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for cell, q in enumerate(order):
        x, y = (cell % cols) * (2 * thumb + 8), (cell // cols) * (thumb + text_h)
        for offset, (key, id_) in enumerate((("query", result.ids[q]), ("gallery", result.match_ids[q]))):
            catalog, positions = sources[key]
            if catalog is not None and id_ in positions:
                image = _Reader(catalog).load(positions[id_]).resize((thumb, thumb))
                sheet.paste(image, (x + offset * thumb, y))
        draw.text((x + 2, y + thumb + 1), f"level {result.level[q]:.2f}  cos {result.similarity[q]:.2f}", fill="black")
        draw.text((x + 2, y + thumb + 13), f"{result.ids[q][:14]} ~ {result.match_ids[q][:14]}", fill="gray")
    sheet.save(path)


def _report(results: list[GeneratorResult], output: Path, **settings: Any) -> dict[str, Any]:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.console import Console
    from rich.table import Table

    report = {
        "settings": settings,
        "generators": {
            r.name: {"count": len(r.ids), "replication_ratio": r.ratio, "ci": list(r.ci), "level_histogram": r.histogram,
                     "contact_sheet": f"contact_{r.name}.png"}
            for r in results
        },
    }
    _write_json(output / "report.json", report)
    with open(output / "matches.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["generator", "id", "match_id", "similarity", "level", *(f"p{i}" for i in range(NUM_LEVELS))])
        for r in results:
            for q in range(len(r.ids)):
                pdf = [f"{v:.4f}" for v in r.pdf[q]] if r.pdf is not None else [""] * NUM_LEVELS
                writer.writerow([r.name, r.ids[q], r.match_ids[q], f"{r.similarity[q]:.4f}", f"{r.level[q]:.4f}", *pdf])

    names = [r.name for r in results]
    ratios = np.array([r.ratio for r in results]) * 100
    errors = np.array([[r.ratio - r.ci[0], r.ci[1] - r.ratio] for r in results]).T * 100
    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 2, 3.5))
    ax.bar(names, ratios, yerr=errors, capsize=4, color="tab:blue")
    for x, (value, upper) in enumerate(zip(ratios, ratios + errors[1], strict=True)):
        ax.text(x, upper + 1, f"{value:.2f}%", ha="center", va="bottom")  # above the error bar
    ax.set_ylim(0, max(10.0, float((ratios + errors[1]).max()) * 1.15 + 2))
    ax.set_ylabel(f"replication ratio (level ≥ {settings['threshold']:g}), %")
    ax.set_title(f"replication ratio, {settings['confidence']:.0%} bootstrap CI")
    fig.tight_layout()
    fig.savefig(output / "replication_ratio.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        share = np.array(r.histogram) / max(1, len(r.ids))
        ax.bar(np.arange(NUM_LEVELS) + (i - (len(results) - 1) / 2) * width, share, width, label=r.name)
    ax.set_xlabel("predicted level of the best match")
    ax.set_ylabel("share of generated images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "level_histogram.png", dpi=100)
    plt.close(fig)

    table = Table(title=f"replication ratio at level ≥ {settings['threshold']:g}")
    for column in ("generator", "images", "ratio", f"{settings['confidence']:.0%} CI", "levels 0..5"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, str(len(r.ids)), f"{r.ratio:.2%}", f"{r.ci[0]:.2%} .. {r.ci[1]:.2%}",
                      " ".join(map(str, r.histogram)))
    Console().print(table)
    print(f"written to {output}: report.json, matches.csv, replication_ratio.png, level_histogram.png, "
          + ", ".join(f"contact_{n}.png" for n in names))
    return report


# ================================================================================== commands
def _parser(prog: str, description: str, trainer: bool = False) -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    if trainer:
        parser.add_class_arguments(pl.Trainer, "trainer", skip={"callbacks", "logger", "plugins", "profiler"})
    return parser


def _trainer_args(config: Any) -> dict[str, Any]:
    return config.trainer.as_dict()


def cmd_embed(argv: list[str]) -> int:
    """Embed a gallery into descriptor shards with Lightning predict (resumable, DDP-ready)."""
    parser = _parser("zoo embed", cmd_embed.__doc__, trainer=True)
    parser.add_argument("--gallery", type=str, required=True, help="folder of images, .tar or .parquet shard(s)")
    parser.add_argument("--output", type=str, required=True, help="folder of the shards")
    parser.add_argument("--model", type=str, required=True,
                        help="registry name, class path, zoo checkpoint folder or hf-hub:org/name")
    parser.add_argument("--variant", type=str | None, default=None, help="named variant of a registry method")
    parser.add_argument("--model_args", type=dict[str, Any], default={}, help="constructor arguments")
    parser.add_argument("--shard_size", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--dtype", type=str, default="float16", help="float16 or float32")
    parser.add_argument("--image_size", type=int, default=224, help="default transform size")
    parser.add_argument("--id_column", type=str, default="id")
    parser.add_argument("--image_column", type=str, default="image")
    cfg = parser.parse_args(argv)
    method = load_method(cfg.model, cfg.variant, cfg.model_args)
    out = embed(cfg.gallery, cfg.output, method, shard_size=cfg.shard_size, batch_size=cfg.batch_size,
                num_workers=cfg.num_workers, dtype=cfg.dtype, image_size=cfg.image_size, id_column=cfg.id_column,
                image_column=cfg.image_column, trainer=_trainer_args(cfg),
                method_spec={"model": cfg.model, "variant": cfg.variant, "model_args": cfg.model_args})
    print(f"embedded {cfg.gallery} into {out}")
    return 0


def cmd_index(argv: list[str]) -> int:
    """Build the FAISS index (flat, IVF or IVF-PQ) of an embedded gallery."""
    parser = _parser("zoo index", cmd_index.__doc__)
    parser.add_argument("--gallery", type=str, required=True, help="output folder of `zoo embed`")
    parser.add_argument("--index_type", type=str, default="auto", help="auto, flat, ivf or ivfpq")
    parser.add_argument("--flat_max", type=int, default=200_000, help="auto: largest gallery indexed exactly")
    parser.add_argument("--nlist", type=int | None, default=None, help="IVF lists (default 4 sqrt(N))")
    parser.add_argument("--pq_m", type=int, default=64, help="PQ sub-quantisers")
    parser.add_argument("--pq_bits", type=int, default=8, help="bits per PQ code")
    parser.add_argument("--train_size", type=int, default=100_000, help="descriptors sampled for training")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query")
    parser.add_argument("--seed", type=int, default=0)
    cfg = parser.parse_args(argv)
    path = build_index(cfg.gallery, cfg.index_type, cfg.flat_max, cfg.nlist, cfg.pq_m, cfg.pq_bits,
                       cfg.train_size, cfg.nprobe, cfg.seed)
    info = json.loads((path.parent / INDEX_MANIFEST).read_text())
    print(f"indexed {info['count']} descriptors ({info['type']}) into {path}")
    return 0


def cmd_match(argv: list[str]) -> int:
    """Replication ratio of generators against an indexed gallery (re-ranked by predicted level)."""
    parser = _parser("zoo match", cmd_match.__doc__, trainer=True)
    parser.add_argument("--gallery", type=str, required=True, help="embedded and indexed gallery")
    parser.add_argument("--generated", type=str, nargs="+", required=True,
                        help="NAME=PATH per generator: its images, or its `zoo embed` output")
    parser.add_argument("--output", type=str, required=True)
    parser.add_argument("--k", type=int, default=10, help="candidates re-ranked per generated image")
    parser.add_argument("--threshold", type=float, default=float(COPY_FROM_LEVEL),
                        help="best level counted as replication (default: the task's copy level, 3)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=16, help="pairs per contact sheet")
    parser.add_argument("--nprobe", type=int | None, default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    # generated images are embedded inside this process: one device unless told otherwise
    parser.set_defaults({"trainer.devices": 1, "trainer.enable_progress_bar": False})
    cfg = parser.parse_args(argv)
    generated = {}
    for item in cfg.generated:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ZooError(f"--generated {item!r}: write NAME=PATH")
        if name in generated:
            raise ZooError(f"--generated: generator {name!r} is given twice")
        generated[name] = path
    match(cfg.gallery, generated, cfg.output, k=cfg.k, threshold=cfg.threshold, bootstrap=cfg.bootstrap,
          confidence=cfg.confidence, seed=cfg.seed, top=cfg.top, nprobe=cfg.nprobe, batch_size=cfg.batch_size,
          num_workers=cfg.num_workers, trainer=_trainer_args(cfg))
    return 0
