"""``insights-link status``: what a data source holds, read without taking its lock.

Per data source and table: rows (Parquet footers or Delta statistics), event dates, files and
their sizes, crowded folders; then the last runs, dead letters by reason, who holds the lock,
and leftover staging. The JSON form is documented field by field in docs/status-verify.md.
"""

from __future__ import annotations

import argparse
import os
import textwrap

from insights_link.commands.common import Clock, checked, lake_parser
from insights_link.core.paths import is_remote
from insights_link.errors import UsageError
from insights_link.storage import CredentialsError, Storage, StorageError, open_storage

DESCRIPTION = """Show what a data source holds: per table its rows, first and last event date,
files (count, sizes, how many under 16 MB) and folders near the 1,000-file limit; the last runs;
dead letters by reason; whether a run holds the lock (who, since when); leftover staging. Reads
only: never takes the lock, never writes. Without --data-source, every data source in the lake."""

WIDTH = 80


def build_parser():
    parser = lake_parser("insights-link status", DESCRIPTION)
    parser.add_argument(
        "--runs", type=int, default=5, metavar="N", help="how many of the last runs to show (default 5)"
    )
    return parser


def open_root(args: argparse.Namespace) -> Storage:
    """The lake root's storage, for reading only (a missing local folder is a usage error)."""
    if is_remote(args.lake):
        try:
            return open_storage(args.lake)
        except CredentialsError as exc:
            raise UsageError(f"--lake: {exc}") from exc
        except StorageError as exc:
            raise UsageError(f"--lake: {exc}") from exc
    root = os.path.abspath(os.path.expanduser(args.lake))
    if not os.path.isdir(root):
        raise UsageError(f"--lake {args.lake!r}: no such folder")
    return open_storage(root)


def data_source_arg(args: argparse.Namespace) -> str | None:
    """The --data-source given (checked like the export's), None when not given."""
    return checked(args)["data_source"] if args.data_source is not None else None


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    """Read the data source(s); returns the report and its human summary."""
    from insights_link.lake.inspect import data_sources, status

    args = build_parser().parse_args(argv)
    if args.runs < 0:
        raise UsageError(f"--runs must be 0 or more, not {args.runs}")
    storage = open_root(args)
    sources = [status(storage, name, args.runs) for name in data_sources(storage, data_source_arg(args))]
    report = {"lake": storage.describe(), "data_sources": sources}
    return report, "\n".join(render(s) for s in sources)


def size(n: int | None) -> str:
    """Bytes for people: ``812 B``, ``4.7 KiB``, ``1.2 GiB``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ") or [indent]


def render(s: dict) -> str:
    """One data source's status in lines of at most 80 columns."""
    lines = _wrap(f"{s['name']} ({s['format'] or 'no tables yet'}) at {s['location']}", "")
    lock = s["lock"]
    held = "unknown" if lock["held"] is None else lock["holder"] if lock["held"] else "free"
    lines += _wrap(f"lock: {held}", "  ")
    for t in s["tables"]:
        dates = f"{t['first_date']} .. {t['last_date']}" if t["first_date"] else "no dates"
        rows = f"{t['rows']:,}" + ("" if t["rows_complete"] else "+ (not every file counted)")
        lines += _wrap(f"{t['name']} ({t['format']}): {rows} rows, {dates} ({t['dates']} days)", "  ")
        f = t["files"]
        lines += _wrap(
            f"files: {f['count']:,}, {size(f['bytes'])}; smallest {size(f['smallest'])}, "
            f"median {size(f['median'])}, largest {size(f['largest'])}; "
            f"{f['under_16mb']:,} under 16 MiB",
            "    ",
        )
        if t["missing_files"] or t["unreadable_files"]:
            lines += _wrap(
                f"MISSING {len(t['missing_files'])}, UNREADABLE {len(t['unreadable_files'])} "
                "(insights-link verify names them)",
                "    ",
            )
        for c in t["crowded_folders"]:
            lines += _wrap(f"near the 1,000-file limit: {c['folder']} ({c['files']:,} files)", "    ")
    for p in s["problems_reading"]:
        lines += _wrap(f"{p['code']}: {p['location']}: {p['detail']}", "  ")
    r = s["runs"]
    lines += _wrap(f"runs: {r['total']:,} reports, the last {len(r['last'])}:", "  ")
    for e in r["last"]:
        when = str(e["time"])[:16].replace("T", " ")
        head = f"{e['run_id']}  {when}  {e['kind']} {e['status']}"
        if e["records_read"] is not None:
            head += (
                f": {e['records_read']:,} read, {e['activities_written']:,} written, "
                f"{e['duplicates_dropped']:,} dup, {e['rejected']:,} rejected, "
                f"{e['filtered_out']:,} filtered"
            )
        lines += _wrap(head, "    ")
    d = s["dead_letters"]
    reasons = ", ".join(f"{k} {v:,}" for k, v in d["by_reason"].items())
    working = f"; {d['open']:,} open, {d['resolved']:,} resolved" if d.get("open") is not None else ""
    lines += _wrap(
        f"dead letters: {d['records']:,} in {d['files']:,} files{working}"
        + (f" ({reasons})" if reasons else ""),
        "  ",
    )
    w = s.get("watch")
    if w:
        last = w.get("last_window") or {}
        lines += _wrap(
            f"watch: lag {w.get('lag_seconds', 0):.0f} s, {w.get('waiting_files', 0)} file(s) waiting "
            f"at {str(w.get('polled_at'))[:19].replace('T', ' ')}"
            + (
                f"; last window {last['run_id']}: {last['files']} file(s), {last['records']:,} read, "
                f"{last['written']:,} written, {last['rejected']:,} rejected, {last['duplicates']:,} dup"
                if last
                else "; no window yet"
            ),
            "  ",
        )
    if s["staging"]:
        for st in s["staging"]:
            record = ", commit record" if st["commit_record"] else ""
            state = "a run holds the lock" if lock["held"] else "no run holds the lock: left by a dead run"
            lines += _wrap(
                f"staging: {st['run_id']} ({st['files']:,} files, {size(st['bytes'])}{record}; {state})", "  "
            )
    else:
        lines.append("  staging: none")
    return "\n".join(lines)
