"""A gallery served beside the models: a generated image's top-k gallery matches, as ``zoo match`` finds them.

The gallery is a folder of ``zoo embed`` + ``zoo index``. Its own method (``model/``, read as data and checked
against the gallery's fingerprint) embeds each uploaded image, the index gives the ``k`` nearest gallery
images by cosine, the method predicts the level of each pair from the stored descriptors, and the best is
chosen as ``zoo match`` chooses it: the highest level, the highest cosine among equal levels, and a
descriptor-identical candidate whose pixels equal the upload's (at the model's input size) first, at level 5.
The upload's descriptor is rounded to the gallery's storage dtype first, as ``zoo match`` reads a generated
image's descriptor back from its shard, so that the same image gets the same row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data.base import default_transform
from zoo.errors import ZooError
from zoo.gallery.catalogue import SourceImages
from zoo.gallery.match import GallerySearch, best_candidate, load_gallery_method, score_pairs
from zoo.gallery.shards import DTYPES
from zoo.tasks.copy_detection import MAX_LEVEL, NUM_LEVELS, descriptors_identical, pixels_identical

THUMBNAIL = 160  # pixels on the longer side of a match's picture on the page
# the columns of ``zoo match``'s matches.csv a row holds, less ``generator`` (a request has no generator name)
COLUMNS = ("id", "match_id", "similarity", "level", "exact_copy", "descriptor_identical",
           *(f"p{i}" for i in range(NUM_LEVELS)))


@dataclass
class Match:
    """One gallery candidate of a generated image: its gallery id and the method's level of the pair."""

    id: str
    similarity: float
    level: float
    exact_copy: bool
    descriptor_identical: bool
    picture: Any  # the gallery image (PIL), None where it can no longer be read from where it was embedded


class Gallery:
    """An embedded, indexed gallery, opened once: its search (``zoo.gallery.match.GallerySearch``), its method and
    its source images. The method runs on the CPU, where ``score_pairs`` gives it the stored descriptors.

    Args:
        folder: the output folder of ``zoo embed`` and ``zoo index``.
        k: gallery candidates retrieved per image before the best is chosen (``zoo match --k``).
    """

    def __init__(self, folder: str | Path, k: int = 10) -> None:
        if k < 1:
            raise ZooError(f"--gallery_k {k}: give at least 1 candidate")
        self.searcher = GallerySearch(folder)
        self.manifest = self.searcher.manifest
        self.method = load_gallery_method(self.searcher.gallery, self.manifest).eval()
        self.k = min(k, int(self.manifest["count"]))
        self.dtype = DTYPES[self.manifest["dtype"]]
        self.sources = SourceImages(self.manifest)
        self.transform = self.method.image_transform() or default_transform(self.manifest.get("image_size", 224))

    @property
    def size(self) -> int:
        return int(self.manifest["count"])

    def search(self, names: list[str], pictures: list[Any]) -> tuple[list[dict[str, Any]], list[list[Match]]]:
        """The row ``zoo match`` writes for each picture, and its ``k`` candidates, the row's match first.

        Args:
            names: the id of each picture in its row (a file name without its suffix, as a folder's id is).
            pictures: decoded RGB images (PIL).
        """
        inputs = torch.stack([self.transform(p) for p in pictures])
        with torch.inference_mode():
            # stored and read back as a generated image's shard is, before any comparison
            queries = self.method.embed(inputs).float().cpu().to(self.dtype).float()
        found = self.searcher.search(queries, self.k)
        level, pdf = score_pairs(self.method, queries, found.vectors)
        level = level.numpy()
        valid = found.positions >= 0  # FAISS pads with -1 when fewer than k are found
        level[~valid] = -1.0
        k = found.positions.shape[1]
        identical = descriptors_identical(queries.repeat_interleave(k, dim=0),
                                          found.vectors.reshape(len(names) * k, -1)).view(len(names), k).numpy()
        identical &= valid
        best = best_candidate(level, found.similarity)
        rows, matches = [], []
        for q in range(len(names)):
            exact = self._exact_copy(pictures[q], found.ids[q], found.similarity[q], identical[q])
            if exact >= 0:  # identical pixels: that candidate is the match, at level 5
                best[q] = exact
                level[q, exact] = MAX_LEVEL
            b = best[q]
            order = [b, *(j for j in np.lexsort((-found.similarity[q], -level[q])) if j != b and valid[q, j])]
            matches.append([Match(str(found.ids[q, j]), float(found.similarity[q, j]), float(level[q, j]),
                                  j == exact, bool(identical[q, j]), self.sources.load(str(found.ids[q, j])))
                            for j in order if valid[q, j]])
            rows.append(dict(zip(COLUMNS, (
                names[q], str(found.ids[q, b]), float(found.similarity[q, b]), float(level[q, b]), int(exact >= 0),
                int(identical[q, b]), *(pdf[q, b].tolist() if pdf is not None else [None] * NUM_LEVELS)),
                strict=True)))
        return rows, matches

    def _exact_copy(self, picture: Any, ids: np.ndarray, similarity: np.ndarray, identical: np.ndarray) -> int:
        """The candidate whose pixels equal ``picture``'s at the model's input size (-1 for none).

        Only descriptor-identical candidates can be (the same pixels give the same descriptor); they are
        decoded highest cosine first, as ``zoo match`` decodes them.
        """
        if not identical.any():
            return -1
        mine = self.transform(picture)[None]
        for j in sorted(np.nonzero(identical)[0], key=lambda j: -similarity[j]):
            real = self.sources.load(str(ids[j]))
            if real is not None and bool(pixels_identical(mine, self.transform(real)[None])[0]):
                return int(j)
        return -1

    def close(self) -> None:
        self.sources.close()


def thumbnail(picture: Any) -> bytes:
    """A gallery image as a small PNG for the page."""
    small = picture.copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    small.save(buffer, "PNG")
    return buffer.getvalue()
