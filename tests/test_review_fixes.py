"""Regressions found in review: damaged inputs keep their good records, a lake inside an input
folder is not read back as events, run ids can't be reused, a failed commit leaves no orphans."""

from __future__ import annotations

import gzip
import json

from conftest import (
    event,
    manifest_locations,
    parquet_files,
    read_activities,
    run_cli,
    run_reports,
    write_jsonl,
)


def test_truncated_gzip_keeps_the_records_before_the_break(tmp_path, lake):
    lines = "".join(json.dumps(event(f"e{i:05d}")) + "\n" for i in range(20000)).encode()
    packed = gzip.compress(lines)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.jsonl.gz").write_bytes(packed[: int(len(packed) * 0.75)])
    proc = run_cli("export", "--input", str(tmp_path / "in"), "--output", str(lake))
    assert proc.returncode == 0, proc.stderr
    (report,) = run_reports(lake / "EngagementInsights")
    assert report["rejected"]["malformed"] == 1  # the unreadable rest of the file
    assert report["activities_written"] == report["records_read"] - 1 > 10000
    ids = read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist()
    assert ids == [f"e{i:05d}" for i in range(len(ids))]  # a prefix of the file, nothing else


def test_broken_avro_is_a_dead_letter_not_a_failed_run(tmp_path, lake):
    import fastavro

    schema = fastavro.parse_schema(
        {"type": "record", "name": "E", "fields": [{"name": "Body", "type": ["null", "bytes"]}]}
    )
    path = tmp_path / "in" / "cap.avro"
    path.parent.mkdir()
    with open(path, "wb") as f:
        fastavro.writer(
            f, schema, [{"Body": json.dumps(event(f"e{i}")).encode()} for i in range(50)], codec="null"
        )
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0xFF  # damage the last block
    path.write_bytes(bytes(raw))
    proc = run_cli("export", "--input", str(path), "--output", str(lake))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (report,) = run_reports(lake / "EngagementInsights")
    assert report["records_read"] == report["activities_written"] + sum(report["rejected"].values())


def test_a_lake_inside_the_input_folder_is_not_read_as_events(tmp_path):
    write_jsonl(tmp_path / "data" / "e.jsonl", [event("a")])
    for _ in range(2):
        proc = run_cli(
            "export", "--input", str(tmp_path / "data"), "--output", str(tmp_path / "data" / "lake")
        )
        assert proc.returncode == 0, proc.stderr
    reports = run_reports(tmp_path / "data" / "lake" / "EngagementInsights")
    assert sorted(r["records_read"] for r in reports) == [0, 1]


def test_a_run_id_cannot_be_reused(tmp_path, lake):
    a = write_jsonl(tmp_path / "a.jsonl", [event("a")])
    b = write_jsonl(tmp_path / "b.jsonl", [event("b")])
    assert run_cli("export", "--input", str(a), "--output", str(lake), "--run-id", "daily").returncode == 0
    again = run_cli("export", "--input", str(b), "--output", str(lake), "--run-id", "daily")
    assert again.returncode == 2 and "'daily'" in again.stderr
    assert read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist() == ["a"]


def test_a_rejected_ratio_failure_after_staging_leaves_no_orphans(tmp_path, lake):
    src = write_jsonl(tmp_path / "a.jsonl", [event("a"), "bad", "bad too"])
    assert (
        run_cli(
            "export", "--input", str(src), "--output", str(lake), "--max-rejected-ratio", "0.1"
        ).returncode
        == 3
    )
    ds = lake / "EngagementInsights"
    assert (
        not any(ds.rglob("*.parquet"))
        and not (ds / "_deadletter").exists()
        or not any((ds / "_deadletter").iterdir())
    )
    ok = run_cli("export", "--input", str(src), "--output", str(lake))
    assert ok.returncode == 0
    assert parquet_files(ds) == manifest_locations(ds)
