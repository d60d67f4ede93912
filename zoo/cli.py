"""The ``zoo`` command.

``zoo fit|validate|test|predict`` are LightningCLI's subcommands, with ``--model`` and ``--data``
resolved by short name through the registry (only the plugins a command names are imported).
``--ckpt_path`` also takes a zoo checkpoint folder or ``hf-hub:org/name``; the method is then built from
the checkpoint's ``config.json`` when no ``--model`` is given.

The other subcommands (``list``, ``convert`` and those added by the Hub and the benchmark) are plain
commands of their own, dispatched before LightningCLI sees the arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from zoo import registry
from zoo.data.base import ZooDataModule
from zoo.errors import ZooError
from zoo.module import ZooModule, load_state

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class ExportOnFitEnd(Callback):
    """Writes the trained method as ``<log dir>/zoo`` (config.json + model.safetensors) when fit ends."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # only a run with a logger has a log dir of its own (without one, log_dir is the working directory)
        if trainer.is_global_zero and isinstance(pl_module, ZooModule) and trainer.logger is not None:
            pl_module.save_pretrained(Path(trainer.log_dir) / "zoo")


class ZooCLI(LightningCLI):
    """LightningCLI over every registered method and datamodule."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        args = list(sys.argv[1:] if args is None else args)
        self._zoo_ckpt = _zoo_checkpoint(args)
        args = prepare_args(args, self._zoo_ckpt)
        kwargs.setdefault("trainer_defaults", {"callbacks": [ExportOnFitEnd()]})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            ZooModule, ZooDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args, run=run, **kwargs
        )

    def instantiate_classes(self) -> None:
        from zoo import backbones

        # weights come from the zoo checkpoint: do not download pretrained encoders first
        guard = backbones.no_pretrained_download() if self._zoo_ckpt else contextlib.nullcontext()
        with guard:
            super().instantiate_classes()

    def _load_zoo_checkpoint(self) -> None:
        if self._zoo_ckpt is None:
            return
        from safetensors.torch import load_file

        from zoo.module import WEIGHTS_NAME

        weights = self._zoo_ckpt / WEIGHTS_NAME
        load_state(self.model, load_file(str(weights)), str(weights))
        self.config_init[self.subcommand]["ckpt_path"] = None

    def before_fit(self) -> None:
        self._load_zoo_checkpoint()

    def before_validate(self) -> None:
        self._load_zoo_checkpoint()

    def before_test(self) -> None:
        self._load_zoo_checkpoint()

    def before_predict(self) -> None:
        self._load_zoo_checkpoint()


def _zoo_checkpoint(args: list[str]) -> Path | None:
    """The local folder of ``ckpt_path`` (flag or config) when it is a zoo checkpoint.

    A zoo checkpoint is a folder, ``hf-hub:org/name`` or a short name of ``zoo list --pretrained``; a
    Lightning ``.ckpt`` file is left to Lightning.
    """
    value = _option(args, "--ckpt_path")
    for config in _configs(args) if value is None else []:
        loaded = yaml.safe_load(Path(config).read_text()) if Path(config).is_file() else None
        if isinstance(loaded, dict) and loaded.get("ckpt_path"):
            value = str(loaded["ckpt_path"])
    if value is None or Path(value).is_file():
        return None
    from zoo import hub

    if value.startswith(hub.HUB_PREFIX) or Path(value).is_dir() or value in hub.known_checkpoints():
        return hub.resolve(value)
    return None


def _option(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def prepare_args(args: list[str], zoo_ckpt: Path | None = None) -> list[str]:
    """Import the plugins ``args`` name, and describe the model of a zoo checkpoint when none is named."""
    names: list[tuple[registry.Registry, str]] = []
    for flag, reg in (("--model", registry.methods), ("--data", registry.datamodules)):
        value = _option(args, flag)
        if value is not None:
            names.append((reg, value))
    for i, arg in enumerate(args):
        config = args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else None
        config = arg.split("=", 1)[1] if arg.startswith("--config=") else config
        if config:
            names += _names_in_config(Path(config))
    for reg, name in names:
        if name.isidentifier():  # a short name; dotted paths, files and inline YAML are jsonargparse's
            reg.load(name)
    if zoo_ckpt is not None and _option(args, "--model") is None and not any(
        _names_in_config(Path(c)) for c in _configs(args)
    ):
        from zoo.module import CONFIG_NAME, read_config

        config = read_config(zoo_ckpt / CONFIG_NAME)
        cls = registry.methods.load(config["name"])
        spec = {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": config["init_args"]}
        args = [*args[:1], "--model", json.dumps(spec), *args[1:]]
    return args


def _configs(args: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            out.append(args[i + 1])
        elif arg.startswith("--config="):
            out.append(arg.split("=", 1)[1])
    return out


def _names_in_config(path: Path) -> list[tuple[registry.Registry, str]]:
    if not path.is_file():
        return []
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ZooError(f"{path} is not valid YAML: {err}") from err
    found = []
    for key, reg in (("model", registry.methods), ("data", registry.datamodules)):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict):
            value = value.get("class_path")
        if isinstance(value, str):
            found.append((reg, value))
    return found


# ------------------------------------------------------------------------------------------ zoo list
def cmd_list(argv: list[str]) -> int:
    """Print the registered methods and datamodules."""
    parser = argparse.ArgumentParser(prog="zoo list", description="List the registered methods and datamodules.")
    parser.add_argument("--pretrained", action="store_true", help="list the known pretrained checkpoints instead")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    # piped output keeps whole rows, so that it can be searched
    console = Console(width=None if sys.stdout.isatty() else 200)
    if args.pretrained:
        from zoo import hub

        return hub.print_pretrained(console)
    methods, failed = registry.methods.load_all()
    table = Table(title="methods")
    for column in ("name", "task", "paper", "variants", "plugin"):
        table.add_column(column, no_wrap=column != "paper" and column != "description")
    for name, cls in methods.items():
        title = getattr(cls, "display_name", "")
        table.add_row(name + (f"\n({title})" if title else ""), cls.task, cls.paper, ", ".join(cls.variants),
                      registry.methods.entries[name].dist)
    for name, err in failed.items():
        table.add_row(name, "[red]failed", f"[red]{err}", "", registry.methods.entries[name].dist)
    console.print(table)
    datamodules, dm_failed = registry.datamodules.load_all()
    table = Table(title="datamodules")
    for column in ("name", "task", "description", "plugin"):
        table.add_column(column, no_wrap=column != "paper" and column != "description")
    for name, cls in datamodules.items():
        table.add_row(name, cls.task, cls.description, registry.datamodules.entries[name].dist)
    for name, err in dm_failed.items():
        table.add_row(name, "[red]failed", f"[red]{err}", registry.datamodules.entries[name].dist)
    console.print(table)
    return 0


def cmd_convert(argv: list[str]) -> int:
    """Convert a Lightning ``.ckpt``, or a paper's released checkpoint, into a zoo checkpoint folder."""
    from zoo.module import convert_checkpoint

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
    "publish": "zoo.hub:cmd_publish",
    "download": "zoo.hub:cmd_download",
    "benchmark": "zoo.bench:cmd_benchmark",
    "embed": "zoo.gallery:cmd_embed",
    "index": "zoo.gallery:cmd_index",
    "match": "zoo.gallery:cmd_match",
    "replication-ratio": "zoo.gallery:cmd_match",
}
SUMMARIES = {
    "list": "Print the registered methods and datamodules (--pretrained: the known checkpoints).",
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
    try:
        if argv[0] in COMMANDS:
            return _command(argv[0])(argv[1:]) or 0
        ZooCLI(argv)
    except ZooError as err:
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
