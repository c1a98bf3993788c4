"""Exactly once across dates (``--dedupe-window-days``, default 3): an ActivityId committed, or
seen earlier in the same run, on a UTC date within the window is a duplicate, in both table
formats; the earliest copy in input order wins whatever the bundling; ids further apart are
kept (and ``verify`` finds them)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from conftest import event, export_run, run_cli, write_jsonl
from faults.lake_checks import committed_ids
from insights_link.core.batch import POSITION, RANK, dedupe, window_dates

DS = "EngagementInsights"


def _export(source, lake, run_id, fmt, *extra):
    proc = export_run(source, lake, run_id, *extra, fmt=fmt, run_time=None)
    assert proc.returncode == 0, proc.stderr
    return json.loads((lake / DS / "_runs" / f"{run_id}.json").read_text())


def _rows(lake, fmt) -> list[tuple[str, str]]:
    """(ActivityId, ActivityTime) of every committed row."""
    import pyarrow.parquet as pq

    from faults.lake_checks import committed_locations
    from insights_link.storage import open_storage

    tables = [pq.read_table(lake / DS / loc) for loc in committed_locations(open_storage(str(lake)), DS)]
    table = pa.concat_tables(tables)
    return sorted(
        zip(
            table["ActivityId"].to_pylist(),
            [t.isoformat() for t in table["ActivityTime"].to_pylist()],
            strict=True,
        )
    )


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
@pytest.mark.parametrize("block_records", ["1", "1000"])
def test_id_restamped_across_midnight_within_a_run_is_kept_once(tmp_path, fmt, block_records):
    source = write_jsonl(
        tmp_path / "in" / "e.jsonl",
        [
            event("late", ts="2024-05-02T00:10:00Z"),  # the first copy in input order wins
            event("x", ts="2024-05-01T23:50:00Z"),
            event("late", ts="2024-05-01T23:55:00Z"),
            event("x", ts="2024-05-02T00:05:00Z"),
            event("y", ts="2024-05-03T12:00:00Z"),
        ],
    )
    report = _export(source, tmp_path / "lake", "r1", fmt, "--block-records", block_records)
    assert (report["activities_written"], report["duplicates_dropped"]) == (3, 2)
    assert _rows(tmp_path / "lake", fmt) == [
        ("late", "2024-05-02T00:10:00+00:00"),
        ("x", "2024-05-01T23:50:00+00:00"),
        ("y", "2024-05-03T12:00:00+00:00"),
    ]


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_ids_redelivered_on_other_dates_across_runs_are_duplicates(tmp_path, fmt):
    lake = tmp_path / "lake"
    first = write_jsonl(tmp_path / "a.jsonl", [event(f"e{i}", ts="2024-05-01T23:30:00Z") for i in range(20)])
    again = write_jsonl(
        tmp_path / "b.jsonl",
        [event(f"e{i}", ts="2024-05-02T00:30:00Z") for i in range(10)]  # shifted by an hour
        + [event(f"e{i}", ts="2024-05-04T09:00:00Z") for i in range(10, 20)]  # three days late
        + [event("new", ts="2024-05-02T00:30:00Z")],
    )
    _export(first, lake, "r1", fmt)
    report = _export(again, lake, "r2", fmt)
    assert (report["activities_written"], report["duplicates_dropped"]) == (1, 20)
    assert committed_ids(str(lake)) == sorted([f"e{i}" for i in range(20)] + ["new"])


def test_ids_further_apart_than_the_window_are_kept_and_a_window_of_0_is_per_date(tmp_path):
    lake = tmp_path / "lake"
    first = write_jsonl(tmp_path / "a.jsonl", [event("e1", ts="2024-05-01T10:00:00Z")])
    far = write_jsonl(tmp_path / "b.jsonl", [event("e1", ts="2024-05-05T10:00:00Z")])
    near = write_jsonl(tmp_path / "c.jsonl", [event("e1", ts="2024-05-02T10:00:00Z")])
    _export(first, lake, "r1", "cdm")
    assert _export(far, lake, "r2", "cdm")["activities_written"] == 1  # 4 days apart: outside 3
    assert _export(near, lake, "r3", "cdm", "--dedupe-window-days", "0")["activities_written"] == 1
    assert committed_ids(str(lake)) == ["e1", "e1", "e1"]


def test_a_bad_window_is_a_usage_error_naming_it(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [event("e1")])
    proc = run_cli(
        "export", "--input", str(source), "--output", str(tmp_path / "lake"), "--dedupe-window-days", "-1"
    )
    assert proc.returncode == 2 and "--dedupe-window-days" in proc.stderr


def _work(ids, rank, positions):
    return pa.table(
        {
            "ActivityId": ids,
            RANK: pa.array([rank] * len(ids), pa.int32()),
            POSITION: pa.array(positions, pa.int64()),
        }
    )


@pytest.mark.parametrize(
    ("own", "rivals", "kept"),
    [
        (_work(["a", "b"], 1, [0, 1]), _work(["a"], 0, [9]), ["b"]),  # an earlier file wins
        (_work(["a", "b"], 1, [5, 6]), _work(["a"], 1, [2]), ["b"]),  # same file, earlier line
        (_work(["a", "b"], 1, [5, 6]), _work(["a"], 1, [7]), ["a", "b"]),  # the rival came later
        (_work(["a", "b"], 0, [0, 1]), _work(["c"], 0, [0]), ["a", "b"]),  # no shared id
        (_work(["a", "a"], 2, [3, 1]), _work(["a"], 2, [2]), ["a"]),  # the date's first copy is earliest
        (_work(["a", "a"], 2, [3, 1]), _work(["a"], 2, [0]), []),  # ... or loses to an earlier rival
    ],
)
def test_dedupe_against_rivals_keeps_only_the_earliest_copy(own, rivals, kept):
    rows, dropped = dedupe([own], None, rivals)
    assert rows["ActivityId"].to_pylist() == kept
    assert dropped == own.num_rows - len(kept)


def test_window_dates_cross_month_and_leap_day():
    assert window_dates("2024-03-01", 2) == [
        "2024-02-28",
        "2024-02-29",
        "2024-03-01",
        "2024-03-02",
        "2024-03-03",
    ]
    assert window_dates("2024-12-31", 1) == ["2024-12-30", "2024-12-31", "2025-01-01"]


@pytest.mark.timeout(600)
def test_restamped_ids_across_runs_on_azure_are_duplicates(tmp_path, azure_lake):
    first = write_jsonl(tmp_path / "a.jsonl", [event(f"e{i}", ts="2024-05-01T23:30:00Z") for i in range(5)])
    again = write_jsonl(
        tmp_path / "b.jsonl",
        [event(f"e{i}", ts="2024-05-02T00:30:00Z") for i in range(5)]
        + [event("late", ts="2024-05-02T00:40:00Z"), event("late", ts="2024-05-01T23:40:00Z")],
    )
    for source in (first, again):
        proc = run_cli("export", "--input", str(source), "--output", azure_lake, "--table-format", "delta")
        assert proc.returncode == 0, proc.stderr
    assert committed_ids(azure_lake) == sorted([f"e{i}" for i in range(5)] + ["late"])
