"""The lake layer without Beam: the committed-inputs index, partition naming, locking."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from insights_link.lake.commit import Lake, LakeBusy
from insights_link.lake.layout import (
    date_of_partition,
    full_location,
    incremental_location,
    partition_file_name,
)
from insights_link.storage.local import LocalStorage


def _report(run_id, status, *fingerprints):
    return {
        "run_id": run_id,
        "status": status,
        "inputs": [{"fingerprint": f, "status": "processed", "activities": ["T"]} for f in fingerprints],
    }


def test_committed_inputs_index_is_a_cache_of_the_reports(tmp_path):
    storage = LocalStorage(str(tmp_path))
    lake = Lake(storage, "DS")
    for report in (_report("r1", "committed", "a"), _report("r2", "failed", "b")):
        storage.write_bytes(f"DS/_runs/{report['run_id']}.json", json.dumps(report).encode())
    assert lake.committed_inputs() == {"T\ta": "r1"}
    index = json.loads(storage.read_bytes("DS/_state/runs_index.json"))
    assert index["runs"] == ["r1", "r2"]
    # A report written after the index is picked up; the index is not needed to be right.
    storage.write_bytes("DS/_runs/r3.json", json.dumps(_report("r3", "committed", "c")).encode())
    assert lake.committed_inputs() == {"T\ta": "r1", "T\tc": "r3"}
    storage.delete("DS/_state/runs_index.json")
    assert lake.committed_inputs() == {"T\ta": "r1", "T\tc": "r3"}


@pytest.mark.parametrize(
    "table,date,run", [("WebLog", "2024-05-01", "r1"), ("Web_Log_2", "2024-12-31", "20261128T1Z_x")]
)
def test_partition_names_carry_the_event_date(table, date, run):
    name = partition_file_name(table, date, run, 3)
    assert name.endswith("_003.parquet")
    assert date_of_partition(full_location(table, date, name)) == date
    committed = datetime(2026, 11, 28, 14, 59, tzinfo=UTC)
    location = incremental_location(table, committed, name)
    assert location.startswith(f"{table}/IncrementalData/2026/11/28/14/Upserts/")
    assert date_of_partition(location) == date


def test_a_second_holder_of_the_lock_is_refused(tmp_path):
    lake = Lake(LocalStorage(str(tmp_path)), "DS")
    with lake.locked(wait_seconds=0):
        with pytest.raises(LakeBusy, match="DS"), lake.locked(wait_seconds=0):
            pass
    with lake.locked(wait_seconds=0):  # released after the block
        pass
