"""The ``zoo embed``, ``zoo index`` and ``zoo match`` commands of ``zoo.gallery``: options parsed, then one
library call each.

Every option can also come from a YAML file with ``--config`` (see ``configs/gallery/``).
"""

from __future__ import annotations

from typing import Any

from zoo.errors import ZooError
from zoo.tasks.copy_detection import COPY_FROM_LEVEL


def _parser(prog: str, description: str | None, trainer: bool = False) -> Any:
    import lightning.pytorch as pl
    from jsonargparse import ActionConfigFile, ArgumentParser

    # a refused argument or config value (a !!python tag, say) raises: _parse turns it into one line
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    if trainer:
        parser.add_class_arguments(pl.Trainer, "trainer", skip={"callbacks", "logger", "plugins", "profiler"})
    return parser


def _parse(parser: Any, argv: list[str]) -> Any:
    from jsonargparse import ArgumentError

    from zoo.cli.lightning import parse_error

    try:
        return parser.parse_args(argv)
    except ArgumentError as err:
        raise ZooError(f"{parser.prog}: {parse_error(str(err))}") from None


def cmd_embed(argv: list[str]) -> int:
    """Embed a gallery into descriptor shards with Lightning predict (resumable, DDP-ready)."""
    from zoo.gallery.embedding import embed
    from zoo.gallery.methods import DEFAULT_SEED, load_method

    parser = _parser("zoo embed", cmd_embed.__doc__, trainer=True)
    parser.add_argument("--gallery", type=str, required=True, help="folder of images, .tar or .parquet shard(s)")
    parser.add_argument("--output", type=str, required=True, help="folder of the shards")
    parser.add_argument("--model", type=str, required=True,
                        help="registry name, zoo checkpoint folder or hf-hub:org/name")
    parser.add_argument("--variant", type=str | None, default=None, help="named variant of a registry method")
    parser.add_argument("--model_args", type=dict[str, Any], default={}, help="constructor arguments")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of a registry method's initialisation (the same on a resumed run)")
    parser.add_argument("--shard_size", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers decoding images")
    parser.add_argument("--dtype", type=str, default="float16", help="float16 or float32")
    parser.add_argument("--image_size", type=int, default=224, help="default transform size")
    parser.add_argument("--id_column", type=str, default="id")
    parser.add_argument("--image_column", type=str, default="image")
    cfg = _parse(parser, argv)
    method = load_method(cfg.model, cfg.variant, cfg.model_args, seed=cfg.seed)
    embed(cfg.gallery, cfg.output, method, shard_size=cfg.shard_size, batch_size=cfg.batch_size,
                num_workers=cfg.num_workers, dtype=cfg.dtype, image_size=cfg.image_size, id_column=cfg.id_column,
                image_column=cfg.image_column, trainer=cfg.trainer.as_dict(),
                method_spec={"model": cfg.model, "variant": cfg.variant, "model_args": cfg.model_args,
                             "seed": cfg.seed})
    return 0


def cmd_index(argv: list[str]) -> int:
    """Build the FAISS index (flat, IVF or IVF-PQ) of an embedded gallery: in one process (the default), or in
    three steps any worker can run (--train, --part i/N, --merge), or in parts on local processes (--workers K)."""
    from jsonargparse import ActionYesNo

    from zoo.gallery import index as gallery_index

    parser = _parser("zoo index", cmd_index.__doc__)
    parser.add_argument("--gallery", type=str, required=True, help="output folder of `zoo embed`")
    parser.add_argument("--index_type", type=str, default="auto", help=", ".join(gallery_index.INDEX_TYPES))
    parser.add_argument("--flat_max", type=int, default=200_000, help="auto: largest gallery indexed exactly")
    parser.add_argument("--nlist", type=int | None, default=None, help="IVF lists (default: power of 2 near sqrt N)")
    parser.add_argument("--pq_m", type=int, default=64, help="PQ sub-quantisers")
    parser.add_argument("--pq_bits", type=int, default=8, help="bits per PQ code: 4 (fast-scan) or 8")
    parser.add_argument("--opq", type=bool, default=False, help="rotate with OPQ before PQ")
    parser.add_argument("--train_size", type=int | None, default=None,
                        help="descriptors sampled for training (default: samples_per_list x nlist)")
    parser.add_argument("--samples_per_list", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", action=ActionYesNo, default=False,
                        help="step 1: write the trained, empty index (index.trained.faiss)")
    parser.add_argument("--part", type=str | None, default=None,
                        help="step 2: part i/N (0 <= i < N) from its range of shards; the options are --train's")
    parser.add_argument("--merge", action=ActionYesNo, default=False,
                        help="step 3: merge the N parts into one index with its lists on disk")
    parser.add_argument("--workers", type=int | None, default=None,
                        help="train, build K parts in K local processes, merge them on disk")
    cfg = _parse(parser, argv)
    steps = [name for name, given in (("--train", cfg.train), ("--part", cfg.part is not None),
                                      ("--merge", cfg.merge), ("--workers", cfg.workers is not None)) if given]
    if len(steps) > 1:
        raise ZooError(f"zoo index: give one of {', '.join(steps)}, not several")
    options = {"index_type": cfg.index_type, "flat_max": cfg.flat_max, "nlist": cfg.nlist, "pq_m": cfg.pq_m,
               "pq_bits": cfg.pq_bits, "opq": cfg.opq, "train_size": cfg.train_size,
               "samples_per_list": cfg.samples_per_list, "nprobe": cfg.nprobe, "seed": cfg.seed}
    if cfg.train:
        path = gallery_index.train_index(cfg.gallery, **options)
        print(f"trained {path}")
    elif cfg.part is not None:
        part, parts = gallery_index.parse_part(cfg.part)
        info = gallery_index.build_part(cfg.gallery, part, parts)
        first, stop = info["shards"]
        print(f"part {part}/{parts} of {cfg.gallery}: shards {first}..{stop - 1}, {info['count']} descriptors"
              + (" (already built; kept)" if info["skipped"] else ""))
    elif cfg.merge:
        path = gallery_index.merge_parts(cfg.gallery)
        print(f"merged the parts of {cfg.gallery} into {path} (lists on disk: {gallery_index.ONDISK_LISTS})")
    elif cfg.workers is not None:
        reports = gallery_index.build_local(cfg.gallery, cfg.workers, **options)
        kept = sum(info["skipped"] for info in reports)
        print(f"indexed {cfg.gallery} in {len(reports)} parts ({kept} kept from an earlier run), merged into "
              f"{cfg.gallery}/{gallery_index.INDEX_FILE} (lists on disk: {gallery_index.ONDISK_LISTS})")
    else:
        path = gallery_index.build_index(cfg.gallery, **options)
        print(f"indexed {cfg.gallery} into {path}")
    return 0


def cmd_match(argv: list[str]) -> int:
    """Replication ratio of generators against an indexed gallery (re-ranked by predicted level)."""
    from zoo.gallery.match import match

    parser = _parser("zoo match", cmd_match.__doc__, trainer=True)
    parser.add_argument("--gallery", type=str, required=True, help="embedded and indexed gallery")
    parser.add_argument("--generated", type=str, nargs="+", required=True,
                        help="NAME=PATH per generator: its images, or its `zoo embed` output")
    parser.add_argument("--output", type=str, required=True)
    parser.add_argument("--k", type=int, default=10, help="candidates re-ranked per generated image")
    parser.add_argument("--threshold", type=float, default=float(COPY_FROM_LEVEL),
                        help="best level counted as replication (default: the task's copy level, 3)")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the Wilson interval")
    parser.add_argument("--top", type=int, default=16, help="pairs per contact sheet")
    parser.add_argument("--nprobe", type=int | None, default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    # generated images are embedded inside this process: one device unless told otherwise
    parser.set_defaults({"trainer.devices": 1, "trainer.enable_progress_bar": False})
    cfg = _parse(parser, argv)
    generated = {}
    for item in cfg.generated:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ZooError(f"--generated {item!r}: write NAME=PATH")
        if name in generated:
            raise ZooError(f"--generated: generator {name!r} is given twice")
        generated[name] = path
    match(cfg.gallery, generated, cfg.output, k=cfg.k, threshold=cfg.threshold, confidence=cfg.confidence,
          top=cfg.top, nprobe=cfg.nprobe, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
          trainer=cfg.trainer.as_dict())
    return 0
