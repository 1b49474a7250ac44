"""The task registry: names -> task classes, found by importing the task modules and entry points.

A leaf module, so the config can validate a task's options without importing any task: the task
modules are imported by name on first lookup (registering is being there), as plugins are. Tasks
register through `tunesmith.tasks.base.register_task`, which checks the declaration first.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil

from .errors import ConfigError

ENTRY_POINT_GROUP = "tunesmith.tasks"
TASKS_PACKAGE = "tunesmith.tasks"
_REGISTRY: dict[str, type] = {}
_DISCOVERED = False


def add(cls: type, keys: tuple[str, ...]) -> None:
    """Make `cls` available under each of `keys` (its name and aliases); a key taken by another class is an error."""
    for key in keys:
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"task name '{key}' is registered twice ({_REGISTRY[key].__name__}, {cls.__name__})")
    _REGISTRY.update({key: cls for key in keys})


def _discover() -> None:
    """Import every module of the tasks package and every entry point of the group."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from importlib.metadata import entry_points

    package = importlib.import_module(TASKS_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{TASKS_PACKAGE}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def task_names() -> list[str]:
    """Canonical names of the registered tasks (aliases left out)."""
    _discover()
    return sorted({cls.name for cls in _REGISTRY.values()})


def task_class(name: str) -> type:
    """The registered task class for a name or alias; an unknown name is a ConfigError with did-you-mean."""
    _discover()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
        raise ConfigError(f"unknown task.type '{name}'." + (f" Did you mean '{close[0]}'?" if close else "")
                          + f" Known tasks: {', '.join(task_names())}")
    return _REGISTRY[name]
