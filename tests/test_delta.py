"""Delta tables (``--table-format delta``) through the real CLI, read back with ``deltalake`` and
polars: the same rows as the CDM output, the protocol Customer Insights can read, runs recorded
in the log, exactly once across runs, kill-and-rerun (also between two tables' commits),
concurrent runs, and ``convert`` both ways."""

from __future__ import annotations

import functools
import json
import signal

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from conftest import (
    COMMIT_STEPS,
    RUN_TIME,
    event,
    export_run,
    read_activities,
    run_cli,
    run_reports,
    start_cli,
    write_jsonl,
)
from faults.lake_checks import committed_ids

DS = "EngagementInsights"


export = functools.partial(export_run, fmt="delta")  # (source, lake, run_id, *extra, fmt=, env=)


def delta_rows(lake, table="WebLog") -> pa.Table:
    """Every row of a Delta table (deltalake), sorted by ActivityId, ActivityDate dropped."""
    dt = DeltaTable(str(lake / DS / table))
    return dt.to_pyarrow_table().drop_columns(["ActivityDate"]).sort_by("ActivityId")


def log_entries(lake, table="WebLog") -> list[list[dict]]:
    """The table's commits as written: one list of actions per ``_delta_log/*.json``."""
    log = lake / DS / table / "_delta_log"
    return [
        [json.loads(line) for line in path.read_text().splitlines()] for path in sorted(log.glob("*.json"))
    ]


@pytest.fixture
def inputs(tmp_path):
    first = write_jsonl(
        tmp_path / "in" / "first.jsonl",
        [event("a"), event("b", ts="2024-05-02T10:00:00Z"), "garbage", event("a")],
    )
    second = write_jsonl(
        tmp_path / "in" / "second.jsonl",
        [
            event("b", ts="2024-05-02T10:00:00Z"),
            event("c", ts="2024-05-03T23:59:59.999Z"),
            event("d", ts="2024-05-04T00:00:00Z"),
            event("e", uri="nope"),
        ],
    )
    return first, second


def test_delta_rows_equal_the_cdm_output_of_the_same_input(tmp_path, inputs):
    first, second = inputs
    for fmt in ("cdm", "delta"):
        assert export(first, tmp_path / fmt, "r1", fmt=fmt).returncode == 0
        proc = export(second, tmp_path / fmt, "r2", fmt=fmt)
        assert proc.returncode == 0, proc.stderr
    cdm = read_activities(tmp_path / "cdm" / DS)
    delta = delta_rows(tmp_path / "delta")
    assert delta.to_pylist() == cdm.to_pylist()
    assert delta["ActivityId"].to_pylist() == ["a", "b", "c", "d"]
    # polars reads the same table through deltalake, partition column included
    frame = pl.read_delta(str(tmp_path / "delta" / DS / "WebLog")).sort("ActivityId")
    assert frame["ActivityId"].to_list() == ["a", "b", "c", "d"]
    assert [d.isoformat() for d in frame["ActivityDate"].to_list()] == [
        "2024-05-01",
        "2024-05-02",
        "2024-05-03",
        "2024-05-04",
    ]
    assert frame.schema["ActivityTime"] == pl.Datetime("us", "UTC")
    # dead letters, reports and the lock beside the tables, as with CDM
    ds = tmp_path / "delta" / DS
    assert not any((ds / "_staging").rglob("*"))
    assert sorted(p.name for p in ds.iterdir() if p.name != "_staging") == [
        "WebLog",
        "_deadletter",
        "_lock",
        "_runs",
        "_state",
    ]
    assert sorted(p.name for p in (ds / "WebLog").iterdir()) == [
        "ActivityDate=2024-05-01",
        "ActivityDate=2024-05-02",
        "ActivityDate=2024-05-03",
        "ActivityDate=2024-05-04",
        "_delta_log",
    ]
    assert [r["table_format"] for r in run_reports(ds)] == ["delta", "delta"]


def test_delta_table_stays_within_what_customer_insights_reads(tmp_path, inputs):
    first, _ = inputs
    assert export(first, tmp_path / "lake", "r1").returncode == 0
    dt = DeltaTable(str(tmp_path / "lake" / DS / "WebLog"))
    protocol = dt.protocol()
    assert protocol.min_reader_version <= 2
    assert not protocol.reader_features and not protocol.writer_features  # no table features at all
    assert dt.metadata().partition_columns == ["ActivityDate"]
    assert not dt.metadata().configuration  # no deletion vectors, clustering or type widening enabled
    fields = {f["name"]: f["type"] for f in json.loads(dt.schema().to_json())["fields"]}
    assert fields["ActivityTime"] == fields["LastUpdated"] == "timestamp"  # UTC-adjusted, never NTZ
    assert fields["ActivityDate"] == "date"
    assert "timestamp_ntz" not in json.dumps(fields) and "variant" not in json.dumps(fields)
    actions = [a for entry in log_entries(tmp_path / "lake") for a in entry]
    assert [a["protocol"] for a in actions if "protocol" in a] == [
        {"minReaderVersion": 1, "minWriterVersion": 2}
    ]
    assert not any("deletionVector" in a.get("add", {}) for a in actions)
    assert not any("domainMetadata" in a for a in actions)  # liquid clustering would add one


def test_each_run_is_one_commit_recording_its_id_and_reruns_add_nothing(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1").returncode == 0
    assert export(second, lake, "r2").returncode == 0
    dt = DeltaTable(str(lake / DS / "WebLog"))
    runs = [h.get("insights_link.run_id") for h in dt.history() if h.get("insights_link.run_id")]
    assert sorted(runs) == ["r1", "r2"]
    version = dt.version()
    # the same inputs again: skipped as committed; reprocessed: every row a duplicate
    again = export(first, lake, "r3")
    assert again.returncode == 0 and "inputs skipped" in again.stdout
    reprocess = export(second, lake, "r4", "--reprocess")
    assert reprocess.returncode == 0, reprocess.stderr
    report = json.loads((lake / DS / "_runs" / "r4.json").read_text())
    assert report["activities_written"] == 0 and report["duplicates_dropped"] == 3
    assert DeltaTable(str(lake / DS / "WebLog")).version() == version  # no empty commits either
    assert committed_ids(str(lake)) == ["a", "b", "c", "d"]


def test_ids_committed_on_a_date_are_duplicates_on_that_date(tmp_path):
    """Exactly once per UTC date, with the date's files found through the log's partition values."""
    lake = tmp_path / "lake"
    one = write_jsonl(
        tmp_path / "in1" / "e.jsonl", [event(f"x{i}", ts="2024-05-01T10:00:00Z") for i in range(5)]
    )
    two = write_jsonl(
        tmp_path / "in2" / "e.jsonl",
        [event(f"x{i}", ts="2024-05-01T11:00:00Z") for i in range(5)]
        + [event("new", ts="2024-05-02T00:00:00Z")],
    )
    assert export(one, lake, "r1").returncode == 0
    assert export(two, lake, "r2").returncode == 0
    report = json.loads((lake / DS / "_runs" / "r2.json").read_text())
    assert (report["activities_written"], report["duplicates_dropped"]) == (1, 5)
    assert committed_ids(str(lake)) == sorted([f"x{i}" for i in range(5)] + ["new"])


@pytest.mark.parametrize("step", COMMIT_STEPS)
def test_killed_run_then_rerun_equals_a_clean_run(step, tmp_path, inputs):
    first, second = inputs
    clean = tmp_path / "clean"
    assert export(first, clean, "c1").returncode == 0
    assert export(second, clean, "c2").returncode == 0

    lake = tmp_path / "lake"
    assert export(first, lake, "k1").returncode == 0
    killed = export(second, lake, "k2", env={"INSIGHTS_LINK_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = export(second, lake, "k3")
    assert rerun.returncode == 0, rerun.stderr
    assert (
        delta_rows(lake).drop_columns(["LastUpdated"]).to_pylist()
        == delta_rows(clean).drop_columns(["LastUpdated"]).to_pylist()
    )
    assert committed_ids(str(lake)) == ["a", "b", "c", "d"]  # no orphan files, none missing
    assert not any((lake / DS / "_staging").rglob("*"))


def _two_activities(tmp_path, lake, run_id, env=None):
    source = write_jsonl(
        tmp_path / "in2" / "e.jsonl",
        [event("p1", name="PageView"), event("p2", name="PageView"), event("b1", name="Buy")],
    )
    job = tmp_path / "job.toml"
    job.write_text(
        f'output = "{lake}"\ntable_format = "delta"\nrun_time = "{RUN_TIME}"\n'
        f'[[activity]]\nname = "Buys"\ninputs = ["{source}"]\nevent_names = ["Buy"]\n'
        f'[[activity]]\nname = "Views"\ninputs = ["{source}"]\nevent_names = ["PageView"]\n'
    )
    return run_cli("export", "--job", str(job), "--run-id", run_id, env=env)


def test_run_killed_between_two_table_commits_is_completed_by_the_next_run(tmp_path):
    """Each table commits atomically; the first table's commit is the run's commit point. A
    run killed before the second is completed by the next run, never duplicated."""
    lake = tmp_path / "lake"
    killed = _two_activities(tmp_path, lake, "k1", env={"INSIGHTS_LINK_KILL_AT": "between_table_commits"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert DeltaTable(str(lake / DS / "Buys")).to_pyarrow_table().num_rows == 1
    assert DeltaTable(str(lake / DS / "Views")).to_pyarrow_table().num_rows == 0  # created, not committed
    rerun = _two_activities(tmp_path, lake, "k2")
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(DeltaTable(str(lake / DS / "Views")).to_pyarrow_table()["ActivityId"].to_pylist()) == [
        "p1",
        "p2",
    ]
    assert committed_ids(str(lake)) == ["b1", "p1", "p2"]
    reports = {r["run_id"]: r for r in run_reports(lake / DS)}
    assert reports["k1"]["status"] == "committed"  # finished by k2's recovery
    assert reports["k2"]["activities_written"] == 0  # k2's inputs were committed by k1


def test_uncommitted_data_files_are_removed_and_never_in_the_log(tmp_path, inputs):
    first, _ = inputs
    lake = tmp_path / "lake"
    killed = export(first, lake, "k1", env={"INSIGHTS_LINK_KILL_AT": "before_manifest"})
    assert killed.returncode == -signal.SIGKILL
    placed = sorted(p.name for p in (lake / DS / "WebLog").rglob("*.parquet"))
    assert placed == ["WebLog_20240501_k1_000.parquet", "WebLog_20240502_k1_000.parquet"]
    assert DeltaTable(str(lake / DS / "WebLog")).to_pyarrow_table().num_rows == 0
    # a user's file in the table folder is not ours to delete (Delta's vacuum may, by its rules)
    (lake / DS / "WebLog" / "notes.parquet").write_bytes(b"not ours")
    assert export(first, lake, "k2").returncode == 0
    files = sorted(p.name for p in (lake / DS / "WebLog").rglob("*.parquet"))
    assert files == ["WebLog_20240501_k2_000.parquet", "WebLog_20240502_k2_000.parquet", "notes.parquet"]
    logged = [a["add"]["path"] for e in log_entries(lake) for a in e if "add" in a]
    assert not any("k1" in p for p in logged)


def test_concurrent_runs_on_one_delta_data_source(tmp_path):
    lake = tmp_path / "lake"
    sources = [
        write_jsonl(
            tmp_path / f"in{n}" / "e.jsonl", [event(f"{n}-{i}") for i in range(40)] + [event("shared")]
        )
        for n in (1, 2)
    ]
    procs = [
        start_cli(
            "export",
            "--input",
            str(s),
            "--output",
            str(lake),
            "--table-format",
            "delta",
            "--lock-wait",
            "120",
        )
        for s in sources
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    ids = committed_ids(str(lake))
    assert ids == sorted({f"{n}-{i}" for n in (1, 2) for i in range(40)} | {"shared"})
    reports = run_reports(lake / DS)
    assert sum(r["activities_written"] for r in reports) == 81
    assert sum(r["duplicates_dropped"] for r in reports) == 1


@pytest.mark.parametrize(
    ("first", "second", "says"),
    [("cdm", "delta", "holds a CDM folder"), ("delta", "cdm", "holds Delta tables (WebLog)")],
)
def test_a_run_in_the_other_format_is_a_usage_error(tmp_path, inputs, first, second, says):
    lake = tmp_path / "lake"
    assert export(inputs[0], lake, "r1", fmt=first).returncode == 0
    proc = export(inputs[1], lake, "r2", fmt=second)
    assert proc.returncode == 2
    assert says in proc.stderr and "insights-link convert --to" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_incremental_layout_with_delta_is_a_usage_error_that_says_why(tmp_path, inputs):
    proc = export(inputs[0], tmp_path / "lake", "r1", "--layout", "incremental")
    assert proc.returncode == 2
    assert "CDM folders only" in proc.stderr and "versions" in proc.stderr
    assert not (tmp_path / "lake").exists()


def test_convert_cdm_to_delta_and_back_keeps_the_rows(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1", fmt="cdm").returncode == 0
    assert export(second, lake, "r2", "--layout", "incremental", fmt="cdm").returncode == 0
    cdm_rows = read_activities(lake / DS).to_pylist()

    to_delta = run_cli("convert", "--lake", str(lake), "--to", "delta", "--run-id", "c1")
    assert to_delta.returncode == 0, to_delta.stderr
    assert not (lake / DS / "default.manifest.cdm.json").exists()
    assert delta_rows(lake).to_pylist() == cdm_rows
    assert pl.read_delta(str(lake / DS / "WebLog")).height == len(cdm_rows)
    # the converted table takes new runs, deduplicated against the converted files
    assert export(second, lake, "r3", "--reprocess").returncode == 0
    assert json.loads((lake / DS / "_runs" / "r3.json").read_text())["activities_written"] == 0

    to_cdm = run_cli("convert", "--lake", str(lake), "--to", "cdm", "--run-id", "c2")
    assert to_cdm.returncode == 0, to_cdm.stderr
    assert not (lake / DS / "WebLog" / "_delta_log").exists()
    assert read_activities(lake / DS).to_pylist() == cdm_rows
    again = run_cli("convert", "--lake", str(lake), "--to", "cdm")
    assert again.returncode == 2 and "already is cdm" in again.stderr


def test_convert_killed_before_the_switch_is_completed_by_running_it_again(tmp_path, inputs):
    lake = tmp_path / "lake"
    assert export(inputs[0], lake, "r1", fmt="cdm").returncode == 0
    rows = read_activities(lake / DS).to_pylist()
    killed = run_cli(
        "convert", "--lake", str(lake), "--to", "delta", env={"INSIGHTS_LINK_KILL_AT": "before_format_switch"}
    )
    assert killed.returncode == -signal.SIGKILL
    assert (lake / DS / "default.manifest.cdm.json").exists()  # still a CDM data source
    refused = export(inputs[1], lake, "r2")
    assert refused.returncode == 2 and "convert" in refused.stderr
    done = run_cli("convert", "--lake", str(lake), "--to", "delta")
    assert done.returncode == 0, done.stderr
    assert len(log_entries(lake)) == 1  # the log written by the killed conversion, reused
    assert delta_rows(lake).to_pylist() == rows
