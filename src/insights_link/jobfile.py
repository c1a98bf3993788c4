"""Job files: what a scheduled run needs, in TOML, read with the standard library.

    output = "lake"                       # LAKE_ROOT (local path or abfss:// URL)
    data_source = "EngagementInsights"
    layout = "full"                       # or "incremental"
    [[activity]]
    name = "EmailPromo"                   # table name
    type = "WebLog"                       # ActivityType
    inputs = ["exports/*.jsonl"]
    event_names = ["EmailPromoClick"]     # optional: keep only these Signal.Name values
    properties = ["Signal.Session.Id"]    # optional: extra columns

Relative local paths (``output``, ``inputs``) are resolved against the job file's folder.
Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from insights_link.storage import is_remote


class JobFileError(ValueError):
    """The job file can't be read or breaks its schema; the message names the file and key."""


@dataclass(frozen=True)
class ActivityJob:
    """One ``[[activity]]`` table of a job file."""

    name: str
    type: str | None = None
    inputs: tuple[str, ...] = ()
    event_names: tuple[str, ...] | None = None
    properties: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """A parsed job file: run-level settings (only those present) and the activities."""

    path: str
    settings: dict[str, Any] = field(default_factory=dict)
    activities: tuple[ActivityJob, ...] = ()


_STR, _NUM, _BOOL, _STRS = "a string", "a number", "true or false", "a list of strings"
RUN_KEYS: dict[str, str] = {
    "output": _STR, "data_source": _STR, "layout": _STR, "input_format": _STR, "reprocess": _BOOL,
    "since": _STR, "until": _STR, "max_rejected_ratio": _NUM, "fail_on_unreadable": _BOOL, "grant_read": _STRS, "lock_wait": _NUM,
    "max_rows_per_file": _NUM, "pipeline_options": _STRS, "activity": "a list of [[activity]] tables",
}
ACTIVITY_KEYS: dict[str, str] = {
    "name": _STR, "type": _STR, "inputs": _STRS, "event_names": _STRS, "properties": _STRS,
}


def _check(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _validated(table: dict, allowed: dict[str, str], where: str, path: str) -> dict:
    for key, value in table.items():
        if key not in allowed:
            raise JobFileError(f"{path}: unknown key {where}{key!r} (known: {', '.join(sorted(allowed))})")
        if not _check(value, allowed[key]):
            raise JobFileError(f"{path}: {where}{key!r} must be {allowed[key]}, not {value!r}")
    return table


def _resolve(base: str, value: str) -> str:
    if is_remote(value) or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def load_job(path: str) -> Job:
    """Read and check a job file; raises :class:`JobFileError` naming the bad key."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError as exc:
        raise JobFileError(f"--job {path!r} does not exist") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: not valid TOML ({exc})") from exc
    except OSError as exc:
        raise JobFileError(f"--job {path!r} cannot be read: {exc.strerror}") from exc
    _validated(doc, RUN_KEYS, "", path)
    base = os.path.dirname(os.path.abspath(path))
    settings = {k: v for k, v in doc.items() if k != "activity"}
    if "output" in settings:
        settings["output"] = _resolve(base, settings["output"])
    activities = []
    for i, table in enumerate(doc.get("activity", [])):
        where = f"activity[{i}]."
        _validated(table, ACTIVITY_KEYS, where, path)
        if "name" not in table:
            raise JobFileError(f"{path}: {where}'name' is required")
        if not table.get("inputs"):
            raise JobFileError(f"{path}: {where}'inputs' is required (a list of files, globs or folders)")
        activities.append(ActivityJob(
            name=table["name"],
            type=table.get("type"),
            inputs=tuple(_resolve(base, v) for v in table["inputs"]),
            event_names=tuple(table["event_names"]) if "event_names" in table else None,
            properties=tuple(table.get("properties", ())),
        ))
    names = [a.name for a in activities]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise JobFileError(f"{path}: activity names must be unique; repeated: {', '.join(dupes)}")
    return Job(path, settings, tuple(activities))
