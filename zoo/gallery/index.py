"""``zoo index``: the FAISS index of an embedded gallery, built from the shards one batch at a time.

``flat`` is exact; ``ivf`` and ``ivfpq`` partition the descriptors into ``nlist`` inverted lists. The
build follows FAISS's own practice for millions of vectors on a few cores: the quantisers are trained on
a sample sized to the number of lists (``samples_per_list`` per list, within FAISS's 39..256 per
centroid), the coarse quantizer is a flat index for a few lists and an HNSW graph for many, PQ codes of
4 bits use the fast-scan (SIMD) kernels, OPQ rotates the space first on request, and descriptors are
added in large batches. Vectors are L2-normalised and compared by inner product (cosine).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.errors import ZooError
from zoo.gallery.shards import (
    check_shards,
    iter_shards,
    read_json,
    read_manifest,
    read_shard,
    shard_counts,
    shard_info,
    write_json,
)

INDEX_FILE = "index.faiss"
INDEX_MANIFEST = "index.json"
INDEX_IDS = "index-ids.parquet"
INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq")
HNSW_QUANTIZER_FROM = 1024  # lists from which the coarse quantizer is an HNSW graph, not a flat scan
ADD_BATCH = 1 << 17  # descriptors handed to faiss per add (shards are gathered up to this)


def default_nlist(n: int) -> int:
    """The power of two nearest sqrt(n), with at least 39 training points per list."""
    return max(1, min(2 ** round(math.log2(max(1.0, math.sqrt(n)))), n // 39))


def factory_string(kind: str, dim: int, nlist: int, pq_m: int, pq_bits: int, opq: bool) -> str:
    """The ``faiss.index_factory`` description of an index of ``kind``."""
    if kind == "flat":
        return "Flat"
    coarse = f"IVF{nlist}" + ("_HNSW32" if nlist >= HNSW_QUANTIZER_FROM else "")
    if kind == "ivf":
        return f"{coarse},Flat"
    if dim % pq_m:
        raise ZooError(f"--pq_m {pq_m} must divide the descriptor dimension {dim}")
    if pq_bits not in (4, 8):
        raise ZooError(f"--pq_bits {pq_bits}: choose 4 (fast-scan PQ) or 8")
    codes = f"PQ{pq_m}x4fsr" if pq_bits == 4 else f"PQ{pq_m}x{pq_bits}"
    return (f"OPQ{pq_m}," if opq else "") + f"{coarse},{codes}"


def build_index(gallery: str | Path, index_type: str = "auto", flat_max: int = 200_000, nlist: int | None = None,
                pq_m: int = 64, pq_bits: int = 8, opq: bool = False, train_size: int | None = None,
                samples_per_list: int = 64, nprobe: int = 16, seed: int = 0) -> Path:
    """Build the FAISS index of an embedded gallery, reading one shard at a time.

    Args:
        gallery: the output folder of ``zoo embed``.
        index_type: ``flat`` (exact), ``ivf``, ``ivfpq``, or ``auto`` (flat up to ``flat_max`` images).
        flat_max: the largest gallery ``auto`` indexes exactly.
        nlist: inverted lists of IVF; default the power of two nearest sqrt(N).
        pq_m: sub-quantisers of PQ (must divide the dimension).
        pq_bits: bits per sub-quantiser code: 4 (fast-scan) or 8.
        opq: rotate the descriptors with OPQ before PQ.
        train_size: descriptors sampled to train IVF / PQ; default ``samples_per_list * nlist``.
        samples_per_list: training descriptors per list when ``train_size`` is not given.
        nprobe: lists visited per query, stored with the index.
        seed: seed of the training sample and of k-means.

    Returns:
        the path of ``index.faiss``.
    """
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    gallery = Path(gallery)
    manifest = read_manifest(gallery)
    n = manifest["count"]
    if index_type not in INDEX_TYPES:
        raise ZooError(f"--index_type {index_type!r}: choose {', '.join(INDEX_TYPES)}")
    kind = ("flat" if n <= flat_max else "ivfpq") if index_type == "auto" else index_type
    checksums = check_shards(gallery, manifest)  # every shard is checked before any work
    dim = int(shard_info(gallery, 0)["dim"])
    params: dict[str, Any] = {"type": kind, "dim": dim, "metric": "inner_product (cosine of L2-normalised)"}
    nlist = nlist or default_nlist(n)
    if kind != "flat" and not 1 <= nlist <= n:
        raise ZooError(f"--nlist {nlist}: give between 1 and the gallery's {n} descriptors")
    factory = factory_string(kind, dim, nlist, pq_m, pq_bits, opq)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    params["factory"] = factory
    if kind != "flat":
        size = min(n, train_size or max(samples_per_list * nlist, 256 * 39 if kind == "ivfpq" else 0))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        index.train(_sample(gallery, manifest, size, seed))
        nprobe = min(nprobe, nlist)  # more probes than lists makes fast-scan PQ return wrong neighbours
        ivf.nprobe = nprobe
        params.update(nlist=nlist, nprobe=nprobe, train_size=size)
        if kind == "ivfpq":
            params.update(pq_m=pq_m, pq_bits=pq_bits, opq=opq)
    tmp_ids = gallery / f".{INDEX_IDS}.tmp{os.getpid()}"
    tmp_index = gallery / f".{INDEX_FILE}.tmp{os.getpid()}"
    try:
        with pq.ParquetWriter(tmp_ids, pa.schema([("id", pa.string())])) as writer:
            for ids, vectors in _batches(gallery, manifest, ADD_BATCH):
                index.add(vectors)
                writer.write_table(pa.table({"id": ids}))
        faiss.write_index(index, str(tmp_index))
        os.replace(tmp_ids, gallery / INDEX_IDS)
        os.replace(tmp_index, gallery / INDEX_FILE)
    except OSError as err:
        raise ZooError(f"cannot write the index into {gallery}: {err.strerror or err}") from err
    except RuntimeError as err:  # faiss reports a failed write as a RuntimeError
        raise ZooError(f"cannot write {gallery / INDEX_FILE}: {err}") from err
    write_json(gallery / INDEX_MANIFEST, {**params, "count": int(index.ntotal), "shard_sha256": checksums})
    return gallery / INDEX_FILE


def read_index(gallery: Path, manifest: Mapping[str, Any], nprobe: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The index of ``gallery`` and its ``index.json``, checked to cover the current shards."""
    import faiss

    if not (gallery / INDEX_FILE).is_file() or not (gallery / INDEX_MANIFEST).is_file():
        raise ZooError(f"{gallery} has no {INDEX_FILE}; run `zoo index --gallery {gallery}` first")
    info = read_json(gallery / INDEX_MANIFEST, "the index manifest")
    current = [shard_info(gallery, k).get("sha256") for k in range(manifest["num_shards"])]
    if info.get("shard_sha256") != current or not isinstance(info.get("dim"), int):
        raise ZooError(f"{gallery / INDEX_FILE} was built from other shards; run `zoo index` again")
    try:
        index = faiss.read_index(str(gallery / INDEX_FILE))
    except RuntimeError as err:
        raise ZooError(f"{gallery / INDEX_FILE} cannot be read (corrupt?); run `zoo index` again") from err
    if nprobe is not None and info.get("type") != "flat":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(nprobe, ivf.nlist)
    return index, info


def read_ids(gallery: Path) -> list[str]:
    """The gallery id of each index position."""
    import pyarrow.parquet as pq

    return pq.read_table(gallery / INDEX_IDS, columns=["id"]).column(0).to_pylist()


def normalised(embeddings: Tensor | np.ndarray) -> np.ndarray:
    """Contiguous float32 rows of unit L2 norm: inner product is then cosine similarity."""
    import faiss

    array = embeddings.float().numpy() if isinstance(embeddings, Tensor) else embeddings
    array = np.array(array, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(array)
    return array


def _batches(gallery: Path, manifest: Mapping[str, Any], size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Ids and normalised descriptors of whole shards, gathered into batches of at least ``size``."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for _, shard_ids, embeddings in iter_shards(gallery, manifest):
        ids += shard_ids
        parts.append(normalised(embeddings))
        if len(ids) >= size:
            yield ids, np.concatenate(parts)
            ids, parts = [], []
    if ids:
        yield ids, np.concatenate(parts)


def _sample(gallery: Path, manifest: Mapping[str, Any], size: int, seed: int) -> np.ndarray:
    """``size`` descriptors drawn uniformly from the whole gallery, gathered shard by shard."""
    counts = shard_counts(manifest)
    chosen = np.sort(np.random.default_rng(seed).choice(manifest["count"], size=size, replace=False))
    starts = np.cumsum([0, *counts])
    parts = []
    for k, count in enumerate(counts):
        rows = chosen[(chosen >= starts[k]) & (chosen < starts[k] + count)] - starts[k]
        if len(rows):
            parts.append(normalised(read_shard(gallery, k, count)[1][torch.from_numpy(rows)]))
    return np.concatenate(parts)
