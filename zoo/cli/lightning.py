"""``zoo fit|validate|test``: LightningCLI over every registered method and datamodule.

``--model`` and ``--data`` take the registry's short names, ``--variant`` a method's named variant: its
constructor arguments (and, for ``tiny``, its Trainer budget) become the parser's defaults, under whatever
the command line and the config files give. ``--ckpt_path`` also takes a zoo checkpoint folder (or a run
folder: its newest export), ``hf-hub:org/name`` or a short name of ``zoo list --pretrained``: without
``--model``, the method is then built from the checkpoint's ``config.json`` as data
(``zoo.checkpoint.load_folder``), never parsed as a config that could name classes. Lightning ``.ckpt`` files
are read with ``weights_only=True``.

A method with nothing to train (``trains = False``) is calibrated on the validation split by
``zoo fit``; ``fit`` and ``validate`` both export the method to ``<log dir>/zoo``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# --print_config's switch and the lenient check that jsonargparse itself uses for it (jsonargparse is pinned)
from jsonargparse._actions import _ActionPrintConfig
from jsonargparse._common import parser_context
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningArgumentParser

from zoo import registry
from zoo.checkpoint import (
    load_folder,
    load_weights,
    newest_export,
    read_weights_only,
)
from zoo.data.base import ZooDataModule
from zoo.errors import ZooError
from zoo.module import ZooModule
from zoo.training import ExportOnFitEnd, RunConfig, parse_error

__all__ = ["ExportOnFitEnd", "ZooCLI", "parse_error"]


class ZooCLI(RunConfig):
    """``zoo fit|validate|test``: :class:`zoo.training.RunConfig` with ``--variant`` and zoo checkpoints."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        self.checkpoint: Path | None = None  # the zoo checkpoint folder that --ckpt_path names
        super().__init__(args, run, **kwargs)
        if self.subcommand:
            exported = [cb.path for cb in self.trainer.callbacks if isinstance(cb, ExportOnFitEnd) and cb.path]
            if exported:  # the last line: the folder to give zoo predict/test/publish
                print(f"zoo {self.subcommand}: exported {exported[-1]}", file=sys.stderr)

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # LightningCLI's, except that --model may be left out when --ckpt_path names a zoo checkpoint, which holds it
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(ZooModule, "model", subclass_mode=True, required=False)
        parser.add_lightning_class_args(ZooDataModule, "data", subclass_mode=True)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--variant", type=str | None, default=None,
                            help="A named variant of --model (zoo list shows them): its constructor arguments, and "
                                 "for tiny its Trainer budget, under the values you give.")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # A first, lenient parse finds the variant; its values become the parser's defaults, and the second
        # parse puts the command line and config files over them (and checks them, and does --print_config).
        with _ActionPrintConfig.skip_print_config(), parser_context(lenient_check=True):
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is not None and self.config[subcommand].get("variant") is not None:
            first = self.config[subcommand]
            self._subcommand_parsers[subcommand].set_defaults(_variant_defaults(first.get("model"), first.variant))
        super().parse_arguments(parser, args)
        if subcommand is None:
            return
        config = self.config[subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt and Path(ckpt).is_file():
            read_weights_only(ckpt)  # a file that holds code fails here in one line, not deep in Lightning
        elif ckpt:
            self.checkpoint = zoo_checkpoint(str(ckpt))
        if config.get("model") is None and self.checkpoint is None:
            raise ZooError("argument --model: a registered method is required (e.g. --model PDFEmbedding; zoo list "
                           "shows them), unless --ckpt_path names a zoo checkpoint")

    def instantiate_classes(self) -> None:
        if self.checkpoint is None:
            return super().instantiate_classes()
        from zoo import backbones

        # weights come from the zoo checkpoint: do not download pretrained encoders first
        with backbones.no_pretrained_download():
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")
            if self.model is None:  # the checkpoint is data: the registry builds its method, weights loaded
                self.model = load_folder(self.checkpoint)
            else:  # --model named the method: only the weights come from the checkpoint
                load_weights(self.model, self.checkpoint)
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()
        self.config_init[self.subcommand]["ckpt_path"] = None  # loaded already: Lightning must not read the folder

    def after_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, {}) if self.subcommand else self.config
        if config.get("optimizer") or config.get("lr_scheduler"):
            print(f"zoo: --optimizer/--lr_scheduler replace {type(self.model).__name__}'s own recipe "
                  "(configure_optimizers) for this run", file=sys.stderr)

    def fit(self, model: LightningModule, **kwargs: Any) -> None:
        """``trainer.fit``; a method with nothing to train is calibrated on validation and exported instead."""
        if isinstance(model, ZooModule) and not model.trains:
            print(f"zoo: {type(model).__name__} has nothing to train: calibrating it on the validation split",
                  file=sys.stderr)
            kwargs.pop("train_dataloaders", None)
            self.trainer.validate(model, datamodule=kwargs.get("datamodule"), ckpt_path=kwargs.get("ckpt_path"),
                                  weights_only=kwargs.get("weights_only"))  # ExportOnFitEnd exports it
            return
        self.trainer.fit(model, **kwargs)


def _variant_defaults(model: Any, variant: str) -> dict[str, Any]:
    """The parser defaults of ``variant`` of the method that ``model`` (the parsed ``--model``) names."""
    class_path = getattr(model, "class_path", None)
    name = class_path.rsplit(".", 1)[-1] if class_path else None
    if name is None or name not in registry.methods.entries:
        raise ZooError("--variant needs --model <registry name>, e.g. --model PDFEmbedding --variant tiny")
    cls = registry.methods.load(name)
    if variant not in cls.variants:
        raise ZooError(f"{name} has no variant {variant!r}; its variants are {', '.join(cls.variants) or 'none'}")
    defaults: dict[str, Any] = {"model": {"class_path": class_path, "init_args": cls.variants[variant]}}
    if variant == "tiny":  # the tiny variant's own budget (e.g. a few epochs)
        defaults.update({f"trainer.{k}": v for k, v in cls.tiny_trainer.items()})
    return defaults


def zoo_checkpoint(value: str) -> Path | None:
    """The local folder of a ``ckpt_path`` that is a zoo checkpoint, or None.

    A zoo checkpoint is a folder (a run folder gives its newest export), ``hf-hub:org/name``, a short name of
    ``zoo list --pretrained`` or a Hub repo id; a Lightning ``.ckpt`` file is left to Lightning.
    """
    if Path(value).is_dir():
        return newest_export(Path(value))
    from zoo import hub

    if value.startswith(hub.HUB_PREFIX) or value in hub.known_checkpoints() or hub.looks_like_repo_id(value):
        return hub.resolve(value)
    return None
