"""``insights-link forget``: erase customers' rows and dead letters from a data source."""

from __future__ import annotations

from insights_link.commands.common import Clock, checked, clock_and_id, lake_parser, open_lake
from insights_link.errors import DataSourceBusy, UsageError
from insights_link.lake.commit import LakeBusy

DESCRIPTION = """Remove every row whose CustomerId is one of the given ids from every table of the
data source, and every dead letter carrying one of them, in one atomic commit under the data
source's lock. Old files stay for readers of the previous state until vacuum deletes them
(--vacuum does it at once). Reports count what was removed; they never hold an id."""


def build_parser():
    parser = lake_parser("insights-link forget", DESCRIPTION)
    parser.add_argument(
        "--customer-id", action="append", default=[], metavar="ID", help="a customer id (repeatable)"
    )
    parser.add_argument(
        "--customer-ids-file",
        metavar="FILE",
        help="a text file of customer ids, one per line (blank lines ignored)",
    )
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="then delete the replaced files at once (vacuum with --retain-hours 0)",
    )
    return parser


def customer_ids(args) -> tuple[list[str], dict]:
    """The unique, non-blank ids from the flags and the file, and how many were blank or repeated."""
    values = list(args.customer_id)
    if args.customer_ids_file:
        try:
            with open(args.customer_ids_file, encoding="utf-8-sig") as f:
                values += f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--customer-ids-file {args.customer_ids_file!r} can't be read: {exc}") from None
    if not values:
        raise UsageError("name the customers to forget: --customer-id ID or --customer-ids-file FILE")
    stripped = [v.strip() for v in values]
    ids = list(dict.fromkeys(v for v in stripped if v))
    if not ids:
        raise UsageError("the customer ids given are all blank")
    return ids, {
        "blank": sum(1 for v in stripped if not v),
        "repeated": len([v for v in stripped if v]) - len(ids),
    }


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    from insights_link.lake.forget import forget

    args = build_parser().parse_args(argv)
    ids, noise = customer_ids(args)
    clock, run_id = clock_and_id(args, clock)
    lake = open_lake(args, clock)
    try:
        with lake.locked(checked(args)["lock_wait"]):
            report = forget(lake, ids, run_id, clock, noise)
            if args.vacuum:
                from insights_link.lake.maintenance import vacuum

                report["vacuum"] = vacuum(lake, retain_hours=0, run_id=f"{run_id}_vacuum", clock=clock)
    except LakeBusy as exc:
        raise DataSourceBusy(str(exc)) from exc
    unmatched = report.pop("unmatched_ids")
    lines = [
        f"forget {run_id}: {report['rows_removed']} row(s) and {report['dead_letters_removed']} dead "
        f"letter(s) removed from {report['data_source']}"
    ]
    lines += [f"  table {name}: {t['rows_removed']} row(s) removed" for name, t in report["tables"].items()]
    if noise["blank"] or noise["repeated"]:
        lines.append(f"  ignored {noise['blank']} blank and {noise['repeated']} repeated id(s)")
    if unmatched:
        lines.append(f"  {len(unmatched)} id(s) matched nothing: {', '.join(unmatched)}")
    if not args.vacuum and report["rows_removed"]:
        lines.append("  the old files stay until vacuum (insights-link vacuum, or forget --vacuum)")
    return report, "\n".join(lines)
