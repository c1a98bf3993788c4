"""Continuous export with the landing folder and the lake on ADLS Gen2 (stock Azurite): blobs
dropped while the watcher runs, an append blob growing between polls (its ETag and size change),
duplicates and bad records, a SIGKILL mid-window and a restart that converges."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from azure.storage.blob import BlobServiceClient

from conftest import event, run_cli
from faults.lake_checks import committed_ids
from test_watch import Watcher, _events, _lines, _no_watcher_outlives_its_test  # noqa: F401

pytestmark = pytest.mark.timeout(600)
LEASE = {"INSIGHTS_LINK_LEASE_SECONDS": "15"}  # a killed watcher's lease lapses sooner


def _container(url: str):
    name = url.split("://", 1)[1].split("@", 1)[0]
    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    container = service.get_container_client(name)
    if not container.exists():
        container.create_container()
    return container


def _landing(azure_lake: str) -> str:
    return azure_lake.rsplit("/", 1)[0] + "/landing"


def test_watcher_on_azure_commits_complete_blobs_once(azure_lake):
    container = _container(azure_lake)
    for n in range(3):
        container.upload_blob(f"landing/a{n}.jsonl", _lines(_events(f"a{n}_", 4)))
    w = Watcher(
        *["--input", _landing(azure_lake), "--output", azure_lake, "--interval", "1"],
        *["--max-window-files", "2", "--run-id", "az"],
    )
    first, second = w.window(), w.window()
    assert (first["files"], second["files"], first["written"] + second["written"]) == (2, 1, 12)
    # An append blob written in pieces: committed only once it stopped changing, whole.
    growing = container.get_blob_client("landing/grow.jsonl")
    growing.create_append_blob()
    data = _lines(_events("g", 20))
    for start, end in [(0, 300), (300, 777), (777, len(data))]:
        growing.append_block(data[start:end])
        w.wait_for(lambda e: e.get("message", "").startswith("poll:") and "1 changing" in e["message"])
    third = w.window()
    assert (third["files"], third["records"], third["written"], third["rejected"]) == (1, 20, 20, 0)
    # A copy of a committed blob and a blob with bad records.
    container.upload_blob("landing/copy.jsonl", _lines(_events("a0_", 4)))
    container.upload_blob(
        "landing/bad.jsonl", _lines([*_events("b", 2), event("b9", ts="yesterday")]) + b"not json\n"
    )
    fourth = w.windows(2)
    assert (fourth["written"], fourth["duplicates"], fourth["rejected"]) == (2, 4, 2)
    code, out = w.stop()
    windows = 3 + fourth["windows"]
    assert code == 0 and out[-1]["windows"] == windows
    ids = committed_ids(azure_lake)
    assert len(ids) == len(set(ids)) == 12 + 20 + 2
    status = run_cli("status", "--lake", azure_lake, "--json")
    assert status.returncode == 0, status.stderr
    watched = json.loads(status.stdout)["data_sources"][0]["watch"]
    assert watched["last_window"]["run_id"] == f"az-w{windows:04d}" and watched["waiting_files"] == 0


def test_sigkill_mid_window_on_azure_then_restart_converges(azure_lake):
    container = _container(azure_lake)
    for n in range(2):
        container.upload_blob(f"landing/f{n}.jsonl", _lines(_events(f"f{n}_", 5)))
    common = [
        *["export", "--watch", "--input", _landing(azure_lake), "--output", azure_lake],
        *["--table-format", "delta", "--interval", "0.2"],
    ]
    killed = run_cli(*common, env={"INSIGHTS_LINK_KILL_AT": "after_staged_file", **LEASE})
    assert killed.returncode == -signal.SIGKILL
    restarted = run_cli(*common, "--until-idle", "--lock-wait", "120", "--log-format", "json", env=LEASE)
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(restarted.stdout.splitlines()[-1])["windows"] == 1
    assert committed_ids(azure_lake) == sorted(f"f{n}_{i}" for n in range(2) for i in range(5))


def test_watcher_survives_a_storage_outage_between_windows(azurite, azure_lake):
    """Azurite goes away between windows: each failed poll is a warning and is retried with a
    growing delay; once storage answers again the watcher commits what arrived, exactly once."""
    container = _container(azure_lake)
    container.upload_blob("landing/a.jsonl", _lines(_events("a", 3)))
    w = Watcher(
        *["--input", _landing(azure_lake), "--output", azure_lake, "--interval", "0.3", "--run-id", "out"],
        env={"INSIGHTS_LINK_AZURE_RETRIES": "0"},
    )
    assert w.window()["written"] == 3
    azurite.stop()
    try:
        failed = w.wait_for(lambda e: e.get("level") == "WARNING" and "retrying in" in e.get("message", ""))
        w.wait_for(lambda e: "retrying in" in e.get("message", "") and "attempt 2" in e["message"])
    finally:
        azurite.start()
    assert "poll failed (attempt 1" in failed["message"]
    _container(azure_lake).upload_blob("landing/b.jsonl", _lines(_events("b", 2)))
    assert w.window()["written"] == 2
    code, out = w.stop()
    assert code == 0 and out[-1]["windows"] == 2, "".join(w.stderr)
    assert any("storage answers again" in e.get("message", "") for e in w.seen)
    assert committed_ids(azure_lake) == ["a0", "a1", "a2", "b0", "b1"]


def test_watcher_with_refused_credentials_ends_at_once_with_one_line(azure_lake):
    """A permanent failure (a wrong account key) is not retried: one line, no traceback."""
    bad = os.environ["AZURE_STORAGE_CONNECTION_STRING"].replace("AccountKey=", "AccountKey=AAAA", 1)
    done = run_cli(
        *["export", "--watch", "--input", _landing(azure_lake), "--output", azure_lake, "--interval", "0.2"],
        env={"AZURE_STORAGE_CONNECTION_STRING": bad},
        timeout=120,
    )
    assert done.returncode in (1, 2), done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "retrying in" not in done.stderr
    assert lines[-1].startswith("insights-link: ") and "AccountKey=AAAA" not in done.stderr


def test_a_frozen_watcher_cannot_commit_after_another_took_over(azure_lake, tmp_path):
    """kill -STOP a watcher inside its window (staged, before the commit point); its lease lapses,
    a second watcher takes the lock and commits the files; the frozen one, woken, finds its lock
    lost, commits nothing and carries on. Every record is committed once."""
    container = _container(azure_lake)
    container.upload_blob("landing/a.jsonl", _lines(_events("a", 3)))
    common = ["--input", _landing(azure_lake), "--output", azure_lake, "--interval", "0.2"]
    pause = tmp_path / "pause"
    frozen = Watcher(
        *common,
        "--run-id",
        "frozen",
        env={"INSIGHTS_LINK_PAUSE_AT": "before_commit", "INSIGHTS_LINK_PAUSE_FILE": str(pause), **LEASE},
    )
    deadline = time.monotonic() + 120
    while not pause.exists():
        assert frozen.proc.poll() is None and time.monotonic() < deadline, "".join(frozen.stderr)
        time.sleep(0.05)
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        other = run_cli(
            *["export", "--watch", *common, "--until-idle", "--lock-wait", "120", "--run-id", "other"],
            *["--log-format", "json"],
            env=LEASE,
        )
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        pause.unlink(missing_ok=True)
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout.splitlines()[-1])["windows"] == 1
    frozen.wait_for(lambda e: "retrying in" in e.get("message", "") and "frozen-w0001" in e["message"])
    code, out = frozen.stop()
    assert code == 0 and out[-1]["windows"] == 0, "".join(frozen.stderr)
    assert committed_ids(azure_lake) == ["a0", "a1", "a2"]
