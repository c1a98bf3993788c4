"""Dead letters as JSON lines every JSON reader loads, and their identity across runs."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable


def dead_letter_key(letter: dict) -> tuple:
    """A dead letter's identity across runs: where it was read, why, for which activity, and
    what it held (hashed). Computed on the published form, so a letter read back from the lake
    and the same letter about to be written get the same key."""
    clean = json.loads(_json_line(letter))
    body = json.dumps([clean.get("payload"), clean.get("payload_base64")], sort_keys=True)
    return (
        clean.get("source"),
        clean.get("position"),
        clean.get("reason"),
        clean.get("activity"),
        hashlib.sha256(body.encode("utf-8")).hexdigest(),
    )


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
        return (json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n").encode(
            "utf-8"
        )
    except (UnicodeEncodeError, ValueError):
        pass  # the rare record with lone surrogates or non-finite floats: cleaned below

    def raw(text: str) -> bytes:
        try:
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # a surrogate outside surrogateescape's range: its CESU bytes
            return b"".join(
                bytes([ord(ch) - 0xDC00])
                if "\udc80" <= ch <= "\udcff"
                else ch.encode("utf-8", errors="surrogatepass")
                for ch in text
            )

    def clean(value):
        if isinstance(value, str):
            return (
                raw(value).decode("utf-8", errors="replace") if re.search("[\ud800-\udfff]", value) else value
            )
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


def id_pattern(ids: Iterable[str]) -> re.Pattern[str]:
    """A pattern finding any of ``ids`` in a text as a whole token: not inside a longer id
    (``cust-1`` is not found in ``cust-10``); longest first."""
    alternatives = "|".join(re.escape(i) for i in sorted(set(ids), key=lambda i: (-len(i), i)))
    return re.compile(rf"(?<![\w.@-])(?:{alternatives})(?![\w.@-])")


def mentioned_ids(letter: dict, ids: frozenset[str], pattern: re.Pattern[str]) -> set[str]:
    """Which of a customer's ``ids`` a dead letter carries: the record's ``Signal.User.Id``
    (nested, or a flat ``Signal.User.Id`` key as CSV has it) when its payload is a JSON object,
    else any of them as a whole token anywhere in its text or raw bytes (``payload_base64``)."""
    payload = letter.get("payload")
    if isinstance(payload, str):
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and "payload_base64" not in letter:
            payload = decoded
    if isinstance(payload, dict):
        user = payload.get("Signal.User.Id")
        signal = payload.get("Signal")
        if user is None and isinstance(signal, dict) and isinstance(signal.get("User"), dict):
            user = signal["User"].get("Id")
        if user is not None and not isinstance(user, dict | list):
            return {str(user)} & ids
        payload = json.dumps(payload, ensure_ascii=False)  # no user id field: search the text
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    found = set(pattern.findall(text))
    raw = letter.get("payload_base64")
    if isinstance(raw, str):
        found |= set(pattern.findall(base64.b64decode(raw).decode("utf-8", errors="replace")))
    return found & ids
