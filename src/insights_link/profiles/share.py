"""Publish the shared profiles into a data source: ``CustomerDimensions`` (the user key and the
chosen attributes, source types kept), ``SegmentMembership`` (user key, segment) and, with
``--enrich``, ``EnrichedActivities``, as one new full snapshot.

Under the data source's lock, like ``forget`` and ``compact``: settle dead runs, stage the new
files, then :meth:`Lake.commit` adds them and takes every file of the previous snapshot of those
tables out in the same conditional step (one manifest write for CDM, one transaction per table
for Delta). The old files stay on storage until ``vacuum``. A run killed anywhere is settled by
the next run (rolled forward when its commit point passed, back otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from insights_link.checkpoints import checkpoint
from insights_link.core.contract import Column, columns_schema
from insights_link.core.profiles import Attribute, cdm_type_of, normalized_type
from insights_link.errors import UsageError
from insights_link.lake.commit import Lake
from insights_link.lake.layout import date_of_partition, partition_file_name
from insights_link.lake.maintenance import check_run_id
from insights_link.lake.parquet import write_parquet
from insights_link.storage import join

logger = logging.getLogger(__name__)

DIMENSIONS = "CustomerDimensions"
MEMBERSHIP = "SegmentMembership"
ENRICHED = "EnrichedActivities"
SEGMENT = "Segment"


def dimension_columns(key: Attribute, attributes: list[Attribute]) -> tuple[Column, ...]:
    """The key (not null, the table's key) and each attribute with its source type."""
    first = Column(key.name, pa.string(), "string", primary_key=True)
    rest = tuple(Column(a.name, normalized_type(a.arrow_type), cdm_type_of(a.arrow_type)) for a in attributes)
    return (first, *rest)


def membership_columns(key: Attribute) -> tuple[Column, ...]:
    return (Column(key.name, pa.string(), "string"), Column(SEGMENT, pa.string(), "string"))


def dimension_rows(profiles: pa.Table, key: str, columns: tuple[Column, ...]) -> tuple[pa.Table, dict]:
    """Profiles as dimension rows: blank user keys dropped, one row per key (the first)."""
    keys = pc.utf8_trim_whitespace(profiles[key].cast(pa.string()))
    profiles = profiles.set_column(profiles.schema.get_field_index(key), key, keys)
    blank = pc.fill_null(pc.equal(keys, ""), True)
    kept = profiles.filter(pc.invert(blank))
    seen: set[str] = set()
    mask = []
    for value in kept[key].to_pylist():
        mask.append(value not in seen)
        seen.add(value)
    unique = kept.filter(pa.array(mask, pa.bool_()))
    schema = columns_schema(columns)
    table = unique.select(schema.names).cast(schema)
    return table, {
        "profiles_read": profiles.num_rows,
        "blank_user_keys": profiles.num_rows - kept.num_rows,
        "repeated_user_keys": kept.num_rows - unique.num_rows,
    }


def staged_file(lake: Lake, run_id: str, table: str, day: str, index: int, rows: pa.Table, schema) -> dict:
    name = partition_file_name(table, day, run_id, index)
    staged = lake.staging(run_id, "data", table, name)
    count = write_parquet(lake.storage, staged, rows, schema)
    checkpoint("after_staged_file")
    return {
        "staged": staged,
        "name": name,
        "table": table,
        "date": day,
        "rows": count,
        "location": lake.format.location(table, day, name),
        "kind": "full",
    }


def check_tables(lake: Lake, table_columns: dict[str, tuple[Column, ...]], declared: dict) -> None:
    """Refuse (exit 2, before writing) a table whose committed columns differ from this run's."""
    for table, columns in table_columns.items():
        held = declared.get(table)
        names = [c.name for c in columns]
        if held is not None and [n for n in held if n != "ActivityDate"] != names:
            raise UsageError(
                f"table {table!r} of data source {lake.data_source!r} was shared with columns "
                f"{', '.join(held)}; this run has {', '.join(names)}. Share into another "
                "--data-source (or remove that data source) to change the attributes"
            )


def publish(
    lake: Lake,
    run_id: str,
    clock: Callable[[], datetime],
    head: dict,
    tables: dict[str, tuple[tuple[Column, ...], pa.Table | None]],
    enrich: Callable[[str], None] | None = None,
) -> dict:
    """Commit ``tables`` (name -> (columns, rows)) as the new snapshot of each; ``rows`` None
    with ``enrich``: that table's pieces are staged by ``enrich(staging_prefix)`` (Beam). The
    lock is held by the caller. Returns the committed report."""
    started = clock()
    check_run_id(lake, run_id)
    lake.recover()
    lake.sweep_abandoned()
    state = lake.read_state(cache=True)
    table_columns = {name: columns for name, (columns, _rows) in tables.items()}
    check_tables(lake, table_columns, state.columns)
    day = started.astimezone(UTC).date().isoformat()
    files: list[dict] = []
    for name, (columns, rows) in sorted(tables.items()):
        lake.check_lock()
        schema = columns_schema(columns)
        if rows is not None:
            files.append(staged_file(lake, run_id, name, day, 0, rows, schema))
            continue
        prefix = lake.staging(run_id, "pieces", name)
        assert enrich is not None
        enrich(prefix)
        by_day: dict[str, int] = {}
        for obj in lake.storage.list(prefix):
            piece_day = obj.key[len(prefix) + 1 :].split("/", 1)[0]
            with lake.storage.open_read(obj.key) as f:
                piece = pq.read_table(f)
            index = by_day.get(piece_day, 0)
            by_day[piece_day] = index + 1
            files.append(staged_file(lake, run_id, name, piece_day, index, piece, schema))
        lake.storage.delete_prefix(prefix)
    removed = [
        {"location": loc, "table": name, "date": date_of_partition(loc) or day}
        for name in sorted(tables)
        if name in state.tables
        for loc in sorted(state.tables[name].data_locations())
    ]
    report = dict(
        head,
        run_id=run_id,
        operation="share-profiles",
        data_source=lake.data_source,
        output=lake.describe(),
        table_format=lake.format.name,
        started_at=_iso(started),
        tables={
            name: {
                "rows": sum(f["rows"] for f in files if f["table"] == name),
                "columns": [c.name for c in cols],
            }
            for name, (cols, _rows) in sorted(tables.items())
        },
        files_replaced=len(removed),
    )
    checkpoint("share_before_commit")
    report = lake.commit(run_id, report, files, [], table_columns, removed=removed, data_change=True)
    return report


def committed_activity_keys(
    lake_storage, data_source: str, table: str
) -> tuple[list[str], tuple[Column, ...], str]:
    """The committed files (keys below the lake root) and columns of activity table ``table`` of
    ``data_source``, in whichever format it holds; and that format's name."""
    from insights_link.commands.common import detect_format
    from insights_link.lake import table_format

    fmt = detect_format(lake_storage, data_source)
    if fmt not in ("cdm", "delta"):
        raise UsageError(f"--enrich {data_source}/{table}: the data source holds {fmt} table format(s)")
    tf = table_format(fmt)
    snapshot = tf.read(lake_storage, data_source)
    if table not in snapshot.tables:
        raise UsageError(
            f"--enrich {data_source}/{table}: no table {table!r} (it has {', '.join(sorted(snapshot.tables)) or 'none'})"
        )
    columns = tf.columns(lake_storage, data_source, table)
    if "CustomerId" not in [c.name for c in columns]:
        raise UsageError(f"--enrich {data_source}/{table}: the table has no CustomerId column")
    keys = [join(data_source, loc) for loc in sorted(snapshot.tables[table].data_locations())]
    return keys, columns, fmt


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
