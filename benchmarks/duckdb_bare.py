"""The fastest thing a user could write with DuckDB: the second baseline of issue 14.

each line read as one JSON value with its paths extracted as text (see below why not
``read_ndjson`` with a declared schema),
``try_strptime`` on the timestamp, a NOT NULL / non-empty filter, ``QUALIFY row_number()``
dedupe and ``COPY ... PARTITION_BY`` snappy Parquet. Nothing else: no URI check, no dead-letter
text, no cross-run dedupe, no manifest, no commit protocol. Epoch-millisecond timestamps (1% of
the generated events) don't parse as text and are dropped, as are any lines DuckDB can't read
(``ignore_errors``), so it writes somewhat fewer rows than the exporter: the harness accepts
rows within a few percent of the valid unique events (see ``BARE_TOLERANCE`` in run.py).

The other baseline (``duckdb_baseline.py``) approximates the contract (types, URI check, both
timestamp forms) and so does more work; both are reported.

    python benchmarks/duckdb_bare.py 'bench-work/events/*.jsonl' bench-work/duckdb-bare-out
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

#: Why not ``read_ndjson`` with a declared schema, as issue 14's script did: with
#: ``ignore_errors`` (needed: 3% of the generated lines are invalid, some not UTF-8) DuckDB 2.0.0
#: turns whole batches of a declared nested STRUCT into NULLs, and a declared ``Signal JSON``
#: column comes back holding the whole line in batches with a bad line: the script wrote 0 rows.
#: Each line read as one JSON value, paths extracted as text, is the fastest form that works.

QUERY = """
WITH events AS (
    SELECT
        filename,
        json ->> '$.Signal.Export.Id' AS ActivityId,
        json ->> '$.Signal.User.Id' AS CustomerId,
        try_strptime(json ->> '$.Signal.Timestamp', ['%Y-%m-%dT%H:%M:%S.%g%z', '%Y-%m-%dT%H:%M:%S.%gZ', '%Y-%m-%dT%H:%M:%SZ'])
            AS ActivityTime,
        json ->> '$.Signal.Name' AS EventActivity,
        json ->> '$.Signal.View.Uri' AS WebAddress,
        json ->> '$.Signal.Action.Name' AS Details,
        json ->> '$.Signal.Session.Id' AS SignalSessionId,
        json ->> '$.Signal.Device.Type' AS SignalDeviceType,
        json ->> '$.Signal.Device.Browser' AS SignalDeviceBrowser
    FROM read_ndjson_objects({source}, ignore_errors = true, filename = true)
)
SELECT * EXCLUDE (filename), strftime(ActivityTime, '%Y-%m-%d') AS date
FROM events
WHERE ActivityId IS NOT NULL AND ActivityId <> ''
  AND CustomerId IS NOT NULL AND CustomerId <> ''
  AND Details IS NOT NULL AND Details <> ''
  AND WebAddress IS NOT NULL AND WebAddress <> ''
  AND ActivityTime IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY ActivityId ORDER BY filename) = 1
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run_bare(input_glob: str, out_dir: str | Path) -> dict[str, Any]:
    """Run the bare script over ``input_glob`` into ``out_dir`` (replaced); return what it wrote."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        query = QUERY.format(source=_literal(input_glob))
        row = con.execute(
            f"COPY ({query}) TO {_literal(str(out))} (FORMAT parquet, COMPRESSION snappy, PARTITION_BY (date))"
        ).fetchone()
    finally:
        con.close()
    return {
        "engine": "duckdb-bare",
        "duckdb_version": duckdb.__version__,
        "input": input_glob,
        "output": str(out),
        "rows_written": int(row[0]) if row else 0,
        "partitions": len([p for p in out.iterdir() if p.is_dir()]) if out.exists() else 0,
        "seconds": round(time.perf_counter() - began, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print("usage: python benchmarks/duckdb_bare.py INPUT_GLOB OUT_DIR", file=sys.stderr)
        return 2
    print(json.dumps(run_bare(args[0], args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
