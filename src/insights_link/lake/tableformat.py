"""What a table format gives the commit protocol of :mod:`.commit`.

A format says what the committed state looks like (:class:`Snapshot`), where a staged file goes,
how a run's files become visible in **one conditional step** per commit object, how recovery
*fences* a stalled writer out, and how a commit left half done is completed. The CDM folder
(:mod:`.cdm`) has one commit object, the manifest; Delta (:mod:`.delta`) has one log per table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from insights_link.core.contract import Column
from insights_link.errors import UsageError
from insights_link.storage import Storage

#: the fence check the commit passes to a format: raises unless this process still holds the lock
Check = Callable[[], None]


class FormatMismatch(UsageError):
    """The data source holds another table format than the run asked for."""


@dataclass
class TableState:
    """The committed files of one table, as locations relative to the data-source folder."""

    name: str
    partitions: list[str] = field(default_factory=list)  # CDM FullData files; every Delta file
    incremental: list[str] = field(default_factory=list)  # CDM IncrementalData/.../Upserts files
    deletes: list[str] = field(default_factory=list)  # CDM IncrementalData/.../Deletes files (forget)

    def all_locations(self) -> list[str]:
        """Every file the table references (nothing of these is ever deleted)."""
        return self.partitions + self.incremental + self.deletes

    def data_locations(self) -> list[str]:
        """The files holding the table's rows (not the Deletes files naming removed keys)."""
        return self.partitions + self.incremental


@dataclass
class Snapshot:
    """The committed state as one read saw it. ``version`` is what a commit is conditional on
    (compared for equality): the manifest's version for CDM, each table's log version for
    Delta. ``data`` is the CDM manifest's bytes (a fence rewrites them unchanged); ``columns``
    the declared columns a format read along with the state (Delta's log schemas)."""

    tables: dict[str, TableState]
    version: object
    data: bytes | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # table -> why this tool must not write it

    def referenced(self) -> set[str]:
        return {loc for t in self.tables.values() for loc in t.all_locations()}


class TableFormat(Protocol):
    """A table format on top of :class:`~insights_link.storage.Storage` (see the module doc)."""

    name: str

    def read(self, storage: Storage, data_source: str) -> Snapshot:
        """The committed state; raises :class:`~insights_link.storage.StorageError`."""

    def foreign(self, storage: Storage, data_source: str) -> str | None:
        """What of another table format the data-source folder holds (None: nothing)."""

    def declared_columns(
        self, storage: Storage, data_source: str, snapshot: Snapshot, table: str
    ) -> list[str] | None:
        """The columns a committed table declares (None when the table has none yet)."""

    def columns(self, storage: Storage, data_source: str, table: str) -> tuple[Column, ...]:
        """A committed table's columns with their types."""

    def location(self, table: str, date: str, name: str) -> str:
        """Where a staged file of ``table`` holding events of UTC ``date`` goes."""

    def table_documents(self, table_columns: dict[str, tuple[Column, ...]]) -> dict[str, bytes]:
        """Documents beside the tables (CDM entity documents), relative key -> bytes."""

    def prepare(
        self,
        storage: Storage,
        data_source: str,
        snapshot: Snapshot,
        table_columns: dict[str, tuple[Column, ...]],
        check: Check,
    ) -> None:
        """Before a run's commit record: create what the commit needs (Delta: missing tables,
        empty), updating ``snapshot``. Raises PreconditionFailed when another writer did."""

    def commit(
        self,
        storage: Storage,
        data_source: str,
        snapshot: Snapshot,
        files: list[dict],
        table_columns: dict[str, tuple[Column, ...]],
        run_id: str,
        check: Check,
        removed: list[dict] = ...,  # type: ignore[assignment]
        data_change: bool = True,
        removed_at: int = 0,
    ) -> None:
        """Make ``files`` visible and take ``removed`` out, conditional on ``snapshot.version``;
        the first successful write is the run's commit point. ``removed_at``: epoch ms (the
        run's clock). Raises PreconditionFailed or StorageError."""

    def fence(self, storage: Storage, data_source: str, snapshot: Snapshot, tables: set[str]) -> None:
        """Rewrite the commit object(s) of ``tables`` without changing what they hold, so that
        any commit planned against ``snapshot`` fails. Raises PreconditionFailed."""

    def complete(
        self,
        storage: Storage,
        data_source: str,
        files: list[dict],
        run_id: str,
        check: Check,
        removed: list[dict] = ...,  # type: ignore[assignment]
        data_change: bool = True,
        removed_at: int = 0,
    ) -> None:
        """Make the ``files`` of a run that passed its commit point visible where they are
        not yet (Delta: the tables a killed run had not committed). Safe to repeat."""
