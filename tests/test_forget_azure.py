"""``insights-link forget`` on ADLS Gen2 (stock Azurite), both table formats: the customer's rows
and dead letters leave the lake, ``--vacuum`` deletes the replaced blobs, other rows stay."""

from __future__ import annotations

import gzip

import pytest

from conftest import event, run_cli, write_jsonl
from faults.lake_checks import committed_ids
from insights_link.storage import open_storage

pytestmark = pytest.mark.timeout(600)
DS = "EngagementInsights"


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_forget_on_azure(tmp_path, azure_lake, fmt):
    source = write_jsonl(
        tmp_path / "e.jsonl",
        [
            event("g1", user="gone"),
            event("g2", user="gone", ts="2024-05-02T10:00:00Z"),
            event("s1", user="stays"),
            event("bad", user="gone", uri="not a uri"),
        ],
    )
    proc = run_cli("export", "--input", str(source), "--output", azure_lake, "--table-format", fmt)
    assert proc.returncode == 0, proc.stderr
    forget = run_cli("forget", "--lake", azure_lake, "--customer-id", "gone", "--vacuum", "--run-id", "f1")
    assert forget.returncode == 0, forget.stderr
    assert "2 row(s) and 1 dead letter(s) removed" in forget.stdout
    assert committed_ids(azure_lake) == ["s1"]  # and no replaced file left behind
    storage = open_storage(azure_lake)
    for obj in storage.list(f"{DS}/_deadletter"):
        assert b"gone" not in gzip.decompress(storage.read_bytes(obj.key))
    assert storage.exists(f"{DS}/_runs/f1.json")
