"""Delta tables as a table format: one Delta table per activity at ``<DataSource>/<Table>/``.

The Parquet files are the ones the CDM format writes (same columns, same bytes); the table adds
``ActivityDate`` (DATE, the UTC date of ActivityTime) as its partition column, carried by the
log as each file's partition value (``<Table>/ActivityDate=2024-05-01/<file>.parquet``). delta-rs
writes the log: every commit is ``max_commit_retries=0``, so it lands only as the next version
of the snapshot the run planned from (Delta's own put-if-absent of the log entry, locally and on
Azure), which is what makes it a fenced, conditional commit. Each commit carries the run id in
its commit info (``insights_link.run_id``).

Only what Customer Insights - Data reads is used: reader protocol 1 / writer 2, no deletion
vectors, timestamps as UTC-adjusted ``timestamp`` (never ``timestamp_ntz``), plain partitions.

A run writing several tables commits them one by one in name order; each table is atomic. The
first table's commit is the run's commit point: a run killed before the last one is completed
by the next run's recovery (the commit record lists every file), never written twice, because
a file already in a table's log is not added again.
"""

from __future__ import annotations

import json
import logging
import re

import pyarrow as pa

from insights_link.checkpoints import checkpoint
from insights_link.core.contract import Column
from insights_link.errors import UsageError
from insights_link.lake.cdm import MANIFEST_FILE
from insights_link.lake.tableformat import Check, Snapshot, TableState
from insights_link.storage import PreconditionFailed, Storage, StorageError, is_remote, join

logger = logging.getLogger(__name__)

PARTITION = "ActivityDate"
LOG_FOLDER = "_delta_log"
RUN_ID_KEY = "insights_link.run_id"
OPERATION_KEY = "insights_link.operation"


def table_schema(columns: tuple[Column, ...]) -> pa.Schema:
    """The Delta table's schema: the CDM columns, then the ``ActivityDate`` partition column."""
    fields = [pa.field(c.name, c.arrow_type, nullable=not c.primary_key) for c in columns]
    return pa.schema([*fields, pa.field(PARTITION, pa.date32())])


def delta_location(table: str, date: str, name: str) -> str:
    """``WebLog/ActivityDate=2024-05-01/<name>``: Hive-style, as Delta writers lay files out."""
    return f"{table}/{PARTITION}={date}/{name}"


#: table features that take a table beyond what Customer Insights reads (or this tool keeps)
UNREADABLE_FEATURES = {
    "deletionVectors",
    "timestampNtz",
    "liquidClustering",
    "clustering",
    "typeWidening",
    "typeWidening-preview",
    "variantType",
    "variantType-preview",
    "domainMetadata",
}


def unwritable(dt) -> str | None:
    """Why this tool must not write to an existing Delta table, or None: not partitioned by
    ``ActivityDate`` alone (the per-date dedupe would miss its rows), or beyond what Customer
    Insights reads (reader protocol above 2, deletion vectors, timestamp_ntz, clustering, type
    widening, variant)."""
    protocol = dt.protocol()
    partitions = list(dt.metadata().partition_columns)
    if partitions != [PARTITION]:
        return f"it is partitioned by {partitions or 'nothing'}, not by [{PARTITION!r}]"
    features = set(protocol.reader_features or ()) | set(protocol.writer_features or ())
    if protocol.min_reader_version > 2 or features & UNREADABLE_FEATURES:
        shown = sorted(features & UNREADABLE_FEATURES) or [f"reader version {protocol.min_reader_version}"]
        return f"it uses {', '.join(shown)}, which Customer Insights does not read"
    schema = dt.schema().to_json()
    for kind in ("timestamp_ntz", "variant"):
        if f'"{kind}"' in schema:
            return f"it has {kind} columns, which Customer Insights does not read"
    return None


def check_delta_location(url: str, flag: str) -> None:
    """Refuse a lake root delta-rs can't round-trip: it decodes ``%XX`` when it reads a table
    back but not when it writes one (deltalake 1.6), so such a table would be unreadable."""
    if re.search("%[0-9A-Fa-f]{2}", url.split("?", 1)[0]):
        raise UsageError(
            f"{flag} {url.split('?', 1)[0]!r} holds a %XX sequence, which delta-rs decodes when it reads "
            "a Delta table back but not when it writes one; choose a path without '%' for Delta tables"
        )


def _clean(storage: Storage, exc: BaseException) -> str:
    """One line of a delta-rs error, without secrets (object-store errors can quote URLs)."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    if is_remote(storage.url):
        from insights_link.storage.azure import scrub

        text = scrub(text)
    return text[:300]


class DeltaFormat:
    """See the module docstring and :class:`~insights_link.lake.tableformat.TableFormat`."""

    name = "delta"

    # -- reading -----------------------------------------------------------------------------

    def tables(self, storage: Storage, data_source: str) -> list[str]:
        """The names of the Delta tables in the data-source folder."""
        return [
            name
            for name in storage.folders(data_source)
            if not name.startswith("_") and LOG_FOLDER in storage.folders(join(data_source, name))
        ]

    def open(self, storage: Storage, data_source: str, table: str, version: int | None = None):
        """delta-rs's ``DeltaTable`` of ``table`` (at ``version``, default the latest)."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        uri, options = storage.external(join(data_source, table))
        try:
            return DeltaTable(uri, version=version, storage_options=options)
        except (DeltaError, OSError) as exc:
            raise StorageError(
                f"cannot read the Delta log of table {table!r}: {_clean(storage, exc)}"
            ) from exc

    def read(self, storage: Storage, data_source: str) -> Snapshot:
        from deltalake.exceptions import DeltaError

        tables: dict[str, TableState] = {}
        versions: dict[str, int] = {}
        columns: dict[str, list[str]] = {}
        problems: dict[str, str] = {}
        for name in self.tables(storage, data_source):
            dt = self.open(storage, data_source, name)
            try:
                paths = pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist()
                schema = dt.schema()
            except (DeltaError, OSError) as exc:
                raise StorageError(
                    f"cannot read the Delta log of table {name!r}: {_clean(storage, exc)}"
                ) from exc
            tables[name] = TableState(name, sorted(f"{name}/{p}" for p in paths))
            versions[name] = dt.version()
            columns[name] = [f.name for f in schema.fields if f.name != PARTITION]
            problem = unwritable(dt)
            if problem:
                problems[name] = problem
        return Snapshot(tables, versions, None, columns, problems)

    def foreign(self, storage: Storage, data_source: str) -> str | None:
        if storage.exists(join(data_source, MANIFEST_FILE)):
            return f"a CDM folder ({MANIFEST_FILE})"
        return None

    def declared_columns(self, storage, data_source, snapshot: Snapshot, table: str) -> list[str] | None:
        return snapshot.columns.get(table)

    def columns(self, storage: Storage, data_source: str, table: str) -> tuple[Column, ...]:
        """The table's columns with their types, from its log's schema (ActivityDate left out)."""
        schema = pa.schema(self.open(storage, data_source, table).schema().to_arrow())
        columns = []
        for f in schema:
            if f.name == PARTITION:
                continue
            if not (
                pa.types.is_timestamp(f.type)
                or pa.types.is_string(f.type)
                or pa.types.is_large_string(f.type)
            ):
                raise StorageError(
                    f"Delta table {table!r}: column {f.name!r} has type {f.type}, not string or timestamp"
                )
            cdm = "dateTime" if pa.types.is_timestamp(f.type) else "string"
            columns.append(Column(f.name, f.type, cdm, primary_key=f.name == "ActivityId"))
        return tuple(columns)

    def location(self, table: str, date: str, name: str) -> str:
        return delta_location(table, date, name)

    def table_documents(self, table_columns: dict[str, tuple[Column, ...]]) -> dict[str, bytes]:
        return {}  # the schema lives in each table's log

    # -- writing -----------------------------------------------------------------------------

    def prepare(self, storage, data_source, snapshot: Snapshot, table_columns, check: Check) -> None:
        """Create each missing table, empty, before the run's commit record: so a recovery that
        finds the record also finds the tables to fence (a stalled run can't create one late
        and commit into it)."""
        from deltalake import Schema
        from deltalake.transaction import CommitProperties, create_table_with_add_actions

        versions: dict[str, int] = snapshot.version  # type: ignore[assignment]
        for table, columns in sorted(table_columns.items()):
            if table in snapshot.tables:
                continue
            check()
            uri, options = storage.external(join(data_source, table))
            self._call(
                storage,
                table,
                create_table_with_add_actions,
                uri,
                Schema.from_arrow(table_schema(columns)),
                [],
                mode="error",
                partition_by=[PARTITION],
                storage_options=options,
                commit_properties=CommitProperties(
                    custom_metadata={OPERATION_KEY: "create"}, max_commit_retries=0
                ),
            )
            snapshot.tables[table] = TableState(table)
            versions[table] = 0
            snapshot.columns[table] = [c.name for c in columns]

    def commit(
        self,
        storage,
        data_source,
        snapshot: Snapshot,
        files,
        table_columns,
        run_id,
        check,
        removed=(),
        data_change=True,
        removed_at=0,
    ) -> None:
        """One transaction per table (its adds and removes), in name order, each conditional on
        the planned version."""
        versions: dict[str, int] = snapshot.version  # type: ignore[assignment]
        adds, removes = _by_table(files), _by_table(list(removed))
        for n, table in enumerate(sorted(set(adds) | set(removes))):
            if n:
                checkpoint("between_table_commits")
            check()
            columns = table_columns.get(table)
            if columns is None:  # a table this commit only takes files out of
                columns = pa.schema(
                    self.open(storage, data_source, table, versions[table]).schema().to_arrow()
                )
            self._append(
                storage,
                data_source,
                table,
                versions[table],
                adds.get(table, []),
                columns,
                run_id,
                removes.get(table, []),
                data_change,
                removed_at,
            )

    def complete(
        self, storage, data_source, files, run_id, check: Check, removed=(), data_change=True, removed_at=0
    ) -> None:
        """Commit what a run that passed its commit point left uncommitted: the tables whose log
        doesn't list its files yet (or still lists the files it removes), a run killed between
        two table commits. Conditional like a run's commit; a concurrent completion that wins
        makes this one find nothing left to do."""
        adds, removes = _by_table(files), _by_table(list(removed))
        for table in sorted(set(adds) | set(removes)):
            for attempt in range(4):
                if attempt == 3:
                    raise StorageError(
                        f"could not complete run {run_id}'s commit to Delta table {table!r}: another "
                        "writer kept committing to it; the next run tries again"
                    )
                dt = self.open(storage, data_source, table)
                listed = set(pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist())
                missing = [f for f in adds.get(table, []) if _relative(f["location"]) not in listed]
                remaining = [r for r in removes.get(table, []) if _relative(r["location"]) in listed]
                if (adds.get(table) and not missing) or not (missing or remaining):
                    break  # the table's transaction landed (adds and removes go together)
                logger.warning(
                    "completing the commit of run %s: %d file(s) to add to table %s, %d to remove",
                    run_id,
                    len(missing),
                    table,
                    len(remaining),
                )
                check()
                schema = pa.schema(dt.schema().to_arrow())
                try:
                    self._append(
                        storage,
                        data_source,
                        table,
                        dt.version(),
                        missing,
                        schema,
                        run_id,
                        remaining,
                        data_change,
                        removed_at,
                    )
                    break
                except PreconditionFailed:
                    continue

    def fence(self, storage, data_source, snapshot: Snapshot, tables: set[str]) -> None:
        """An empty commit (commit info only) to each table at its snapshot version + 1."""
        from deltalake.transaction import CommitProperties

        versions: dict[str, int] = snapshot.version  # type: ignore[assignment]
        for table in sorted(tables & set(snapshot.tables)):
            dt = self.open(storage, data_source, table, versions[table])
            self._call(
                storage,
                table,
                dt.create_write_transaction,
                [],
                mode="append",
                schema=dt.schema().to_arrow(),
                partition_by=[PARTITION],
                commit_properties=CommitProperties(
                    custom_metadata={OPERATION_KEY: "fence"}, max_commit_retries=0
                ),
            )

    def create_with(self, storage, data_source, table, columns, files, check: Check) -> None:
        """Create ``table`` whose first version lists ``files`` where they lie (a conversion)."""
        from deltalake import Schema
        from deltalake.transaction import CommitProperties, create_table_with_add_actions

        adds = self._adds(storage, data_source, table, files)
        uri, options = storage.external(join(data_source, table))
        check()
        self._call(
            storage,
            table,
            create_table_with_add_actions,
            uri,
            Schema.from_arrow(table_schema(columns)),
            adds,
            mode="error",
            partition_by=[PARTITION],
            storage_options=options,
            commit_properties=CommitProperties(
                custom_metadata={OPERATION_KEY: "convert"}, max_commit_retries=0
            ),
        )

    @staticmethod
    def _adds(
        storage: Storage, data_source: str, table: str, files: list[dict], data_change: bool = True
    ) -> list:
        """delta-rs add actions for files already in place (size and time from the storage)."""
        from deltalake.transaction import AddAction

        adds = []
        for f in files:
            info = storage.info(join(data_source, f["location"]))
            if info is None:
                raise StorageError(f"{f['location']} is missing; it can't be committed to table {table!r}")
            stats = {"numRecords": f["rows"]} if f.get("rows") is not None else {}
            adds.append(
                AddAction(
                    _relative(f["location"]),
                    info.size,
                    {PARTITION: f["date"]},
                    int(info.modified.timestamp() * 1000),
                    data_change,
                    json.dumps(stats),
                )
            )
        return adds

    def _append(
        self,
        storage,
        data_source,
        table,
        version,
        files,
        columns,
        run_id,
        removed=(),
        data_change=True,
        removed_at=0,
    ) -> None:
        """One conditional transaction: add ``files``, remove ``removed`` (still on storage)."""
        from deltalake.transaction import CommitProperties, RemoveAction

        actions = self._adds(storage, data_source, table, files, data_change)
        actions += [
            RemoveAction(_relative(r["location"]), data_change, removed_at, None, {PARTITION: r["date"]})
            for r in removed
        ]
        schema = columns if isinstance(columns, pa.Schema) else table_schema(columns)
        dt = self.open(storage, data_source, table, version)
        self._call(
            storage,
            table,
            dt.create_write_transaction,
            actions,
            mode="append",
            schema=schema,
            partition_by=[PARTITION],
            commit_properties=CommitProperties(custom_metadata={RUN_ID_KEY: run_id}, max_commit_retries=0),
        )

    @staticmethod
    def _call(storage: Storage, table: str, action, *args, **kwargs) -> None:
        """Run one delta-rs commit; a lost race is :class:`PreconditionFailed`."""
        from deltalake.exceptions import CommitFailedError, DeltaError

        try:
            action(*args, **kwargs)
        except CommitFailedError as exc:
            raise PreconditionFailed(
                f"another writer committed to Delta table {table!r} first ({_clean(storage, exc)})"
            ) from exc
        except (DeltaError, OSError) as exc:
            if "already exists" in str(exc).lower():
                raise PreconditionFailed(f"Delta table {table!r} was created by another writer") from exc
            raise StorageError(f"the commit to Delta table {table!r} failed: {_clean(storage, exc)}") from exc


def _by_table(files: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for f in files:
        grouped.setdefault(f["table"], []).append(f)
    return grouped


def _relative(location: str) -> str:
    """A data-source location as a path inside its table (``ActivityDate=.../<file>``)."""
    return location.split("/", 1)[1]
