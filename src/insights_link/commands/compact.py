"""``insights-link compact``: merge small files of each table and date, committed like a run."""

from __future__ import annotations

import argparse

from insights_link.commands.common import Clock, checked, clock_and_id, detect_format, lake_parser, open_lake
from insights_link.errors import DataSourceBusy, UsageError
from insights_link.lake.commit import Lake, LakeBusy

DESCRIPTION = """Merge the small Parquet files of each table and UTC event date into files near
--target-file-mb, rows and values unchanged (checked per date: row count and a row checksum,
before committing). Committed in one conditional step under the data source's lock, like an
export: readers holding the previous manifest or Delta version keep working, because the replaced
files are deleted only by 'insights-link vacuum'. CDM tables are compacted in FullData/ only
(IncrementalData hour folders stay as Customer Insights read them); Delta tables by ActivityDate.
Nothing to compact is exit 0. See docs/maintenance.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = lake_parser("insights-link compact", DESCRIPTION)
    parser.add_argument(
        "--target-file-mb",
        type=float,
        default=256,
        metavar="MB",
        help="the size merged files aim at, in MiB; files below it are merged (default 256)",
    )
    return parser


def lake_in_its_format(args: argparse.Namespace, clock: Clock) -> Lake:
    """The data source's lake in the table format it holds; a half-done conversion is refused."""
    probe = open_lake(args, clock, "cdm")
    held = detect_format(probe.storage, probe.data_source)
    if held == "both":
        raise UsageError(
            f"data source {probe.data_source!r} holds a CDM manifest and Delta tables (a conversion "
            "stopped half way); finish it with insights-link convert first"
        )
    return open_lake(args, clock, held)


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    """Compact; returns the report and its summary."""
    from insights_link.lake.maintenance import compact

    args = build_parser().parse_args(argv)
    if not args.target_file_mb > 0:
        raise UsageError(f"--target-file-mb must be more than 0, not {args.target_file_mb:g}")
    clock, run_id = clock_and_id(args, clock)
    lake = lake_in_its_format(args, clock)
    try:
        with lake.locked(checked(args)["lock_wait"]):
            report = compact(lake, run_id, clock, int(args.target_file_mb * 1024 * 1024))
    except LakeBusy as exc:
        raise DataSourceBusy(str(exc)) from exc
    return report, summary(report)


def summary(report: dict) -> str:
    """Per table: files before and after, dates compacted, rows merged."""
    head = f"compact {report['run_id']}: {report['data_source']} ({report['table_format']})"
    if report.get("nothing_to_do"):
        return f"{head}: nothing to compact (no date has two files below the target)"
    lines = [f"{head}: committed"]
    for name, t in sorted(report["tables"].items()):
        if t["dates_compacted"]:
            lines.append(
                f"  {name}: {t['files_before']} -> {t['files_after']} files, "
                f"{t['dates_compacted']} date(s), {t['rows_merged']} rows merged (checksums equal)"
            )
    lines.append("  the replaced files stay until 'insights-link vacuum' deletes them")
    return "\n".join(lines)
