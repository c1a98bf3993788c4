"""Two runs at once against one data source on Azurite: the blob lease serializes them."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient

from conftest import event, start_cli, write_jsonl


def _container(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0]


@pytest.mark.timeout(600)
def test_concurrent_runs_on_one_azure_data_source(tmp_path, azure_lake):
    first = write_jsonl(tmp_path / "in1" / "e.jsonl", [event(f"a{i}") for i in range(40)] + [event("shared")])
    second = write_jsonl(
        tmp_path / "in2" / "e.jsonl", [event(f"b{i}") for i in range(40)] + [event("shared")]
    )
    procs = [
        start_cli("export", "--input", str(src), "--output", azure_lake, "--lock-wait", "300")
        for src in (first, second)
    ]
    results = [p.communicate(timeout=500) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results

    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    container = service.get_container_client(_container(azure_lake))
    names = [b.name for b in container.list_blobs(name_starts_with="lake/EngagementInsights/")]
    import json

    manifest = json.loads(
        container.download_blob("lake/EngagementInsights/default.manifest.cdm.json").readall()
    )
    locations = sorted(p["location"] for e in manifest["entities"] for p in e["dataPartitions"])
    data = sorted(
        n.split("EngagementInsights/", 1)[1] for n in names if n.endswith(".parquet") and "/_" not in n
    )
    assert data == locations  # nothing unreferenced, nothing missing
    tables = [
        pq.read_table(pa.BufferReader(container.download_blob(f"lake/EngagementInsights/{loc}").readall()))
        for loc in locations
    ]
    ids = sorted(pa.concat_tables(tables)["ActivityId"].to_pylist())
    assert ids == sorted({f"a{i}" for i in range(40)} | {f"b{i}" for i in range(40)} | {"shared"})
    reports = [json.loads(container.download_blob(n).readall()) for n in names if "/_runs/" in n]
    assert sorted(r["status"] for r in reports) == ["committed", "committed"]
    assert sum(r["duplicates_dropped"] for r in reports) == 1
