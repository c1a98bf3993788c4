"""Dead letters as a working set on the lake, and replay: reading ``_deadletter/``, exporting
the open letters for a fixer, preparing a replay's inputs, and the resolution ledger.

Below the data source::

    _deadletter/<run>.jsonl.gz                 dead letters of committed runs (as before)
    _deadletter/_resolutions/<run>.jsonl       what replay run <run> made of each letter it replayed
    _state/replays/<run>.jsonl.gz              a replay's ties (record -> letter), until settled

A replay run writes its ties before its pipeline runs. After the run commits, still under the
lock, :func:`settle_replays` decides every tied letter (``resolved`` when the fixed record's
ActivityId is now committed, ``open`` with the new reason when the run rejected it again) and
writes the ledger once (a conditional create), then drops the ties. A run that died or failed
is settled by the next export after its recovery: a committed one gets its ledger, any other
only loses its ties, so no ledger ever names a run that did not commit. Nothing under
``_deadletter/`` is deleted here; the ledger is append-only (one new file per replay run).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import BinaryIO

import pyarrow.parquet as pq

from insights_link.checkpoints import checkpoint
from insights_link.core.blocks import InputFile
from insights_link.core.contract import REASONS
from insights_link.core.formats import jsonl
from insights_link.core.letters import (
    EMBEDDED_KEY,
    SIDECAR_SUFFIX,
    ReplayInput,
    Selection,
    SidecarError,
    WorkingSet,
    count_lines,
    counts,
    embed_key,
    letter_id,
    parse_sidecar,
    record_line,
    replayed,
    strip_key,
    working_set,
)
from insights_link.core.paths import is_remote
from insights_link.errors import UsageError
from insights_link.lake.commit import Lake
from insights_link.lake.layout import date_of_partition, run_of
from insights_link.storage import PreconditionFailed, Storage, open_storage

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
RESOLUTIONS = "_resolutions"
REPLAYS = "replays"


# -- reading the working set ---------------------------------------------------------------------


def letter_files(lake: Lake) -> list[str]:
    """The keys of the published dead-letter files (``_deadletter/<run>.jsonl.gz``), sorted."""
    prefix = lake.key("_deadletter") + "/"
    return sorted(
        o.key
        for o in lake.storage.list(lake.key("_deadletter"))
        if o.key.endswith(".jsonl.gz") and "/" not in o.key[len(prefix) :]
    )


def read_letters(lake: Lake, key: str) -> list[dict]:
    """The dead letters of one published file."""
    data = lake.storage.read_bytes(key)
    return [json.loads(line) for line in gzip.decompress(data).splitlines() if line.strip()]


def read_resolutions(lake: Lake) -> list[dict]:
    """Every record of the resolution ledger."""
    records = []
    for obj in lake.storage.list(lake.key("_deadletter", RESOLUTIONS)):
        if obj.key.endswith(".jsonl"):
            records += [json.loads(line) for line in lake.storage.read_bytes(obj.key).splitlines() if line]
    return records


def _report(lake: Lake, run_id: str) -> dict | None:
    key = lake.key("_runs", f"{run_id}.json")
    if not lake.storage.exists(key):
        return None
    try:
        return json.loads(lake.storage.read_bytes(key))
    except ValueError:
        return None


def load(lake: Lake) -> WorkingSet:
    """The data source's working set: every published dead letter with the ledger applied."""
    letters: list[dict] = []
    for key in letter_files(lake):
        letters += read_letters(lake, key)
    times = {}
    for run_id in sorted({str(letter.get("run_id", "")) for letter in letters}):
        report = _report(lake, run_id) or {}
        if report.get("finished_at"):
            times[run_id] = str(report["finished_at"])
    return working_set(letters, read_resolutions(lake), times)


def status_counts(storage: Storage, data_source: str) -> dict:
    """Open and resolved dead letters, in total and by current reason, and the replays whose
    resolutions are not recorded yet: what ``status`` can show beside its per-file counts."""
    lake = Lake(storage, data_source)
    return counts(load(lake).items) | {"pending_replays": pending_replays(lake)}


def pending_replays(lake: Lake) -> list[str]:
    """Replay runs that committed but whose ledger is not written yet (the next export writes
    it, after settling what the run left)."""
    pending = []
    for run_id in _tied_runs(lake):
        report = _report(lake, run_id) or {}
        if report.get("status") == "committed" and not lake.storage.exists(_ledger_key(lake, run_id)):
            pending.append(run_id)
    return pending


def _tied_runs(lake: Lake) -> list[str]:
    prefix = lake.key("_state", REPLAYS) + "/"
    return sorted(
        o.key[len(prefix) : -len(".jsonl.gz")]
        for o in lake.storage.list(lake.key("_state", REPLAYS))
        if o.key.endswith(".jsonl.gz")
    )


def _ledger_key(lake: Lake, run_id: str) -> str:
    return lake.key("_deadletter", RESOLUTIONS, f"{run_id}.jsonl")


def _ties_key(lake: Lake, run_id: str) -> str:
    return lake.key("_state", REPLAYS, f"{run_id}.jsonl.gz")


# -- export for a fixer --------------------------------------------------------------------------


def export(ws: WorkingSet, selection: Selection, path: str, embed: bool, force: bool) -> dict:
    """Write the selected items' records to the local file ``path`` as JSON lines, and the sidecar
    ``path.keys.jsonl`` tying line n to its dead letter; both appear at once (temp file + rename).
    Records without a payload (the unreadable rest of a file) are counted, not written."""
    if is_remote(path):
        raise UsageError(f"--export {path!r}: write the records to a local file")
    target = os.path.abspath(os.path.expanduser(path))
    sidecar = target + SIDECAR_SUFFIX
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise UsageError(f"--export {path!r}: the folder {folder} does not exist")
    if not force:
        for existing in (target, sidecar):
            if os.path.exists(existing):
                raise UsageError(f"--export {path!r}: {existing} exists (pass --force to replace it)")
    records: list[bytes] = []
    keys: list[bytes] = []
    skipped = 0
    for item in ws.items:
        if not selection.picks(item):
            continue
        shown = item.current()
        line = record_line(shown)
        if line is None:
            skipped += 1
            continue
        records.append((embed_key(line, item.id) if embed else line) + b"\n")
        entry = {
            "line": len(records),
            "dead_letter": item.id,
            "status": item.status,
            "reason": item.reason,
            "run_id": item.run_id,
            "source": item.letter.get("source"),
            "position": item.letter.get("position"),
        }
        if item.letter.get("activity"):
            entry["activity"] = item.letter["activity"]
        keys.append((json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    _write_atomically(target, b"".join(records))
    _write_atomically(sidecar, b"".join(keys))
    logger.info("exported %d record(s) to %s (keys in %s)", len(records), target, sidecar)
    return {"file": target, "sidecar": sidecar, "records": len(records), "without_payload": skipped}


def _write_atomically(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".insights-link-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- preparing a replay --------------------------------------------------------------------------


def replay_files(files: dict[str, list[InputFile]]) -> dict[str, list[InputFile]]:
    """A replay's inputs: JSON lines only (what ``dead-letters --export`` writes); the sidecars
    a folder or glob also matched are not records and are left out."""
    kept: dict[str, list[InputFile]] = {}
    for name, found in files.items():
        kept[name] = []
        for f in found:
            if f.key.endswith(SIDECAR_SUFFIX):
                continue
            if f.fmt != "jsonl":
                raise UsageError(
                    f"--replay reads JSON lines (what dead-letters --export writes); {f.source} is {f.fmt}"
                )
            kept[name].append(f)
    return kept


@dataclass
class ReplayPlan:
    """A replay's prepared inputs, its ties and its counts."""

    work: list[tuple[InputFile, tuple[str, ...]]]
    ties: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)


_COUNTS = ("tied", "untied", "ignored_resolved", "ignored_unknown", "embedded_keys", "sidecar_keys")


def prepare_replay(
    ws: WorkingSet,
    work: list[tuple[InputFile, tuple[str, ...]]],
    target: Storage,
    target_url: str,
    prefix: str,
) -> ReplayPlan:
    """Write a cleaned copy of each replayed input below ``prefix`` on ``target`` (whose URL is
    ``target_url``) and tie its records to their dead letters.

    A record's tie is its embedded key when it has one, else the sidecar's line; an embedded key
    wins because it travels with the record however a fixer reorders, drops or adds lines. A
    record tied to a resolved letter, or to no letter of this data source, is blanked (a blank
    line is not a record) and counted; line numbers stay those of the original file. Raises
    :class:`UsageError` naming the file when it has neither a sidecar nor embedded keys, when
    its line count no longer matches its sidecar's, or when it can't be read.
    """
    items = ws.by_id()
    plan = ReplayPlan([], [], dict.fromkeys(_COUNTS, 0))
    for i, (f, activities) in enumerate(work):
        storage = open_storage(f.root)
        sidecar = _sidecar(storage, f)
        key = f"{prefix}/{i:04d}.jsonl"
        embedded = 0
        last = 0
        records = 0
        try:
            with target.open_write(key) as out:
                for position, raw in _records(storage, f):
                    records += 1
                    out.write(b"\n" * (position - last - 1))
                    last = position - 1
                    text = raw.decode("utf-8", errors="surrogateescape")
                    cleaned, named = strip_key(text) if EMBEDDED_KEY.encode() in raw else (text, None)
                    tie = named or (sidecar or {}).get(position)
                    embedded += cleaned != text
                    if tie is None:
                        plan.counts["untied"] += 1
                    else:
                        root = ws.root(tie)
                        item = items.get(root)
                        if item is None or item.status == "resolved":
                            plan.counts["ignored_unknown" if item is None else "ignored_resolved"] += 1
                            continue  # left blank: not a record
                        plan.counts["tied"] += 1
                        plan.counts["embedded_keys" if named else "sidecar_keys"] += 1
                        plan.ties.append(_tie(f, position, root, item.letter, cleaned, activities))
                    out.write(cleaned.encode("utf-8", errors="surrogateescape") if cleaned != text else raw)
                    out.write(b"\n")
                    last = position
        except _Unreadable as exc:
            raise UsageError(f"--replay: {f.source} can't be read to its end ({exc})") from None
        if sidecar is None and not embedded:
            raise UsageError(
                f"--replay: {f.source} has no sidecar {f.source}{SIDECAR_SUFFIX} and no embedded keys "
                f"({EMBEDDED_KEY}): copy the sidecar dead-letters --export wrote next to "
                "it, or export with --embed-key"
            )
        if sidecar is not None and embedded < records:
            _check_line_count(storage, f, sidecar)
        plan.work.append(
            (
                ReplayInput(target_url, key, "jsonl", f.size, f.modified, f.rank, f.version, shown=f.source),
                activities,
            )
        )
    return plan


def start_replay(
    lake: Lake, run_id: str, work: list[tuple[InputFile, tuple[str, ...]]], output_url: str, window_days: int
) -> ReplayPlan:
    """Under the lock, before the pipeline: the cleaned copies go to the run's staging (so
    recovery removes them with the rest of a run that dies) and the ties to ``_state/replays``.
    A usage error removes what was staged, so nothing of the run is left."""
    ws = load(lake)
    lake.check_lock()
    try:
        plan = prepare_replay(ws, work, lake.storage, output_url, lake.staging(run_id, "replay"))
    except UsageError:
        lake.storage.delete_prefix(lake.staging(run_id))
        raise
    if plan.ties:
        write_ties(lake, run_id, plan, window_days)
    return plan


def dry_replay(lake: Lake, work: list[tuple[InputFile, tuple[str, ...]]], work_dir: str) -> ReplayPlan:
    """A dry run's replay: the cleaned copies go to its local work folder; no ties are kept."""
    return prepare_replay(load(lake), work, open_storage(work_dir), work_dir, "replay")


class _Unreadable(Exception):
    """A replayed input that broke mid-way (a truncated gzip)."""


def _open(storage: Storage, f: InputFile) -> BinaryIO:
    raw = storage.open_read(f.key)
    return gzip.GzipFile(fileobj=raw, mode="rb") if f.compressed else raw  # type: ignore[return-value]


def _records(storage: Storage, f: InputFile) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each record, split exactly as the JSON-lines reader splits."""
    with _open(storage, f) as stream:
        try:
            for positions, payloads, _header, _malformed in jsonl.batches(stream):
                yield from zip(positions, payloads, strict=True)
        except (OSError, EOFError, ValueError) as exc:
            raise _Unreadable(str(exc)) from exc


def _sidecar(storage: Storage, f: InputFile) -> dict[int, str] | None:
    key = f.key + SIDECAR_SUFFIX
    if not storage.exists(key):
        return None
    try:
        return parse_sidecar(storage.read_bytes(key).splitlines())
    except SidecarError as exc:
        raise UsageError(f"--replay: the sidecar {f.source}{SIDECAR_SUFFIX}: {exc}") from None


def _check_line_count(storage: Storage, f: InputFile, sidecar: dict[int, str]) -> None:
    """Ties by line number hold only while the fixer kept every line in place."""
    with _open(storage, f) as stream:
        lines, last = count_lines(iter(lambda: stream.read(1 << 20), b""))
    expected = max(sidecar, default=0)
    if lines < expected or last > expected:
        raise UsageError(
            f"--replay: {f.source} has {lines} line(s), its sidecar ties {expected}: a fixer that "
            "deletes or adds lines breaks the tie by line number (blank a record to drop it, or "
            "export with --embed-key)"
        )


def _tie(f: InputFile, position: int, root: str, letter: dict, text: str, activities: tuple) -> dict:
    decided = replayed(text)
    tie = {
        "source": f.source,
        "line": position,
        "dead_letter": root,
        "tables": list(activities),
        "activity_id": decided.activity_id if decided.reason is None else None,
        "date": decided.date,
    }
    if letter.get("activity"):
        tie["letter_activity"] = letter["activity"]
    if decided.reason is not None:  # the dead letter validation will write (or found written before)
        again = {"reason": decided.reason, "source": f.source, "position": position}
        again["payload"] = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
        if len(activities) > 1 and decided.reason != "malformed":
            again["activity"] = letter.get("activity") or activities[0]
        tie["reason"], tie["attempt"] = decided.reason, letter_id(again)
    return tie


def write_ties(lake: Lake, run_id: str, plan: ReplayPlan, window_days: int) -> None:
    """Keep a replay's ties until the run is settled (written before its pipeline runs)."""
    header = {"run_id": run_id, "window_days": window_days, "counts": plan.counts}
    lines = [header, *plan.ties]
    data = "".join(json.dumps(x, ensure_ascii=False, sort_keys=True) + "\n" for x in lines)
    lake.check_lock()
    lake.storage.write_bytes(_ties_key(lake, run_id), gzip.compress(data.encode("utf-8"), mtime=0))


# -- settling: the resolution ledger -------------------------------------------------------------


def settle_replays(lake: Lake, clock: Clock, only: str | None = None) -> dict[str, dict]:
    """Write the ledger of every committed replay run that has ties and no ledger yet, and drop
    the ties of replay runs that did not commit. Call under the lock, after recovery. Returns
    run id -> counts of the runs whose ledger was written now."""
    settled: dict[str, dict] = {}
    for run_id in _tied_runs(lake):
        if only is not None and run_id != only:
            continue
        report = _report(lake, run_id) or {}
        status = report.get("status")
        if status == "committed":
            ledger = _ledger_key(lake, run_id)
            if not lake.storage.exists(ledger):
                records = _decide(lake, run_id, clock)
                checkpoint("replay_before_resolutions")
                lake.check_lock()
                data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
                try:
                    lake.storage.write_if(ledger, data.encode("utf-8"), None)
                except PreconditionFailed:
                    logger.info("the ledger of replay %s was already written", run_id)
                settled[run_id] = _outcome_counts(records)
        elif status is None and lake.storage.list(lake.staging(run_id)):
            continue  # not settled by recovery yet: leave it to the next run
        else:
            logger.info("replay %s did not commit (%s); dropping its ties", run_id, status or "no report")
        lake.check_lock()
        lake.storage.delete(_ties_key(lake, run_id))
    return settled


def _outcome_counts(records: list[dict]) -> dict:
    out = {"resolved": 0, "open": 0}
    for r in records:
        out[r["status"]] += 1
        out[r["outcome"]] = out.get(r["outcome"], 0) + 1
    return out


def _read_ties(lake: Lake, run_id: str) -> tuple[dict, list[dict]]:
    lines = gzip.decompress(lake.storage.read_bytes(_ties_key(lake, run_id))).splitlines()
    header, *ties = (json.loads(line) for line in lines if line.strip())
    return header, ties


def _decide(lake: Lake, run_id: str, clock: Clock) -> list[dict]:
    """One ledger record per letter the replay run tied: resolved when its record's ActivityId is
    committed in the tables that read it (written by this run, or a duplicate of an earlier
    row), open with the new reason when this run rejected it again, open ``not_written`` when it
    is neither (filtered out by --since/--until/--event-name)."""
    header, ties = _read_ties(lake, run_id)
    again: dict[tuple[str, int], list[dict]] = {}
    letters_key = lake.key("_deadletter", f"{run_id}.jsonl.gz")
    if lake.storage.exists(letters_key):
        for letter in read_letters(lake, letters_key):
            again.setdefault((str(letter.get("source")), int(letter.get("position") or 0)), []).append(letter)
    window = int(header.get("window_days", 0))
    committed = _committed_ids(lake, ties, window)
    at = clock().astimezone(UTC).isoformat().replace("+00:00", "Z")
    per_letter: dict[str, dict] = {}
    order = {reason: i for i, reason in enumerate(REASONS)}
    for tie in ties:
        base = {"dead_letter": tie["dead_letter"], "replay_run": run_id, "at": at}
        base |= {"source": tie["source"], "line": tie["line"]}
        rejected = sorted(
            again.get((tie["source"], tie["line"]), []), key=lambda x: order.get(x.get("reason"), 99)
        )
        if rejected:
            first = rejected[0]
            record = base | {
                "status": "open",
                "outcome": "rejected_again",
                "reason": first.get("reason"),
                "attempt": letter_id(first),
            }
        else:
            writers = _writers(tie, committed, window)
            if writers is not None:
                outcome = "written" if run_id in writers else "duplicate"
                record = base | {"status": "resolved", "outcome": outcome}
            else:
                record = base | {"status": "open", "outcome": "not_written"}
                if tie.get("reason"):  # already dead-lettered by an earlier replay: not written again
                    record |= {
                        "outcome": "rejected_again",
                        "reason": tie["reason"],
                        "attempt": tie["attempt"],
                    }
        held = per_letter.get(tie["dead_letter"])
        if held is None or (held["status"] == "resolved" and record["status"] == "open"):
            per_letter[tie["dead_letter"]] = record  # a letter with several records: all must land
    return list(per_letter.values())


def _tables_of(tie: dict) -> list[str]:
    tables = list(tie.get("tables") or [])
    own = tie.get("letter_activity")
    return [own] if own in tables else tables


def _committed_ids(lake: Lake, ties: list[dict], window: int) -> dict[str, dict[str, set]]:
    """ActivityId -> table -> {(date, run that wrote it)}, for the ids the ties need, read from
    the committed files of the dates within the dedupe window of each record's date (the
    ActivityId column only)."""
    wanted: dict[str, set[str]] = {}
    ids = set()
    for tie in ties:
        if not tie.get("activity_id") or not tie.get("date"):
            continue
        ids.add(tie["activity_id"])
        day = date.fromisoformat(tie["date"])
        for table in _tables_of(tie):
            dates = wanted.setdefault(table, set())
            dates.update((day + timedelta(days=d)).isoformat() for d in range(-window, window + 1))
    found: dict[str, dict[str, set]] = {}
    if not ids:
        return found
    tables = lake.snapshot().tables
    for table, dates in sorted(wanted.items()):
        held = tables.get(table)
        for location in sorted(held.data_locations() if held else []):
            day_of = date_of_partition(location)
            if day_of not in dates:
                continue
            lake.check_lock()
            with lake.storage.open_read(lake.key(location)) as f:
                column = pq.read_table(f, columns=["ActivityId"])["ActivityId"].to_pylist()
            for activity_id in ids.intersection(column):
                found.setdefault(activity_id, {}).setdefault(table, set()).add((day_of, run_of(location)))
    return found


def _writers(tie: dict, committed: dict[str, dict[str, set]], window: int) -> set[str] | None:
    """The runs holding the tied record's ActivityId in every table that read it (None when some
    table lacks it), within the dedupe window of its date."""
    if not tie.get("activity_id") or not tie.get("date"):
        return None
    day = date.fromisoformat(tie["date"])
    runs: set[str] = set()
    by_table = committed.get(tie["activity_id"], {})
    for table in _tables_of(tie):
        near = {
            run
            for held_day, run in by_table.get(table, set())
            if abs((date.fromisoformat(held_day) - day).days) <= window
        }
        if not near:
            return None
        runs |= near
    return runs or None
