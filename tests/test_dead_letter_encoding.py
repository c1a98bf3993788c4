"""Dead letters are strict JSON in valid UTF-8 that DuckDB, jq and Python load, with the exact
bytes of a record that was not valid UTF-8 kept in ``payload_base64`` (issue #8).

Inputs hold invalid UTF-8 (stray bytes, a truncated sequence, an encoded surrogate), an escaped
lone surrogate in JSON text, raw and escaped control characters, U+2028, valid non-ASCII text, a
CSV row with an invalid byte and an Avro record with a NaN float. The real CLI exports them; the
published ``_deadletter/<run>.jsonl.gz`` is read back byte by byte.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import shutil
import subprocess

import duckdb
import fastavro
import pytest

from conftest import event, read_activities, run_cli, signal_avro_schema

RUN = ("--run-time", "2026-01-01T00:00:00Z", "--run-id", "r1")


def _line(**signal_overrides) -> bytes:
    return json.dumps(event("x", **signal_overrides)).encode("utf-8")


# (line bytes, reason, whether the bytes are valid UTF-8)
JSONL = [
    (b'{"Signal": {"Export": {"Id": "bad\xff\xfe"}}}', "malformed", False),
    (b'{"Signal": {"Export": {"Id": "caf\xc3"}, "Timestamp": "2024-05-01T10:00:00Z"}}', "malformed", False),
    (b'{"Signal": {"Export": {"Id": "cesu \xed\xa0\x80"}}}', "malformed", False),  # an encoded surrogate
    (b"\xff not json at all \x80", "malformed", False),
    (
        b'{"Signal": {"Export": {"Id": "\\ud800"}, "User": {"Id": "u"}, "Timestamp": "2024-05-01T10:00:00Z", '
        b'"View": {"Uri": "https://a.b"}, "Action": {"Name": "x"}}}',
        "malformed",
        True,
    ),  # escaped lone surrogate
    (b'{"Signal": {"Export": {"Id": "raw\x01control\x00"}}}', "malformed", True),  # raw controls: bad JSON
    (_line(uri="https://contoso.com/\u0007bell"), "invalid_uri", True),  # escaped control, named in detail
    (_line(uri="https://contoso.com/p\u2028q"), "invalid_uri", True),
    (
        json.dumps(event("caf\u00e9 \U0001f600", user=None), ensure_ascii=False).encode("utf-8"),
        "missing_field",
        True,
    ),
    (_line(ts="2024-05-01T10:00:00\u0080"), "invalid_timestamp", True),  # a C1 control, named in detail
]
GOOD = json.dumps(event("ok1")).encode("utf-8")
CSV_HEADER = b"Signal.Export.Id,Signal.User.Id,Signal.Timestamp,Signal.View.Uri,Signal.Action.Name"
CSV_BAD_ROW = b"c1,u\xe9\xff,2024-05-01T10:00:00Z,https://contoso.com/c,Click"


def _avro_schema() -> dict:
    """The event schema plus a top-level double (NaN and infinities must not break the JSON)."""
    schema = signal_avro_schema(with_name=False)
    return dict(schema, fields=[*schema["fields"], {"name": "Score", "type": "double"}])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export the inputs once; returns (data-source folder, dead-letter file bytes, input folder)."""
    root = tmp_path_factory.mktemp("dl")
    folder = root / "in"
    folder.mkdir()
    (folder / "events.jsonl").write_bytes(b"\n".join([GOOD] + [raw for raw, _, _ in JSONL]) + b"\n")
    (folder / "events.csv").write_bytes(CSV_HEADER + b"\n" + CSV_BAD_ROW + b"\n")
    with open(folder / "events.avro", "wb") as f:
        fastavro.writer(
            f,
            fastavro.parse_schema(_avro_schema()),
            [
                dict(event("a1", uri="/relative"), Score=float("nan")),
                dict(event("a2", uri="/relative"), Score=float("-inf")),
            ],
        )
    proc = run_cli("export", "--input", str(folder), "--output", str(root / "lake"), *RUN)
    assert proc.returncode == 0, proc.stderr
    ds = root / "lake" / "EngagementInsights"
    return ds, (ds / "_deadletter" / "r1.jsonl.gz").read_bytes(), folder


def _lines(blob: bytes) -> list[bytes]:
    return gzip.decompress(blob).splitlines()


def _surrogates(value) -> list[str]:
    """Every string (key or value) in a decoded JSON value that holds a lone surrogate."""
    if isinstance(value, str):
        return [value] if any("\ud800" <= ch <= "\udfff" for ch in value) else []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _surrogates(k) + _surrogates(v)]
    if isinstance(value, list):
        return [s for v in value for s in _surrogates(v)]
    return []


def test_every_line_is_strict_json_in_valid_utf8(exported):
    ds, blob, _ = exported
    lines = _lines(blob)
    assert len(lines) == len(JSONL) + 1 + 2  # the JSON lines, the CSV row, both Avro records
    strict = json.JSONDecoder(parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    for raw in lines:
        text = raw.decode("utf-8")  # strict: raises on invalid UTF-8
        record = strict.decode(text)
        assert _surrogates(record) == [], text
        assert {"reason", "detail", "source", "position", "payload", "run_id"} <= set(record)
        assert set(record) - {"reason", "detail", "source", "position", "payload", "run_id"} <= {
            "payload_base64"
        }
    assert [r["ActivityId"] for r in read_activities(ds).to_pylist()] == ["ok1"]


def test_duckdb_loads_the_published_file(exported):
    ds, blob, _ = exported
    path = ds / "_deadletter" / "r1.jsonl.gz"
    con = duckdb.connect()
    try:
        rows = con.sql(f"select reason, position, payload_base64 from read_json_auto('{path}')").fetchall()
        jsonl_reasons = con.sql(
            f"select position, reason from read_json_auto('{path}') "
            "where source like '%.jsonl' order by position"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == len(_lines(blob))
    assert sum(1 for _, _, b64 in rows if b64 is not None) == sum(not ok for _, _, ok in JSONL) + 1
    assert jsonl_reasons == [(k + 2, reason) for k, (_, reason, _) in enumerate(JSONL)]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_jq_loads_every_line(exported):
    _, blob, _ = exported
    proc = subprocess.run(
        ["jq", "-c", "[.reason, .position]"], input=gzip.decompress(blob), capture_output=True, check=True
    )
    assert len(proc.stdout.splitlines()) == len(_lines(blob))


def test_invalid_utf8_keeps_its_exact_bytes_in_payload_base64(exported):
    """payload: the line decoded with U+FFFD; payload_base64: exactly the line's bytes. Valid
    UTF-8 lines (also with an escaped surrogate or controls) keep their text and get no base64."""
    ds, blob, folder = exported
    by_position = {}
    for raw in _lines(blob):
        record = json.loads(raw)
        if record["source"].endswith(".jsonl"):
            by_position[record["position"]] = record
    original = (folder / "events.jsonl").read_bytes().split(b"\n")
    for k, (line, reason, valid) in enumerate(JSONL):
        record = by_position[k + 2]
        assert original[k + 1] == line
        assert record["reason"] == reason and record["run_id"] == "r1"
        assert record["payload"] == line.decode("utf-8", errors="replace")
        if valid:
            assert "payload_base64" not in record, record
        else:
            assert "\ufffd" in record["payload"]
            assert base64.b64decode(record["payload_base64"], validate=True) == line


def test_csv_and_avro_dead_letters(exported):
    """A CSV row with an invalid byte: the cells with U+FFFD, payload_base64 the row's bytes. An
    Avro NaN/Infinity is written as a string, never as a bare NaN literal."""
    _, blob, _ = exported
    records = [json.loads(raw) for raw in _lines(blob)]
    (row,) = [r for r in records if r["source"].endswith(".csv")]
    assert row["reason"] == "malformed" and row["position"] == 1
    assert row["payload"]["Signal.User.Id"] == "u\ufffd\ufffd"
    assert base64.b64decode(row["payload_base64"]) == CSV_BAD_ROW
    cells = next(csv.reader(io.StringIO(base64.b64decode(row["payload_base64"]).decode("utf-8", "replace"))))
    assert dict(zip(CSV_HEADER.decode().split(","), cells, strict=True)) == row["payload"]
    avro = sorted((r for r in records if r["source"].endswith(".avro")), key=lambda r: r["position"])
    assert [(r["reason"], r["payload"]["Score"]) for r in avro] == [
        ("invalid_uri", "NaN"),
        ("invalid_uri", "-Infinity"),
    ]
    assert all("payload_base64" not in r for r in avro)
