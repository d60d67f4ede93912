"""Gallery-scale search and ``zoo embed`` throughput on the CPU, through the zoo's own code paths.

**Index.** Writes a synthetic gallery of ``--gallery`` ``--dim``-d descriptors as ``zoo embed`` shards
(float16, one shard in memory at a time) and builds its index with ``zoo.gallery.build_index`` (IVF-PQ:
trained on a sample sized to the list count, HNSW coarse quantizer from 1024 lists, fast-scan PQ at 4
bits, descriptors added in large batches). It prints the build time, the peak RSS of the process up to
the end of the build (imports and shard writing included: an upper bound of the build's own peak), and
the time to search ``--queries`` queries for their 10 nearest neighbours.

The gallery is clustered, as real descriptors are: ``--clusters`` Gaussian clusters in a
``--latent``-d space, mapped into ``--dim`` dimensions by a random linear map, plus a little isotropic
noise. Recall is measured against exact search (streamed over the shards) on two query sets:

- ``near-dup@SIGMA``: gallery items plus Gaussian noise of relative norm SIGMA (cosine to the source
  about 1 / sqrt(1 + SIGMA^2)), which is what a generation that replicates a gallery image looks like;
- ``clustered``: new draws from the gallery's clusters, which have no planted duplicate.

``recall@1`` is the share of queries whose exact nearest neighbour is the index's first result;
``recall@10`` the share whose exact nearest neighbour is among the index's 10 results (FAISS's R@10,
what ``zoo match`` needs, since it re-ranks the top ``k`` candidates from the exact descriptors).

**Embed.** With ``--embed_images N`` it also times ``zoo embed`` (``zoo.gallery.embed``: Lightning
predict, JPEG decoding, the method's pre-processing, shard writing) over N JPEG files, against a plain
batched forward (``method.embed`` under ``torch.inference_mode``) of the same model over the same
images decoded and pre-processed beforehand, in the same run. The overhead is the zoo's time over the
plain forward's, minus one, for each ``--embed_workers`` count.

Example:
    python benchmarks/perf/gallery_scale.py --out results/gallery_scale.json      # 1,000,000 x 768, 10,000 queries
    python benchmarks/perf/gallery_scale.py --gallery 100000 --queries 2000       # a quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from zoo import gallery
from zoo.bench.perf import write_result
from zoo.gallery import index as gallery_index


class Clock:
    """Wall and CPU seconds (this process and its finished children, e.g. DataLoader workers) of a block.

    On a shared machine the CPU seconds divided by the threads used tell what the wall time would be on
    idle cores; both are reported.
    """

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                      resource.getrusage(resource.RUSAGE_CHILDREN)))


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


class ClusteredGallery:
    """A Gaussian mixture in a low-dimensional latent space, mapped linearly into ``dim`` dimensions."""

    def __init__(self, dim: int, latent: int, clusters: int, spread: float, noise: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.centers = rng.standard_normal((clusters, latent), dtype=np.float32) / np.sqrt(latent)
        self.mixing = rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
        self.dim, self.latent, self.spread, self.noise = dim, latent, spread, noise

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` descriptors, float32, not normalised."""
        which = rng.integers(0, len(self.centers), size=count)
        z = self.centers[which] + self.spread * rng.standard_normal((count, self.latent), dtype=np.float32) / np.sqrt(
            self.latent)
        x = z @ self.mixing
        x += self.noise * rng.standard_normal((count, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        return x


def write_gallery(directory: Path, source: ClusteredGallery, count: int, shard_size: int, seed: int) -> None:
    """``count`` descriptors as ``zoo embed`` shards and a complete ``gallery.json``, one shard in memory."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_shards = -(-count // shard_size)
    for k in range(num_shards):
        n = min(shard_size, count - k * shard_size)
        vectors = torch.from_numpy(source.draw(n, rng)).half()
        gallery.write_shard(directory, k, [f"v{k * shard_size + i}" for i in range(n)], vectors)
    manifest = {"source": "synthetic", "kind": "synthetic", "id_column": "id", "image_column": "image",
                "count": count, "shard_size": shard_size, "num_shards": num_shards, "dtype": "float16",
                "method": "synthetic", "model_sha256": "synthetic", "complete": True}
    (directory / gallery.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def exact_top1(directory: Path, queries: np.ndarray) -> np.ndarray:
    """Exact nearest gallery position of each normalised query (inner product), streamed over the shards."""
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


def query_sets(directory: Path, source: ClusteredGallery, count: int, noises: list[float],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Normalised queries: new draws of the clusters, and near-duplicates of gallery items per noise level."""
    manifest = gallery.read_manifest(directory)
    sets = {"clustered": gallery.normalised(source.draw(count, rng))}
    for sigma in noises:
        positions = rng.choice(manifest["count"], size=count, replace=False)
        items = gallery.normalised(gallery.gallery_vectors(directory, manifest, positions))
        noise = rng.standard_normal(items.shape, dtype=np.float32) / np.sqrt(items.shape[1])
        sets[f"near-dup@{sigma:g}"] = gallery.normalised(items + sigma * noise)
    return sets


def index_figures(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build (unless ``--reuse``), search and recall figures of the index."""
    source = ClusteredGallery(args.dim, args.latent, args.clusters, args.spread, args.noise, args.seed)
    figures: dict[str, Any] = {"write_shards_seconds": None, "index_seconds": None, "peak_rss_gb_indexing": None}
    if not args.reuse:
        with Clock() as clock:
            write_gallery(work, source, args.gallery, args.shard_size, args.seed)
        figures["write_shards_seconds"] = round(clock.wall, 2)
        with Clock() as clock:
            gallery.build_index(work, "ivfpq", nlist=args.nlist, pq_m=args.pq_m, pq_bits=args.pq_bits, opq=args.opq,
                                train_size=args.train_size, nprobe=args.nprobe, seed=args.seed)
        figures["index_seconds"], figures["index_cpu_seconds"] = round(clock.wall, 2), round(clock.cpu, 2)
        figures["peak_rss_gb_indexing"] = peak_rss_gb()
    built = json.loads((work / gallery.INDEX_MANIFEST).read_text())
    if (built["count"], built["dim"]) != (args.gallery, args.dim):
        raise SystemExit(f"the index in {work} was built with other sizes: {built}")
    index = faiss.read_index(str(work / gallery.INDEX_FILE))
    figures.update(index=built["factory"], nlist=built["nlist"], train_size=built["train_size"],
                   nprobe=faiss.extract_index_ivf(index).nprobe, index_file_mb=round((work / gallery.INDEX_FILE).stat().st_size / 1e6, 1))

    rng = np.random.default_rng(args.seed + 1)
    timed = gallery.normalised(source.draw(args.queries, rng))
    with Clock() as clock:
        index.search(timed, 10)
    figures["search_seconds"], figures["search_cpu_seconds"] = round(clock.wall, 3), round(clock.cpu, 3)
    figures["queries_per_second"] = round(args.queries / clock.wall, 1)

    sets = query_sets(work, source, args.recall_queries, args.query_noise, rng)
    every = np.concatenate(list(sets.values()))
    exact = exact_top1(work, every)  # one pass over the shards for every set
    _, found = index.search(every, 10)
    recall, start = {}, 0
    for name, queries in sets.items():
        truth, got = exact[start : start + len(queries)], found[start : start + len(queries)]
        recall[name] = {"recall@1": round(float(np.mean(got[:, 0] == truth)), 4),
                        "recall@10": round(float(np.mean((got == truth[:, None]).any(axis=1))), 4)}
        start += len(queries)
    figures["recall"] = recall
    figures["recall_queries_per_set"] = args.recall_queries
    return figures


def write_images(folder: Path, count: int, size: int, seed: int) -> None:
    """``count`` JPEG files of ``size`` x ``size``: crops of scikit-image's photographs."""
    from zoo.data import mini

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [mini.photo(name) for name in mini.PHOTOS]
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.size) // 2, min(photo.size) + 1))
        x, y = (int(rng.integers(0, s - side + 1)) for s in photo.size)
        photo.crop((x, y, x + side, y + side)).resize((size, size)).save(folder / f"img{i:06d}.jpg", quality=90)


def embed_figures(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Seconds per image of ``zoo embed`` and of a plain batched forward of the same model, same images."""
    from PIL import Image

    images = work / "images"
    write_images(images, args.embed_images, args.embed_image_size, args.seed)
    method = gallery.load_method(args.embed_model, args.embed_variant, json.loads(args.embed_args))
    transform = method.image_transform()
    if transform is None:
        from zoo.data.base import default_transform

        transform = default_transform(224)
    files = sorted(images.glob("*.jpg"))
    batches = [torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i : i + args.embed_batch]])
               for i in range(0, len(files), args.embed_batch)]
    with torch.inference_mode():
        method.embed(batches[0])  # warm-up, as Lightning's first batch is not excluded either
        with Clock() as plain:
            for batch in batches:
                method.embed(batch)
    figures: dict[str, Any] = {
        "model": f"{args.embed_model}{':' + args.embed_variant if args.embed_variant else ''} {args.embed_args}",
        "images": len(files), "image_size": args.embed_image_size, "batch_size": args.embed_batch,
        "plain_forward_seconds": round(plain.wall, 4), "plain_forward_cpu_seconds": round(plain.cpu, 4),
        "plain_images_per_second": round(len(files) / plain.wall, 2),
    }
    for workers in args.embed_workers:
        out = work / f"embedded-{workers}"
        with Clock() as zoo:
            gallery.embed(images, out, method, shard_size=max(1, len(files) // 2), batch_size=args.embed_batch,
                          num_workers=workers,
                          trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False})
        figures[f"zoo_embed_seconds_workers{workers}"] = round(zoo.wall, 2)
        figures[f"zoo_embed_cpu_seconds_workers{workers}"] = round(zoo.cpu, 2)
        figures[f"zoo_overhead_workers{workers}"] = round(zoo.wall / plain.wall - 1, 4)
        figures[f"zoo_cpu_overhead_workers{workers}"] = round(zoo.cpu / plain.cpu - 1, 4)
        shutil.rmtree(out)
    return figures


def add_gallery_arguments(parser: argparse.ArgumentParser) -> None:
    """The synthetic gallery's shape and the index's lists, as every gallery script takes them."""
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--latent", type=int, default=64, help="intrinsic dimension of the clustered gallery")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.5, help="cluster radius relative to the centres' norm")
    parser.add_argument("--noise", type=float, default=0.1, help="isotropic noise relative to the centres' norm")
    parser.add_argument("--shard_size", type=int, default=50_000)
    parser.add_argument("--nlist", type=int, default=None, help="default: zoo index's (power of 2 near sqrt N)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000, help="gallery descriptors")
    parser.add_argument("--queries", type=int, default=10_000, help="queries timed")
    add_gallery_arguments(parser)
    parser.add_argument("--pq_m", type=int, default=96)
    parser.add_argument("--pq_bits", type=int, default=4, help="4: fast-scan PQ; 8: classic PQ")
    parser.add_argument("--opq", action="store_true")
    parser.add_argument("--train_size", type=int, default=None, help="default: zoo index's (64 per list)")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--recall_queries", type=int, default=500, help="queries per set checked against exact")
    parser.add_argument("--query_noise", type=float, nargs="+", default=[0.1, 0.3, 0.6],
                        help="relative noise of the near-duplicate sets")
    parser.add_argument("--reuse", action="store_true", help="search the index already in --workdir")
    parser.add_argument("--embed_images", type=int, default=0, help="images of the embed comparison (0: none)")
    parser.add_argument("--embed_image_size", type=int, default=512)
    parser.add_argument("--embed_model", type=str, default="PDFEmbedding")
    parser.add_argument("--embed_variant", type=str, default=None)
    parser.add_argument("--embed_args", type=str, default='{"pretrained": false}', help="JSON init arguments")
    parser.add_argument("--embed_batch", type=int, default=32)
    parser.add_argument("--embed_workers", type=int, nargs="+", default=[0, 1], help="DataLoader workers tried")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=str, default=None, help="where the shards go (default: a temp dir)")
    parser.add_argument("--out", type=str, default=None, help="JSON result file")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gallery-scale-"))
    try:
        figures: dict[str, Any] = {"gallery": args.gallery, "queries": args.queries, "dim": args.dim,
                                   "threads": args.threads, "clusters": args.clusters, "latent": args.latent,
                                   "shard_size": args.shard_size, "hnsw_quantizer_from": gallery_index.HNSW_QUANTIZER_FROM}
        figures.update(index_figures(args, work))
        if args.embed_images:
            figures["embed"] = embed_figures(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    targets = {"index_seconds": "<= 150 for 1,000,000 x 768 on 2 cores",
               "search_seconds": "< 60 for 10,000 queries x 1,000,000 x 768 on 2 cores",
               "peak_rss_gb_indexing": "< 4 while indexing 1,000,000 vectors",
               "zoo_overhead": "<= 0.15 over the plain batched forward"}
    write_result(args.out, "gallery_scale", figures, targets=targets)


if __name__ == "__main__":
    main()
