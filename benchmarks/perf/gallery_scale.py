"""Gallery-scale search on the CPU: IVF-PQ over streamed descriptor shards, as ``zoo index`` builds it.

Writes ``--gallery`` random ``--dim``-d descriptors as ``zoo embed`` shards (float16, one shard in memory
at a time), builds the index with ``zoo.gallery.build_index`` (trained on a sample, shards added one by
one), then times ``--queries`` random queries and measures recall@1 and 1-recall@10 of IVF-PQ against
exact search (streamed over the shards) for the first ``--recall_queries`` queries.

Queries are random (``--query_noise 0``, the issue's setting) or near-duplicates of random gallery
vectors (``--query_noise SIGMA``: a gallery vector plus Gaussian noise of relative norm SIGMA, cosine
about 1 / sqrt(1 + SIGMA^2)), which is what a generation that replicates a gallery image looks like.
``--reuse`` searches an index already built in ``--workdir`` (the build figures are then not measured).

Targets (issue 9): search of 10,000 queries against 1,000,000 768-d vectors in under 60 s on 2 cores;
peak RSS while indexing 1,000,000 vectors under 4 GB. The RSS figure is the peak of this whole process up
to the end of indexing (imports of torch and faiss and the shard writing included), so it bounds the
indexing peak from above. Random vectors have no neighbour structure, which makes recall@1 of a
compressed index a pessimistic figure compared with real descriptors.

Example:
    python benchmarks/perf/gallery_scale.py --out results/gallery_scale.json          # full size
    python benchmarks/perf/gallery_scale.py --gallery 20000 --queries 500 --dim 64     # seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from zoo import gallery
from zoo.bench.perf import write_result


def write_random_gallery(directory: Path, count: int, dim: int, shard_size: int, seed: int) -> None:
    """``count`` random descriptors as ``zoo embed`` shards, generated and written one shard at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_shards = -(-count // shard_size)
    for k in range(num_shards):
        n = min(shard_size, count - k * shard_size)
        vectors = torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32)).half()
        gallery.write_shard(directory, k, [f"v{k * shard_size + i}" for i in range(n)], vectors)
    manifest = {"source": "random", "kind": "random", "id_column": "id", "image_column": "image", "count": count,
                "shard_size": shard_size, "num_shards": num_shards, "dtype": "float16", "complete": True}
    (directory / gallery.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def exact_top1(directory: Path, queries: np.ndarray) -> np.ndarray:
    """Exact nearest gallery position (inner product of normalised vectors), streamed over the shards."""
    manifest = gallery.read_manifest(directory)
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    where = np.zeros(len(queries), dtype=np.int64)
    start = 0
    for _, _, embeddings in gallery.iter_shards(directory, manifest):
        scores = queries @ gallery.normalised(embeddings).T
        top = scores.argmax(axis=1)
        value = scores[np.arange(len(queries)), top]
        better = value > best
        best[better], where[better] = value[better], top[better] + start
        start += len(embeddings)
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000, help="gallery descriptors")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--shard_size", type=int, default=50_000)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--pq_m", type=int, default=64)
    parser.add_argument("--pq_bits", type=int, default=8)
    parser.add_argument("--train_size", type=int, default=50_000)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--recall_queries", type=int, default=200, help="queries checked against exact search")
    parser.add_argument("--query_noise", type=float, default=0.0, help="0: random queries; >0: near-duplicates")
    parser.add_argument("--reuse", action="store_true", help="search the index already in --workdir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=str, default=None, help="where the shards go (default: a temp dir)")
    parser.add_argument("--out", type=str, default=None, help="JSON result file")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gallery-scale-"))
    try:
        write_seconds = index_seconds = peak_rss_gb = None
        if not args.reuse:
            start = time.perf_counter()
            write_random_gallery(work, args.gallery, args.dim, args.shard_size, args.seed)
            write_seconds = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            gallery.build_index(work, "ivfpq", nlist=args.nlist, pq_m=args.pq_m, pq_bits=args.pq_bits,
                                train_size=args.train_size, nprobe=args.nprobe, seed=args.seed)
            index_seconds = round(time.perf_counter() - start, 2)
            peak_rss_gb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
        built = json.loads((work / gallery.INDEX_MANIFEST).read_text())
        if (built["count"], built["dim"], built["nlist"], built["pq_m"]) != (args.gallery, args.dim, args.nlist,
                                                                             args.pq_m):
            raise SystemExit(f"the index in {work} was built with other sizes: {built}")

        index = faiss.read_index(str(work / gallery.INDEX_FILE))
        faiss.extract_index_ivf(index).nprobe = args.nprobe
        rng = np.random.default_rng(args.seed + 1)
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        faiss.normalize_L2(queries)
        if args.query_noise > 0:
            manifest = {**gallery.read_manifest(work), "dim": args.dim}
            positions = rng.choice(args.gallery, size=args.queries, replace=False)
            sources = gallery.normalised(gallery.gallery_vectors(work, manifest, positions))
            queries = np.ascontiguousarray(sources + args.query_noise * queries)
            faiss.normalize_L2(queries)
        start = time.perf_counter()
        _, found = index.search(queries, 10)
        search_seconds = time.perf_counter() - start

        subset = queries[: args.recall_queries]
        exact = exact_top1(work, subset)
        recall_at_1 = float(np.mean(found[: len(subset), 0] == exact))
        recall_1_at_10 = float(np.mean((found[: len(subset)] == exact[:, None]).any(axis=1)))
        index_mb = (work / gallery.INDEX_FILE).stat().st_size / 1e6
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    figures = {
        "gallery": args.gallery, "queries": args.queries, "dim": args.dim, "threads": args.threads,
        "index": f"IVF{args.nlist},PQ{args.pq_m}x{args.pq_bits} (inner product)", "nprobe": args.nprobe,
        "train_size": args.train_size, "shard_size": args.shard_size,
        "query_noise": args.query_noise,
        "write_shards_seconds": write_seconds, "index_seconds": index_seconds,
        "index_file_mb": round(index_mb, 1), "peak_rss_gb_indexing": peak_rss_gb,
        "search_seconds": round(search_seconds, 3), "queries_per_second": round(args.queries / search_seconds, 1),
        "recall_queries": len(subset), "recall_at_1": recall_at_1, "recall_1_at_10": recall_1_at_10,
    }
    targets = {"search_seconds": "< 60 for 10,000 x 1,000,000 x 768 on 2 cores",
               "peak_rss_gb_indexing": "< 4 while indexing 1,000,000 vectors"}
    write_result(args.out, "gallery_scale", figures, targets=targets)


if __name__ == "__main__":
    main()
