"""Delta tables on ADLS Gen2, tested against stock Azurite: delta-rs reaches the lake with the
same credentials as the Blob SDK (here the connection string), the rows equal the local export,
a killed run converges, and a run whose lease lapsed while it was frozen or stalled can't commit
to a table's log."""

from __future__ import annotations

import signal

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from lake_checks import committed_ids, freeze, paused_export, start_export, thaw
from stall_proxy import StallProxy

from azurite import connection_string
from conftest import REPO, event, run_cli, write_jsonl
from insights_link.storage import open_storage

pytestmark = pytest.mark.timeout(600)
SAMPLE = REPO / "sample_data" / "exports"
FIXED = ("--run-id", "r1", "--run-time", "2026-11-28T12:00:00Z", "--table-format", "delta")
LEASE = {"INSIGHTS_LINK_LEASE_SECONDS": "15", "INSIGHTS_LINK_AZURE_READ_TIMEOUT": "120"}
A_IDS = [f"a{i}" for i in range(20)] + ["shared"]
B_IDS = [f"b{i}" for i in range(20)] + ["shared"]


def azure_table(lake_url: str, table: str = "WebLog") -> DeltaTable:
    """The Delta table on Azurite, opened by deltalake with the tool's own storage options."""
    uri, options = open_storage(lake_url).external(f"EngagementInsights/{table}")
    return DeltaTable(uri, storage_options=options)


def _rows(table: pa.Table) -> list[dict]:
    return table.sort_by("ActivityId").to_pylist()


@pytest.fixture
def inputs(tmp_path):
    days = ["2024-05-01T10:00:00Z", "2024-05-02T10:00:00Z"]
    a = write_jsonl(tmp_path / "in_a" / "a.jsonl", [event(i, ts=days[n % 2]) for n, i in enumerate(A_IDS)])
    b = write_jsonl(tmp_path / "in_b" / "b.jsonl", [event(i, ts=days[n % 2]) for n, i in enumerate(B_IDS)])
    return a, b


def test_delta_on_azure_equals_the_local_delta_export(tmp_path, azure_lake):
    local = run_cli("export", "--input", str(SAMPLE), "--output", str(tmp_path / "local"), *FIXED)
    assert local.returncode == 0, local.stderr
    remote = run_cli("export", "--input", str(SAMPLE), "--output", azure_lake, *FIXED)
    assert remote.returncode == 0, remote.stderr
    here = DeltaTable(str(tmp_path / "local" / "EngagementInsights" / "WebLog")).to_pyarrow_table()
    there = azure_table(azure_lake)
    assert _rows(there.to_pyarrow_table()) == _rows(here)
    assert there.protocol().min_reader_version == 1
    assert [h.get("insights_link.run_id") for h in there.history()][0] == "r1"
    ids = committed_ids(azure_lake)
    assert ids == sorted(here["ActivityId"].to_pylist())  # every listed file exists, none orphaned
    again = run_cli("export", "--input", str(SAMPLE), "--output", azure_lake, "--table-format", "delta")
    assert again.returncode == 0 and "inputs skipped" in again.stdout


@pytest.mark.parametrize("step", ["after_first_move", "before_manifest", "after_manifest"])
def test_killed_delta_run_on_azure_then_rerun_converges(tmp_path, azure_lake, inputs, step):
    a, _ = inputs
    args = ("export", "--input", str(a), "--output", azure_lake, "--table-format", "delta")
    killed = run_cli(*args, env={"INSIGHTS_LINK_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(azure_lake) == sorted(A_IDS)


def test_convert_on_azure_both_ways_keeps_the_rows(tmp_path, azure_lake, inputs):
    a, _ = inputs
    assert run_cli("export", "--input", str(a), "--output", azure_lake).returncode == 0
    before = committed_ids(azure_lake)
    to_delta = run_cli("convert", "--lake", azure_lake, "--to", "delta")
    assert to_delta.returncode == 0, to_delta.stderr
    assert not open_storage(azure_lake).exists("EngagementInsights/default.manifest.cdm.json")
    assert sorted(azure_table(azure_lake).to_pyarrow_table()["ActivityId"].to_pylist()) == before
    to_cdm = run_cli("convert", "--lake", azure_lake, "--to", "cdm")
    assert to_cdm.returncode == 0, to_cdm.stderr
    assert committed_ids(azure_lake) == before
    assert not open_storage(azure_lake).list("EngagementInsights/WebLog/_delta_log")


@pytest.mark.parametrize("step", ["after_first_move", "before_manifest"])
def test_frozen_delta_run_whose_lease_lapsed_cannot_commit(step, tmp_path, inputs, azure_lake):
    """SIGSTOP A at a commit step; its lease lapses; B takes over, fences the table, rolls A
    back and commits. A, thawed, fails and commits nothing; re-running A converges."""
    a, b = inputs
    pause = tmp_path / "pause"
    args = ("--output", azure_lake, "--table-format", "delta")
    run_a = paused_export(step, pause, "--input", str(a), *args, env=LEASE)
    freeze(run_a)
    pause.unlink()
    try:
        run_b = run_cli("export", "--input", str(b), *args, "--lock-wait", "120", env=LEASE)
        assert run_b.returncode == 0, run_b.stderr
        assert committed_ids(azure_lake) == sorted(B_IDS)
    finally:
        thaw(run_a)
    _out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 1, err
    assert "nothing of this run was committed" in err, err
    assert committed_ids(azure_lake) == sorted(B_IDS)
    rerun = run_cli("export", "--input", str(a), *args, "--lock-wait", "120", env=LEASE)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(azure_lake) == sorted(set(A_IDS) | set(B_IDS))


def test_stalled_delta_log_write_lands_late_and_is_refused(tmp_path, inputs, azure_lake, azurite):
    """A's requests hang from its write of the table's next log entry on (renewals too); its
    lease lapses; B takes over: fences the table with an empty commit, removes A's files and
    commits. A's held log write then reaches the service and is refused (the entry exists)."""
    a, b = inputs
    base = write_jsonl(tmp_path / "base.jsonl", [event("base1"), event("base2")])
    args = ("--output", azure_lake, "--table-format", "delta")
    assert run_cli("export", "--input", str(base), *args).returncode == 0  # the table exists: v0, v1
    trigger = rb"PUT /devstoreaccount1/[^ ]*/EngagementInsights/WebLog/_delta_log/0+2\.json"
    with StallProxy(azurite.port, trigger) as proxy:
        run_a = start_export(
            "--input",
            str(a),
            *args,
            env={**LEASE, "AZURE_STORAGE_CONNECTION_STRING": connection_string(proxy.port)},
        )
        try:
            assert proxy.triggered.wait(180), "run A never reached its log write"
            run_b = run_cli("export", "--input", str(b), *args, "--lock-wait", "120", env=LEASE)
            assert run_b.returncode == 0, run_b.stderr
            assert "did not commit; removing what it wrote" in run_b.stderr
        finally:
            proxy.release()
        _out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 1, err
    assert "nothing of this run was committed" in err, err
    assert committed_ids(azure_lake) == sorted(set(B_IDS) | {"base1", "base2"})
