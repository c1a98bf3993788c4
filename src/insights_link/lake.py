"""The data-source folder in the lake: layout, committed state, commit and recovery.

Layout below ``LAKE_ROOT/<DataSource>/`` (work in progress only ever in ``_``-folders)::

    default.manifest.cdm.json              the commit point: lists every committed Parquet file
    <Table>.cdm.json                       entity document per table
    <Table>/FullData/yyyy/mm/dd/<Table>_yyyymmdd_<run>_<nnn>.parquet
    _staging/<run>/data/...                a run's files until it commits
    _staging/<run>/deadletter/*.jsonl.gz   a run's rejected records until it commits
    _staging/<run>/outcome.json            what the pipeline wrote and counted
    _staging/<run>/report.json             the run report, staged before the commit point
    _deadletter/<run>.jsonl.gz             rejected records of committed runs
    _runs/<run>.json                       run reports
    _state/runs_index.json                 cache: which inputs committed runs processed
    _lock                                  the data source's lock (local lakes)

Commit protocol (single-object commit, no folder renames, works on blob stores):
publish dead letters -> move staged Parquet into the data folders (still unreferenced) -> write
entity documents -> **write the manifest** (the commit point for data) -> write the run report
(the commit point for a run without data) -> delete staging. A run that dies leaves its staging
folder behind; the next run's :meth:`Lake.recover` rolls it forward when the manifest already
references its files, and back otherwise, deleting every unreferenced Parquet file.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from insights_link.contract import Column
from insights_link.manifest import (
    MANIFEST_FILE,
    TableState,
    entity_columns,
    entity_document,
    manifest_document,
    parse_manifest,
)
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


def failpoint(name: str) -> None:
    """Crash-test hooks at named steps of a run, so tests stop real processes deterministically
    instead of guessing with timers:

    - ``INSIGHTS_LINK_KILL_AT=<name>`` SIGKILLs this process at that step;
    - ``INSIGHTS_LINK_PAUSE_AT=<name>`` creates the file ``INSIGHTS_LINK_PAUSE_FILE`` and waits
      (at most 120 s) until the test deletes it, e.g. after stopping the storage emulator.
    """
    if os.environ.get("INSIGHTS_LINK_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    marker = os.environ.get("INSIGHTS_LINK_PAUSE_FILE")
    if marker and os.environ.get("INSIGHTS_LINK_PAUSE_AT") == name:
        with open(marker, "w") as f:
            f.write(name)
        deadline = time.monotonic() + 120
        while os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)


INDEX_FILE = "runs_index.json"
COMMIT_RECORD = "commit.json"  # in a run's staging: where its files go, written before the moves


def input_key(table: str, fingerprint: str) -> str:
    """Key of the committed-inputs index: an input counts as committed per activity table."""
    return f"{table}\t{fingerprint}"


class LakeError(RuntimeError):
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


LAYOUTS = ("full", "incremental")


def partition_file_name(table: str, date: str, run_id: str, index: int) -> str:
    """A Parquet file's name: table, event date, run, piece (``WebLog_20240501_<run>_000.parquet``)."""
    return f"{table}_{date.replace('-', '')}_{run_id}_{index:03d}.parquet"


def full_location(table: str, date: str, name: str) -> str:
    """``WebLog/FullData/2024/05/01/<name>``: initial data, foldered by event date."""
    year, month, day = date.split("-")
    return f"{table}/FullData/{year}/{month}/{day}/{name}"


def incremental_location(table: str, committed: datetime, name: str) -> str:
    """``WebLog/IncrementalData/2026/11/28/14/Upserts/<name>``: foldered by the UTC hour of the
    commit, as Customer Insights' incremental refresh expects (it reads an hour once it ended)."""
    return f"{table}/IncrementalData/{committed.astimezone(UTC):%Y/%m/%d/%H}/Upserts/{name}"


def _run_of(location: str) -> str | None:
    """The run id in a partition file's name (``<Table>_<yyyymmdd>_<run>_<nnn>.parquet``)."""
    table = location.split("/", 1)[0]
    name = location.rsplit("/", 1)[-1]
    stem = name[len(table) + 10:].removesuffix(".parquet")  # skip "<Table>_<yyyymmdd>_"
    return stem.rsplit("_", 1)[0] if name.startswith(table + "_") and "_" in stem else None


def date_of_partition(location: str) -> str | None:
    """The event date a partition file holds, from its name (``WebLog_20240501_...``)."""
    table = location.split("/", 1)[0]
    name = location.rsplit("/", 1)[-1]
    digits = name[len(table) + 1: len(table) + 9]
    if name.startswith(table + "_") and digits.isdigit():
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
    return None


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
        for location in state.all_locations() if state else []:
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

    def __init__(self, storage: Storage, data_source: str) -> None:
        self.storage = storage
        self.data_source = data_source
        self.fence: LockHandle | None = None
        self.planned_version: str | None = None  # the manifest version read_state() saw

    def key(self, *parts: str) -> str:
        """A key below the data-source folder."""
        return join(self.data_source, *parts)

    def staging(self, run_id: str, *parts: str) -> str:
        return self.key("_staging", run_id, *parts)

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
                        f"({exc}); waited {wait_seconds:g} s") from exc
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

    def read_manifest(self) -> tuple[dict[str, TableState], bytes | None, str | None]:
        """The committed tables, the manifest's bytes and its version (None when absent)."""
        data, version = self.storage.read_versioned(self.key(MANIFEST_FILE))
        return (parse_manifest(data) if data is not None else {}), data, version

    def read_tables(self) -> dict[str, TableState]:
        return self.read_manifest()[0]

    def read_state(self) -> LakeState:
        """The committed state this run plans from; its manifest version is what the commit
        will be conditional on."""
        tables, _data, self.planned_version = self.read_manifest()
        columns = {}
        for name in tables:
            doc_key = self.key(f"{name}.cdm.json")
            if self.storage.exists(doc_key):
                columns[name] = entity_columns(self.storage.read_bytes(doc_key))
        return LakeState(tables, columns, self.committed_inputs())

    def committed_inputs(self) -> dict[str, str]:
        """``input_key(table, fingerprint)`` -> the run that committed that input for that table.

        Read from ``_state/runs_index.json``, a cache of the run reports it names, plus the reports
        written since; the cache is then rewritten. So the Nth run reads one listing, one index
        and the few new reports, not every report ever written. Call under the lock.
        """
        index_key = self.key("_state", INDEX_FILE)
        index: dict = {"runs": [], "inputs": {}, "dead_letters": {}}
        if self.storage.exists(index_key):
            cached = json.loads(self.storage.read_bytes(index_key))
            if "dead_letters" in cached:  # an index from before dead letters were tracked: rebuild
                index = cached
        known = set(index["runs"])
        new = [obj.key for obj in self.storage.list(self.key("_runs"))
               if obj.key.endswith(".json") and obj.key.rsplit("/", 1)[-1][:-5] not in known]
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
        if new:
            index["runs"].sort()
            self.storage.write_bytes(index_key, json.dumps(index, sort_keys=True).encode("utf-8"))
        return index["inputs"]

    def recorded_dead_letters(self, sources: Iterable[str]) -> set[tuple]:
        """Keys (:func:`dead_letter_key`) of the dead letters committed runs already wrote for
        records of these input files, so re-reading a file (``--reprocess``, or a file that grew)
        does not dead-letter the same record twice. Call after :meth:`committed_inputs`."""
        wanted = set(sources)
        runs = sorted({r for source in wanted for r in getattr(self, "_dead_letter_runs", {}).get(source, [])})
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
        leftovers = sorted({obj.key.split("/")[2] for obj in self.storage.list(self.key("_staging"))
                            if obj.key.count("/") >= 3})
        if only is not None:
            leftovers = [r for r in leftovers if r == only]
        if not leftovers:
            return {}
        while True:
            tables, data, version = self.read_manifest()
            referenced = {loc for t in tables.values() for loc in t.all_locations()}
            settled = {run_id: self._settle(run_id, referenced) for run_id in leftovers}
            undo = [r for r, outcome in settled.items() if outcome == "rolled back"]
            if not any(r != only or self.storage.exists(self.staging(r, COMMIT_RECORD)) for r in undo):
                break
            self.check_lock()
            try:  # fence out the runs being undone: their manifest write now fails
                self.storage.write_if(self.key(MANIFEST_FILE),
                                      data if data is not None else manifest_document(self.data_source, {}),
                                      version)
                break
            except PreconditionFailed:
                logger.warning("the manifest changed during recovery; deciding again")
        for run_id, outcome in settled.items():
            self.check_lock()
            if outcome == "committed":
                staged_report = self.staging(run_id, "report.json")
                report_key = self.key("_runs", f"{run_id}.json")
                if not self._committed_report(report_key):
                    logger.warning("run %s died after its commit point; finishing it", run_id)
                    self.storage.write_bytes(report_key, self.storage.read_bytes(staged_report))
                else:
                    logger.info("run %s had committed; removing its staging folder", run_id)
            else:
                logger.warning("run %s did not commit; removing what it wrote", run_id)
                failpoint("recovery_before_delete")
                self._delete_own_files(run_id, referenced)
                self.storage.delete(self.key("_deadletter", f"{run_id}.jsonl.gz"))
        for run_id in leftovers:
            self.check_lock()
            self.storage.delete_prefix(self.staging(run_id))
        return settled

    def _settle(self, run_id: str, referenced: set[str]) -> str:
        """"committed" when the run's report says so, or the manifest references its files and
        its staged report exists; otherwise "rolled back"."""
        if self._committed_report(self.key("_runs", f"{run_id}.json")):
            return "committed"
        if any(_run_of(loc) == run_id for loc in referenced) and self.storage.exists(
                self.staging(run_id, "report.json")):
            return "committed"
        return "rolled back"

    def _committed_report(self, key: str) -> bool:
        if not self.storage.exists(key):
            return False
        try:
            return json.loads(self.storage.read_bytes(key)).get("status") == "committed"
        except ValueError:
            return False

    def _delete_own_files(self, run_id: str, referenced: set[str]) -> None:
        """Delete the unreferenced data files of a rolled-back run: exactly those its commit
        record (written before its first move) lists. Nothing else is ever deleted, so a user's
        files under the data source are safe whatever their names."""
        record_key = self.staging(run_id, COMMIT_RECORD)
        if not self.storage.exists(record_key):
            return  # it never moved a file out of staging
        for rel in sorted(set(json.loads(self.storage.read_bytes(record_key))["locations"]) - referenced):
            logger.warning("deleting %s (written by run %s, which did not commit)", rel, run_id)
            self.check_lock()
            self.storage.delete(self.key(rel))

    # -- committing --------------------------------------------------------------------------

    def locate(self, files: list[dict], layout: str, committed: datetime) -> list[dict]:
        """Decide where each staged file goes: FullData by event date, or (incremental layout,
        table already holding data) IncrementalData by the commit hour."""
        tables = self.read_tables()
        located = []
        for f in files:
            held = tables.get(f["table"])
            if layout == "incremental" and held and held.all_locations():
                location, kind = incremental_location(f["table"], committed, f["name"]), "incremental"
            else:
                location, kind = full_location(f["table"], f["date"], f["name"]), "full"
            located.append(dict(f, location=location, kind=kind))
        return located

    def commit(
        self,
        run_id: str,
        report: dict,
        files: list[dict],
        dead_letter_keys: list[str],
        table_columns: dict[str, tuple[Column, ...]],
    ) -> dict:
        """Publish a run's staged output; returns the report as written (status committed).

        ``files``: [{"staged": key, "location": relative location, "kind": "full"|"incremental",
        "table": name}, ...] as :meth:`locate` returns them. Raises :class:`CommitLost` when
        the lock was lost or another run committed since :meth:`read_state` (nothing of this
        run becomes visible), :class:`CommitUnfinished` when the commit is visible but a later
        step failed, :class:`CommitUnknown` when that can't be told.
        """
        report = dict(report, status="committed")
        if dead_letter_keys:
            report["dead_letters"] = f"_deadletter/{run_id}.jsonl.gz"
        report["partitions_written"] = sorted(f["location"] for f in files)
        report_bytes = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8")
        failpoint("before_commit")
        self._check_fence()
        tables, _data, version = self.read_manifest()
        if version != self.planned_version:
            raise CommitLost(f"another run committed to data source {self.data_source!r} since this "
                             "run read it; nothing of this run was committed (run it again)")
        self.storage.write_bytes(self.staging(run_id, "report.json"), report_bytes)
        if dead_letter_keys:
            self._check_fence()
            self._publish_dead_letters(run_id, dead_letter_keys)
        failpoint("after_dead_letters")
        if files:
            record = {"run_id": run_id, "locations": sorted(f["location"] for f in files)}
            self.storage.write_bytes(self.staging(run_id, COMMIT_RECORD), json.dumps(record).encode("utf-8"))
        for i, f in enumerate(files):
            self._check_fence()
            self.storage.move(f["staged"], self.key(f["location"]))
            if i == 0:
                failpoint("after_first_move")
        failpoint("after_moves")
        if files:
            self._write_entity_documents(tables, table_columns)
            for f in files:
                held = tables[f["table"]]
                (held.incremental if f.get("kind") == "incremental" else held.partitions).append(f["location"])
            self._check_fence()
            failpoint("before_manifest")
            self._write_manifest(tables, version, [f["location"] for f in files])
        failpoint("after_manifest")
        try:
            if not files:
                self._check_fence()  # a run without data commits with its report
            self.storage.write_bytes(self.key("_runs", f"{run_id}.json"), report_bytes)
            failpoint("after_report")
            self.storage.delete_prefix(self.staging(run_id))
        except StorageError as exc:
            if not files:
                raise
            raise CommitUnfinished(f"the run committed (its data is visible), but finishing it failed: "
                                   f"{exc}; the next run completes it") from exc
        return report

    def _check_fence(self) -> None:
        try:
            self.check_lock()
        except LockLost as exc:
            raise CommitLost(f"{exc}; nothing of this run was committed, and nothing of other runs "
                             "was touched") from exc

    def _write_entity_documents(self, tables: dict[str, TableState],
                                table_columns: dict[str, tuple[Column, ...]]) -> None:
        for name, columns in table_columns.items():
            doc = entity_document(name, columns)
            doc_key = self.key(f"{name}.cdm.json")
            if not self.storage.exists(doc_key) or self.storage.read_bytes(doc_key) != doc:
                self._check_fence()
                self.storage.write_bytes(doc_key, doc)
            tables.setdefault(name, TableState(name))

    def _write_manifest(self, tables: dict[str, TableState], version: str | None, mine: list[str]) -> None:
        """The commit point: one conditional write. When the storage fails around it, ask the
        manifest whether this run's files made it, and say so truthfully."""
        try:
            self.storage.write_if(self.key(MANIFEST_FILE), manifest_document(self.data_source, tables), version)
            return
        except PreconditionFailed as exc:
            failure: StorageError = exc
        except StorageError as exc:
            failure = exc
        visible = self._visible(mine)
        if visible:
            logger.warning("the manifest write reported %s, but this run's files are listed: committed",
                           failure)
            return
        if visible is None:
            raise CommitUnknown(f"the commit point failed ({failure}) and the manifest can't be read "
                                "to tell whether this run is visible; the next run settles it") from failure
        if isinstance(failure, PreconditionFailed):
            raise CommitLost(f"{failure}; nothing of this run was committed (run it again)") from failure
        raise failure

    def _visible(self, locations: list[str]) -> bool | None:
        """Whether the manifest now lists all of ``locations``; None when it can't be read."""
        for attempt in range(3):
            try:
                tables = self.read_tables()
            except StorageError as exc:
                logger.warning("cannot read the manifest to check the commit (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.5 * (attempt + 1))
                continue
            referenced = {loc for t in tables.values() for loc in t.all_locations()}
            return set(locations) <= referenced
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
        self.storage.write_bytes(
            self.key("_runs", f"{run_id}.json"),
            (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        )
        return "rolled back"


def dead_letter_key(letter: dict) -> tuple:
    """A dead letter's identity across runs: where it was read, why, for which activity, and
    what it held (hashed). Computed on the published form, so a letter read back from the lake
    and the same letter about to be written get the same key."""
    clean = json.loads(_json_line(letter))
    body = json.dumps([clean.get("payload"), clean.get("payload_base64")], sort_keys=True)
    return (clean.get("source"), clean.get("position"), clean.get("reason"), clean.get("activity"),
            hashlib.sha256(body.encode("utf-8")).hexdigest())


def encode_dead_letters(records: Iterable[dict]) -> bytes:
    """Dead-letter records as JSON lines every JSON reader loads (DuckDB, Spark, jq): valid UTF-8,
    no lone surrogates, no NaN/Infinity literals."""
    return b"".join(_json_line(r) for r in records)


def _json_line(record: dict) -> bytes:
    """One dead letter as a line of strict JSON in valid UTF-8.

    Lone surrogates (invalid input bytes read with ``surrogateescape``) become U+FFFD in every key
    and string; when ``payload`` held some and no ``payload_base64`` came with it, the bytes they
    stood for are added there, so they stay recoverable. Non-finite floats (an Avro NaN) are
    written as the strings "NaN", "Infinity" and "-Infinity".
    """
    try:
        return (json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        pass  # the rare record with lone surrogates or non-finite floats: cleaned below
    def raw(text: str) -> bytes:
        try:
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # a surrogate outside surrogateescape's range: its CESU bytes
            return b"".join(bytes([ord(ch) - 0xDC00]) if "\udc80" <= ch <= "\udcff"
                            else ch.encode("utf-8", errors="surrogatepass") for ch in text)

    def clean(value):
        if isinstance(value, str):
            return raw(value).decode("utf-8", errors="replace") if re.search("[\ud800-\udfff]", value) else value
        if isinstance(value, float) and not -float("inf") < value < float("inf"):
            return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    cleaned = clean(record)
    payload = record.get("payload")
    if isinstance(payload, str) and "payload_base64" not in record and cleaned["payload"] != payload:
        cleaned["payload_base64"] = base64.b64encode(raw(payload)).decode("ascii")
    return (json.dumps(cleaned, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
