"""``insights-link verify``: check everything a reader relies on; exit 1 naming each problem.

The manifest or Delta logs parse; every file they list exists and is readable Parquet with the
declared columns and types and no INT96 timestamps; no exporter-named file is left unreferenced
(unless the tool deletes it itself); ActivityId is non-null and unique across each table; names
follow the naming rule; no data folder holds over 1,000 files; run reports balance. Reads only:
never takes the lock, never writes to the lake. See docs/status-verify.md.
"""

from __future__ import annotations

import json
import re

from insights_link.commands.common import Clock, checked, lake_parser
from insights_link.commands.status import data_source_arg, open_root
from insights_link.errors import InsightsLinkError, UsageError

DESCRIPTION = """Check everything a reader relies on: the manifest or Delta logs parse; every
file they list exists and is readable Parquet with the declared schema and no INT96 timestamps;
no exporter-named data file is left unreferenced; ActivityId is non-null and unique across each
table; names follow the naming rule; at most 1,000 files per folder; run reports balance. Exits 0
when all hold and 1 naming each problem (one line each). Reads only: never takes the lock."""

_MEMORY = re.compile(r"\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)", re.IGNORECASE)


class VerifyFailed(InsightsLinkError):
    """verify found problems (they were printed, one per line)."""

    status = "verify_failed"


def build_parser():
    parser = lake_parser("insights-link verify", DESCRIPTION)
    parser.add_argument(
        "--memory-limit",
        default="256MB",
        metavar="SIZE",
        help="DuckDB's memory for the id checks; beyond it DuckDB spills to a temporary folder "
        "(default 256MB)",
    )
    return parser


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    """Verify the data source(s); returns the report and summary when every check holds,
    otherwise prints them and raises :class:`VerifyFailed` (exit 1)."""
    from insights_link.lake.inspect import data_sources, verify

    args = build_parser().parse_args(argv)
    if not _MEMORY.fullmatch(args.memory_limit.strip()):
        raise UsageError(f"--memory-limit {args.memory_limit!r} is not a size like 256MB or 2GB")
    storage = open_root(args)
    results = [
        verify(storage, name, memory_limit=args.memory_limit.strip())
        for name in data_sources(storage, data_source_arg(args))
    ]
    count = sum(len(r["problems"]) for r in results)
    report = {"lake": storage.describe(), "ok": count == 0, "problem_count": count, "data_sources": results}
    summary = render(report)
    if count:
        as_json = args.json or checked(args)["log_format"] == "json"
        print(json.dumps(report, sort_keys=True) if as_json else summary, flush=True)
        names = ", ".join(r["name"] for r in results if r["problems"])
        raise VerifyFailed(f"{count} problem{'s' if count != 1 else ''} in {names}")
    return report, summary


def render(report: dict) -> str:
    """One line per problem (``code: location: detail``), then one line per data source."""
    lines = []
    for r in report["data_sources"]:
        for p in r["problems"]:
            where = f"{p['data_source']}/{p['location']}" if p["location"] else p["data_source"]
            lines.append(f"{p['code']}: {where}: {p['detail']}")
    for r in report["data_sources"]:
        c = r["checked"]
        state = "OK" if r["ok"] else f"{len(r['problems'])} problem(s)"
        lines.append(
            f"{r['name']} ({r['format'] or 'no tables'}): {state}; checked {c['tables']} tables, "
            f"{c['files']:,} files, {c['rows']:,} rows, {c['reports']:,} run reports"
        )
        if r["pending"]:
            lines.append(
                f"  {len(r['pending'])} unreferenced file(s) pending cleanup by the tool (see --json)"
            )
    return "\n".join(lines)
