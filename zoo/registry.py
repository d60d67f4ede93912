"""Entry-point discovery of methods and datamodules.

Plugins register in the entry-point groups ``zoo.methods`` and ``zoo.datamodules``; the built-in
plugins do so exactly as a third party's would. Entries are placeholders (``module:attr``) and are only
imported when asked for, so listing names never imports a backend.

Example:
    >>> from zoo import registry
    >>> cls = registry.methods.load("PDFEmbedding")  # imports that one plugin only
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import entry_points

from zoo.errors import ZooError

METHODS_GROUP = "zoo.methods"
DATAMODULES_GROUP = "zoo.datamodules"


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

    def __init__(self, group: str, kind: str, base: str) -> None:
        self.group = group
        self.kind = kind
        self._base = base  # "module:attr" of the base class every entry must subclass

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

    def refresh(self) -> None:
        """Forget what was discovered, after installing a plugin at run time."""
        self.__dict__.pop("entries", None)


def _import(spec: str) -> type:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)


methods = Registry(METHODS_GROUP, "method", "zoo.module:ZooModule")
datamodules = Registry(DATAMODULES_GROUP, "datamodule", "zoo.data.base:ZooDataModule")


def load_method(name: str) -> type:
    """Shorthand for ``methods.load(name)``."""
    return methods.load(name)
