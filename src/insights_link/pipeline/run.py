"""The run: ``run(argv)`` is the one entry point the CLI and launchers use.

A run: parse and check options and the job file (usage errors before anything is written) ->
resolve inputs -> take the data source's lock -> recover what a dead run left -> skip inputs
earlier runs committed -> run the Beam pipeline (writes only to staging) -> check the balance and
the rejected ratio -> commit -> report.

A dry run (``--dry-run``) does the same reading, checking and deduplication without the lock,
recovery or commit: the pipeline stages into a temporary local folder, the lake is only read.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from insights_link import lifecycle
from insights_link.core.batch import ActivitySpec
from insights_link.core.blocks import InputFile
from insights_link.core.contract import (
    REASONS,
    activity_columns,
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
from insights_link.lake import table_format
from insights_link.lake.commit import (
    CommitLost,
    CommitUnfinished,
    CommitUnknown,
    Lake,
    LakeBusy,
    LakeState,
)
from insights_link.lake.deadletters import dry_replay, replay_files, settle_replays, start_replay
from insights_link.lifecycle import mark_launcher
from insights_link.pipeline.graph import (
    COUNTS,
    NAMES_SEEN,
    PRESENT,
    ExportActivities,
    counter_totals,
    empty_counts,
    empty_outcome,
)
from insights_link.pipeline.options import RunConfig, parse_args
from insights_link.pipeline.plan import existing_partitions, plan_inputs
from insights_link.progress import Progress, mode_for
from insights_link.storage import CredentialsError, LockLost, StorageError, open_storage
from insights_link.storage.resolve import InputError, resolve_inputs

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def run(
    argv: list[str] | None = None,
    clock: Clock = utc_now,
    on_config: Callable[[RunConfig], None] | None = None,
    select: Callable[[dict[str, list[InputFile]]], dict[str, list[InputFile]]] | None = None,
) -> dict:
    """Run one export; returns the committed run report. Raises UsageError / RunFailed.

    ``clock`` is the run's injectable clock: it gives ``started_at``, LastUpdated, ``finished_at``
    and the commit hour of incremental files. ``--run-time`` fixes it for the whole run.
    ``on_config`` sees the checked configuration first (the CLI sets up logging from it, so job
    files' ``log_format``, ``quiet`` and ``verbose`` count like the flags). ``select`` narrows
    the resolved inputs (``export --watch`` runs each window as a run of the files it chose).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config, options = parse_args(argv, clock())
    if on_config is not None:
        on_config(config)
    if config.clock_fixed:

        def clock() -> datetime:
            return config.run_time

    inputs = _resolve_all(config)
    if select is not None:
        inputs = Inputs(select(inputs.files), inputs.warnings)
    if config.replay:
        inputs = Inputs(replay_files(inputs.files), inputs.warnings)
    try:
        lake = Lake(
            open_storage(config.output), config.data_source, table_format(config.table_format), clock=clock
        )
        if config.grant_read:
            _check_grant_read(lake)
        if config.dry_run:
            return _dry_run(config, options, lake, inputs, clock)
        if select is not None and not any(inputs.files.values()):
            raise EmptyWindow("every file it chose changed since")
        with lake.locked(config.lock_wait):
            return _locked_run(config, options, lake, inputs, clock, window=select is not None)
    except LakeBusy as exc:
        raise DataSourceBusy(str(exc)) from exc
    except (StorageError, OSError) as exc:
        raise RunFailed(str(exc)) from exc


class EmptyWindow(Exception):
    """A window of ``export --watch`` found none of its files as chosen (changed since, or
    committed by another run meanwhile): nothing is written, the files wait for a later window."""


@dataclass(frozen=True)
class Inputs:
    """Each activity's input files, and the warnings about files left out (once per input)."""

    files: dict[str, list[InputFile]]
    warnings: list[str]


def _resolve_all(config: RunConfig) -> Inputs:
    try:
        resolved = {a.name: resolve_inputs(list(a.inputs), config.input_format) for a in config.activities}
        warnings = list(dict.fromkeys(w for r in resolved.values() for w in r.warnings))
        return Inputs({name: r.files for name, r in resolved.items()}, warnings)
    except InputError as exc:
        raise UsageError(str(exc)) from exc
    except CredentialsError as exc:
        raise UsageError(f"--input: {exc}") from exc
    except StorageError as exc:
        raise RunFailed(str(exc)) from exc


def _check_grant_read(lake: Lake) -> None:
    """--grant-read needs ADLS Gen2 with a hierarchical namespace: say so before writing."""
    check = getattr(lake.storage, "is_hns_enabled", None)
    if check is None:
        raise UsageError("--grant-read sets ADLS Gen2 ACLs; the output is a local folder")
    if not check():
        raise UsageError(
            f"--grant-read needs an account with a hierarchical namespace (ADLS Gen2); "
            f"{lake.storage.describe()} has none"
        )


@dataclasses.dataclass
class _Plan:
    """What a run (or dry run) will do, decided from the inputs and the committed state."""

    state: LakeState
    columns: dict
    all_files: list[InputFile]
    work: list[tuple[InputFile, tuple[str, ...]]]
    entries: list[dict]
    specs: dict[str, ActivitySpec]


def _clipped(name: str, limit: int = 40) -> str:
    """A seen Signal.Name as it may appear in one warning line: quoted, escaped, short."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _report_head(config: RunConfig, lake: Lake, plan: _Plan, status: str, clock: Clock) -> dict:
    """The fields a run report starts with, for a real run and a dry run alike."""
    return {
        "run_id": config.run_id,
        "status": status,
        "started_at": _iso(clock()),
        "data_source": config.data_source,
        "output": lake.describe(),
        "layout": config.layout,
        "table_format": config.table_format,
        "tables": sorted(plan.specs),
        "inputs": plan.entries,
    }


def _check_run_id(config: RunConfig, lake: Lake) -> None:
    """A run id already used (reported, or left in staging by a dead run) is a usage error,
    found before recovery writes anything."""
    if lake.storage.exists(lake.key("_runs", f"{config.run_id}.json")) or lake.storage.list(
        lake.staging(config.run_id)
    ):
        raise UsageError(
            f"--run-id {config.run_id!r} was already used in data source "
            f"{config.data_source!r}; run ids must be unique"
        )


def _plan(config: RunConfig, lake: Lake, files_by_activity: dict[str, list[InputFile]], cache: bool) -> _Plan:
    """Check the run id and the tables' columns, and pick the inputs to read (only reads the
    lake, apart from the runs-index cache when ``cache``)."""
    _check_run_id(config, lake)
    try:
        state = lake.read_state(cache=cache)
    except UsageError:
        raise
    except (ValueError, KeyError) as exc:  # a damaged manifest, entity document or report
        raise RunFailed(f"cannot read the data source's committed state: {exc}") from exc
    columns = {a.name: activity_columns(a.properties) for a in config.activities}
    for name, cols in columns.items():
        declared = state.columns.get(name)
        if declared is not None and declared != [c.name for c in cols]:
            raise UsageError(
                f"table {name!r} already has columns {declared}; this run would write "
                f"{[c.name for c in cols]} (Customer Insights rejects a changed column set)"
            )
    all_files = sorted(
        {(f.root, f.key): f for fs in files_by_activity.values() for f in fs}.values(),
        key=lambda f: (f.root, f.key),
    )
    all_files = [dataclasses.replace(f, rank=rank) for rank, f in enumerate(all_files)]
    wanted: dict[tuple[str, str], tuple[str, ...]] = {}
    for name, fs in files_by_activity.items():
        for f in fs:
            wanted[(f.root, f.key)] = (*wanted.get((f.root, f.key), ()), name)
    work, entries = plan_inputs(all_files, wanted, state, config.reprocess)
    specs = {
        a.name: ActivitySpec(
            a.name,
            a.activity_type,
            a.properties,
            config.run_id,
            config.run_time,
            a.event_names,
            config.since,
            config.until,
        )
        for a in config.activities
    }
    return _Plan(state, columns, all_files, work, entries, specs)


def _locked_run(
    config: RunConfig,
    options: PipelineOptions,
    lake: Lake,
    inputs: Inputs,
    clock: Clock,
    window: bool = False,
) -> dict:
    _check_run_id(config, lake)
    lake.recover()
    lake.sweep_abandoned()
    plan = _plan(config, lake, inputs.files, cache=True)
    state, columns, all_files, work, specs = plan.state, plan.columns, plan.all_files, plan.work, plan.specs
    if window and not work:  # another run committed the window's files meanwhile: no empty commit
        raise EmptyWindow("another run committed its files meanwhile")
    report = _report_head(config, lake, plan, "running", clock) | {"warnings": list(inputs.warnings)}
    settle_replays(lake, clock)  # the resolutions of a replay that committed but died before writing them
    if config.replay:
        replay = start_replay(lake, config.run_id, work, config.output, config.dedupe_window_days)
        work, report["replay"] = replay.work, dict(replay.counts)
    logger.info(
        "run %s: %d input file(s), %d to process, %d skipped",
        config.run_id,
        len(all_files),
        len(work),
        len(all_files) - len(work),
    )
    try:
        display = Progress(len(work), sum(f.size for f, _ in work), mode_for(config.quiet, config.log_format))
        with display:
            outcome = _run_pipeline(config, options, lake, state, specs, work)
        counts = _counts(outcome, specs)
        report.update(counts)
        report["unreadable_inputs"] = outcome.get("unreadable_inputs", [])
        report["warnings"] = inputs.warnings + _outcome_warnings(config, outcome)
        _log_warnings(report["warnings"])
        _check_balance(counts)
        _check_rejected_ratio(counts, config.max_rejected_ratio)
        _check_unreadable(report["unreadable_inputs"], config.fail_on_unreadable)
        finished = clock()
        report["finished_at"] = _iso(finished)
        located = lake.locate(outcome["files"], config.layout, finished)
        logger.info(
            "committing %d file(s) and %d dead letter(s) to %s",
            len(located),
            sum(counts["rejected"].values()),
            lake.describe(),
        )
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
    if config.replay:
        try:
            settled = settle_replays(lake, clock, only=config.run_id)
        except StorageError as exc:
            raise CommittedWithErrors(
                f"the run committed, but recording what the replay resolved failed ({exc}); "
                "the next run records it"
            ) from exc
        report["replay"] = report.get("replay", {}) | settled.get(config.run_id, {})
    if config.grant_read:
        try:
            lake.storage.grant_read(lake.key(), list(config.grant_read))
        except StorageError as exc:
            raise GrantFailed(
                f"the run committed, but --grant-read failed (re-run to grant again): {exc}"
            ) from exc
    return report


def _run_pipeline(
    config: RunConfig,
    options: PipelineOptions,
    lake: Lake,
    state: LakeState,
    specs: dict[str, ActivitySpec],
    work: list[tuple[InputFile, tuple[str, ...]]],
    staging_url: str | None = None,
) -> dict:
    """Run the Beam pipeline; its workers write below ``staging_url`` (default the lake) and read
    the lake's committed files for dedupe. Returns the merged outcome."""
    staging_url = staging_url or config.output
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
        | "Export"
        >> ExportActivities(
            specs,
            config.run_id,
            staging_url,
            config.data_source,
            existing,
            config.block_records,
            config.max_rows_per_file,
            recorded,
            existing_url=config.output,
            window_days=config.dedupe_window_days,
            chunk_bytes=max(int(config.chunk_mb * (1 << 20)), 1),
        )
    )
    mark_launcher()
    result = p.run()
    state_name = result.wait_until_finish()
    if state_name not in (None, "DONE"):
        raise RunFailed(f"the pipeline ended in state {state_name}")
    logger.debug("metrics: %s", dict(counter_totals(result)))
    staging = lake.storage if staging_url == config.output else open_storage(staging_url)
    return json.loads(staging.read_bytes(lake.staging(config.run_id, "outcome.json")))


#: Signal.Name values a warning about an --event-name that matched nothing shows
NAMES_SHOWN = 5
#: example rejected records per reason a dry run shows, and how much of each payload
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 200


def _outcome_warnings(config: RunConfig, outcome: dict) -> list[str]:
    """What did nothing: a --property no record held, an --event-name no record matched.

    Only activities that read records are judged (inputs skipped as committed say nothing).
    """
    warnings = []
    several = len(config.activities) > 1
    for a in config.activities:
        got = outcome["tables"].get(a.name, {})
        if not got.get("records_read"):
            continue
        where = f" (activity {a.name})" if several else ""
        present = got.get(PRESENT, {})
        for prop in a.properties:
            if not present.get(prop):
                warnings.append(f"--property {prop} was not present in any record{where}")
        seen = got.get(NAMES_SEEN, {})
        top = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:NAMES_SHOWN]
        shown = ", ".join(f"{_clipped(name)} {count}" for name, count in top) or "no Signal.Name values"
        if len(seen) > NAMES_SHOWN:
            shown += ", ..."
        for name in dict.fromkeys(a.event_names or ()):
            if not seen.get(name):
                warnings.append(f"--event-name {name!r} matched no event{where} (seen: {shown})")
    return warnings


def _log_warnings(warnings: list[str]) -> None:
    for text in warnings:
        logger.warning("%s", text)


def _dry_run(config: RunConfig, options: PipelineOptions, lake: Lake, inputs: Inputs, clock: Clock) -> dict:
    """Read, check and dedupe everything as a run would, and write nothing to the output.

    No lock, no recovery, no runs-index cache: the lake is only read. The pipeline stages into a
    temporary local folder (so a runner's workers must see this machine's disk), removed after.
    Returns the would-be report (status "dry_run") with example rejected records per reason;
    raises TooManyRejected when the run would fail its thresholds.
    """
    plan = _plan(config, lake, inputs.files, cache=False)
    report = _report_head(config, lake, plan, "dry_run", clock)
    unsettled = sorted(
        {obj.key.split("/")[2] for obj in lake.storage.list(lake.key("_staging")) if obj.key.count("/") >= 3}
    )
    notes = (
        [
            f"the data source holds {len(unsettled)} unsettled run(s) in _staging; a real run settles "
            "them first, which can change what it skips and drops as duplicates"
        ]
        if unsettled
        else []
    )
    logger.info(
        "dry run %s: %d input file(s), %d to read, %d skipped; nothing is written to %s",
        config.run_id,
        len(plan.all_files),
        len(plan.work),
        len(plan.all_files) - len(plan.work),
        lake.describe(),
    )
    work_dir = tempfile.mkdtemp(prefix="insights-link-dry-run-")
    try:
        if config.replay:
            replay = dry_replay(lake, plan.work, work_dir)
            plan.work, report["replay"] = replay.work, dict(replay.counts)
        display = Progress(
            len(plan.work), sum(f.size for f, _ in plan.work), mode_for(config.quiet, config.log_format)
        )
        with display:
            outcome = _run_pipeline(
                config, options, lake, plan.state, plan.specs, plan.work, staging_url=work_dir
            )
        examples = _examples(open_storage(work_dir), outcome["dead_letter_files"])
    except (StorageError, RunFailed, UsageError, OSError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a worker error surfaces here wrapped by the runner
        if lifecycle.received_signal is not None:  # a signal raised inside a DoFn, re-wrapped
            raise Interrupted(lifecycle.received_signal) from exc
        raise RunFailed(f"pipeline failed: {_first_line(exc)}") from exc
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    counts = _counts(outcome, plan.specs)
    report.update(counts)
    report["unreadable_inputs"] = outcome.get("unreadable_inputs", [])
    report["warnings"] = inputs.warnings + notes + _outcome_warnings(config, outcome)
    report["examples"] = examples
    report["finished_at"] = _iso(clock())
    _log_warnings(report["warnings"])
    _check_balance(counts)
    try:
        _check_rejected_ratio(counts, config.max_rejected_ratio)
        _check_unreadable(report["unreadable_inputs"], config.fail_on_unreadable)
    except TooManyRejected as exc:
        failed = TooManyRejected(f"dry run, nothing was written; a real run would fail: {exc}")
        failed.report = report  # type: ignore[attr-defined]
        raise failed from exc
    return report


def _examples(staging, keys: list[str]) -> dict[str, list[dict]]:
    """A few staged dead letters per reason (in input order), payloads cut to a readable length."""
    examples: dict[str, list[dict]] = {}
    for key in sorted(keys):
        if all(len(examples.get(r, [])) >= EXAMPLES_PER_REASON for r in REASONS):
            break
        for line in gzip.decompress(staging.read_bytes(key)).splitlines():
            letter = json.loads(line)
            shown = examples.setdefault(letter["reason"], [])
            if len(shown) < EXAMPLES_PER_REASON:
                payload = letter.get("payload")
                text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
                shown.append(
                    {
                        "source": letter["source"],
                        "position": letter["position"],
                        "detail": _clip(letter["detail"]),
                        "payload": _clip(text),
                    }
                )
    return {reason: examples[reason] for reason in REASONS if reason in examples}


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


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
        accounted = (
            c["activities_written"]
            + c["duplicates_dropped"]
            + sum(c["rejected"].values())
            + c["filtered_out"]
        )
        if accounted != c["records_read"]:
            raise RunFailed(
                f"records of {name} do not balance: read {c['records_read']}, accounted for {accounted}"
            )


def _check_unreadable(unreadable: list[dict], fail: bool) -> None:
    """With ``--fail-on-unreadable``, a file that could not be read to its end fails the run."""
    if fail and unreadable:
        names = ", ".join(sorted({u["source"] for u in unreadable}))
        raise TooManyRejected(
            f"{len(unreadable)} input file(s) could not be read to their end ({names}) "
            "and --fail-on-unreadable is set; nothing was committed"
        )


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
            f"--max-rejected-ratio {limit:g}; nothing was committed"
        )


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
