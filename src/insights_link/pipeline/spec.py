"""Every option of ``insights-link export``, declared once.

Each :class:`Option` names its flag, its job-file key, its type, default, help text and check.
The command-line parser, the job-file schema, ``--help`` and the README's option table are all
built from :data:`OPTIONS`, so they can't disagree; a test holds the README to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from insights_link.core.contract import (
    DEFAULT_ACTIVITY_NAME,
    DEFAULT_ACTIVITY_TYPE,
    DEFAULT_DATA_SOURCE,
    ContractError,
    check_name,
)
from insights_link.core.formats import DEFAULT_BLOCK_RECORDS, FORMATS
from insights_link.core.records import parse_timestamp
from insights_link.errors import UsageError
from insights_link.lake import TABLE_FORMATS
from insights_link.lake.layout import LAYOUTS

DEFAULT_MAX_ROWS_PER_FILE = 2_000_000  # ~150 bytes a row compressed: files near 300 MB
DEFAULT_LOCK_WAIT = 60.0
#: midnight re-stamps (a day) and re-deliveries stamped up to 3 days late; measured in docs/performance.md
DEFAULT_DEDUPE_WINDOW_DAYS = 3
#: a large line-based input file is read as chunks of about this size (issue 14)
DEFAULT_CHUNK_MB = 64.0
#: continuous export (--watch): seconds between polls, and the most files / megabytes per window
DEFAULT_WATCH_INTERVAL = 30.0
DEFAULT_MAX_WINDOW_FILES = 1000
DEFAULT_MAX_WINDOW_MB = 1024.0


class OptionError(UsageError):
    """A bad option value; the message names the option and the value."""


@dataclass(frozen=True)
class Option:
    """One option: flag, job-file key, kind, default, help and check.

    ``kind``: ``str``, ``int``, ``float``, ``bool`` (a switch), ``list`` (repeatable strings) or
    ``time`` (ISO 8601 instant or plain date, UTC). ``scope``: ``run`` (a top-level job-file key)
    or ``activity`` (a key of an ``[[activity]]`` table; the flag overrides a single activity).
    """

    flag: str
    key: str
    kind: str
    help: str
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    scope: str = "run"
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any, str], Any] | None = None
    job: bool = True  # settable in a job file

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def convert(self, value: Any) -> Any:
        """The checked value (from the command line's text or a job file's TOML value); raises
        :class:`OptionError` naming the option."""
        name = self.flag
        if value is None:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise OptionError(f"{name} must be true or false, not {value!r}")
            return value
        if self.kind == "list":
            items = value
            if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
                raise OptionError(f"{name} must be a list of strings, not {value!r}")
            if not items:
                raise OptionError(f"{name} must not be an empty list (leave it out instead)")
            for item in items:
                if not item.strip():
                    raise OptionError(f"{name} must not be empty")
            return tuple(self.check(v, name) if self.check else v for v in items)
        if self.kind in ("int", "float"):
            number = _number(value, self.kind, name)
            if self.minimum is not None and number < self.minimum:
                raise OptionError(f"{name} {value!r} must be at least {self.minimum:g}")
            if self.maximum is not None and number > self.maximum:
                raise OptionError(f"{name} {value!r} must be at most {self.maximum:g}")
            return number
        if self.kind == "time" and isinstance(value, date):  # a TOML date or date-time
            return _toml_time(value)
        if not isinstance(value, str):
            raise OptionError(f"{name} must be a string, not {value!r}")
        if self.kind == "time":
            return parse_time_option(value, name)
        if self.choices and value not in self.choices:
            raise OptionError(f"{name} {value!r} must be one of: {', '.join(self.choices)}")
        if not value.strip():
            raise OptionError(f"{name} must not be empty")
        return self.check(value, name) if self.check else value

    def default_text(self) -> str:
        if self.default is None or self.default is False:
            return ""
        if isinstance(self.default, float) and self.default.is_integer():
            return f"{self.default:g}"
        if isinstance(self.default, int) and self.default >= 10_000:
            return f"{self.default:,}"
        return str(self.default)


def _number(value: Any, kind: str, name: str) -> float | int:
    if isinstance(value, bool):
        raise OptionError(f"{name} must be a number, not {value!r}")
    try:
        number = int(value) if kind == "int" else float(value)
    except (TypeError, ValueError):
        raise OptionError(
            f"{name} must be {'a whole number' if kind == 'int' else 'a number'}, not {value!r}"
        ) from None
    if kind == "int" and isinstance(value, float) and not value.is_integer():
        raise OptionError(f"{name} must be a whole number, not {value!r}")
    if number != number or number in (float("inf"), float("-inf")):
        raise OptionError(f"{name} must be a finite number, not {value!r}")
    return number


def _toml_time(value: date) -> datetime:
    """A TOML date is its midnight; a TOML date-time without an offset is UTC."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_time_option(value: str, name: str) -> datetime:
    """An ISO 8601 instant (no zone means UTC) or a plain date (its midnight, UTC)."""
    text = value.strip()
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        text += "T00:00:00Z"
    moment = parse_timestamp(text)
    if isinstance(moment, str):
        raise OptionError(f"{name} {value!r} is not an ISO 8601 time or date ({moment})")
    return moment.astimezone(UTC)


def _name_rule(value: str, name: str) -> str:
    try:
        return check_name(value, name)
    except ContractError as exc:
        raise OptionError(str(exc)) from None


def _signal_path(value: str, name: str) -> str:
    parts = value.split(".")
    if (
        len(parts) < 2
        or parts[0] != "Signal"
        or not all(p.strip() for p in parts)
        or any(ch == '"' or ord(ch) < 32 for ch in value)
    ):
        raise OptionError(f"{name} {value!r} must be a Signal property path such as Signal.Session.Id")
    return value


def _run_id(value: str, name: str) -> str:
    from insights_link.core.contract import MAX_NAME_LENGTH

    if len(value) > MAX_NAME_LENGTH or not all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in value):
        raise OptionError(
            f"{name} {value[:40]!r} must be 1 to {MAX_NAME_LENGTH} ASCII letters, digits, '_' or '-'"
        )
    return value


OPTIONS: tuple[Option, ...] = (
    # -- what to read ------------------------------------------------------------------------
    Option(
        "--input",
        "inputs",
        "list",
        "file, folder or glob of exported events (local or abfss://); repeatable",
        metavar="PATH",
        scope="activity",
    ),
    Option(
        "--input-format",
        "input_format",
        "str",
        "read every input as this format instead of by file extension",
        choices=FORMATS,
    ),
    Option(
        "--event-name",
        "event_names",
        "list",
        "keep only events with this Signal.Name (repeatable; case-sensitive)",
        metavar="NAME",
        scope="activity",
    ),
    Option(
        "--property",
        "properties",
        "list",
        "carry a further Signal property as a string column, e.g. Signal.Session.Id (repeatable)",
        metavar="Signal.X.Y",
        scope="activity",
        check=_signal_path,
    ),
    Option(
        "--since",
        "since",
        "time",
        "keep activities at or after this time (ISO 8601 or a plain date, UTC)",
        metavar="TIME",
    ),
    Option(
        "--until",
        "until",
        "time",
        "keep activities before this time (ISO 8601 or a plain date, UTC)",
        metavar="TIME",
    ),
    Option(
        "--replay",
        "replay",
        "bool",
        "the inputs are fixed dead letters (dead-letters --export): mark each letter resolved, or "
        "open with its new reason",
        default=False,
    ),
    Option(
        "--reprocess",
        "reprocess",
        "bool",
        "read inputs again even if an earlier run committed them",
        default=False,
    ),
    # -- where to write ----------------------------------------------------------------------
    Option(
        "--output",
        "output",
        "str",
        "LAKE_ROOT: a local folder or an abfss:// / https:// URL (required)",
        metavar="LAKE_ROOT",
    ),
    Option(
        "--data-source",
        "data_source",
        "str",
        "the data-source folder and manifest name",
        default=DEFAULT_DATA_SOURCE,
        metavar="NAME",
        check=_name_rule,
    ),
    Option(
        "--activity-name",
        "name",
        "str",
        "the table (CDM entity) name; also EventActivity when Signal.Name is absent",
        default=DEFAULT_ACTIVITY_NAME,
        metavar="NAME",
        scope="activity",
        check=_name_rule,
    ),
    Option(
        "--activity-type",
        "type",
        "str",
        "the ActivityType column's value",
        default=DEFAULT_ACTIVITY_TYPE,
        metavar="TYPE",
        scope="activity",
    ),
    Option(
        "--table-format",
        "table_format",
        "str",
        "cdm: a CDM folder (manifest + Parquet); delta: one Delta table per activity, partitioned by ActivityDate",
        default="cdm",
        choices=TABLE_FORMATS,
    ),
    Option(
        "--layout",
        "layout",
        "str",
        "CDM only. full: FullData folders by event date; incremental: IncrementalData/<commit hour>/Upserts",
        default="full",
        choices=LAYOUTS,
    ),
    Option(
        "--dedupe-window-days",
        "dedupe_window_days",
        "int",
        "an ActivityId committed, or seen earlier in the run, on a UTC date within N days is a duplicate",
        default=DEFAULT_DEDUPE_WINDOW_DAYS,
        metavar="N",
        minimum=0,
        maximum=366,
    ),
    Option(
        "--max-rows-per-file",
        "max_rows_per_file",
        "int",
        "most rows in one Parquet file",
        default=DEFAULT_MAX_ROWS_PER_FILE,
        metavar="N",
        minimum=1,
        maximum=1_000_000_000,
    ),
    Option(
        "--grant-read",
        "grant_read",
        "list",
        "ADLS Gen2 with a hierarchical namespace: let this Entra object id read the data source (repeatable)",
        metavar="OBJECT_ID",
    ),
    # -- how the run behaves -------------------------------------------------------------------
    Option(
        "--max-rejected-ratio",
        "max_rejected_ratio",
        "float",
        "fail (exit 3, nothing committed) when a larger share of the records is rejected",
        metavar="R",
        minimum=0,
        maximum=1,
    ),
    Option(
        "--fail-on-unreadable",
        "fail_on_unreadable",
        "bool",
        "fail (exit 3, nothing committed) when an input file can't be read to its end",
        default=False,
    ),
    Option(
        "--lock-wait",
        "lock_wait",
        "float",
        "seconds to wait while another run writes the same data source (then exit 4)",
        default=DEFAULT_LOCK_WAIT,
        metavar="SECONDS",
        minimum=0,
        maximum=7 * 24 * 3600,
    ),
    Option(
        "--dry-run",
        "dry_run",
        "bool",
        "read and check everything, print the summary with example rejects, write nothing",
        default=False,
    ),
    Option(
        "--run-id",
        "run_id",
        "str",
        "the run's id, unique per data source (default: UTC time + random suffix)",
        metavar="ID",
        check=_run_id,
    ),
    Option(
        "--run-time",
        "run_time",
        "time",
        "the run's clock: LastUpdated, reports, the incremental commit hour (default: now)",
        metavar="TIME",
    ),
    Option(
        "--chunk-mb",
        "chunk_mb",
        "float",
        "cut larger line-based input files into chunks of about this size at line boundaries, so one "
        "big file spreads over workers",
        default=DEFAULT_CHUNK_MB,
        metavar="MB",
        minimum=0.001,
        maximum=1_000_000,
    ),
    # -- continuous export ---------------------------------------------------------------------
    Option(
        "--watch",
        "watch",
        "bool",
        "keep running: every interval, commit the complete, not yet committed input files as one window",
        default=False,
    ),
    Option(
        "--interval",
        "interval",
        "float",
        "with --watch: seconds between polls of the inputs",
        default=DEFAULT_WATCH_INTERVAL,
        metavar="SECONDS",
        minimum=0.05,
        maximum=24 * 3600,
    ),
    Option(
        "--max-window-files",
        "max_window_files",
        "int",
        "with --watch: most input files in one window (a backlog is worked off in several)",
        default=DEFAULT_MAX_WINDOW_FILES,
        metavar="N",
        minimum=1,
        maximum=1_000_000,
    ),
    Option(
        "--max-window-mb",
        "max_window_mb",
        "float",
        "with --watch: most input megabytes in one window (a single larger file is a window of its own)",
        default=DEFAULT_MAX_WINDOW_MB,
        metavar="MB",
        minimum=0.001,
        maximum=10_000_000,
    ),
    Option(
        "--max-windows",
        "max_windows",
        "int",
        "with --watch: stop after committing this many windows",
        metavar="N",
        minimum=1,
        maximum=1_000_000_000,
    ),
    Option(
        "--until-idle",
        "until_idle",
        "bool",
        "with --watch: stop when a poll finds nothing left to commit (a catch-up job)",
        default=False,
    ),
    Option(
        "--block-records",
        "block_records",
        "int",
        "records per block a worker handles at once",
        default=DEFAULT_BLOCK_RECORDS,
        metavar="N",
        minimum=1,
        maximum=10_000_000,
    ),
    # -- output of the command itself ----------------------------------------------------------
    Option(
        "--log-format",
        "log_format",
        "str",
        "json: JSON log lines on stderr and the run report as the last stdout line",
        default="text",
        choices=("text", "json"),
    ),
    Option(
        "--quiet",
        "quiet",
        "bool",
        "no progress display and no INFO log lines (warnings, errors and the summary stay)",
        default=False,
    ),
    Option(
        "--verbose", "verbose", "bool", "debug log lines, including Beam's and the Azure SDK's", default=False
    ),
    Option(
        "--job",
        "job",
        "str",
        "TOML job file with the run's settings and [[activity]] tables (flags override it)",
        metavar="JOB.toml",
        job=False,
    ),
)

BY_DEST = {o.dest: o for o in OPTIONS}
RUN_OPTIONS = tuple(o for o in OPTIONS if o.scope == "run" and o.job)
ACTIVITY_OPTIONS = tuple(o for o in OPTIONS if o.scope == "activity")
#: job-file-only keys: Beam arguments, the activity tables
PIPELINE_OPTIONS_KEY = "pipeline_options"


def markdown_table() -> str:
    """The README's option table, generated from :data:`OPTIONS`."""
    rows = ["| option | job-file key | default | meaning |", "| --- | --- | --- | --- |"]
    for o in OPTIONS:
        shown = o.metavar or ("|".join(o.choices) if o.choices else "")
        flag = f"`{o.flag}{' ' + shown if shown else ''}`".replace("|", "\\|")  # a bare | splits the cell
        key = "" if not o.job else (f"`[[activity]] {o.key}`" if o.scope == "activity" else f"`{o.key}`")
        rows.append(f"| {flag} | {key} | {o.default_text()} | {o.help} |")
    rows.append(
        "| any Apache Beam option | `pipeline_options` (a list) | | e.g. `--runner`, "
        "`--direct_running_mode=multi_processing`, `--direct_num_workers=2` |"
    )
    return "\n".join(rows)
