"""Options, launch and commit: ``run(argv)`` is the one entry point the CLI and launchers use.

A run: parse and check options and the job file (usage errors before anything is written) ->
resolve inputs -> take the data source's lock -> recover what a dead run left -> skip inputs
earlier runs committed -> run the Beam pipeline (writes only to staging) -> check the balance and
the rejected ratio -> commit -> report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from insights_link import lifecycle
from insights_link.batch import ActivitySpec
from insights_link.contract import (
    DEFAULT_ACTIVITY_NAME,
    DEFAULT_ACTIVITY_TYPE,
    DEFAULT_DATA_SOURCE,
    MAX_NAME_LENGTH,
    REASONS,
    ContractError,
    activity_columns,
    check_name,
)
from insights_link.errors import (
    CommitStateUnknown,
    CommittedWithErrors,
    DataSourceBusy,
    GrantFailed,
    Interrupted,
    RunFailed,
    TooManyRejected,
    UsageError,
)
from insights_link.inputs import DEFAULT_BLOCK_RECORDS, FORMATS, InputError, InputFile, resolve_inputs
from insights_link.jobfile import Job, JobFileError, load_job
from insights_link.lake import (
    LAYOUTS,
    CommitLost,
    CommitUnfinished,
    CommitUnknown,
    Lake,
    LakeBusy,
    LakeState,
    input_key,
)
from insights_link.lifecycle import mark_launcher
from insights_link.records import parse_timestamp
from insights_link.storage import LockLost, StorageError, is_remote, open_storage
from insights_link.transforms import COUNTS, ExportActivities, counter_totals, empty_counts, empty_outcome

logger = logging.getLogger(__name__)

#: Rows per Parquet file: ~150 bytes a row compressed puts 2M rows near 300 MB (16 MB-1 GB aim).
DEFAULT_MAX_ROWS_PER_FILE = 2_000_000
DEFAULT_LOCK_WAIT = 60.0


# Our options, defined once: for Beam's PipelineOptions (so Beam knows them) and for finding
# which ones the command line gave explicitly (they override the job file).
_OPTIONS: list[tuple[str, dict]] = [
    ("--job", {"help": "TOML job file holding the run's settings and activities"}),
    ("--input", {"action": "append", "help": "file, glob or folder of exported events (repeatable)"}),
    ("--output", {"help": "LAKE_ROOT: local folder or abfss:// URL"}),
    ("--data-source", {"dest": "data_source", "help": "data-source folder and manifest name"}),
    ("--activity-name", {"dest": "activity_name", "help": "table (CDM entity) name"}),
    ("--activity-type", {"dest": "activity_type", "help": "ActivityType column value"}),
    ("--event-name", {"dest": "event_names", "action": "append",
                      "help": "keep only events with this Signal.Name (repeatable)"}),
    ("--property", {"dest": "properties", "action": "append",
                    "help": "extra Signal property to carry as a string column (repeatable)"}),
    ("--input-format", {"dest": "input_format", "choices": FORMATS}),
    ("--reprocess", {"action": "store_true", "help": "process inputs even if an earlier run committed them"}),
    ("--layout", {"choices": LAYOUTS, "help": "full (default) or incremental"}),
    ("--since", {"help": "keep activities at or after this ISO 8601 time"}),
    ("--until", {"help": "keep activities before this ISO 8601 time"}),
    ("--fail-on-unreadable", {"dest": "fail_on_unreadable", "action": "store_true",
                              "help": "fail (exit 3) when an input file can't be read to its end"}),
    ("--max-rejected-ratio", {"dest": "max_rejected_ratio", "type": float,
                              "help": "fail (exit 3) when a larger share of records is rejected"}),
    ("--grant-read", {"dest": "grant_read", "action": "append",
                      "help": "object id allowed to read the data-source folder (ADLS with HNS)"}),
    ("--lock-wait", {"dest": "lock_wait", "type": float,
                     "help": f"seconds to wait for another run's lock (default {DEFAULT_LOCK_WAIT:g})"}),
    ("--log-format", {"dest": "log_format", "choices": ("text", "json")}),
    ("--run-id", {"dest": "run_id", "help": "the run's id (default: UTC time + random suffix)"}),
    ("--run-time", {"dest": "run_time", "help": "the run's clock, ISO 8601; sets LastUpdated"}),
    ("--max-rows-per-file", {"dest": "max_rows_per_file", "type": int}),
    ("--block-records", {"dest": "block_records", "type": int}),
]
_ACTIVITY_FLAGS = ("input", "activity_name", "activity_type", "event_names", "properties")


def _add_options(parser, default=None) -> None:
    for flag, kwargs in _OPTIONS:
        kwargs = dict(kwargs)
        if kwargs.get("action") == "store_true":
            kwargs["default"] = argparse.SUPPRESS if default is argparse.SUPPRESS else False
        else:
            kwargs["default"] = default
        parser.add_argument(flag, **kwargs)


class ExportOptions(PipelineOptions):
    """insights-link's own options; every other option is Beam's."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_options(parser)


class _StrictParser(_BeamArgumentParser):
    """Beam's parser, raising UsageError with argparse's one-line message instead of exiting."""

    def error(self, message: str):
        raise UsageError(message)


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
    since: datetime | None = None
    until: datetime | None = None
    max_rejected_ratio: float | None = None
    fail_on_unreadable: bool = False
    grant_read: tuple[str, ...] = ()
    lock_wait: float = DEFAULT_LOCK_WAIT
    log_format: str = "text"
    max_rows_per_file: int = DEFAULT_MAX_ROWS_PER_FILE
    block_records: int = DEFAULT_BLOCK_RECORDS
    job: str | None = None
    beam_args: list[str] = field(default_factory=list)
    clock_fixed: bool = False  # --run-time given: the whole run uses that instant


def _all_options_parser() -> argparse.ArgumentParser:
    """A parser that knows every Beam option and ours, to reject what neither knows."""
    parser = _StrictParser(allow_abbrev=False, add_help=False)
    seen = set()
    for cls in PipelineOptions.__subclasses__():
        if str(cls) not in seen:
            seen.add(str(cls))
            cls._add_argparse_args(parser)
    return parser


def _explicit(argv: list[str]) -> dict:
    """Our options the command line gave explicitly (no defaults)."""
    parser = _StrictParser(allow_abbrev=False, add_help=False)
    _add_options(parser, default=argparse.SUPPRESS)
    known, _ = parser.parse_known_args(argv)
    return vars(known)


def _time_option(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    moment = parse_timestamp(value)
    if isinstance(moment, str):
        raise UsageError(f"{flag} {moment}")
    return moment


def parse_args(argv: list[str], now: datetime) -> tuple[RunConfig, PipelineOptions]:
    """Parse and check the command line and job file; raises :class:`UsageError` naming the
    bad value."""
    _known, unknown = _all_options_parser().parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown argument(s): {' '.join(unknown)} "
                         "(a typo, or an unquoted glob the shell expanded? quote globs)")
    given = _explicit(argv)
    job: Job | None = None
    if given.get("job"):
        try:
            job = load_job(given["job"])
        except JobFileError as exc:
            raise UsageError(str(exc)) from exc
    settings = dict(job.settings if job else {})
    job_options = list(settings.pop("pipeline_options", []))
    _known, unknown = _all_options_parser().parse_known_args(job_options)
    if unknown:
        raise UsageError(f"pipeline_options in {job.path}: unknown argument(s): {' '.join(unknown)}")
    beam_args = job_options + argv
    settings.update({k: v for k, v in given.items() if k not in _ACTIVITY_FLAGS})
    activities = _activities(job, given)
    output = settings.get("output")
    if not output:
        raise UsageError("--output is required (or 'output' in the job file)")
    if not is_remote(output):
        output = os.path.abspath(os.path.expanduser(output))  # workers may run in another folder
    try:
        data_source = check_name(_given_or(settings, "data_source", DEFAULT_DATA_SOURCE), "--data-source")
        for a in activities:
            check_name(a.name, "--activity-name")
            activity_columns(a.properties)
    except ContractError as exc:
        raise UsageError(str(exc)) from exc
    layout = settings.get("layout") or "full"
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r} must be one of {', '.join(LAYOUTS)}")
    input_format = settings.get("input_format")
    if input_format is not None and input_format not in FORMATS:
        raise UsageError(f"input_format {input_format!r} must be one of {', '.join(FORMATS)}")
    ratio = settings.get("max_rejected_ratio")
    if ratio is not None and not 0 <= ratio <= 1:
        raise UsageError(f"--max-rejected-ratio {ratio} must be between 0 and 1")
    max_rows = int(settings.get("max_rows_per_file") or DEFAULT_MAX_ROWS_PER_FILE)
    block_records = int(settings.get("block_records") or DEFAULT_BLOCK_RECORDS)
    if max_rows < 1:
        raise UsageError(f"--max-rows-per-file {max_rows} must be at least 1")
    if block_records < 1:
        raise UsageError(f"--block-records {block_records} must be at least 1")
    since = _time_option(settings.get("since"), "--since")
    until = _time_option(settings.get("until"), "--until")
    if since and until and since >= until:
        raise UsageError(f"--since {settings['since']} is not before --until {settings['until']}")
    run_time = _time_option(settings.get("run_time"), "--run-time") or now
    run_id = _given_or(settings, "run_id", f"{run_time:%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:8]}")
    if not run_id or len(run_id) > MAX_NAME_LENGTH or not all(
            ch.isascii() and (ch.isalnum() or ch in "_-") for ch in run_id):
        raise UsageError(f"--run-id {run_id[:40]!r} must be 1 to {MAX_NAME_LENGTH} ASCII letters, digits, "
                         "'_' or '-'")
    lock_wait = settings.get("lock_wait")
    config = RunConfig(
        output=output, data_source=data_source, activities=activities, run_id=run_id,
        run_time=run_time, input_format=input_format, reprocess=bool(settings.get("reprocess")),
        layout=layout, since=since, until=until, max_rejected_ratio=ratio,
        fail_on_unreadable=bool(settings.get("fail_on_unreadable")),
        grant_read=tuple(settings.get("grant_read") or ()),
        lock_wait=DEFAULT_LOCK_WAIT if lock_wait is None else float(lock_wait),
        log_format=settings.get("log_format") or "text", max_rows_per_file=max_rows,
        block_records=block_records, job=job.path if job else None, beam_args=beam_args,
        clock_fixed=settings.get("run_time") is not None,
    )
    return config, PipelineOptions(beam_args)


def _given_or(settings: dict, key: str, default: str) -> str:
    """A setting's value when given (even empty, which is then refused), else the default."""
    value = settings.get(key)
    return default if value is None else str(value)


def _activities(job: Job | None, given: dict) -> list[ActivityConfig]:
    """The run's activities: the job file's, with activity flags overriding a single one."""
    flags = {k: given[k] for k in _ACTIVITY_FLAGS if k in given}
    if job and job.activities:
        if flags and len(job.activities) > 1:
            raise UsageError(
                f"{', '.join('--' + k.replace('_', '-') for k in flags)} can't override a job file "
                f"with {len(job.activities)} activities; edit the job file instead")
        out = []
        for a in job.activities:
            out.append(ActivityConfig(
                name=flags.get("activity_name", a.name),
                activity_type=flags.get("activity_type", a.type or DEFAULT_ACTIVITY_TYPE),
                inputs=tuple(flags.get("input", a.inputs)),
                event_names=tuple(flags["event_names"]) if "event_names" in flags else a.event_names,
                properties=tuple(flags.get("properties", a.properties)),
            ))
        return out
    if not flags.get("input"):
        raise UsageError("--input is required (or [[activity]] tables in a --job file)")
    return [ActivityConfig(
        name=flags.get("activity_name", DEFAULT_ACTIVITY_NAME),
        activity_type=flags.get("activity_type", DEFAULT_ACTIVITY_TYPE),
        inputs=tuple(flags["input"]),
        event_names=tuple(flags["event_names"]) if "event_names" in flags else None,
        properties=tuple(flags.get("properties", ())),
    )]


def check_output(output: str) -> None:
    """A local LAKE_ROOT must be a folder we can create or write; an Azure one a valid URL with
    valid credential settings (checked before writing; opening sends no request)."""
    if is_remote(output):
        try:
            open_storage(output)
        except StorageError as exc:
            raise UsageError(f"--output: {exc}") from exc
        return
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--output {output!r} is an existing file, not a folder")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--output {output!r} cannot be written ({probe} is not writable)")


def fingerprint(f: InputFile) -> str:
    """An input's identity across runs: location, size, modification time and the storage's
    version (local inode and ctime, Azure ETag), which changes on every rewrite even when size
    and mtime are restored (``cp -p``, ``touch -r``)."""
    return f"{f.source}|{f.size}|{f.modified}|{f.version}"


def plan_inputs(files: list[InputFile], wanted: dict[tuple[str, str], tuple[str, ...]], state: LakeState,
                reprocess: bool) -> tuple[list[tuple[InputFile, tuple[str, ...]]], list[dict]]:
    """Which inputs to process for which activities; the report's ``inputs`` entries.

    A file is skipped for an activity that already committed it (same path, size and modified
    time), so an activity added to a job later still reads the files others have committed.
    """
    work, entries = [], []
    for f in files:
        activities = wanted[(f.root, f.key)]
        earlier = {a: state.committed_inputs.get(input_key(a, fingerprint(f))) for a in activities}
        todo = tuple(a for a in activities if reprocess or not earlier[a])
        entry = {"source": f.source, "format": f.fmt, "size": f.size, "modified": f.modified,
                 "fingerprint": fingerprint(f), "activities": list(todo)}
        if todo:
            work.append((f, todo))
            entries.append(entry | {"status": "processed"})
        else:
            entries.append(entry | {"status": "skipped", "committed_by": sorted(set(earlier.values()))[0]})
    return work, entries


def existing_partitions(lake: Lake, state: LakeState, tables: list[str]) -> dict[tuple[str, str], list[str]]:
    """Committed files per (table, date), as storage keys, for dedupe against earlier runs."""
    return {
        (table, day): [lake.key(loc) for loc in locations]
        for table in tables
        for day, locations in state.partitions_by_date(table).items()
    }


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def run(argv: list[str] | None = None, clock: Clock = utc_now) -> dict:
    """Run one export; returns the committed run report. Raises UsageError / RunFailed.

    ``clock`` is the run's injectable clock: it gives ``started_at``, LastUpdated, ``finished_at``
    and the commit hour of incremental files. ``--run-time`` fixes it for the whole run.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config, options = parse_args(argv, clock())
    if config.clock_fixed:
        def clock() -> datetime:
            return config.run_time
    files_by_activity = _resolve_all(config)
    check_output(config.output)
    try:
        lake = Lake(open_storage(config.output), config.data_source)
        if config.grant_read:
            _check_grant_read(lake)
        with lake.locked(config.lock_wait):
            return _locked_run(config, options, lake, files_by_activity, clock)
    except LakeBusy as exc:
        raise DataSourceBusy(str(exc)) from exc
    except (StorageError, OSError) as exc:
        raise RunFailed(str(exc)) from exc


def _resolve_all(config: RunConfig) -> dict[str, list[InputFile]]:
    try:
        return {a.name: resolve_inputs(list(a.inputs), config.input_format) for a in config.activities}
    except InputError as exc:
        raise UsageError(str(exc)) from exc
    except StorageError as exc:
        raise RunFailed(str(exc)) from exc


def _check_grant_read(lake: Lake) -> None:
    """--grant-read needs ADLS Gen2 with a hierarchical namespace: say so before writing."""
    check = getattr(lake.storage, "is_hns_enabled", None)
    if check is None:
        raise UsageError("--grant-read sets ADLS Gen2 ACLs; the output is a local folder")
    if not check():
        raise UsageError(f"--grant-read needs an account with a hierarchical namespace (ADLS Gen2); "
                         f"{lake.storage.describe()} has none")


def _locked_run(config: RunConfig, options: PipelineOptions, lake: Lake,
                files_by_activity: dict[str, list[InputFile]], clock: Clock) -> dict:
    lake.recover()
    if lake.storage.exists(lake.key("_runs", f"{config.run_id}.json")):
        raise UsageError(f"--run-id {config.run_id!r} was already used in data source "
                         f"{config.data_source!r}; run ids must be unique")
    try:
        state = lake.read_state()
    except (ValueError, KeyError) as exc:  # a damaged manifest, entity document or report
        raise RunFailed(f"cannot read the data source's committed state: {exc}") from exc
    columns = {a.name: activity_columns(a.properties) for a in config.activities}
    for name, cols in columns.items():
        declared = state.columns.get(name)
        if declared is not None and declared != [c.name for c in cols]:
            raise UsageError(
                f"table {name!r} already has columns {declared}; this run would write "
                f"{[c.name for c in cols]} (Customer Insights rejects a changed column set)")
    all_files = sorted({(f.root, f.key): f for fs in files_by_activity.values() for f in fs}.values(),
                       key=lambda f: (f.root, f.key))
    all_files = [dataclasses.replace(f, rank=rank) for rank, f in enumerate(all_files)]
    wanted: dict[tuple[str, str], tuple[str, ...]] = {}
    for name, fs in files_by_activity.items():
        for f in fs:
            wanted[(f.root, f.key)] = (*wanted.get((f.root, f.key), ()), name)
    work, entries = plan_inputs(all_files, wanted, state, config.reprocess)
    specs = {a.name: ActivitySpec(a.name, a.activity_type, a.properties, config.run_id, config.run_time,
                                  a.event_names, config.since, config.until) for a in config.activities}
    report = {
        "run_id": config.run_id, "status": "running", "started_at": _iso(clock()),
        "data_source": config.data_source, "output": lake.describe(), "layout": config.layout,
        "tables": sorted(specs), "inputs": entries,
    }
    logger.info("run %s: %d input file(s), %d to process, %d skipped", config.run_id,
                len(all_files), len(work), len(all_files) - len(work))
    try:
        outcome = _run_pipeline(config, options, lake, state, specs, work)
        counts = _counts(outcome, specs)
        report.update(counts)
        report["unreadable_inputs"] = outcome.get("unreadable_inputs", [])
        _check_balance(counts)
        _check_rejected_ratio(counts, config.max_rejected_ratio)
        _check_unreadable(report["unreadable_inputs"], config.fail_on_unreadable)
        finished = clock()
        report["finished_at"] = _iso(finished)
        located = lake.locate(outcome["files"], config.layout, finished)
        logger.info("committing %d file(s) and %d dead letter(s) to %s", len(located),
                    sum(counts["rejected"].values()), lake.describe())
        report = lake.commit(config.run_id, report, located, outcome["dead_letter_files"], columns)
    except CommitUnfinished as exc:
        raise CommittedWithErrors(str(exc)) from exc
    except CommitUnknown as exc:
        if _fail(lake, report, config, exc, clock) == "committed":
            raise CommittedWithErrors(f"{exc}; it has since been found committed") from exc
        raise CommitStateUnknown(str(exc)) from exc
    except (CommitLost, LockLost) as exc:
        _fail(lake, report, config, exc, clock)  # touches nothing once the lock is lost
        raise RunFailed(str(exc)) from exc
    except (StorageError, RunFailed, OSError) as exc:
        _fail(lake, report, config, exc, clock)
        raise
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as Interrupted: settle, then stop
        exc.committed = _fail(lake, report, config, exc, clock) == "committed"  # type: ignore[attr-defined]
        raise
    except Exception as exc:  # a worker error surfaces here wrapped by the runner
        settled = _fail(lake, report, config, exc, clock)
        if lifecycle.received_signal is not None:  # a signal raised inside a DoFn, re-wrapped
            interrupted = Interrupted(lifecycle.received_signal)
            interrupted.committed = settled == "committed"  # type: ignore[attr-defined]
            raise interrupted from exc
        raise RunFailed(f"pipeline failed: {_first_line(exc)}") from exc
    if config.grant_read:
        try:
            lake.storage.grant_read(lake.key(), list(config.grant_read))
        except StorageError as exc:
            raise GrantFailed(f"the run committed, but --grant-read failed (re-run to grant again): {exc}") from exc
    return report


def _run_pipeline(config: RunConfig, options: PipelineOptions, lake: Lake, state: LakeState,
                  specs: dict[str, ActivitySpec], work: list[tuple[InputFile, tuple[str, ...]]]) -> dict:
    if not work:
        return empty_outcome()
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"  # DirectRunner tries GitHub first
    existing = existing_partitions(lake, state, list(specs))
    recorded = frozenset(lake.recorded_dead_letters(f.source for f, _ in work))
    p = beam.Pipeline(options=options)
    _ = (
        p
        | "Inputs" >> beam.Create(work)
        | "Export" >> ExportActivities(specs, config.run_id, config.output, config.data_source, existing,
                                       config.block_records, config.max_rows_per_file, recorded)
    )
    mark_launcher()
    result = p.run()
    state_name = result.wait_until_finish()
    if state_name not in (None, "DONE"):
        raise RunFailed(f"the pipeline ended in state {state_name}")
    logger.debug("metrics: %s", dict(counter_totals(result)))
    return json.loads(lake.storage.read_bytes(lake.staging(config.run_id, "outcome.json")))


def _counts(outcome: dict, specs: dict[str, ActivitySpec]) -> dict:
    """Report counts: per activity table, and their sums at the top level."""
    per_table = {}
    total = empty_counts()
    for name, spec in sorted(specs.items()):
        counts = empty_counts()
        got = outcome["tables"].get(name, {})
        for key in COUNTS:
            counts[key] = got.get(key, 0)
        counts["rejected"] = {reason: got.get("rejected", {}).get(reason, 0) for reason in REASONS}
        per_table[name] = {"activity_type": spec.activity_type} | counts
        for key in COUNTS:
            total[key] += counts[key]
        for reason in REASONS:
            total["rejected"][reason] += counts["rejected"][reason]
    return total | {"activities": per_table}


def _check_balance(counts: dict) -> None:
    for name, c in counts["activities"].items():
        accounted = c["activities_written"] + c["duplicates_dropped"] + sum(c["rejected"].values()) + c["filtered_out"]
        if accounted != c["records_read"]:
            raise RunFailed(f"records of {name} do not balance: read {c['records_read']}, "
                            f"accounted for {accounted}")


def _check_unreadable(unreadable: list[dict], fail: bool) -> None:
    """With ``--fail-on-unreadable``, a file that could not be read to its end fails the run."""
    if fail and unreadable:
        names = ", ".join(sorted({u["source"] for u in unreadable}))
        raise TooManyRejected(f"{len(unreadable)} input file(s) could not be read to their end ({names}) "
                              "and --fail-on-unreadable is set; nothing was committed")


def _check_rejected_ratio(counts: dict, limit: float | None) -> None:
    """Fail when more than ``limit`` of the records that reached validation were rejected.

    Records an activity's event_names filter left out never reached validation; the time window
    applies after validation, so those records did.
    """
    if limit is None:
        return
    rejected = sum(counts["rejected"].values())
    reached = counts["records_read"] - counts.get("filtered_by_name", 0)
    if reached and rejected / reached > limit:
        raise TooManyRejected(
            f"{rejected} of {reached} records were rejected ({rejected / reached:.1%}), more than "
            f"--max-rejected-ratio {limit:g}; nothing was committed")


def _fail(lake: Lake, report: dict, config: RunConfig, exc: BaseException, clock: Clock) -> str | None:
    """Settle a failed run (signals held off meanwhile); returns "committed" when it turns out
    the commit had become visible, "rolled back" when undone, None when left to the next run."""
    report = dict(report, error=_first_line(exc), finished_at=_iso(clock()))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return lake.record_failure(config.run_id, report)
    except StorageError as cleanup:
        logger.warning("could not settle the failed run (the next run will): %s", cleanup)
        return None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1] if "Traceback" in text else text.splitlines()[0]
