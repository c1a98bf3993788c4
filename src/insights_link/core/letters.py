"""Dead letters as a working set: stable ids, open/resolved status, selection, and the records a
fixer edits and replays.

Pure functions over dead-letter dicts and resolution records; no storage, no Beam. The lake side
(reading ``_deadletter/``, writing the resolution ledger) is :mod:`insights_link.lake.deadletters`;
docs/dead-letters.md describes the whole round trip.

- A dead letter's id is a short hash of :func:`~insights_link.core.deadletters.dead_letter_key`
  (where it was read, why, for which activity, what it held), so it survives ``forget``
  rewriting its file and is the same whichever run's file holds it.
- A replayed record that is rejected again becomes a new dead letter (an *attempt*); the ledger
  ties it to the original, which stays the one open item with the attempt's reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from insights_link.core.blocks import InputFile
from insights_link.core.contract import EXPORT_ID, REASONS, TIMESTAMP
from insights_link.core.deadletters import dead_letter_key
from insights_link.core.records import (
    Activity,
    Rejection,
    check_event,
    decode_json_text,
    field_value,
)

#: a top-level field of a JSON object record naming its dead letter (wins over the sidecar)
EMBEDDED_KEY = "_insights_link_dead_letter"
#: the sidecar beside an exported file: one line per record, tying line n to its dead letter
SIDECAR_SUFFIX = ".keys.jsonl"
ID_LENGTH = 16
STATUSES = ("open", "resolved")


def letter_id(letter: dict) -> str:
    """A dead letter's stable id: 16 hex digits of a hash of its identity (not of its run)."""
    key = json.dumps(list(dead_letter_key(letter)), sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:ID_LENGTH]


_ID = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}")


def is_letter_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID.fullmatch(value))


# -- the working set -----------------------------------------------------------------------------


@dataclass
class Item:
    """One dead letter of the working set, with what replays made of it."""

    id: str
    letter: dict  # the dead letter as published
    status: str = "open"
    reason: str = ""  # the current reason: the latest replay's, else the letter's own
    detail: str = ""
    latest: dict | None = None  # the latest attempt's dead letter (its payload is what export writes)
    attempts: int = 0  # replays that left it open
    outcome: str | None = (
        None  # the latest replay's outcome (written, duplicate, rejected_again, not_written)
    )
    resolved_by: str | None = None  # the replay run that resolved it
    committed_at: str | None = None  # when the run that wrote the letter committed (its report)

    @property
    def run_id(self) -> str:
        return str(self.letter.get("run_id", ""))

    def current(self) -> dict:
        """The dead letter whose payload stands for this item now: the latest attempt, else its own."""
        return self.latest or self.letter


@dataclass
class WorkingSet:
    """Every item (attempts folded into their originals) and attempt id -> original id."""

    items: list[Item]
    attempts: dict[str, str] = field(default_factory=dict)

    def by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self.items}

    def root(self, lid: str) -> str:
        """The item a letter id stands for (an attempt's original, else itself)."""
        return self.attempts.get(lid, lid)


def _ledger_order(record: dict) -> tuple:
    return (str(record.get("at", "")), str(record.get("replay_run", "")), int(record.get("line", 0) or 0))


def working_set(
    letters: Iterable[dict], resolutions: Iterable[dict], run_times: Mapping[str, str] | None = None
) -> WorkingSet:
    """Apply the resolution ledger to the dead letters, oldest record first.

    ``resolved`` is final: later records about a resolved letter change nothing. An ``open``
    record updates the current reason and points at its attempt (the replay's new dead letter),
    which is then folded into the original instead of counting as an item of its own.
    """
    run_times = run_times or {}
    every: dict[str, Item] = {}
    for letter in letters:
        lid = letter_id(letter)
        if lid not in every:  # the same record can't be dead-lettered twice; keep the first if so
            every[lid] = Item(
                lid,
                letter,
                reason=str(letter.get("reason", "")),
                detail=str(letter.get("detail", "")),
                committed_at=run_times.get(str(letter.get("run_id", ""))),
            )
    ordered = sorted(resolutions, key=_ledger_order)
    attempts = {
        str(r["attempt"]): str(r["dead_letter"])
        for r in ordered
        if r.get("attempt") and r.get("dead_letter") in every
    }
    for record in ordered:
        item = every.get(str(record.get("dead_letter")))
        if item is None or item.status == "resolved":
            continue
        item.outcome = record.get("outcome")
        if record.get("status") == "resolved":
            item.status = "resolved"
            item.resolved_by = record.get("replay_run")
            continue
        item.attempts += 1
        if record.get("reason"):
            item.reason = str(record["reason"])
        attempt = every.get(str(record.get("attempt")))
        if attempt is not None:
            item.latest = attempt.letter
            item.detail = str(attempt.letter.get("detail", item.detail))
    items = [item for lid, item in every.items() if lid not in attempts]
    return WorkingSet(items, attempts)


@dataclass(frozen=True)
class Selection:
    """Which items a listing or an export takes: by current reason, by the run that wrote the
    letter, by when that run committed; resolved ones only when ``include_resolved``."""

    reasons: frozenset[str] = frozenset()
    run_ids: frozenset[str] = frozenset()
    since: datetime | None = None
    include_resolved: bool = False

    def matches(self, item: Item) -> bool:
        """Whether ``item`` passes the filters (its status aside)."""
        if self.reasons and item.reason not in self.reasons:
            return False
        if self.run_ids and item.run_id not in self.run_ids:
            return False
        if self.since is not None:
            if not item.committed_at:
                return False
            committed = datetime.fromisoformat(item.committed_at.replace("Z", "+00:00"))
            if committed < self.since:
                return False
        return True

    def picks(self, item: Item) -> bool:
        """Whether an export takes ``item``: it matches, and it is open (or resolved ones are wanted)."""
        return self.matches(item) and (item.status == "open" or self.include_resolved)


def counts(items: Iterable[Item]) -> dict:
    """Open and resolved counts, in total and by (current) reason, reasons in priority order."""
    by_reason: dict[str, dict[str, int]] = {}
    total = dict.fromkeys(STATUSES, 0)
    for item in items:
        total[item.status] += 1
        by_reason.setdefault(item.reason, dict.fromkeys(STATUSES, 0))[item.status] += 1
    order = {reason: i for i, reason in enumerate(REASONS)}
    return total | {
        "by_reason": {r: by_reason[r] for r in sorted(by_reason, key=lambda r: (order.get(r, len(order)), r))}
    }


# -- records for a fixer -------------------------------------------------------------------------

_SPACE_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2})?")


def _fix_rendered_timestamp(event: dict) -> None:
    """An Avro timestamp logical type reaches a dead letter as ``str(datetime)`` (a space, not a
    ``T``); put it back in ISO 8601 so the record is not rejected for that on replay."""
    signal = event.get("Signal")
    holders = [(event, TIMESTAMP)] + ([(signal, "Timestamp")] if isinstance(signal, dict) else [])
    for holder, name in holders:
        value = holder.get(name)
        if isinstance(value, str) and _SPACE_TIMESTAMP.fullmatch(value):
            holder[name] = value.replace(" ", "T", 1)


def _compact(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _one_line(raw: bytes) -> bytes:
    """``raw`` as one line: itself when it holds no line break, else as a JSON string."""
    if b"\n" not in raw and b"\r" not in raw:
        return raw
    return _compact(raw.decode("utf-8", errors="replace"))


def record_line(letter: dict) -> bytes | None:
    """The record a dead letter holds, as one JSON line a fixer edits (no line ending); None when
    it holds none (the unreadable rest of a file).

    JSON lines: the line exactly as received (its exact bytes when they were not valid UTF-8).
    CSV: a flat object of the row's cells by their dotted header names (absent cells left out).
    Avro: the record as JSON; an Event Hubs Capture record is its ``Body``, the event itself.
    """
    payload = letter.get("payload")
    raw64 = letter.get("payload_base64")
    if payload is None:
        return None
    if isinstance(payload, str):
        return _one_line(base64.b64decode(raw64) if isinstance(raw64, str) else payload.encode("utf-8"))
    if isinstance(payload, dict) and "Body" in payload and "Signal" not in payload:
        body = payload["Body"]
        if isinstance(body, dict) and isinstance(body.get("base64"), str):
            raw = base64.b64decode(body["base64"])
        elif isinstance(body, str):
            raw = body.encode("utf-8")
        else:
            return _compact(payload)
        try:
            event = json.loads(raw)
        except ValueError:
            return _one_line(raw)
        return _compact(event) if isinstance(event, dict) else _one_line(raw)
    if isinstance(payload, dict):
        event = {k: v for k, v in payload.items() if v is not None}
        _fix_rendered_timestamp(event)
        return _compact(event)
    return _compact(payload)


def embed_key(line: bytes, lid: str) -> bytes:
    """``line`` with the dead letter's id as its first field, when it is a JSON object; other
    records (not JSON, not an object) are returned unchanged and rely on the sidecar. The rest of
    the line keeps its exact text."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return line
    decoded = decode_json_text(text)
    if not isinstance(decoded, dict):
        return line
    if EMBEDDED_KEY in decoded:
        rest = {k: v for k, v in decoded.items() if k != EMBEDDED_KEY}
        return _compact({EMBEDDED_KEY: lid, **rest})
    brace = text.index("{")
    field_text = f'"{EMBEDDED_KEY}":"{lid}"' + ("," if decoded else "")
    return (text[: brace + 1] + field_text + text[brace + 1 :]).encode("utf-8")


_EMBEDDED = re.compile(r'\A(\s*\{)\s*"' + EMBEDDED_KEY + r'"\s*:\s*"([^"\\]*)"\s*,?')


def strip_key(text: str) -> tuple[str, str | None]:
    """``text`` without the embedded dead-letter field, and the id it named (None when there is
    none, or it is not a string). Where :func:`embed_key` (or ``jq``, which keeps key order) put
    it first, the rest keeps its exact text; elsewhere the object is written again compactly."""
    decoded = decode_json_text(text)
    if not isinstance(decoded, dict) or EMBEDDED_KEY not in decoded:
        return text, None
    value = decoded.pop(EMBEDDED_KEY)
    named = value if isinstance(value, str) else None
    m = _EMBEDDED.match(text)
    if m and m.group(2) == named:
        stripped = m.group(1) + text[m.end() :]
        if decode_json_text(stripped) == decoded:
            return stripped, named
    return _compact(decoded).decode("utf-8"), named


# -- replay --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayInput(InputFile):
    """A replayed input as the pipeline reads it: a cleaned copy (embedded keys stripped, records
    of resolved letters blanked, line numbers kept) that keeps the original's name and identity,
    so dead letters, reports and skipping committed inputs all speak of the original file."""

    shown: str = ""

    @property
    def source(self) -> str:
        return self.shown


@dataclass(frozen=True)
class Replayed:
    """What validation will make of one replayed record: its ActivityId and UTC date when valid,
    else the reason and detail it will be rejected with."""

    activity_id: str | None
    date: str | None
    reason: str | None = None
    detail: str | None = None


def replayed(text: str) -> Replayed:
    """Decide a replayed record with the reference implementation of the contract."""
    event = decode_json_text(text)
    if isinstance(event, Rejection):
        return Replayed(None, None, event.reason, event.detail)
    outcome = check_event(event)
    if isinstance(outcome, Rejection):
        value = field_value(event, EXPORT_ID)
        return Replayed(value if isinstance(value, str) else None, None, outcome.reason, outcome.detail)
    assert isinstance(outcome, Activity)
    return Replayed(outcome.activity_id, outcome.activity_time.date().isoformat())


class SidecarError(ValueError):
    """A sidecar line that is not ``{"line": n, "dead_letter": id, ...}``."""


def parse_sidecar(lines: Iterable[bytes]) -> dict[int, str]:
    """Line number -> dead-letter id, from a sidecar's JSON lines (blank lines skipped)."""
    ties: dict[int, str] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except ValueError as exc:
            raise SidecarError(f"line {number} is not JSON ({exc})") from None
        line = entry.get("line") if isinstance(entry, dict) else None
        lid = entry.get("dead_letter") if isinstance(entry, dict) else None
        if not isinstance(line, int) or isinstance(line, bool) or line < 1 or not is_letter_id(lid):
            raise SidecarError(f'line {number} is not {{"line": n, "dead_letter": "<16 hex digits>"}}')
        ties[line] = str(lid)
    return ties


def count_lines(chunks: Iterable[bytes]) -> tuple[int, int]:
    """(lines, last non-blank line) of a text read in chunks, counting lines as the JSON-lines
    reader does: LF, CRLF and a lone CR each end one."""
    lines = last = 0
    carry = b""
    tail = b""  # the unfinished last line so far
    for chunk in chunks:
        text = carry + chunk
        carry = b""
        if text.endswith(b"\r"):  # maybe half of a CRLF: decide with the next chunk
            text, carry = text[:-1], b"\r"
        parts = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        parts[0] = tail + parts[0]
        tail = parts.pop()
        for part in parts:
            lines += 1
            if part.strip():
                last = lines
    if carry or tail:
        lines += 1
        if tail.strip():
            last = lines
    return lines, last
