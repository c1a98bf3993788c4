"""The baseline a data team would write with DuckDB, for benchmarks against the exporter.

Read newline-delimited JSON (nested events), drop invalid rows with SQL approximations of the
contract's rules, keep the first delivery of each ``Signal.Export.Id`` (``QUALIFY row_number()``)
and ``COPY`` the result to snappy Parquet partitioned by UTC date.

Why ``read_ndjson_objects`` rather than ``read_ndjson``: with ``ignore_errors=true``, DuckDB's typed
``read_ndjson`` turns whole batches of good rows into NULLs when one line is malformed or is not
an object, silently losing data. Reading each line as a JSON value and extracting paths keeps
every good row and is still the idiomatic DuckDB way; malformed lines and invalid UTF-8 come back
as NULL and are filtered out.

Approximations, compared with the exporter: only the nested form is read (flat dotted-key lines
count as missing fields), timestamps are whatever ``TRY_CAST(... AS TIMESTAMPTZ)`` accepts (so
``2024-05-01 10:00`` passes), and duplicates are ordered by file name then event time, not by
line position.

    python benchmarks/duckdb_baseline.py 'bench-work/events/*.jsonl' bench-work/duckdb-out
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

ID_TYPES = "('VARCHAR', 'BIGINT', 'UBIGINT')"

QUERY = """
WITH raw AS (
    SELECT filename, json AS j
    FROM read_ndjson_objects({source}, ignore_errors = true, filename = true)
),
fields AS (
    SELECT
        filename,
        json_type(j, '$.Signal.Export.Id') AS id_type,
        j ->> '$.Signal.Export.Id' AS export_id,
        json_type(j, '$.Signal.User.Id') AS user_type,
        j ->> '$.Signal.User.Id' AS user_id,
        json_type(j, '$.Signal.Timestamp') AS ts_type,
        j ->> '$.Signal.Timestamp' AS ts_text,
        json_type(j, '$.Signal.View.Uri') AS uri_type,
        j ->> '$.Signal.View.Uri' AS uri,
        json_type(j, '$.Signal.Action.Name') AS action_type,
        j ->> '$.Signal.Action.Name' AS action_name,
        j ->> '$.Signal.Name' AS event_name,
        j ->> '$.Signal.Session.Id' AS session_id,
        j ->> '$.Signal.Device.Type' AS device_type,
        j ->> '$.Signal.Device.Browser' AS browser
    FROM raw
    WHERE j IS NOT NULL AND json_type(j) = 'OBJECT'
),
typed AS (
    SELECT
        *,
        CASE
            WHEN ts_type IN ('BIGINT', 'UBIGINT')
                THEN make_timestamp(TRY_CAST(ts_text AS BIGINT) * 1000)
            WHEN ts_type = 'VARCHAR'
                THEN timezone('UTC', TRY_CAST(ts_text AS TIMESTAMPTZ))
        END AS activity_time
    FROM fields
),
valid AS (
    SELECT *
    FROM typed
    WHERE id_type IN {ids} AND trim(export_id) <> ''
      AND user_type IN {ids} AND trim(user_id) <> ''
      AND action_type = 'VARCHAR' AND trim(action_name) <> ''
      AND uri_type = 'VARCHAR' AND regexp_matches(uri, '^https?://[^/?#\\s]+[^\\s]*$', 'i')
      AND activity_time IS NOT NULL
)
SELECT
    export_id AS ActivityId,
    user_id AS CustomerId,
    activity_time AS ActivityTime,
    event_name AS EventActivity,
    uri AS WebAddress,
    action_name AS Details,
    session_id AS SignalSessionId,
    device_type AS SignalDeviceType,
    browser AS SignalDeviceBrowser,
    strftime(activity_time, '%Y-%m-%d') AS date
FROM valid
QUALIFY row_number() OVER (PARTITION BY export_id ORDER BY filename, activity_time) = 1
"""


def _literal(text: str) -> str:
    """A SQL string literal (COPY and table functions in a view take no bind parameters)."""
    return "'" + text.replace("'", "''") + "'"


def run_duckdb(input_glob: str, out_dir: str | Path, *, threads: int | None = None) -> dict[str, Any]:
    """Run the baseline over ``input_glob`` into ``out_dir`` (replaced); return what it wrote."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        query = QUERY.format(ids=ID_TYPES, source=_literal(input_glob))
        row = con.execute(
            f"COPY ({query}) TO {_literal(str(out))} "
            "(FORMAT parquet, COMPRESSION snappy, PARTITION_BY (date))"
        ).fetchone()
    finally:
        con.close()
    rows = int(row[0]) if row else 0
    seconds = time.perf_counter() - began
    return {
        "engine": "duckdb",
        "duckdb_version": duckdb.__version__,
        "input": input_glob,
        "output": str(out),
        "rows_written": rows,
        "partitions": len([p for p in out.iterdir() if p.is_dir()]) if out.exists() else 0,
        "seconds": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print("usage: python benchmarks/duckdb_baseline.py INPUT_GLOB OUT_DIR", file=sys.stderr)
        return 2
    print(json.dumps(run_duckdb(args[0], args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
