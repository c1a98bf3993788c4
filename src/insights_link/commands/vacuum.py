"""``insights-link vacuum``: delete files no commit references any more, after a retention."""

from __future__ import annotations

import argparse

from insights_link.commands.common import Clock, checked, clock_and_id, lake_parser
from insights_link.commands.compact import lake_in_its_format
from insights_link.errors import DataSourceBusy, UsageError
from insights_link.lake.commit import LakeBusy

DESCRIPTION = """Delete the data files the exporter wrote that no commit references any more
(files a compaction replaced, leftovers) once they have been unreferenced for longer than
--retain-hours, and settle what dead runs left in staging. Never deletes a referenced file or
a file the exporter did not write (only <Table>_<yyyymmdd>_<run>_<nnn>.parquet in the table
folders). Delta tables: of what Delta's own vacuum would delete, only the exporter's files.
Holds the data source's lock; --dry-run lists what it would delete and changes nothing. See
docs/maintenance.md."""


SHOWN = 20  # deleted files named in the summary


def build_parser() -> argparse.ArgumentParser:
    parser = lake_parser("insights-link vacuum", DESCRIPTION)
    parser.add_argument(
        "--retain-hours",
        type=float,
        default=168,
        metavar="HOURS",
        help="keep unreferenced files this long, so readers of an older state finish; 0 deletes "
        "them now (default 168, a week)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted; delete and write nothing"
    )
    return parser


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    """Vacuum (or list, with --dry-run); returns the report and its summary."""
    from insights_link.lake.maintenance import vacuum

    args = build_parser().parse_args(argv)
    if not args.retain_hours >= 0:
        raise UsageError(f"--retain-hours must be 0 or more, not {args.retain_hours:g}")
    clock, run_id = clock_and_id(args, clock)
    lake = lake_in_its_format(args, clock)
    if args.dry_run:
        report = vacuum(lake, run_id, clock, args.retain_hours, dry_run=True)
    else:
        try:
            with lake.locked(checked(args)["lock_wait"]):
                report = vacuum(lake, run_id, clock, args.retain_hours)
        except LakeBusy as exc:
            raise DataSourceBusy(str(exc)) from exc
    return report, summary(report)


def summary(report: dict) -> str:
    """What was (or would be) deleted, and what waits for its retention."""
    dry = report["status"] == "dry_run"
    verb = "would delete" if dry else "deleted"
    lines = [
        f"vacuum {report['run_id']}: {report['data_source']} ({report['table_format']})"
        + (": dry run, nothing was deleted" if dry else ""),
        f"  {verb} {len(report['deleted'])} file(s), {report['bytes_deleted']:,} bytes",
    ]
    lines += [f"    {d['location']}" for d in report["deleted"][:SHOWN]]
    if len(report["deleted"]) > SHOWN:
        lines.append(f"    ... and {len(report['deleted']) - SHOWN} more (the report lists them all)")
    if report["waiting"]:
        lines.append(
            f"  {len(report['waiting'])} unreferenced file(s) kept for --retain-hours {report['retain_hours']:g}"
        )
    for run_id, outcome in sorted(report["recovered"].items()):
        lines.append(f"  settled dead run {run_id}: {outcome}")
    return "\n".join(lines)
