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
