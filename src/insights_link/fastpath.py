"""Vectorized JSON-lines path: DuckDB's JSON functions over a whole block of lines.

A row takes the fast path only when it is *plainly* valid: valid JSON by both DuckDB and
Python's rules (no trailing commas, no ``nan``/``inf`` literals), the nested form only, each
required field a string with a printable ASCII character, a timestamp in the common
``YYYY-MM-DDThh:mm:ss[.ffffff](Z|±hh:mm)`` shape on a real date, a plain ASCII http(s) URL.
Every other row (including every invalid one) goes to the reference functions in
``records.py``, so the two paths cannot disagree on what they both accept; property tests
check it. Measured: see ``docs/performance.md``.
"""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from insights_link.batch import (
    POSITION,
    RANK,
    ActivitySpec,
    BlockResult,
    process_block_reference,
)
from insights_link.contract import UTC_MICROS
from insights_link.inputs import RawBlock

_local = threading.local()

_REQUIRED_PATHS = ["$.Signal.Export.Id", "$.Signal.User.Id", "$.Signal.Timestamp",
                   "$.Signal.View.Uri", "$.Signal.Action.Name", "$.Signal.Name"]
_TS = r"^(19|2\d)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
_URI = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?$"
_PRINTABLE = r"[!-~]"


def _connection() -> duckdb.DuckDBPyConnection:
    """One DuckDB connection per thread (connections are not shared across threads)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect()  # no ICU here: TIMESTAMPTZ is UTC
        _local.con = con
    return con


def _json_path(prop: str) -> str:
    return "$." + ".".join(f'"{part}"' if not part.isidentifier() else part for part in prop.split("."))


def _query(paths: list[str]) -> str:
    """The block query: gates, extracted values and the parsed timestamp per line index."""
    n_props = len(paths) - len(_REQUIRED_PATHS)
    path_list = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
    prop_ok = "".join(f" AND (ty[{7 + j}] IS NULL OR ty[{7 + j}] IN ('NULL', 'VARCHAR'))" for j in range(n_props))
    prop_cols = "".join(
        f", CASE WHEN ty[{7 + j}] = 'VARCHAR' THEN v[{7 + j}] END AS p{j}" for j in range(n_props))
    required = " AND ".join(
        f"ty[{k}] = 'VARCHAR' AND regexp_matches(v[{k}], '{_PRINTABLE}')" for k in range(1, 6))
    return f"""
    WITH gated AS (
        SELECT i, line,
               json_valid(line)
               AND NOT regexp_matches(line, ',\\s*[}}\\]]')
               AND NOT regexp_matches(line, '(?i)[:,\\[]\\s*[-+]?(nan|inf)')
               AND position('"Signal.' IN line) = 0 AS gate
        FROM lines
    ), extracted AS (
        SELECT i, gate,
               CASE WHEN gate THEN json_type(line) END AS top,
               CASE WHEN gate THEN json_extract_string(line, {path_list}) END AS v,
               CASE WHEN gate THEN json_type(line, {path_list}) END AS ty
        FROM gated
    ), checked AS (
        SELECT i, v, ty,
               coalesce(gate AND top = 'OBJECT' AND {required}
                   AND regexp_full_match(v[3], '{_TS}')
                   AND regexp_full_match(v[4], '{_URI}')
                   AND (ty[6] IS NULL OR ty[6] = 'NULL'
                        OR (ty[6] = 'VARCHAR' AND regexp_matches(v[6], '{_PRINTABLE}')))
                   {prop_ok}, false) AS ok
        FROM extracted
    )
    SELECT i, ok,
           CASE WHEN ok THEN try_cast(v[3] AS TIMESTAMPTZ) END AS ts,
           CASE WHEN ok THEN v[1] END AS id, CASE WHEN ok THEN v[2] END AS user_id,
           CASE WHEN ok THEN v[4] END AS uri, CASE WHEN ok THEN v[5] END AS action,
           CASE WHEN ok AND ty[6] = 'VARCHAR' THEN v[6] END AS name{prop_cols}
    FROM checked ORDER BY i
    """


def _as_text(block: RawBlock) -> tuple[pa.Array, list[int]]:
    """The block's lines as a string array; lines that are not UTF-8 become null (fallback)."""
    raw = pa.array(block.payloads, pa.binary())
    try:
        return raw.cast(pa.string()), []
    except pa.ArrowInvalid:
        bad = []
        texts = []
        for idx, line in enumerate(block.payloads):
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(None)
                bad.append(idx)
        return pa.array(texts, pa.string()), bad


def process_jsonl_block(block: RawBlock, spec: ActivitySpec) -> BlockResult:
    """Validate and map a JSON-lines block: plainly valid rows vectorized, the rest by reference."""
    n = len(block.payloads)
    if n == 0:
        return process_block_reference(block, spec)
    text, _bad = _as_text(block)
    paths = _REQUIRED_PATHS + [_json_path(p) for p in spec.properties]
    lines = pa.table({"i": pa.array(range(n), pa.int64()), "line": text})  # noqa: F841 (DuckDB scans it)
    con = _connection()
    con.register("lines", lines)
    try:
        result = con.sql(_query(paths)).to_arrow_table()
    finally:
        con.unregister("lines")
    ok = pc.and_(result["ok"], pc.is_valid(result["ts"]))
    fast = result.filter(ok)
    slow_idx = pc.indices_nonzero(pc.invert(ok)).to_pylist()

    positions = pa.array(block.positions, pa.int64())
    m = fast.num_rows
    columns = {
        "ActivityId": fast["id"],
        "CustomerId": fast["user_id"],
        "ActivityTime": fast["ts"].cast(UTC_MICROS),
        "EventActivity": pc.fill_null(fast["name"], spec.name),
        "WebAddress": fast["uri"],
        "Details": fast["action"],
        "ActivityType": pa.repeat(pa.scalar(spec.activity_type), m),
        "LastUpdated": pa.repeat(pa.scalar(spec.last_updated, UTC_MICROS), m),
    }
    schema = spec.work_schema()
    for j in range(len(spec.properties)):
        columns[schema.field(8 + j).name] = fast[f"p{j}"]
    columns[RANK] = pa.repeat(pa.scalar(block.rank, pa.int32()), m)
    columns[POSITION] = pc.take(positions, fast["i"])
    fast_table = pa.table(columns).cast(schema)

    if not slow_idx and not block.unreadable:
        return BlockResult(fast_table, [], n)
    rest = RawBlock(block.source, block.rank, block.index, block.fmt,
                    [block.positions[k] for k in slow_idx], [block.payloads[k] for k in slow_idx],
                    unreadable=block.unreadable)
    slow = process_block_reference(rest, spec)
    table = pa.concat_tables([fast_table, slow.table]) if slow.table.num_rows else fast_table
    return BlockResult(table, slow.dead_letters, m + slow.records_read)
