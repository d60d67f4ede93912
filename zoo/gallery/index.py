"""``zoo index``: the FAISS index of an embedded gallery, built from the shards one batch at a time.

``flat`` is exact; ``ivf`` and ``ivfpq`` partition the descriptors into ``nlist`` inverted lists. The
build follows FAISS's own practice for millions of vectors on a few cores: the quantisers are trained on
a sample sized to the number of lists (``samples_per_list`` per list, within FAISS's 39..256 per
centroid), the coarse quantizer is a flat index for a few lists and an HNSW graph for many, PQ codes of
4 bits use the fast-scan (SIMD) kernels, OPQ rotates the space first on request, and descriptors are
added in large batches. Vectors are L2-normalised and compared by inner product (cosine).

Past one machine, the same build runs as FAISS's distributed build, in three steps that any worker can
run (``train_index``, ``build_part``, ``merge_parts``): the quantisers are trained once and written as an
empty index; part ``i`` of ``N`` adds its range of shards to a copy of it, under the descriptors' global
positions; the parts' inverted lists are merged into one index whose lists live on disk
(``faiss.contrib.ondisk.merge_ondisk``, ``OnDiskInvertedLists``) and are memory-mapped when searched. Each
step records what it was built from (the gallery's digest, the trained index's sha256) and refuses inputs
that disagree. The single-machine build is the same training and the same adds, in one process, and keeps
its lists in RAM: a gallery that fits one machine is searched fastest from memory, and its 4-bit fast-scan
codes (SIMD blocks) are a layout FAISS cannot merge on disk.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.errors import ZooError
from zoo.gallery.shards import (
    check_shards,
    gallery_digest,
    read_json,
    read_manifest,
    read_rows,
    read_shard,
    sha256_file,
    shard_counts,
    shard_ids,
    shard_info,
    shard_problem,
    write_json,
)

INDEX_FILE = "index.faiss"
INDEX_MANIFEST = "index.json"
INDEX_IDS = "index-ids.parquet"
ONDISK_LISTS = "index.ivfdata"  # the merged index's inverted lists, beside index.faiss
TRAINED_FILE = "index.trained.faiss"  # the trained, empty index every part starts from
TRAINED_MANIFEST = "index.trained.json"
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


def _trained(gallery: Path, manifest: Mapping[str, Any], index_type: str = "auto", flat_max: int = 200_000,
             nlist: int | None = None, pq_m: int = 64, pq_bits: int = 8, opq: bool = False,
             train_size: int | None = None, samples_per_list: int = 64, nprobe: int = 16,
             seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The trained, empty index of ``gallery`` and the parameters ``index.json`` records."""
    import faiss

    n = manifest["count"]
    if index_type not in INDEX_TYPES:
        raise ZooError(f"--index_type {index_type!r}: choose {', '.join(INDEX_TYPES)}")
    kind = ("flat" if n <= flat_max else "ivfpq") if index_type == "auto" else index_type
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
        codes = faiss.downcast_index(ivf)
        if hasattr(codes, "do_polysemous_training"):
            # index_factory turns on polysemous training for 8-bit IVF-PQ: it only serves Hamming-thresholded
            # search, which the zoo never asks for, and it costs far more than the k-means itself
            codes.do_polysemous_training = False
        index.train(_sample(gallery, manifest, size, seed))
        nprobe = min(nprobe, nlist)  # more probes than lists makes fast-scan PQ return wrong neighbours
        ivf.nprobe = nprobe
        params.update(nlist=nlist, nprobe=nprobe, train_size=size)
        if kind == "ivfpq":
            params.update(pq_m=pq_m, pq_bits=pq_bits, opq=opq)
    return index, params


def _add(index: Any, kind: str, vectors: np.ndarray, first: int) -> None:
    """Add ``vectors`` under their global positions ``first ...`` (a flat index numbers them itself, in order)."""
    if kind == "flat":
        index.add(vectors)
    else:
        index.add_with_ids(vectors, np.arange(first, first + len(vectors), dtype=np.int64))


def build_index(gallery: str | Path, index_type: str = "auto", flat_max: int = 200_000, nlist: int | None = None,
                pq_m: int = 64, pq_bits: int = 8, opq: bool = False, train_size: int | None = None,
                samples_per_list: int = 64, nprobe: int = 16, seed: int = 0) -> Path:
    """Build the FAISS index of an embedded gallery in this process, reading one shard at a time.

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
    if index_type not in INDEX_TYPES:
        raise ZooError(f"--index_type {index_type!r}: choose {', '.join(INDEX_TYPES)}")
    checksums = check_shards(gallery, manifest)  # every shard is checked before any work
    # the same training and the same adds as train_index + build_part, one part covering every shard
    index, params = _trained(gallery, manifest, index_type, flat_max, nlist, pq_m, pq_bits, opq, train_size,
                             samples_per_list, nprobe, seed)
    tmp_ids = gallery / f".{INDEX_IDS}.tmp{os.getpid()}"
    tmp_index = gallery / f".{INDEX_FILE}.tmp{os.getpid()}"
    try:
        with pq.ParquetWriter(tmp_ids, pa.schema([("id", pa.string())])) as writer:
            for first, ids, vectors in _batches(gallery, manifest, ADD_BATCH, range(manifest["num_shards"])):
                _add(index, params["type"], vectors, first)
                writer.write_table(pa.table({"id": ids}))
        faiss.write_index(index, str(tmp_index))
        # no index claims to be complete while it is replaced (an earlier merged one's lists go too)
        (gallery / INDEX_MANIFEST).unlink(missing_ok=True)
        (gallery / ONDISK_LISTS).unlink(missing_ok=True)
        os.replace(tmp_ids, gallery / INDEX_IDS)
        os.replace(tmp_index, gallery / INDEX_FILE)
    except OSError as err:
        raise ZooError(f"cannot write the index into {gallery}: {err.strerror or err}") from err
    except RuntimeError as err:  # faiss reports a failed write as a RuntimeError
        raise ZooError(f"cannot write {gallery / INDEX_FILE}: {err}") from err
    write_json(gallery / INDEX_MANIFEST, {**params, "count": int(index.ntotal), "shard_sha256": checksums})
    return gallery / INDEX_FILE


# ------------------------------------------------------------------------------- the distributed build
def part_stem(part: int, parts: int) -> str:
    """File stem of part ``part`` of ``parts`` (``index.part-00002-of-00004``)."""
    return f"index.part-{part:05d}-of-{parts:05d}"


def part_shards(part: int, parts: int, num_shards: int) -> range:
    """The contiguous range of shards of part ``part`` of ``parts``: the shards split as evenly as they go."""
    return range(part * num_shards // parts, (part + 1) * num_shards // parts)


def parse_part(text: str) -> tuple[int, int]:
    """``"i/N"`` as ``(i, N)``, numbered from 0 as a SLURM array's task ids are."""
    head, sep, tail = text.partition("/")
    if not sep or not head.strip().isdigit() or not tail.strip().isdigit() or not 0 <= int(head) < int(tail):
        raise ZooError(f"--part {text!r}: write i/N with 0 <= i < N (e.g. --part 0/4 ... --part 3/4)")
    return int(head), int(tail)


def train_index(gallery: str | Path, index_type: str = "auto", flat_max: int = 200_000, nlist: int | None = None,
                pq_m: int = 64, pq_bits: int = 8, opq: bool = False, train_size: int | None = None,
                samples_per_list: int = 64, nprobe: int = 16, seed: int = 0) -> Path:
    """``zoo index --train``: the trained, empty index every part starts from (kept if already trained).

    The arguments are ``build_index``'s. Only the sampled rows of the shards are read. An index trained with
    the same options on the same gallery is kept, so the step can be run again (or by every job) at no cost.

    Returns:
        the path of ``index.trained.faiss``.
    """

    gallery = Path(gallery)
    manifest = read_manifest(gallery)
    digest = gallery_digest(gallery, manifest)
    options = {"index_type": index_type, "flat_max": flat_max, "nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits,
               "opq": opq, "train_size": train_size, "samples_per_list": samples_per_list, "nprobe": nprobe,
               "seed": seed}
    kind = ("flat" if manifest["count"] <= flat_max else "ivfpq") if index_type == "auto" else index_type
    if kind == "flat":
        raise ZooError("--train: an exact (flat) index has nothing to train and nothing to merge on disk; "
                       "build it with `zoo index --index_type flat`, or give --index_type ivf or ivfpq")
    if kind == "ivfpq" and pq_bits == 4:
        raise ZooError("--pq_bits 4: fast-scan PQ keeps its lists in SIMD blocks that FAISS cannot merge on disk; "
                       "give --pq_bits 8 to build the index in parts")
    path, meta = gallery / TRAINED_FILE, gallery / TRAINED_MANIFEST
    if path.is_file() and meta.is_file():
        try:
            old = read_json(meta, "the trained index's manifest")
        except ZooError:
            old = {}
        if (old.get("gallery_sha256"), old.get("options")) == (digest, options) and sha256_file(path) == old.get(
                "sha256"):
            print(f"zoo index: {path} is already trained with these options; kept")
            return path
    index, params = _trained(gallery, manifest, **options)
    _write_index(index, path)
    write_json(meta, {**params, "options": options, "gallery_sha256": digest, "sha256": sha256_file(path)})
    return path


def _write_index(index: Any, path: Path) -> None:
    """Write a FAISS index to ``path`` through a temporary file beside it, so that no reader sees half of it."""
    import faiss

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # faiss reports a failed write as a RuntimeError
        raise ZooError(f"cannot write {path}: {err}") from err


def _read_trained(gallery: Path, manifest: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``index.trained.json``, checked to be of this gallery and to describe ``index.trained.faiss``."""
    path, meta = gallery / TRAINED_FILE, gallery / TRAINED_MANIFEST
    if not path.is_file() or not meta.is_file():
        raise ZooError(f"{gallery} has no {TRAINED_FILE}; run `zoo index --gallery {gallery} --train` first")
    info = read_json(meta, "the trained index's manifest")
    digest = gallery_digest(gallery, manifest)
    if info.get("gallery_sha256") != digest:
        raise ZooError(f"{meta} was trained on another gallery (its gallery.json or shards differ); "
                       "run `zoo index --train` again")
    if sha256_file(path) != info.get("sha256"):
        raise ZooError(f"{path} does not match its manifest {meta.name} (corrupt or unfinished); "
                       "run `zoo index --train` again")
    return info, digest


def build_part(gallery: str | Path, part: int, parts: int) -> dict[str, Any]:
    """``zoo index --part i/N``: part ``i`` of ``N``, its range of shards added to a copy of the trained index.

    Writes ``index.part-0000i-of-0000N.faiss`` and then its manifest (the shards it covers, their checksums,
    the gallery's digest, the trained index's sha256). A part whose manifest and file agree with the current
    gallery and trained index is skipped; a partial, stale or damaged one is built again.

    Returns:
        the part's manifest, with ``skipped`` saying whether it was already complete.
    """
    import faiss

    gallery = Path(gallery)
    manifest = read_manifest(gallery)
    trained, digest = _read_trained(gallery, manifest)
    num_shards = manifest["num_shards"]
    if not 0 <= part < parts:
        raise ZooError(f"--part {part}/{parts}: write i/N with 0 <= i < N")
    if parts > num_shards:
        raise ZooError(f"--part {part}/{parts}: {gallery} has {num_shards} shards; give at most {num_shards} parts")
    shards = part_shards(part, parts, num_shards)
    path, meta = gallery / f"{part_stem(part, parts)}.faiss", gallery / f"{part_stem(part, parts)}.json"
    expected = {"part": part, "parts": parts, "shards": [shards.start, shards.stop], "gallery_sha256": digest,
                "trained_sha256": trained["sha256"]}
    if path.is_file() and meta.is_file():
        try:
            old = read_json(meta, "a part's manifest")
        except ZooError:
            old = {}
        if all(old.get(key) == value for key, value in expected.items()) and sha256_file(path) == old.get("sha256"):
            return {**old, "skipped": True}
    meta.unlink(missing_ok=True)  # its manifest goes first: a part without one is unfinished
    counts = shard_counts(manifest)
    checksums = []
    for k in shards:  # every shard of the range is checked before any work
        problem = shard_problem(gallery, k, counts[k])
        if problem:
            raise ZooError(f"gallery shard {gallery}/shard-{k:05d}.safetensors: {problem}; run `zoo embed` again")
        checksums.append(shard_info(gallery, k)["sha256"])
    index = faiss.read_index(str(gallery / TRAINED_FILE))
    for first, _, vectors in _batches(gallery, manifest, ADD_BATCH, shards):
        _add(index, trained["type"], vectors, first)
    _write_index(index, path)
    info = {**expected, "count": int(index.ntotal), "shard_sha256": checksums, "sha256": sha256_file(path)}
    write_json(meta, info)
    return {**info, "skipped": False}


def merge_parts(gallery: str | Path) -> Path:
    """``zoo index --merge``: the parts' inverted lists merged into one index whose lists live on disk.

    FAISS's ``merge_ondisk`` writes the lists to ``index.ivfdata`` beside ``index.faiss``; ``zoo match``
    memory-maps them. Every part must come from this gallery and this trained index, and all ``N`` parts
    of one split must be there.

    Returns:
        the path of ``index.faiss``.
    """
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq
    from faiss.contrib.ondisk import merge_ondisk

    gallery = Path(gallery)
    manifest = read_manifest(gallery)
    trained, digest = _read_trained(gallery, manifest)
    metas = sorted(gallery.glob("index.part-*-of-*.json"))
    if not metas:
        raise ZooError(f"{gallery} has no index parts; run `zoo index --gallery {gallery} --part i/N` first")
    infos = {}
    for meta in metas:
        info = read_json(meta, "a part's manifest")
        if info.get("gallery_sha256") != digest:
            raise ZooError(f"{meta} was built from another gallery (its gallery.json or shards differ); "
                           "delete it or build the part again")
        if info.get("trained_sha256") != trained["sha256"]:
            raise ZooError(f"{meta} was built from another trained index than {TRAINED_FILE}; "
                           f"run `zoo index --part {info.get('part')}/{info.get('parts')}` again")
        infos[meta] = info
    splits = sorted({info.get("parts") for info in infos.values()})
    if len(splits) != 1:
        raise ZooError(f"{gallery} holds parts of several splits (N = {splits}); delete the parts of all but one")
    parts = splits[0]
    by_part = {info["part"]: (meta, info) for meta, info in infos.items()}
    missing = [part for part in range(parts) if part not in by_part]
    if missing:
        raise ZooError(f"part {missing[0]}/{parts} is missing ({gallery / part_stem(missing[0], parts)}.json"
                       f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}); "
                       f"run `zoo index --part {missing[0]}/{parts}`")
    for part in range(parts):
        path = by_part[part][0].with_suffix(".faiss")
        if not path.is_file() or sha256_file(path) != by_part[part][1].get("sha256"):
            raise ZooError(f"{path} does not match its manifest (corrupt or unfinished); "
                           f"run `zoo index --part {part}/{parts}` again")
    files = [str(by_part[part][0].with_suffix(".faiss")) for part in range(parts)]
    checksums = [c for part in range(parts) for c in by_part[part][1]["shard_sha256"]]
    (gallery / INDEX_MANIFEST).unlink(missing_ok=True)  # no index claims to be complete while it is replaced
    work = gallery / f".merge.tmp{os.getpid()}"
    try:
        work.mkdir(exist_ok=True)
        index = faiss.read_index(str(gallery / TRAINED_FILE))
        merge_ondisk(index, files, str(work / ONDISK_LISTS))
        faiss.write_index(index, str(work / INDEX_FILE))  # it names work/index.ivfdata; read_index looks beside it
        count = int(index.ntotal)
        del index
        with pq.ParquetWriter(work / INDEX_IDS, pa.schema([("id", pa.string())])) as writer:
            for k in range(manifest["num_shards"]):
                writer.write_table(pa.table({"id": shard_ids(gallery, k)}))
        for name in (ONDISK_LISTS, INDEX_IDS, INDEX_FILE):
            os.replace(work / name, gallery / name)
    except (OSError, RuntimeError) as err:
        raise ZooError(f"cannot write the merged index into {gallery}: {err}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if count != manifest["count"]:
        raise ZooError(f"the parts of {gallery} hold {count} descriptors, the gallery {manifest['count']}")
    params = {key: trained[key] for key in trained if key not in ("options", "gallery_sha256", "sha256")}
    write_json(gallery / INDEX_MANIFEST, {**params, "count": count, "shard_sha256": checksums, "ondisk": True,
                                          "parts": parts, "trained_sha256": trained["sha256"]})
    return gallery / INDEX_FILE


def _part_worker(gallery: str, part: int, parts: int, threads: int) -> dict[str, Any]:
    """One part in a worker process, with its peak resident memory (the process runs this part alone)."""
    import resource

    import faiss

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    info = build_part(gallery, part, parts)
    # Linux reports KiB: the peak of this process, which ran this part and nothing else
    return {**info, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def build_local(gallery: str | Path, workers: int, parts: int | None = None, **options: Any) -> list[dict[str, Any]]:
    """``zoo index --workers K``: train, build the parts in ``workers`` processes, merge them on disk.

    Each part runs in a fresh process (spawned, one part per process), so a part's memory is its own
    range's; FAISS's threads are shared out among the workers. Run again after a kill, it keeps the
    trained index and the finished parts.

    Args:
        gallery: the output folder of ``zoo embed``.
        workers: processes building parts at once.
        parts: number of parts (default ``workers``).
        **options: ``build_index``'s options, for the training.

    Returns:
        the manifest of each part, with its worker's ``peak_rss_bytes``.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import faiss

    parts = parts or workers
    if workers < 1 or parts < 1:
        raise ZooError(f"--workers {workers}: give at least 1")
    train_index(gallery, **options)
    threads = max(1, faiss.omp_get_max_threads() // min(workers, parts))
    context = multiprocessing.get_context("spawn")  # no forked copy of the parent's threads or memory
    try:
        with ProcessPoolExecutor(max_workers=min(workers, parts), mp_context=context, max_tasks_per_child=1) as pool:
            reports = list(pool.map(_part_worker, [str(gallery)] * parts, range(parts), [parts] * parts,
                                    [threads] * parts))
    except BrokenProcessPool as err:
        raise ZooError(f"a worker building a part of {gallery} died (out of memory?); run the same command again: "
                       "finished parts are kept") from err
    merge_parts(gallery)
    return reports


def read_index(gallery: Path, manifest: Mapping[str, Any], nprobe: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The index of ``gallery`` and its ``index.json``, checked to cover the current shards.

    A merged index's inverted lists stay on disk: they are memory-mapped from ``index.ivfdata`` beside
    ``index.faiss`` (wherever the gallery folder has moved), and a search reads only the lists it probes.
    """
    import faiss

    if not (gallery / INDEX_FILE).is_file() or not (gallery / INDEX_MANIFEST).is_file():
        raise ZooError(f"{gallery} has no {INDEX_FILE}; run `zoo index --gallery {gallery}` first")
    info = read_json(gallery / INDEX_MANIFEST, "the index manifest")
    current = [shard_info(gallery, k).get("sha256") for k in range(manifest["num_shards"])]
    if info.get("shard_sha256") != current or not isinstance(info.get("dim"), int):
        raise ZooError(f"{gallery / INDEX_FILE} was built from other shards; run `zoo index` again")
    flags = 0
    if info.get("ondisk"):
        if not (gallery / ONDISK_LISTS).is_file():
            raise ZooError(f"{gallery / ONDISK_LISTS} is missing (the merged index's lists); "
                           "run `zoo index --merge` again")
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    try:
        index = faiss.read_index(str(gallery / INDEX_FILE), flags)
    except RuntimeError as err:
        raise ZooError(f"{gallery / INDEX_FILE} cannot be read (corrupt?); run `zoo index` again") from err
    if nprobe is not None and info.get("type") != "flat":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(nprobe, ivf.nlist)
    return index, info


def normalised(embeddings: Tensor | np.ndarray) -> np.ndarray:
    """Contiguous float32 rows of unit L2 norm: inner product is then cosine similarity."""
    import faiss

    array = embeddings.float().numpy() if isinstance(embeddings, Tensor) else embeddings
    array = np.array(array, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(array)
    return array


def _batches(gallery: Path, manifest: Mapping[str, Any], size: int,
             shards: range) -> Iterator[tuple[int, list[str], np.ndarray]]:
    """Global position of the first row, ids and normalised descriptors of whole shards of ``shards``, gathered
    into batches of at least ``size``."""
    counts = shard_counts(manifest)
    first = shards.start * manifest["shard_size"]
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for k in shards:
        shard_ids_, embeddings = read_shard(gallery, k, counts[k])
        ids += shard_ids_
        parts.append(normalised(embeddings))
        if len(ids) >= size:
            yield first, ids, np.concatenate(parts)
            first, ids, parts = first + len(ids), [], []
    if ids:
        yield first, ids, np.concatenate(parts)


def _sample(gallery: Path, manifest: Mapping[str, Any], size: int, seed: int) -> np.ndarray:
    """``size`` descriptors drawn uniformly from the whole gallery, only their rows read, shard by shard."""
    counts = shard_counts(manifest)
    chosen = np.sort(np.random.default_rng(seed).choice(manifest["count"], size=size, replace=False))
    starts = np.cumsum([0, *counts])
    parts = []
    for k, count in enumerate(counts):
        rows = chosen[(chosen >= starts[k]) & (chosen < starts[k] + count)] - starts[k]
        if len(rows):
            parts.append(normalised(read_rows(gallery, k, rows)[1]))
    return np.concatenate(parts)
