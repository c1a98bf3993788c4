"""Smoke tests for the benchmark tools: the event generator, the DuckDB baseline, the sample data.

The generator's ``_expected.json`` is what other tests and benchmarks assert against, so these
tests check that it balances and that the same seed always gives the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from conftest import load_script as _load

generator = _load("bench_generate", REPO / "benchmarks" / "generate.py")
baseline = _load("bench_duckdb_baseline", REPO / "benchmarks" / "duckdb_baseline.py")


def _balance(summary: dict[str, Any]) -> int:
    return summary["valid_unique"] + summary["duplicates"] + sum(summary["invalid"].values())


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gen") / "events"
    return out, generator.generate(out, 2000, 2)


def test_generate_writes_files_and_balanced_counts(small: tuple[Path, dict[str, Any]]) -> None:
    out, summary = small
    files = sorted(out.glob("events-*.jsonl"))
    assert [f.name for f in files] == ["events-000.jsonl", "events-001.jsonl"]
    lines = sum(f.read_bytes().count(b"\n") for f in files)
    assert lines == summary["events_total"] == 2000

    on_disk = json.loads((out / "_expected.json").read_text(encoding="utf-8"))
    assert on_disk == summary
    assert _balance(summary) == summary["events_total"]
    assert summary["invalid_total"] == sum(summary["invalid"].values())
    assert set(summary["invalid"]) == set(generator.REASONS)
    assert all(count > 0 for count in summary["invalid"].values()), summary["invalid"]
    assert summary["duplicates"] > 0
    assert 0 < summary["duplicates_cross_file"] <= summary["duplicates"]
    # ratios are honoured roughly (3% invalid, 1% duplicates by default)
    assert 20 <= summary["invalid_total"] <= 100
    assert 5 <= summary["duplicates"] <= 40

    per_date = summary["valid_unique_per_date"]
    assert sum(per_date.values()) == summary["valid_unique"]
    first = date(2024, 5, 1)
    assert set(per_date) <= {(first + timedelta(days=d)).isoformat() for d in range(30)}
    assert len(per_date) == 30  # spread evenly over every day
    # the aliases that match sample_data/expected.json
    assert summary["records_read"] == summary["events_total"]
    assert summary["activities_written"] == summary["valid_unique"]
    assert summary["duplicates_dropped"] == summary["duplicates"]
    assert summary["rejected"] == summary["invalid"]


def test_generated_lines_are_realistic_nested_events(small: tuple[Path, dict[str, Any]]) -> None:
    out, _ = small
    first = (out / "events-000.jsonl").read_bytes().split(b"\n")[0]
    event = json.loads(first)
    signal = event["Signal"]
    assert set(signal) >= {"Export", "User", "Timestamp", "View", "Action", "Name", "Session"}
    assert signal["View"]["Uri"].startswith("https://")
    assert 200 <= len(first) <= 450


def test_generate_is_deterministic(tmp_path: Path, small: tuple[Path, dict[str, Any]]) -> None:
    out, summary = small
    again = generator.generate(tmp_path / "again", 2000, 2)
    assert again == summary
    for name in ("events-000.jsonl", "events-001.jsonl", "_expected.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    other = generator.generate(tmp_path / "other", 2000, 2, seed=8)
    assert (tmp_path / "other" / "events-000.jsonl").read_bytes() != (out / "events-000.jsonl").read_bytes()
    assert _balance(other) == 2000


def _count_records(path: Path) -> int:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if ".csv" in path.name:
        return len(list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))) - 1
    if path.name.endswith(".avro"):
        return sum(1 for _ in fastavro.reader(io.BytesIO(data)))
    return data.count(b"\n")


@pytest.mark.parametrize(
    ("fmt", "gz", "pattern"),
    [
        ("csv", False, "events-*.csv"),
        ("csv", True, "events-*.csv.gz"),
        ("jsonl", True, "events-*.jsonl.gz"),
        ("avro-nested", False, "events-*.avro"),
        ("avro-capture", False, "events-*.avro"),
    ],
)
def test_other_formats(tmp_path: Path, fmt: str, gz: bool, pattern: str) -> None:
    summary = generator.generate(tmp_path, 300, 3, fmt=fmt, gzip=gz, invalid_ratio=0.1)
    files = sorted(tmp_path.glob(pattern))
    assert len(files) == 3
    assert sum(_count_records(f) for f in files) == 300
    assert _balance(summary) == 300
    for reason in generator.REASONS:
        if reason not in generator.FORMAT_REASONS[fmt]:
            assert summary["invalid"][reason] == 0
    if fmt == "avro-capture":
        with open(files[0], "rb") as fo:
            reader = fastavro.reader(fo)
            assert reader.writer_schema["name"].endswith("EventData")
            assert isinstance(next(iter(reader))["Body"], bytes)


def test_generate_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "generate.py"),
            "--events",
            "50",
            "--files",
            "2",
            "--out",
            str(tmp_path),
            "--days",
            "2",
            "--start",
            "2024-06-01",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["events_total"] == 50
    expected = json.loads((tmp_path / "_expected.json").read_text(encoding="utf-8"))
    assert set(expected["valid_unique_per_date"]) <= {"2024-06-01", "2024-06-02"}


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generator.generate(tmp_path, 10, 1, fmt="xml")
    with pytest.raises(ValueError):
        generator.generate(tmp_path, 10, 1, fmt="avro-nested", gzip=True)
    with pytest.raises(ValueError):
        generator.generate(tmp_path, 10, 0)


def test_duckdb_baseline_smoke(tmp_path: Path, small: tuple[Path, dict[str, Any]]) -> None:
    out, summary = small
    result = baseline.run_duckdb(str(out / "events-*.jsonl"), tmp_path / "duckdb")
    rows = result["rows_written"]
    # The SQL only approximates the exporter's rules; it must keep nearly all valid events and
    # must not let through much more than the valid ones.
    assert 0.9 * summary["valid_unique"] <= rows <= summary["valid_unique"] + 10
    parts = sorted((tmp_path / "duckdb").glob("date=*/*.parquet"))
    assert parts and 1 <= result["partitions"] <= 30
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in parts) == rows
    meta = pq.ParquetFile(parts[0]).metadata
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_sample_data_is_current() -> None:
    """The committed sample files and expected.json are what make_sample_data.py produces."""
    sample = _load("sample_data_maker", REPO / "sample_data" / "make_sample_data.py")
    assert sample.main(["--check"]) == 0
    expected = json.loads((REPO / "sample_data" / "expected.json").read_text(encoding="utf-8"))
    total = (
        expected["activities_written"] + expected["duplicates_dropped"] + sum(expected["rejected"].values())
    )
    assert total == expected["records_read"]
    assert all(count >= 2 for count in expected["rejected"].values())
