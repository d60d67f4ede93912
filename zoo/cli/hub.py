"""``zoo publish``, ``zoo download`` and ``zoo list --pretrained``: the command lines of ``zoo.hub``.

A token given with ``--token`` is passed to the Hub client and never printed, not even in an argparse error.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from zoo.checkpoint import CONFIG_NAME, EXPORT_DIR, convert_checkpoint
from zoo.errors import ZooError
from zoo.hub import (
    BY_HAND,
    check_repo_id,
    download,
    known_checkpoints,
    publish,
    read_metrics,
    run_metadata,
)

_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")


class _Parser(argparse.ArgumentParser):
    """argparse that never echoes a token: ``--token`` values and anything shaped like a Hub token are masked."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        self._secrets = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--token"]
        self._secrets += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--token=")]
        return super().parse_args(argv, namespace)

    def error(self, message: str) -> Any:  # type: ignore[override]
        for secret in getattr(self, "_secrets", []):
            if secret:
                message = message.replace(secret, "***")
        super().error(_HUB_TOKEN.sub("***", message))


def _hub_parser(prog: str, description: str) -> _Parser:
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--token", help="a Hub token (default: HF_TOKEN or the saved `hf auth login`); never "
                                        "printed")
    return parser


def _alias(parser: argparse.ArgumentParser, flag: str, dest: str, **kwargs: Any) -> None:
    """An older hyphenated spelling of an option, accepted but not shown in --help."""
    parser.add_argument(flag, dest=dest, help=argparse.SUPPRESS, **kwargs)


def cmd_publish(argv: list[str]) -> int:
    """Publish a checkpoint or a run dir to the Hugging Face Hub, with a model card."""
    parser = _hub_parser(
        "zoo publish",
        "Upload model.safetensors, config.json and a generated model card to the Hub. Files already on the "
        "revision are not replaced unless --overwrite. HF_ENDPOINT selects another Hub.",
    )
    parser.add_argument("path", help="a checkpoint folder, a run dir of `zoo fit` (holding zoo/), or a .ckpt")
    parser.add_argument("--repo_id", help="org/name on the Hub (required)")
    _alias(parser, "--repo-id", "repo_id")
    parser.add_argument("--revision", help="the branch to publish to (default main)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--overwrite", action="store_true",
                        help="commit on top of files already on the revision (they stay in its history)")
    parser.add_argument("--metrics", help="a JSON file of metrics for the card (default: the run's metrics.csv)")
    parser.add_argument("--dataset", help="a Hub dataset id, or the datamodule it saw (default: the run's)")
    args = parser.parse_args(argv)
    if not args.repo_id:
        parser.error("the following arguments are required: --repo_id")
    check_repo_id(args.repo_id, "--repo_id")
    with tempfile.TemporaryDirectory() as tmp:
        folder, run_dir = _checkpoint_of(Path(args.path), Path(tmp))
        metrics, dataset, config = run_metadata(run_dir) if run_dir is not None else ({}, None, None)
        if args.metrics:
            metrics = read_metrics(Path(args.metrics))
        url = publish(folder, args.repo_id, revision=args.revision, private=args.private, metrics=metrics,
                      dataset=args.dataset or dataset, training_config=config, overwrite=args.overwrite,
                      token=args.token)
    print(url)
    return 0


def _checkpoint_of(path: Path, tmp: Path) -> tuple[Path, Path | None]:
    """The checkpoint folder to publish and the run dir it came from (None when unknown)."""
    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return convert_checkpoint(path, tmp / EXPORT_DIR), run_dir
    if (path / CONFIG_NAME).is_file():
        return path, path.parent if path.name == EXPORT_DIR else None
    if (path / EXPORT_DIR / CONFIG_NAME).is_file():
        return path / EXPORT_DIR, path
    raise ZooError(f"{path} is neither a checkpoint folder (config.json + model.safetensors), a run dir of "
                   f"`zoo fit` holding zoo/, nor a .ckpt")


def cmd_download(argv: list[str]) -> int:
    """Download a checkpoint by short name or repo id into the Hugging Face cache."""
    parser = _hub_parser(
        "zoo download",
        "Fetch a checkpoint (a short name of `zoo list --pretrained`, hf-hub:org/name or org/name) into the "
        "Hugging Face cache, check its config.json as data, and print its folder; later loads work offline.",
    )
    parser.add_argument("source", help="short name, hf-hub:org/name[@revision] or org/name")
    parser.add_argument("--revision", help="branch, tag or commit")
    parser.add_argument("--cache_dir", help="another cache (default HF_HUB_CACHE)")
    _alias(parser, "--cache-dir", "cache_dir")
    parser.add_argument("--force", action="store_true",
                        help="download again even if cached (after a sha256 mismatch, for instance)")
    args = parser.parse_args(argv)
    entry = known_checkpoints().get(args.source)
    if entry is not None and not entry.verified and entry.repo_type not in BY_HAND:  # nothing is fetched by hand
        print(f"zoo: warning: {args.source} is {entry.verification()}", file=sys.stderr)
    print(download(args.source, revision=args.revision, cache_dir=args.cache_dir, force=args.force,
                   token=args.token))
    return 0


def print_pretrained(console: Any) -> int:
    """Print the known pretrained checkpoints, with their source and verification state."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="pretrained checkpoints")
    table.add_column("name", no_wrap=True)
    for column in ("method", "source", "verification", "description"):
        table.add_column(column, overflow="fold")
    for name, entry in known_checkpoints().items():
        where = {"model": "", "github": "github.com/", "url": ""}.get(entry.repo_type, f"{entry.repo_type}s/")
        source = f"{where}{entry.repo_id}" + ("" if entry.repo_type == "url" else f"@{entry.revision}")
        if entry.repo_type in BY_HAND:
            how = "on GitHub" if entry.repo_type == "github" else "for download"
            source += f"/{entry.filename}\n(released by the authors {how}; `zoo convert --released {entry.method}`)"
        elif entry.filename:
            source += f"/{entry.filename}\n(released by the authors; converted on download)"
        if entry.source:
            source += f"\n{entry.source}"
        state = escape(entry.verification())
        table.add_row(escape(name), entry.method, escape(source), state if entry.verified else f"[yellow]{state}",
                      escape(entry.description))
    console.print(table)
    return 0
