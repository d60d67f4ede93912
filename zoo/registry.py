"""Entry-point discovery of methods and datamodules.

Plugins register in the entry-point groups ``zoo.methods`` and ``zoo.datamodules``; the built-in
plugins do so exactly as a third party's would. Entries are placeholders (``module:attr``) and are only
imported when asked for, so listing names never imports a backend.

What ``zoo list`` prints of an entry (task, variants, paper, one line of doc) comes from the manifest
``zoo_plugin.json`` that a plugin package ships beside its ``__init__.py``, so that listing imports no
plugin; an entry that no manifest describes is imported instead. ``python -m zoo.cli.manifest PACKAGE...``
writes a package's manifest from its classes (a test checks that every shipped manifest agrees with them).

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

METHODS_GROUP = "zoo.methods"
DATAMODULES_GROUP = "zoo.datamodules"
MANIFEST = "zoo_plugin.json"


@dataclass(frozen=True)
class Entry:
    """A registered name, not yet imported."""

    name: str
    value: str  # "package.module:Class"
    dist: str  # the distribution that declared it

    @property
    def class_path(self) -> str:
        """Dotted path as LightningCLI and jsonargparse write it."""
        return self.value.replace(":", ".")


class Registry:
    """Lazy view of one entry-point group."""

    def __init__(self, group: str, kind: str, base: str, fields: tuple[str, ...]) -> None:
        self.group = group
        self.kind = kind
        self._base = base  # "module:attr" of the base class every entry must subclass
        self.fields = fields  # what a manifest holds of each entry, besides its class

    @cached_property
    def entries(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for ep in entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            entry = Entry(ep.name, ep.value, dist)
            other = found.get(ep.name)
            if other is not None and other.value != entry.value:
                raise ZooError(
                    f"two plugins claim the {self.kind} name {ep.name!r}: {other.value} (from {other.dist}) "
                    f"and {entry.value} (from {entry.dist}); uninstall one of them"
                )
            found[ep.name] = entry
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
        raise ZooError(f"unknown {self.kind} {name!r}{hint} (registered: {known})")

    def load(self, name: str) -> type:
        """Import and return the class registered as ``name``."""
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
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise ZooError(f"{self.kind} plugin {name!r} ({entry.value}) is not a subclass of {base.__name__}")
        if obj.__name__ != name:
            raise ZooError(
                f"{self.kind} plugin registered as {name!r} is the class {obj.__name__!r}: the entry-point name "
                "must equal the class name so that LightningCLI resolves it"
            )
        return obj

    def load_all(self) -> tuple[dict[str, type], dict[str, ZooError]]:
        """Every class that imports, and the errors of those that do not."""
        loaded: dict[str, type] = {}
        failed: dict[str, ZooError] = {}
        for name in self.entries:
            try:
                loaded[name] = self.load(name)
            except ZooError as err:
                failed[name] = err
        return loaded, failed

    def describe(self, name: str) -> dict[str, Any]:
        """What ``zoo list`` prints of ``name``: from its plugin's manifest, or from its class if none lists it."""
        entry = self.get(name)
        listed = _manifest(entry.value.partition(":")[0]).get(self.group, {}).get(name)
        if isinstance(listed, dict) and listed.get("class") == entry.value and set(listed) == {"class", *self.fields}:
            return listed
        return self.summary(name, self.load(name))

    def summary(self, name: str, cls: type) -> dict[str, Any]:
        """The manifest entry of the class ``cls`` registered as ``name``."""
        out: dict[str, Any] = {"class": self.get(name).value}
        for field in self.fields:
            if field == "doc":
                out[field] = (inspect.getdoc(cls) or "").strip().split("\n")[0]
            elif field == "variants":
                out[field] = list(getattr(cls, "variants", {}))
            else:
                out[field] = getattr(cls, field, "")
        return out

    def refresh(self) -> None:
        """Forget what was discovered, after installing a plugin at run time."""
        self.__dict__.pop("entries", None)
        _manifest.cache_clear()


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


@cache
def _manifest(module: str) -> dict[str, Any]:
    """The manifest of the package that holds ``module``; {} where there is none or it does not parse."""
    folder = package_dir(module)
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):  # no manifest, or a broken one: the entries are imported instead
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(package: str) -> Path:
    """Write ``zoo_plugin.json`` of ``package`` from the classes it registers (they are imported)."""
    folder = package_dir(package + ".__init__")
    if folder is None:
        raise ZooError(f"no package {package!r} is installed")
    data: dict[str, dict[str, Any]] = {}
    for reg in (methods, datamodules):
        for name, entry in reg.entries.items():
            if package_dir(entry.value.partition(":")[0]) == folder:
                data.setdefault(reg.group, {})[name] = reg.summary(name, reg.load(name))
    if not data:
        raise ZooError(f"package {package!r} registers no method or datamodule")
    (folder / MANIFEST).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder / MANIFEST


methods = Registry(METHODS_GROUP, "method", "zoo.module:ZooModule",
                   ("task", "display_name", "paper", "variants", "doc"))
datamodules = Registry(DATAMODULES_GROUP, "datamodule", "zoo.data.base:ZooDataModule", ("task", "description"))


def load_method(name: str) -> type:
    """Shorthand for ``methods.load(name)``."""
    return methods.load(name)

