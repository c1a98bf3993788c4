"""Named points in a run's work (``checkpoint("after_moves")``) that observers can hook into.

Production code only names the points (with a few facts, e.g. ``checkpoint("file_read",
source=..., size=...)``); nothing happens at them unless something registered a listener. The
progress display (:mod:`insights_link.progress`) is one listener. The fault-injection tests register one (``tests/testing/failpoints.py``, loaded into
their subprocesses through ``sitecustomize``) that kills or pauses the process at a named point,
so crash tests stop real processes at exact steps instead of guessing with timers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_listeners: list[Callable[..., None]] = []


def on_checkpoint(listener: Callable[..., None]) -> None:
    """Call ``listener(name, **facts)`` at every checkpoint this process reaches."""
    _listeners.append(listener)


def remove_listener(listener: Callable[..., None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def checkpoint(name: str, **facts: Any) -> None:
    """This process reached the point ``name``."""
    for listener in list(_listeners):
        listener(name, **facts)
