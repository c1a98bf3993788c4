"""Dead letters as a working set and replay on an ``abfss://`` lake (stock Azurite), both table
formats: the round trip export -> fix -> replay writes the fixed records once, resolves their
letters, leaves the unfixed ones open with their new reason, deletes nothing under
``_deadletter/``, and a replay killed after its commit point converges on the next run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from faults.lake_checks import committed_ids
from insights_link.storage import open_storage
from test_dead_letter_recovery import DS, FIXER, _events, by_reason, listing, replay

pytestmark = pytest.mark.timeout(600)
LEASE = {"INSIGHTS_LINK_LEASE_SECONDS": "15"}  # a killed run's lease lapses sooner


@pytest.fixture(params=["cdm", "delta"])
def fmt(request) -> str:
    return request.param


def _deadletter_objects(lake: str) -> dict[str, str]:
    storage = open_storage(lake)
    return {o.key: o.version for o in storage.list(f"{DS}/_deadletter")}


def _ledger(lake: str) -> list[dict]:
    storage = open_storage(lake)
    out = []
    for o in storage.list(f"{DS}/_deadletter/_resolutions"):
        out += [json.loads(line) for line in storage.read_bytes(o.key).splitlines()]
    return out


def _start(tmp_path, azure_lake: str, fmt: str):
    args = ["--input", str(_events(tmp_path)), "--output", azure_lake, "--run-id", "r1"]
    proc = run_cli("export", *args, "--table-format", fmt)
    assert proc.returncode == 0, proc.stderr
    exported = tmp_path / "letters.jsonl"
    assert listing(azure_lake, "--export", str(exported))["export"]["records"] == 6
    subprocess.run([sys.executable, "-c", FIXER, str(exported)], check=True, cwd=REPO)
    return exported


def test_round_trip_on_azure(tmp_path, azure_lake, fmt):
    fixed = _start(tmp_path, azure_lake, fmt)
    before = _deadletter_objects(azure_lake)
    proc = replay(fixed, azure_lake, fmt, "rp1")
    assert proc.returncode == 0, proc.stderr
    assert committed_ids(azure_lake) == ["a", "b", "d", "f"]
    report = listing(azure_lake)
    assert (report["total"]["open"], report["total"]["resolved"]) == (3, 3)
    assert by_reason(report) == {
        "malformed": (1, 0),
        "missing_field": (1, 1),
        "invalid_timestamp": (1, 0),
        "invalid_uri": (0, 2),
    }
    outcomes = sorted(r["outcome"] for r in _ledger(azure_lake) if r["status"] == "resolved")
    assert outcomes == ["duplicate", "written", "written"]
    after = _deadletter_objects(azure_lake)
    assert {k: after[k] for k in before} == before  # nothing deleted or rewritten
    assert sorted(set(after) - set(before)) == [
        f"{DS}/_deadletter/_resolutions/rp1.jsonl",
        f"{DS}/_deadletter/rp1.jsonl.gz",
    ]
    # replaying again writes nothing and resolves nothing new
    again = replay(fixed, azure_lake, fmt, "rp2", "--reprocess")
    assert again.returncode == 0, again.stderr
    assert committed_ids(azure_lake) == ["a", "b", "d", "f"]
    assert [r["replay_run"] for r in _ledger(azure_lake) if r["status"] == "resolved"] == ["rp1"] * 3
    final = listing(azure_lake)
    assert (final["total"]["open"], final["total"]["resolved"]) == (3, 3)


@pytest.mark.parametrize("step", ["before_manifest", "replay_before_resolutions"])
def test_killed_replay_converges_on_azure(tmp_path, azure_lake, fmt, step):
    fixed = _start(tmp_path, azure_lake, fmt)
    killed = replay(fixed, azure_lake, fmt, "k1", env={"INSIGHTS_LINK_KILL_AT": step, **LEASE})
    assert killed.returncode == -signal.SIGKILL
    # the lease of the killed run must lapse before the next run can take the lock
    rerun = replay(fixed, azure_lake, fmt, "k2", "--lock-wait", "120", env=LEASE)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(azure_lake) == ["a", "b", "d", "f"]
    final = listing(azure_lake)
    assert (final["total"]["open"], final["total"]["resolved"]) == (3, 3)
    storage = open_storage(azure_lake)
    assert not storage.list(f"{DS}/_state/replays")
    assert not storage.list(f"{DS}/_staging")
