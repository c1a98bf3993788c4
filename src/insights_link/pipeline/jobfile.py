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

The keys are the options' job-file keys from :mod:`.spec` (every run option has one), plus
``pipeline_options`` (a list of Beam arguments). Values are checked by the same rules as the
flags. Relative local paths (``output``, ``inputs``) are resolved against the job file's folder.
Unknown keys and wrong values are errors that name the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from insights_link.core.paths import is_remote
from insights_link.errors import UsageError
from insights_link.pipeline.spec import ACTIVITY_OPTIONS, PIPELINE_OPTIONS_KEY, RUN_OPTIONS, OptionError


class JobFileError(UsageError):
    """The job file can't be read or breaks its schema; the message names the file and key."""


@dataclass(frozen=True)
class Job:
    """A parsed job file: checked run settings (by option dest, only those present), the
    activities (by option dest) and the Beam arguments."""

    path: str
    settings: dict[str, Any] = field(default_factory=dict)
    activities: tuple[dict[str, Any], ...] = ()
    pipeline_options: tuple[str, ...] = ()


def _resolve(base: str, value: str) -> str:
    if is_remote(value) or os.path.isabs(value) or "://" in value:
        return value
    return os.path.normpath(os.path.join(base, value))


def _checked(table: dict, options, where: str, path: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    by_key = {o.key: o for o in options}
    for key in table:
        if key not in by_key and key not in extra:
            known = sorted([*by_key, *extra])
            raise JobFileError(f"{path}: unknown key {where}{key!r} (known: {', '.join(known)})")
    out = {}
    for key, value in table.items():
        if key in by_key:
            try:
                out[by_key[key].dest] = by_key[key].convert(value)
            except OptionError as exc:
                raise JobFileError(f"{path}: {where}{key!r}: {exc}") from None
    return out


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
    settings = _checked(doc, RUN_OPTIONS, "", path, extra=("activity", PIPELINE_OPTIONS_KEY))
    beam = doc.get(PIPELINE_OPTIONS_KEY, [])
    if not isinstance(beam, list) or not all(isinstance(v, str) for v in beam):
        raise JobFileError(f"{path}: {PIPELINE_OPTIONS_KEY} must be a list of strings, not {beam!r}")
    base = os.path.dirname(os.path.abspath(path))
    if "output" in settings:
        settings["output"] = _resolve(base, settings["output"])
    tables = doc.get("activity", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise JobFileError(f"{path}: 'activity' must be [[activity]] tables")
    activities = []
    for i, table in enumerate(tables):
        where = f"activity[{i}]."
        values = _checked(table, ACTIVITY_OPTIONS, where, path)
        if "name" not in table:
            raise JobFileError(f"{path}: {where}'name' is required")
        if not table.get("inputs"):
            raise JobFileError(f"{path}: {where}'inputs' is required (a list of files, globs or folders)")
        values["input"] = tuple(_resolve(base, v) for v in values["input"])
        activities.append(values)
    names = [a["activity_name"] for a in activities]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise JobFileError(f"{path}: activity names must be unique; repeated: {', '.join(dupes)}")
    return Job(path, settings, tuple(activities), tuple(beam))
