"""Peak memory (RSS) and time of ``insights-link verify`` (and ``status``) on a large table.

Writes a CDM data source directly with pyarrow, in the exporter's layout (manifest, entity
document, ``WebLog/FullData/yyyy/mm/dd/WebLog_<yyyymmdd>_bench_<nnn>.parquet``), ``--rows`` rows
over ``--days`` UTC days with unique ActivityIds, then runs the real CLI in a child process and
reports its peak RSS (``getrusage`` of the children) and wall time. Not part of the test suite.

Usage::

    python benchmarks/verify_memory.py --rows 10000000 --days 30 --out /tmp/verify-bench \
        [--memory-limit 256MB] [--command verify|status] [--keep] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from insights_link.core.contract import ACTIVITY_COLUMNS, activity_schema
from insights_link.lake.cdm import entity_document, manifest_document
from insights_link.lake.layout import full_location, partition_file_name
from insights_link.lake.tableformat import TableState

DS = "EngagementInsights"
TABLE = "WebLog"


def write_lake(root: Path, rows: int, days: int) -> None:
    """``rows`` rows spread evenly over ``days`` files, one per UTC day."""
    source = root / DS
    schema = activity_schema()
    locations = []
    per_day = -(-rows // days)
    start = date(2024, 1, 1)
    for day in range(days):
        first, last = day * per_day, min(rows, (day + 1) * per_day)
        if first >= last:
            break
        when = (start + timedelta(days=day)).isoformat()
        n = last - first
        ids = np.char.add("evt-", np.arange(first, last).astype(str))
        micros = np.datetime64(when, "us").astype(np.int64) + np.arange(n, dtype=np.int64) % 86_400_000_000
        times = pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        table = pa.table(
            {
                "ActivityId": pa.array(ids, pa.string()),
                "CustomerId": pa.array(np.char.add("user-", (np.arange(first, last) % 100_000).astype(str))),
                "ActivityTime": times,
                "EventActivity": pa.array(["EmailPromoClick"] * n),
                "WebAddress": pa.array(["https://contoso.com/p"] * n),
                "Details": pa.array(["Email promo"] * n),
                "ActivityType": pa.array(["WebLog"] * n),
                "LastUpdated": times,
            }
        ).cast(schema)
        location = full_location(TABLE, when, partition_file_name(TABLE, when, "bench", 0))
        path = source / location
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="snappy", row_group_size=1 << 20)
        locations.append(location)
    (source / f"{TABLE}.cdm.json").write_bytes(entity_document(TABLE, ACTIVITY_COLUMNS))
    (source / "default.manifest.cdm.json").write_bytes(
        manifest_document(DS, {TABLE: TableState(TABLE, locations)})
    )


#: Started fresh, so that the measured child is forked from a small process: a child forked from
#: this one (which just held the generated columns) would count our pages in its peak RSS.
_WRAPPER = """
import json, resource, subprocess, sys, time
started = time.monotonic()
proc = subprocess.run([sys.executable, "-m", "insights_link.cli", *sys.argv[1:]], capture_output=True, text=True)
lines = (proc.stdout or proc.stderr).strip().splitlines()
print(json.dumps({
    "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "seconds": time.monotonic() - started,
    "code": proc.returncode,
    "last": lines[-1][:200] if lines else "",
}))
"""


def measure(*args: str) -> tuple[float, float, int, str]:
    """Run the CLI in a child of a fresh wrapper; (peak RSS MiB, seconds, exit code, last line)."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    return result["peak_kib"] / 1024, result["seconds"], result["code"], result["last"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--memory-limit", default="256MB")
    parser.add_argument("--command", choices=("verify", "status"), default="verify")
    parser.add_argument("--keep", action="store_true", help="keep the generated lake")
    parser.add_argument("--reuse", action="store_true", help="measure a lake --keep left in --out")
    args = parser.parse_args()
    started = time.monotonic()
    if not (args.reuse and (args.out / DS / "default.manifest.cdm.json").exists()):
        if args.out.exists():
            shutil.rmtree(args.out)
        write_lake(args.out, args.rows, args.days)
    written = time.monotonic() - started
    extra = ["--memory-limit", args.memory_limit] if args.command == "verify" else []
    peak, seconds, code, last = measure(args.command, "--lake", str(args.out), *extra)
    print(
        json.dumps(
            {
                "command": args.command,
                "rows": args.rows,
                "files": args.days,
                "lake_bytes": sum(p.stat().st_size for p in args.out.rglob("*.parquet")),
                "memory_limit": args.memory_limit if args.command == "verify" else None,
                "generate_seconds": round(written, 1),
                "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak, 1),
                "exit_code": code,
                "last_line": last,
            },
            indent=2,
        )
    )
    if not args.keep:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
