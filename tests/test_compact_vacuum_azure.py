"""``compact`` and ``vacuum`` on ADLS Gen2, against stock Azurite: the same outcomes as on a local
lake (few files, same rows, old readers served until a vacuum past the retention), a user's files
kept, killed compactions and vacuums converge, real exports compacted."""

from __future__ import annotations

import signal

import pytest

from conftest import event, run_cli, write_jsonl
from faults.lake_checks import committed_ids, committed_locations
from insights_link.storage import open_storage
from test_compact_vacuum import (
    DATES,
    DS,
    at,
    check_compact_and_vacuum,
    cli,
    committed_rows,
    compact,
    parquet_on_storage,
    plant_runs,
    vacuum,
)

pytestmark = [pytest.mark.azurite, pytest.mark.timeout(300)]
SHORT_LEASE = {"INSIGHTS_LINK_LEASE_SECONDS": "15"}  # a killed holder's lease lapses sooner


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_200_small_runs_compact_and_vacuum_on_azure(tmp_path, azure_lake, fmt):
    check_compact_and_vacuum(azure_lake, fmt, tmp_path)


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_vacuum_on_azure_keeps_a_users_files(azure_lake, fmt):
    plant_runs(azure_lake, fmt, runs=8)
    storage = open_storage(azure_lake)
    mine = {
        f"{DS}/WebLog/FullData/2024/05/01/mine.parquet": b"PAR1 not really",
        f"{DS}/WebLog/notes.txt": b"my notes",
        f"{DS}/WebLog/Archive/WebLog_20240501_old_000.parquet": b"right name, wrong folder",
    }
    for key, data in mine.items():
        storage.write_bytes(key, data)
    ids = committed_ids(azure_lake, settled=False)
    compact(azure_lake, "c1", 0)
    # the real clock, so Delta's own vacuum (full) also lists the user's files: they stay
    done = cli("vacuum", "--lake", azure_lake, "--run-id", "v1", "--retain-hours", "0")
    assert len(done["deleted"]) == 8
    assert {key: storage.read_bytes(key) for key in mine} == mine
    for key in mine:
        storage.delete(key)
    assert committed_ids(azure_lake) == ids


@pytest.mark.parametrize(("fmt", "step"), [("cdm", "before_manifest"), ("delta", "after_manifest")])
def test_killed_compaction_and_vacuum_on_azure_converge(azure_lake, fmt, step):
    plant_runs(azure_lake, fmt, runs=12)
    before = committed_rows(azure_lake)
    args = ("compact", "--lake", azure_lake, "--run-id", "k1", "--run-time", at(0))
    killed = run_cli(*args, env={"INSIGHTS_LINK_KILL_AT": step, **SHORT_LEASE})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    compact(azure_lake, "k2", 1)
    assert len(committed_locations(open_storage(azure_lake), DS)) == len(DATES)
    assert committed_rows(azure_lake) == before
    args = ("vacuum", "--lake", azure_lake, "--retain-hours", "0")
    killed = run_cli(*args, env={"INSIGHTS_LINK_KILL_AT": "vacuum_before_delete", **SHORT_LEASE})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert committed_rows(azure_lake) == before
    vacuum(azure_lake, "v2", 2, "--retain-hours", "0")
    assert committed_ids(azure_lake) == sorted(r["ActivityId"] for r in before)
    assert not open_storage(azure_lake).list(f"{DS}/_staging")


def test_real_exports_on_azure_compact_then_vacuum_dry_run_and_for_real(tmp_path, azure_lake):
    for n in range(3):
        source = write_jsonl(
            tmp_path / "in" / f"b{n}.jsonl",
            [event(f"e{n}-{k}", ts=f"2024-05-0{1 + k % 2}T10:00:00Z") for k in range(4)],
        )
        proc = run_cli("export", "--input", str(source), "--output", azure_lake, "--run-time", at(n))
        assert proc.returncode == 0, proc.stderr
    ids = committed_ids(azure_lake)
    report = compact(azure_lake, "c1", 5)
    assert report["tables"]["WebLog"]["files_before"] == 6 and report["tables"]["WebLog"]["files_after"] == 2
    on_disk = parquet_on_storage(azure_lake)
    dry = vacuum(azure_lake, "v1", 6, "--retain-hours", "0", "--dry-run")
    assert len(dry["deleted"]) == 6 and parquet_on_storage(azure_lake) == on_disk
    assert vacuum(azure_lake, "v2", 6)["deleted"] == []  # within the week
    assert len(vacuum(azure_lake, "v3", 5 + 168)["deleted"]) == 6
    assert committed_ids(azure_lake) == ids
