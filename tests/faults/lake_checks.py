"""Invariants every fault test checks on a data source, local or on Azurite, read back with the
tool's own storage layer and pyarrow: every file the manifest lists exists and is readable, no
ActivityId twice, and no Parquet file the exporter wrote is left unreferenced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import start_cli
from insights_link.storage import open_storage

REPO = Path(__file__).resolve().parents[2]


def committed_locations(storage, data_source: str = "EngagementInsights") -> list[str]:
    """Every Parquet file the committed state lists, relative to the data source: the CDM
    manifest's partitions, or (no manifest) every Delta table's files read with ``deltalake``."""
    manifest_key = f"{data_source}/default.manifest.cdm.json"
    if storage.exists(manifest_key):
        doc = json.loads(storage.read_bytes(manifest_key))
        return sorted(
            p["location"]
            for e in doc["entities"]
            for p in e["dataPartitions"] + e.get("incrementalPartitions", [])
        )
    from deltalake import DeltaTable

    listed = []
    for table in storage.folders(data_source):
        if table.startswith("_") or "_delta_log" not in storage.folders(f"{data_source}/{table}"):
            continue
        uri, options = storage.external(f"{data_source}/{table}")
        paths = pa.table(DeltaTable(uri, storage_options=options).get_add_actions(flatten=True))["path"]
        listed.extend(f"{table}/{p}" for p in paths.to_pylist())
    return sorted(listed)


def committed_ids(
    lake_url: str, data_source: str = "EngagementInsights", *, settled: bool = True
) -> list[str]:
    """Every ActivityId the committed state references (sorted, duplicates kept; CDM manifest
    or Delta logs), after checking that each listed file exists and (``settled``: no run is
    mid-way or dead) that no exporter-written Parquet file is unreferenced."""
    storage = open_storage(lake_url)
    listed = committed_locations(storage, data_source)
    on_disk = sorted(
        o.key[len(data_source) + 1 :]
        for o in storage.list(data_source)
        if o.key.endswith(".parquet") and "/_" not in "/" + o.key[len(data_source) + 1 :]
    )
    missing = sorted(set(listed) - set(on_disk))
    assert not missing, f"the committed state lists files that do not exist: {missing}"
    assert not settled or on_disk == listed, (
        f"unreferenced Parquet files: {sorted(set(on_disk) - set(listed))}"
    )
    ids: list[str] = []
    for location in listed:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(f"{data_source}/{location}")))
        ids.extend(table["ActivityId"].to_pylist())
    return sorted(ids)


def start_export(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``insights-link export`` as a background process (stdout/stderr captured as text)."""
    return start_cli("export", *args, env=env)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until a failpoint's pause file appears (the run reached that step) or the run ends."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before its pause point:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach its pause point within {timeout} s")
        time.sleep(0.05)


def freeze(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGSTOP)


def thaw(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGCONT)


def paused_export(step: str, pause: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``insights-link export`` started with a failpoint pause at ``step``; returns once the run
    sits there (the pause file exists). Delete the file to let it go on."""
    run = start_export(
        *args, env={**(env or {}), "INSIGHTS_LINK_PAUSE_AT": step, "INSIGHTS_LINK_PAUSE_FILE": str(pause)}
    )
    wait_for_file(pause, run)
    return run
