"""Read-only inspection of data sources: what ``insights-link status`` shows and what
``insights-link verify`` checks.

Everything goes through the :class:`~insights_link.storage.Storage` interface and the table
formats' own readers (the CDM manifest, the Delta logs through delta-rs), so it works the same
on local and ``abfss://`` lakes. Nothing here takes the data source's lock or writes to the lake:
the lock is only *looked at* (``Storage.lock_holder``), and the id checks run in a DuckDB
database in a local temporary folder.

Row counts come from Parquet footers or Delta ``numRecords`` statistics (never the data); the
uniqueness check streams the ``ActivityId`` column file by file into DuckDB, which spills to disk
beyond its memory limit, so memory stays bounded whatever the table's size.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from insights_link.core.contract import ContractError, check_name
from insights_link.errors import InsightsLinkError, UsageError
from insights_link.lake.cdm import MANIFEST_FILE, parse_manifest
from insights_link.lake.delta import LOG_FOLDER, PARTITION
from insights_link.lake.layout import COMMIT_RECORD, date_of_partition
from insights_link.storage import ObjectInfo, Storage, StorageError, join

logger = logging.getLogger(__name__)

#: Customer Insights reads at most this many files from one folder.
FOLDER_LIMIT = 1000
#: status calls a data folder crowded above this many files.
CROWDED_FOLDER = 900
#: Files smaller than this are "small" (compaction candidates).
SMALL_FILE_BYTES = 16 * 1024 * 1024
#: How many examples of duplicate ids verify names per table.
EXAMPLES = 5
#: The key every activity table has.
KEY = "ActivityId"

#: The Arrow kind a CDM data type is written as (see :func:`kind`).
CDM_KINDS = {
    "string": "string",
    "dateTime": "timestamp",
    "date": "date32[day]",
    "int64": "int64",
    "int32": "int32",
    "double": "double",
    "float": "float",
    "boolean": "bool",
    "bigInteger": "int64",  # share-profiles' integer attributes
    "list": "list<element: string>",  # share-profiles' Segments column
}

_HOLDER_SINCE = re.compile(r"since (\S+)")


class NoDataSource(UsageError):
    """The lake holds no data source of that name (or none at all)."""


@dataclass(frozen=True)
class Problem:
    """One thing a reader relies on that does not hold: a code, where, and what exactly."""

    code: str
    data_source: str
    location: str
    detail: str

    def line(self) -> str:
        where = f"{self.data_source}/{self.location}" if self.location else self.data_source
        return f"{self.code}: {where}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "data_source": self.data_source,
            "location": self.location,
            "detail": self.detail,
        }


@dataclass
class Table:
    """One committed table as its format declares it: files (data-source relative), the
    declared columns as (name, kind) pairs, and per file what the format knows already."""

    name: str
    format: str
    locations: list[str] = field(default_factory=list)
    columns: list[tuple[str, str]] | None = None  # None: no readable declaration
    rows: dict[str, int | None] = field(default_factory=dict)  # Delta numRecords, when present
    sizes: dict[str, int] = field(default_factory=dict)  # Delta add-action sizes
    dates: dict[str, str | None] = field(default_factory=dict)


@dataclass
class Source:
    """A data source as one read saw it: its tables, every object below it, and the problems
    found while reading its commit objects."""

    storage: Storage
    name: str
    formats: list[str]
    tables: list[Table]
    objects: dict[str, ObjectInfo]  # data-source relative key -> object
    problems: list[Problem]
    removed: set[str] = field(default_factory=set)  # Delta files a later commit removed
    deletes: set[str] = field(default_factory=set)  # CDM Deletes files (forget): keys, not rows

    def referenced(self) -> set[str]:
        return {loc for t in self.tables for loc in t.locations} | self.deletes

    @property
    def format(self) -> str | None:
        return "both" if len(self.formats) > 1 else self.formats[0] if self.formats else None


# -- finding and reading data sources ---------------------------------------------------------


def kind(arrow_type: pa.DataType) -> str:
    """A column type as readers see it: all string encodings are "string", a timestamp is
    "timestamp" when UTC-adjusted (has a time zone) and "timestamp_ntz" otherwise."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if getattr(pa.types, "is_string_view", None) and pa.types.is_string_view(arrow_type):
        return "string"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp" if arrow_type.tz else "timestamp_ntz"
    return str(arrow_type)


def _formats_of(storage: Storage, name: str) -> list[str]:
    formats = []
    if storage.exists(join(name, MANIFEST_FILE)):
        formats.append("cdm")
    if _delta_tables(storage, name):
        formats.append("delta")
    return formats


def _delta_tables(storage: Storage, name: str) -> list[str]:
    return [
        t
        for t in storage.folders(name)
        if not t.startswith("_") and LOG_FOLDER in storage.folders(join(name, t))
    ]


def _looks_like_data_source(storage: Storage, name: str) -> bool:
    """A manifest, a Delta table, or the tool's bookkeeping folders (a first run still going)."""
    if _formats_of(storage, name):
        return True
    return bool({"_runs", "_staging", "_deadletter"} & set(storage.folders(name))) or storage.exists(
        join(name, "_lock")
    )


def data_sources(storage: Storage, name: str | None) -> list[str]:
    """The data sources to inspect: ``name`` (a usage error when the lake has none of that
    name), or every data source directly below the lake root."""
    if name is not None:
        if not _looks_like_data_source(storage, name):
            raise NoDataSource(
                f"no data source {name!r} in {storage.describe()} (no manifest, no Delta tables, no runs)"
            )
        return [name]
    found = [
        n for n in storage.folders("") if not n.startswith((".", "_")) and _looks_like_data_source(storage, n)
    ]
    if not found:
        raise NoDataSource(f"no data source in {storage.describe()} (no manifest, no Delta tables, no runs)")
    return found


def read_source(storage: Storage, name: str) -> Source:
    """Read a data source's committed tables (every format it holds) and its object listing."""
    prefix = len(name) + 1
    objects = {o.key[prefix:]: o for o in storage.list(name)}
    formats = _formats_of(storage, name)
    source = Source(storage, name, formats, [], objects, [])
    if len(formats) > 1:
        source.problems.append(
            Problem(
                "conversion_unfinished",
                name,
                "",
                "holds both a CDM manifest and Delta tables: a conversion stopped half way "
                "(run insights-link convert again to finish it)",
            )
        )
    if "cdm" in formats:
        _read_cdm(source)
    if "delta" in formats:
        _read_delta(source)
    return source


def _read_cdm(source: Source) -> None:
    storage, name = source.storage, source.name
    try:
        tables = parse_manifest(storage.read_bytes(join(name, MANIFEST_FILE)))
    except (InsightsLinkError, ValueError) as exc:
        source.problems.append(Problem("unreadable_manifest", name, MANIFEST_FILE, str(exc)))
        return
    for table_name, state in sorted(tables.items()):
        table = Table(table_name, "cdm", sorted(state.data_locations()))
        source.deletes |= set(state.deletes)
        table.dates = {loc: date_of_partition(loc) for loc in table.locations}
        document = f"{table_name}.cdm.json"
        try:
            doc = json.loads(storage.read_bytes(join(name, document)))
            attributes = doc["definitions"][0]["hasAttributes"]
            table.columns = [(a["name"], CDM_KINDS.get(a["dataType"], a["dataType"])) for a in attributes]
        except (StorageError, ValueError, KeyError, IndexError, TypeError) as exc:
            detail = "missing" if document not in source.objects else f"unreadable ({exc})"
            source.problems.append(
                Problem("unreadable_document", name, document, f"the entity document is {detail}")
            )
        source.tables.append(table)


def _read_delta(source: Source) -> None:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    storage, name = source.storage, source.name
    for table_name in _delta_tables(storage, name):
        uri, options = storage.external(join(name, table_name))
        try:
            dt = DeltaTable(uri, storage_options=options)
            adds = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
            schema = pa.schema(dt.schema().to_arrow())
        except (DeltaError, OSError, ValueError) as exc:
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
            source.problems.append(
                Problem("unreadable_log", name, f"{table_name}/{LOG_FOLDER}", f"the Delta log: {text}")
            )
            continue
        table = Table(table_name, "delta")
        table.columns = [(f.name, kind(f.type)) for f in schema if f.name != PARTITION]
        for add in adds:
            location = f"{table_name}/{add['path']}"
            table.locations.append(location)
            table.rows[location] = add.get("num_records")
            table.sizes[location] = add["size_bytes"]
            value = add.get(f"partition.{PARTITION}")
            table.dates[location] = value.isoformat() if value is not None else date_of_partition(location)
        table.locations.sort()
        source.tables.append(table)
        source.removed |= _removed_files(source, table_name)


def _removed_files(source: Source, table: str) -> set[str]:
    """Files a Delta commit removed (still on disk until a vacuum: not orphans)."""
    removed = set()
    log = f"{table}/{LOG_FOLDER}/"
    for rel in sorted(source.objects):
        if not (rel.startswith(log) and rel.endswith(".json")):
            continue
        for line in source.storage.read_bytes(join(source.name, rel)).splitlines():
            if b'"remove"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):  # delta-rs read it already
                    removed.add(f"{table}/{unquote(json.loads(line)['remove']['path'])}")
    return removed


# -- what lies around the tables -----------------------------------------------------------------


def lock_state(storage: Storage, name: str) -> dict[str, Any]:
    """Whether a run holds the data source's lock, who and since when; never takes it."""
    probe = getattr(storage, "lock_holder", None)
    if probe is None:
        return {"held": None, "holder": None, "since": None}
    holder = probe(join(name, "_lock"))
    since = _HOLDER_SINCE.search(holder) if holder else None
    return {"held": holder is not None, "holder": holder, "since": since.group(1) if since else None}


def staging(source: Source) -> list[dict[str, Any]]:
    """Run ids with a folder below ``_staging/`` (a live run's work, or a dead run's)."""
    runs: dict[str, dict[str, Any]] = {}
    for rel, obj in source.objects.items():
        parts = rel.split("/")
        if parts[0] == "_staging" and len(parts) >= 3:
            entry = runs.setdefault(
                parts[1], {"run_id": parts[1], "files": 0, "bytes": 0, "commit_record": False}
            )
            entry["files"] += 1
            entry["bytes"] += obj.size
            entry["commit_record"] |= parts[2] == COMMIT_RECORD and len(parts) == 3
    return [runs[r] for r in sorted(runs)]


def dead_letters(source: Source) -> dict[str, Any]:
    """Dead letters by reason over every ``_deadletter/*.jsonl.gz`` (streamed, line by line)."""
    by_reason: dict[str, int] = {}
    files = records = 0
    unreadable = []
    for rel in sorted(source.objects):
        if not (rel.startswith("_deadletter/") and rel.endswith(".jsonl.gz")):
            continue
        files += 1
        try:
            with source.storage.open_read(join(source.name, rel)) as raw, gzip.open(raw, "rt") as lines:
                for line in lines:
                    if line.strip():
                        reason = str(json.loads(line).get("reason", "unknown"))
                        by_reason[reason] = by_reason.get(reason, 0) + 1
                        records += 1
        except (OSError, EOFError, ValueError, StorageError) as exc:
            logger.warning("cannot read dead letters %s: %s", rel, exc)
            unreadable.append(rel)
    result: dict[str, Any] = {
        "files": files,
        "records": records,
        "by_reason": dict(sorted(by_reason.items())),
        "unreadable": unreadable,
    }
    try:  # the working set: a replayed letter's attempts count once, as open or resolved
        from insights_link.lake.deadletters import status_counts

        state = status_counts(source.storage, source.name)
    except (OSError, EOFError, ValueError, KeyError, StorageError) as exc:
        logger.warning("cannot tell open from resolved dead letters: %s", exc)
        return result | {"open": None, "resolved": None, "pending_replays": []}
    return result | {
        "open": state["open"],
        "resolved": state["resolved"],
        "pending_replays": state["pending_replays"],
    }


def _report_kind(report: dict) -> str:
    return str(report.get("operation") or report.get("kind") or "export")


def runs(source: Source, last: int) -> dict[str, Any]:
    """The ``last`` run reports, newest first (by the report's time, its object's time when it
    has none); only those are read."""
    keys = [
        (obj.modified, rel)
        for rel, obj in source.objects.items()
        if rel.startswith("_runs/") and rel.endswith(".json") and rel.count("/") == 1
    ]
    newest = sorted(keys, reverse=True)[: max(last, 0)]
    entries = []
    for modified, rel in newest:
        run_id = rel[len("_runs/") : -len(".json")]
        try:
            report = json.loads(source.storage.read_bytes(join(source.name, rel)))
            if not isinstance(report, dict):
                raise ValueError("not a JSON object")
        except (StorageError, ValueError) as exc:
            logger.warning("cannot read run report %s: %s", rel, exc)
            report = {"status": "unreadable"}
        rejected = report.get("rejected")
        entries.append(
            {
                "run_id": str(report.get("run_id", run_id)),
                "kind": _report_kind(report),
                "status": report.get("status"),
                "time": report.get("finished_at")
                or report.get("rolled_back_at")
                or report.get("started_at")
                or _iso(modified),
                "records_read": report.get("records_read"),
                "activities_written": report.get("activities_written"),
                "duplicates_dropped": report.get("duplicates_dropped"),
                "rejected": sum(rejected.values()) if isinstance(rejected, dict) else None,
                "filtered_out": report.get("filtered_out"),
                "error": report.get("error"),
            }
        )
    entries.sort(key=lambda e: str(e["time"]), reverse=True)
    return {"total": len(keys), "last": entries}


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _folder_counts(source: Source) -> dict[str, int]:
    """Files per data folder: every folder below a table folder, except Delta logs."""
    tables = {t.name for t in source.tables}
    counts: dict[str, int] = {}
    for rel in source.objects:
        top = rel.split("/", 1)[0]
        if "/" not in rel or top not in tables:
            continue
        folder = rel.rsplit("/", 1)[0]
        if f"/{LOG_FOLDER}" in f"/{folder}":
            continue
        counts[folder] = counts.get(folder, 0) + 1
    return counts


def _footer(storage: Storage, key: str) -> pq.FileMetaData:
    with storage.open_read(key) as f:
        return pq.ParquetFile(f).metadata


# -- status ------------------------------------------------------------------------------------


def status(storage: Storage, name: str, last_runs: int = 5) -> dict[str, Any]:
    """What a data source holds (see docs/status-verify.md for every field)."""
    source = read_source(storage, name)
    folders = _folder_counts(source)
    tables = []
    for table in source.tables:
        present = [loc for loc in table.locations if loc in source.objects]
        sizes = sorted(source.objects[loc].size for loc in present)
        rows, counted, unreadable = 0, 0, []
        for loc in present:
            n = table.rows.get(loc)
            if n is None:
                try:
                    n = _footer(storage, join(name, loc)).num_rows
                except (StorageError, OSError, pa.ArrowException) as exc:
                    logger.warning("cannot read the footer of %s: %s", loc, exc)
                    unreadable.append(loc)
                    continue
            rows += n
            counted += 1
        dates = sorted({d for loc in table.locations if (d := table.dates.get(loc))})
        crowded = [
            {"folder": f, "files": n}
            for f, n in sorted(folders.items())
            if n > CROWDED_FOLDER and f.split("/", 1)[0] == table.name
        ]
        tables.append(
            {
                "name": table.name,
                "format": table.format,
                "rows": rows,
                "rows_complete": counted == len(table.locations),
                "first_date": dates[0] if dates else None,
                "last_date": dates[-1] if dates else None,
                "dates": len(dates),
                "files": {
                    "count": len(table.locations),
                    "bytes": sum(sizes),
                    "smallest": sizes[0] if sizes else None,
                    "median": int(statistics.median(sizes)) if sizes else None,
                    "largest": sizes[-1] if sizes else None,
                    "under_16mb": sum(1 for s in sizes if s < SMALL_FILE_BYTES),
                },
                "missing_files": sorted(set(table.locations) - set(present)),
                "unreadable_files": unreadable,
                "crowded_folders": crowded,
            }
        )
    return {
        "name": name,
        "location": storage.describe(name),
        "format": source.format,
        "tables": tables,
        "runs": runs(source, last_runs),
        "dead_letters": dead_letters(source),
        "lock": lock_state(storage, name),
        "staging": staging(source),
        "problems_reading": [p.as_dict() for p in source.problems],
        "watch": watch_state(source),
    }


def watch_state(source: Source) -> dict[str, Any] | None:
    """The record ``export --watch`` keeps in ``_state/watch.json`` (the last window, the lag at
    its last poll), None when no watcher ever ran here or the record can't be read."""
    if "_state/watch.json" not in source.objects:
        return None
    try:
        record = json.loads(source.storage.read_bytes(join(source.name, "_state/watch.json")))
    except (StorageError, OSError, ValueError) as exc:
        logger.warning("cannot read _state/watch.json: %s", exc)
        return None
    if not _watch_record_ok(record):  # hand-edited or damaged: status must still run
        logger.warning("cannot read _state/watch.json: not a record export --watch writes")
        return None
    return record


def _watch_record_ok(record: Any) -> bool:
    """Whether ``record`` has the fields (and types) status shows of a watch record."""
    number = (int, float)
    if not isinstance(record, dict):
        return False
    if not isinstance(record.get("lag_seconds", 0), number) or isinstance(record.get("lag_seconds"), bool):
        return False
    if not isinstance(record.get("waiting_files", 0), int):
        return False
    if not isinstance(record.get("polled_at", ""), str):
        return False
    last = record.get("last_window")
    if last is None:
        return True
    counts = ("files", "records", "written", "rejected", "duplicates")
    return (
        isinstance(last, dict)
        and isinstance(last.get("run_id"), str)
        and all(isinstance(last.get(k), int) and not isinstance(last.get(k), bool) for k in counts)
    )


# -- verify ------------------------------------------------------------------------------------


@dataclass
class Checked:
    """What verify looked at (its report's ``checked``)."""

    tables: int = 0
    files: int = 0
    rows: int = 0
    reports: int = 0


class IdIndex:
    """ActivityId values of one table at a time in a DuckDB database on local disk: inserted
    file by file, asked for nulls and duplicates with GROUP BY. DuckDB spills beyond
    ``memory_limit``, so memory does not grow with the table."""

    def __init__(self, folder: str, memory_limit: str = "256MB", threads: int = 2) -> None:
        import duckdb

        self.con = duckdb.connect(os.path.join(folder, "ids.duckdb"))
        self.con.execute("SET TimeZone='UTC'")
        self.con.execute(f"SET memory_limit='{memory_limit}'")
        self.con.execute(f"SET threads={int(threads)}")
        self.con.execute(f"SET temp_directory='{os.path.join(folder, 'spill')}'")
        self.con.execute("SET preserve_insertion_order=false")

    def reset(self) -> None:
        self.con.execute("CREATE OR REPLACE TABLE ids (id VARCHAR, file INTEGER)")

    def add(self, batch: pa.RecordBatch, file: int) -> None:
        self.con.register("batch_view", pa.table({"id": batch.column(0).cast(pa.string())}))
        try:
            self.con.execute("INSERT INTO ids SELECT id, ? FROM batch_view", [file])
        finally:
            self.con.unregister("batch_view")

    def nulls(self) -> list[tuple[int, int]]:
        """(file, null ids) for each file with null ids."""
        return self.con.execute(
            "SELECT file, count(*) FROM ids WHERE id IS NULL GROUP BY file ORDER BY file"
        ).fetchall()

    def duplicates(self, examples: int = EXAMPLES) -> tuple[int, list[tuple[str, int, list[int]]]]:
        """How many ids occur more than once, and a few of them with their count and files."""
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE dups AS SELECT id, count(*) AS n, list(DISTINCT file) AS files "
            "FROM ids WHERE id IS NOT NULL GROUP BY id HAVING count(*) > 1"
        )
        total = self.con.execute("SELECT count(*) FROM dups").fetchone()[0]  # type: ignore[index]
        rows = self.con.execute("SELECT id, n, files FROM dups ORDER BY id LIMIT ?", [examples]).fetchall()
        return int(total), [(str(r[0]), int(r[1]), sorted(r[2])) for r in rows]

    def close(self) -> None:
        self.con.close()


def _reports(source: Source) -> Iterator[tuple[str, dict | None]]:
    for rel in sorted(source.objects):
        if rel.startswith("_runs/") and rel.endswith(".json") and rel.count("/") == 1:
            try:
                report = json.loads(source.storage.read_bytes(join(source.name, rel)))
            except (StorageError, ValueError):
                yield rel, None
                continue
            yield rel, report if isinstance(report, dict) else None


def _balance(counts: dict) -> tuple[int, int] | None:
    """(records_read, the sum it must equal) of a report's counts; None without counts."""
    needed = ("records_read", "activities_written", "duplicates_dropped", "filtered_out")
    if not all(isinstance(counts.get(k), int) for k in needed):
        return None
    rejected = counts.get("rejected") or {}
    total = (
        counts["activities_written"]
        + counts["duplicates_dropped"]
        + counts["filtered_out"]
        + sum(v for v in rejected.values() if isinstance(v, int))
    )
    return counts["records_read"], total


def check_reports(source: Source, checked: Checked, removed: dict[str, str]) -> list[Problem]:
    """Every committed export report balances, in total and per activity. Fills ``removed``:
    the files committed operations took out of the tables (``partitions_removed``: compaction,
    erasure), which stay until a vacuum deletes them -> the run that removed them."""
    problems = []
    for rel, report in _reports(source):
        checked.reports += 1
        if report is None:
            problems.append(Problem("unreadable_report", source.name, rel, "not a JSON object"))
            continue
        if report.get("status") == "committed" and isinstance(report.get("partitions_removed"), list):
            for location in report["partitions_removed"]:
                removed.setdefault(str(location), f"{report.get('run_id')} ({_report_kind(report)})")
        if report.get("status") != "committed" or _report_kind(report) != "export":
            continue
        parts = [("in total", report)] + [
            (f"activity {name}", counts)
            for name, counts in sorted((report.get("activities") or {}).items())
            if isinstance(counts, dict)
        ]
        for what, counts in parts:
            balance = _balance(counts)
            if balance is None:
                if what == "in total":
                    problems.append(
                        Problem("unbalanced_report", source.name, rel, "a committed report without counts")
                    )
                continue
            read, accounted = balance
            if read != accounted:
                problems.append(
                    Problem(
                        "unbalanced_report",
                        source.name,
                        rel,
                        f"{what}: records_read {read} != written + duplicates + rejected + "
                        f"filtered_out = {accounted}",
                    )
                )
    return problems


def _names(source: Source) -> list[Problem]:
    problems = []

    def check(value: str, what: str, location: str) -> None:
        try:
            check_name(value, what)
        except ContractError as exc:
            problems.append(Problem("bad_name", source.name, location, str(exc)))

    check(source.name, "data source", "")
    for table in source.tables:
        check(table.name, "table", table.name)
        for column, _kind in table.columns or []:
            check(column, f"column of table {table.name}", table.name)
    return problems


def _pending(source: Source, live: bool, removed: dict[str, str]) -> dict[str, str]:
    """Unreferenced files the tool settles itself: location -> why. Files a run's commit record
    lists (a live run still committing, or a dead run the next run rolls back or forward), the
    late leftovers of rolled-back runs in ``_state/abandoned.json`` (swept by every run), and
    files a committed operation removed from a table (deleted by vacuum after the retention)."""
    pending = {
        location: f"removed from its table by run {run}; vacuum deletes it after the retention"
        for location, run in removed.items()
    }
    for rel in sorted(source.objects):
        parts = rel.split("/")
        if parts[0] == "_staging" and len(parts) == 3 and parts[2] == COMMIT_RECORD:
            try:
                record = json.loads(source.storage.read_bytes(join(source.name, rel)))
                locations = record.get("locations", []) + [r["location"] for r in record.get("removed", [])]
            except (StorageError, ValueError, AttributeError):
                continue
            why = (
                f"placed by run {parts[1]}, which is committing now"
                if live
                else f"placed by run {parts[1]}, which died; the next export rolls it back or forward"
            )
            for location in locations:
                pending.setdefault(location, why)
    abandoned = "_state/abandoned.json"
    if abandoned in source.objects:
        try:
            data = json.loads(source.storage.read_bytes(join(source.name, abandoned)))
            for run_id, entry in data.items():
                for location in entry.get("locations", []):
                    pending.setdefault(
                        location, f"a late write of rolled-back run {run_id}; the next export deletes it"
                    )
        except (StorageError, ValueError, AttributeError) as exc:
            logger.warning("cannot read %s: %s", abandoned, exc)
    return pending


def _exporter_named(location: str) -> bool:
    """Whether a file below a table folder has the name the exporter gives its files."""
    table = location.split("/", 1)[0]
    name = location.rsplit("/", 1)[-1]
    return (
        "/" in location and re.fullmatch(rf"{re.escape(table)}_\d{{8}}_.+_\d{{3}}\.parquet", name) is not None
    )


def verify(
    storage: Storage, name: str, workdir: str | None = None, memory_limit: str = "256MB"
) -> dict[str, Any]:
    """Check everything a reader relies on (see docs/status-verify.md); returns the problems
    found, what was checked, and the unreferenced files the next export settles."""
    source = read_source(storage, name)
    problems = list(source.problems)
    checked = Checked(tables=len(source.tables))
    problems += _names(source)
    referenced = source.referenced()
    for folder, n in sorted(_folder_counts(source).items()):
        if n > FOLDER_LIMIT:
            problems.append(
                Problem(
                    "folder_over_1000", name, folder, f"{n} files (Customer Insights reads at most 1,000)"
                )
            )
    live = lock_state(storage, name)["held"] is True
    removed: dict[str, str] = {}
    problems += check_reports(source, checked, removed)
    pending = _pending(source, live, removed)
    table_names = {t.name for t in source.tables}
    waiting = []
    for rel in sorted(source.objects):
        if rel in referenced or rel.split("/", 1)[0] not in table_names or not _exporter_named(rel):
            continue
        if rel in pending or rel in source.removed:
            why = pending.get(rel, "removed by a later Delta commit; vacuum deletes it after the retention")
            waiting.append({"location": rel, "why": why})
            continue
        problems.append(
            Problem(
                "unreferenced_file",
                name,
                rel,
                "an exporter-named file the committed state does not list, and no run will remove",
            )
        )
    with tempfile.TemporaryDirectory(prefix="insights-link-verify-", dir=workdir) as folder:
        index = IdIndex(folder, memory_limit)
        try:
            for table in source.tables:
                problems += _check_table(source, table, index, checked)
        finally:
            index.close()
    return {
        "name": name,
        "location": storage.describe(name),
        "format": source.format,
        "ok": not problems,
        "problems": [p.as_dict() for p in problems],
        "pending": waiting,
        "checked": {
            "tables": checked.tables,
            "files": checked.files,
            "rows": checked.rows,
            "reports": checked.reports,
        },
    }


def _check_table(source: Source, table: Table, index: IdIndex, checked: Checked) -> list[Problem]:
    """Each file of ``table``: present, readable Parquet, the declared columns and types, no
    INT96; then ActivityId non-null and unique across the table."""
    problems: list[Problem] = []
    name = source.name
    declared = dict(table.columns) if table.columns is not None else None
    index.reset()
    for number, location in enumerate(table.locations):
        obj = source.objects.get(location)
        if obj is None:
            problems.append(Problem("missing_file", name, location, f"listed by the {table.format} table"))
            continue
        if table.format == "delta" and table.sizes.get(location) not in (None, obj.size):
            problems.append(
                Problem(
                    "size_mismatch",
                    name,
                    location,
                    f"the Delta log says {table.sizes[location]} bytes, the file has {obj.size}",
                )
            )
        checked.files += 1
        try:
            with source.storage.open_read(join(name, location)) as f:
                parquet = pq.ParquetFile(f)
                problems += _check_schema(name, location, parquet, declared)
                checked.rows += parquet.metadata.num_rows
                if KEY in parquet.schema_arrow.names:
                    for batch in parquet.iter_batches(batch_size=256 * 1024, columns=[KEY]):
                        index.add(batch, number)
        except (StorageError, OSError, pa.ArrowException) as exc:
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
            problems.append(Problem("unreadable_parquet", name, location, text))
    for number, count in index.nulls():
        problems.append(Problem("null_id", name, table.locations[number], f"{count} rows without {KEY}"))
    total, examples = index.duplicates()
    for value, count, files in examples:
        where = ", ".join(table.locations[i] for i in files[:3]) + (" ..." if len(files) > 3 else "")
        problems.append(
            Problem("duplicate_id", name, table.name, f"{KEY} {value!r} appears {count} times: {where}")
        )
    if total > len(examples):
        problems.append(
            Problem(
                "duplicate_id",
                name,
                table.name,
                f"... {total - len(examples)} more duplicated {KEY} values ({total} in all)",
            )
        )
    return problems


def _check_schema(
    data_source: str, location: str, parquet: pq.ParquetFile, declared: dict[str, str] | None
) -> list[Problem]:
    problems = []
    schema = parquet.metadata.schema
    int96 = sorted(
        {
            schema.column(i).path.split(".", 1)[0]
            for i in range(len(schema))
            if schema.column(i).physical_type == "INT96"
        }
    )
    if int96:
        problems.append(
            Problem("int96", data_source, location, f"INT96 timestamps in column(s) {', '.join(int96)}")
        )
    if declared is None:
        return problems
    found = {f.name: kind(f.type) for f in parquet.schema_arrow}
    issues = []
    missing = [c for c in declared if c not in found]
    extra = [c for c in found if c not in declared]
    if missing:
        issues.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        issues.append(f"undeclared column(s) {', '.join(extra)}")
    for column, wanted in declared.items():
        have = found.get(column)
        if have is not None and have != wanted and column not in int96:
            issues.append(f"{column} is {have}, declared {wanted}")
    if issues:
        problems.append(Problem("schema_mismatch", data_source, location, "; ".join(issues)))
    return problems
