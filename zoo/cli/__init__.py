"""The ``zoo`` command.

``zoo fit|validate|test`` are LightningCLI's subcommands (``zoo.cli.lightning``). ``zoo predict`` scores a
user's own files (``zoo.cli.predict``). The other subcommands are plain commands, imported only when run, so
that ``zoo --help`` answers at once and the library modules know nothing of the CLI.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from zoo.errors import ZooError

TRAINER_SUBCOMMANDS = ("fit", "validate", "test")

# warnings that carry no information for a zoo user (each names what the zoo already does about it)
QUIET = (
    r".*LightningCLI's args parameter is intended.*",  # the zoo passes argv on purpose
    r".*isinstance\(treespec, LeafSpec\).*",  # torch pytree deprecation inside Lightning
    r".*litlogger.*|.*litmodels.*",  # Lightning's advertising tips
    r".*tensorboardX.*",  # the CSV/TensorBoard logger choice is the user's
    r".*log_every_n_steps.*",  # the mini sets have few batches per epoch by design
    r".*does not have many workers.*",  # num_workers is a datamodule argument the user sets
    r".*No seed found, seed set to.*",  # said again on the next line, "Seed set to 0"
)


def _quiet() -> None:
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            text = record.getMessage()
            return not any(key in text for key in ("litlogger", "litmodels", "tensorboardX"))

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_Drop())


def __getattr__(name: str) -> Any:
    # LightningCLI is imported only by the subcommands that use it
    if name in ("ZooCLI", "ExportOnFitEnd"):
        from zoo.cli import lightning as lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(name)


# ------------------------------------------------------------------------------------------ zoo list
def cmd_list(argv: list[str]) -> int:
    """Print the registered methods, datamodules and tasks."""
    parser = argparse.ArgumentParser(prog="zoo list",
                                     description="List the registered methods, datamodules and tasks.")
    parser.add_argument("--pretrained", action="store_true", help="list the known pretrained checkpoints instead")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from zoo import registry

    # piped output keeps whole rows, so that it can be searched
    console = Console(width=None if sys.stdout.isatty() else 200)
    if args.pretrained:
        from zoo.cli.hub import print_pretrained

        return print_pretrained(console)
    # from the plugins' manifests: listing imports no plugin (zoo.registry)
    table = Table(title="methods")
    for column in ("name", "task", "paper", "variants", "description", "plugin"):
        table.add_column(column, no_wrap=column in ("name", "task", "plugin"))
    for name, entry in registry.methods.entries.items():
        try:
            info = registry.methods.describe(name)
        except ZooError as err:
            table.add_row(name, "[red]failed", f"[red]{err}", "", "", entry.dist)
            continue
        title = info["display_name"]
        table.add_row(name + (f"\n({title})" if title else ""), info["task"], info["paper"],
                      ", ".join(info["variants"]), info["doc"], entry.dist)
    console.print(table)
    table = Table(title="datamodules")
    for column in ("name", "task", "description", "plugin"):
        table.add_column(column, no_wrap=column != "description")
    for name, entry in registry.datamodules.entries.items():
        try:
            info = registry.datamodules.describe(name)
        except ZooError as err:
            table.add_row(name, "[red]failed", f"[red]{err}", entry.dist)
            continue
        table.add_row(name, info["task"], info["description"], entry.dist)
    console.print(table)
    table = Table(title="tasks")
    for column in ("name", "question", "plugin"):
        table.add_column(column, no_wrap=column != "question")
    for name, entry in registry.tasks.entries.items():
        try:
            info = registry.tasks.describe(name)
        except ZooError as err:
            table.add_row(name, f"[red]{err}", entry.dist)
            continue
        table.add_row(name, info["question"], entry.dist)
    console.print(table)
    for name, err in registry.broken_plugins().items():  # the others work without it: said, not fatal
        console.print(f"[red]plugin {name} is not loaded: {err}")
    return 0


def cmd_convert(argv: list[str]) -> int:
    """Convert a Lightning ``.ckpt``, or a paper's released checkpoint, into a zoo checkpoint folder."""
    from zoo import registry
    from zoo.checkpoint import convert_checkpoint

    parser = argparse.ArgumentParser(
        prog="zoo convert",
        description="Convert a .ckpt written by `zoo fit` (or, with --released, a checkpoint file released by a "
        "method's authors) into config.json + model.safetensors.",
    )
    parser.add_argument("ckpt", help="the .ckpt file, or the released file")
    parser.add_argument("output", help="the folder to write")
    parser.add_argument("--released", metavar="METHOD", help="the method whose importer reads the released file")
    args = parser.parse_args(argv)
    if args.released:
        print(registry.methods.load(args.released).convert_released(args.ckpt).save_pretrained(args.output))
    else:
        print(convert_checkpoint(args.ckpt, args.output))
    return 0


# the plain subcommands, as "module:function", imported only when run (the library modules know
# nothing of the CLI). A plugin package may add its own with ``register_command``.
COMMANDS: dict[str, str | Callable[[list[str]], int]] = {
    "list": "zoo.cli:cmd_list",
    "convert": "zoo.cli:cmd_convert",
    "predict": "zoo.cli.predict:cmd_predict",
    "publish": "zoo.cli.hub:cmd_publish",
    "download": "zoo.cli.hub:cmd_download",
    "benchmark": "zoo.cli.benchmark:cmd_benchmark",
    "embed": "zoo.cli.gallery:cmd_embed",
    "index": "zoo.cli.gallery:cmd_index",
    "match": "zoo.cli.gallery:cmd_match",
    "replication-ratio": "zoo.cli.gallery:cmd_match",
    "serve": "zoo.cli.serve:cmd_serve",
}
SUMMARIES = {
    "serve": "Serve models over HTTP: zoo predict's rows as an API, and a web page per model.",
    "list": "Print the registered methods, datamodules and tasks (--pretrained: the known checkpoints).",
    "predict": "Score your own images (--inputs) or pairs (--pairs) with a checkpoint; one row per input.",
    "convert": "Convert a Lightning .ckpt, or a paper's released checkpoint, into a zoo checkpoint folder.",
    "publish": "Publish a zoo checkpoint folder to the Hugging Face Hub with a model card.",
    "download": "Download a known checkpoint by short name, or hf-hub:org/name, into the cache.",
    "benchmark": "Run a benchmark suite and write its report.",
    "embed": "Embed a gallery of images into descriptor shards.",
    "index": "Build a FAISS index over an embedded gallery.",
    "match": "Match generated images against an indexed gallery: the replication ratio.",
    "replication-ratio": "Same as match.",
}


def register_command(name: str, fn: Callable[[list[str]], int], summary: str = "") -> None:
    """Add a plain subcommand to ``zoo``."""
    COMMANDS[name] = fn
    SUMMARIES[name] = summary or (fn.__doc__ or "").strip().split("\n")[0]


def _command(name: str) -> Callable[[list[str]], int]:
    target = COMMANDS[name]
    if callable(target):
        return target
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _usage() -> str:
    return (
        "usage: zoo {" + ",".join((*TRAINER_SUBCOMMANDS, *COMMANDS)) + "} ...\n"
        "  fit|validate|test          LightningCLI: zoo fit --config configs/<method>/<variant>.yaml\n"
        + "".join(f"  {name:<26} {SUMMARIES.get(name, '')}\n" for name in COMMANDS)
        + "Run `zoo <subcommand> --help` for the options of each."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoo`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from zoo import __version__

        print(f"provenance-zoo {__version__}")
        return 0
    known = (*TRAINER_SUBCOMMANDS, *COMMANDS)
    if argv[0] not in known:
        close = difflib.get_close_matches(argv[0], known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"zoo: error: unknown subcommand {argv[0]!r}.{hint}\n{_usage()}", file=sys.stderr)
        return 2
    _quiet()
    try:
        if argv[0] in COMMANDS:
            return _command(argv[0])(argv[1:]) or 0
        from zoo.cli.lightning import ZooCLI

        ZooCLI(argv)
    except ZooError as err:
        print(f"zoo: error: {_message(err)}", file=sys.stderr)
        return 2
    return 0


def _message(err: ZooError) -> str:
    """The error's own line; a DataLoader worker wraps it in the worker's traceback, which is dropped."""
    text = str(err)
    if text.startswith("Caught ZooError"):
        marker = "ZooError: "
        return text[text.rindex(marker) + len(marker):].strip() if marker in text else text.splitlines()[-1]
    return text
