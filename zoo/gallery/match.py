"""``zoo match``: the best gallery match of each generated image, re-ranked by the predicted level.

For each generator (a folder of its images, embedded first, or the output of ``zoo embed``), the
top-``k`` gallery candidates by cosine similarity are re-ranked by the method's predicted replication
level of each pair (``pair_from_embeddings``, e.g. PDF-Embedding's six-level PDF), from the stored
descriptors. That level is the method's own (its PDF or level map): equal descriptors are only flagged
``descriptor_identical``, never a level. A pair is an ``exact_copy`` (level 5) when the two images, read again
from where they were embedded, have the same pixels at the model's input size. The method is the one saved in the gallery's ``model/`` folder, read as data with
``zoo.checkpoint.load_folder``: nothing that ``gallery.json`` or ``model/config.json`` names is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.data.base import default_transform
from zoo.errors import ZooError
from zoo.gallery.catalogue import SourceImages
from zoo.gallery.embedding import embed
from zoo.gallery.index import INDEX_FILE, normalised, read_index
from zoo.gallery.methods import check_retrieval, fingerprint
from zoo.gallery.report import contact_sheet, write_report
from zoo.gallery.result import GeneratorResult
from zoo.gallery.shards import MANIFEST, MODEL_DIR, gallery_rows, inside, iter_shards, read_manifest
from zoo.gallery.statistics import level_histogram, replication_ratio
from zoo.tasks.copy_detection import (
    COPY_FROM_LEVEL,
    MAX_LEVEL,
    NUM_LEVELS,
    descriptors_identical,
    pixels_identical,
)

GENERATOR_NAME = re.compile(r"[\w.-]+")  # a generator's name names its files in the output folder
PAIR_CHUNK = 8192  # candidate pairs scored per call of pair_from_embeddings
QUERY_CHUNK = 1024  # generated images searched and re-ranked at a time: memory is bounded by the chunk


@dataclass
class Candidates:
    """The top-``k`` gallery candidates of each query (``-1`` / ``""`` / zeros where fewer were found)."""

    similarity: np.ndarray  # (queries, k) cosine
    positions: np.ndarray  # (queries, k) global gallery position
    ids: np.ndarray  # (queries, k) gallery ids
    vectors: Tensor  # (queries, k, dim) the exact stored descriptors, float32


class GallerySearch:
    """An embedded, indexed gallery opened once for many searches.

    A merged index's lists stay on disk, memory-mapped; the exact descriptors of the candidates are read
    from the shards by row. Memory is bounded by the lists a search probes and the candidates it returns,
    not by the gallery's size.

    Example:
        >>> search = GallerySearch("runs/gallery")                       # doctest: +SKIP
        >>> method = load_gallery_method(search.gallery, search.manifest)  # doctest: +SKIP
        >>> found = search.search(method.embed(image[None]), k=10)        # doctest: +SKIP
        >>> level, pdf = score_pairs(method, method.embed(image[None]), found.vectors)  # doctest: +SKIP
    """

    def __init__(self, gallery: str | Path, nprobe: int | None = None) -> None:
        self.gallery = Path(gallery)
        self.manifest = read_manifest(self.gallery)
        self.index, self.info = read_index(self.gallery, self.manifest, nprobe)

    def search(self, embeddings: Tensor, k: int) -> Candidates:
        """The top-``k`` candidates of each row of ``embeddings`` by cosine, with their stored descriptors."""
        if embeddings.shape[1] != self.index.d:
            raise ZooError(f"descriptors of dimension {embeddings.shape[1]}: the gallery index "
                           f"{self.gallery / INDEX_FILE} has {self.index.d}")
        similarity, positions = self.index.search(normalised(embeddings), min(k, self.index.ntotal))
        ids, vectors = gallery_rows(self.gallery, self.manifest, positions)
        return Candidates(similarity, positions, ids, vectors)


def score_pairs(method: Any, queries: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor | None]:
    """The method's predicted level (and PDF, if it gives one) of each query with each of its candidates.

    Args:
        method: the gallery's method (``load_gallery_method``).
        queries: (n, dim) descriptors.
        candidates: (n, k, dim) descriptors of their candidates.

    Returns:
        levels (n, k) and PDFs (n, k, levels) or None.
    """
    n, k = candidates.shape[:2]
    level = torch.full((n, k), -1.0)
    pdf = None
    flat_q = queries.float().repeat_interleave(k, dim=0)
    flat_g = candidates.reshape(n * k, -1)
    with torch.no_grad():
        for start in range(0, len(flat_q), PAIR_CHUNK):
            end = start + PAIR_CHUNK
            # the level is the method's (its PDF or level map); an exact_copy it derives from descriptors
            # is not read: an exact copy is decided on the pixels
            out = method.pair_from_embeddings(flat_q[start:end], flat_g[start:end])
            level.view(-1)[start:end] = out["level"].float().cpu()
            if out.get("pdf") is not None:
                if pdf is None:
                    pdf = torch.zeros(n * k, NUM_LEVELS)
                pdf[start:end] = out["pdf"].float().cpu()
    return level, None if pdf is None else pdf.view(n, k, NUM_LEVELS)


def load_gallery_method(gallery: Path, manifest: Mapping[str, Any]) -> Any:
    """The method saved with an embedded gallery, built as data and checked against its fingerprint."""
    from zoo.checkpoint import load_folder

    folder = gallery / MODEL_DIR
    try:
        method = load_folder(folder)
    except ZooError as err:
        raise ZooError(f"the method saved with the gallery ({folder}) cannot be built: {err}") from err
    check_retrieval(method, str(folder))
    if fingerprint(method) != manifest["model_sha256"]:
        raise ZooError(f"{folder} does not hold the weights the gallery was embedded with")
    return method


def match(gallery: str | Path, generated: Mapping[str, str | Path], output: str | Path, *, k: int = 10,
          threshold: float = float(COPY_FROM_LEVEL), confidence: float = 0.95, top: int = 16,
          nprobe: int | None = None, batch_size: int = 64, num_workers: int = 0,
          trainer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Replication ratio of each generator against an embedded, indexed gallery.

    Args:
        gallery: the output folder of ``zoo embed`` + ``zoo index``.
        generated: generator name -> a folder/shard source of its images, or a ``zoo embed`` output folder.
        output: where the report, the matches and the figures are written.
        k: gallery candidates retrieved per generated image before re-ranking.
        threshold: a generation replicates when its best predicted level is at least this.
        confidence: level of the Wilson interval of the ratio.
        top: pairs shown in each contact sheet.
        nprobe: IVF lists visited per query (default: the index's).
        batch_size: images per batch when generated images are embedded first.
        num_workers: DataLoader workers for that.
        trainer: Trainer arguments for that.

    Returns:
        the report written to ``report.json``.
    """
    if not 0 < confidence < 1:
        raise ZooError(f"--confidence {confidence}: give a level between 0 and 1")
    if k < 1:
        raise ZooError(f"--k {k}: give at least 1 candidate")
    for name in generated:
        if not isinstance(name, str) or not GENERATOR_NAME.fullmatch(name) or set(name) == {"."}:
            raise ZooError(f"--generated {name!r}: a generator's name is a plain name (letters, digits, _ . -), "
                           "used for its files in --output")
    gallery, output = Path(gallery), Path(output)
    searcher = GallerySearch(gallery, nprobe)
    manifest = searcher.manifest
    method = load_gallery_method(gallery, manifest)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ZooError(f"--output {output} cannot be written: {err.strerror or err}") from err
    results = []
    for name, source in generated.items():
        queries = Path(source)
        if not (queries / MANIFEST).is_file():
            queries = embed(source, inside(output, "embeddings", name), method, shard_size=manifest["shard_size"],
                            batch_size=batch_size, num_workers=num_workers, dtype=manifest["dtype"],
                            trainer={"devices": 1, "enable_progress_bar": False, **(trainer or {})})
        query_manifest = read_manifest(queries)
        sources = {"query": SourceImages(query_manifest), "gallery": SourceImages(manifest)}
        try:
            result = _match_generator(name, queries, searcher, method, k, threshold, sources)
            result.ratio, result.ci = replication_ratio(result.level, threshold, confidence)
            result.histogram = level_histogram(result.level)
            results.append(result)
            contact_sheet(result, sources, top, inside(output, f"contact_{name}.png"))
        finally:
            for images in sources.values():
                images.close()
    return write_report(results, output, k=k, threshold=threshold, confidence=confidence, index=searcher.info)


def _match_generator(name: str, queries: Path, searcher: GallerySearch, method: Any, k: int, threshold: float,
                     sources: Mapping[str, SourceImages]) -> GeneratorResult:
    gallery, manifest = searcher.gallery, searcher.manifest
    query_manifest = read_manifest(queries)
    if query_manifest["model_sha256"] != manifest["model_sha256"]:
        raise ZooError(f"{queries} was embedded with other weights than the gallery {gallery}")
    parts = list(iter_shards(queries, query_manifest))
    ids = [id_ for _, shard_ids, _ in parts for id_ in shard_ids]
    embeddings = torch.cat([e for _, _, e in parts])
    if embeddings.shape[1] != searcher.index.d:
        raise ZooError(
            f"descriptors of {name} ({queries}) have dimension {embeddings.shape[1]}, "
            f"the gallery index {gallery / INDEX_FILE} has {searcher.index.d}"
        )
    chunks = []
    for start in range(0, len(ids), QUERY_CHUNK):
        chunk = embeddings[start : start + QUERY_CHUNK]
        found = searcher.search(chunk, k)
        level, pdf = score_pairs(method, chunk, found.vectors)
        valid = found.positions >= 0  # FAISS pads with -1 when fewer than k are found
        level[torch.from_numpy(~valid)] = -1.0
        kk = found.positions.shape[1]
        identical = descriptors_identical(chunk.float().repeat_interleave(kk, dim=0),
                                          found.vectors.reshape(-1, chunk.shape[1])).view(len(chunk), kk).numpy()
        chunks.append((found.similarity, found.ids, level.numpy(), pdf, identical & valid))
    similarity, gallery_ids, level, identical = (np.concatenate([c[i] for c in chunks]) for i in (0, 1, 2, 4))
    pdf = None if chunks[0][3] is None else torch.cat([c[3] for c in chunks]).numpy()
    exact_at, unchecked = _exact_copies(ids, gallery_ids, similarity, identical, sources,
                                        method.image_transform() or default_transform(manifest.get("image_size", 224)))
    best = best_candidate(level, similarity)
    rows = np.arange(len(ids))
    exact = exact_at >= 0
    best[exact] = exact_at[exact]  # identical pixels: that candidate is the match, at level 5
    level_best = level[rows, best]
    level_best[exact] = MAX_LEVEL
    return GeneratorResult(
        name=name, ids=ids, match_ids=[str(i) for i in gallery_ids[rows, best]],
        similarity=similarity[rows, best], level=level_best,
        pdf=None if pdf is None else pdf[rows, best], threshold=threshold,
        exact_copy=exact, descriptor_identical=identical[rows, best], unchecked=unchecked,
    )


def _exact_copies(ids: list[str], gallery_ids: np.ndarray, similarity: np.ndarray, identical: np.ndarray,
                  sources: Mapping[str, SourceImages], transform: Any) -> tuple[np.ndarray, int]:
    """For each generated image, the candidate column whose pixels equal its own (-1 for none), and how many
    descriptor-identical pairs could not be checked because an image could not be read again.

    Only descriptor-identical candidates can be pixel-identical (the same pixels give the same descriptors), so
    only those are decoded, highest cosine first; both images go through the method's transform, at its input
    size, and ``pixels_identical`` decides (a lossless re-encode passes, a JPEG q90 re-encode does not).
    """
    exact_at = np.full(len(ids), -1)
    unchecked = 0
    for q in np.nonzero(identical.any(axis=1))[0]:
        query = sources["query"].load(ids[q])
        for j in sorted(np.nonzero(identical[q])[0], key=lambda j: -similarity[q, j]):
            real = sources["gallery"].load(gallery_ids[q, j])
            if query is None or real is None:
                unchecked += 1
                continue
            if bool(pixels_identical(transform(query)[None], transform(real)[None])[0]):
                exact_at[q] = j
                break
    return exact_at, unchecked


def best_candidate(level: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Column of the highest level in each row, the highest similarity among equal levels."""
    top = level.max(axis=1, keepdims=True)
    return np.where(level == top, similarity, -np.inf).argmax(axis=1)
