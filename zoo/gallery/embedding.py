"""``zoo embed``: Lightning ``predict`` over a gallery, its descriptors written as resumable shards.

Shard ``k`` holds the gallery's images ``k * shard_size ...`` in catalogue order and is written by rank
``k % world_size``, so the same shards come out on one CPU, one GPU or many GPUs and nodes (the
trainer's ``devices``, ``num_nodes`` and ``strategy`` decide), and no image is embedded twice (no
DistributedSampler, hence no padding duplicates). A shard whose manifest and checksum agree is skipped,
so a killed job resumes with the same command. The method is saved beside the shards (``model/``) so
that ``zoo match`` re-ranks with the same weights.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zoo.errors import ZooError
from zoo.gallery.catalogue import Catalog, ImageReader, printable
from zoo.gallery.methods import fingerprint
from zoo.gallery.shards import (
    DTYPES,
    MANIFEST,
    MODEL_DIR,
    check_manifest,
    read_json,
    shard_counts,
    shard_problem,
    write_json,
    write_shard,
)


def rank_shards(num_shards: int, rank: int, world_size: int) -> range:
    """The shards rank ``rank`` of ``world_size`` writes: ``k % world_size == rank``.

    Lightning numbers the processes of ``num_nodes`` nodes of ``devices`` each from 0 to
    ``num_nodes * devices - 1`` (``node_rank * devices + local_rank``), so over every rank of every node each
    shard has exactly one writer, and its file name (``shard-0000k``) is its own.
    """
    return range(rank, num_shards, world_size)


class ShardStream(IterableDataset):
    """The images of the given shards, in catalogue order, split among DataLoader workers by shard."""

    def __init__(self, catalog: Catalog, shard_size: int, shards: list[int], transform: Callable,
                 batch_size: int = 1, num_workers: int = 0) -> None:
        self.catalog, self.shard_size, self.shards, self.transform = catalog, shard_size, shards, transform
        self.batch_size, self.num_workers = batch_size, num_workers

    def _count(self, shards: list[int]) -> int:
        return sum(min(self.shard_size, len(self.catalog) - k * self.shard_size) for k in shards)

    def __len__(self) -> int:
        # the DataLoader divides this by its batch size: the batches each worker makes of its own shards,
        # times the batch size, gives it the exact number of batches (a progress bar with a total)
        workers = max(1, self.num_workers)
        batches = sum(math.ceil(self._count(self.shards[w::workers]) / self.batch_size) for w in range(workers))
        return batches * self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        shards = self.shards if worker is None else self.shards[worker.id :: worker.num_workers]
        reader = ImageReader(self.catalog)
        try:
            for k in shards:
                start = k * self.shard_size
                for i in range(start, min(start + self.shard_size, len(self.catalog))):
                    yield {"image": self.transform(reader.load(i)), "shard": k, "row": i - start}
        finally:
            reader.close()


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
        for k in rank_shards(num_shards, rank, world):
            count = min(self.shard_size, len(self.catalog) - k * self.shard_size)
            problem = shard_problem(self.output, k, count)
            if problem and problem != "missing or unfinished":
                print(f"zoo embed: shard {k} of {self.output}: {problem}; embedding it again")
            if problem:
                todo.append(k)
        workers = min(self.num_workers, len(todo))  # a worker without a shard would only cost its start
        stream = ShardStream(self.catalog, self.shard_size, todo, self.transform, self.batch_size, workers)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=workers,
                          pin_memory=self.trainer.strategy.root_device.type == "cuda")


class ShardWriter(BasePredictionWriter):
    """Collects the descriptors of each shard and writes the shard as soon as it is full."""

    def __init__(self, catalog: Catalog, output: Path, shard_size: int, dtype: torch.dtype) -> None:
        super().__init__(write_interval="batch")
        self.catalog, self.output, self.shard_size, self.dtype = catalog, output, shard_size, dtype
        self._open: dict[int, tuple[Tensor, np.ndarray]] = {}
        self.written = 0  # images embedded by this rank in this run; after the run, by every rank

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
                self.written += count
                del self._open[k]

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._open:
            raise ZooError(f"zoo embed: shards {sorted(self._open)} of {self.output} were left incomplete")
        trainer.strategy.barrier("zoo-embed-shards")
        total = trainer.strategy.reduce(torch.tensor(float(self.written), device=pl_module.device), reduce_op="sum")
        self.written = int(total)


def _mark_complete(output: Path) -> None:
    """Mark the gallery complete once every shard is intact (also when this run had nothing left to embed)."""
    path = output / MANIFEST
    manifest = check_manifest(read_json(path, "the manifest of this run"), path)
    missing = [k for k, n in enumerate(shard_counts(manifest)) if shard_problem(output, k, n)]
    if missing:
        raise ZooError(f"zoo embed: shards {missing} of {output} are missing after the run")
    manifest["complete"] = True
    write_json(path, manifest)


def _check_writable(output: Path) -> None:
    """Create ``output`` and write a file there, or a ZooError naming the folder."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        # a name of its own: ranks on other nodes, sharing this folder, may run under the same process id
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ZooError(f"--output {output} cannot be written: {err.strerror or err}") from err


def _one_line(err: ZooError) -> ZooError:
    """The zoo's own message of an error a DataLoader worker raised, without the worker's traceback."""
    text = str(err)
    marker = "ZooError: "
    if "Original Traceback" in text and marker in text:
        return ZooError(text.rsplit(marker, 1)[1].strip())
    return err


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
        num_workers: DataLoader workers per rank (images are decoded there while the model runs).
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
    manifest = {
        "source": str(Path(gallery).resolve()), "kind": catalog.kind, "id_column": id_column,
        "image_column": image_column, "count": len(catalog), "ids_sha256": catalog.ids_digest(),
        "shard_size": shard_size, "num_shards": math.ceil(len(catalog) / shard_size), "dtype": dtype,
        "image_size": image_size,
        "method": type(method).__name__, "model_sha256": fingerprint(method), "spec": dict(method_spec or {}),
        "complete": False,
    }
    previous = output / MANIFEST
    if previous.is_file():
        try:
            old = read_json(previous, "the manifest of an earlier run")
        except ZooError as err:
            raise ZooError(f"{err}; delete it to embed into {output} again, or give a new --output folder") from err
        for key in ("ids_sha256", "shard_size", "dtype", "model_sha256"):
            if old.get(key) != manifest[key]:
                raise ZooError(
                    f"{output} holds shards of another run ({key} differs: {old.get(key)} vs {manifest[key]}); "
                    "give a new --output folder"
                )
    _check_writable(output)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **(trainer or {})}
    writer = ShardWriter(catalog, output, shard_size, DTYPES[dtype])
    kwargs["callbacks"] = [writer]
    pl_trainer = pl.Trainer(**kwargs)
    if pl_trainer.is_global_zero:
        try:
            method.save_pretrained(output / MODEL_DIR)
        except OSError as err:
            raise ZooError(f"cannot write {output / MODEL_DIR}: {err.strerror or err}") from err
        write_json(previous, manifest)
    transform = method.image_transform() or default_transform(image_size)
    data = _GalleryData(catalog, output, shard_size, transform, batch_size, num_workers)
    with warnings.catch_warnings():
        # batch indices come from a sampler; the shard writer places rows by (shard, row) instead
        warnings.filterwarnings("ignore", "Couldn't infer the batch indices")
        # its length is exact per worker (ShardStream.__len__), which is what the warning asks for
        warnings.filterwarnings("ignore", "Your `IterableDataset` has `__len__` defined")
        try:
            pl_trainer.predict(_Embedder(method), datamodule=data, return_predictions=False)
        except ZooError as err:
            raise _one_line(err) from None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank's shards are written before the manifest says complete
        # a teardown of our own: left to the interpreter's exit, gloo's threads can abort a rank (SIGABRT)
        torch.distributed.destroy_process_group()
    if pl_trainer.is_global_zero:
        # here, not in the writer's on_predict_end: Lightning skips the predict loop and its hooks when every
        # shard was already done, which left the rewritten manifest incomplete
        _mark_complete(output)
        skipped = catalog.skipped_text("; skipped ")
        print(f"zoo embed: {len(catalog)} images of {printable(str(gallery))} in {output}: {writer.written} embedded "
              f"in this run, {len(catalog) - writer.written} kept from an earlier run{skipped}")
    return output
