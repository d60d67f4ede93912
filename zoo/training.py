"""What ``zoo fit|validate|test`` and a benchmark job share: a run's configuration and the export of its method.

:class:`RunConfig` is LightningCLI over every registered method and datamodule, used as a library: it parses a
run's YAML (``model``, ``data``, ``trainer``, ``seed_everything``), seeds, and instantiates the method, the
datamodule and the Trainer, exactly as ``zoo fit`` does. The command line (``zoo.cli.lightning.ZooCLI``) adds
its subcommands to it; a benchmark job builds one from the ``job.yaml`` it writes, with ``run=False``.

Every registered plugin is imported first (a few tenths of a second after Lightning), so that the parser knows
each method and datamodule by its short name (``--model PDFEmbedding``) the way jsonargparse resolves any
subclass; a plugin that fails to import is left out, and naming it gives its import error.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError  # argparse's, re-exported: no module below zoo.cli imports argparse
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.trainer.states import TrainerFn

from zoo import registry
from zoo.checkpoint import EXPORT_DIR, load_checkpoint_state, read_weights_only
from zoo.data.base import ZooDataModule
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


class RunConfig(LightningCLI):
    """LightningCLI over every registered method and datamodule, whose refusals are one-line ``ZooError``s.

    Example:
        >>> run = RunConfig(["--config", "job.yaml"], run=False)  # doctest: +SKIP
        >>> run.trainer.fit(run.model, datamodule=run.datamodule)  # doctest: +SKIP
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        self.import_errors = import_plugins()
        self._args = list(sys.argv[1:] if args is None else args)  # for naming the config file that fails to parse
        kwargs.setdefault("trainer_defaults", {"callbacks": [ExportOnFitEnd()]})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # a refused argument or config value raises, and becomes one line naming it, not usage and a report
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False})
        kwargs.setdefault("model_class", ZooModule)
        kwargs.setdefault("datamodule_class", ZooDataModule)
        try:
            super().__init__(subclass_mode_model=True, subclass_mode_data=True, args=args, run=run, **kwargs)
        except ArgumentError as err:
            raise ZooError(self.refusal(str(err))) from None

    def refusal(self, message: str) -> str:
        """The one line for a refused command line or config: an unknown short name gets the registry's hint."""
        if message.startswith("Problems parsing config"):
            for path in _config_files(self._args):
                problem = _yaml_problem(path)
                if problem:
                    return problem
        given = re.findall(r"^\s*Given value: ([A-Za-z_]\w*)\s*$", message, re.MULTILINE)
        for reg, key in ((registry.methods, "model"), (registry.datamodules, "data")):
            if given and message.lstrip().startswith(f'Parser key "{key}"'):
                if given[-1] in self.import_errors:  # a plugin that failed to import: its own error
                    return str(self.import_errors[given[-1]])
                if given[-1] not in reg.entries:
                    try:
                        reg.get(given[-1])
                    except ZooError as err:  # unknown name: the registry's "did you mean"
                        return str(err)
        return parse_error(message)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # a Lightning .ckpt is read without unpickling code, whatever the installed torch's default
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(weights_only=True)
        return parser

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # jsonargparse wraps a constructor's refusal of a union-typed value (--data)
            cause = _zoo_error_in(err)
            if cause is None:
                raise
            raise cause from None


def import_plugins() -> dict[str, ZooError]:
    """Import every registered method and datamodule; the import error of each that fails, by name."""
    failed: dict[str, ZooError] = {}
    for reg in (registry.methods, registry.datamodules):
        failed.update(reg.load_all()[1])
    return failed


def _config_files(args: list[str]) -> list[Path]:
    """The files that ``--config`` / ``-c`` name in ``args``."""
    named = [b for a, b in zip(args, args[1:], strict=False) if a in ("--config", "-c")]
    return [Path(p) for p in [*named, *(a.split("=", 1)[1] for a in args if a.startswith("--config="))]]


def _yaml_problem(path: Path) -> str | None:
    """Where and why ``path`` is not valid YAML, in one line; None when it parses (or is not a file)."""
    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        return f"{path}{where}: not valid YAML ({problem})"
    except (OSError, UnicodeDecodeError):
        return None
    return None


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


__all__ = ["ExportOnFitEnd", "RunConfig", "import_plugins", "parse_error"]
