"""End to end through the real CLI: every input format in, a CDM folder out, read back with the
CDM object model, pyarrow and DuckDB. Expectations come from the case table below."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdm_check import load_data_source
from conftest import (
    dead_letters,
    duckdb_rows,
    event,
    manifest_locations,
    parquet_files,
    read_activities,
    run_cli,
    run_reports,
    signal_avro_schema,
)

NOT_JSON = '{"Signal": {"Export": {"Id": "broken"'

# (file, record, expected outcome): outcome is "ok", "dup" or a reason code.
JSONL_A = [
    (event("e1"), "ok"),
    (event("e2", ts="2024-05-02T01:30:00+02:00"), "ok"),  # 2024-05-01 23:30 UTC
    (NOT_JSON, "malformed"),
    (event("e3", user=None), "missing_field"),
    (event("e4", action=["a", "b"]), "invalid_type"),
    (event("e5", ts="2024-04-31T10:00:00Z"), "invalid_timestamp"),
    (event("e6", uri="javascript:alert(1)"), "invalid_uri"),
    (event("e1"), "dup"),
    (
        {
            "Signal.Export.Id": 7,
            "Signal.User.Id": 99,
            "Signal.Timestamp": 1714640400000,
            "Signal.View.Uri": "http://fabrikam.com/x",
            "Signal.Action.Name": "Download",
        },
        "ok",
    ),
]
JSONL_B = [(event("e1"), "dup"), (event("e8", ts="2024-05-03T08:00:00Z", name=None), "ok")]
CSV_HEADER = [
    "Signal.Export.Id",
    "Signal.User.Id",
    "Signal.Timestamp",
    "Signal.View.Uri",
    "Signal.Action.Name",
    "Signal.Name",
]
CSV_ROWS = [
    (["e9", "u9", "2024-05-02T12:00:00Z", "https://contoso.com/c", "Click", "ProductView"], "ok"),
    (["e10", "u9", "2024-05-02T12:00:00Z", "https://contoso.com/c", "Add, then buy", ""], "ok"),
    (["e11", "u9", "", "https://contoso.com/c", "Click", "ProductView"], "missing_field"),
    (["e12", "u9", "2024-05-02T12:00:00Z", "https://contoso.com/c", "Click", "x", "extra"], "malformed"),
]
AVRO_NESTED = [(event("e13", ts="2024-05-03T09:00:00Z"), "ok"), (event("e14", uri="/rel"), "invalid_uri")]
CAPTURE = [
    (json.dumps(event("e15")).encode(), "ok"),
    (b"\xff\xfe not json", "malformed"),
    (json.dumps(event("e2", ts="2024-05-02T01:30:00+02:00")).encode(), "dup"),
]

ALL = JSONL_A + JSONL_B + CSV_ROWS + AVRO_NESTED + CAPTURE


def _signal_schema():
    return signal_avro_schema()


CAPTURE_SCHEMA = {
    "type": "record",
    "name": "EventData",
    "namespace": "Microsoft.ServiceBus.Messaging",
    "fields": [
        {"name": "SequenceNumber", "type": "long"},
        {"name": "Offset", "type": "string"},
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {"name": "Body", "type": ["null", "bytes"]},
    ],
}


@pytest.fixture
def exports(tmp_path):
    """One export folder with every supported format, BOM, CRLF and a blank line included."""
    folder = tmp_path / "exports"
    folder.mkdir()
    lines = [r if isinstance(r, str) else json.dumps(r) for r, _ in JSONL_A]
    lines.insert(3, "")  # a blank line is not a record
    (folder / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    (folder / "b.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(r) + "\n" for r, _ in JSONL_B).encode())
    )
    buf = io.StringIO()
    import csv

    w = csv.writer(buf)
    w.writerow(CSV_HEADER)
    for row, _ in CSV_ROWS:
        w.writerow(row)
    (folder / "c.csv").write_text(buf.getvalue())
    with open(folder / "d.avro", "wb") as f:
        recs = [dict(r, Signal=dict(r["Signal"], Name=r["Signal"].get("Name"))) for r, _ in AVRO_NESTED]
        fastavro.writer(f, fastavro.parse_schema(_signal_schema()), recs)
    with open(folder / "e.avro", "wb") as f:
        fastavro.writer(
            f,
            fastavro.parse_schema(CAPTURE_SCHEMA),
            [
                {
                    "SequenceNumber": i,
                    "Offset": str(i),
                    "EnqueuedTimeUtc": "5/1/2024 10:00:00 AM",
                    "Body": body,
                }
                for i, (body, _) in enumerate(CAPTURE)
            ],
        )
    (folder / "notes.txt").write_text("not an export: ignored when a folder is given")
    return folder


def _expected_ids():
    ids = set()
    for record, outcome in ALL:
        if outcome == "ok":
            if isinstance(record, list):
                ids.add(record[0])
            elif isinstance(record, bytes):
                ids.add(json.loads(record)["Signal"]["Export"]["Id"])
            else:
                ids.add(str(record.get("Signal.Export.Id") or record["Signal"]["Export"]["Id"]))
    return ids


def _export(exports, lake, *extra, run_id="run1"):
    return run_cli(
        "export",
        "--input",
        str(exports),
        "--output",
        str(lake),
        "--run-id",
        run_id,
        "--run-time",
        "2026-11-28T12:00:00Z",
        *extra,
    )


def test_export_every_format_to_a_loadable_cdm_folder(exports, lake):
    proc = _export(exports, lake)
    assert proc.returncode == 0, proc.stderr
    ds = lake / "EngagementInsights"
    outcomes = Counter(outcome for _, outcome in ALL)
    reasons = {k: v for k, v in outcomes.items() if k not in ("ok", "dup")}

    # The CDM object model loads it, resolves the key and finds every partition.
    loaded = load_data_source(str(ds))
    assert list(loaded) == ["WebLog"]
    assert loaded["WebLog"]["primary_key"] == "ActivityId"
    assert loaded["WebLog"]["attributes"] == [
        "ActivityId",
        "CustomerId",
        "ActivityTime",
        "EventActivity",
        "WebAddress",
        "Details",
        "ActivityType",
        "LastUpdated",
    ]
    assert sorted(loaded["WebLog"]["partitions"]) == manifest_locations(ds)

    # Exactly the manifest's files exist, one per date, the date in path and name.
    assert parquet_files(ds) == manifest_locations(ds)
    for loc in manifest_locations(ds):
        _, full, y, m, d, name = loc.split("/")
        assert full == "FullData" and f"_{y}{m}{d}_run1_" in name
        dates = pq.read_table(ds / loc)["ActivityTime"].cast(pa.date32()).unique().to_pylist()
        assert [x.isoformat() for x in dates] == [f"{y}-{m}-{d}"]

    rows = read_activities(ds)
    assert sorted(rows["ActivityId"].to_pylist()) == sorted(_expected_ids())
    assert rows.num_rows == len(set(rows["ActivityId"].to_pylist()))
    assert rows.schema.field("ActivityTime").type == pa.timestamp("us", tz="UTC")
    physical = pq.ParquetFile(ds / manifest_locations(ds)[0]).schema.column(2).physical_type
    assert physical == "INT64"
    by_id = {r["ActivityId"]: r for r in rows.to_pylist()}
    assert by_id["e2"]["ActivityTime"].isoformat() == "2024-05-01T23:30:00+00:00"
    assert by_id["e8"]["EventActivity"] == "WebLog"  # no Signal.Name: the activity name
    assert by_id["e1"]["EventActivity"] == "EmailPromoClick"
    assert by_id["7"]["CustomerId"] == "99"
    assert by_id["e10"]["Details"] == "Add, then buy"
    assert {r["ActivityType"] for r in by_id.values()} == {"WebLog"}
    assert {r["LastUpdated"].isoformat() for r in by_id.values()} == {"2026-11-28T12:00:00+00:00"}
    assert duckdb_rows(ds) == [
        (r["ActivityId"], r["CustomerId"], int(r["ActivityTime"].timestamp() * 1_000_000))
        for r in rows.to_pylist()
    ]

    # Dead letters: one per rejected record, with reason, source, position and payload.
    dead = dead_letters(ds)
    assert Counter(d["reason"] for d in dead) == Counter(reasons)
    assert all(set(d) == {"reason", "detail", "source", "position", "payload", "run_id"} for d in dead)
    broken = [d for d in dead if d["source"].endswith("a.jsonl") and d["reason"] == "malformed"]
    assert broken == [
        {
            "reason": "malformed",
            "detail": broken[0]["detail"],
            "source": str(exports / "a.jsonl"),
            "position": 3,
            "payload": NOT_JSON,
            "run_id": "run1",
        }
    ]
    csv_bad = [d for d in dead if d["source"].endswith("c.csv") and d["reason"] == "malformed"]
    assert csv_bad[0]["position"] == 4 and csv_bad[0]["payload"]["Signal.Export.Id"] == "e12"

    # The run report balances and says what happened to each input.
    (report,) = run_reports(ds)
    assert report["status"] == "committed"
    assert report["records_read"] == len(ALL)
    assert report["activities_written"] == outcomes["ok"]
    assert report["duplicates_dropped"] == outcomes["dup"]
    assert {k: v for k, v in report["rejected"].items() if v} == reasons
    assert report["records_read"] == (
        report["activities_written"] + report["duplicates_dropped"] + sum(report["rejected"].values())
    )
    assert sorted(i["source"].rsplit("/", 1)[1] for i in report["inputs"]) == [
        "a.jsonl",
        "b.jsonl.gz",
        "c.csv",
        "d.avro",
        "e.avro",
    ]
    assert {i["status"] for i in report["inputs"]} == {"processed"}

    # The human summary.
    assert f"records read:        {len(ALL)}" in proc.stdout
    assert "invalid_timestamp  1" in proc.stdout


def test_rerun_skips_committed_inputs_and_leaves_the_same_data(exports, lake):
    assert _export(exports, lake).returncode == 0
    ds = lake / "EngagementInsights"
    files, rows = parquet_files(ds), read_activities(ds)
    again = _export(exports, lake, run_id="run2")
    assert again.returncode == 0, again.stderr
    assert parquet_files(ds) == files
    assert read_activities(ds).equals(rows)
    second = [r for r in run_reports(ds) if r["run_id"] == "run2"][0]
    assert {i["status"] for i in second["inputs"]} == {"skipped"}
    assert {i["committed_by"] for i in second["inputs"]} == {"run1"}
    assert second["records_read"] == 0
    assert "inputs skipped" in again.stdout


def test_reprocess_counts_everything_as_duplicates(exports, lake):
    assert _export(exports, lake).returncode == 0
    ds = lake / "EngagementInsights"
    rows = read_activities(ds)
    again = _export(exports, lake, "--reprocess", run_id="run2")
    assert again.returncode == 0, again.stderr
    assert read_activities(ds).equals(rows)
    second = [r for r in run_reports(ds) if r["run_id"] == "run2"][0]
    assert second["activities_written"] == 0
    assert second["duplicates_dropped"] == rows.num_rows + Counter(o for _, o in ALL)["dup"]


def test_redelivered_events_in_a_later_file_are_counted_duplicates(tmp_path, lake):
    from conftest import write_jsonl

    first = write_jsonl(tmp_path / "in1" / "hour1.jsonl", [event("a"), event("b", ts="2024-05-02T00:00:00Z")])
    assert run_cli("export", "--input", str(first), "--output", str(lake), "--run-id", "r1").returncode == 0
    later = write_jsonl(tmp_path / "in2" / "hour2.jsonl", [event("b", ts="2024-05-02T00:00:00Z"), event("c")])
    proc = run_cli("export", "--input", str(later), "--output", str(lake), "--run-id", "r2")
    assert proc.returncode == 0, proc.stderr
    ds = lake / "EngagementInsights"
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b", "c"]
    r2 = [r for r in run_reports(ds) if r["run_id"] == "r2"][0]
    assert (r2["activities_written"], r2["duplicates_dropped"]) == (1, 1)


def test_winner_among_copies_is_deterministic(tmp_path, lake):
    """Two copies of one id with different content: the copy in the first file (sorted) wins."""
    from conftest import write_jsonl

    write_jsonl(tmp_path / "in" / "b.jsonl", [event("x", action="from b")])
    write_jsonl(tmp_path / "in" / "a.jsonl", [event("y"), event("x", action="from a")])
    proc = run_cli("export", "--input", str(tmp_path / "in"), "--output", str(lake), "--block-records", "1")
    assert proc.returncode == 0, proc.stderr
    rows = {r["ActivityId"]: r for r in read_activities(lake / "EngagementInsights").to_pylist()}
    assert rows["x"]["Details"] == "from a"


def test_extra_properties_become_string_columns(tmp_path, lake):
    from conftest import write_jsonl

    src = write_jsonl(tmp_path / "e.jsonl", [event("a", Session={"Id": "s1"}), event("b")])
    proc = run_cli("export", "--input", str(src), "--output", str(lake), "--property", "Signal.Session.Id")
    assert proc.returncode == 0, proc.stderr
    ds = lake / "EngagementInsights"
    rows = read_activities(ds)
    assert rows["SignalSessionId"].to_pylist() == ["s1", None]
    assert load_data_source(str(ds))["WebLog"]["attributes"][-1] == "SignalSessionId"
    # A later run with another column set is refused: Customer Insights rejects changed columns.
    src2 = write_jsonl(tmp_path / "f.jsonl", [event("c")])
    refused = run_cli("export", "--input", str(src2), "--output", str(lake))
    assert refused.returncode == 2 and "SignalSessionId" in refused.stderr


@pytest.mark.parametrize(
    "runner_args",
    [
        ("--direct_running_mode=multi_processing", "--direct_num_workers=2"),
        ("--runner=DirectRunner",),
        ("--runner=FnApiRunner", "--direct_running_mode=multi_threading", "--direct_num_workers=2"),
    ],
    ids=["multi_processing", "DirectRunner", "multi_threading"],
)
def test_other_runner_modes_write_the_same_data(exports, tmp_path, runner_args):
    one = tmp_path / "one"
    two = tmp_path / "two"
    assert _export(exports, one).returncode == 0
    proc = _export(exports, two, *runner_args)
    assert proc.returncode == 0, proc.stderr
    a, b = one / "EngagementInsights", two / "EngagementInsights"
    assert parquet_files(a) == parquet_files(b)
    assert read_activities(a).equals(read_activities(b))
    assert Counter(d["reason"] for d in dead_letters(a)) == Counter(d["reason"] for d in dead_letters(b))


def test_sample_data_matches_its_expected_outcome(lake):
    """The shipped sample export: counts match sample_data/expected.json (made by construction)."""
    from conftest import REPO

    expected = json.loads((REPO / "sample_data" / "expected.json").read_text())
    proc = run_cli("export", "--input", str(REPO / "sample_data" / "exports"), "--output", str(lake))
    assert proc.returncode == 0, proc.stderr
    ds = lake / "EngagementInsights"
    (report,) = run_reports(ds)
    for key in ("records_read", "activities_written", "duplicates_dropped", "rejected"):
        assert report[key] == expected[key], key
    rows = read_activities(ds)
    per_date = Counter(t.date().isoformat() for t in rows["ActivityTime"].to_pylist())
    assert dict(per_date) == expected["activities_per_date"]
    assert load_data_source(str(ds))["WebLog"]["primary_key"] == "ActivityId"
    dead = dead_letters(ds)
    assert len(dead) == sum(expected["rejected"].values())
    # A JSON line with invalid UTF-8 keeps its exact bytes (as escaped surrogates).
    for d in dead:
        if d["source"].endswith(".jsonl") and isinstance(d["payload"], str):
            raw = d["payload"].encode("utf-8", errors="surrogateescape")
            assert raw in (REPO / "sample_data" / "exports" / d["source"].rsplit("/", 1)[1]).read_bytes()
