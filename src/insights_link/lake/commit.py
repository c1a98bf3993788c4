"""The commit protocol of a data-source folder, independent of the table format.

A run's workers write only below ``_staging/<run>/`` (see :mod:`.layout`). The launcher then
commits, holding the data source's lock: stage the report -> write the commit record (where the
run's files go) -> move staged Parquet into the data folders (still unreferenced) -> write the
table documents (conditionally) -> **one conditional write of the format's commit object** (for
CDM the manifest; it succeeds only if the object is still the version this run planned from; a
run without data commits with a conditional run report instead) -> publish dead letters -> the
run report -> delete staging. Every step that changes what readers see or deletes anything is
fenced by a check that this process still holds the lock.

A run that dies leaves its staging folder; the next run's :meth:`Lake.recover` rolls it forward
when the commit object references its files, and back otherwise, after rewriting the commit
object so that a stalled writer's late commit fails. Only files a run's commit record lists are
ever deleted. The table format (:class:`~insights_link.lake.cdm.CdmFormat`) says what the commit
object and the table documents look like; a second format is one new module.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from insights_link.checkpoints import checkpoint
from insights_link.core.contract import Column
from insights_link.core.deadletters import dead_letter_key
from insights_link.errors import InsightsLinkError
from insights_link.lake.cdm import CdmFormat, entity_columns
from insights_link.lake.layout import (
    COMMIT_RECORD,
    INDEX_FILE,
    date_of_partition,
    incremental_location,
    input_key,
    run_of,
    staging_key,
)
from insights_link.lake.tableformat import FormatMismatch, Snapshot, TableFormat, TableState
from insights_link.storage import (
    LockBusy,
    LockHandle,
    LockLost,
    PreconditionFailed,
    Storage,
    StorageError,
    join,
)

logger = logging.getLogger(__name__)

ABANDONED_FILE = "abandoned.json"
ABANDONED_KEEP_SECONDS = 24 * 3600


class LakeError(InsightsLinkError, RuntimeError):
    """The data-source folder is in a state this run must not touch; the message says why."""


class LakeBusy(LakeError):
    """Another run holds the data source's lock."""


class CommitLost(LakeError):
    """This run lost its lock, or another run committed since this one read the data source:
    nothing of this run is visible, and it touched nothing of the others'."""


class CommitUnfinished(LakeError):
    """The run's commit is visible, but a step after the commit point failed (the run report,
    removing staging); the next run finishes it."""


class CommitUnknown(LakeError):
    """The storage failed at the commit point and could not be asked afterwards whether the
    commit became visible; the next run settles it (rolls it forward or back)."""


@dataclass
class LakeState:
    """The committed state a run starts from."""

    tables: dict[str, TableState]
    columns: dict[str, list[str]]
    committed_inputs: dict[str, str]  # input_key(table, fingerprint) -> run id that committed it

    def partitions_by_date(self, table: str) -> dict[str, list[str]]:
        """Committed partition locations of ``table`` grouped by event date."""
        grouped: dict[str, list[str]] = {}
        state = self.tables.get(table)
        for location in state.data_locations() if state else []:
            date = date_of_partition(location)
            if date:
                grouped.setdefault(date, []).append(location)
        return grouped


class Lake:
    """One data-source folder on a :class:`Storage`.

    Every step that changes what readers see or deletes anything is *fenced*: it first checks
    that this process still holds the data source's lock, and the commit point itself is a
    conditional write of the manifest (it succeeds only if the manifest is still the version
    this run planned from). A run that takes over from a dead or stalled one rewrites the
    manifest (same content, new version) before deleting anything of it, so the stalled run's
    late commit fails instead of listing deleted files.
    """

    def __init__(
        self,
        storage: Storage,
        data_source: str,
        table_format: TableFormat | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))  # the run's clock: rolled-back times, sweeps
        self.storage = storage
        self.data_source = data_source
        self.format: TableFormat = table_format or CdmFormat()
        self.fence: LockHandle | None = None
        self.planned_version: object = None  # the commit object's version read_state() saw

    def key(self, *parts: str) -> str:
        """A key below the data-source folder."""
        return join(self.data_source, *parts)

    def staging(self, run_id: str, *parts: str) -> str:
        return staging_key(self.data_source, run_id, *parts)

    def describe(self) -> str:
        return self.storage.describe(self.data_source)

    @contextmanager
    def locked(self, wait_seconds: float, poll_seconds: float = 1.0) -> Iterator[None]:
        """Hold the data source's lock for a run; wait up to ``wait_seconds`` for another run.

        Raises :class:`LakeBusy` when the lock stays taken. Local lakes use a file lock the kernel
        releases when its holder dies; ADLS uses a blob lease that expires after its holder dies.
        While waiting, says once who holds it and since when.
        """
        waited = 0.0
        while True:
            try:
                with self.storage.lock(self.key("_lock")) as handle:
                    self.fence = handle
                    try:
                        yield
                    finally:
                        self.fence = None
                return
            except LockBusy as exc:
                if waited >= wait_seconds:
                    raise LakeBusy(
                        f"another run is writing to data source {self.data_source!r} "
                        f"({exc}); waited {wait_seconds:g} s"
                    ) from exc
                if waited == 0:
                    logger.warning("waiting up to %g s for the lock: %s", wait_seconds, exc)
            time.sleep(poll_seconds)
            waited += poll_seconds

    def check_lock(self) -> None:
        """Raise :class:`LockLost` unless this process still holds the data source's lock."""
        if self.fence is None:
            raise LockLost(f"this run does not hold the lock of data source {self.data_source!r}")
        self.fence.check()

    # -- reading the committed state ---------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The committed tables and the version a commit would be conditional on."""
        return self.format.read(self.storage, self.data_source)

    def read_tables(self) -> dict[str, TableState]:
        return self.snapshot().tables

    def check_format(self) -> None:
        """Raise :class:`FormatMismatch` when the data source holds another table format."""
        found = self.format.foreign(self.storage, self.data_source)
        if found:
            raise FormatMismatch(
                f"data source {self.data_source!r} holds {found}, not {self.format.name}; "
                f"run with the table format it has, or convert it first "
                f"(insights-link convert --to {self.format.name})"
            )

    def read_state(self, cache: bool = True) -> LakeState:
        """The committed state this run plans from; its version is what the commit will be
        conditional on. ``cache=False`` reads only (a dry run: no lock, no writes)."""
        self.check_format()
        snapshot = self.snapshot()
        for table, problem in sorted(snapshot.problems.items()):
            raise FormatMismatch(
                f"{self.format.name} table {table!r} of data source {self.data_source!r} can't be "
                f"written by insights-link: {problem}"
            )
        self.planned_version = snapshot.version
        columns = {}
        for name in snapshot.tables:
            declared = self.format.declared_columns(self.storage, self.data_source, snapshot, name)
            if declared is not None:
                columns[name] = declared
        return LakeState(snapshot.tables, columns, self.committed_inputs(cache))

    def committed_inputs(self, cache: bool = True) -> dict[str, str]:
        """``input_key(table, fingerprint)`` -> the run that committed that input for that table.

        Read from ``_state/runs_index.json``, a cache of the run reports it names, plus the reports
        written since; the cache is then rewritten. So the Nth run reads one listing, one index
        and the few new reports, not every report ever written. Call under the lock, or with
        ``cache=False``, which leaves the cache as it is (reads only).
        """
        index_key = self.key("_state", INDEX_FILE)
        index: dict = {"runs": [], "inputs": {}, "dead_letters": {}}
        if self.storage.exists(index_key):
            cached = json.loads(self.storage.read_bytes(index_key))
            if "dead_letters" in cached:  # an index from before dead letters were tracked: rebuild
                index = cached
        known = set(index["runs"])
        new = [
            obj.key
            for obj in self.storage.list(self.key("_runs"))
            if obj.key.endswith(".json") and obj.key.rsplit("/", 1)[-1][:-5] not in known
        ]
        for key in new:
            report = json.loads(self.storage.read_bytes(key))
            index["runs"].append(report["run_id"])
            if report.get("status") == "committed":
                for entry in report.get("inputs", []):
                    if entry.get("status") == "processed":
                        for table in entry.get("activities", report.get("tables", [])):
                            index["inputs"][input_key(table, entry["fingerprint"])] = report["run_id"]
                        if report.get("dead_letters"):
                            runs = index["dead_letters"].setdefault(entry["source"], [])
                            runs.append(report["run_id"])
        self._dead_letter_runs = index["dead_letters"]
        if new and cache:
            index["runs"].sort()
            self.storage.write_bytes(index_key, json.dumps(index, sort_keys=True).encode("utf-8"))
        return index["inputs"]

    def recorded_dead_letters(self, sources: Iterable[str]) -> set[tuple]:
        """Keys (:func:`dead_letter_key`) of the dead letters committed runs already wrote for
        records of these input files, so re-reading a file (``--reprocess``, or a file that grew)
        does not dead-letter the same record twice. Call after :meth:`committed_inputs`."""
        wanted = set(sources)
        runs = sorted(
            {r for source in wanted for r in getattr(self, "_dead_letter_runs", {}).get(source, [])}
        )
        keys: set[tuple] = set()
        for run_id in runs:
            key = self.key("_deadletter", f"{run_id}.jsonl.gz")
            if not self.storage.exists(key):
                continue
            for line in gzip.decompress(self.storage.read_bytes(key)).splitlines():
                letter = json.loads(line)
                if letter.get("source") in wanted:
                    keys.add(dead_letter_key(letter))
        return keys

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, only: str | None = None) -> dict[str, str]:
        """Finish or undo runs that died or stalled (or only run ``only``): run id ->
        "committed" or "rolled back". Call under the lock.

        A run whose files the manifest references is rolled forward (its staged report becomes
        its report); any other is rolled back. Before deleting anything of a run that may still
        be alive (stalled, or its commit request still in flight), the manifest is rewritten
        conditionally, so that run's commit can no longer succeed. Only the rolled-back runs'
        own files are deleted, the ones their commit record lists; nothing else under the data
        source is touched. Staging folders go last, so a kill in
        here is retried by the next run.
        """
        self.check_lock()
        leftovers = sorted(
            {
                obj.key.split("/")[2]
                for obj in self.storage.list(self.key("_staging"))
                if obj.key.count("/") >= 3
            }
        )
        if only is not None:
            leftovers = [r for r in leftovers if r == only]
        if not leftovers:
            return {}
        while True:
            snapshot = self.snapshot()
            referenced = snapshot.referenced()
            settled = {run_id: self._settle(run_id, referenced) for run_id in leftovers}
            undo = [r for r, outcome in settled.items() if outcome == "rolled back"]
            if not any(r != only or self.storage.exists(self.staging(r, COMMIT_RECORD)) for r in undo):
                break
            self.check_lock()
            touched = {loc.split("/", 1)[0] for r in undo for loc in self._recorded_locations(r)}
            try:  # fence out the runs being undone: their commit now fails
                self.format.fence(self.storage, self.data_source, snapshot, touched)
                break
            except PreconditionFailed:
                logger.warning("the committed state changed during recovery; deciding again")
        for run_id in list(settled):
            if settled[run_id] == "rolled back" and run_id != only and not self._mark_rolled_back(run_id):
                settled[run_id] = "committed"  # its report landed first: it committed after all
        for run_id, outcome in settled.items():
            self.check_lock()
            if outcome == "committed":
                self._roll_forward(run_id)
            else:
                logger.warning("run %s did not commit; removing what it wrote", run_id)
                checkpoint("recovery_before_delete")
                self._delete_own_files(run_id, referenced)
        for run_id in leftovers:
            self.check_lock()
            self.storage.delete_prefix(self.staging(run_id))
        return settled

    def _mark_rolled_back(self, run_id: str) -> bool:
        """Write the run's "rolled back" report before undoing it, conditionally: a run without
        data that wakes up late then can't write its committed report. False when a report of
        the run already exists (it committed)."""
        record: dict = {
            "run_id": run_id,
            "status": "rolled_back",
            "rolled_back_at": self.clock().astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        record_key = self.staging(run_id, COMMIT_RECORD)
        if self.storage.exists(record_key):
            record["abandoned"] = json.loads(self.storage.read_bytes(record_key))["locations"]
        try:
            self.storage.write_if(
                self.key("_runs", f"{run_id}.json"),
                (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"),
                None,
            )
        except PreconditionFailed:
            return not self._committed_report(self.key("_runs", f"{run_id}.json"))
        self._remember_abandoned(run_id, record.get("abandoned", []), record["rolled_back_at"])
        return True

    def _roll_forward(self, run_id: str) -> None:
        staged_report = self.staging(run_id, "report.json")
        if not self._committed_report(self.key("_runs", f"{run_id}.json")):
            logger.warning("run %s died after its commit point; finishing it", run_id)
        else:
            logger.info("run %s had committed; removing its staging folder", run_id)
        letters = [o.key for o in self.storage.list(self.staging(run_id, "deadletter"))]
        report = self.storage.read_bytes(staged_report) if self.storage.exists(staged_report) else None
        if report is None:  # its report was written and staging partly removed: nothing to redo
            self.storage.delete_prefix(self.staging(run_id))
            return
        record = self._record(run_id)
        if record and (record.get("files") or record.get("removed")):  # several commit objects
            self.format.complete(
                self.storage,
                self.data_source,
                record.get("files", []),
                run_id,
                self.check_lock,
                removed=record.get("removed", []),
                data_change=record.get("data_change", True),
                removed_at=record.get("removed_at", 0),
            )
        self._finish(run_id, report, letters)

    def _record(self, run_id: str) -> dict | None:
        """A run's commit record (written before its first move), None when it has none."""
        key = self.staging(run_id, COMMIT_RECORD)
        return json.loads(self.storage.read_bytes(key)) if self.storage.exists(key) else None

    def _recorded_locations(self, run_id: str) -> list[str]:
        record = self._record(run_id)
        return record["locations"] if record else []

    def _settle(self, run_id: str, referenced: set[str]) -> str:
        """ "committed" when the run's report says so, or the manifest references its files and
        its staged report exists; otherwise "rolled back"."""
        if self._committed_report(self.key("_runs", f"{run_id}.json")):
            return "committed"
        if not self.storage.exists(self.staging(run_id, "report.json")):
            return "rolled back"
        if any(run_of(loc) == run_id for loc in referenced):
            return "committed"
        record = self._record(run_id)
        if record and record.get("removed") and not record.get("locations"):  # a removal only
            gone = {r["location"] for r in record["removed"]} - referenced
            return "committed" if gone else "rolled back"
        return "rolled back"

    def _committed_report(self, key: str) -> bool:
        if not self.storage.exists(key):
            return False
        try:
            return json.loads(self.storage.read_bytes(key)).get("status") == "committed"
        except ValueError:
            return False

    def _delete_own_files(self, run_id: str, referenced: set[str]) -> None:
        """Delete the unreferenced files of a rolled-back run: exactly those its commit record
        (written before its first move) lists, and its dead letters. The staged sources go first,
        so a move of the stalled run that lands later finds nothing to move. Nothing else is ever
        deleted, so a user's files under the data source are safe whatever their names."""
        self.storage.delete_prefix(self.staging(run_id, "data"))
        self.storage.delete(self.key("_deadletter", f"{run_id}.jsonl.gz"))
        for rel in sorted(set(self._recorded_locations(run_id)) - referenced):
            logger.warning("deleting %s (written by run %s, which did not commit)", rel, run_id)
            self.check_lock()
            self.storage.delete(self.key(rel))

    def _remember_abandoned(self, run_id: str, locations: list[str], since: str) -> None:
        """Keep a rolled-back run's file list for a day (``_state/abandoned.json``): a stalled
        process of it could still land a move or a dead-letter write late; every recovery in that
        time deletes such leftovers again."""
        key = self.key("_state", ABANDONED_FILE)
        data = json.loads(self.storage.read_bytes(key)) if self.storage.exists(key) else {}
        data[run_id] = {"locations": sorted(locations), "since": since}
        self.storage.write_bytes(key, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))

    def sweep_abandoned(self) -> None:
        """Delete late leftovers of runs rolled back within the last day (see
        :meth:`_remember_abandoned`); forget older ones. Call under the lock."""
        key = self.key("_state", ABANDONED_FILE)
        if not self.storage.exists(key):
            return
        data = json.loads(self.storage.read_bytes(key))
        referenced = self.snapshot().referenced()
        now = self.clock()
        keep = {}
        for run_id, entry in sorted(data.items()):
            self.check_lock()
            for rel in entry["locations"]:
                if rel not in referenced and self.storage.exists(self.key(rel)):
                    logger.warning("deleting %s (a late write of run %s, which was rolled back)", rel, run_id)
                    self.storage.delete(self.key(rel))
            if not self._committed_report(self.key("_runs", f"{run_id}.json")):
                self.storage.delete(self.key("_deadletter", f"{run_id}.jsonl.gz"))
            since = datetime.fromisoformat(entry["since"].replace("Z", "+00:00"))
            if (now - since).total_seconds() < ABANDONED_KEEP_SECONDS:
                keep[run_id] = entry
        if keep != data:
            self.storage.write_bytes(key, json.dumps(keep, indent=2, sort_keys=True).encode("utf-8"))

    # -- committing --------------------------------------------------------------------------

    def locate(self, files: list[dict], layout: str, committed: datetime) -> list[dict]:
        """Decide where each staged file goes: by event date where the format puts it (CDM
        FullData, Delta ActivityDate=), or (CDM incremental layout, table already holding data)
        IncrementalData by the commit hour."""
        tables = self.read_tables()
        located = []
        for f in files:
            held = tables.get(f["table"])
            if layout == "incremental" and held and held.all_locations():
                location, kind = incremental_location(f["table"], committed, f["name"]), "incremental"
            else:
                location, kind = self.format.location(f["table"], f["date"], f["name"]), "full"
            located.append(dict(f, location=location, kind=kind))
        return located

    def commit(
        self,
        run_id: str,
        report: dict,
        files: list[dict],
        dead_letter_keys: list[str],
        table_columns: dict[str, tuple[Column, ...]],
        removed: list[dict] | None = None,
        data_change: bool = True,
    ) -> dict:
        """Publish a run's staged output; returns the report as written (status committed).

        ``files``: [{"staged": key, "location": relative location, "kind": "full"|"incremental",
        "table": name, "date": ..., "rows": ...}, ...] as :meth:`locate` returns them.
        ``removed``: committed files this commit takes out of the tables in the same step
        ([{"location", "table", "date"}], e.g. the small files a compaction merged); they stay
        on storage for readers of the previous state until ``vacuum``. ``data_change=False``
        says the rows are unchanged (a compaction; Delta records it). Raises :class:`CommitLost` when
        the lock was lost or another run committed since :meth:`read_state` (nothing of this
        run becomes visible), :class:`CommitUnfinished` when the commit is visible but a later
        step failed, :class:`CommitUnknown` when that can't be told.
        """
        report = dict(report, status="committed")
        if dead_letter_keys:
            report["dead_letters"] = f"_deadletter/{run_id}.jsonl.gz"
        report["partitions_written"] = sorted(f["location"] for f in files)
        removed = sorted(removed or [], key=lambda r: r["location"])
        if removed:
            report["partitions_removed"] = [r["location"] for r in removed]
        changes = bool(files or removed)
        removed_at = int(self.clock().timestamp() * 1000)
        report_bytes = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8")
        checkpoint("before_commit")
        self._check_fence()
        snapshot = self.snapshot()
        if snapshot.version != self.planned_version:
            raise CommitLost(
                f"another run committed to data source {self.data_source!r} since this "
                "run read it; nothing of this run was committed (run it again)"
            )
        self.storage.write_bytes(self.staging(run_id, "report.json"), report_bytes)
        checkpoint("after_dead_letters")
        if changes:
            try:
                self.format.prepare(
                    self.storage, self.data_source, snapshot, table_columns, self._check_fence
                )
            except PreconditionFailed as exc:
                raise CommitLost(f"{exc}; nothing of this run was committed (run it again)") from exc
            record = {
                "run_id": run_id,
                "locations": sorted(f["location"] for f in files),
                "files": [
                    {k: f[k] for k in ("location", "table", "date", "rows", "kind") if k in f}
                    for f in sorted(files, key=lambda f: f["location"])
                ],
                "removed": removed,
                "data_change": data_change,
                "removed_at": removed_at,
            }
            self.storage.write_bytes(self.staging(run_id, COMMIT_RECORD), json.dumps(record).encode("utf-8"))
        for i, f in enumerate(files):
            self._check_fence()
            self.storage.move(f["staged"], self.key(f["location"]))
            if i == 0:
                checkpoint("after_first_move")
        checkpoint("after_moves")
        if changes:
            self._write_entity_documents(table_columns)
            self._check_fence()
            checkpoint("before_manifest")
            self._commit_point(snapshot, files, table_columns, run_id, removed, data_change, removed_at)
        checkpoint("after_manifest")
        if not changes:  # a run without data commits with its report: conditional, like a manifest
            self._check_fence()
            self._write_first_report(run_id, report_bytes)
        try:
            self._finish(run_id, report_bytes, dead_letter_keys)
        except StorageError as exc:
            raise CommitUnfinished(
                f"the run committed, but finishing it failed: {exc}; the next run completes it"
            ) from exc
        return report

    def _write_first_report(self, run_id: str, report_bytes: bytes) -> None:
        """The commit point of a run without data files: its report, written only if no report
        of that run exists (a takeover writes a "rolled back" one first, fencing this out)."""
        key = self.key("_runs", f"{run_id}.json")
        try:
            self.storage.write_if(key, report_bytes, None)
        except PreconditionFailed as exc:
            if self._committed_report(key):
                return  # our own write landed (a retried request)
            raise CommitLost(
                f"another run settled this run meanwhile ({exc}); nothing of this run was "
                "committed (run it again)"
            ) from exc
        except StorageError as exc:
            if self._committed_report(key):
                return
            raise CommitUnknown(f"the commit point failed ({exc}); the next run settles it") from exc

    def _finish(self, run_id: str, report_bytes: bytes, dead_letter_keys: Iterable[str]) -> None:
        """After the commit point: publish the dead letters, write the report, drop staging.
        Also how recovery rolls a committed run forward. Safe to repeat."""
        keys = sorted(dead_letter_keys)
        if keys and not self.storage.exists(self.key("_deadletter", f"{run_id}.jsonl.gz")):
            self._publish_dead_letters(run_id, keys)
        report_key = self.key("_runs", f"{run_id}.json")
        if not self._committed_report(report_key):
            self.storage.write_bytes(report_key, report_bytes)
        checkpoint("after_report")
        self.storage.delete_prefix(self.staging(run_id))

    def _check_fence(self) -> None:
        try:
            self.check_lock()
        except LockLost as exc:
            raise CommitLost(
                f"{exc}; nothing of this run was committed, and nothing of other runs was touched"
            ) from exc

    def _write_entity_documents(self, table_columns: dict[str, tuple[Column, ...]]) -> None:
        for name, columns in table_columns.items():
            for relative, doc in self.format.table_documents({name: columns}).items():
                current, version = self.storage.read_versioned(self.key(relative))
                if current == doc:
                    continue
                if current is not None and entity_columns(current) != [c.name for c in columns]:
                    raise CommitLost(
                        f"table {name!r} was redefined by another run meanwhile; nothing of "
                        "this run was committed"
                    )
                self._check_fence()
                try:
                    self.storage.write_if(self.key(relative), doc, version)
                except PreconditionFailed as exc:
                    raise CommitLost(f"{exc}; nothing of this run was committed (run it again)") from exc

    def _commit_point(
        self,
        snapshot: Snapshot,
        files: list[dict],
        table_columns: dict[str, tuple[Column, ...]],
        run_id: str,
        removed: list[dict],
        data_change: bool,
        removed_at: int,
    ) -> None:
        """The commit point: the format's conditional write(s). When the storage fails around
        it, ask the committed state whether this run's files made it, and say so truthfully."""
        try:
            self.format.commit(
                self.storage,
                self.data_source,
                snapshot,
                files,
                table_columns,
                run_id,
                self._check_fence,
                removed=removed,
                data_change=data_change,
                removed_at=removed_at,
            )
            return
        except PreconditionFailed as exc:
            failure: Exception = exc
        except (StorageError, CommitLost) as exc:  # CommitLost: the lock went between two tables
            failure = exc
        visible = self._visible([f["location"] for f in files], [r["location"] for r in removed])
        if isinstance(failure, CommitLost) and visible in ("all", "some"):
            why = failure.__cause__ or failure
            raise CommitUnfinished(
                f"the run committed, but it lost the lock before finishing ({why}); "
                "the run holding it now (or the next run) finishes it"
            ) from failure
        if visible == "all":
            logger.warning("the commit reported %s, but this run's files are listed: committed", failure)
            return
        if visible == "some":
            raise CommitUnfinished(
                f"the run committed, but not every table: {failure}; the next run completes it"
            ) from failure
        if visible is None:
            raise CommitUnknown(
                f"the commit point failed ({failure}) and the manifest can't be read "
                "to tell whether this run is visible; the next run settles it"
            ) from failure
        if isinstance(failure, PreconditionFailed):
            raise CommitLost(f"{failure}; nothing of this run was committed (run it again)") from failure
        raise failure

    def _visible(self, locations: list[str], removed: list[str] = ()) -> str | None:  # type: ignore[assignment]
        """Whether the committed state now shows "all", "some" or "none" of a commit: its
        ``locations`` listed and its ``removed`` locations gone; None when it can't be read."""
        for attempt in range(3):
            try:
                referenced = self.snapshot().referenced()
            except StorageError as exc:
                logger.warning(
                    "cannot read the committed state to check the commit (attempt %d): %s", attempt + 1, exc
                )
                time.sleep(0.5 * (attempt + 1))
                continue
            done = (set(locations) & referenced) | (set(removed) - referenced)
            wanted = set(locations) | set(removed)
            return "all" if done == wanted else "some" if done else "none"
        return None

    def _publish_dead_letters(self, run_id: str, keys: Iterable[str]) -> None:
        """Concatenate the staged gzip members into one file (a valid multi-member gzip)."""
        with self.storage.open_write(self.key("_deadletter", f"{run_id}.jsonl.gz")) as out:
            for key in sorted(keys):
                out.write(self.storage.read_bytes(key))

    def record_failure(self, run_id: str, report: dict) -> str | None:
        """Settle a failed run like a dead one (a commit that got past the manifest is finished,
        anything else undone) and, unless it had committed, report why it failed. Returns
        "committed" or "rolled back"; None when the lock was lost: such a run touches nothing,
        the next run settles it."""
        try:
            self.check_lock()
        except LockLost as exc:
            logger.error("%s; leaving this run's leftovers to the next run", exc)
            return None
        if self.recover(only=run_id).get(run_id) == "committed":
            return "committed"
        data = dict(report, status="failed")
        with suppress(PreconditionFailed):  # a takeover's "rolled back" report says enough
            self.storage.write_if(
                self.key("_runs", f"{run_id}.json"),
                (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"),
                None,
            )
        return "rolled back"
