"""Atomicity: a run SIGKILLed at each step of its work, then re-run, ends in the same state as
one clean run. The kill is real (the process SIGKILLs itself at a named step, see
``lake.failpoint``), so nothing of the dying process gets to clean up."""

from __future__ import annotations

import signal

import pytest

from conftest import (
    COMMIT_STEPS,
    dead_letters,
    event,
    manifest_locations,
    parquet_files,
    read_activities,
    run_cli,
    write_jsonl,
)

STEPS = COMMIT_STEPS


@pytest.fixture
def inputs(tmp_path):
    first = write_jsonl(
        tmp_path / "in" / "first.jsonl", [event("a"), event("b", ts="2024-05-02T10:00:00Z"), "garbage"]
    )
    second = write_jsonl(
        tmp_path / "in" / "second.jsonl",
        [
            event("b", ts="2024-05-02T10:00:00Z"),
            event("c", ts="2024-05-03T10:00:00Z"),
            event("d"),
            event("e", uri="nope"),
        ],
    )
    return first, second


def _run(source, lake, run_id, env=None):
    return run_cli(
        "export",
        "--input",
        str(source),
        "--output",
        str(lake),
        "--run-id",
        run_id,
        "--run-time",
        "2026-11-28T12:00:00Z",
        "--block-records",
        "1",
        env=env,
    )


def _state(lake):
    """What a reader sees, with run ids taken out of file names."""
    ds = lake / "EngagementInsights"
    normal = [loc.split("_")[0] + "_" + loc.split("_")[1] for loc in manifest_locations(ds)]
    rows = read_activities(ds).drop_columns(["LastUpdated"]).to_pylist()
    letters = sorted((d["reason"], d["source"], d["position"]) for d in dead_letters(ds))
    return sorted(normal), rows, letters


@pytest.mark.parametrize("step", STEPS)
def test_killed_second_run_then_rerun_equals_clean_runs(step, tmp_path, inputs):
    first, second = inputs
    clean = tmp_path / "clean"
    assert _run(first, clean, "c1").returncode == 0
    assert _run(second, clean, "c2").returncode == 0

    lake = tmp_path / "lake"
    assert _run(first, lake, "k1").returncode == 0
    killed = _run(second, lake, "k2", env={"INSIGHTS_LINK_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    rerun = _run(second, lake, "k3")
    assert rerun.returncode == 0, rerun.stderr
    ds = lake / "EngagementInsights"
    assert _state(lake) == _state(clean)
    assert parquet_files(ds) == manifest_locations(ds), "unreferenced Parquet left behind"
    assert not (ds / "_staging").exists() or not any((ds / "_staging").rglob("*"))
    ids = read_activities(ds)["ActivityId"].to_pylist()
    assert ids == sorted(set(ids)) == ["a", "b", "c", "d"]


def test_killed_first_run_leaves_nothing_a_reader_can_see(tmp_path, inputs):
    first, _ = inputs
    lake = tmp_path / "lake"
    assert _run(first, lake, "k1", env={"INSIGHTS_LINK_KILL_AT": "after_moves"}).returncode == -signal.SIGKILL
    ds = lake / "EngagementInsights"
    assert not (ds / "default.manifest.cdm.json").exists()
    assert _run(first, lake, "k2").returncode == 0
    assert parquet_files(ds) == manifest_locations(ds)
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b"]
