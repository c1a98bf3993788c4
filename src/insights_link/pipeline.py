"""Options, launch and commit: ``run(argv)`` is the one entry point the CLI and launchers use.

A run: parse and check options (usage errors before anything is written) -> resolve inputs ->
recover the data-source folder -> skip inputs earlier runs committed -> run the Beam pipeline
(writes only to staging) -> check the balance -> commit -> print the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from insights_link.batch import ActivitySpec
from insights_link.contract import (
    DEFAULT_ACTIVITY_NAME,
    DEFAULT_ACTIVITY_TYPE,
    DEFAULT_DATA_SOURCE,
    REASONS,
    ContractError,
    activity_columns,
    check_name,
)
from insights_link.inputs import DEFAULT_BLOCK_RECORDS, FORMATS, InputError, InputFile, resolve_inputs
from insights_link.lake import Lake, LakeState
from insights_link.records import parse_timestamp
from insights_link.storage import StorageError, is_remote, open_storage
from insights_link.transforms import ExportActivities, counter_totals

logger = logging.getLogger(__name__)

#: Rows per Parquet file: ~150 bytes a row compressed puts 2M rows near 300 MB (16 MB-1 GB aim).
DEFAULT_MAX_ROWS_PER_FILE = 2_000_000


class UsageError(ValueError):
    """A bad command line or configuration; the message names the bad value (exit code 2)."""


class RunFailed(RuntimeError):
    """The run could not complete; nothing was committed (exit code 1)."""


class ExportOptions(PipelineOptions):
    """insights-link's own options; every other option is Beam's."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append", default=None,
                            help="file, glob or folder of exported events (repeatable)")
        parser.add_argument("--output", default=None, help="LAKE_ROOT: local folder or abfss:// URL")
        parser.add_argument("--data-source", dest="data_source", default=DEFAULT_DATA_SOURCE)
        parser.add_argument("--activity-name", dest="activity_name", default=DEFAULT_ACTIVITY_NAME)
        parser.add_argument("--activity-type", dest="activity_type", default=DEFAULT_ACTIVITY_TYPE)
        parser.add_argument("--input-format", dest="input_format", choices=FORMATS, default=None)
        parser.add_argument("--reprocess", action="store_true", default=False,
                            help="process inputs even if an earlier run committed them")
        parser.add_argument("--property", dest="properties", action="append", default=None,
                            help="extra Signal property to carry as a string column (repeatable)")
        parser.add_argument("--run-id", dest="run_id", default=None,
                            help="the run's id (default: UTC time + random suffix)")
        parser.add_argument("--run-time", dest="run_time", default=None,
                            help="the run's clock, ISO 8601 (default: now, UTC); sets LastUpdated")
        parser.add_argument("--max-rows-per-file", dest="max_rows_per_file", type=int,
                            default=DEFAULT_MAX_ROWS_PER_FILE)
        parser.add_argument("--block-records", dest="block_records", type=int,
                            default=DEFAULT_BLOCK_RECORDS)


@dataclass
class RunConfig:
    """The checked configuration of one run."""

    inputs: list[str]
    output: str
    data_source: str
    activity_name: str
    activity_type: str
    input_format: str | None
    reprocess: bool
    properties: tuple[str, ...]
    run_id: str
    run_time: datetime
    max_rows_per_file: int
    block_records: int
    beam_args: list[str] = field(default_factory=list)


class _StrictParser(_BeamArgumentParser):
    """Beam's parser, raising UsageError with argparse's one-line message instead of exiting."""

    def error(self, message: str):
        raise UsageError(message)


def _all_options_parser() -> argparse.ArgumentParser:
    """A parser that knows every Beam option and ours, to reject what neither knows."""
    parser = _StrictParser(allow_abbrev=False, add_help=False)
    seen = set()
    for cls in PipelineOptions.__subclasses__():
        if str(cls) not in seen:
            seen.add(str(cls))
            cls._add_argparse_args(parser)
    return parser


def parse_args(argv: list[str], now: datetime | None = None) -> tuple[RunConfig, PipelineOptions]:
    """Parse and check the command line; raises :class:`UsageError` naming the bad value."""
    _known, unknown = _all_options_parser().parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown argument(s): {' '.join(unknown)} "
                         "(a typo, or an unquoted glob the shell expanded? quote globs)")
    options = PipelineOptions(argv)
    ours = options.view_as(ExportOptions)
    if not ours.input:
        raise UsageError("--input is required")
    if not ours.output:
        raise UsageError("--output is required")
    try:
        check_name(ours.data_source, "--data-source")
        check_name(ours.activity_name, "--activity-name")
        properties = tuple(ours.properties or ())
        activity_columns(properties)
    except ContractError as exc:
        raise UsageError(str(exc)) from exc
    if ours.max_rows_per_file < 1:
        raise UsageError(f"--max-rows-per-file {ours.max_rows_per_file} must be at least 1")
    if ours.block_records < 1:
        raise UsageError(f"--block-records {ours.block_records} must be at least 1")
    if ours.run_time:
        run_time = parse_timestamp(ours.run_time)
        if isinstance(run_time, str):
            raise UsageError(f"--run-time {run_time}")
    else:
        run_time = now or datetime.now(UTC)
    run_id = ours.run_id or f"{run_time:%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:8]}"
    if not all(ch.isalnum() or ch in "_-" for ch in run_id):
        raise UsageError(f"--run-id {run_id!r} may hold only letters, digits, '_' and '-'")
    config = RunConfig(
        inputs=list(ours.input), output=ours.output, data_source=ours.data_source,
        activity_name=ours.activity_name, activity_type=ours.activity_type,
        input_format=ours.input_format, reprocess=ours.reprocess, properties=properties,
        run_id=run_id, run_time=run_time, max_rows_per_file=ours.max_rows_per_file,
        block_records=ours.block_records,
    )
    return config, options


def check_output(output: str) -> None:
    """A local LAKE_ROOT must be a folder we can create or write (checked before writing)."""
    if is_remote(output):
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
    """An input's identity across runs: location, size and modification time."""
    return f"{f.source}|{f.size}|{f.modified}"


def plan_inputs(files: list[InputFile], state: LakeState, reprocess: bool) -> tuple[list[InputFile], list[dict]]:
    """Which inputs to process; the report's ``inputs`` entries for all of them."""
    todo, entries = [], []
    for f in files:
        earlier = state.committed_inputs.get(fingerprint(f))
        entry = {"source": f.source, "format": f.fmt, "size": f.size, "modified": f.modified,
                 "fingerprint": fingerprint(f)}
        if earlier and not reprocess:
            entries.append(entry | {"status": "skipped", "committed_by": earlier})
        else:
            todo.append(f)
            entries.append(entry | {"status": "processed"})
    return todo, entries


def existing_partitions(lake: Lake, state: LakeState, table: str) -> dict[tuple[str, str], list[str]]:
    """Committed files per (table, date), as storage keys, for dedupe against earlier runs."""
    return {
        (table, day): [lake.key(loc) for loc in locations]
        for day, locations in state.partitions_by_date(table).items()
    }


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def run(argv: list[str] | None = None, clock: Clock = utc_now) -> dict:
    """Run one export; returns the committed run report. Raises UsageError / RunFailed.

    ``clock`` is the run's injectable clock: it gives ``started_at`` (and LastUpdated, unless
    ``--run-time`` fixes it) and ``finished_at``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config, options = parse_args(argv, clock())
    try:
        files = resolve_inputs(config.inputs, config.input_format)
    except InputError as exc:
        raise UsageError(str(exc)) from exc
    except StorageError as exc:
        raise RunFailed(str(exc)) from exc
    check_output(config.output)
    started = config.run_time
    try:
        lake = Lake(open_storage(config.output), config.data_source)
        lake.recover()
        state = lake.read_state()
    except StorageError as exc:
        raise RunFailed(str(exc)) from exc
    columns = activity_columns(config.properties)
    declared = state.columns.get(config.activity_name)
    if declared is not None and declared != [c.name for c in columns]:
        raise UsageError(
            f"table {config.activity_name!r} already has columns {declared}; this run would write "
            f"{[c.name for c in columns]} (Customer Insights rejects a changed column set)")
    todo, entries = plan_inputs(files, state, config.reprocess)
    spec = ActivitySpec(config.activity_name, config.activity_type, config.properties,
                        config.run_id, config.run_time)
    report = {
        "run_id": config.run_id, "status": "running", "started_at": _iso(started),
        "data_source": config.data_source, "output": lake.describe(),
        "table": config.activity_name, "inputs": entries,
    }
    logger.info("run %s: %d input file(s), %d to process, %d skipped", config.run_id,
                len(files), len(todo), len(files) - len(todo))
    try:
        outcome = _run_pipeline(config, options, lake, state, spec, todo)
        _check_balance(outcome)
        report.update(_counts(outcome), finished_at=_iso(clock()))
        report = lake.commit(config.run_id, report, outcome["files"], outcome["dead_letter_files"],
                             {config.activity_name: columns})
    except (StorageError, RunFailed, OSError) as exc:
        _fail(lake, report, config, exc, clock)
        raise RunFailed(str(exc)) from exc
    except Exception as exc:  # a worker error surfaces here wrapped by the runner
        _fail(lake, report, config, exc, clock)
        raise RunFailed(f"pipeline failed: {_first_line(exc)}") from exc
    return report


def _run_pipeline(config: RunConfig, options: PipelineOptions, lake: Lake, state: LakeState,
                  spec: ActivitySpec, todo: list[InputFile]) -> dict:
    from insights_link.transforms import empty_outcome

    if not todo:
        return empty_outcome()
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"  # DirectRunner tries GitHub first
    existing = existing_partitions(lake, state, config.activity_name)
    p = beam.Pipeline(options=options)
    _ = (
        p
        | "Inputs" >> beam.Create(todo)
        | "Export" >> ExportActivities(spec, config.output, config.data_source, existing,
                                       config.block_records, config.max_rows_per_file)
    )
    result = p.run()
    state_name = result.wait_until_finish()
    if state_name not in (None, "DONE"):
        raise RunFailed(f"the pipeline ended in state {state_name}")
    logger.debug("metrics: %s", dict(counter_totals(result)))
    key = lake.staging(config.run_id, "outcome.json")
    return json.loads(lake.storage.read_bytes(key))


def _check_balance(outcome: dict) -> None:
    rejected = sum(outcome["rejected"].values())
    accounted = outcome["activities_written"] + outcome["duplicates_dropped"] + rejected
    if accounted != outcome["records_read"]:
        raise RunFailed(
            f"records do not balance: read {outcome['records_read']}, accounted for {accounted}")


def _counts(outcome: dict) -> dict:
    return {
        "records_read": outcome["records_read"],
        "activities_written": outcome["activities_written"],
        "duplicates_dropped": outcome["duplicates_dropped"],
        "rejected": {reason: outcome["rejected"].get(reason, 0) for reason in REASONS},
    }


def _fail(lake: Lake, report: dict, config: RunConfig, exc: BaseException, clock: Clock) -> None:
    report = dict(report, error=_first_line(exc), finished_at=_iso(clock()))
    try:
        lake.record_failure(config.run_id, report)
    except StorageError as cleanup:
        logger.warning("could not record the failure: %s", cleanup)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1] if "Traceback" in text else text.splitlines()[0]
