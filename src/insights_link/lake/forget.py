"""Forget customers: every row with one of their CustomerIds leaves every table, and every dead
letter carrying one of their ids leaves ``_deadletter/``.

Under the data source's lock: settle dead runs, find the affected files by reading the
``CustomerId`` column only, rewrite each affected file without those rows into staging, and
commit the rewritten files and the removal of the old ones in one conditional step per commit
object (:meth:`Lake.commit` with ``removed=``), the same protocol and recovery as an export. A
Delta table gets one copy-on-write transaction (removes + adds, no deletion vectors). A CDM table
written with the incremental layout also gets a ``Deletes`` file in the commit hour's folder
naming the removed ActivityIds (and nothing else of the customer), so Customer Insights'
incremental refresh drops them from its copy. The old files stay on storage, unreferenced, for
readers of the previous state, until ``vacuum`` deletes them (``forget --vacuum`` does both).

Dead letters are rewritten in place after the commit (each ``_deadletter/<run>.jsonl.gz`` file
at once, without the matching letters); a forget killed in between is completed by running it
again. Reports count what was removed per table; they never hold an id.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from insights_link.checkpoints import checkpoint
from insights_link.core.contract import Column, columns_schema
from insights_link.core.deadletters import id_pattern, mentioned_ids
from insights_link.errors import InsightsLinkError
from insights_link.lake.commit import Lake
from insights_link.lake.layout import date_of_partition, deletes_location, partition_file_name
from insights_link.lake.maintenance import check_run_id
from insights_link.lake.parquet import read_committed, write_parquet

logger = logging.getLogger(__name__)


class ForgetError(InsightsLinkError, RuntimeError):
    """Forget can't go on; the message says why and that nothing was removed."""


def forget(
    lake: Lake, ids: list[str], run_id: str, clock: Callable[[], datetime], noise: dict | None = None
) -> dict:
    """Remove the rows and dead letters of the customers ``ids`` (unique, non-blank); the lock
    is held by the caller. ``noise``: counts of blank and repeated ids given, for the report.
    Returns the committed report."""
    started = clock()
    check_run_id(lake, run_id)
    lake.recover()
    lake.sweep_abandoned()
    state = lake.read_state(cache=True)
    wanted = frozenset(ids)
    value_set = pa.array(sorted(wanted), pa.string())
    files: list[dict] = []
    removed: list[dict] = []
    table_columns: dict[str, tuple[Column, ...]] = {}
    per_table: dict[str, dict] = {}
    matched: set[str] = set()
    for table, held in sorted(state.tables.items()):
        columns = lake.format.columns(lake.storage, lake.data_source, table)
        if "CustomerId" not in [c.name for c in columns]:  # e.g. share-profiles' CustomerDimensions
            raise ForgetError(
                f"table {table!r} has no CustomerId column (shared profiles? re-share them once the "
                "customer is gone from Customer Insights); nothing was removed"
            )
        schema = columns_schema(columns)
        counts = {"rows_removed": 0, "files_rewritten": 0, "deletes_files": 0}
        removed_ids: list[pa.Array] = []
        pieces: dict[str, int] = {}
        for location in sorted(held.data_locations()):
            lake.check_lock()
            customers = read_committed(lake.storage, lake.key(location), ["CustomerId"])["CustomerId"]
            hit = pc.fill_null(pc.is_in(customers, value_set=value_set), False)
            if not pc.any(hit).as_py():
                continue
            matched.update(pc.unique(customers.filter(hit)).to_pylist())
            rows = read_committed(lake.storage, lake.key(location))
            hit = pc.fill_null(pc.is_in(rows["CustomerId"], value_set=value_set), False)
            kept = rows.filter(pc.invert(hit))
            removed_ids.append(rows.filter(hit)["ActivityId"].combine_chunks())
            day = date_of_partition(location) or started.astimezone(UTC).date().isoformat()
            removed.append({"location": location, "table": table, "date": day})
            counts["rows_removed"] += rows.num_rows - kept.num_rows
            counts["files_rewritten"] += 1
            if kept.num_rows:
                files.append(_stage(lake, run_id, table, day, pieces, kept, schema))
        if removed_ids and held.incremental and lake.format.name == "cdm":
            files.append(_stage_deletes(lake, run_id, table, started, removed_ids, schema))
            counts["deletes_files"] = 1
        if counts["files_rewritten"]:
            table_columns[table] = columns
            per_table[table] = counts
    report = {
        "run_id": run_id,
        "operation": "forget",
        "data_source": lake.data_source,
        "output": lake.describe(),
        "table_format": lake.format.name,
        "started_at": _iso(started),
        "ids": {"given": len(wanted), **(noise or {})},
        "tables": per_table,
        "rows_removed": sum(c["rows_removed"] for c in per_table.values()),
    }
    letters_plan, in_letters = plan_dead_letters(lake, wanted)  # a damaged file stops us here
    checkpoint("forget_before_commit")
    report = lake.commit(run_id, report, files, [], table_columns, removed=removed, data_change=True)
    letters, letter_files = rewrite_dead_letters(lake, letters_plan)
    report["ids"]["unmatched"] = len(wanted - matched - in_letters)
    report["dead_letters_removed"] = letters
    report["dead_letter_files_rewritten"] = letter_files
    report["finished_at"] = _iso(clock())
    lake.check_lock()
    lake.storage.write_bytes(
        lake.key("_runs", f"{run_id}.json"), (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
    )
    report["unmatched_ids"] = sorted(wanted - matched - in_letters)  # for the summary; never stored
    return report


def plan_dead_letters(lake: Lake, ids: frozenset[str]) -> tuple[list[tuple[str, bytes, int]], set[str]]:
    """Each dead-letter file that carries one of ``ids``, with its content without those letters
    and how many it drops; and the ids found. Read before the commit, so a damaged file stops
    forget before anything is removed."""
    pattern = id_pattern(ids)
    plan: list[tuple[str, bytes, int]] = []
    found: set[str] = set()
    for obj in lake.storage.list(lake.key("_deadletter")):
        if not obj.key.endswith(".jsonl.gz"):
            continue
        try:
            lines = gzip.decompress(lake.storage.read_bytes(obj.key)).splitlines(keepends=True)
            kept = []
            for line in lines:
                hits = mentioned_ids(json.loads(line), ids, pattern)
                found |= hits
                if not hits:
                    kept.append(line)
        except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile is an OSError
            raise ForgetError(
                f"dead-letter file {obj.key} is damaged ({exc}); nothing was removed. Move it away "
                "(it may hold the customer's data: check it by hand) and run forget again"
            ) from exc
        if len(kept) != len(lines):
            plan.append((obj.key, b"".join(kept), len(lines) - len(kept)))
    return plan, found


def rewrite_dead_letters(lake: Lake, plan: list[tuple[str, bytes, int]]) -> tuple[int, int]:
    """Replace each planned dead-letter file at once (delete it when no letter is left);
    returns (letters removed, files rewritten)."""
    for key, kept, _dropped in plan:
        checkpoint("forget_before_dead_letters")
        lake.check_lock()
        if kept:
            lake.storage.write_bytes(key, gzip.compress(kept, mtime=0))
        else:
            lake.storage.delete(key)
    return sum(dropped for _key, _kept, dropped in plan), len(plan)


def _stage(lake: Lake, run_id: str, table: str, day: str, pieces: dict, rows: pa.Table, schema) -> dict:
    """Write a rewritten file into the run's staging; where it goes is the format's choice."""
    index = pieces.get(day, 0)
    pieces[day] = index + 1
    name = partition_file_name(table, day, run_id, index)
    staged = lake.staging(run_id, "data", table, name)
    count = write_parquet(lake.storage, staged, rows, schema)
    checkpoint("after_staged_file")
    location = lake.format.location(table, day, name)
    return {"staged": staged, "name": name, "table": table, "date": day, "rows": count, "location": location}


def _stage_deletes(
    lake: Lake, run_id: str, table: str, when: datetime, ids: list[pa.Array], schema: pa.Schema
) -> dict:
    """The Deletes file: the removed ActivityIds and the time they were removed (LastUpdated),
    every other column empty, so it names the keys and holds nothing else of the customer."""
    keys = pc.unique(pa.concat_arrays(ids)).sort()
    columns = {f.name: pa.nulls(len(keys), f.type) for f in schema}
    columns["ActivityId"] = keys
    if "LastUpdated" in columns:
        columns["LastUpdated"] = pa.array([when] * len(keys), schema.field("LastUpdated").type)
    rows = pa.table(columns, schema=pa.schema([f.with_nullable(True) for f in schema]))
    day = when.astimezone(UTC).date().isoformat()
    name = partition_file_name(table, day, run_id, 999)
    staged = lake.staging(run_id, "data", table, name)
    count = write_parquet(lake.storage, staged, rows, schema)
    location = deletes_location(table, when, name)
    return {
        "staged": staged,
        "name": name,
        "table": table,
        "date": day,
        "rows": count,
        "location": location,
        "kind": "deletes",
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
