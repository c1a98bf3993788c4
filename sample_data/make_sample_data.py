"""Regenerate the sample export in ``sample_data/exports/`` and its expected outcome.

Deterministic: a fixed seed, fixed dates and no wall clock, so running it again rewrites the same
bytes. Every record is built together with the outcome it must have (valid, duplicate or one
rejection reason), and the counts in ``expected.json`` and ``README.md`` are tallied from those
labels. As a cross-check the script then reads the written files back and classifies every
record with a small independent implementation of the counting rules; the two must agree.

    python sample_data/make_sample_data.py            # rewrite the files
    python sample_data/make_sample_data.py --check    # only verify the committed files match

Counting rules: every non-blank line / row / Avro record is one record read. A record is a
duplicate when it is valid and its ``Signal.Export.Id`` already appeared in an earlier valid
record (files in sorted path order, then by position); rejected records are never duplicates.
With several problems the reason is the first of malformed, missing_field, invalid_type,
invalid_timestamp, invalid_uri. Integer ids are valid (as decimal strings), an integer
timestamp is epoch milliseconds, and a missing ``Signal.Name`` is fine.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import io
import json
import random
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fastavro

from insights_link.core.contract import REASONS

HERE = Path(__file__).resolve().parent
EXPORTS = HERE / "exports"
SEED = 20240501

REQUIRED: tuple[str, ...] = (
    "Signal.Export.Id",
    "Signal.User.Id",
    "Signal.Timestamp",
    "Signal.View.Uri",
    "Signal.Action.Name",
)
LEAF_FIELDS = frozenset((*REQUIRED, "Signal.Name", "Signal.Session.Id", "Signal.View.Title"))
CSV_COLUMNS: tuple[str, ...] = (
    *REQUIRED,
    "Signal.Name",
    "Signal.Session.Id",
    "Signal.Device.Type",
    "Signal.Device.Browser",
    "Signal.View.Title",
)

VALID = "valid"
DUPLICATE = "duplicate"
ABSENT: Any = object()  # marks a key to leave out of a record
BLANK_LINE = b""

# Refined event name, the action behind it, a path on the shop and a page title.
KINDS: tuple[tuple[str, str, str, str], ...] = (
    (
        "EmailPromoClick",
        "click",
        "/deals/spring?utm_source=email&utm_campaign=spring_sale",
        "Spring sale – up to 40% off",
    ),
    ("ProductView", "view", "/products/trail-jacket-blue", 'Men\'s "Trail" Jacket, blue'),
    ("ProductView", "view", "/products/caf%C3%A9-cr%C3%A8me-mug", "Café crème mug"),
    ("AddToCart", "add_to_cart", "/cart?add=sku-40017&qty=1", "Your cart"),
    ("SearchSubmit", "search", "/search?q=rain+boots&sort=price,asc", "Search: rain boots"),
    ("PageView", "view", "/", "Contoso Outdoor – home"),
    ("CheckoutStart", "submit", "/checkout/start", "Checkout"),
)
SITE = "https://www.contoso-outdoor.example"
DEVICES: tuple[tuple[str, str], ...] = (
    ("desktop", "Chrome"),
    ("desktop", "Edge"),
    ("mobile", "Safari"),
    ("mobile", "Chrome"),
    ("tablet", "Safari"),
)

NESTED_SCHEMA: dict[str, Any] = {
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
                            "fields": [
                                {
                                    "name": "Id",
                                    "type": [
                                        "null",
                                        "string",
                                        "boolean",
                                        "long",
                                        {"type": "array", "items": "string"},
                                        {"type": "map", "values": "string"},
                                    ],
                                }
                            ],
                        },
                    },
                    {
                        "name": "User",
                        "type": {
                            "type": "record",
                            "name": "User",
                            "fields": [
                                {
                                    "name": "Id",
                                    "type": [
                                        "null",
                                        "string",
                                        "boolean",
                                        "long",
                                        {"type": "array", "items": "string"},
                                        {"type": "map", "values": "string"},
                                    ],
                                }
                            ],
                        },
                    },
                    {"name": "Timestamp", "type": ["null", "string", "boolean", "long"]},
                    {
                        "name": "View",
                        "type": {
                            "type": "record",
                            "name": "View",
                            "fields": [
                                {
                                    "name": "Uri",
                                    "type": ["null", "string", {"type": "map", "values": "string"}],
                                },
                                {"name": "Title", "type": ["null", "string"], "default": None},
                            ],
                        },
                    },
                    {
                        "name": "Action",
                        "type": {
                            "type": "record",
                            "name": "Action",
                            "fields": [
                                {
                                    "name": "Name",
                                    "type": [
                                        "null",
                                        "string",
                                        "boolean",
                                        {"type": "map", "values": "string"},
                                    ],
                                }
                            ],
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
                            ],
                        },
                    },
                ],
            },
        }
    ],
}

CAPTURE_SCHEMA: dict[str, Any] = {
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
AVRO_SYNC_MARKER = b"insights-link-sd"


@dataclass
class Item:
    """One record to write, the outcome it must have and, when valid, its UTC date."""

    payload: Any  # nested or flat dict, raw bytes/str (malformed), or BLANK_LINE
    label: str  # VALID, DUPLICATE or a reason
    utc_date: str | None = None
    note: str = ""


# ---------------------------------------------------------------------------------------------
# Building events


class Builder:
    """Makes realistic events from one seeded rng, remembering each one's UTC date."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = 0

    def export_id(self) -> str:
        self.ids += 1
        head, tail = self.rng.getrandbits(32), self.rng.getrandbits(48)
        return f"{head:08x}-{self.ids:04d}-4e1a-9c2b-{tail:012x}"

    def event(
        self,
        when: datetime,
        *,
        form: str = "ms",
        kind: int | None = None,
        user: str | int | None = None,
        export_id: str | int | None = None,
        with_name: bool = True,
        with_title: bool = False,
    ) -> tuple[dict[str, Any], str]:
        """A valid nested event at UTC instant ``when`` and its UTC date.

        ``form``: ``ms`` (…T10:00:00.123Z), ``s`` (…T10:00:00Z), ``offset`` (+02:00 local time)
        or ``epoch`` (integer epoch milliseconds).
        """
        rng = self.rng
        name, action, path, title = KINDS[rng.randrange(len(KINDS)) if kind is None else kind]
        device, browser = DEVICES[rng.randrange(len(DEVICES))]
        if form == "epoch":
            ts: str | int = int((when - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000)
        elif form == "offset":
            local = when + timedelta(hours=2)
            ts = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}+02:00"
        elif form == "s":
            ts = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            ts = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
        signal: dict[str, Any] = {
            "Export": {"Id": self.export_id() if export_id is None else export_id},
            "User": {"Id": user if user is not None else f"cust-{rng.randrange(1, 40):05d}"},
            "Timestamp": ts,
            "View": {"Uri": SITE + path},
            "Action": {"Name": action},
            "Name": name,
            "Session": {"Id": f"sess-{rng.getrandbits(40):010x}"},
            "Device": {"Type": device, "Browser": browser},
        }
        if with_title:
            signal["View"]["Title"] = title
        if not with_name:
            del signal["Name"]
        return {"Signal": signal}, when.date().isoformat()

    def day_times(self, day: date, count: int) -> Iterator[datetime]:
        """``count`` increasing instants spread over the UTC day ``day``."""
        start = datetime(day.year, day.month, day.day, 6, 0, tzinfo=UTC)
        step = timedelta(hours=17) / max(count, 1)
        for i in range(count):
            yield start + step * i + timedelta(milliseconds=self.rng.randrange(0, 60_000))


def copy_of(item: Item, note: str) -> Item:
    """A re-delivery of ``item``, which must be a valid event."""
    assert item.label == VALID, item
    return Item(item.payload, DUPLICATE, note=note)


def set_path(event: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of the nested ``event`` with ``dotted`` set to ``value`` (ABSENT deletes it)."""
    out = copy.deepcopy(event)
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    if value is ABSENT:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return out


def flatten(event: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested -> flat: ``{"Signal": {"Export": {"Id": 1}}}`` -> ``{"Signal.Export.Id": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in event.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in LEAF_FIELDS:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# The five files


def day1_jsonl(b: Builder) -> list[Item]:
    """web-events-2024-05-01.jsonl: 2024-05-01 events, nested and flat, one blank line."""
    items: list[Item] = []
    times = list(b.day_times(date(2024, 5, 1), 36))
    for i, when in enumerate(times[:30]):
        form = {3: "offset", 7: "epoch", 11: "s", 19: "offset"}.get(i, "ms")
        event, day = b.event(
            when,
            form=form,
            user=4711 if i == 5 else None,  # an integer customer id: valid
            export_id=880021 if i == 9 else None,  # an integer export id: valid
            with_name=i != 13,  # no Signal.Name: valid
            with_title=i % 4 == 0,
        )
        if i in (21, 22, 23):  # flat dotted-key form
            items.append(Item(flatten(event), VALID, day, "flat dotted keys"))
        else:
            items.append(Item(event, VALID, day))
        if i == 15:
            items.append(Item(BLANK_LINE, "blank"))
    # re-deliveries inside the same file
    items.insert(12, copy_of(items[4], "re-delivered in the same file"))
    items.append(copy_of(items[20], "re-delivered in the same file"))

    base, _ = b.event(times[30])
    text = dumps(base)
    items += [
        Item(text[: len(text) // 2], "malformed", note="line cut short"),
        Item(dumps([base]), "malformed", note="a JSON array, not an object"),
        Item(set_path(base, "Signal.User", ABSENT), "missing_field", note="no User"),
        Item(
            flatten(set_path(b.event(times[31])[0], "Signal.Action.Name", "  ")),
            "missing_field",
            note="flat form, blank Action.Name",
        ),
        Item(
            set_path(b.event(times[32])[0], "Signal.Action.Name", True),
            "invalid_type",
            note="Action.Name is a boolean",
        ),
        Item(
            set_path(b.event(times[33])[0], "Signal.Timestamp", "2024-04-31T10:00:00Z"),
            "invalid_timestamp",
            note="April 31st",
        ),
        Item(
            set_path(b.event(times[34])[0], "Signal.View.Uri", "javascript:alert(1)"),
            "invalid_uri",
            note="javascript: URL",
        ),
    ]
    return items


def day2_jsonl_gz(b: Builder, earlier: list[Item]) -> list[Item]:
    """web-events-2024-05-02.jsonl.gz: 2024-05-02 events, re-deliveries of 05-01 events."""
    items: list[Item] = []
    times = list(b.day_times(date(2024, 5, 2), 28))
    for i, when in enumerate(times[:20]):
        form = {2: "offset", 6: "epoch", 10: "s"}.get(i, "ms")
        event, day = b.event(when, form=form, with_title=i % 5 == 1)
        items.append(Item(event, VALID, day))
    # Around midnight: the offset decides the UTC date.
    late, day = b.event(datetime(2024, 5, 2, 23, 15, 0, 250_000, tzinfo=UTC), form="offset")
    items.append(Item(late, VALID, day, "local 2024-05-03 01:15+02:00 is UTC 2024-05-02"))
    early, day = b.event(datetime(2024, 5, 1, 22, 30, tzinfo=UTC), form="offset")
    items.append(Item(early, VALID, day, "local 2024-05-02 00:30+02:00 is UTC 2024-05-01"))
    # re-deliveries of the previous file's events (nested and flat) and one of this file's
    firsts = [it for it in earlier if it.label == VALID]
    items.insert(3, copy_of(firsts[1], "re-delivered from 05-01 file"))
    items.insert(9, copy_of(firsts[22], "flat, re-delivered from 05-01"))
    items.append(copy_of(items[7], "re-delivered in the same file"))

    bad = b.event(times[20])[0]
    items += [
        Item(
            dumps(bad).encode("utf-8").replace(b"Device", b"Dev\xff\xfeice", 1),
            "malformed",
            note="invalid UTF-8",
        ),
        Item(
            set_path(b.event(times[21])[0], "Signal.Timestamp", None),
            "missing_field",
            note="Timestamp null",
        ),
        Item(
            set_path(
                set_path(b.event(times[22])[0], "Signal.User.Id", ""),
                "Signal.View.Uri",
                "/relative/path",
            ),
            "missing_field",
            note="blank User.Id and a relative URI: missing_field wins",
        ),
        Item(
            set_path(b.event(times[23])[0], "Signal.Export.Id", {"Value": "e-1"}),
            "invalid_type",
            note="Export.Id is an object",
        ),
        Item(
            set_path(b.event(times[24])[0], "Signal.Timestamp", "yesterday"),
            "invalid_timestamp",
            note="free text",
        ),
        Item(
            set_path(b.event(times[25])[0], "Signal.View.Uri", "/relative/path"),
            "invalid_uri",
            note="relative path",
        ),
    ]
    return items


def csv_file(b: Builder, earlier: list[Item]) -> list[Item]:
    """web-events.csv: 2024-05-03 events as dotted-header CSV with RFC 4180 quoting."""
    items: list[Item] = []
    times = list(b.day_times(date(2024, 5, 3), 30))
    for i, when in enumerate(times[:22]):
        form = "s" if i % 6 == 2 else ("offset" if i % 6 == 4 else "ms")
        event, day = b.event(when, form=form, kind=i % len(KINDS), with_title=True, with_name=i != 8)
        if i == 5:
            event = set_path(event, "Signal.View.Title", "Multi-line\ntitle, quoted")
        items.append(Item(flatten(event), VALID, day))
    day2 = [it for it in earlier if it.label == VALID and isinstance(it.payload, dict)]
    cross = flatten(day2[4].payload)
    assert not isinstance(cross["Signal.Timestamp"], int)
    items.insert(6, copy_of(Item(cross, VALID), "re-delivered from 05-02 file"))
    items.append(copy_of(items[10], "re-delivered in the same file"))

    def row(i: int, field: str, value: Any) -> dict[str, Any]:
        return flatten(set_path(b.event(times[i], with_title=True)[0], field, value))

    short = flatten(b.event(times[22], with_title=True)[0])
    items += [
        Item(row(23, "Signal.Export.Id", ""), "missing_field", note="empty Export.Id"),
        Item(row(24, "Signal.Action.Name", "   "), "missing_field", note="blank Action.Name"),
        Item(
            row(25, "Signal.Timestamp", "2024-02-30T10:00:00Z"),
            "invalid_timestamp",
            note="February 30th",
        ),
        Item(
            flatten(
                set_path(
                    set_path(b.event(times[26], with_title=True)[0], "Signal.Timestamp", "last week"),
                    "Signal.View.Uri",
                    "ftp://files.example.com/x",
                )
            ),
            "invalid_timestamp",
            note="free text timestamp and ftp URI: timestamp wins",
        ),
        Item(
            row(27, "Signal.View.Uri", "ftp://files.example.com/report.csv"),
            "invalid_uri",
            note="ftp URL",
        ),
        Item(
            {k: v for k, v in short.items() if k != "Signal.View.Title"},
            "malformed",
            note="a row one field short",
        ),
    ]
    return items


def nested_avro(b: Builder, earlier: list[Item]) -> list[Item]:
    """web-events-nested.avro: nested Avro records, late 05-01/05-02 arrivals and 05-03."""
    items: list[Item] = []
    whens = [*b.day_times(date(2024, 5, 1), 3), *b.day_times(date(2024, 5, 3), 16)]
    for i, when in enumerate(whens):
        form = "epoch" if i % 5 == 1 else ("offset" if i == 7 else "ms")
        event, day = b.event(
            when,
            form=form,
            user=90001 if i == 4 else None,
            with_title=i % 3 == 0,
            with_name=i != 11,
        )
        items.append(Item(event, VALID, day))
    day1 = [it for it in earlier if it.label == VALID and "Signal" in it.payload]
    items.insert(5, copy_of(day1[6], "re-delivered from 05-01 file"))
    items.append(copy_of(items[12], "re-delivered in the same file"))
    times = list(b.day_times(date(2024, 5, 3), 6))

    def ev(i: int, field: str, value: Any) -> dict[str, Any]:
        return set_path(b.event(times[i])[0], field, value)

    items += [
        Item(ev(0, "Signal.View.Uri", None), "missing_field", note="View.Uri null"),
        Item(
            ev(1, "Signal.User.Id", ["cust-1", "cust-2"]),
            "invalid_type",
            note="User.Id is an array",
        ),
        Item(ev(2, "Signal.Timestamp", True), "invalid_type", note="Timestamp is a boolean"),
        Item(
            set_path(ev(3, "Signal.Action.Name", {"Value": "click"}), "Signal.Timestamp", "never"),
            "invalid_type",
            note="Action.Name an object and a free-text timestamp: invalid_type wins",
        ),
        Item(ev(4, "Signal.Timestamp", "2024-13-01T00:00:00Z"), "invalid_timestamp", note="month 13"),
        Item(
            ev(5, "Signal.View.Uri", "mailto:someone@contoso-outdoor.example"),
            "invalid_uri",
            note="mailto: URL",
        ),
    ]
    return items


def capture_avro(b: Builder, later_day1: list[Item]) -> list[Item]:
    """eventhubs-capture.avro: Event Hubs Capture records whose Body is one JSON event."""
    items: list[Item] = []
    whens = [
        *b.day_times(date(2024, 5, 1), 6),
        *b.day_times(date(2024, 5, 2), 6),
        *b.day_times(date(2024, 5, 3), 6),
    ]
    for i, when in enumerate(whens):
        event, day = b.event(when, form="epoch" if i == 8 else "ms", with_title=i % 4 == 0)
        items.append(Item(flatten(event) if i == 14 else event, VALID, day))
    # Event Hubs delivers at least once: the same body twice.
    items.insert(4, copy_of(items[2], "re-delivered in the same file"))
    items.insert(11, copy_of(items[9], "re-delivered in the same file"))
    # This file sorts first, so the copy in the 05-01 file is the duplicate there.
    shared = later_day1[0]
    items.append(Item(shared.payload, VALID, shared.utc_date, "also in the 05-01 file"))
    shared.label, shared.utc_date, shared.note = DUPLICATE, None, "first seen in the capture file"

    times = list(b.day_times(date(2024, 5, 2), 7))
    items += [
        Item(b'{"Signal":{"Export":{"Id":"\xc3\x28"}}}', "malformed", note="Body not UTF-8"),
        Item(dumps(b.event(times[0])[0])[:-7], "malformed", note="Body is cut-short JSON"),
        Item('"keep-alive"', "malformed", note="Body is a JSON string"),
        Item(
            set_path(b.event(times[1])[0], "Signal.Export.Id", ""),
            "missing_field",
            note="empty Export.Id",
        ),
        Item(set_path(b.event(times[2])[0], "Signal.View", ABSENT), "missing_field", note="no View"),
        Item(
            set_path(b.event(times[3])[0], "Signal.View.Uri", {"href": SITE}),
            "invalid_type",
            note="View.Uri is an object",
        ),
        Item(
            set_path(b.event(times[4])[0], "Signal.Timestamp", "2024-05-02T25:00:00Z"),
            "invalid_timestamp",
            note="hour 25",
        ),
        Item(
            set_path(b.event(times[5])[0], "Signal.View.Uri", "ftp://x"),
            "invalid_uri",
            note="ftp URL",
        ),
        Item(
            set_path(b.event(times[6])[0], "Signal.View.Uri", "www.contoso-outdoor.example/x"),
            "invalid_uri",
            note="no scheme",
        ),
    ]
    return items


# ---------------------------------------------------------------------------------------------
# Writing


def as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return dumps(payload).encode("utf-8")


def write_jsonl(items: list[Item]) -> bytes:
    return b"".join(as_bytes(it.payload) + b"\n" for it in items)


def write_gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def write_csv(items: list[Item]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for it in items:
        flat = it.payload
        writer.writerow(
            [
                "" if flat.get(c) is None else str(flat[c])
                for c in CSV_COLUMNS
                if c in flat or it.label != "malformed"
            ]
        )
    return buf.getvalue().encode("utf-8")


def avro_nested(event: dict[str, Any]) -> dict[str, Any]:
    s = event["Signal"]
    return {
        "Signal": {
            "Export": {"Id": s["Export"]["Id"]},
            "User": {"Id": s["User"]["Id"]},
            "Timestamp": s["Timestamp"],
            "View": {"Uri": s["View"]["Uri"], "Title": s["View"].get("Title")},
            "Action": {"Name": s["Action"]["Name"]},
            "Name": s.get("Name"),
            "Session": {"Id": s["Session"]["Id"]},
            "Device": {"Type": s["Device"]["Type"], "Browser": s["Device"]["Browser"]},
        }
    }


def write_avro(schema: dict[str, Any], records: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, codec="null", sync_marker=AVRO_SYNC_MARKER)
    return buf.getvalue()


def capture_records(items: list[Item]) -> list[dict[str, Any]]:
    records = []
    offset = 0
    enqueued = datetime(2024, 5, 3, 23, 40, tzinfo=UTC)
    for seq, it in enumerate(items, start=1200):
        body = as_bytes(it.payload)
        enqueued += timedelta(seconds=7)
        ms = int(enqueued.timestamp() * 1000)
        hour = enqueued.hour % 12 or 12
        records.append(
            {
                "SequenceNumber": seq,
                "Offset": str(offset),
                "EnqueuedTimeUtc": f"{enqueued.month}/{enqueued.day}/{enqueued.year} "
                f"{hour}:{enqueued.minute:02d}:{enqueued.second:02d} "
                f"{'AM' if enqueued.hour < 12 else 'PM'}",
                "SystemProperties": {
                    "x-opt-sequence-number": seq,
                    "x-opt-offset": str(offset),
                    "x-opt-enqueued-time": ms,
                },
                "Properties": {"Source": "web-tag", "ContentType": "application/json"},
                "Body": body,
            }
        )
        offset += len(body) + 120
    return records


def build() -> dict[str, tuple[list[Item], bytes]]:
    """Every file's items (with labels) and bytes, keyed by file name."""
    b = Builder(SEED)
    day1 = day1_jsonl(b)
    day2 = day2_jsonl_gz(b, day1)
    rows = csv_file(b, day2)
    nested = nested_avro(b, day1)
    capture = capture_avro(b, [it for it in day1 if it.label == VALID and it.note == ""][-1:])
    return {
        "eventhubs-capture.avro": (capture, write_avro(CAPTURE_SCHEMA, capture_records(capture))),
        "web-events-2024-05-01.jsonl": (day1, write_jsonl(day1)),
        "web-events-2024-05-02.jsonl.gz": (day2, write_gzip(write_jsonl(day2))),
        "web-events-nested.avro": (
            nested,
            write_avro(NESTED_SCHEMA, [avro_nested(it.payload) for it in nested]),
        ),
        "web-events.csv": (rows, write_csv(rows)),
    }


# ---------------------------------------------------------------------------------------------
# Counting: by construction, and independently from the written bytes


def tally(files: dict[str, list[str]], dates: dict[str, list[str | None]]) -> dict[str, Any]:
    """Outcome counts from per-record labels (files already in sorted order)."""
    rejected = {reason: 0 for reason in REASONS}
    out: dict[str, Any] = {"records_read": 0, "activities_written": 0, "duplicates_dropped": 0}
    per_date: dict[str, int] = {}
    per_file: dict[str, dict[str, int]] = {}
    for name, labels in files.items():
        counts = {
            "records_read": 0,
            "activities_written": 0,
            "duplicates_dropped": 0,
            "rejected": 0,
        }
        for label, day in zip(labels, dates[name], strict=True):
            counts["records_read"] += 1
            if label == VALID:
                counts["activities_written"] += 1
                per_date[str(day)] = per_date.get(str(day), 0) + 1
            elif label == DUPLICATE:
                counts["duplicates_dropped"] += 1
            else:
                counts["rejected"] += 1
                rejected[label] += 1
        per_file[name] = counts
        for key in ("records_read", "activities_written", "duplicates_dropped"):
            out[key] += counts[key]
    out["rejected"] = rejected
    out["rejected_total"] = sum(rejected.values())
    out["activities_per_date"] = dict(sorted(per_date.items()))
    out["per_file"] = per_file
    return out


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})")


def classify(record: Any) -> tuple[str, str | None, str | None]:
    """(outcome, export id, UTC date) of one decoded record under the counting rules."""
    if not isinstance(record, dict):
        return "malformed", None, None
    values = []
    for name in REQUIRED:
        value: Any = record.get(name, ABSENT)
        if value is ABSENT:
            value = record
            for part in name.split("."):
                value = value.get(part, ABSENT) if isinstance(value, dict) else ABSENT
        values.append(value)
    if any(v is ABSENT or v is None or (isinstance(v, str) and not v.strip()) for v in values):
        return "missing_field", None, None
    if any(isinstance(v, (dict, list, bool)) for v in values):
        return "invalid_type", None, None
    export_id, _, ts, uri, _ = values
    if isinstance(ts, int):
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts)
    elif isinstance(ts, str) and _ISO.fullmatch(ts):
        try:
            moment = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            return "invalid_timestamp", None, None
    else:
        return "invalid_timestamp", None, None
    parts = urlsplit(str(uri))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "invalid_uri", None, None
    return VALID, str(export_id), moment.date().isoformat()


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_back(name: str, data: bytes) -> Iterator[Any]:
    """Decoded records of one written file, in order (None for undecodable ones)."""
    if name.endswith(".gz"):
        data = gzip.decompress(data)
        name = name[:-3]
    if name.endswith(".jsonl"):
        for line in data.split(b"\n"):
            if line.strip():
                yield decode_json(line.rstrip(b"\r"))
    elif name.endswith(".csv"):
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        header = next(reader)
        for row in reader:
            if len(row) != len(header):
                yield None
            else:
                yield {k: v for k, v in zip(header, row, strict=True) if v != ""}
    else:
        for record in fastavro.reader(io.BytesIO(data)):
            if "Body" in record and "Signal" not in record:
                yield decode_json(record["Body"])
            else:
                yield record


def independent_outcome(
    written: dict[str, bytes],
) -> tuple[dict[str, list[str]], dict[str, list[str | None]]]:
    """Labels and dates per file, recomputed from the bytes alone."""
    seen: set[str] = set()
    labels: dict[str, list[str]] = {}
    dates: dict[str, list[str | None]] = {}
    for name in sorted(written):
        labels[name], dates[name] = [], []
        for record in read_back(name, written[name]):
            outcome, export_id, day = classify(record)
            if outcome == VALID and export_id in seen:
                outcome, day = DUPLICATE, None
            elif outcome == VALID:
                seen.add(str(export_id))
            labels[name].append(outcome)
            dates[name].append(day)
    return labels, dates


# ---------------------------------------------------------------------------------------------
# README


def positioned(name: str, items: list[Item]) -> Iterator[tuple[int, Item]]:
    """Records with their position: the line number in JSON lines (blank lines count), else
    the 1-based record number (CSV data row, Avro record)."""
    position = 0
    for it in items:
        if it.label == "blank" and ".jsonl" not in name:
            continue
        position += 1
        if it.label != "blank":
            yield position, it


def rejections(built: dict[str, tuple[list[Item], bytes]]) -> list[dict[str, Any]]:
    """Every rejected record: file, position and reason."""
    return [
        {"file": name, "position": pos, "reason": it.label}
        for name, (items, _) in sorted(built.items())
        for pos, it in positioned(name, items)
        if it.label in REASONS
    ]


def readme(expected: dict[str, Any], built: dict[str, tuple[list[Item], bytes]]) -> str:
    rows = "\n".join(
        f"| `exports/{name}` | {c['records_read']} | {c['activities_written']} | "
        f"{c['duplicates_dropped']} | {c['rejected']} |"
        for name, c in expected["per_file"].items()
    )
    reasons = "\n".join(f"| `{r}` | {n} |" for r, n in expected["rejected"].items())
    dates = "\n".join(f"| {d} | {n} |" for d, n in expected["activities_per_date"].items())
    notes = []
    for name, (items, _) in built.items():
        unit = "line" if ".jsonl" in name else "record"
        special = [
            f"  - {unit} {pos}: {it.label}, {it.note}" for pos, it in positioned(name, items) if it.note
        ]
        notes.append(f"- `exports/{name}`\n" + "\n".join(special))
    return f"""# Sample data

A small, realistic export of refined engagement events in every input format the exporter
reads, with the outcome it must produce. Generated by `make_sample_data.py` (deterministic:
`python sample_data/make_sample_data.py` rewrites the same bytes, `--check` verifies them).

## Files

- `exports/web-events-2024-05-01.jsonl`: JSON lines, UTF-8, LF. Nested events of 2024-05-01,
  three in flat dotted-key form (`"Signal.Export.Id": ...`), one blank line (not a record), an
  integer `User.Id`, an integer `Export.Id`, an epoch-milliseconds timestamp, `+02:00` offsets
  and an event without `Signal.Name` (all valid).
- `exports/web-events-2024-05-02.jsonl.gz`: gzipped JSON lines of 2024-05-02, incl. one line
  that is not valid UTF-8, events just before/after UTC midnight written with `+02:00` offsets
  (their UTC date is what counts) and re-deliveries of 05-01 events.
- `exports/web-events.csv`: CSV with a header of dotted names, RFC 4180 quoting and CRLF line
  ends; 2024-05-03 events; titles with quotes, commas and one embedded line break; empty cells
  are absent values; one row is a field short (malformed).
- `exports/web-events-nested.avro`: uncompressed Avro records mirroring the nested form: a
  `Signal` record with `Export`, `User`, `View`, `Action`, `Session` and `Device` records.
  Unions let required fields be null, a boolean, an array or a map, so missing and wrongly
  typed values can be expressed. Late events of 2024-05-01 and events of 2024-05-03.
- `exports/eventhubs-capture.avro`: an Azure Event Hubs Capture file: `EventData` records
  (`SequenceNumber`, `Offset`, `EnqueuedTimeUtc`, `SystemProperties`, `Properties`, `Body`)
  whose `Body` is one JSON event in UTF-8; one body in flat form; bodies that are not UTF-8, cut
  short or not an object are malformed. At-least-once delivery: two bodies appear twice.
- `expected.json`: the outcome below, machine-readable, plus every rejected record's file,
  position (line number for JSON lines, else record number) and reason.

## Counting rules

Every non-blank line, CSV data row or Avro record is one record read. A record is a duplicate
when it is valid and its `Signal.Export.Id` already appeared in an earlier valid record (files in
sorted path order, then by position); rejected records are never duplicates. With several
problems the reason is the first of `malformed`, `missing_field`, `invalid_type`,
`invalid_timestamp`, `invalid_uri`. Integer ids are valid (as decimal strings); an integer
timestamp is epoch milliseconds; a missing `Signal.Name` is valid.

Sorted path order here is: `eventhubs-capture.avro`, `web-events-2024-05-01.jsonl`,
`web-events-2024-05-02.jsonl.gz`, `web-events-nested.avro`, `web-events.csv`. One event sits in
both the capture file and the 05-01 file, so it is the 05-01 copy that counts as the duplicate.

## Expected outcome (all of `exports/`)

- records read: **{expected["records_read"]}**
- activities written (valid, unique): **{expected["activities_written"]}**
- duplicates dropped: **{expected["duplicates_dropped"]}**
- rejected: **{expected["rejected_total"]}**

| reason | rejected |
| --- | --- |
{reasons}

| file | read | written | duplicates | rejected |
| --- | --- | --- | --- | --- |
{rows}

Activities per UTC date:

| date | activities |
| --- | --- |
{dates}

## What each special record is

{chr(10).join(notes)}
"""


def same_content(path: Path, data: bytes) -> bool:
    """Whether ``path`` holds ``data``; gzip files are compared decompressed (zlibs differ)."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()) == gzip.decompress(data)
    return path.read_bytes() == data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate sample_data/exports.")
    parser.add_argument(
        "--check", action="store_true", help="verify the committed files instead of writing them"
    )
    args = parser.parse_args(argv)

    built = build()
    labels = {
        name: [it.label for it in items if it.label != "blank"] for name, (items, _) in sorted(built.items())
    }
    dates = {
        name: [it.utc_date for it in items if it.label != "blank"]
        for name, (items, _) in sorted(built.items())
    }
    expected = tally(labels, dates)

    again_labels, again_dates = independent_outcome({n: data for n, (_, data) in built.items()})
    if (again_labels, again_dates) != (labels, dates):
        for name in labels:
            for pos, (want, got) in enumerate(zip(labels[name], again_labels[name], strict=True)):
                if want != got:
                    print(f"{name} record {pos + 1}: built as {want}, reads as {got}", file=sys.stderr)
        raise SystemExit("the written files do not read back as constructed")

    outputs: dict[Path, bytes] = {EXPORTS / name: data for name, (_, data) in built.items()}
    summary = {
        k: expected[k] for k in ("records_read", "activities_written", "duplicates_dropped", "rejected")
    }
    summary |= {k: expected[k] for k in ("rejected_total", "activities_per_date", "per_file")}
    summary["rejections"] = rejections(built)
    outputs[HERE / "expected.json"] = (json.dumps(summary, indent=2) + "\n").encode("utf-8")
    outputs[HERE / "README.md"] = readme(expected, built).encode("utf-8")

    if args.check:
        stale = [
            str(p.relative_to(HERE))
            for p, data in outputs.items()
            if not p.is_file() or not same_content(p, data)
        ]
        if stale:
            print("out of date: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("sample data is up to date")
        return 0
    EXPORTS.mkdir(parents=True, exist_ok=True)
    for path, data in outputs.items():
        path.write_bytes(data)
    print(
        json.dumps(
            {k: summary[k] for k in ("records_read", "activities_written", "duplicates_dropped", "rejected")}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
