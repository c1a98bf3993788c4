"""The storage contract against a real Azure account (ADLS Gen2 or plain Blob storage).

Skipped unless ``INSIGHTS_LINK_LIVE_ADLS_URL`` is set, e.g.
``abfss://<filesystem>@<account>.dfs.core.windows.net/<scratch folder>``, with credentials in
the environment as for a normal run (``AZURE_STORAGE_KEY``, ``AZURE_STORAGE_SAS_TOKEN`` or a
DefaultAzureCredential login; do not leave an Azurite ``AZURE_STORAGE_CONNECTION_STRING`` set).
Everything is written below a fresh ``_insights_link_live_test/<id>`` folder and deleted.

Optional:
- ``INSIGHTS_LINK_LIVE_ADLS_EXPECT_HNS=1|0``: assert what ``is_hns_enabled()`` reports.
- ``INSIGHTS_LINK_LIVE_ADLS_GRANT_OID=<Entra object id>``: exercise ``grant_read`` for real
  (needs HNS and an identity allowed to set ACLs, e.g. Storage Blob Data Owner).

This is the only place HNS-only behaviour (ACLs, directory entries in blob listings) is
checked for real; Azurite has no hierarchical namespace.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from azurite import check_storage_contract
from insights_link.storage import join
from insights_link.storage.azure import AzureStorage, LockBusy

LIVE_URL = os.environ.get("INSIGHTS_LINK_LIVE_ADLS_URL", "").strip()
EXPECT_HNS = os.environ.get("INSIGHTS_LINK_LIVE_ADLS_EXPECT_HNS", "").strip()
GRANT_OID = os.environ.get("INSIGHTS_LINK_LIVE_ADLS_GRANT_OID", "").strip()

pytestmark = [
    pytest.mark.live_adls,
    pytest.mark.skipif(not LIVE_URL, reason="set INSIGHTS_LINK_LIVE_ADLS_URL to run"),
]


@pytest.fixture
def live() -> Iterator[tuple[AzureStorage, str]]:
    storage = AzureStorage.from_url(LIVE_URL)
    base = f"_insights_link_live_test/{uuid.uuid4().hex[:12]}"
    try:
        yield storage, base
    finally:
        storage.delete_prefix(base)


def test_live_storage_contract(live: tuple[AzureStorage, str]) -> None:
    storage, base = live
    check_storage_contract(storage, base)


def test_live_hierarchical_namespace_report(live: tuple[AzureStorage, str]) -> None:
    storage, _base = live
    hns = storage.is_hns_enabled()
    assert isinstance(hns, bool)
    if EXPECT_HNS:
        assert hns is (EXPECT_HNS == "1")


def test_live_directory_entries_are_not_objects(live: tuple[AzureStorage, str]) -> None:
    storage, base = live
    storage.write_bytes(join(base, "d/e/f.bin"), b"x")
    assert [o.key for o in storage.list(base)] == [join(base, "d/e/f.bin")]
    assert storage.info(join(base, "d")) is None
    storage.delete_prefix(join(base, "d"))
    assert storage.list(base) == []


def test_live_lease_is_exclusive(live: tuple[AzureStorage, str]) -> None:
    storage, base = live
    with storage.lease(join(base, "run.lock"), seconds=15) as held:
        with pytest.raises(LockBusy), storage.lease(join(base, "run.lock"), seconds=15):
            pass
        held.renew()
    with storage.lease(join(base, "run.lock"), seconds=15):
        pass


@pytest.mark.skipif(not GRANT_OID, reason="set INSIGHTS_LINK_LIVE_ADLS_GRANT_OID to run")
def test_live_grant_read_sets_acls(live: tuple[AzureStorage, str]) -> None:
    storage, base = live
    if not storage.is_hns_enabled():
        pytest.skip("the live account has no hierarchical namespace")
    folder = join(base, "shared")
    storage.write_bytes(join(folder, "sub/data.bin"), b"x")
    storage.grant_read(folder, [GRANT_OID])
    fs = storage._datalake_file_system()
    prefix = storage.location.prefix
    folder_acl = fs.get_directory_client(join(prefix, folder)).get_access_control()["acl"]
    assert f"user:{GRANT_OID}:r-x" in folder_acl
    assert f"default:user:{GRANT_OID}:r-x" in folder_acl
    file_acl = fs.get_file_client(join(prefix, folder, "sub/data.bin")).get_access_control()["acl"]
    assert f"user:{GRANT_OID}:r-x" in file_acl
    parent_acl = fs.get_directory_client(join(prefix, base)).get_access_control()["acl"]
    assert f"user:{GRANT_OID}:--x" in parent_acl or f"user:{GRANT_OID}:r-x" in parent_acl


def test_live_export_end_to_end(live: tuple[AzureStorage, str]) -> None:
    """The whole export into the real account: counts, manifest, exact file set, a skipping rerun."""
    import json as _json

    from conftest import REPO, run_cli

    storage, base = live
    output = LIVE_URL.rstrip("/") + "/" + base
    sample = REPO / "sample_data" / "exports"
    expected = _json.loads((REPO / "sample_data" / "expected.json").read_text())
    first = run_cli("export", "--input", str(sample), "--output", output, "--run-id", "live1")
    assert first.returncode == 0, first.stderr
    report = _json.loads(storage.read_bytes(join(base, "EngagementInsights/_runs/live1.json")))
    for key in ("records_read", "activities_written", "duplicates_dropped", "rejected"):
        assert report[key] == expected[key], key
    manifest = _json.loads(storage.read_bytes(join(base, "EngagementInsights/default.manifest.cdm.json")))
    locations = sorted(p["location"] for e in manifest["entities"] for p in e["dataPartitions"])
    prefix = join(base, "EngagementInsights") + "/"
    data = sorted(
        o.key[len(prefix) :]
        for o in storage.list(join(base, "EngagementInsights"))
        if o.key.endswith(".parquet") and "/_" not in "/" + o.key[len(prefix) :]
    )
    assert data == locations
    again = run_cli("export", "--input", str(sample), "--output", output, "--run-id", "live2")
    assert again.returncode == 0, again.stderr
    second = _json.loads(storage.read_bytes(join(base, "EngagementInsights/_runs/live2.json")))
    assert {i["status"] for i in second["inputs"]} == {"skipped"}
