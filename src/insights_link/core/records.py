"""Decode, validate and map one event: the reference implementation of the contract.

Pure functions, no Beam and no storage. The batched path (``batch.py``) must agree with these
on every input; tests hold the two together.

An event arrives as a dict in either form:
    {"Signal": {"Export": {"Id": "e1"}, "Timestamp": "2024-05-01T10:00:00Z", ...}}   # nested
    {"Signal.Export.Id": "e1", "Signal.Timestamp": "2024-05-01T10:00:00Z", ...}        # flat
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from insights_link.core.contract import (
    ACTION_NAME,
    EVENT_NAME,
    EXPORT_ID,
    REASONS,
    REQUIRED_FIELDS,
    TIMESTAMP,
    USER_ID,
    VIEW_URI,
)

MISSING: Any = object()


@dataclass(frozen=True)
class Rejection:
    """Why a record is dead-lettered: one reason code and a detail naming every problem."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Activity:
    """The run-independent part of one activity row (ActivityType/LastUpdated come from the run)."""

    activity_id: str
    customer_id: str
    activity_time: datetime
    event_name: str | None
    web_address: str
    details: str
    properties: tuple[str | None, ...] = ()


# ---------------------------------------------------------------------------------------------
# Decoding


def _first_key_wins(pairs: list[tuple[str, Any]]) -> dict:
    """Duplicate keys in one object: the first occurrence wins (as in DuckDB's reader)."""
    out: dict = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_first_key_wins)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB]|\\u[dD][c-fC-F]")


def _has_lone_surrogate(value: Any) -> bool:
    """Walked with a stack, not recursion: a decoded value may nest hundreds of levels deep."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


def decode_json_text(text: str) -> dict | Rejection:
    """Parse one JSON-lines record; anything but a JSON object is ``malformed``.

    Strict JSON (RFC 8259) as Python reads it, except that an escaped lone surrogate
    (``"\\ud800"``) is not valid Unicode and makes the record malformed.
    """
    try:
        value = _DECODER.decode(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return Rejection("malformed", f"malformed: not valid JSON ({getattr(exc, 'msg', exc)})")
    if not isinstance(value, dict):
        return Rejection("malformed", f"malformed: a JSON {type(value).__name__} is not an event object")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        return Rejection("malformed", "malformed: an escaped lone surrogate is not valid Unicode")
    return value


def decode_json_bytes(raw: bytes) -> dict | Rejection:
    """Parse one JSON-lines record given as bytes (invalid UTF-8 is ``malformed``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("malformed", f"malformed: invalid UTF-8 at byte {exc.start}")
    return decode_json_text(text)


def decode_avro_record(record: Any) -> dict | Rejection:
    """An Avro record: Event Hubs Capture (``Body`` bytes holding one JSON event) or nested form."""
    if isinstance(record, dict) and "Body" in record and "Signal" not in record:
        body = record["Body"]
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, (bytes, bytearray)):
            return Rejection("malformed", "malformed: Event Hubs Body is not bytes")
        result = decode_json_bytes(bytes(body))
        if isinstance(result, Rejection):
            return Rejection("malformed", result.detail.replace("malformed:", "malformed: Body", 1))
        return result
    if not isinstance(record, dict):
        return Rejection("malformed", "malformed: Avro record is not a record")
    return record


def decode_csv_row(header: list[str], row: list[str]) -> dict | Rejection:
    """A CSV data row as a flat event; a row whose field count differs from the header's is
    ``malformed``. Empty cells count as absent."""
    if len(row) != len(header):
        return Rejection(
            "malformed", f"malformed: CSV row has {len(row)} fields, the header has {len(header)}"
        )
    if any("\udc80" <= ch <= "\udcff" for cell in row for ch in cell):
        return Rejection("malformed", "malformed: invalid UTF-8 in CSV row")
    return {name: value for name, value in zip(header, row, strict=True) if value != ""}


def field_value(event: dict, dotted: str) -> Any:
    """A Signal property by dotted name, from the flat key if present, else the nested path."""
    if dotted in event:
        return event[dotted]
    node: Any = event
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------
# Validation

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)
_INTEGER = re.compile(r"[+-]?\d{1,15}", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp(value: Any) -> datetime | str:
    """UTC datetime from ISO 8601 (``Z`` or offset; none means UTC) or epoch milliseconds.

    Returns an error message instead of raising. Strict: ``2024-04-31T00:00:00Z`` is invalid,
    never rolled over; a date without a time is not a timestamp.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return _from_epoch_ms(value)
    if isinstance(value, datetime):  # Avro timestamp-millis/micros logical types
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not isinstance(value, str):
        return f"{value!r} is not a timestamp"
    text = value.strip()
    if _INTEGER.fullmatch(text):
        return _from_epoch_ms(int(text))
    m = _ISO.fullmatch(text)
    if not m:
        return f"{value!r} is not ISO 8601 or epoch milliseconds"
    year, month, day, hour, minute = (int(g) for g in m.groups()[:5])
    second = int(m.group(6) or 0)
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    try:
        moment = datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    except ValueError:
        return f"{value!r} is not a real date and time"
    zone = m.group(8)
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            return f"{value!r} has an impossible UTC offset"
        try:
            moment -= sign * timedelta(hours=hours, minutes=minutes)
        except OverflowError:
            return f"{value!r} is out of range"
    return moment


def _from_epoch_ms(ms: int) -> datetime | str:
    try:
        moment = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return f"{ms!r} is out of range for epoch milliseconds"
    return moment


_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f]")


def check_uri(value: str) -> str | None:
    """None when ``value`` is an absolute http(s) URL with a host, else the problem."""
    if _SPACE_OR_CONTROL.search(value):
        return f"{value!r} contains whitespace or control characters"
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return f"{value!r} is not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not host:
        return f"{value!r} is not an absolute http(s) URL with a host"
    return None


def _as_text(value: Any) -> str | None:
    """A required field's text: strings as they are, integers as decimal strings, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, datetime):  # only meaningful for Signal.Timestamp (Avro logical types)
        return value.isoformat()
    return None


def property_text(value: Any) -> str | None:
    """A pass-through property as a string column value (objects and arrays as JSON)."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def check_event(event: dict, properties: tuple[str, ...] = ()) -> Activity | Rejection:
    """Validate a decoded event and map it to an activity, or say why it is rejected.

    >>> check_event({"Signal.Export.Id": "e1"}).reason
    'missing_field'
    """
    problems: dict[str, list[str]] = {reason: [] for reason in REASONS}
    texts: dict[str, str] = {}
    for name in REQUIRED_FIELDS:
        value = field_value(event, name)
        if value is MISSING or value is None or (isinstance(value, str) and not value.strip()):
            problems["missing_field"].append(f"{name} is absent, null or blank")
            continue
        text = _as_text(value)
        if text is None:
            kind = {dict: "an object", list: "an array", bool: "a boolean"}.get(
                type(value), type(value).__name__
            )
            problems["invalid_type"].append(f"{name} is {kind}")
            continue
        texts[name] = text
    moment: datetime | str | None = None
    if TIMESTAMP in texts:
        moment = parse_timestamp(field_value(event, TIMESTAMP))
        if isinstance(moment, str):
            problems["invalid_timestamp"].append(f"{TIMESTAMP} {moment}")
    if VIEW_URI in texts:
        uri_problem = check_uri(texts[VIEW_URI])
        if uri_problem:
            problems["invalid_uri"].append(f"{VIEW_URI} {uri_problem}")
    found = [(reason, msgs) for reason, msgs in problems.items() if msgs]
    if found:
        detail = "; ".join(f"{reason}: {', '.join(msgs)}" for reason, msgs in found)
        return Rejection(found[0][0], detail)
    assert isinstance(moment, datetime)
    name = field_value(event, EVENT_NAME)
    event_name = _as_text(name) if name is not MISSING and name is not None else None
    return Activity(
        activity_id=texts[EXPORT_ID],
        customer_id=texts[USER_ID],
        activity_time=moment,
        event_name=event_name if event_name and event_name.strip() else None,
        web_address=texts[VIEW_URI],
        details=texts[ACTION_NAME],
        properties=tuple(property_text(field_value(event, p)) for p in properties),
    )
