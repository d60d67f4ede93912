"""Replication ratio at gallery scale: ``zoo embed``, ``zoo index`` and ``zoo match``.

ICDiff's headline measurement embeds the images a diffusion model generates and an open-source
gallery, finds each generation's closest gallery images, and counts the generations whose predicted
replication level reaches a threshold. Three commands do it with any copy-detection method that offers
``embed(images)`` and ``pair_from_embeddings(generated_emb, real_emb)``:

- ``zoo embed`` (``embedding.py``): Lightning ``predict`` over a gallery (``catalogue.py``: a folder of
  images, webdataset ``.tar`` or parquet shards), its descriptors written as resumable, checksummed
  shards (``shards.py``), on one CPU or many GPUs; the method is saved beside them (``methods.py``).
- ``zoo index`` (``index.py``): a FAISS index (flat, IVF, IVF-PQ) over the shards.
- ``zoo match`` (``match.py``, alias ``zoo replication-ratio``): top-``k`` candidates by cosine,
  re-ranked by the method's predicted level; the replication ratio with its Wilson interval and the
  level histogram (``statistics.py``), ``report.json``, ``matches.csv`` and figures (``report.py``).

Their command lines are in ``zoo.cli.gallery``.

Example:
    .. code-block:: bash

        zoo embed --gallery data/laion/shards --output runs/gallery --model PDFEmbedding \\
            --trainer.devices 8 --trainer.strategy ddp
        zoo index --gallery runs/gallery --index_type ivfpq --nlist 4096 --pq_m 64
        zoo match --gallery runs/gallery --generated sdxl=gen/sdxl midjourney=gen/mj \\
            --threshold 3 --output runs/ratio
"""

from zoo.gallery.catalogue import Catalog, ImageReader
from zoo.gallery.embedding import embed
from zoo.gallery.index import INDEX_FILE, INDEX_IDS, INDEX_MANIFEST, build_index, normalised
from zoo.gallery.match import GeneratorResult, match
from zoo.gallery.methods import fingerprint, load_method
from zoo.gallery.shards import (
    MANIFEST,
    MODEL_DIR,
    gallery_vectors,
    iter_shards,
    read_manifest,
    read_shard,
    write_shard,
)
from zoo.gallery.statistics import level_histogram, replication_ratio

__all__ = [
    "INDEX_FILE", "INDEX_IDS", "INDEX_MANIFEST", "MANIFEST", "MODEL_DIR", "Catalog", "GeneratorResult",
    "ImageReader", "build_index", "embed", "fingerprint",
    "gallery_vectors", "iter_shards", "level_histogram", "load_method", "match", "normalised", "read_manifest",
    "read_shard", "replication_ratio", "write_shard",
]
