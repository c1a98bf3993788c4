"""``status`` and ``verify`` on ``abfss://`` lakes (stock Azurite), both table formats: the same
numbers as locally, problems planted through the storage layer named with exit 1, the lock's
lease and holder seen while a run is paused, and ``lock_holder`` never taking the lease."""

from __future__ import annotations

import json

import pytest

from conftest import event, run_cli, write_jsonl
from faults.lake_checks import committed_locations, paused_export
from insights_link.storage import open_storage

pytestmark = pytest.mark.timeout(300)
DS = "EngagementInsights"


@pytest.fixture(params=["cdm", "delta"])
def fmt(request) -> str:
    return request.param


@pytest.fixture
def lake(azure_lake, fmt, tmp_path) -> str:
    """A lake on Azurite with two committed runs of format ``fmt``."""
    first = write_jsonl(
        tmp_path / "in" / "first.jsonl",
        [event("a"), event("b", ts="2024-05-02T10:00:00Z"), "garbage", event("a"), event("e", uri="nope")],
    )
    second = write_jsonl(tmp_path / "in2" / "second.jsonl", [event("c", ts="2024-05-03T08:00:00Z")])
    for run_id, source in (("r1", first), ("r2", second)):
        proc = run_cli(
            "export",
            "--input",
            str(source),
            "--output",
            azure_lake,
            "--run-id",
            run_id,
            "--table-format",
            fmt,
        )
        assert proc.returncode == 0, proc.stderr
    return azure_lake


def cli_json(*args: str) -> tuple[int, dict, str]:
    proc = run_cli(*args, "--json")
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else {}, proc.stderr


def keys(storage) -> dict[str, str]:
    return {o.key: o.version for o in storage.list("")}


def test_status_and_verify_on_azure(lake, fmt):
    storage = open_storage(lake)
    before = keys(storage)
    code, report, err = cli_json("status", "--lake", lake)
    assert code == 0, err
    (source,) = report["data_sources"]
    assert source["format"] == fmt
    (table,) = source["tables"]
    assert table["rows"] == 3 and table["files"]["count"] == 3
    assert (table["first_date"], table["last_date"]) == ("2024-05-01", "2024-05-03")
    assert source["dead_letters"]["by_reason"] == {"invalid_uri": 1, "malformed": 1}
    assert source["lock"]["held"] is False
    assert source["runs"]["total"] == 2
    code, report, err = cli_json("verify", "--lake", lake)
    assert code == 0, err
    assert report["data_sources"][0]["checked"]["rows"] == 3
    assert keys(storage) == before  # neither wrote anything, not even the lock blob's metadata


def test_verify_names_problems_planted_on_azure(lake, fmt):
    storage = open_storage(lake)
    listed = committed_locations(storage, DS)
    gone = listed[1]
    data = storage.read_bytes(f"{DS}/{listed[0]}")
    storage.delete(f"{DS}/{gone}")
    ghost = listed[0].replace("_r1_", "_ghost_")
    storage.write_bytes(f"{DS}/{ghost}", data)
    report_key = f"{DS}/_runs/r2.json"
    run_report = json.loads(storage.read_bytes(report_key))
    run_report["activities_written"] += 1
    storage.write_bytes(report_key, json.dumps(run_report).encode())
    code, report, err = cli_json("verify", "--lake", lake)
    assert code == 1, err
    found = {(p["code"], p["location"]) for p in report["data_sources"][0]["problems"]}
    assert ("missing_file", gone) in found
    assert ("unreferenced_file", ghost) in found
    assert ("unbalanced_report", "_runs/r2.json") in found


def test_status_sees_the_lease_of_a_paused_run(lake, fmt, tmp_path):
    more = write_jsonl(tmp_path / "more" / "third.jsonl", [event("f", ts="2024-05-05T10:00:00Z")])
    pause = tmp_path / "paused"
    run = paused_export(
        "after_moves", pause, "--input", str(more), "--output", lake, "--run-id", "r3", "--table-format", fmt
    )
    try:
        code, report, err = cli_json("status", "--lake", lake)
        assert code == 0, err
        (source,) = report["data_sources"]
        assert source["lock"]["held"] is True
        assert f"pid {run.pid}" in source["lock"]["holder"] and source["lock"]["since"]
        assert [s["run_id"] for s in source["staging"]] == ["r3"]
        code, report, err = cli_json("verify", "--lake", lake)
        assert code == 0, report
        assert len(report["data_sources"][0]["pending"]) == 1
    finally:
        pause.unlink(missing_ok=True)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    code, report, _ = cli_json("status", "--lake", lake)
    assert report["data_sources"][0]["lock"]["held"] is False


def test_azure_lock_holder_reads_the_lease_without_taking_it(azure_lake):
    storage = open_storage(azure_lake)
    assert storage.lock_holder("ds/_lock") is None  # no container, no blob: free, nothing created
    with storage.lock("ds/_lock", seconds=15) as held:
        holder = storage.lock_holder("ds/_lock")
        assert holder is not None and holder.startswith("held by pid")
        held.check()
    assert storage.lock_holder("ds/_lock") is None
