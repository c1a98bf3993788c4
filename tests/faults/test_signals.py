"""Honest endings: SIGINT/SIGTERM end a run with exit 130/143 and one line, no traceback; what
the run wrote is settled (or left for the next run), the next run converges; and no worker
process outlives a launcher killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import time

import pytest
from lake_checks import committed_ids, paused_export

from conftest import event, run_cli, write_jsonl

IDS = [f"e{i}" for i in range(40)]


@pytest.fixture
def source(tmp_path):
    return write_jsonl(tmp_path / "in" / "e.jsonl", [event(i) for i in IDS] + ["not json"])


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("step", ["after_staged_file", "before_commit", "after_first_move", "after_manifest"])
def test_signal_mid_run_exits_with_its_code_and_one_line(step, signum, code, tmp_path, source):
    lake = str(tmp_path / "lake")
    pause = tmp_path / "pause"
    run = paused_export(
        step,
        pause,
        "--input",
        str(source),
        "--output",
        lake,
        "--block-records",
        "5",
    )
    run.send_signal(signum)
    out, err = run.communicate(timeout=120)
    assert run.returncode == code, err
    assert "Traceback" not in err and "Traceback" not in out
    (line,) = [x for x in err.splitlines() if x.startswith("insights-link:")]
    assert f"interrupted by {signal.Signals(signum).name}" in line
    committed = step == "after_manifest"
    assert ("already committed" in line) == committed, line
    # Settled now: the data is there in full or not at all, and nothing is left in staging.
    assert committed_ids(lake) == (sorted(IDS) if committed else [])
    staging = tmp_path / "lake" / "EngagementInsights" / "_staging"
    assert not staging.exists() or not any(staging.rglob("*"))
    rerun = run_cli("export", "--input", str(source), "--output", lake)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(lake) == sorted(IDS)


def _children_of(pid: int) -> set[int]:
    """Every live descendant process of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().decode("ascii", "replace").rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode("ascii", "replace").rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_multiprocess_workers_exit_when_the_launcher_is_killed(tmp_path, source):
    """kill -9 of a multi-processing run: its SDK worker processes notice and exit by themselves."""
    lake = str(tmp_path / "lake")
    pause = tmp_path / "pause"
    run = paused_export(  # a worker is inside a DoFn once this returns
        "after_staged_file",
        pause,
        *("--input", str(source), "--output", lake, "--block-records", "5"),
        *("--direct_running_mode=multi_processing", "--direct_num_workers=2"),
    )
    workers = _children_of(run.pid)
    assert workers, "expected SDK worker processes below the launcher"
    run.kill()
    run.communicate(timeout=60)
    # The worker stays busy in its failpoint (up to 120 s, talking to nobody) unless it notices.
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:  # don't leak them into the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"worker processes outlived their launcher: {survivors}"
    rerun = run_cli("export", "--input", str(source), "--output", lake)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(lake) == sorted(IDS)
