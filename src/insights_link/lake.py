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

import json
import logging
import os
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
from insights_link.storage import LockBusy, Storage, join

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


def input_key(table: str, fingerprint: str) -> str:
    """Key of the committed-inputs index: an input counts as committed per activity table."""
    return f"{table}\t{fingerprint}"


class LakeError(RuntimeError):
    """The data-source folder is in a state this run must not touch; the message says why."""


class LakeBusy(LakeError):
    """Another run holds the data source's lock."""


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
    """One data-source folder on a :class:`Storage`."""

    def __init__(self, storage: Storage, data_source: str) -> None:
        self.storage = storage
        self.data_source = data_source

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
        """
        waited = 0.0
        while True:
            try:
                with self.storage.lock(self.key("_lock")):
                    yield
                return
            except LockBusy as exc:
                if waited >= wait_seconds:
                    raise LakeBusy(
                        f"another run is writing to data source {self.data_source!r} "
                        f"({exc}); waited {wait_seconds:g} s") from exc
            time.sleep(poll_seconds)
            waited += poll_seconds

    # -- reading the committed state ---------------------------------------------------------

    def read_tables(self) -> dict[str, TableState]:
        key = self.key(MANIFEST_FILE)
        if not self.storage.exists(key):
            return {}
        return parse_manifest(self.storage.read_bytes(key))

    def read_state(self) -> LakeState:
        tables = self.read_tables()
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
        index = {"runs": [], "inputs": {}}
        if self.storage.exists(index_key):
            index = json.loads(self.storage.read_bytes(index_key))
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
        if new:
            index["runs"].sort()
            self.storage.write_bytes(index_key, json.dumps(index, sort_keys=True).encode("utf-8"))
        return index["inputs"]

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, only: str | None = None) -> dict[str, str]:
        """Finish or undo runs that died (or only run ``only``): run id -> "committed" or
        "rolled back".

        A run whose files the manifest already references is rolled forward (its staged report
        becomes its report); any other is rolled back: its dead letters and every unreferenced
        Parquet file are deleted. Staging folders go last, so a kill in here is retried by the
        next run. Call under the lock.
        """
        leftovers = sorted({obj.key.split("/")[2] for obj in self.storage.list(self.key("_staging"))})
        if only is not None:
            leftovers = [r for r in leftovers if r == only]
        if not leftovers:
            return {}
        tables = self.read_tables()
        referenced = {loc for t in tables.values() for loc in t.all_locations()}
        referenced_runs = {_run_of(loc) for loc in referenced}
        settled: dict[str, str] = {}
        for run_id in leftovers:
            report_key = self.key("_runs", f"{run_id}.json")
            staged_report = self.staging(run_id, "report.json")
            if self._committed_report(report_key):
                logger.info("run %s had committed; removing its staging folder", run_id)
                settled[run_id] = "committed"
            elif run_id in referenced_runs and self.storage.exists(staged_report):
                logger.warning("run %s died after its commit point; finishing it", run_id)
                self.storage.write_bytes(report_key, self.storage.read_bytes(staged_report))
                settled[run_id] = "committed"
            else:
                logger.warning("run %s did not commit; removing what it wrote", run_id)
                self.storage.delete(self.key("_deadletter", f"{run_id}.jsonl.gz"))
                settled[run_id] = "rolled back"
        if "rolled back" in settled.values():
            self._sweep_unreferenced(referenced)
        for run_id in leftovers:
            self.storage.delete_prefix(self.staging(run_id))
        return settled

    def _committed_report(self, key: str) -> bool:
        if not self.storage.exists(key):
            return False
        try:
            return json.loads(self.storage.read_bytes(key)).get("status") == "committed"
        except ValueError:
            return False

    def _sweep_unreferenced(self, referenced: set[str]) -> None:
        prefix = self.key()
        for obj in self.storage.list(prefix):
            rel = obj.key[len(prefix) + 1:]
            if rel.startswith("_") or not rel.endswith(".parquet"):
                continue
            if rel not in referenced:
                logger.warning("deleting unreferenced file %s", rel)
                self.storage.delete(obj.key)

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
        "table": name}, ...] as :meth:`locate` returns them.
        """
        report = dict(report, status="committed")
        if dead_letter_keys:
            report["dead_letters"] = f"_deadletter/{run_id}.jsonl.gz"
        report["partitions_written"] = sorted(f["location"] for f in files)
        report_bytes = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8")
        failpoint("before_commit")
        self.storage.write_bytes(self.staging(run_id, "report.json"), report_bytes)
        if dead_letter_keys:
            self._publish_dead_letters(run_id, dead_letter_keys)
        failpoint("after_dead_letters")
        for i, f in enumerate(files):
            self.storage.move(f["staged"], self.key(f["location"]))
            if i == 0:
                failpoint("after_first_move")
        failpoint("after_moves")
        if files:
            tables = self.read_tables()
            for name, columns in table_columns.items():
                doc = entity_document(name, columns)
                doc_key = self.key(f"{name}.cdm.json")
                if not self.storage.exists(doc_key) or self.storage.read_bytes(doc_key) != doc:
                    self.storage.write_bytes(doc_key, doc)
                tables.setdefault(name, TableState(name))
            for f in files:
                held = tables[f["table"]]
                (held.incremental if f.get("kind") == "incremental" else held.partitions).append(f["location"])
            self.storage.write_bytes(self.key(MANIFEST_FILE), manifest_document(self.data_source, tables))
        failpoint("after_manifest")
        self.storage.write_bytes(self.key("_runs", f"{run_id}.json"), report_bytes)
        failpoint("after_report")
        self.storage.delete_prefix(self.staging(run_id))
        return report

    def _publish_dead_letters(self, run_id: str, keys: Iterable[str]) -> None:
        """Concatenate the staged gzip members into one file (a valid multi-member gzip)."""
        with self.storage.open_write(self.key("_deadletter", f"{run_id}.jsonl.gz")) as out:
            for key in sorted(keys):
                out.write(self.storage.read_bytes(key))

    def record_failure(self, run_id: str, report: dict) -> None:
        """Settle a failed run like a dead one (a commit that got past the manifest is finished,
        anything else undone, orphans swept) and, unless it had committed, report why it failed."""
        if self.recover(only=run_id).get(run_id) == "committed":
            return
        data = dict(report, status="failed")
        self.storage.write_bytes(
            self.key("_runs", f"{run_id}.json"),
            (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        )


def encode_dead_letters(records: Iterable[dict]) -> bytes:
    """Dead-letter records as JSON lines (UTF-8; invalid input bytes kept as escaped surrogates)."""
    return b"".join(_json_line(r) for r in records)


def _json_line(record: dict) -> bytes:
    text = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # invalid UTF-8 kept as escaped surrogates: still valid JSON
        return (json.dumps(record, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")
