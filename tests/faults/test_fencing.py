"""Fencing: a run that lost the data source's lock can never make a commit visible, delete or
move another run's files, or report success.

Each test freezes or stalls run A at a step of its commit, lets run B take the data source over
and commit, then lets A go on. Afterwards every file the manifest lists exists, no id is there
twice, and re-running A's command converges to exactly the union of both inputs.
"""

from __future__ import annotations

import os
import shutil

import pytest
from lake_checks import committed_ids, freeze, paused_export, start_export, thaw
from stall_proxy import StallProxy

from azurite import connection_string
from conftest import event, run_cli, write_jsonl

A_IDS = [f"a{i}" for i in range(30)] + ["shared"]
B_IDS = [f"b{i}" for i in range(30)] + ["shared"]
LEASE = {"INSIGHTS_LINK_LEASE_SECONDS": "15", "INSIGHTS_LINK_AZURE_READ_TIMEOUT": "120"}


@pytest.fixture
def inputs(tmp_path):
    days = ["2024-05-01T10:00:00Z", "2024-05-02T10:00:00Z"]
    a = write_jsonl(tmp_path / "in_a" / "a.jsonl", [event(i, ts=days[n % 2]) for n, i in enumerate(A_IDS)])
    b = write_jsonl(tmp_path / "in_b" / "b.jsonl", [event(i, ts=days[n % 2]) for n, i in enumerate(B_IDS)])
    base = write_jsonl(tmp_path / "in_base" / "base.jsonl", [event("base1"), event("base2")])
    return a, b, base


def _converged(lake: str, a, expected_extra=()) -> None:
    """Re-running A's command commits what A lost; the lake then holds exactly the union."""
    rerun = run_cli("export", "--input", str(a), "--output", lake, "--lock-wait", "120", env=LEASE)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(lake) == sorted(set(A_IDS) | set(B_IDS) | set(expected_extra))


# -- local lakes: the flock can't lapse, but the lock file can be removed -----------------------


@pytest.mark.parametrize("step", ["after_staged_file", "after_first_move", "before_manifest"])
def test_local_frozen_run_keeps_the_lock_and_commits_after_thaw(step, tmp_path, inputs):
    """SIGSTOP keeps a local flock: a second run waits and exits 4; the frozen run, thawed,
    commits; then the second run commits too."""
    a, b, _ = inputs
    lake = str(tmp_path / "lake")
    pause = tmp_path / "pause"
    run_a = paused_export(
        step,
        pause,
        *("--input", str(a), "--output", lake, "--block-records", "5"),
    )
    freeze(run_a)
    pause.unlink()
    try:
        busy = run_cli("export", "--input", str(b), "--output", lake, "--lock-wait", "1")
        assert busy.returncode == 4, busy.stderr
        assert "held by pid" in busy.stderr  # says who holds it
    finally:
        thaw(run_a)
    out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 0, err
    assert run_cli("export", "--input", str(b), "--output", lake).returncode == 0
    assert committed_ids(lake) == sorted(set(A_IDS) | set(B_IDS))


@pytest.mark.parametrize("step", ["after_first_move", "before_manifest"])
def test_local_run_whose_lock_file_was_removed_cannot_commit(step, tmp_path, inputs):
    """The tester's case: A's lock file is removed while A sits just before its commit; B locks
    a new file, rolls A back and commits. A then fails (lock lost, or its conditional manifest
    write refused) without touching B's files."""
    a, b, base = inputs
    lake = tmp_path / "lake"
    assert run_cli("export", "--input", str(base), "--output", str(lake)).returncode == 0
    pause = tmp_path / "pause"
    run_a = paused_export(
        step,
        pause,
        *("--input", str(a), "--output", str(lake), "--block-records", "5"),
    )
    (lake / "EngagementInsights" / "_lock").unlink()
    run_b = run_cli("export", "--input", str(b), "--output", str(lake))
    assert run_b.returncode == 0, run_b.stderr
    assert committed_ids(str(lake)) == sorted(set(B_IDS) | {"base1", "base2"})

    pause.unlink()
    out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 1, err
    assert "nothing of this run was committed" in err or "lost the lock" in err, err
    assert "Traceback" not in err
    assert committed_ids(str(lake)) == sorted(set(B_IDS) | {"base1", "base2"})  # B intact
    _converged(str(lake), a, {"base1", "base2"})


def test_local_commit_point_is_a_compare_and_swap(tmp_path, inputs):
    """Even when the lock check passes, a manifest that changed since the run planned is not
    overwritten: the conditional write refuses it."""
    from insights_link.storage import PreconditionFailed
    from insights_link.storage.local import LocalStorage

    storage = LocalStorage(str(tmp_path / "s"))
    _, v0 = storage.read_versioned("m.json")
    assert v0 is None
    v1 = storage.write_if("m.json", b"one", None)
    with pytest.raises(PreconditionFailed):
        storage.write_if("m.json", b"two", None)
    v2 = storage.write_if("m.json", b"one", v1)  # same bytes, new version
    assert v2 != v1
    with pytest.raises(PreconditionFailed):
        storage.write_if("m.json", b"stale", v1)
    assert storage.read_versioned("m.json") == (b"one", v2)


# -- Azure: a lease lapses while its holder is frozen or stalled ---------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("step", ["after_first_move", "before_manifest"])
def test_azure_frozen_run_whose_lease_lapsed_cannot_commit(step, tmp_path, inputs, azure_lake):
    """SIGSTOP A at a commit step (on an empty lake: its commit would be a first write); its
    lease lapses, B takes over, rolls A back and commits; A, thawed, fails and touches nothing."""
    a, b, _ = inputs
    pause = tmp_path / "pause"
    run_a = paused_export(
        step,
        pause,
        *("--input", str(a), "--output", azure_lake, "--block-records", "5"),
        env=LEASE,
    )
    freeze(run_a)
    pause.unlink()
    try:
        run_b = run_cli("export", "--input", str(b), "--output", azure_lake, "--lock-wait", "120", env=LEASE)
        assert run_b.returncode == 0, run_b.stderr
        assert committed_ids(azure_lake) == sorted(B_IDS)
    finally:
        thaw(run_a)
    out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 1, err
    assert "nothing of this run was committed" in err, err
    assert committed_ids(azure_lake) == sorted(B_IDS)
    _converged(azure_lake, a)


@pytest.mark.timeout(600)
def test_azure_stalled_manifest_write_lands_late_and_is_refused(tmp_path, inputs, azure_lake, azurite):
    """The tester's case: A's requests hang in a network stall from its manifest write on (the
    proxy holds them, lease renewals included); A's lease lapses; B takes over and commits. The
    held manifest write then reaches the service and is refused (If-Match), so B's rows stay."""
    a, b, base = inputs
    assert run_cli("export", "--input", str(base), "--output", azure_lake).returncode == 0
    trigger = rb"PUT /devstoreaccount1/[^ ]*/EngagementInsights/default\.manifest\.cdm\.json"
    with StallProxy(azurite.port, trigger) as proxy:
        run_a = start_export(
            "--input",
            str(a),
            "--output",
            azure_lake,
            env={**LEASE, "AZURE_STORAGE_CONNECTION_STRING": connection_string(proxy.port)},
        )
        try:
            assert proxy.triggered.wait(180), "run A never reached its manifest write"
            run_b = run_cli(
                "export", "--input", str(b), "--output", azure_lake, "--lock-wait", "120", env=LEASE
            )
            assert run_b.returncode == 0, run_b.stderr
            assert "did not commit; removing what it wrote" in run_b.stderr
        finally:
            proxy.release()
        out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 1, err
    assert "nothing of this run was committed" in err, err
    assert committed_ids(azure_lake) == sorted(set(B_IDS) | {"base1", "base2"})
    _converged(azure_lake, a, {"base1", "base2"})


def test_stall_proxy_passes_traffic_until_triggered(azurite, tmp_path):
    """The proxy itself: unrelated requests pass, so the stall starts exactly at the trigger."""
    from azure.storage.blob import BlobServiceClient

    with StallProxy(azurite.port, rb"PUT [^ ]*never-matches") as proxy:
        service = BlobServiceClient.from_connection_string(connection_string(proxy.port))
        container = service.get_container_client(f"proxy{os.getpid()}")
        container.create_container()
        container.upload_blob("x", b"123")
        assert container.download_blob("x").readall() == b"123"
        assert not proxy.triggered.is_set()
        container.delete_container()
    shutil.rmtree(tmp_path, ignore_errors=True)
