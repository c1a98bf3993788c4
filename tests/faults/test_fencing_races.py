"""Fencing at the exact moment between a lock check and the write it guards.

Run A passes its lock check and is then held (as a descheduled or frozen process would be)
right before one storage call; its lock file is removed, run B takes the data source over and
commits; then A goes on. Whatever A's call was, the data source stays sound: no file a reader
can't use, no schema changed under committed data, no dead letter of an uncommitted run, no
claim of success, and re-running converges.
"""

from __future__ import annotations

import json

import pytest
from lake_checks import committed_ids, start_export, wait_for_file

from conftest import dead_letters, event, run_cli, run_reports, write_jsonl

DAYS = ["2024-05-01T10:00:00Z", "2024-05-02T10:00:00Z", "2024-05-03T10:00:00Z"]


def _held_run(tmp_path, lake, source, hold: str, *extra: str):
    pause = tmp_path / "hold"
    run = start_export(
        "--input",
        str(source),
        "--output",
        str(lake),
        *extra,
        env={"INSIGHTS_LINK_PAUSE_STORAGE": hold, "INSIGHTS_LINK_PAUSE_FILE": str(pause)},
    )
    wait_for_file(pause, run)
    (lake / "EngagementInsights" / "_lock").unlink()
    return run, pause


def _resume(run, pause):
    pause.unlink()
    out, err = run.communicate(timeout=300)
    assert "Traceback" not in err
    return run.returncode, out, err


def test_late_move_of_a_fenced_out_run_leaves_nothing_behind(tmp_path):
    lake = tmp_path / "lake"
    a = write_jsonl(tmp_path / "a" / "a.jsonl", [event(f"a{i}", ts=DAYS[i % 3]) for i in range(9)])
    b = write_jsonl(tmp_path / "b" / "b.jsonl", [event(f"b{i}", ts=DAYS[i % 3]) for i in range(9)])
    run_a, pause = _held_run(tmp_path, lake, a, "move:FullData:2")
    assert run_cli("export", "--input", str(b), "--output", str(lake)).returncode == 0
    code, _out, err = _resume(run_a, pause)
    assert code == 1, err
    assert run_cli("export", "--input", str(a), "--output", str(lake)).returncode == 0
    assert committed_ids(str(lake)) == sorted([f"a{i}" for i in range(9)] + [f"b{i}" for i in range(9)])


def test_fenced_out_run_cannot_redefine_a_table(tmp_path):
    lake = tmp_path / "lake"
    ds = lake / "EngagementInsights"
    a = write_jsonl(tmp_path / "a" / "a.jsonl", [event("a1")])
    b = write_jsonl(tmp_path / "b" / "b.jsonl", [event("b1", Session={"Id": "s"})])
    run_a, pause = _held_run(tmp_path, lake, a, "write_if:WebLog.cdm.json:1")
    assert (
        run_cli(
            "export", "--input", str(b), "--output", str(lake), "--property", "Signal.Session.Id"
        ).returncode
        == 0
    )
    code, _out, err = _resume(run_a, pause)
    assert code == 1, err
    columns = [
        x["name"] for x in json.loads((ds / "WebLog.cdm.json").read_text())["definitions"][0]["hasAttributes"]
    ]
    assert "SignalSessionId" in columns
    again = write_jsonl(tmp_path / "c" / "c.jsonl", [event("c1", Session={"Id": "t"})])
    rerun = run_cli("export", "--input", str(again), "--output", str(lake), "--property", "Signal.Session.Id")
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(str(lake)) == ["b1", "c1"]


def test_run_without_data_that_lost_the_lock_does_not_claim_success(tmp_path):
    """Its commit point is its report: a takeover's conditional "rolled back" report fences it."""
    lake = tmp_path / "lake"
    ds = lake / "EngagementInsights"
    bad = write_jsonl(tmp_path / "a" / "bad.jsonl", ["junk", "{}", '{"Signal": 3}'])
    b = write_jsonl(tmp_path / "b" / "b.jsonl", [event("b1")])
    run_a, pause = _held_run(tmp_path, lake, bad, "write_if:_runs/runA.json:1", "--run-id", "runA")
    assert run_cli("export", "--input", str(b), "--output", str(lake)).returncode == 0
    code, out, err = _resume(run_a, pause)
    assert code == 1 and "committed" not in out, (out, err)
    assert {r["run_id"]: r["status"] for r in run_reports(ds)}["runA"] == "rolled_back"
    rerun = run_cli("export", "--input", str(bad), "--output", str(lake))
    assert rerun.returncode == 0 and "records read:        3" in rerun.stdout, rerun.stdout
    assert sorted(d["position"] for d in dead_letters(ds)) == [1, 2, 3]


@pytest.mark.parametrize("hold", ["open_write:_deadletter:1", "write_bytes:_runs/:1"])
def test_committed_run_held_before_finishing_is_finished_once(tmp_path, hold):
    """A held after its commit point: the takeover rolls it forward; when it goes on, nothing is
    written twice."""
    lake = tmp_path / "lake"
    ds = lake / "EngagementInsights"
    a = write_jsonl(tmp_path / "a" / "a.jsonl", [event("a1"), "junk"])
    b = write_jsonl(tmp_path / "b" / "b.jsonl", [event("b1"), "more junk"])
    run_a, pause = _held_run(tmp_path, lake, a, hold, "--run-id", "runA")
    rerun_b = run_cli("export", "--input", str(b), "--output", str(lake))
    assert rerun_b.returncode == 0, rerun_b.stderr
    _resume(run_a, pause)
    assert committed_ids(str(lake)) == ["a1", "b1"]
    assert sorted(d["payload"] for d in dead_letters(ds)) == ["junk", "more junk"]
    assert {r["run_id"]: r["status"] for r in run_reports(ds)}["runA"] == "committed"
