"""The four tasks: batch contract, prediction schema and metrics of each.

Any method of a task is compared with any other on the same data through these definitions.
"""

from __future__ import annotations

from zoo.errors import ZooError
from zoo.tasks.base import Field, Task

TASK_NAMES = ("copy_detection", "fake_detection", "copyright", "attribution")


def get_task(name: str) -> Task:
    """The task called ``name``."""
    if name == "copy_detection":
        from zoo.tasks.copy_detection import TASK
    elif name == "fake_detection":
        from zoo.tasks.fake_detection import TASK
    elif name == "copyright":
        from zoo.tasks.copyright import TASK
    elif name == "attribution":
        from zoo.tasks.attribution import TASK
    else:
        raise ZooError(f"unknown task {name!r}; the tasks are {', '.join(TASK_NAMES)}")
    return TASK


__all__ = ["TASK_NAMES", "Field", "Task", "get_task"]
