"""``zoo fit|validate|test``: LightningCLI over every registered method and datamodule.

``--model`` and ``--data`` take the registry's short names (only the plugins a command names are
imported), ``--variant`` a method's named variant. ``--ckpt_path`` also takes a zoo checkpoint folder,
``hf-hub:org/name`` or a short name of ``zoo list --pretrained``: without ``--model``, the method is then
built from the checkpoint's ``config.json`` as data (``zoo.module.load_folder``), never parsed as a
config that could name classes. Lightning ``.ckpt`` files are read with ``weights_only=True``.

A method with nothing to train (``trains = False``) is calibrated on the validation split by
``zoo fit``; ``fit`` and ``validate`` both export the method to ``<log dir>/zoo``.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.trainer.states import TrainerFn

from zoo import registry
from zoo.data.base import ZooDataModule
from zoo.checkpoint import (
    EXPORT_DIR,
    WEIGHTS_NAME,
    load_checkpoint_state,
    load_folder,
    newest_export,
    read_weights,
    read_weights_only,
)
from zoo.errors import ZooError
from zoo.module import ZooModule


class ExportOnFitEnd(Callback):
    """Writes the method as ``<log dir>/zoo`` (config.json + model.safetensors) when fit or validate ends.

    When a checkpoint callback monitored a metric (early stopping), the export holds its best
    checkpoint, not the last epoch. ``path`` is the folder written (``zoo fit`` prints it last).
    """

    path: Path | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, ZooModule):
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if best and getattr(trainer.checkpoint_callback, "monitor", None) and Path(best).is_file():
            load_checkpoint_state(pl_module, read_weights_only(best)["state_dict"], best)
        self._export(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and isinstance(pl_module, ZooModule):
            self._export(trainer, pl_module)

    def _export(self, trainer: Trainer, pl_module: ZooModule) -> None:
        # only a run with a logger has a log dir of its own (without one, log_dir is the working directory)
        if trainer.is_global_zero and trainer.logger is not None:
            self.path = pl_module.save_pretrained(Path(trainer.log_dir) / EXPORT_DIR)


_from_checkpoint: list[ZooModule] = []


def checkpoint_model() -> ZooModule:
    """The method built from the zoo checkpoint of the running command (LightningCLI's model factory)."""
    return _from_checkpoint[-1]


class ZooCLI(LightningCLI):
    """LightningCLI over every registered method and datamodule."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        args = list(sys.argv[1:] if args is None else args)
        self._zoo_ckpt = _zoo_checkpoint(args)
        ckpt = option(args, "--ckpt_path")
        if self._zoo_ckpt is None and ckpt and Path(ckpt).is_file():
            read_weights_only(ckpt)  # a file that holds code fails here in one line, not deep in Lightning
        args = prepare_args(args)
        model_class: Any = ZooModule
        self._built_from_ckpt = self._zoo_ckpt is not None and not _names_model(args)
        if self._built_from_ckpt:
            # the checkpoint is data: its method is built by the registry, weights loaded, before parsing
            _from_checkpoint[:] = [load_folder(self._zoo_ckpt)]
            model_class = checkpoint_model

        kwargs.setdefault("trainer_defaults", {"callbacks": [ExportOnFitEnd()]})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # a refused argument or config value raises, and becomes one line naming it, not usage and a report
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False})
        try:
            super().__init__(
                model_class, ZooDataModule, subclass_mode_model=not self._built_from_ckpt, subclass_mode_data=True,
                args=args, run=run, **kwargs,
            )
        except ArgumentError as err:
            raise ZooError(parse_error(str(err))) from None
        if self.subcommand:
            exported = [cb.path for cb in self.trainer.callbacks if isinstance(cb, ExportOnFitEnd) and cb.path]
            if exported:  # the last line: the folder to give zoo predict/test/publish
                print(f"zoo {self.subcommand}: exported {exported[-1]}", file=sys.stderr)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # a Lightning .ckpt is read without unpickling code, whatever the installed torch's default
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(weights_only=True)
        return parser

    def instantiate_classes(self) -> None:
        from zoo import backbones

        # weights come from the zoo checkpoint: do not download pretrained encoders first
        guard = backbones.no_pretrained_download() if self._zoo_ckpt else contextlib.nullcontext()
        try:
            with guard:
                super().instantiate_classes()
        except ValueError as err:  # jsonargparse wraps a constructor's refusal of a union-typed value (--data)
            cause = _zoo_error_in(err)
            if cause is None:
                raise
            raise cause from None
        if "optimizer" in self._given or "lr_scheduler" in self._given:
            print(f"zoo: --optimizer/--lr_scheduler replace {type(self.model).__name__}'s own recipe "
                  "(configure_optimizers) for this run", file=sys.stderr)

    @property
    def _given(self) -> set[str]:
        config = self.config.get(self.subcommand, {}) if self.subcommand else self.config
        return {k for k in ("optimizer", "lr_scheduler") if config.get(k)}

    def _load_zoo_checkpoint(self) -> None:
        if self._zoo_ckpt is None:
            return
        if not self._built_from_ckpt:  # --model named the method: only the weights come from the checkpoint
            weights = self._zoo_ckpt / WEIGHTS_NAME
            load_checkpoint_state(self.model, read_weights(weights), str(weights))
        self.config_init[self.subcommand]["ckpt_path"] = None

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

    def before_fit(self) -> None:
        self._load_zoo_checkpoint()

    def before_validate(self) -> None:
        self._load_zoo_checkpoint()

    def before_test(self) -> None:
        self._load_zoo_checkpoint()


def _zoo_error_in(err: BaseException) -> ZooError | None:
    """The ZooError among the causes of ``err``, or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, ZooError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _zoo_checkpoint(args: list[str]) -> Path | None:
    """The local folder of ``ckpt_path`` (flag or config) when it is a zoo checkpoint.

    A zoo checkpoint is a folder, ``hf-hub:org/name`` or a short name of ``zoo list --pretrained``; a
    Lightning ``.ckpt`` file is left to Lightning.
    """
    value = option(args, "--ckpt_path")
    for config in _configs(args) if value is None else []:
        loaded = _read_yaml(Path(config)) if Path(config).is_file() else None
        if isinstance(loaded, dict) and loaded.get("ckpt_path"):
            value = str(loaded["ckpt_path"])
    if value is None or Path(value).is_file():
        return None
    if Path(value).is_dir():  # a checkpoint folder, or a run folder: its newest export
        return newest_export(Path(value))
    from zoo import hub

    if (value.startswith(hub.HUB_PREFIX) or Path(value).is_dir() or value in hub.known_checkpoints()
            or hub.looks_like_repo_id(value)):
        return hub.resolve(value)
    return None


def parse_error(message: str) -> str:
    """jsonargparse's report of a refused value, as one line that names the argument.

    The report nests a ``Parser key "..."`` per level (``data``, then ``batch_size``), names the class it
    tried, lists what each type of a union expected, and shows the value given; the line keeps those.
    """
    keys = re.findall(r'Parser key "([^"]+)":?(.*)', message)
    if not keys:
        return message.strip().splitlines()[0] if message.strip() else "the command line was refused"
    argument = ".".join(key for key, _ in keys)
    nested = re.search(r"NestedArg\(key='([^']*)', val='(.*)'\)", message)  # --data.batch_size abc
    if nested and not argument.endswith("." + nested.group(1)):
        argument += "." + nested.group(1)
    value = nested.group(2) if nested else next(iter(re.findall(r"(?:Got value|Given value): (.*)", message)), "")
    boilerplate = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given",
                   "Expected a <class", "Got value")
    lines = [line.strip() for line in message.splitlines()]
    found = [i for i, line in enumerate(lines) if line and not line.lstrip("- ").startswith(boilerplate)]
    reason = keys[-1][1].strip() or (lines[found[0]].lstrip("- ") if found else "")
    detail = lines[found[0] + 1] if found and found[0] + 1 < len(lines) else ""
    if not keys[-1][1].strip() and detail.startswith("- ") and found[1:2] == [found[0] + 1]:
        reason += f" ({detail.lstrip('- ')})"  # e.g. why a config file could not be loaded
    if not reason:
        expected = [t for t in dict.fromkeys(re.findall(r"Expected a <class '([\w.]+)'>", message)) if t != "NoneType"]
        reason = f"expected {' or '.join(expected) or 'another value'}"
        if value and not value.startswith(("{", "[")):
            reason += f", got {value!r}"
    tried = re.search(r"Problem with given class_path '([\w.]+)'", message)
    if tried:
        reason = f"{tried.group(1).rsplit('.', 1)[-1]}: {reason}"
    return f"argument --{argument}: {reason}"


def option(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag v`` or ``--flag=v``), or None."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _without(args: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == flag and i + 1 < len(args):
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _names_model(args: list[str]) -> bool:
    return option(args, "--model") is not None or any(
        reg is registry.methods for c in _configs(args) for reg, _ in _names_in_config(Path(c))
    )


def prepare_args(args: list[str]) -> list[str]:
    """Import the plugins ``args`` name; expand ``--variant`` and short names of ``--model.help``."""
    names: list[tuple[registry.Registry, str]] = []
    for flag, reg in (("--model", registry.methods), ("--data", registry.datamodules)):
        value = option(args, flag)
        if value is not None:
            names.append((reg, value))
    for config in _configs(args):
        names += _names_in_config(Path(config))
    for reg, name in names:
        if name.isidentifier():  # a short name; dotted paths, files and inline YAML are jsonargparse's
            reg.load(name)
    for flag, reg in (("--model.help", registry.methods), ("--data.help", registry.datamodules)):
        value = option(args, flag)
        if value is not None and value.isidentifier():
            entry = reg.get(value)
            reg.load(value)
            args = [entry.class_path if (a == value and i and args[i - 1] == flag) else a for i, a in enumerate(args)]
    if "--help" in args or "-h" in args:
        registry.methods.load_all()  # so that --help lists every method as a known subclass
    variant = option(args, "--variant")
    if variant is not None:
        args = _without(args, "--variant")
        model = option(args, "--model")
        if model is None or not model.isidentifier():
            raise ZooError("--variant needs --model <registry name>, e.g. --model PDFEmbedding --variant tiny")
        cls = registry.methods.load(model)
        if variant not in cls.variants:
            raise ZooError(f"{model} has no variant {variant!r}; its variants are {', '.join(cls.variants) or 'none'}")
        spec = {"class_path": registry.methods.get(model).class_path, "init_args": cls.variants[variant]}
        args = [json.dumps(spec) if (a == model and i and args[i - 1] == "--model") else a for i, a in enumerate(args)]
        if variant == "tiny":  # the tiny variant's own budget (e.g. a few epochs), before the user's flags
            defaults = [f"--trainer.{k}={json.dumps(v)}" for k, v in cls.tiny_trainer.items()]
            args = [*args[:1], *defaults, *args[1:]]
    return args


def _configs(args: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            out.append(args[i + 1])
        elif arg.startswith("--config="):
            out.append(arg.split("=", 1)[1])
    return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ZooError(f"{path}{where}: not valid YAML ({problem})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: cannot be read ({err})") from err


def _names_in_config(path: Path) -> list[tuple[registry.Registry, str]]:
    if not path.is_file():
        return []
    config = _read_yaml(path) or {}
    found = []
    for key, reg in (("model", registry.methods), ("data", registry.datamodules)):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict):
            value = value.get("class_path")
        if isinstance(value, str):
            found.append((reg, value))
    return found
