"""Storage faults around the commit point and under the data source: the run finds out whether
its commit is visible and says so; a full disk fails a run cleanly; recovery deletes only what
the exporter wrote."""

from __future__ import annotations

import signal
import subprocess

import pytest
from lake_checks import committed_ids, paused_export
from stall_proxy import StallProxy

from azurite import connection_string
from conftest import event, run_cli, run_killed, run_reports, write_jsonl

IDS = [f"e{i}" for i in range(20)]


@pytest.fixture
def source(tmp_path):
    return write_jsonl(tmp_path / "in" / "e.jsonl", [event(i) for i in IDS])


@pytest.mark.timeout(300)
def test_lost_response_to_the_manifest_write_is_found_committed(tmp_path, source, azure_lake, azurite):
    """The manifest write reaches the service but its response is lost (connection cut): the
    retried conditional write is refused, and the run asks the manifest and finds itself
    committed, instead of reporting a failure (or undoing visible data)."""
    base = write_jsonl(tmp_path / "base" / "b.jsonl", [event("base")])
    assert run_cli("export", "--input", str(base), "--output", azure_lake).returncode == 0
    trigger = rb"PUT /devstoreaccount1/[^ ]*/EngagementInsights/default\.manifest\.cdm\.json"
    with StallProxy(azurite.port, trigger, drop_response=True) as proxy:
        run = run_cli(
            "export",
            "--input",
            str(source),
            "--output",
            azure_lake,
            env={"AZURE_STORAGE_CONNECTION_STRING": connection_string(proxy.port)},
        )
        assert proxy.triggered.is_set()
    assert run.returncode == 0, run.stderr
    assert "committed" in run.stdout
    assert committed_ids(azure_lake) == sorted([*IDS, "base"])


@pytest.mark.timeout(300)
def test_storage_outage_right_after_the_commit_point_says_committed(tmp_path, source, azure_lake, azurite):
    """Azurite stops just after the manifest write: the run exits 1 saying its data is
    committed (not "nothing committed"); the next run finishes it and skips its inputs."""
    pause = tmp_path / "pause"
    run = paused_export(
        "after_manifest",
        pause,
        "--input",
        str(source),
        "--output",
        azure_lake,
    )
    azurite.stop()
    try:
        pause.unlink()
        out, err = run.communicate(timeout=240)
    finally:
        azurite.start()
    assert run.returncode == 1, err
    (line,) = [x for x in err.splitlines() if x.startswith("insights-link:")]
    assert "the run committed" in line and "nothing committed" not in line, line
    assert committed_ids(azure_lake) == sorted(IDS)
    rerun = run_cli("export", "--input", str(source), "--output", azure_lake)
    assert rerun.returncode == 0, rerun.stderr
    assert "died after its commit point; finishing it" in rerun.stderr
    assert "inputs skipped" in rerun.stdout
    assert committed_ids(azure_lake) == sorted(IDS)


def test_recovery_never_deletes_files_it_did_not_write(tmp_path, source):
    """A user's Parquet files anywhere under the data source (an archive folder, next to ours in
    a table folder, named almost like ours) survive a rollback of a killed run."""
    lake = tmp_path / "lake"
    ds = lake / "EngagementInsights"
    first = write_jsonl(tmp_path / "first" / "f.jsonl", [event("f1")])
    assert run_cli("export", "--input", str(first), "--output", str(lake), "--run-id", "r1").returncode == 0
    foreign = [
        ds / "Archive" / "2023" / "history.parquet",
        ds / "WebLog" / "FullData" / "2024" / "05" / "01" / "mine.parquet",
        ds / "WebLog" / "FullData" / "2024" / "05" / "01" / "WebLog_20240501_someone_000.parquet",
        ds / "Other" / "Other_20240501_r2_000.parquet",
    ]
    for n, path in enumerate(foreign):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"user data %d" % n)
    killed = run_killed(
        "after_moves", "export", "--input", str(source), "--output", str(lake), "--run-id", "r2"
    )
    assert killed.returncode == -signal.SIGKILL
    assert run_cli("export", "--input", str(source), "--output", str(lake), "--run-id", "r3").returncode == 0
    for n, path in enumerate(foreign):
        assert path.read_bytes() == b"user data %d" % n, f"{path} was touched"
    assert [p for p in ds.rglob("*_r2_*.parquet")] == [foreign[3]]  # only the foreign look-alike
    ids = sorted(r["ActivityId"] for r in __import__("conftest").read_activities(ds).to_pylist())
    assert ids == sorted([*IDS, "f1"])


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.timeout(300)
def test_full_disk_fails_the_run_cleanly_and_a_rerun_converges(tmp_path):
    """A lake on a 1 MiB tmpfs: the run fails with one line naming the cause, commits nothing,
    leaves the lake readable; with room again, the rerun commits everything once."""
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "1m"):
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    try:
        ids = [f"x{i:05d}" for i in range(6000)]
        src = write_jsonl(
            tmp_path / "in" / "big.jsonl", [event(i, uri=f"https://contoso.com/{i}/{'p' * 200}") for i in ids]
        )
        lake = str(mount / "lake")
        full = run_cli("export", "--input", str(src), "--output", lake)
        assert full.returncode == 1, full.stderr
        (line,) = [x for x in full.stderr.splitlines() if x.startswith("insights-link:")]
        assert "No space left on device" in line and "Traceback" not in full.stderr, full.stderr
        assert committed_ids(lake) == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        rerun = run_cli("export", "--input", str(src), "--output", lake)
        assert rerun.returncode == 0, rerun.stderr
        assert committed_ids(lake) == sorted(ids)
        assert [r["status"] for r in run_reports(mount / "lake" / "EngagementInsights")].count(
            "committed"
        ) == 1
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
