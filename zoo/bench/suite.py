"""Benchmark suites: a YAML file of tasks, methods, datamodules, seeds and grids, expanded into jobs.

A suite names methods by their registry names, so a method installed by a third party's plugin is
benchmarked like a built-in one. ``methods: all`` takes every registered method of the task; a method also
listed by name runs as listed (``methods: [all, {name: CGIDM, variant: mini}]``: CGIDM with its mini variant).

Example:
    .. code-block:: yaml

        name: fake_detection_cross
        budget_minutes: 15          # printed up front; the run says whether it kept to it
        notes:                      # why a row is at chance, said in the report (method name or row label)
          CNNDetector: <why its row may not beat chance, with the figures>
        seeds: [0]
        variant: tiny               # default variant of every method (tiny = the offline test variant)
        trainer: {accelerator: cpu} # Trainer arguments for every job (a method's tiny_trainer comes first)
        tasks:
          fake_detection:
            data: {class_path: MiniFakeDetection, init_args: {batch_size: 16}}
            methods:
              - all                                   # every registered fake-detection method
              - {name: CNNDetector, variant: tiny, init_args: {lr: 0.001}, label: cnn-lr1e-3}
              - {config: configs/cnn_detector/tiny.yaml}
            grid:                                     # a mapping, or a list of mappings (their union)
              data.init_args.generators: [[upsampler], [smoother]]
              data.init_args.test_generators: [[upsampler], [smoother]]
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo import registry
from zoo.errors import ZooError
from zoo.tasks import task_names

SUITE_KEYS = {"name", "description", "budget_minutes", "seeds", "variant", "trainer", "tasks", "limitations", "notes"}
TASK_KEYS = {"data", "methods", "grid", "trainer", "seeds"}
METHOD_KEYS = {"name", "variant", "init_args", "config", "trainer", "label"}
GRID_ROOTS = ("model", "data", "trainer")
# what every job's Trainer gets unless the suite says otherwise: the harness draws its own progress,
# and the export folder (not a .ckpt) is what is tested and published; a config's own ModelCheckpoint turns
# checkpointing on for its jobs (see _job)
TRAINER_DEFAULTS: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "devices": 1,
}


@dataclass
class Job:
    """One fit/test run: a method on a datamodule with one seed and one point of the grid."""

    id: str
    task: str
    method: str
    variant: str
    dataset: str
    seed: int
    trains: bool
    config: dict[str, Any]  # the LightningCLI config (model, data, trainer, seed_everything)
    grid: dict[str, Any] = field(default_factory=dict)  # the grid point, by dotted key
    label: str = ""  # the method row's name in the report (name-variant unless the suite gives one)
    error: str | None = None  # set when the job cannot even be built (e.g. its plugin fails to import)

    @property
    def setting(self) -> str:
        """The dataset and grid point, as the report groups rows."""
        return self.dataset + "".join(f" {_short(k)}={_text(v)}" for k, v in self.grid.items())

    def fingerprint(self) -> str:
        """A hash of what the job runs: a finished job is only reused when it ran the same thing."""
        spec = {"config": self.config, "method": self.method, "trains": self.trains}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Suite:
    """A parsed suite: its name, budget and expanded jobs."""

    name: str
    path: str
    jobs: list[Job]
    budget_minutes: float | None = None
    description: str = ""
    limitations: list[str] = field(default_factory=list)  # what the suite cannot show, said in the report
    notes: dict[str, str] = field(default_factory=dict)  # method name or row label -> why its row may sit at chance


# the folders a wheel ships inside the package (zoo/suites, zoo/configs) and a checkout keeps at its root
_CHECKOUT_NAMES = {"suites": "benchmarks", "configs": "configs"}


def shipped(folder: str) -> Path:
    """The installed ``zoo/suites`` or ``zoo/configs`` folder, or the source checkout's ``benchmarks``/``configs``."""
    package = Path(__file__).resolve().parents[1]
    installed = package / folder
    return installed if installed.is_dir() else package.parent / _CHECKOUT_NAMES[folder]


def find_suite(name: str | Path) -> Path:
    """A suite file by path, or a shipped suite by name (``mini``, ``fake_detection_cross``, ``benchmarks/mini.yaml``).

    Raises:
        ZooError: no such file, and no shipped suite of that name; the message lists the shipped ones.
    """
    path = Path(name)
    if path.is_file():
        return path
    candidate = shipped("suites") / (path.name if path.suffix else path.name + ".yaml")
    if candidate.is_file():
        return candidate
    names = ", ".join(sorted(p.stem for p in shipped("suites").glob("*.yaml")))
    raise ZooError(f"benchmark suite {name} not found (shipped suites: {names or 'none'})")


def load_suite(
    path: str | Path,
    methods: list[str] | None = None,
    tasks: list[str] | None = None,
    seeds: list[int] | None = None,
) -> Suite:
    """Read a suite YAML and expand it into jobs, keeping only the ``methods`` and ``tasks`` asked for.

    Raises:
        ZooError: the file is missing, is not YAML, or a key is unknown or has the wrong type; the
            message names the file and the key.
    """
    path = find_suite(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ZooError(f"{path} is not valid YAML: {err}") from err
    return parse_suite(raw, str(path), methods=methods, tasks=tasks, seeds=seeds)


def parse_suite(
    raw: Any,
    where: str,
    methods: list[str] | None = None,
    tasks: list[str] | None = None,
    seeds: list[int] | None = None,
) -> Suite:
    """Expand an already loaded suite mapping; ``where`` names it in errors."""
    raw = _mapping(raw, where, "the suite")
    _known_keys(raw, SUITE_KEYS, where, "")
    name = raw.get("name") or Path(where).stem
    # the name is the default report folder's (reports/<name>): '..' or '.x' would leave it or hide it
    if not isinstance(name, str) or not re.fullmatch(r"\w[\w.-]*", name):
        raise ZooError(f"{where}: key 'name' must be a plain name (a letter, digit or _, then letters, digits, "
                       f"_ . -), got {name!r}")
    budget = raw.get("budget_minutes")
    if budget is not None and not isinstance(budget, int | float):
        raise ZooError(f"{where}: key 'budget_minutes' must be a number, got {budget!r}")
    suite_seeds = _seeds(raw.get("seeds", [0]), where, "seeds")
    default_variant = raw.get("variant", "tiny")
    suite_trainer = _suite_values({"trainer": _mapping(raw.get("trainer", {}), where, "trainer")}, where, "")["trainer"]
    task_specs = _mapping(raw.get("tasks"), where, "tasks")
    if not task_specs:
        raise ZooError(f"{where}: key 'tasks' lists no task")
    known = task_names()
    if tasks:
        for task in tasks:
            if task not in known:
                raise ZooError(f"--tasks {task!r}: the tasks are {', '.join(known)}")
    wanted_methods = set(methods or [])
    jobs: list[Job] = []
    import_failures: dict[str, str] = {}
    matched: set[str] = set()
    for task, spec in task_specs.items():
        key = f"tasks.{task}"
        if task not in known:
            raise ZooError(f"{where}: key {key!r}: unknown task; the tasks are {', '.join(known)}")
        if tasks and task not in tasks:
            continue
        spec = _mapping(spec, where, key)
        _known_keys(spec, TASK_KEYS, where, key + ".")
        # without a task-level datamodule, each method brings its own in its config file
        data = _component(spec["data"], where, f"{key}.data", registered=True) if "data" in spec else None
        grid_points = _grid(spec.get("grid"), where, f"{key}.grid")
        task_seeds = seeds or _seeds(spec.get("seeds", suite_seeds), where, f"{key}.seeds")
        task_trainer = _mapping(spec.get("trainer", {}), where, f"{key}.trainer")
        trainer = {**suite_trainer, **_suite_values({"trainer": task_trainer}, where, f"{key}.")["trainer"]}
        entries = spec.get("methods", ["all"])
        if not isinstance(entries, list):
            entries = [entries]
        rows = []
        for i, entry in enumerate(entries):
            rows += _method_rows(entry, task, default_variant, where, f"{key}.methods[{i}]", import_failures)
        # a method listed by name as well as by 'all' runs as listed, once
        named = {row["name"] for row in rows if not row["from_all"]}
        rows = [row for row in rows if not (row["from_all"] and row["name"] in named)]
        for row in rows:
            if data is None and row["data"] is None:
                raise ZooError(f"{where}: key {key}.data is missing, and {row['label']} has no config file "
                               "with a data section")
        labels: dict[str, int] = {}
        for row in rows:
            labels[row["label"]] = labels.get(row["label"], 0) + 1
        for label, count in labels.items():
            if count > 1:
                raise ZooError(f"{where}: {key}.methods lists {label!r} {count} times; give each a distinct 'label'")
        for row in rows:
            if wanted_methods and row["name"] not in wanted_methods and row["label"] not in wanted_methods:
                continue
            matched.update({row["name"], row["label"]})
            for point in grid_points:
                for seed in task_seeds:
                    jobs.append(_job(task, row, data or row["data"], trainer, point, seed, where))
    if wanted_methods and not wanted_methods & matched:
        raise ZooError(f"--methods {', '.join(sorted(wanted_methods))}: no such method in {where}")
    for method, err in sorted(import_failures.items()):
        if not wanted_methods or method in wanted_methods:
            jobs.append(Job(id=_slug(f"import-{method}"), task="(unknown)", method=method, variant="", dataset="",
                            seed=0, trains=False, config={}, label=method, error=err))
    ids = [job.id for job in jobs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ZooError(f"{where}: two jobs would share the id {dup!r}; give the methods distinct labels")
    limitations = raw.get("limitations", [])
    if not isinstance(limitations, list) or not all(isinstance(x, str) for x in limitations):
        raise ZooError(f"{where}: key 'limitations' must be a list of sentences")
    notes = raw.get("notes") or {}
    if not isinstance(notes, dict):
        raise ZooError(f"{where}: key 'notes' must be a mapping of a method name or row label to a sentence")
    for key, text in notes.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise ZooError(f"{where}: key 'notes.{key}' must be a sentence (a string), got {text!r}")
    return Suite(name=name, path=where, jobs=jobs, budget_minutes=budget, description=raw.get("description", ""),
                 limitations=limitations, notes=notes)


# ------------------------------------------------------------------------------------------ helpers
def _method_rows(entry: Any, task: str, default_variant: str, where: str, key: str,
                 failures: dict[str, str]) -> list[dict[str, Any]]:
    """The method rows one ``methods`` entry stands for."""
    if entry == "all":
        loaded, failed = registry.methods.load_all()
        failures.update({name: str(err) for name, err in failed.items()})
        return [{**_row(cls, name, default_variant, {}, {}, None, where, key), "from_all": True}
                for name, cls in loaded.items() if cls.task == task]
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = _mapping(entry, where, key)
    _known_keys(entry, METHOD_KEYS, where, key + ".")
    init_args = _mapping(entry.get("init_args", {}), where, f"{key}.init_args")
    trainer = _mapping(entry.get("trainer", {}), where, f"{key}.trainer")
    _suite_values({"model": {"init_args": init_args}, "trainer": trainer}, where, f"{key}.")
    config_trainer: dict[str, Any] = {}
    config_data = None
    config_name = None
    name = entry.get("name")
    if "config" in entry:
        path, config = _read_config(entry["config"], where, f"{key}.config")
        model = _component(config.get("model"), str(path), "model")
        name = name or model["class_path"]
        init_args = {**model["init_args"], **init_args}
        config_trainer = _mapping(config.get("trainer", {}), str(path), "trainer")
        config_data = _component(config["data"], str(path), "data") if config.get("data") else None
        config_name = path.stem
    if not isinstance(name, str):
        raise ZooError(f"{where}: key {key!r} needs a method 'name' (a registered name) or a 'config' file")
    try:
        cls = registry.methods.load(name.rsplit(".", 1)[-1])
    except ZooError as err:
        if name.rsplit(".", 1)[-1] not in registry.methods.entries:
            raise ZooError(f"{where}: key {key}.name: {err}") from err
        failures[name] = str(err)
        return []
    if cls.task != task:
        raise ZooError(f"{where}: key {key}: {cls.__name__} is a {cls.task} method, listed under task {task}")
    variant = None if "config" in entry and "variant" not in entry else entry.get("variant", default_variant)
    row = _row(cls, cls.__name__, variant, init_args, {**config_trainer, **trainer}, entry.get("label"), where, key,
               config_name)
    row["data"] = config_data
    row["from_all"] = False
    return [row]


def _row(cls: type, name: str, variant: str | None, init_args: dict[str, Any], trainer: dict[str, Any],
         label: str | None, where: str, key: str, config_name: str | None = None) -> dict[str, Any]:
    if variant is not None and (not isinstance(variant, str) or variant not in cls.variants):
        raise ZooError(f"{where}: key {key}: {name} has no variant {variant!r} (variants: {', '.join(cls.variants)})")
    args = {**(cls.variants[variant] if variant else {}), **init_args}
    # a tiny variant trains with the budget its method declares for the mini suite
    base_trainer = dict(cls.tiny_trainer) if variant == "tiny" else {}
    # a config file without a variant is named by the file (configs/pdf_embedding/gaussian.yaml: gaussian)
    variant_name = variant or config_name or "default"
    return {"name": name, "cls": cls, "variant": variant_name, "init_args": args, "data": None,
            "trainer": {**base_trainer, **trainer}, "label": label or f"{name}-{variant_name}"}


def _job(task: str, row: dict[str, Any], data: dict[str, Any], trainer: dict[str, Any],
         point: dict[str, Any], seed: int, where: str) -> Job:
    cls = row["cls"]
    entry = registry.methods.entries.get(row["name"])
    init_args = copy.deepcopy(row["init_args"])
    if "seed" in inspect.signature(cls.__init__).parameters and "seed" not in init_args:
        # a method's own seed (its noise draws, random starts, augmentations) follows the job's, so that the
        # seeds of a suite are different runs of every method
        init_args["seed"] = seed
    config: dict[str, Any] = {
        "seed_everything": seed,
        "model": {"class_path": entry.class_path if entry else f"{cls.__module__}.{cls.__name__}",
                  "init_args": init_args},
        "data": copy.deepcopy(data),
        "trainer": {**TRAINER_DEFAULTS, **row["trainer"], **trainer},
    }
    if "enable_checkpointing" not in {**row["trainer"], **trainer} and _names_checkpoint(config["trainer"]):
        # the config's own ModelCheckpoint (monitored, beside its early stopping) is honoured: it checkpoints
        # into the job folder and the export is its best epoch, as `zoo fit` exports it
        config["trainer"]["enable_checkpointing"] = True
    for dotted, value in point.items():
        _set(config, dotted, copy.deepcopy(value), where)
    dataset = str(config["data"]["class_path"]).rsplit(".", 1)[-1]
    slug = "".join(f"-{_short(k)}={_text(v)}" for k, v in point.items())
    job_id = _slug(f"{task}--{row['label']}-{dataset}{slug}-s{seed}")
    return Job(id=job_id, task=task, method=row["name"], variant=row["variant"], dataset=dataset, seed=seed,
               trains=bool(cls.trains), config=config, grid=dict(point), label=row["label"])


def _names_checkpoint(trainer: dict[str, Any]) -> bool:
    """Whether the Trainer's ``callbacks`` name a ``ModelCheckpoint`` (by class path: nothing is imported)."""
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return any(isinstance(c, dict) and str(c.get("class_path", "")).rsplit(".", 1)[-1] == "ModelCheckpoint"
               for c in callbacks)


def _grid(raw: Any, where: str, key: str) -> list[dict[str, Any]]:
    """The grid points: the product of each mapping's value lists, and the union over a list of mappings."""
    if raw is None:
        return [{}]
    grids = raw if isinstance(raw, list) else [raw]
    points: list[dict[str, Any]] = []
    for i, grid in enumerate(grids):
        gkey = f"{key}[{i}]" if isinstance(raw, list) else key
        grid = _mapping(grid, where, gkey)
        for dotted, values in grid.items():
            if not isinstance(dotted, str) or dotted.split(".")[0] not in GRID_ROOTS:
                raise ZooError(f"{where}: key {gkey}.{dotted}: a grid key is a dotted path starting with "
                               f"{', '.join(GRID_ROOTS)} (e.g. data.init_args.generators)")
            if not isinstance(values, list) or not values:
                raise ZooError(f"{where}: key {gkey}.{dotted} must be a non-empty list of values")
            for value in values:
                scratch: dict[str, Any] = {}
                _set(scratch, dotted, value, where)
                _suite_values(scratch, where, f"{gkey}.")
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, combo, strict=True))
            if point not in points:
                points.append(point)
    return points or [{}]


def _set(config: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ZooError(f"{where}: grid key {dotted!r} goes through {part!r}, which is not a mapping")
    node[parts[-1]] = value


def _component(raw: Any, where: str, key: str, registered: bool = False) -> dict[str, Any]:
    """A ``class_path`` + ``init_args`` mapping (a bare string is a class_path).

    ``registered``: the class must be a registered datamodule named by its registry name (what a suite
    itself may name); a method's config file may name classes, as a ``--config`` file may.
    """
    if isinstance(raw, str):
        raw = {"class_path": raw}
    raw = _mapping(raw, where, key)
    if not isinstance(raw.get("class_path"), str):
        raise ZooError(f"{where}: key {key}.class_path must name a registered class")
    extra = set(raw) - {"class_path", "init_args"}
    if extra:
        raise ZooError(f"{where}: key {key}.{sorted(extra)[0]} is unknown (expected class_path, init_args)")
    name = raw["class_path"]
    if registered:
        _suite_values({"data": raw}, where, key.removesuffix("data"))
    if key.endswith("data") and name.isidentifier():
        try:
            registry.datamodules.get(name)  # a typo is a suite error, with did-you-mean
        except ZooError as err:
            raise ZooError(f"{where}: key {key}.class_path: {err}") from err
    return {"class_path": name, "init_args": dict(_mapping(raw.get("init_args", {}), where, f"{key}.init_args"))}


# Trainer arguments that take classes (jsonargparse imports what they name): a method's config file may set
# them, a suite may not
CLASS_TRAINER_ARGS = ("callbacks", "plugins", "profiler", "logger")


def _suite_values(tree: dict[str, Any], where: str, key: str, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``tree`` (suite values placed at their config path), refused where it names a class to import.

    A suite names registered methods and datamodules only: the only ``class_path`` it may give is the
    datamodule's, by registry name; methods are listed under ``methods``, and Trainer arguments that take
    classes belong in a method's config file. Nothing a suite names is imported.

    Raises:
        ZooError: a ``class_path`` elsewhere or not registered, or a class-taking Trainer argument.
    """
    for name, value in tree.items():
        here = (*path, str(name))
        dotted = key + ".".join(here)
        if here[:1] == ("trainer",) and len(here) == 2 and name in CLASS_TRAINER_ARGS and not (
                name == "logger" and isinstance(value, bool)):
            raise ZooError(f"{where}: key {dotted}: a suite cannot set Trainer {name} (they name classes); set it "
                           "in a method's config file")
        if name == "class_path":
            if here != ("data", "class_path"):
                raise ZooError(f"{where}: key {dotted}: a suite names registered methods under 'methods' and a "
                               f"datamodule under 'data', never a class to import ({value!r})")
            if not isinstance(value, str) or value not in registry.datamodules.entries:
                try:
                    registry.datamodules.get(str(value))
                except ZooError as err:
                    raise ZooError(f"{where}: key {dotted}: {err} (a suite names a datamodule by its registry "
                                   "name)") from err
        if isinstance(value, dict):
            _suite_values(value, where, key, here)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _suite_values(item, where, key, here)
    return tree


def _read_config(value: Any, where: str, key: str) -> tuple[Path, dict[str, Any]]:
    """A method's LightningCLI config file: relative to the working folder, the suite's project, or shipped."""
    path = Path(str(value))
    if not path.is_file():
        # benchmarks/<suite>.yaml names configs/... from the project root (zoo/suites -> zoo/configs installed)
        path = Path(where).resolve().parent.parent / str(value)
    if not path.is_file() and Path(str(value)).parts[:1] == ("configs",):
        path = shipped("configs").joinpath(*Path(str(value)).parts[1:])
    if not path.is_file():
        raise ZooError(f"{where}: key {key}: config file {value} not found")
    try:
        return path, _mapping(yaml.safe_load(path.read_text()), str(path), "the config")
    except yaml.YAMLError as err:
        raise ZooError(f"{where}: key {key}: {path} is not valid YAML: {err}") from err


def _mapping(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ZooError(f"{where}: key {key!r} must be a mapping, got {type(value).__name__}")
    return value


def _known_keys(raw: dict[str, Any], known: set[str], where: str, prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise ZooError(f"{where}: unknown key '{prefix}{key}' (expected one of {', '.join(sorted(known))})")


def _seeds(value: Any, where: str, key: str) -> list[int]:
    value = [value] if isinstance(value, int) else value
    if not isinstance(value, list) or not value or not all(isinstance(s, int) for s in value):
        raise ZooError(f"{where}: key {key!r} must be a non-empty list of integers, got {value!r}")
    return value


def _short(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1]


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "+".join(_text(v) for v in value)
    return "none" if value is None else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", text)
