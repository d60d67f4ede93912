"""Discovery of plugins: their methods, datamodules, tasks and released checkpoints.

A plugin is one package and one entry-point line in the group ``zoo.plugins`` (``name = "package"``). The
package ships a manifest, ``zoo_plugin.json`` beside its ``__init__.py``, that declares what it adds::

    {"zoo.methods": {"MyDetector": {"class": "my_package.model:MyDetector"}},
     "zoo.datamodules": {...}, "zoo.tasks": {"my_task": {"class": "my_package.task:TASK"}},
     "pretrained": {"my_detector.base": {"method": "MyDetector", "repo_id": "org/name", ...}}}

The built-in plugins under ``plugins/`` register exactly so, and the zoo registers its own datamodules and
its four tasks the same way (``zoo = "zoo"``, ``zoo/zoo_plugin.json``).

Listing reads the manifests only, so that it imports no plugin and no backend: an entry is imported when it
is asked for (``load``). Besides ``class``, an entry may hold what ``zoo list`` prints of it (task, variants,
paper, one line of doc); a field it lacks is read from the class, which is then imported. ``python -m
zoo.cli.manifest PACKAGE...`` completes a package's manifest from its classes and from the ``PRETRAINED``
checkpoints declared beside its methods (a test checks that every shipped manifest agrees with them).

The entry-point groups ``zoo.methods`` and ``zoo.datamodules`` of the first releases are not read: one
mechanism finds everything. A name that only such a group registers is refused with a line that says how to
move the plugin to ``zoo.plugins``.

Example:
    >>> from zoo import registry
    >>> cls = registry.methods.load("PDFEmbedding")  # imports that one plugin only
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from zoo.errors import ZooError

PLUGINS_GROUP = "zoo.plugins"
METHODS_GROUP = "zoo.methods"
DATAMODULES_GROUP = "zoo.datamodules"
TASKS_GROUP = "zoo.tasks"
PRETRAINED_SECTION = "pretrained"  # the manifest's section of released checkpoints (read by zoo.hub)
MANIFEST = "zoo_plugin.json"
# the name of a module-level dict of released checkpoints beside a method (as timm's pretrained cfgs)
PRETRAINED_ATTR = "PRETRAINED"


@dataclass(frozen=True)
class Plugin:
    """One line of the ``zoo.plugins`` group: a package that holds a manifest."""

    name: str
    package: str
    dist: str  # the distribution that declared it

    @property
    def manifest_path(self) -> Path | None:
        """Where its manifest is (found without importing the package), or None if the package is missing."""
        folder = package_dir(self.package)
        return folder / MANIFEST if folder is not None else None


@dataclass(frozen=True)
class Entry:
    """A registered name, not yet imported."""

    name: str
    value: str  # "package.module:attr"
    dist: str  # the distribution that declared it
    plugin: str = ""  # the ``zoo.plugins`` name whose manifest lists it

    @property
    def class_path(self) -> str:
        """Dotted path as LightningCLI and jsonargparse write it."""
        return self.value.replace(":", ".")


@cache
def plugins() -> dict[str, Plugin]:
    """Every installed plugin, in the order the entry points list them; two claiming one name are an error."""
    found: dict[str, Plugin] = {}
    for ep in entry_points(group=PLUGINS_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
        plugin = Plugin(ep.name, ep.value.strip(), dist)
        other = found.get(ep.name)
        if other is not None and other.package != plugin.package:
            raise ZooError(
                f"two distributions claim the plugin name {ep.name!r}: package {other.package} (from {other.dist}) "
                f"and package {plugin.package} (from {plugin.dist}); uninstall one of them"
            )
        found.setdefault(ep.name, plugin)
    return found


def manifest(plugin: Plugin) -> dict[str, dict[str, Any]]:
    """The manifest of ``plugin``, checked as data; a one-line ZooError naming the file if it is unusable."""
    return _read_manifest(plugin.package, plugin.name)


@cache
def _read_manifest(package: str, name: str) -> dict[str, dict[str, Any]]:
    path = Plugin(name, package, "").manifest_path
    if path is None:
        raise ZooError(f"plugin {name!r} names the package {package!r}, which is not installed")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooError(f"plugin {name!r} has no manifest: {path} is missing") from None
    except (OSError, ValueError) as err:
        raise ZooError(f"{path}: not a readable JSON manifest ({type(err).__name__}: {err})") from None
    sections = (METHODS_GROUP, DATAMODULES_GROUP, TASKS_GROUP, PRETRAINED_SECTION)
    if not isinstance(data, dict):
        raise ZooError(f"{path}: a manifest is a JSON object of sections ({', '.join(sections)})")
    for section, entries in data.items():
        if section not in sections:
            raise ZooError(f"{path}: unknown section {section!r} (sections: {', '.join(sections)})")
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            raise ZooError(f"{path}: section {section!r} must be a JSON object of name -> object")
        if section == PRETRAINED_SECTION:
            continue  # checked entry by entry where it is read (zoo.hub)
        for entry_name, entry in entries.items():
            value = entry.get("class")
            if not (isinstance(value, str) and value.count(":") == 1 and all(value.split(":"))):
                raise ZooError(f"{path}: {section} entry {entry_name!r} needs \"class\": \"package.module:attr\"")
    return data


def broken_plugins() -> dict[str, ZooError]:
    """The plugins whose manifest cannot be used, and why; the others work without them."""
    broken: dict[str, ZooError] = {}
    for name, plugin in plugins().items():
        try:
            manifest(plugin)
        except ZooError as err:
            broken[name] = err
    return broken


def pretrained() -> dict[str, tuple[dict[str, Any], Path]]:
    """The released checkpoints the plugins declare, by name: name -> (entry, the manifest that declares it)."""
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    owner: dict[str, Plugin] = {}
    for plugin in plugins().values():
        try:
            declared = manifest(plugin).get(PRETRAINED_SECTION, {})
        except ZooError:
            continue  # a broken plugin is reported by broken_plugins(); the others' checkpoints stay known
        for name, entry in declared.items():
            if name in owner:
                raise ZooError(f"two plugins declare the pretrained checkpoint {name!r}: {owner[name].name} "
                               f"(from {owner[name].dist}) and {plugin.name} (from {plugin.dist}); uninstall one")
            owner[name] = plugin
            found[name] = (entry, plugin.manifest_path)
    return dict(sorted(found.items()))


class Registry:
    """Lazy view of one section of the plugins' manifests."""

    def __init__(self, group: str, kind: str, base: str, fields: tuple[str, ...], instances: bool = False) -> None:
        self.group = group
        self.kind = kind
        self._base = base  # "module:attr" of the class every entry must subclass (or be an instance of)
        self.fields = fields  # what a manifest may hold of each entry, besides its class
        self._instances = instances  # entries are instances of the base (tasks), not subclasses named by it

    @cached_property
    def entries(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for plugin in plugins().values():
            try:
                declared = manifest(plugin).get(self.group, {})
            except ZooError:
                continue  # a broken plugin must not take the others down (broken_plugins() says why)
            for name, listed in declared.items():
                entry = Entry(name, listed["class"], plugin.dist, plugin.name)
                other = found.get(name)
                if other is not None and other.value != entry.value:
                    raise ZooError(
                        f"two plugins claim the {self.kind} name {name!r}: {other.plugin} ({other.value}, from "
                        f"{other.dist}) and {entry.plugin} ({entry.value}, from {entry.dist}); uninstall one of them"
                    )
                found[name] = entry
        return dict(sorted(found.items()))

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> Entry:
        """The entry called ``name``, or a ZooError naming the closest registered names."""
        if name in self.entries:
            return self.entries[name]
        by_lower = {n.lower(): n for n in self.entries}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""
        known = ", ".join(self.entries) or "none"
        for ep in entry_points(group=self.group):  # the first releases' group, no longer read
            if ep.name == name:
                dist = ep.dist.name if ep.dist is not None else "its distribution"
                hint += (f"; {dist} registers it in the entry-point group {self.group}, which the zoo no longer "
                         f"reads: list it in its package's {MANIFEST} and register the package in {PLUGINS_GROUP}")
        broken = "".join(f"; plugin {plugin!r} is broken: {err}" for plugin, err in broken_plugins().items())
        raise ZooError(f"unknown {self.kind} {name!r}{hint} (registered: {known}){broken}")

    def load(self, name: str) -> Any:
        """Import and return what is registered as ``name`` (a class; a ``Task`` instance for tasks)."""
        entry = self.get(name)
        module_name, _, attr = entry.value.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception as err:  # a broken plugin must not take the others down with it
            raise ZooError(
                f"{self.kind} plugin {name!r} ({entry.value}, from {entry.dist}) failed to import: "
                f"{type(err).__name__}: {err}"
            ) from err
        base = _import(self._base)
        if self._instances:
            if not isinstance(obj, base):
                raise ZooError(f"{self.kind} plugin {name!r} ({entry.value}) is not a {base.__name__} instance")
            if obj.name != name:
                raise ZooError(f"{self.kind} plugin registered as {name!r} ({entry.value}) is named {obj.name!r}: "
                               "the manifest's name must equal its name")
            return obj
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise ZooError(f"{self.kind} plugin {name!r} ({entry.value}) is not a subclass of {base.__name__}")
        if obj.__name__ != name:
            raise ZooError(
                f"{self.kind} plugin registered as {name!r} is the class {obj.__name__!r}: the manifest's name "
                "must equal the class name so that LightningCLI resolves it"
            )
        return obj

    def load_all(self) -> tuple[dict[str, Any], dict[str, ZooError]]:
        """Every entry that imports, and the errors of those that do not (a broken plugin under its name)."""
        loaded: dict[str, Any] = {}
        failed: dict[str, ZooError] = {f"plugin {name}": err for name, err in broken_plugins().items()}
        for name in self.entries:
            try:
                loaded[name] = self.load(name)
            except ZooError as err:
                failed[name] = err
        return loaded, failed

    def describe(self, name: str) -> dict[str, Any]:
        """What ``zoo list`` prints of ``name``: its manifest entry, completed from its class where it lacks a field."""
        entry = self.get(name)
        listed = manifest(plugins()[entry.plugin])[self.group][name] if entry.plugin else {"class": entry.value}
        if all(field in listed for field in self.fields):
            return {"class": entry.value, **{field: listed[field] for field in self.fields}}
        return {**self.summary(name, self.load(name)), **{f: listed[f] for f in self.fields if f in listed}}

    def summary(self, name: str, obj: Any) -> dict[str, Any]:
        """The full manifest entry of ``obj`` (a class, or a task instance) registered as ``name``."""
        out: dict[str, Any] = {"class": self.get(name).value}
        for field in self.fields:
            if field == "doc":
                out[field] = (inspect.getdoc(obj) or "").strip().split("\n")[0]
            elif field == "variants":
                out[field] = list(obj.variants)
            else:
                out[field] = getattr(obj, field)
        return out

    def refresh(self) -> None:
        """Forget what was discovered (of every registry), after installing a plugin at run time."""
        for reg in (methods, datamodules, tasks):
            reg.__dict__.pop("entries", None)
        plugins.cache_clear()
        _read_manifest.cache_clear()


def _import(spec: str) -> type:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def package_dir(module: str) -> Path | None:
    """The folder of the package that holds ``module``, found without importing the plugin."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location, *rest)
        if path.is_dir():
            return path
        if path.with_suffix(".py").is_file():
            return path.parent
    return None


def build_manifest(package: str) -> dict[str, dict[str, Any]]:
    """The complete manifest of ``package``: its manifest's entries, each as its class says (they are imported).

    The ``pretrained`` section is the ``PRETRAINED`` dicts of the modules that hold the package's methods,
    plus the manifest's entries for no method of the package (a checkpoint not tied to one of them).
    """
    plugin = next((p for p in plugins().values() if p.package == package), None)
    if plugin is None:
        raise ZooError(f"no installed plugin registers the package {package!r} in {PLUGINS_GROUP}")
    listed = manifest(plugin)
    data: dict[str, dict[str, Any]] = {}
    for reg in (methods, datamodules, tasks):
        for name in sorted(listed.get(reg.group, {})):
            data.setdefault(reg.group, {})[name] = reg.summary(name, reg.load(name))
    own = set(data.get(METHODS_GROUP, {}))
    released: dict[str, Any] = {}
    for module in dict.fromkeys(methods.get(name).value.partition(":")[0] for name in sorted(own)):
        for name, entry in getattr(importlib.import_module(module), PRETRAINED_ATTR, {}).items():
            if entry.get("method") not in own:
                raise ZooError(f"{module}.{PRETRAINED_ATTR}[{name!r}] is for method {entry.get('method')!r}, "
                               f"which {package} does not register")
            released[name] = entry
    released.update({k: v for k, v in listed.get(PRETRAINED_SECTION, {}).items() if v.get("method") not in own})
    if released:
        data[PRETRAINED_SECTION] = released
    return data


def write_manifest(package: str) -> Path:
    """Complete ``zoo_plugin.json`` of ``package`` from its classes and declared checkpoints; its path."""
    plugin = next((p for p in plugins().values() if p.package == package), None)
    data = build_manifest(package)
    path = plugin.manifest_path
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    methods.refresh()
    return path


methods = Registry(METHODS_GROUP, "method", "zoo.module:ZooModule",
                   ("task", "display_name", "paper", "variants", "doc"))
datamodules = Registry(DATAMODULES_GROUP, "datamodule", "zoo.data.base:ZooDataModule", ("task", "description"))
tasks = Registry(TASKS_GROUP, "task", "zoo.tasks.base:Task", ("question",), instances=True)


def load_method(name: str) -> type:
    """Shorthand for ``methods.load(name)``."""
    return methods.load(name)
