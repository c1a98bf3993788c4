"""Files of Arrow rows in the lake: the Parquet partitions (snappy, INT64 UTC timestamps, never
INT96), and the run's intermediate pieces (Arrow IPC, in staging only)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from insights_link.errors import InsightsLinkError
from insights_link.storage import Storage, StorageError
from insights_link.storage.local import LocalStorage

#: Columns written with Parquet dictionary encoding: the ones whose meaning makes them few-valued
#: per file (ActivityType is one value per table, LastUpdated one per run, EventActivity and
#: Details are event and action names). Decided by the contract, not by sampling the data, so
#: the same rows always give the same file. Ids, times, URLs and pass-through properties
#: (unknown meaning) are mostly distinct: a dictionary there costs time and saves nothing.
DICTIONARY_COLUMNS: tuple[str, ...] = ("EventActivity", "Details", "ActivityType", "LastUpdated")


class UnreadableParquet(InsightsLinkError, RuntimeError):
    """A committed file is not readable Parquet; the message names it."""


def read_committed(storage: Storage, key: str, columns: list[str] | None = None) -> pa.Table:
    """A committed Parquet file (only ``columns``, when given); a damaged one is
    :class:`UnreadableParquet` naming it, never a traceback."""
    try:
        with storage.open_read(key) as f:
            return pq.read_table(f, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        detail = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        raise UnreadableParquet(
            f"{storage.describe(key)} is not readable Parquet ({detail}); nothing was changed "
            "(insights-link verify lists every such file)"
        ) from exc


def write_parquet(storage: Storage, key: str, table: pa.Table, schema: pa.Schema) -> int:
    """Write ``table`` (cast to the explicit ``schema``) as one Parquet object; returns rows."""
    table = table.select(schema.names).cast(schema)
    with storage.open_write(key) as out:
        pq.write_table(
            table,
            out,
            compression="snappy",
            coerce_timestamps="us",
            use_deprecated_int96_timestamps=False,
            row_group_size=1 << 20,
            use_dictionary=[name for name in DICTIONARY_COLUMNS if name in schema.names],
        )
    return table.num_rows


def read_ids(storage: Storage, keys: list[str]) -> pa.Array:
    """The ActivityId values of committed files (only that column is read)."""
    arrays = []
    for key in keys:
        with storage.open_read(key) as f:
            arrays.extend(pq.read_table(f, columns=["ActivityId"])["ActivityId"].chunks)
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def write_piece(storage: Storage, key: str, table: pa.Table) -> int:
    """Spill rows to an Arrow IPC file in staging (fast to write and read back, never published).

    Locally without fsync: a piece is only read back by the same run, through the page cache,
    and no commit ever makes it visible; after a crash recovery deletes the run's staging
    unread (see docs/fastpath.md). The Parquet files a commit publishes are still fsynced.
    """
    opened = (
        storage.open_write(key, sync=False) if isinstance(storage, LocalStorage) else storage.open_write(key)
    )
    with opened as out, pa.ipc.new_file(out, table.schema) as writer:
        writer.write_table(table)
    return table.num_rows


def read_pieces(storage: Storage, keys: list[str]) -> list[pa.Table]:
    """Read spilled pieces back, in the order given.

    Locally memory-mapped: no copy, and a caller that keeps only some columns (the dedupe's
    rivals: id and input order) never touches the others' pages.
    """
    tables = []
    for key in keys:
        if isinstance(storage, LocalStorage):
            try:
                with pa.memory_map(storage.external(key)[0]) as source:
                    tables.append(pa.ipc.open_file(source).read_all())
            except FileNotFoundError as exc:
                raise StorageError(f"cannot read {storage.describe(key)}: {exc.strerror}") from exc
            continue
        with storage.open_read(key) as f:
            tables.append(pa.ipc.open_file(f).read_all())
    return tables
