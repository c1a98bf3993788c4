"""The run's options: the command line and the job file, both checked against the one spec in
:mod:`.spec` (usage errors, exit 2, before anything is written)."""

from __future__ import annotations

import argparse
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from insights_link.core.contract import activity_columns
from insights_link.errors import UsageError
from insights_link.lake.delta import check_delta_location
from insights_link.pipeline.beam_args import BEAM_OPTIONS_DOC, check_runner, unknown_beam_arguments
from insights_link.pipeline.jobfile import Job, JobFileError, load_job
from insights_link.pipeline.spec import (
    ACTIVITY_OPTIONS,
    BY_DEST,
    DEFAULT_BLOCK_RECORDS,
    DEFAULT_CHUNK_MB,
    DEFAULT_DEDUPE_WINDOW_DAYS,
    DEFAULT_LOCK_WAIT,
    DEFAULT_MAX_ROWS_PER_FILE,
    OPTIONS,
    RUN_OPTIONS,
    OptionError,
)
from insights_link.storage import CredentialsError, StorageError, is_remote, open_storage

PROBE_KEY = ".insights-link-probe"  # never written: a HEAD request tells whether we may read

logger = logging.getLogger(__name__)

EPILOG = f"""exit codes:
  0  the run committed (also with rejected records, or nothing to do)
  1  the run failed; nothing was committed (or: "the run committed, but ..." for a later step)
  2  usage or configuration error; nothing was written
  3  more records rejected than --max-rejected-ratio allows, or an unreadable file with
     --fail-on-unreadable; nothing was committed
  4  another run held the data source's lock for longer than --lock-wait
  130, 143  interrupted by SIGINT / SIGTERM

examples:
  local demo:  insights-link export --input sample_data/exports --output lake
  job file:    insights-link export --job sample_data/job.toml
  ADLS Gen2:   AZURE_STORAGE_CONNECTION_STRING=... insights-link export \\
                 --input 'abfss://landing@acct.dfs.core.windows.net/web/*.jsonl.gz' \\
                 --output abfss://lake@acct.dfs.core.windows.net/ci

Any Apache Beam pipeline option is accepted too (--runner, --direct_running_mode=multi_processing,
--direct_num_workers=2, ...); see {BEAM_OPTIONS_DOC}"""


@dataclass(frozen=True)
class ActivityConfig:
    """One activity table of the run."""

    name: str
    activity_type: str
    inputs: tuple[str, ...]
    event_names: tuple[str, ...] | None = None
    properties: tuple[str, ...] = ()


@dataclass
class RunConfig:
    """The checked configuration of one run."""

    output: str
    data_source: str
    activities: list[ActivityConfig]
    run_id: str
    run_time: datetime
    input_format: str | None = None
    reprocess: bool = False
    layout: str = "full"
    table_format: str = "cdm"
    since: datetime | None = None
    until: datetime | None = None
    max_rejected_ratio: float | None = None
    fail_on_unreadable: bool = False
    grant_read: tuple[str, ...] = ()
    lock_wait: float = DEFAULT_LOCK_WAIT
    log_format: str = "text"
    max_rows_per_file: int = DEFAULT_MAX_ROWS_PER_FILE
    dedupe_window_days: int = DEFAULT_DEDUPE_WINDOW_DAYS
    block_records: int = DEFAULT_BLOCK_RECORDS
    chunk_mb: float = DEFAULT_CHUNK_MB
    dry_run: bool = False
    replay: bool = False  # the inputs are fixed dead letters (see insights_link.lake.deadletters)
    quiet: bool = False
    verbose: bool = False
    job: str | None = None
    beam_args: list[str] = field(default_factory=list)
    clock_fixed: bool = False  # --run-time given: the whole run uses that instant


class _Parser(argparse.ArgumentParser):
    """argparse, raising :class:`UsageError` (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``insights-link export`` parser, from the spec (help shows defaults and job keys)."""
    parser = _Parser(
        prog="insights-link export",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export refined engagement events into a Customer Insights activity data source "
        "(a CDM folder, or Delta tables with --table-format delta, of Parquet files).",
        epilog=EPILOG,
    )
    for o in OPTIONS:
        notes = []
        if o.default_text():
            notes.append(f"default {o.default_text()}")
        if o.job:
            notes.append(f"job key {'[[activity]] ' if o.scope == 'activity' else ''}{o.key}")
        text = o.help + (f" ({'; '.join(notes)})" if notes else "")
        kwargs: dict[str, Any] = {"dest": o.dest, "help": text, "default": argparse.SUPPRESS}
        if o.kind == "bool":
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = o.metavar or ("|".join(o.choices) if o.choices else None)
            if o.kind == "list":
                kwargs["action"] = "append"
        parser.add_argument(o.flag, **kwargs)
    return parser


def parse_args(argv: list[str], now: datetime) -> tuple[RunConfig, PipelineOptions]:
    """Parse and check the command line and job file; raises :class:`UsageError` naming the
    bad value. Flags override the job file."""
    given, rest = build_parser().parse_known_args(argv)
    unknown = unknown_beam_arguments(rest)
    if unknown:
        raise UsageError(
            f"unknown argument(s): {' '.join(unknown)} "
            "(a typo, or an unquoted glob the shell expanded? quote globs)"
        )
    flags = {k: v for k, v in vars(given).items()}
    job = _load_job(flags.get("job"))
    settings: dict[str, Any] = {}
    try:
        settings.update(job.settings if job else {})
        for o in RUN_OPTIONS:
            if o.dest in flags:
                settings[o.dest] = o.convert(flags[o.dest])
        activities = _activities(job, flags)
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    job_beam = list(job.pipeline_options) if job else []
    unknown = unknown_beam_arguments(job_beam)
    if unknown:
        raise UsageError(f"pipeline_options in {job.path}: unknown argument(s): {' '.join(unknown)}")
    output = settings.get("output")
    if not output:
        raise UsageError("--output is required (or 'output' in the job file)")
    check_output(output)
    if not is_remote(output):
        output = os.path.abspath(os.path.expanduser(output))  # workers may run in another folder
    for a in activities:
        for value in a.inputs:
            check_location(value, "--input")
        try:
            activity_columns(a.properties)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if settings.get("table_format") == "delta":
        check_delta_location(output, "--output")
    if settings.get("table_format") == "delta" and settings.get("layout") == "incremental":
        raise UsageError(
            "--layout incremental applies to CDM folders only: a Delta table's versions already "
            "serve incremental refresh (use --layout full, the default, with --table-format delta)"
        )
    since, until = settings.get("since"), settings.get("until")
    if since and until and since >= until:
        raise UsageError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    run_time = settings.get("run_time") or now
    run_id = settings.get("run_id") or f"{run_time:%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:8]}"
    beam_args = job_beam + rest
    options = PipelineOptions(beam_args)
    check_runner(options)
    config = RunConfig(
        output=output,
        data_source=settings.get("data_source") or BY_DEST["data_source"].default,
        activities=activities,
        run_id=run_id,
        run_time=run_time,
        input_format=settings.get("input_format"),
        reprocess=settings.get("reprocess", False),
        layout=settings.get("layout", "full"),
        table_format=settings.get("table_format", "cdm"),
        since=since,
        until=until,
        max_rejected_ratio=settings.get("max_rejected_ratio"),
        fail_on_unreadable=settings.get("fail_on_unreadable", False),
        grant_read=tuple(settings.get("grant_read", ())),
        lock_wait=settings.get("lock_wait", DEFAULT_LOCK_WAIT),
        log_format=settings.get("log_format", "text"),
        max_rows_per_file=int(settings.get("max_rows_per_file", DEFAULT_MAX_ROWS_PER_FILE)),
        dedupe_window_days=int(settings.get("dedupe_window_days", DEFAULT_DEDUPE_WINDOW_DAYS)),
        block_records=int(settings.get("block_records", DEFAULT_BLOCK_RECORDS)),
        chunk_mb=float(settings.get("chunk_mb", DEFAULT_CHUNK_MB)),
        dry_run=settings.get("dry_run", False),
        replay=settings.get("replay", False),
        quiet=settings.get("quiet", False),
        verbose=settings.get("verbose", False),
        job=job.path if job else None,
        beam_args=beam_args,
        clock_fixed=settings.get("run_time") is not None,
    )
    return config, options


def _load_job(path: str | None) -> Job | None:
    if path is None:
        return None
    if not path.strip():
        raise UsageError("--job must name a job file")
    try:
        return load_job(path)
    except JobFileError as exc:
        raise UsageError(str(exc)) from exc


def _activities(job: Job | None, flags: dict) -> list[ActivityConfig]:
    """The run's activities: the job file's, with activity flags overriding a single one."""
    given = {o.dest: o.convert(flags[o.dest]) for o in ACTIVITY_OPTIONS if o.dest in flags}
    tables = list(job.activities) if job and job.activities else []
    if given and len(tables) > 1:
        raise UsageError(
            f"{', '.join('--' + k.replace('_', '-') for k in given)} can't override a job file "
            f"with {len(tables)} activities; edit the job file instead"
        )
    if not tables:
        if "input" not in given:
            raise UsageError("--input is required (or [[activity]] tables in a --job file)")
        tables = [{}]
    out = []
    for table in tables:
        values = dict(table)  # already checked by the job-file reader
        values.update(given)
        out.append(
            ActivityConfig(
                name=values.get("activity_name", BY_DEST["activity_name"].default),
                activity_type=values.get("activity_type", BY_DEST["activity_type"].default),
                inputs=tuple(values["input"]),
                event_names=values.get("event_name"),
                properties=tuple(values.get("property", ())),
            )
        )
    return out


_SCHEMES = ("abfss://", "abfs://", "https://", "http://")


def check_location(value: str, flag: str) -> None:
    """Only local paths and Azure URLs: ``gs://``, ``s3://`` and friends are usage errors (they
    would otherwise become local folders named ``gs:``)."""
    if "://" in value and not value.lower().startswith(_SCHEMES):
        scheme = value.split("://", 1)[0]
        raise UsageError(
            f"{flag} {value!r}: {scheme}:// is not supported; use a local path or an Azure "
            "URL (abfss://<fs>@<account>.dfs.core.windows.net/<path>)"
        )


def check_output(output: str, flag: str = "--output") -> None:
    """A local LAKE_ROOT must be a folder we can create or write; an Azure one a valid URL with
    valid credential settings (checked before writing; opening sends no request)."""
    check_location(output, flag)
    if is_remote(output):
        try:
            storage = open_storage(output)  # a malformed URL or credential setting: no request yet
        except StorageError as exc:
            raise UsageError(f"{flag}: {exc}") from exc
        try:
            storage.exists(PROBE_KEY)  # one request: are the credentials usable at all?
        except CredentialsError as exc:
            raise UsageError(f"{flag}: {exc}") from exc
        except StorageError as exc:  # unreachable now: the run will retry and say so
            logger.warning("could not reach %s before the run: %s", output, exc)
        return
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {output!r} is an existing file, not a folder")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {output!r} cannot be written ({probe} is not writable)")
