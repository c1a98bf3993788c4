"""``insights-link share-profiles``: share chosen attributes of Customer Insights' unified
profiles, and segment memberships, as dimensions for web analytics (see docs/profiles.md)."""

from __future__ import annotations

import argparse
import logging
import os

import pyarrow as pa
import pyarrow.compute as pc

from insights_link.commands.common import Clock, Parser, checked
from insights_link.core.contract import check_name
from insights_link.core.paths import is_remote
from insights_link.core.profiles import (
    UNIFIED_ID,
    check_column_names,
    check_user_key,
    choose_attributes,
    identifier_reason,
)
from insights_link.errors import DataSourceBusy, GrantFailed, UsageError
from insights_link.pipeline.spec import BY_DEST

logger = logging.getLogger(__name__)

DEFAULT_DATA_SOURCE = "CustomerProfiles"
SHARED = ("lock_wait", "run_id", "run_time", "log_format", "quiet", "verbose")
DESCRIPTION = """Write chosen attributes of the unified customer profiles (CustomerDimensions: the
user key plus each attribute, source types kept) and segment memberships (SegmentMembership) into
a data source of the lake, as a new snapshot committed atomically under its lock; --enrich also
writes EnrichedActivities (an activity table's rows with the dimensions and segments). Identifier
attributes are refused. The data source is readable by its owner only, plus each --reader."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="insights-link share-profiles", description=DESCRIPTION, allow_abbrev=False)
    add = parser.add_argument
    add(
        "--profiles",
        required=True,
        metavar="PATH",
        help="the Customer export: CDM folder, Delta table, CSV/Parquet",
    )
    add(
        "--profiles-entity",
        metavar="NAME",
        help="the entity of a CDM folder holding several (default Customer)",
    )
    add("--list-attributes", action="store_true", help="list what can be shared and what can't, and stop")
    add("--output", metavar="LAKE_ROOT", help="the lake root: a folder or an abfss:// URL")
    add(
        "--data-source",
        default=DEFAULT_DATA_SOURCE,
        metavar="NAME",
        help=f"the data source to write (default {DEFAULT_DATA_SOURCE})",
    )
    add("--user-key", metavar="COLUMN", help="the profile column whose values events carry as Signal.User.Id")
    add("--attribute", action="append", default=[], metavar="NAME", help="an attribute to share (repeatable)")
    add("--segments", action="append", default=[], metavar="PATH", help="a segment export (repeatable)")
    add(
        "--reader",
        action="append",
        default=[],
        metavar="PRINCIPAL",
        help="who may read: an Entra object id on ADLS; user:NAME or group:NAME locally (repeatable)",
    )
    add("--table-format", choices=("cdm", "delta"), default="cdm", help="table format (default cdm)")
    add(
        "--enrich", metavar="DATA_SOURCE/TABLE", help="also write EnrichedActivities from this activity table"
    )
    for dest in SHARED:
        o = BY_DEST[dest]
        text = o.help + (f" (default {o.default_text()})" if o.default_text() else "")
        if o.kind == "bool":
            add(o.flag, dest=dest, action="store_true", default=False, help=text)
        else:
            add(
                o.flag,
                dest=dest,
                default=None,
                metavar=o.metavar or "|".join(o.choices or ()) or None,
                help=text,
            )
    add("--json", action="store_true", help="print the report as one JSON object")
    return parser


def list_attributes(source, user_key: str | None) -> tuple[dict, str]:
    rows = []
    for attribute in source.attributes.values():
        reason = identifier_reason(attribute)
        if attribute.name == user_key and attribute.name != UNIFIED_ID:
            status, why = "user key", "shared as the join key (Signal.User.Id)"
        elif reason:
            status, why = "identifier", reason
        elif pa.types.is_nested(attribute.arrow_type) or pa.types.is_binary(attribute.arrow_type):
            status, why = "unsupported", "nested or binary values have no dimension column type"
        else:
            status, why = "shareable", ""
        rows.append(
            {"name": attribute.name, "type": str(attribute.arrow_type), "status": status, "reason": why}
        )
    report = {"profiles": source.location, "form": source.form, "entity": source.entity, "attributes": rows}
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{source.entity} ({source.form}) at {source.location}: {len(rows)} attribute(s)"]
    for r in rows:
        lines.append(
            f"  {r['name']:<{width}}  {r['type']:<22} {r['status']}{': ' + r['reason'] if r['reason'] else ''}"
        )
    return report, "\n".join(lines)


def memberships(segment_sources, profiles: pa.Table, key: str) -> tuple[pa.Table, dict]:
    """(user key, Segment) rows of every segment export, distinct; a segment carrying the user
    key is read by it, one carrying only CustomerId is mapped through the profiles."""
    keys, names, counts = [], [], {}
    for seg in segment_sources:
        if key in seg.attributes:
            values = seg.read([key])[key].cast(pa.string())
        elif UNIFIED_ID in seg.attributes and UNIFIED_ID in profiles.column_names:
            ids = seg.read([UNIFIED_ID])[UNIFIED_ID].cast(pa.string())
            lookup = profiles.select([UNIFIED_ID, key])
            index = pc.index_in(ids, value_set=lookup[UNIFIED_ID].combine_chunks())
            values = pc.take(lookup[key].combine_chunks(), index)
        else:
            raise UsageError(
                f"--segments {seg.location!r}: it has neither {key!r} nor {UNIFIED_ID} (it has "
                f"{', '.join(seg.attributes)})"
            )
        values = pc.utf8_trim_whitespace(
            values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        )
        present = values.filter(pc.fill_null(pc.not_equal(values, ""), False))
        unique = pc.unique(present).to_pylist()
        if seg.entity in counts:
            raise UsageError(f"--segments {seg.location!r}: segment {seg.entity!r} is given twice")
        counts[seg.entity] = {"members": len(unique), "unmatched": len(values) - len(present)}
        keys += unique
        names += [seg.entity] * len(unique)
    table = pa.table({key: pa.array(keys, pa.string()), "Segment": pa.array(names, pa.string())})
    if table.num_rows:
        table = table.sort_by([("Segment", "ascending"), (key, "ascending")])
    return table, counts


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    from insights_link.commands.common import clock_and_id
    from insights_link.profiles.source import open_source

    args = build_parser().parse_args(argv)
    shared = checked(args, SHARED)
    source = open_source(args.profiles, args.profiles_entity)
    if args.list_attributes:
        return list_attributes(source, args.user_key)
    for flag, value in (("--output", args.output), ("--user-key", args.user_key)):
        if not value:
            raise UsageError(f"{flag} is required (or use --list-attributes)")
    data_source = check_name(args.data_source, "--data-source")
    try:
        key = check_user_key(args.user_key, source.attributes)
        chosen = choose_attributes(args.attribute, source.attributes, key.name)
        check_column_names(key.name, chosen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    segment_sources = [open_source(p, what="--segments") for p in args.segments]
    args.data_source = data_source
    clock, run_id = _clock_and_id(args, clock, clock_and_id)

    from insights_link.lake import table_format
    from insights_link.lake.commit import Lake, LakeBusy
    from insights_link.pipeline.options import check_output
    from insights_link.profiles import acl
    from insights_link.profiles.share import (
        DIMENSIONS,
        ENRICHED,
        MEMBERSHIP,
        dimension_columns,
        dimension_rows,
        membership_columns,
        publish,
    )
    from insights_link.storage import open_storage

    check_output(args.output)
    remote = is_remote(args.output)
    root = args.output if remote else os.path.abspath(os.path.expanduser(args.output))
    storage = open_storage(root)
    readers: list = []
    if remote:
        hns = _check_remote_readers(storage, args.reader)
    else:
        readers = acl.parse_readers(args.reader)
    wanted = [key.name, *[a.name for a in chosen]]
    if UNIFIED_ID in source.attributes and UNIFIED_ID not in wanted:
        wanted.append(UNIFIED_ID)  # read to map segments; never written
    profiles = source.read(wanted)
    dims_columns = dimension_columns(key, chosen)
    dims, counts = dimension_rows(profiles, key.name, dims_columns)
    members, segment_counts = memberships(segment_sources, profiles, key.name)
    tables: dict = {DIMENSIONS: (dims_columns, dims), MEMBERSHIP: (membership_columns(key), members)}
    enrich = None
    head: dict = {
        "profiles": {"location": source.location, "form": source.form, "entity": source.entity, **counts},
        "user_key": key.name,
        "attributes": [a.name for a in chosen],
        "segments": segment_counts,
        "readers": list(args.reader),
    }
    if args.enrich:
        enrich, tables[ENRICHED] = _enrichment(
            args.enrich, data_source, storage, root, dims, members, key, dims_columns
        )
        head["enriched_from"] = args.enrich
    _check_own_data_source(storage, data_source)
    if not remote:  # the folder owner-only (and its ACLs) before anything is written in it
        acl.check_local_acls(os.path.join(root, data_source), readers)
    lake = Lake(storage, data_source, table_format(args.table_format), clock=clock)
    try:
        with lake.locked(shared["lock_wait"]):
            report = publish(lake, run_id, clock, head, tables, enrich)
            access = _restrict(
                lake, storage, root, data_source, remote, readers, args.reader, hns if remote else True
            )
    except LakeBusy as exc:
        raise DataSourceBusy(str(exc)) from exc
    report["access"] = access
    lines = [f"share-profiles {run_id}: committed to {report['output']} ({lake.format.name})"]
    for name, t in report["tables"].items():
        lines.append(f"  table {name}: {t['rows']} row(s)")
    if counts["blank_user_keys"] or counts["repeated_user_keys"]:
        lines.append(
            f"  skipped {counts['blank_user_keys']} profile(s) without a user key and "
            f"{counts['repeated_user_keys']} repeated user key(s)"
        )
    lines.append(f"  readers: {access}")
    if report.get("files_replaced"):
        lines.append("  the previous snapshot's files stay until vacuum (insights-link vacuum)")
    return report, "\n".join(lines)


def _check_own_data_source(storage, data_source: str) -> None:
    """The shared tables get a data source of their own: its access is restricted, so one that
    holds other tables (an export's activities) is refused before anything is written."""
    from insights_link.commands.common import detect_format
    from insights_link.lake import table_format
    from insights_link.profiles.share import DIMENSIONS, ENRICHED, MEMBERSHIP

    try:
        fmt = detect_format(storage, data_source)
    except UsageError:
        return  # no data source yet
    others = set()
    for name in ("cdm", "delta") if fmt == "both" else (fmt,) if fmt in ("cdm", "delta") else ():
        others |= set(table_format(name).read(storage, data_source).tables) - {
            DIMENSIONS,
            MEMBERSHIP,
            ENRICHED,
        }
    if others:
        raise UsageError(
            f"--data-source {data_source!r} holds other tables ({', '.join(sorted(others))}); shared "
            "profiles go to a data source of their own (its access is restricted)"
        )


def _clock_and_id(args, clock, clock_and_id):
    """The run's clock and id from the shared flags (``--run-time``, ``--run-id``)."""
    ns = argparse.Namespace(**{d: getattr(args, d, None) for d in SHARED}, data_source=args.data_source)
    return clock_and_id(ns, clock)


def _check_remote_readers(storage, readers: list[str]) -> bool:
    """ADLS: readers must be object ids and the account must have a hierarchical namespace
    (checked before writing anything). Returns whether it has one."""
    from insights_link.storage import StorageError
    from insights_link.storage.azure import _OBJECT_ID_RE

    bad = [r for r in readers if not _OBJECT_ID_RE.match(r.strip())]
    if bad:
        raise UsageError(f"--reader takes Entra object ids (GUIDs) on ADLS; not one: {', '.join(bad)}")
    try:
        hns = storage.is_hns_enabled()
    except StorageError as exc:
        raise UsageError(
            f"can't tell whether {storage.describe()} has a hierarchical namespace: {exc}"
        ) from None
    if readers and not hns:
        raise UsageError(
            f"--reader needs an account with a hierarchical namespace (ADLS Gen2); {storage.describe()} has none"
        )
    return hns


def _restrict(lake, storage, root, data_source, remote, readers, given, hns) -> str:
    """After the commit: owner-only plus the readers; a failure is exit 1 (committed)."""
    from insights_link.profiles import acl
    from insights_link.storage import StorageError

    try:
        lake.check_lock()  # fenced: a run frozen past its lease must not reset a newer run's readers
        if remote:
            if not hns:
                return "no hierarchical namespace: the container's access applies (no ACLs)"
            acl.set_adls_readers(storage, data_source, given)
        else:
            acl.restrict_local(os.path.join(root, data_source), readers)
    except (OSError, StorageError) as exc:
        raise GrantFailed(f"the snapshot committed, but setting its readers failed (re-run): {exc}") from exc
    names = [r.strip() for r in given]
    return f"owner and {', '.join(names)}" if names else "owner only"


def _enrichment(value, data_source, storage, root, dims, members, key, dims_columns):
    """The enrichment step for :func:`publish` and the EnrichedActivities table entry."""
    from insights_link.profiles.enrich import enriched_columns, run_enrichment
    from insights_link.profiles.share import committed_activity_keys

    source_ds, _, table = value.partition("/")
    if not source_ds or not table or "/" in table:
        raise UsageError(f"--enrich {value!r}: give DATA_SOURCE/TABLE (e.g. EngagementInsights/WebLog)")
    for part in (source_ds, table):  # names only: never a path out of the lake (``..``)
        check_name(part, "--enrich")
    if source_ds == data_source:
        raise UsageError(f"--enrich {value!r}: the activities must come from another data source")
    keys, activity_columns, _fmt = committed_activity_keys(storage, source_ds, table)
    columns = enriched_columns(activity_columns, dims_columns)
    names = [c.name for c in columns]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UsageError(f"--enrich: attribute(s) {', '.join(clash)} clash with the activity columns")

    def enrich(prefix: str) -> None:
        run_enrichment(root, keys, dims, members, key.name, columns, prefix)

    return enrich, (columns, None)
