"""Turn one :class:`RawBlock` into an Arrow table of activities plus dead-letter records.

This is the hot path. Records travel as Arrow tables from here on. For JSON lines a vectorized
fast path (DuckDB's JSON functions over the block's lines) accepts the rows that are plainly
valid; every other row goes through the reference functions in ``records.py``, so both paths
give the same answer by construction (and tests check it on tricky inputs).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from insights_link.core.blocks import RawBlock
from insights_link.core.contract import EVENT_NAME, UTC_MICROS, activity_schema
from insights_link.core.records import (
    MISSING,
    Activity,
    Rejection,
    check_event,
    decode_avro_record,
    decode_csv_row,
    decode_json_bytes,
    field_value,
)

RANK = "_rank"
POSITION = "_position"
#: distinct Signal.Name values counted per activity (the most frequent are kept), so that a
#: filter that matched nothing can say what was there without unbounded memory
NAMES_KEPT = 50


@dataclass(frozen=True)
class ActivitySpec:
    """What one activity table needs from the run: names, type, extra properties, run values."""

    name: str
    activity_type: str
    properties: tuple[str, ...]
    run_id: str
    last_updated: datetime
    #: keep only events whose Signal.Name is one of these (None: keep all); applied after decoding
    event_names: tuple[str, ...] | None = None
    #: keep only activities with since <= ActivityTime < until; applied after validation
    since: datetime | None = None
    until: datetime | None = None

    def wants(self, event: dict) -> bool:
        """Whether the event passes the ``event_names`` filter (decoded events only)."""
        if self.event_names is None:
            return True
        name = event_name_of(event)
        return name is not None and name in self.event_names

    def schema(self) -> pa.Schema:
        """The Parquet schema of this table."""
        return activity_schema(self.properties)

    def work_schema(self) -> pa.Schema:
        """The schema while rows travel: the table's columns plus the dedupe tie-breakers."""
        return self.schema().append(pa.field(RANK, pa.int32())).append(pa.field(POSITION, pa.int64()))


@dataclass
class BlockResult:
    """The outcome of one block: valid rows, dead letters and how many records were read."""

    table: pa.Table
    dead_letters: list[dict] = field(default_factory=list)
    records_read: int = 0
    #: left out by the activity's event_names filter or the run's time window
    filtered_out: int = 0
    #: of those, left out by the time window (after validation)
    outside_window: int = 0
    #: per ``--property``: decoded records holding it (non-null), before any filter
    present: dict[str, int] = field(default_factory=dict)
    #: Signal.Name values of decoded records (only with an event_names filter), see keep_names
    names: dict[str, int] = field(default_factory=dict)

    def rejected(self) -> Counter:
        return Counter(d["reason"] for d in self.dead_letters)


def event_name_of(event: dict) -> str | None:
    """Signal.Name as the event_names filter compares it: a string, an integer as its decimal
    text, else None."""
    name = field_value(event, EVENT_NAME)
    if isinstance(name, int) and not isinstance(name, bool):
        return str(name)
    return name if isinstance(name, str) else None


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """``total`` plus ``more``, key by key (in place)."""
    for key, count in more.items():
        total[key] = total.get(key, 0) + count
    return total


def keep_names(
    counts: dict[str, int], always: tuple[str, ...] | frozenset[str] | None = ()
) -> dict[str, int]:
    """The :data:`NAMES_KEPT` most frequent names (ties by name), plus every name in ``always``
    (the filter's names, so whether they matched stays exact)."""
    if len(counts) <= NAMES_KEPT:
        return counts
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:NAMES_KEPT]
    kept = dict(top)
    for name in always or ():
        if name in counts:
            kept[name] = counts[name]
    return kept


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return str(value)


def payload_of(block: RawBlock, i: int) -> Any:
    """What a dead letter keeps: a JSON line's text, otherwise the record as JSON.

    Invalid UTF-8 in a JSON line becomes U+FFFD here, so the dead letter stays valid UTF-8 JSON;
    :func:`original_bytes` keeps the exact bytes for ``payload_base64``.
    """
    raw = block.payloads[i]
    if block.fmt == "jsonl":
        return raw.decode("utf-8", errors="replace")
    if block.fmt == "csv":
        header = block.header or []
        return {name: raw[j] if j < len(raw) else None for j, name in enumerate(header)} | (
            {"_extra": raw[len(header) :]} if len(raw) > len(header) else {}
        )
    return json.loads(json.dumps(raw, default=_json_default))


def _has_escaped_bytes(cells: list[Any]) -> bool:
    """Whether CSV cells hold invalid UTF-8 (read with ``surrogateescape``)."""
    return any(isinstance(c, str) and any("\udc80" <= ch <= "\udcff" for ch in c) for c in cells)


def original_bytes(block: RawBlock, i: int) -> bytes | None:
    """The record's bytes when they are not valid UTF-8 (else None), for ``payload_base64``.

    A JSON line: its exact bytes. A CSV row: its fields' exact bytes written back as one CSV
    record (RFC 4180 quoting; the reader does not keep the row's original quoting). Avro strings
    are always valid UTF-8, and Avro bytes already travel as ``{"base64": ...}``.
    """
    raw = block.payloads[i]
    if block.fmt == "jsonl":
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        return None
    if block.fmt == "csv" and _has_escaped_bytes(raw):
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(raw)
        return out.getvalue().encode("utf-8", errors="surrogateescape")
    return None


def decode(block: RawBlock, i: int) -> dict | Rejection:
    """Decode record ``i`` of ``block`` with the reference decoders; a record the reader already
    found malformed (over the size limit, a CSV line that breaks quoting) keeps its reader's
    detail."""
    if i in block.malformed:
        return Rejection("malformed", block.malformed[i])
    raw = block.payloads[i]
    if block.fmt == "jsonl":
        return decode_json_bytes(raw)
    if block.fmt == "csv":
        return decode_csv_row(block.header or [], raw)
    return decode_avro_record(raw)


def dead_letter(block: RawBlock, i: int, rejection: Rejection, run_id: str) -> dict:
    """One dead-letter object for record ``i`` of ``block`` (``payload_base64`` only when the
    record's bytes are not valid UTF-8)."""
    letter = {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "source": block.source,
        "position": block.positions[i],
        "payload": payload_of(block, i),
        "run_id": run_id,
    }
    raw = original_bytes(block, i)
    if raw is not None:
        letter["payload_base64"] = base64.b64encode(raw).decode("ascii")
    return letter


def rows_to_table(spec: ActivitySpec, rows: list[tuple[int, int, Activity]]) -> pa.Table:
    """Build the work table from reference-path activities: (rank, position, activity)."""
    n_props = len(spec.properties)
    columns: dict[str, list] = {
        "ActivityId": [a.activity_id for _, _, a in rows],
        "CustomerId": [a.customer_id for _, _, a in rows],
        "ActivityTime": [a.activity_time for _, _, a in rows],
        "EventActivity": [a.event_name or spec.name for _, _, a in rows],
        "WebAddress": [a.web_address for _, _, a in rows],
        "Details": [a.details for _, _, a in rows],
        "ActivityType": [spec.activity_type] * len(rows),
        "LastUpdated": [spec.last_updated] * len(rows),
    }
    schema = spec.work_schema()
    for j in range(n_props):
        columns[schema.field(8 + j).name] = [a.properties[j] for _, _, a in rows]
    columns[RANK] = [r for r, _, _ in rows]
    columns[POSITION] = [p for _, p, _ in rows]
    return pa.Table.from_pydict(columns, schema=schema)


def process_block_reference(block: RawBlock, spec: ActivitySpec) -> BlockResult:
    """Reference path: decode, validate and map each record with the pure functions."""
    rows: list[tuple[int, int, Activity]] = []
    dead: list[dict] = []
    filtered = 0
    present = dict.fromkeys(spec.properties, 0)
    names: Counter = Counter()
    for i in range(len(block.payloads)):
        event = decode(block, i)
        if not isinstance(event, Rejection):
            for prop in spec.properties:
                value = field_value(event, prop)
                if value is not MISSING and value is not None:
                    present[prop] += 1
            if spec.event_names is not None:
                name = event_name_of(event)
                if name is not None:
                    names[name] += 1
        if not isinstance(event, Rejection) and not spec.wants(event):
            filtered += 1
            continue
        outcome = event if isinstance(event, Rejection) else check_event(event, spec.properties)
        if isinstance(outcome, Rejection):
            dead.append(dead_letter(block, i, outcome, spec.run_id))
        else:
            rows.append((block.rank, block.positions[i], outcome))
    read = len(block.payloads)
    if block.unreadable:
        position, detail = block.unreadable
        dead.append(
            {
                "reason": "malformed",
                "detail": detail,
                "source": block.source,
                "position": position,
                "payload": None,
                "run_id": spec.run_id,
            }
        )
        read += 1
    return BlockResult(
        rows_to_table(spec, rows),
        dead,
        read,
        filtered,
        present=present,
        names=keep_names(dict(names), spec.event_names),
    )


def process_block(block: RawBlock, spec: ActivitySpec) -> BlockResult:
    """Validate, filter and map one block (the entry point the pipeline uses)."""
    if block.fmt == "jsonl":
        from insights_link.core.fastpath import process_jsonl_block

        result = process_jsonl_block(block, spec)
    else:
        result = process_block_reference(block, spec)
    return within_window(result, spec)


def within_window(result: BlockResult, spec: ActivitySpec) -> BlockResult:
    """Apply the run's ``--since``/``--until`` window; rows outside it are filtered out."""
    if spec.since is None and spec.until is None:
        return result
    times = result.table["ActivityTime"]
    keep = pa.array([True] * result.table.num_rows) if result.table.num_rows else pa.array([], pa.bool_())
    if spec.since is not None:
        keep = pc.and_(keep, pc.greater_equal(times, pa.scalar(spec.since, UTC_MICROS)))
    if spec.until is not None:
        keep = pc.and_(keep, pc.less(times, pa.scalar(spec.until, UTC_MICROS)))
    table = result.table.filter(keep)
    dropped = result.table.num_rows - table.num_rows
    return BlockResult(
        table,
        result.dead_letters,
        result.records_read,
        result.filtered_out + dropped,
        result.outside_window + dropped,
        result.present,
        result.names,
    )


# ---------------------------------------------------------------------------------------------
# Arrow-level steps after validation: split by date, dedupe, cut into files


def split_by_date(table: pa.Table) -> dict[str, pa.Table]:
    """Rows grouped by the UTC date of ActivityTime: ``{"2024-05-01": table, ...}``."""
    if table.num_rows == 0:
        return {}
    dates = pc.cast(table["ActivityTime"], pa.date32())
    out = {}
    for day in pc.unique(dates).to_pylist():
        out[day.isoformat()] = table.filter(pc.equal(dates, pa.scalar(day, pa.date32())))
    return out


def dedupe(
    tables: list[pa.Table], existing_ids: pa.Array | None = None, rivals: pa.Table | None = None
) -> tuple[pa.Table, int]:
    """One row per ActivityId, sorted by ActivityId; returns (rows, duplicates dropped).

    Within the run the copy from the first input file (sorted path) at the lowest position
    wins, whatever the bundle order; ids already committed (``existing_ids``) are duplicates.
    ``rivals`` (ActivityId, _rank, _position) are this run's rows of the same table on *other*
    dates (see :func:`window_dates`): a row loses to a rival that came earlier in the input, so
    of an id re-stamped across dates within the run exactly the first copy is kept, whichever
    worker sees which date.
    """
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    before = table.num_rows
    if before == 0:
        return table, 0
    table = table.sort_by([("ActivityId", "ascending"), (RANK, "ascending"), (POSITION, "ascending")])
    ids = table["ActivityId"].combine_chunks()
    if before > 1:
        first = pc.not_equal(ids.slice(1), ids.slice(0, before - 1))
        keep = pa.concat_arrays([pa.array([True]), first])
        table = table.filter(keep)
    if existing_ids is not None and len(existing_ids):
        table = table.filter(pc.invert(pc.is_in(table["ActivityId"], value_set=existing_ids)))
    if rivals is not None and rivals.num_rows and table.num_rows:
        table = _drop_later_copies(table, rivals)
    return table, before - table.num_rows


def _order_key(table: pa.Table) -> pa.ChunkedArray:
    """(rank, position) as one comparable integer: input files are ranked, positions < 2**40."""
    rank = pc.cast(table[RANK], pa.int64())
    return pc.add(pc.multiply(rank, pa.scalar(1 << 40, pa.int64())), pc.cast(table[POSITION], pa.int64()))


def _drop_later_copies(table: pa.Table, rivals: pa.Table) -> pa.Table:
    """Rows of ``table`` whose id no rival holds with an earlier (rank, position).

    ``table`` holds each id once, sorted by id. Shared ids are rare (an event re-stamped across
    dates), so the rivals are first cut down to the ids ``table`` holds (a hash lookup); only
    those are grouped and compared, and the losers are removed by id, keeping the order.
    """
    ids = table["ActivityId"].combine_chunks()
    rivals = rivals.filter(pc.is_in(rivals["ActivityId"], value_set=ids))
    if rivals.num_rows == 0:
        return table
    earliest = (
        pa.table({"ActivityId": rivals["ActivityId"], "_rival": _order_key(rivals)})
        .group_by("ActivityId")
        .aggregate([("_rival", "min")])
    )
    shared = table.filter(pc.is_in(table["ActivityId"], value_set=earliest["ActivityId"].combine_chunks()))
    keyed = shared.select(["ActivityId"]).append_column("_own", _order_key(shared))
    joined = keyed.join(earliest, "ActivityId", join_type="inner")
    lost = joined.filter(pc.less(joined["_rival_min"], joined["_own"]))["ActivityId"]
    if len(lost) == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table["ActivityId"], value_set=lost.combine_chunks())))


def window_dates(day: str, days: int) -> list[str]:
    """The UTC dates within ``days`` of ``day`` (ISO ``yyyy-mm-dd``), ``day`` included, in order:
    the dates whose committed ids and this run's rows an event of ``day`` is deduplicated
    against (``--dedupe-window-days``)."""
    center = date.fromisoformat(day)
    return [(center + timedelta(days=offset)).isoformat() for offset in range(-days, days + 1)]


def file_slices(table: pa.Table, max_rows: int) -> list[pa.Table]:
    """Cut a date's rows into files of at most ``max_rows`` rows (without the work columns)."""
    table = table.drop_columns([c for c in (RANK, POSITION) if c in table.column_names])
    if table.num_rows == 0:
        return []
    return [table.slice(start, max_rows) for start in range(0, table.num_rows, max_rows)]
