"""A gallery indexed two ways in one run: in one process, and in parts on workers merged on disk.

Writes ``gallery_scale.py``'s synthetic clustered gallery (``--gallery`` x ``--dim``, float16 shards, one
shard in memory at a time) and builds its IVF-PQ index

- **single**: ``zoo.gallery.build_index`` in one fresh process (``zoo index``);
- **parts**: ``zoo.gallery.index.build_local`` in another fresh process (``zoo index --workers``): the trained
  index, ``--parts`` parts built by ``--workers`` spawned worker processes, merged by FAISS's
  ``merge_ondisk`` into lists on disk.

Each way's wall and CPU seconds include its training (both train the same quantizer and PQ from the same
sample and seed; the script checks that the two trained indexes are byte-identical). It reports the peak
RSS of the single build's process, of each part's worker, and of the process that trains and merges; the
index files' sizes; recall@1 and recall@10 of both indexes against exact search on near-duplicate queries
(``--query_noise``) and on new draws of the clusters; the share of queries whose 10 neighbours are the same
in both indexes; and the peak RSS of a fresh process that opens the merged index and retrieves the
candidates of every query as ``zoo match`` does (``zoo.gallery.match.GallerySearch``: lists memory-mapped,
the candidates' descriptors read from the shards by row). The synthetic gallery has no method saved with
it, so the method's re-ranking of the candidates is not part of that figure.

Example:
    python benchmarks/perf/gallery_parts.py --out results/gallery_parts.json       # 4,000,000 x 768
    python benchmarks/perf/gallery_parts.py --gallery 200000 --nlist 256           # a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import resource
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from gallery_scale import (
    Clock,
    ClusteredGallery,
    add_gallery_arguments,
    exact_top1,
    query_sets,
    write_gallery,
)

from zoo import gallery
from zoo.bench.perf import write_result
from zoo.gallery import index as gallery_index


def _status_gb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (``VmHWM``: peak RSS; ``RssAnon``: not file-backed)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) * 1024 / 1e9, 3)
    raise KeyError(field)


def _single(work: str, options: dict[str, Any], threads: int) -> dict[str, Any]:
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    gallery.build_index(work, **options)
    return {"peak_rss_gb": _status_gb("VmHWM")}


def _parts(work: str, options: dict[str, Any], workers: int, parts: int, threads: int) -> dict[str, Any]:
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    reports = gallery_index.build_local(work, workers, parts, **options)
    return {"peak_rss_gb_train_and_merge": _status_gb("VmHWM"),
            "peak_rss_gb_per_part": [round(r["peak_rss_bytes"] / 1e9, 3) for r in reports],
            "descriptors_per_part": [r["count"] for r in reports]}


def _match(work: str, queries: np.ndarray, k: int, threads: int) -> dict[str, Any]:
    """What ``zoo match`` holds while it retrieves: the merged index opened, every query's candidates read."""
    from zoo.gallery.match import QUERY_CHUNK, GallerySearch

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    # RssFile counts the pages of mapped files (the index's lists, the shards' rows) the kernel may drop at will;
    # RssAnon the process's own memory
    before = {f"{name}_after_imports": _status_gb(field) for name, field in (
        ("rss_gb", "VmHWM"), ("rss_anon_gb", "RssAnon"), ("rss_file_gb", "RssFile"))}
    search = GallerySearch(work)
    positions = []
    for start in range(0, len(queries), QUERY_CHUNK):
        found = search.search(torch.from_numpy(queries[start : start + QUERY_CHUNK]), k)
        positions.append(found.positions)
    return {**before, "peak_rss_gb": _status_gb("VmHWM"), "rss_anon_gb_at_end": _status_gb("RssAnon"),
            "rss_file_gb_at_end": _status_gb("RssFile"), "positions": np.concatenate(positions)}


def fresh(function: Any, *args: Any) -> Any:
    """``function(*args)`` in a freshly spawned process (its peak RSS is its own); CPU time counts as a child's."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def recall(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """recall@1 and recall@10 of ``found`` (queries x 10 positions) against the exact nearest ``truth``."""
    return {"recall@1": round(float(np.mean(found[:, 0] == truth)), 4),
            "recall@10": round(float(np.mean((found == truth[:, None]).any(axis=1))), 4)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=4_000_000, help="gallery descriptors")
    add_gallery_arguments(parser)
    parser.add_argument("--pq_m", type=int, default=96, help="96 bytes of code per descriptor at 8 bits")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--train_size", type=int, default=None, help="default: zoo index's (64 per list)")
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="part workers at once")
    parser.add_argument("--recall_queries", type=int, default=1000, help="queries per set checked against exact")
    parser.add_argument("--query_noise", type=float, nargs="+", default=[0.3],
                        help="relative noise of the near-duplicate sets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=str, default=None, help="where the shards go (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="keep the shards already in --workdir")
    parser.add_argument("--match_only", type=int, nargs="+", default=None, metavar="QUERIES",
                        help="only the on-disk search's memory, for each number of near-duplicate queries, against "
                             "the merged index already in --workdir")
    parser.add_argument("--out", type=str, default=None, help="JSON result file")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gallery-parts-"))
    source = ClusteredGallery(args.dim, args.latent, args.clusters, args.spread, args.noise, args.seed)
    if args.match_only:
        queries = query_sets(work, source, max(args.match_only), [0.3], np.random.default_rng(args.seed + 2))
        figures = {}
        for count in args.match_only:
            matched = fresh(_match, str(work), queries["near-dup@0.3"][:count], 10, args.threads)
            figures[f"queries_{count}"] = {key: value for key, value in matched.items() if key != "positions"}
        write_result(args.out, "gallery_parts_match_memory", figures)
        return
    options = {"index_type": "ivfpq", "nlist": args.nlist, "pq_m": args.pq_m, "pq_bits": 8, "opq": False,
               "train_size": args.train_size, "nprobe": args.nprobe, "seed": args.seed}
    figures: dict[str, Any] = {"gallery": args.gallery, "dim": args.dim, "shard_size": args.shard_size,
                               "parts": args.parts, "workers": args.workers, "threads": args.threads}
    try:
        if not args.reuse:
            with Clock() as clock:
                write_gallery(work, source, args.gallery, args.shard_size, args.seed)
            figures["write_shards_seconds"] = round(clock.wall, 1)
        figures["shards_gb"] = round(sum(p.stat().st_size for p in work.glob("shard-*.safetensors")) / 1e9, 2)

        with Clock() as clock:
            single = fresh(_single, str(work), options, args.threads)
        built = gallery_index.read_json(work / gallery.INDEX_MANIFEST, "")
        figures.update(index=built["factory"], nlist=built["nlist"], nprobe=built["nprobe"],
                       train_size=built["train_size"])
        figures["single"] = {"wall_seconds": round(clock.wall, 1), "cpu_seconds": round(clock.cpu, 1),
                             "peak_rss_gb": single["peak_rss_gb"],
                             "index_file_mb": round((work / gallery.INDEX_FILE).stat().st_size / 1e6, 1)}
        single_index = faiss.read_index(str(work / gallery.INDEX_FILE))
        # the trained, empty index the single build started from, to compare with the parts' index.trained.faiss
        single_trained = faiss.clone_index(single_index)
        single_trained.reset()
        faiss.write_index(single_trained, str(work / "single.trained.faiss"))
        del single_trained

        rng = np.random.default_rng(args.seed + 1)
        sets = query_sets(work, source, args.recall_queries, args.query_noise, rng)
        every = np.concatenate(list(sets.values()))
        truth = exact_top1(work, every)
        _, single_found = single_index.search(every, 10)
        del single_index

        with Clock() as clock:
            parts = fresh(_parts, str(work), options, args.workers, args.parts, max(1, args.threads))
        figures["parts"] = {"wall_seconds": round(clock.wall, 1), "cpu_seconds": round(clock.cpu, 1), **parts,
                            "index_file_mb": round((work / gallery.INDEX_FILE).stat().st_size / 1e6, 1),
                            "ondisk_lists_mb": round((work / gallery_index.ONDISK_LISTS).stat().st_size / 1e6, 1)}
        figures["trained_indexes_identical"] = sha256(work / "single.trained.faiss") == sha256(
            work / gallery_index.TRAINED_FILE)
        figures["cpu_ratio_parts_over_single"] = round(figures["parts"]["cpu_seconds"] / figures["single"][
            "cpu_seconds"], 3)

        matched = fresh(_match, str(work), every, 10, args.threads)
        merged_found = matched.pop("positions")
        index_bytes = (work / gallery.INDEX_FILE).stat().st_size + (work / gallery_index.ONDISK_LISTS).stat().st_size
        figures["match_ondisk"] = {**matched, "queries": len(every), "k": 10,
                                   "peak_rss_over_index_files": round(matched["peak_rss_gb"] * 1e9 / index_bytes, 3)}
        figures["same_neighbours_share"] = round(float(np.mean((merged_found == single_found).all(axis=1))), 5)
        start, figures["recall"] = 0, {}
        for name, queries in sets.items():
            end = start + len(queries)
            figures["recall"][name] = {"single": recall(single_found[start:end], truth[start:end]),
                                       "parts": recall(merged_found[start:end], truth[start:end])}
            start = end
        figures["recall_queries_per_set"] = args.recall_queries
        figures["peak_rss_gb_this_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    targets = {"same_neighbours_share": ">= 0.999", "recall@10 near-dup@0.3": ">= 0.99",
               "match_ondisk.peak_rss_gb": "< 2 and < a quarter of the index files",
               "cpu_ratio_parts_over_single": "<= 1.3",
               "peak_rss_gb_per_part": "bounded by the part's own range"}
    write_result(args.out, "gallery_parts", figures, targets=targets)


if __name__ == "__main__":
    main()
