"""Maintenance of a data source: ``compact`` (merge small files) and ``vacuum`` (delete files no
commit references any more). See docs/maintenance.md.

**Compaction** is a run like an export: under the data source's lock, after recovery, it plans
from one snapshot, writes merged Parquet into its own staging folder (named like any run's
files: ``<Table>_<yyyymmdd>_<run>_<nnn>.parquet``), checks per (table, date) that the merged
files hold exactly the rows of the files they replace (row count and a sum of row hashes), and
commits with :meth:`~insights_link.lake.commit.Lake.commit`: the merged files are added and the
replaced ones removed in one conditional step (``data_change=False``). The replaced files stay
on storage, so a reader holding the previous manifest or Delta version keeps working; only
``vacuum`` deletes them. CDM tables are compacted in ``FullData/`` only: an
``IncrementalData/<hour>/Upserts`` folder Customer Insights may already have read is never
rewritten. Memory: one bin of small files at a time (at most the target size of input Parquet).

**Vacuum** deletes, under the lock, exporter-written Parquet files below the table folders that
no commit references and that have been unreferenced for longer than the retention. When a
file became unreferenced: the ``removed_at`` (else ``finished_at``) time of the committed report
that lists it in ``partitions_removed``, else the first time a vacuum saw it unreferenced (kept
in ``_state/vacuum.json``). Delta tables are asked with Delta's own vacuum (dry run) which files
it would delete; of those only exporter-written ones are deleted, through the storage layer.
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from insights_link.checkpoints import checkpoint
from insights_link.core.contract import Column, columns_schema
from insights_link.errors import InsightsLinkError, UsageError
from insights_link.lake.commit import Lake
from insights_link.lake.layout import COMMIT_RECORD, date_of_partition, partition_file_name
from insights_link.lake.parquet import UnreadableParquet, read_committed, write_parquet
from insights_link.storage import StorageError, is_remote

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_TARGET_MB = 256
DEFAULT_RETAIN_HOURS = 168
MAX_ROWS_PER_FILE = 2_000_000  # the export's default --max-rows-per-file
VACUUM_STATE = "vacuum.json"
SKEW_TOLERANCE_HOURS = 0.01  # 36 s: the operation's clock read moments before Delta's
SORT_KEYS = [("ActivityTime", "ascending"), ("ActivityId", "ascending")]

_NAME = r"(?P<table>[A-Za-z][A-Za-z0-9_]*)"
_FILE = r"(?P=table)_(?P<ymd>\d{8})_[^/]+_\d{3,}\.parquet"
#: where the exporter puts its files (CDM FullData, CDM IncrementalData Upserts and forget's
#: Deletes, Delta partitions)
_EXPORTER_FILES = [
    re.compile(rf"{_NAME}/FullData/(?P<y>\d{{4}})/(?P<m>\d{{2}})/(?P<d>\d{{2}})/{_FILE}"),
    re.compile(rf"{_NAME}/IncrementalData/\d{{4}}/\d{{2}}/\d{{2}}/\d{{2}}/(Upserts|Deletes)/{_FILE}"),
    re.compile(rf"{_NAME}/ActivityDate=(?P<y>\d{{4}})-(?P<m>\d{{2}})-(?P<d>\d{{2}})/{_FILE}"),
]


class MaintenanceError(InsightsLinkError, RuntimeError):
    """Compaction or vacuum can't proceed as the data source is; the message says why."""


class ChecksumMismatch(MaintenanceError):
    """The merged files don't hold exactly the rows of the files they replace: nothing committed."""


def exporter_written(location: str) -> bool:
    """Whether ``location`` (relative to the data source) is where and how the exporter names its
    data files: ``<Table>/FullData/yyyy/mm/dd/<Table>_<yyyymmdd>_<run>_<nnn>.parquet`` (the date
    in the name equal to the folder's), ``<Table>/IncrementalData/yyyy/mm/dd/hh/Upserts/...`` or
    ``.../Deletes/...`` or ``<Table>/ActivityDate=yyyy-mm-dd/...``. Vacuum deletes nothing else."""
    for pattern in _EXPORTER_FILES:
        match = pattern.fullmatch(location)
        if match:
            folder_date = match.groupdict().get("y")
            return folder_date is None or match["ymd"] == f"{match['y']}{match['m']}{match['d']}"
    return False


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_run_id(lake: Lake, run_id: str) -> None:
    """A run id already used in the data source (a report, or a dead run's staging) is refused."""
    if lake.storage.exists(lake.key("_runs", f"{run_id}.json")) or lake.storage.list(lake.staging(run_id)):
        raise UsageError(
            f"--run-id {run_id!r} was already used in data source {lake.data_source!r}; "
            "run ids must be unique"
        )


# -- compaction ------------------------------------------------------------------------------


def fingerprint(table: pa.Table | pa.RecordBatchReader) -> tuple[int, str]:
    """(rows, checksum) of ``table`` (a reader is streamed): the checksum is the sum (mod 2**64,
    hex) of a hash of each row's values, so it is independent of row order and file boundaries."""
    names = ", ".join('"' + name.replace('"', '""') + '"' for name in table.schema.names)
    with duckdb.connect() as con:
        con.register("t", table)
        rows, total = con.execute(  # type: ignore[misc]
            f"SELECT count(*), coalesce(sum(hash({names})::HUGEINT), 0) FROM t"
        ).fetchone()
    return int(rows), f"{int(total) % (1 << 64):016x}"


def _file_fingerprint(lake: Lake, key: str) -> tuple[int, str]:
    """:func:`fingerprint` of a Parquet object, read back batch by batch (bounded memory)."""
    try:
        with lake.storage.open_read(key) as f:
            parquet = pq.ParquetFile(f)
            batches = parquet.iter_batches(batch_size=1 << 17)
            return fingerprint(pa.RecordBatchReader.from_batches(parquet.schema_arrow, batches))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UnreadableParquet(f"{lake.storage.describe(key)} is not readable Parquet ({exc})") from exc


def plan_bins(files: dict[str, int], target: int) -> list[tuple[list[str], int]]:
    """Bin small files (location -> bytes, each below ``target``) first-fit decreasing into bins
    of at most ``target`` bytes; bins of one file are left alone (nothing to merge). So files
    near the target are not rewritten again and again: a second compaction finds nothing."""
    bins: list[tuple[list[str], int]] = []
    for location, size in sorted(files.items(), key=lambda kv: (-kv[1], kv[0])):
        for i, (members, total) in enumerate(bins):
            if total + size <= target:
                bins[i] = (members + [location], total + size)
                break
        else:
            bins.append(([location], size))
    return [(sorted(members), total) for members, total in bins if len(members) > 1]


def compact(lake: Lake, run_id: str, clock: Clock, target_bytes: int) -> dict:
    """Merge small files of each table and date of ``lake`` (lock held by the caller); returns the
    committed report (also written to ``_runs/<run_id>.json``)."""
    started = clock()
    check_run_id(lake, run_id)
    recovered = lake.recover()
    lake.sweep_abandoned()
    state = lake.read_state(cache=True)
    report: dict = {
        "run_id": run_id,
        "operation": "compact",
        "data_source": lake.data_source,
        "output": lake.describe(),
        "table_format": lake.format.name,
        "target_file_bytes": target_bytes,
        "started_at": _iso(started),
        "recovered": recovered,
        "tables": {},
        "dates": [],
    }
    try:
        files, removed, columns = _compact_tables(lake, run_id, state.tables, target_bytes, report)
        report["nothing_to_do"] = not removed
        report["finished_at"] = _iso(clock())
        if removed:
            report["removed_at"] = report["finished_at"]
        lake.check_lock()
        return lake.commit(run_id, report, files, [], columns, removed=removed, data_change=False)
    except BaseException as exc:
        _settle_failure(lake, run_id, report, exc, clock)
        raise


def _settle_failure(lake: Lake, run_id: str, report: dict, exc: BaseException, clock: Clock) -> None:
    """Roll a failed compaction back (or forward, had it committed) like a dead run, now."""
    failed = dict(report, error=(str(exc).splitlines() or [type(exc).__name__])[0], finished_at=_iso(clock()))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        lake.record_failure(run_id, failed)
    except StorageError as cleanup:
        logger.warning("could not settle the failed compaction (the next run will): %s", cleanup)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _compact_tables(
    lake: Lake, run_id: str, tables: dict, target: int, report: dict
) -> tuple[list[dict], list[dict], dict[str, tuple[Column, ...]]]:
    files: list[dict] = []
    removed: list[dict] = []
    columns: dict[str, tuple[Column, ...]] = {}
    for name, held in sorted(tables.items()):
        # CDM: FullData only (hour folders stay as Customer Insights read them); Delta: every file
        candidates = list(held.partitions)
        sizes = {o.key[len(lake.key()) + 1 :]: o.size for o in lake.storage.list(lake.key(name))}
        by_date: dict[str, dict[str, int]] = {}
        for location in candidates:
            date = date_of_partition(location)
            if date is None or location not in sizes:
                logger.warning("leaving %s as it is (no event date in its name, or missing)", location)
                continue
            if sizes[location] < target:
                by_date.setdefault(date, {})[location] = sizes[location]
        summary = {
            "files_before": len(candidates),
            "files_after": len(candidates),
            "incremental_files": len(held.incremental),
            "dates_compacted": 0,
            "rows_merged": 0,
        }
        report["tables"][name] = summary
        for date in sorted(by_date):
            bins = plan_bins(by_date[date], target)
            if not bins:
                continue
            if name not in columns:
                columns[name] = lake.format.columns(lake.storage, lake.data_source, name)
            entry = _compact_date(lake, run_id, name, date, bins, columns[name], target, files)
            removed += [{"location": loc, "table": name, "date": date} for loc in entry["merged_files"]]
            entry["files_before"] = sum(1 for loc in candidates if date_of_partition(loc) == date)
            entry["files_after"] = entry["files_before"] - len(entry["merged_files"]) + len(entry["written"])
            report["dates"].append(entry)
            summary["files_after"] += entry["files_after"] - entry["files_before"]
            summary["dates_compacted"] += 1
            summary["rows_merged"] += entry["rows"]
    return files, removed, columns


def _compact_date(
    lake: Lake,
    run_id: str,
    table: str,
    date: str,
    bins: list[tuple[list[str], int]],
    columns: tuple[Column, ...],
    target: int,
    files: list[dict],
) -> dict:
    """Merge the bins of one (table, date) into staged files; check rows and checksum."""
    schema = columns_schema(columns)
    before_rows, before_sums, after_rows, after_sums = 0, 0, 0, 0
    merged, written = [], []
    index = 0
    for locations, size in bins:
        pieces = []
        for location in locations:
            piece = read_committed(lake.storage, lake.key(location))
            missing = [n for n in schema.names if n not in piece.column_names]
            if missing:
                raise MaintenanceError(
                    f"{location} lacks the table's columns {missing}; nothing was committed"
                )
            pieces.append(piece.select(schema.names).cast(schema))
        rows = pa.concat_tables(pieces)  # no copy: the pieces' chunks
        del pieces
        n, checksum = fingerprint(rows)
        before_rows, before_sums = before_rows + n, before_sums + int(checksum, 16)
        rows = rows.sort_by(SORT_KEYS)  # the sorted copy is what stays
        # split only when one output would exceed the target (or the export's most rows a file)
        parts = max(1, math.ceil(size / target), math.ceil(rows.num_rows / MAX_ROWS_PER_FILE))
        step = math.ceil(rows.num_rows / parts) if rows.num_rows else 1
        for start in range(0, max(rows.num_rows, 1), step):
            name = partition_file_name(table, date, run_id, index)
            index += 1
            staged = lake.staging(run_id, "data", table, name)
            count = write_parquet(lake.storage, staged, rows.slice(start, step), schema)
            location = lake.format.location(table, date, name)
            files.append(
                {
                    "staged": staged,
                    "name": name,
                    "table": table,
                    "date": date,
                    "rows": count,
                    "location": location,
                    "kind": "full",
                }
            )
            written.append(location)
            n, checksum = _file_fingerprint(lake, staged)  # what was written, read back
            after_rows, after_sums = after_rows + n, after_sums + int(checksum, 16)
        merged += locations
        checkpoint("compact_after_staged_bin", table=table, date=date)
    before = f"{before_sums % (1 << 64):016x}"
    after = f"{after_sums % (1 << 64):016x}"
    if (before_rows, before) != (after_rows, after):
        raise ChecksumMismatch(
            f"table {table!r}, date {date}: the merged files hold {after_rows} rows (checksum {after}), "
            f"the files they replace {before_rows} (checksum {before}); nothing was committed"
        )
    logger.info(
        "table %s, %s: %d file(s) merged into %d (%d rows)",
        table,
        date,
        len(merged),
        len(written),
        after_rows,
    )
    return {
        "table": table,
        "date": date,
        "merged_files": sorted(merged),
        "written": written,
        "rows": after_rows,
        "checksum_before": before,
        "checksum_after": after,
    }


# -- vacuum ----------------------------------------------------------------------------------


def vacuum(lake: Lake, run_id: str, clock: Clock, retain_hours: float, dry_run: bool = False) -> dict:
    """Delete files no commit references any more, unreferenced for longer than ``retain_hours``
    (the lock held by the caller unless ``dry_run``, which deletes and writes nothing); returns
    the report (also written to ``_runs/<run_id>.json`` unless ``dry_run``)."""
    started = clock()
    lake.check_format()
    recovered: dict[str, str] = {}
    if not dry_run:
        check_run_id(lake, run_id)
        recovered = lake.recover()
        lake.sweep_abandoned()
    snapshot = lake.snapshot()
    referenced = snapshot.referenced()
    retention = timedelta(hours=retain_hours)
    if lake.format.name == "delta":
        doomed, waiting = _delta_candidates(lake, snapshot, referenced, clock(), retain_hours)
    else:
        doomed, waiting = _cdm_candidates(lake, snapshot, referenced, started, retention, dry_run)
    report: dict = {
        "run_id": run_id,
        "operation": "vacuum",
        "status": "dry_run" if dry_run else "committed",
        "data_source": lake.data_source,
        "output": lake.describe(),
        "table_format": lake.format.name,
        "retain_hours": retain_hours,
        "started_at": _iso(started),
        "recovered": recovered,
        "deleted": [{"location": loc, "bytes": size} for loc, size in doomed],
        "bytes_deleted": sum(size for _loc, size in doomed),
        "waiting": waiting,
    }
    if dry_run:
        report["finished_at"] = _iso(clock())
        return report
    for location, _size in doomed:
        checkpoint("vacuum_before_delete", location=location)
        lake.check_lock()
        logger.info("deleting %s (unreferenced for longer than %g h)", location, retain_hours)
        lake.storage.delete(lake.key(location))
    if lake.format.name != "delta":
        _forget(lake, {loc for loc, _size in doomed})
    report["finished_at"] = _iso(clock())
    checkpoint("vacuum_before_report")
    lake.check_lock()
    lake.storage.write_if(
        lake.key("_runs", f"{run_id}.json"),
        (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        None,
    )
    return report


def _pending(lake: Lake) -> set[str]:
    """Locations a staged commit record lists: a dead run's files the next locked run settles
    (only a dry run, which does not recover, finds any)."""
    pending: set[str] = set()
    depth = lake.key().count("/") + 3  # <ds>/_staging/<run>/commit.json
    for obj in lake.storage.list(lake.key("_staging")):
        if obj.key.endswith("/" + COMMIT_RECORD) and obj.key.count("/") == depth:
            try:
                pending |= set(json.loads(lake.storage.read_bytes(obj.key)).get("locations", []))
            except ValueError:
                continue
    return pending


def _unreferenced(lake: Lake, snapshot, referenced: set[str]) -> dict[str, int]:
    """Exporter-written data files below the table folders that no commit references now,
    except those a staged commit record lists."""
    prefix = len(lake.key()) + 1
    pending = _pending(lake)
    found = {}
    for table in sorted(snapshot.tables):
        for obj in lake.storage.list(lake.key(table)):
            location = obj.key[prefix:]
            if location not in referenced and location not in pending and exporter_written(location):
                found[location] = obj.size
    return found


def _read_vacuum_state(lake: Lake) -> dict:
    key = lake.key("_state", VACUUM_STATE)
    try:
        state = json.loads(lake.storage.read_bytes(key)) if lake.storage.exists(key) else {}
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise MaintenanceError(
            f"{lake.describe()}/_state/{VACUUM_STATE} is damaged ({exc}); it only remembers when files "
            "became unreferenced: move it away and vacuum again (files then wait one more retention)"
        ) from exc
    state.setdefault("reports", [])
    state.setdefault("removed", {})
    state.setdefault("first_seen", {})
    return state


def _write_vacuum_state(lake: Lake, state: dict) -> None:
    state["reports"] = sorted(set(state["reports"]))
    lake.check_lock()
    lake.storage.write_bytes(
        lake.key("_state", VACUUM_STATE), json.dumps(state, indent=2, sort_keys=True).encode("utf-8")
    )


def _removal_times(lake: Lake, state: dict) -> None:
    """Add to ``state["removed"]`` when committed reports not read yet took files out of the
    tables (``partitions_removed``): their ``removed_at``, else ``finished_at``, else the
    report's storage time."""
    known = set(state["reports"])
    for obj in lake.storage.list(lake.key("_runs")):
        name = obj.key.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name[:-5] in known:
            continue
        try:
            report = json.loads(lake.storage.read_bytes(obj.key))
        except ValueError:
            logger.warning("cannot read run report %s; skipping it", obj.key)
            continue
        state["reports"].append(name[:-5])
        if not isinstance(report, dict) or report.get("status") != "committed":
            continue
        when = _parse_time(report.get("removed_at")) or _parse_time(report.get("finished_at")) or obj.modified
        for location in report.get("partitions_removed") or []:
            earlier = _parse_time(state["removed"].get(location))
            state["removed"][location] = _iso(min(when, earlier) if earlier else when)


def _cdm_candidates(
    lake: Lake, snapshot, referenced: set[str], now: datetime, retention: timedelta, dry_run: bool
) -> tuple[list[tuple[str, int]], list[dict]]:
    """CDM: the unreferenced exporter files and since when each is unreferenced (see module)."""
    state = _read_vacuum_state(lake)
    _removal_times(lake, state)
    unreferenced = _unreferenced(lake, snapshot, referenced)
    doomed, waiting = [], []
    for location, size in sorted(unreferenced.items()):
        since = _parse_time(state["removed"].get(location))
        why = "removed by a commit"
        if since is None:
            since = _parse_time(state["first_seen"].get(location)) or now
            state["first_seen"].setdefault(location, _iso(since))
            why = "first seen unreferenced by a vacuum"
        if now - since >= retention:
            doomed.append((location, size))
        else:
            waiting.append(
                {
                    "location": location,
                    "unreferenced_since": _iso(since),
                    "why": why,
                    "deletable_after": _iso(since + retention),
                }
            )
    # entries of files referenced again or gone are of no use any more
    for kind in ("removed", "first_seen"):
        state[kind] = {loc: t for loc, t in state[kind].items() if loc in unreferenced}
    if not dry_run:
        _write_vacuum_state(lake, state)
    return doomed, waiting


def _forget(lake: Lake, deleted: set[str]) -> None:
    """Drop deleted files from ``_state/vacuum.json``."""
    state = _read_vacuum_state(lake)
    for kind in ("removed", "first_seen"):
        state[kind] = {loc: t for loc, t in state[kind].items() if loc not in deleted}
    _write_vacuum_state(lake, state)


def _delta_candidates(
    lake: Lake, snapshot, referenced: set[str], now: datetime, retain_hours: float
) -> tuple[list[tuple[str, int]], list[dict]]:
    """Delta: what Delta's own vacuum (dry run, full) would delete, of it only exporter files.

    Delta measures the retention on the real clock, in whole hours; the operation's clock
    (``--run-time``) shifts it, so both agree on when a removal's ``deletionTimestamp`` (written
    on the operation's clock) expired. Rounded up, less a tolerance of 36 s so that the moments
    between reading the operation's clock and Delta reading its own don't add an hour."""
    from deltalake.exceptions import DeltaError

    from insights_link.lake.delta import DeltaFormat

    skew_hours = (datetime.now(UTC) - now).total_seconds() / 3600
    hours = max(0, math.ceil(retain_hours + skew_hours - SKEW_TOLERANCE_HOURS))
    delta = DeltaFormat()
    pending = _pending(lake)
    doomed, waiting = [], []
    for table in sorted(snapshot.tables):
        dt = delta.open(lake.storage, lake.data_source, table)
        try:
            listed = dt.vacuum(
                retention_hours=hours, dry_run=True, enforce_retention_duration=False, full=True
            )
        except (DeltaError, OSError) as exc:
            raise StorageError(
                f"Delta's vacuum (dry run) of table {table!r} failed: {_one_line(lake, exc)}"
            ) from exc
        chosen = {f"{table}/{path}" for path in listed}
        sizes = {o.key[len(lake.key()) + 1 :]: o.size for o in lake.storage.list(lake.key(table))}
        for location in sorted(sizes):
            if location in referenced or location in pending or not exporter_written(location):
                continue
            if location in chosen:
                doomed.append((location, sizes[location]))
            else:
                waiting.append({"location": location, "why": "within Delta's retention"})
    return doomed, waiting


def _one_line(lake: Lake, exc: BaseException) -> str:
    """One line of a delta-rs error, without secrets (object-store errors can quote URLs)."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    if is_remote(lake.storage.url):
        from insights_link.storage.azure import scrub

        text = scrub(text)
    return text[:300]
