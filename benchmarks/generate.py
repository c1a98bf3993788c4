"""Deterministic generator of refined engagement events, for benchmarks and tests.

Writes ``F`` files (``events-000.jsonl`` ...) of web events spread evenly over ``--days`` UTC days,
with a given share of invalid records (spread over every rejection reason the input format can
express) and of duplicates (identical re-deliveries of earlier valid events, some of them in a
later file). Next to the data it writes ``_expected.json`` with the exact counts it produced, so
tests and benchmarks can assert outcomes without hard-coding them.

Everything comes from one seeded :class:`random.Random`; nothing reads the wall clock, so the same
arguments always give the same bytes. Records are streamed to disk in chunks, so memory stays flat
however many events are asked for.

Counting rules (the ones the exporter follows): every record is one record read; a record is a
duplicate when it is valid and its ``Signal.Export.Id`` already appeared in an earlier valid
record; rejected records are never duplicates. Each invalid record has exactly one problem.

Usage::

    python benchmarks/generate.py --events 1000000 --files 8 --out /tmp/events \
        [--invalid-ratio 0.03] [--duplicate-ratio 0.01] [--days 30] [--start 2024-05-01] \
        [--seed 7] [--format jsonl|csv|avro-nested|avro-capture] [--gzip]
"""

from __future__ import annotations

import argparse
import csv
import gzip as gzip_module
import io
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from insights_link.core.contract import REASONS

FORMATS: tuple[str, ...] = ("jsonl", "csv", "avro-nested", "avro-capture")

# Which rejection reasons each format can express. CSV cells are always strings, so CSV has no
# invalid_type (its malformed rows have the wrong number of fields); typed Avro records cannot
# carry bad JSON, so avro-nested has no malformed.
FORMAT_REASONS: dict[str, tuple[str, ...]] = {
    "jsonl": REASONS,
    "avro-capture": REASONS,
    "csv": ("malformed", "missing_field", "invalid_timestamp", "invalid_uri"),
    "avro-nested": ("missing_field", "invalid_type", "invalid_timestamp", "invalid_uri"),
}
EXTENSIONS: dict[str, str] = {
    "jsonl": ".jsonl",
    "csv": ".csv",
    "avro-nested": ".avro",
    "avro-capture": ".avro",
}

COLUMNS: tuple[str, ...] = (
    "Signal.Export.Id",
    "Signal.User.Id",
    "Signal.Timestamp",
    "Signal.View.Uri",
    "Signal.Action.Name",
    "Signal.Name",
    "Signal.Session.Id",
    "Signal.Device.Type",
    "Signal.Device.Browser",
    "Signal.Device.Os",
)
REQUIRED: tuple[str, ...] = COLUMNS[:5]

# Refined event name -> the action that produces it.
EVENT_KINDS: tuple[tuple[str, str], ...] = (
    ("EmailPromoClick", "click"),
    ("ProductView", "view"),
    ("ProductView", "view"),
    ("ProductView", "view"),
    ("AddToCart", "add_to_cart"),
    ("CheckoutStart", "submit"),
    ("SearchSubmit", "search"),
    ("PageView", "view"),
    ("PageView", "view"),
)
SITES: tuple[str, ...] = (
    "www.contoso-shop.com",
    "shop.fabrikam.example",
    "www.northwind-outdoor.com",
)
SECTIONS: tuple[str, ...] = ("products", "category", "deals", "blog", "collections")
CAMPAIGNS: tuple[str, ...] = ("spring_sale", "newsletter_w18", "loyalty", "back_in_stock")
DEVICES: tuple[tuple[str, str, str], ...] = (
    ("desktop", "Chrome", "Windows"),
    ("desktop", "Edge", "Windows"),
    ("desktop", "Safari", "macOS"),
    ("desktop", "Firefox", "Linux"),
    ("mobile", "Safari", "iOS"),
    ("mobile", "Chrome", "Android"),
    ("mobile", "Samsung Internet", "Android"),
    ("tablet", "Safari", "iPadOS"),
)
BAD_WORD_TIMESTAMPS: tuple[str, ...] = ("yesterday", "not a timestamp", "last Tuesday", "N/A")
BAD_URIS: tuple[str, ...] = (
    "javascript:alert(1)",
    "/relative/path",
    "ftp://files.contoso-shop.com/export.csv",
    "mailto:someone@contoso-shop.com",
    "products/sku-1234",
    "www.contoso-shop.com/deals",
)

DAY_MS = 86_400_000
OFFSET_MS = 2 * 3_600_000  # the +02:00 offset some producers write
RING_SIZE = 1024  # recent valid events, for re-deliveries soon after the original
RESERVOIR_SIZE = 4096  # uniform sample of all earlier valid events, for late re-deliveries
FLUSH_EVERY = 8192  # records buffered before a write
AVRO_SYNC_MARKER = b"insights-link-gn"  # fixed 16 bytes, so Avro output is deterministic

_ABSENT = object()  # a key left out of the record entirely


def _any_required() -> list[Any]:
    """An Avro union wide enough to carry valid, missing and wrongly typed required values."""
    return [
        "null",
        "string",
        "boolean",
        "long",
        {"type": "array", "items": "string"},
        {"type": "map", "values": "string"},
    ]


NESTED_AVRO_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "RefinedEngagementEvent",
    "namespace": "insights.link.sample",
    "fields": [
        {
            "name": "Signal",
            "type": {
                "type": "record",
                "name": "Signal",
                "fields": [
                    {
                        "name": "Export",
                        "type": {
                            "type": "record",
                            "name": "Export",
                            "fields": [{"name": "Id", "type": _any_required()}],
                        },
                    },
                    {
                        "name": "User",
                        "type": {
                            "type": "record",
                            "name": "User",
                            "fields": [{"name": "Id", "type": _any_required()}],
                        },
                    },
                    {"name": "Timestamp", "type": _any_required()},
                    {
                        "name": "View",
                        "type": {
                            "type": "record",
                            "name": "View",
                            "fields": [{"name": "Uri", "type": _any_required()}],
                        },
                    },
                    {
                        "name": "Action",
                        "type": {
                            "type": "record",
                            "name": "Action",
                            "fields": [{"name": "Name", "type": _any_required()}],
                        },
                    },
                    {"name": "Name", "type": ["null", "string"], "default": None},
                    {
                        "name": "Session",
                        "type": {
                            "type": "record",
                            "name": "Session",
                            "fields": [{"name": "Id", "type": ["null", "string"]}],
                        },
                    },
                    {
                        "name": "Device",
                        "type": {
                            "type": "record",
                            "name": "Device",
                            "fields": [
                                {"name": "Type", "type": ["null", "string"]},
                                {"name": "Browser", "type": ["null", "string"]},
                                {"name": "Os", "type": ["null", "string"]},
                            ],
                        },
                    },
                ],
            },
        }
    ],
}

# The schema Azure Event Hubs Capture writes.
CAPTURE_AVRO_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "EventData",
    "namespace": "Microsoft.ServiceBus.Messaging",
    "fields": [
        {"name": "SequenceNumber", "type": "long"},
        {"name": "Offset", "type": "string"},
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {
            "name": "SystemProperties",
            "type": {"type": "map", "values": ["long", "double", "string", "bytes"]},
        },
        {
            "name": "Properties",
            "type": {"type": "map", "values": ["long", "double", "string", "bytes", "null"]},
        },
        {"name": "Body", "type": ["null", "bytes"]},
    ],
}


def nest(flat: dict[str, Any], *, absent_as_null: bool = False) -> dict[str, Any]:
    """Turn ``{"Signal.Export.Id": v, ...}`` into ``{"Signal": {"Export": {"Id": v}}}``.

    Keys whose value is the absent marker are left out, or set to None with ``absent_as_null``.
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is _ABSENT:
            if not absent_as_null:
                continue
            value = None
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def capture_time(ms: int) -> str:
    """Event Hubs Capture's ``EnqueuedTimeUtc`` text, e.g. ``5/1/2024 10:00:01 AM``."""
    t = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    hour = t.hour % 12 or 12
    half = "AM" if t.hour < 12 else "PM"
    return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} {half}"


class _Source:
    """The stream of records: one seeded rng, the counters and the re-delivery pools."""

    def __init__(
        self,
        *,
        events: int,
        invalid_ratio: float,
        duplicate_ratio: float,
        days: int,
        start_ms: int,
        seed: int,
        fmt: str,
    ) -> None:
        self.rng = random.Random(seed)
        self.events = events
        self.invalid_ratio = invalid_ratio
        self.dup_cut = invalid_ratio + duplicate_ratio
        self.start_ms = start_ms
        self.span_ms = days * DAY_MS
        self.step_ms = max(1, self.span_ms // max(events, 1))
        self.fmt = fmt
        self.reasons = FORMAT_REASONS[fmt]
        self.users = max(100, events // 20)
        self.invalid: dict[str, int] = {reason: 0 for reason in REASONS}
        self.duplicates = 0
        self.duplicates_cross_file = 0
        self.valid_unique = 0
        self.per_day: dict[int, int] = {}
        self.ring: list[tuple[Any, int]] = []
        self.ring_pos = 0
        self.reservoir: list[tuple[Any, int]] = []
        self._day_text: dict[int, str] = {}
        self._render: Callable[[dict[str, Any], bool], Any] = {
            "jsonl": self._render_json,
            "avro-capture": self._render_json,
            "csv": self._render_csv,
            "avro-nested": self._render_avro,
        }[fmt]

    # -- building blocks -------------------------------------------------------------------

    def _day(self, day: int) -> str:
        text = self._day_text.get(day)
        if text is None:
            text = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
            self._day_text[day] = text
        return text

    def _iso(self, ms: int, offset_ms: int) -> str:
        local = ms + offset_ms
        day, rest = divmod(local, DAY_MS)
        hours, rest = divmod(rest, 3_600_000)
        minutes, rest = divmod(rest, 60_000)
        seconds, millis = divmod(rest, 1000)
        zone = "Z" if offset_ms == 0 else "+02:00"
        return f"{self._day(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}{zone}"

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:32]}"

    def _event(self, index: int) -> tuple[dict[str, Any], int]:
        """A fresh valid event as flat fields, and its instant in epoch milliseconds."""
        rnd = self.rng.random
        ms = self.start_ms + (index * self.span_ms) // max(self.events, 1)
        ms += int(rnd() * self.step_ms)
        form = rnd()
        if form < 0.01 and self.fmt != "csv":
            ts: str | int = ms  # epoch milliseconds (CSV has no integers, so not there)
        elif form < 0.16:
            ts = self._iso(ms, OFFSET_MS)
        else:
            ts = self._iso(ms, 0)
        user_n = int(rnd() * self.users)
        user: str | int = 100_000 + user_n if rnd() < 0.005 else f"u-{user_n:07d}"
        name, action = EVENT_KINDS[int(rnd() * len(EVENT_KINDS))]
        site = SITES[int(rnd() * len(SITES))]
        section = SECTIONS[int(rnd() * len(SECTIONS))]
        uri = f"https://{site}/{section}/item-{int(rnd() * 90_000) + 10_000}"
        if name == "EmailPromoClick":
            campaign = CAMPAIGNS[int(rnd() * len(CAMPAIGNS))]
            uri += f"?utm_source=email&utm_medium=promo&utm_campaign={campaign}"
        elif name == "SearchSubmit":
            uri += f"?q=item+{int(rnd() * 1000)}&sort=price,asc"
        else:
            uri += f"?ref=home&pos={int(rnd() * 24) + 1}"
        device_type, browser, os_name = DEVICES[int(rnd() * len(DEVICES))]
        flat = {
            "Signal.Export.Id": self._uuid(),
            "Signal.User.Id": user,
            "Signal.Timestamp": ts,
            "Signal.View.Uri": uri,
            "Signal.Action.Name": action,
            "Signal.Name": name,
            "Signal.Session.Id": f"s-{self.rng.getrandbits(64):016x}",
            "Signal.Device.Type": device_type,
            "Signal.Device.Browser": browser,
            "Signal.Device.Os": os_name,
        }
        return flat, ms

    # -- rendering per format ----------------------------------------------------------------

    def _render_json(self, flat: dict[str, Any], valid: bool) -> bytes:
        if not valid:
            return _dump(nest(flat)).encode("utf-8")
        # Fast path: every valid value is JSON-safe text or an integer.
        user = flat["Signal.User.Id"]
        ts = flat["Signal.Timestamp"]
        user_json = str(user) if isinstance(user, int) else f'"{user}"'
        ts_json = str(ts) if isinstance(ts, int) else f'"{ts}"'
        return (
            f'{{"Signal":{{"Export":{{"Id":"{flat["Signal.Export.Id"]}"}},'
            f'"User":{{"Id":{user_json}}},"Timestamp":{ts_json},'
            f'"View":{{"Uri":"{flat["Signal.View.Uri"]}"}},'
            f'"Action":{{"Name":"{flat["Signal.Action.Name"]}"}},'
            f'"Name":"{flat["Signal.Name"]}","Session":{{"Id":"{flat["Signal.Session.Id"]}"}},'
            f'"Device":{{"Type":"{flat["Signal.Device.Type"]}",'
            f'"Browser":"{flat["Signal.Device.Browser"]}","Os":"{flat["Signal.Device.Os"]}"}}}}}}'
        ).encode()

    def _render_csv(self, flat: dict[str, Any], valid: bool) -> list[str]:
        cells = []
        for column in COLUMNS:
            value = flat[column]
            cells.append("" if value is _ABSENT or value is None else str(value))
        return cells

    def _render_avro(self, flat: dict[str, Any], valid: bool) -> dict[str, Any]:
        return nest(flat, absent_as_null=True)

    # -- invalid records -------------------------------------------------------------------

    def _malformed(self, flat: dict[str, Any]) -> bytes | list[str]:
        rnd = self.rng.random
        if self.fmt == "csv":  # a row whose field count differs from the header's
            cells = self._render_csv(flat, True)
            return cells + [""] if rnd() < 0.5 else cells[:-2]
        text = self._render_json(flat, True).decode("utf-8")
        variant = int(rnd() * 3)
        if variant == 0:  # cut short: a proper prefix of an object is never valid JSON
            return text[: 10 + int(rnd() * (len(text) - 20))].encode("utf-8")
        if variant == 1:  # valid JSON, but not an object
            options = ("[" + text + "]", '"' + flat["Signal.Export.Id"] + '"', "42", "null")
            return options[int(rnd() * len(options))].encode("utf-8")
        # invalid UTF-8 inside a string value
        return text.encode("utf-8").replace(b'"Browser":"', b'"Browser":"\xc3\x28', 1)

    def _invalid(self, index: int) -> tuple[Any, int]:
        rnd = self.rng.random
        flat, ms = self._event(index)
        reason = self.reasons[int(rnd() * len(self.reasons))]
        self.invalid[reason] += 1
        if reason == "malformed":
            return self._malformed(flat), ms
        field = REQUIRED[int(rnd() * len(REQUIRED))]
        if reason == "missing_field":
            options: tuple[Any, ...] = (_ABSENT, None, "", "   ")
            flat[field] = options[int(rnd() * len(options))]
        elif reason == "invalid_type":
            original = str(flat[field])
            options = ({"Value": original}, [original], True, False)
            flat[field] = options[int(rnd() * len(options))]
        elif reason == "invalid_timestamp":
            day = self._day(ms // DAY_MS)
            options = (
                f"{day[:8]}32T10:00:00Z",  # day 32
                f"{day[:5]}13-{day[8:]}T10:00:00Z",  # month 13
                f"{day}T25:00:00Z",  # hour 25
                BAD_WORD_TIMESTAMPS[int(rnd() * len(BAD_WORD_TIMESTAMPS))],
            )
            flat["Signal.Timestamp"] = options[int(rnd() * len(options))]
        else:
            flat["Signal.View.Uri"] = BAD_URIS[int(rnd() * len(BAD_URIS))]
        return self._render(flat, False), ms

    # -- the stream ------------------------------------------------------------------------

    def _remember(self, item: tuple[Any, int]) -> None:
        if len(self.ring) < RING_SIZE:
            self.ring.append(item)
        else:
            self.ring[self.ring_pos] = item
            self.ring_pos = (self.ring_pos + 1) % RING_SIZE
        if len(self.reservoir) < RESERVOIR_SIZE:
            self.reservoir.append(item)
        else:
            slot = int(self.rng.random() * self.valid_unique)
            if slot < RESERVOIR_SIZE:
                self.reservoir[slot] = item

    def record(self, index: int, file_index: int) -> tuple[Any, int]:
        """The record at global position ``index`` (in file ``file_index``) and a clock in ms."""
        rnd = self.rng.random
        roll = rnd()
        if roll < self.invalid_ratio:
            return self._invalid(index)
        if roll < self.dup_cut and self.ring:
            pool = self.ring if rnd() < 0.5 else self.reservoir
            payload, origin_file = pool[int(rnd() * len(pool))]
            self.duplicates += 1
            if origin_file != file_index:
                self.duplicates_cross_file += 1
            clock = self.start_ms + (index * self.span_ms) // max(self.events, 1)
            return payload, clock
        flat, ms = self._event(index)
        payload = self._render(flat, True)
        self.valid_unique += 1
        day = ms // DAY_MS
        self.per_day[day] = self.per_day.get(day, 0) + 1
        self._remember((payload, file_index))
        return payload, ms

    def records(self, lo: int, hi: int, file_index: int) -> Iterator[tuple[Any, int]]:
        for index in range(lo, hi):
            yield self.record(index, file_index)

    def per_date(self) -> dict[str, int]:
        return {self._day(day): self.per_day[day] for day in sorted(self.per_day)}


# -- writers ---------------------------------------------------------------------------------


def _open_compressed(raw: BinaryIO, use_gzip: bool) -> BinaryIO:
    if not use_gzip:
        return raw
    # mtime=0 and no file name in the header keep gzip output byte-identical across runs.
    return gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)


def _write_jsonl(out: BinaryIO, rows: Iterator[tuple[Any, int]]) -> None:
    buf: list[bytes] = []
    for payload, _ in rows:
        buf.append(payload)
        if len(buf) >= FLUSH_EVERY:
            out.write(b"\n".join(buf) + b"\n")
            buf.clear()
    if buf:
        out.write(b"\n".join(buf) + b"\n")


def _write_csv(out: BinaryIO, rows: Iterator[tuple[Any, int]]) -> None:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text, lineterminator="\r\n")  # RFC 4180 line ends and quoting
    writer.writerow(COLUMNS)
    chunk: list[list[str]] = []
    for payload, _ in rows:
        chunk.append(payload)
        if len(chunk) >= FLUSH_EVERY:
            writer.writerows(chunk)
            chunk.clear()
    writer.writerows(chunk)
    text.flush()
    text.detach()


def _write_avro_nested(out: BinaryIO, rows: Iterator[tuple[Any, int]]) -> None:
    import fastavro

    schema = fastavro.parse_schema(NESTED_AVRO_SCHEMA)
    records = (payload for payload, _ in rows)
    fastavro.writer(out, schema, records, codec="null", sync_marker=AVRO_SYNC_MARKER)


def _write_avro_capture(out: BinaryIO, rows: Iterator[tuple[Any, int]]) -> None:
    import fastavro

    schema = fastavro.parse_schema(CAPTURE_AVRO_SCHEMA)

    def envelopes() -> Iterator[dict[str, Any]]:
        offset = 0
        for sequence, (body, clock_ms) in enumerate(rows):
            enqueued_ms = clock_ms + 1500
            yield {
                "SequenceNumber": sequence,
                "Offset": str(offset),
                "EnqueuedTimeUtc": capture_time(enqueued_ms),
                "SystemProperties": {
                    "x-opt-sequence-number": sequence,
                    "x-opt-offset": str(offset),
                    "x-opt-enqueued-time": enqueued_ms,
                },
                "Properties": {"Source": "web"},
                "Body": body,
            }
            offset += len(body) + 64

    fastavro.writer(out, schema, envelopes(), codec="null", sync_marker=AVRO_SYNC_MARKER)


WRITERS: dict[str, Callable[[BinaryIO, Iterator[tuple[Any, int]]], None]] = {
    "jsonl": _write_jsonl,
    "csv": _write_csv,
    "avro-nested": _write_avro_nested,
    "avro-capture": _write_avro_capture,
}


def generate(
    out_dir: str | Path,
    events: int,
    files: int,
    *,
    invalid_ratio: float = 0.03,
    duplicate_ratio: float = 0.01,
    days: int = 30,
    start: str | date = "2024-05-01",
    seed: int = 7,
    fmt: str = "jsonl",
    gzip: bool = False,
) -> dict[str, Any]:
    """Write ``files`` files with ``events`` records in total into ``out_dir``; return the counts.

    ``fmt`` is one of :data:`FORMATS`; ``gzip`` compresses JSON lines and CSV files
    (``.jsonl.gz``, ``.csv.gz``). The returned dict is also written to ``out_dir/_expected.json``.
    Earlier ``events-*`` files and ``_expected.json`` in ``out_dir`` are replaced.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if gzip and fmt.startswith("avro"):
        raise ValueError("--gzip applies to jsonl and csv; Avro files are not gzipped")
    if events < 0 or files < 1 or days < 1:
        raise ValueError("events must be >= 0, files >= 1 and days >= 1")
    if not (0 <= invalid_ratio and 0 <= duplicate_ratio and invalid_ratio + duplicate_ratio <= 1):
        raise ValueError("ratios must be >= 0 and add up to at most 1")
    start_day = start if isinstance(start, date) else date.fromisoformat(start)
    start_ms = (start_day - date(1970, 1, 1)).days * DAY_MS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("events-[0-9]*"), out / "_expected.json"]:
        if stale.is_file():
            stale.unlink()

    source = _Source(
        events=events,
        invalid_ratio=invalid_ratio,
        duplicate_ratio=duplicate_ratio,
        days=days,
        start_ms=start_ms,
        seed=seed,
        fmt=fmt,
    )
    suffix = EXTENSIONS[fmt] + (".gz" if gzip else "")
    names: list[str] = []
    for file_index in range(files):
        lo = file_index * events // files
        hi = (file_index + 1) * events // files
        name = f"events-{file_index:03d}{suffix}"
        names.append(name)
        with open(out / name, "wb") as raw:
            stream = _open_compressed(raw, gzip)
            WRITERS[fmt](stream, source.records(lo, hi, file_index))
            if stream is not raw:
                stream.close()

    invalid = dict(source.invalid)
    summary: dict[str, Any] = {
        "generator": "benchmarks/generate.py",
        "params": {
            "events": events,
            "files": files,
            "invalid_ratio": invalid_ratio,
            "duplicate_ratio": duplicate_ratio,
            "days": days,
            "start": start_day.isoformat(),
            "seed": seed,
            "format": fmt,
            "gzip": gzip,
        },
        "files": names,
        "events_total": events,
        "invalid": invalid,
        "invalid_total": sum(invalid.values()),
        "duplicates": source.duplicates,
        "duplicates_cross_file": source.duplicates_cross_file,
        "valid_unique": source.valid_unique,
        "valid_unique_per_date": source.per_date(),
        # The same numbers under the names sample_data/expected.json uses.
        "records_read": events,
        "activities_written": source.valid_unique,
        "duplicates_dropped": source.duplicates,
        "rejected": invalid,
    }
    (out / "_expected.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, required=True, help="records in total")
    parser.add_argument("--files", type=int, required=True, help="number of files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--invalid-ratio", type=float, default=0.03)
    parser.add_argument("--duplicate-ratio", type=float, default=0.01)
    parser.add_argument("--days", type=int, default=30, help="UTC days the events spread over")
    parser.add_argument("--start", default="2024-05-01", help="first UTC day (YYYY-MM-DD)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="jsonl")
    parser.add_argument("--gzip", action="store_true", help="gzip JSON lines / CSV files")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        summary = generate(
            args.out,
            args.events,
            args.files,
            invalid_ratio=args.invalid_ratio,
            duplicate_ratio=args.duplicate_ratio,
            days=args.days,
            start=args.start,
            seed=args.seed,
            fmt=args.fmt,
            gzip=args.gzip,
        )
    except ValueError as exc:
        parser.error(str(exc))
    report = {
        "out": str(args.out),
        "seconds": round(time.perf_counter() - began, 3),
        **{k: summary[k] for k in ("events_total", "valid_unique", "duplicates", "invalid")},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
