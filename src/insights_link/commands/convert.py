"""``insights-link convert``: switch a data source between the CDM folder and Delta tables."""

from __future__ import annotations

from insights_link.commands.common import Clock, checked, clock_and_id, detect_format, lake_parser, open_lake
from insights_link.errors import DataSourceBusy, UsageError
from insights_link.lake import TABLE_FORMATS
from insights_link.lake.commit import LakeBusy
from insights_link.lake.delta import DeltaFormat, check_delta_location

DESCRIPTION = """Convert a data source in place, without copying data: --to delta writes one Delta
table log per entity over the existing Parquet files and then removes the CDM manifest; --to cdm
writes entity documents and a manifest over the Delta tables' current files and then removes the
_delta_log folders. Holds the data source's lock; a conversion stopped half way is completed by
running it again."""


def build_parser():
    parser = lake_parser("insights-link convert", DESCRIPTION)
    parser.add_argument("--to", required=True, choices=TABLE_FORMATS, help="the table format to convert to")
    return parser


def _leftovers(lake, held: str) -> bool:
    """Whether a conversion to ``held`` stopped after its switch, leaving entity documents."""
    if held != "delta":
        return False
    tables = DeltaFormat().tables(lake.storage, lake.data_source)
    return any(lake.storage.exists(lake.key(f"{name}.cdm.json")) for name in tables)


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    """Convert; returns the report and its one-paragraph summary."""
    from insights_link.lake.convert import convert

    args = build_parser().parse_args(argv)
    check_delta_location(args.lake, "--lake")
    clock, run_id = clock_and_id(args, clock)
    probe = open_lake(args, clock, "cdm")
    held = detect_format(probe.storage, probe.data_source)
    if held == "none":
        raise UsageError(f"data source {probe.data_source!r} holds no tables yet; nothing to convert")
    if held == args.to and not _leftovers(probe, held):
        raise UsageError(f"data source {probe.data_source!r} already is {args.to}; nothing to convert")
    # "both" (a conversion stopped half way): the manifest counts; converting again finishes it
    lake = open_lake(args, clock, "cdm" if held == "both" else held)
    try:
        with lake.locked(checked(args)["lock_wait"]):
            report = convert(lake, args.to, run_id, clock)
    except LakeBusy as exc:
        raise DataSourceBusy(str(exc)) from exc
    tables = ", ".join(f"{name} ({t['files']} files)" for name, t in report["tables"].items())
    return report, f"converted {report['data_source']} from {report['from']} to {report['to']}: {tables}"
