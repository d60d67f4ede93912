"""The tasks: batch contract, prediction schema, metrics and how the harness shows each (``Task``).

Any method of a task is compared with any other on the same data through these definitions. A task is a
plugin like a method: a ``Task`` instance declared in a plugin's manifest under ``zoo.tasks`` (the zoo's
own four in ``zoo/zoo_plugin.json``) and found through ``zoo.registry.tasks``.
"""

from __future__ import annotations

from typing import Any

from zoo.tasks.base import Field, Task


def get_task(name: str) -> Task:
    """The task called ``name``; a ZooError naming the registered tasks if there is none."""
    from zoo import registry

    return registry.tasks.load(name)


def task_names() -> tuple[str, ...]:
    """The names of every registered task."""
    from zoo import registry

    return tuple(registry.tasks.names())


def __getattr__(name: str) -> Any:
    # TASK_NAMES is read from the registry when asked for, so that importing the tasks reads no manifest
    if name == "TASK_NAMES":
        return task_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TASK_NAMES", "Field", "Task", "get_task", "task_names"]
