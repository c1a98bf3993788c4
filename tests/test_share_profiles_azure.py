"""``share-profiles`` on ADLS Gen2 (stock Azurite): profiles and segments read from abfss://,
committed into an abfss:// lake in both table formats and read back; a killed run converges on
re-run. Azurite has no hierarchical namespace, so ``--reader`` is refused there (exit 2), and
the ACL calls themselves are checked at the DataLake SDK boundary with a recording fake."""

from __future__ import annotations

import io
import json
import logging

import pyarrow.parquet as pq
import pytest

from conftest import REPO, RUN_TIME, run_cli
from insights_link.cli import main
from insights_link.storage import open_storage

pytestmark = pytest.mark.timeout(600)
SAMPLE = REPO / "sample_data" / "profiles"
DS = "CustomerProfiles"
OID = "5f0c9a52-1b7e-4c61-9d2a-0c3e8b7f6a11"


@pytest.fixture(autouse=True)
def restore_logging():
    """In-process ``main()`` points the root logger at this test's captured stderr: put the
    handlers back afterwards so later tests don't log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    azure = logging.getLogger("azure").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("azure").setLevel(azure)


def upload_sample(azure_lake: str) -> str:
    """The sample profiles and segments copied below ``<lake>/../ci-export``; returns its URL."""
    url = azure_lake.rsplit("/", 1)[0] + "/ci-export"
    storage = open_storage(url)
    for path in sorted(SAMPLE.rglob("*")):
        if path.is_file() and path.suffix in (".csv", ".json"):
            storage.write_bytes(str(path.relative_to(SAMPLE)), path.read_bytes())
    return url


def share_args(source: str, lake: str, *extra: str) -> list[str]:
    args = ["share-profiles", "--profiles", f"{source}/Customer", "--output", lake, "--user-key", "WebUserId"]
    args += ["--attribute", "LoyaltyTier", "--attribute", "OrdersCount", "--run-time", RUN_TIME]
    args += [
        "--segments",
        f"{source}/segments/HighValue",
        "--segments",
        f"{source}/segments/SpringSaleResponders.csv",
    ]
    return args + list(extra)


def committed_rows(lake: str, table: str, fmt: str) -> list[dict]:
    storage = open_storage(lake)
    if fmt == "cdm":
        manifest = json.loads(storage.read_bytes(f"{DS}/default.manifest.cdm.json"))
        (entity,) = [e for e in manifest["entities"] if e["entityName"] == table]
        keys = [f"{DS}/{p['location']}" for p in entity["dataPartitions"]]
        return [r for k in keys for r in pq.read_table(io.BytesIO(storage.read_bytes(k))).to_pylist()]
    from deltalake import DeltaTable

    uri, options = storage.external(f"{DS}/{table}")
    return (
        DeltaTable(uri, storage_options=options).to_pyarrow_table().drop_columns(["ActivityDate"]).to_pylist()
    )


@pytest.mark.azurite
@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_share_from_and_to_abfss(azure_lake, fmt):
    source = upload_sample(azure_lake)
    first = run_cli(*share_args(source, azure_lake, "--table-format", fmt, "--run-id", "a1"))
    assert first.returncode == 0, first.stderr
    assert "no hierarchical namespace" in first.stdout
    again = run_cli(*share_args(source, azure_lake, "--table-format", fmt, "--run-id", "a2"))
    assert again.returncode == 0, again.stderr
    dims = committed_rows(azure_lake, "CustomerDimensions", fmt)
    local = open_storage(str(SAMPLE / "Customer"))
    assert local.exists("model.json")
    assert len(dims) == 39 and len({d["WebUserId"] for d in dims}) == 39  # one snapshot, not two
    assert set(dims[0]) == {"WebUserId", "LoyaltyTier", "OrdersCount"}
    assert all(isinstance(d["OrdersCount"], int) for d in dims)
    members = committed_rows(azure_lake, "SegmentMembership", fmt)
    assert {m["Segment"] for m in members} == {"HighValue", "SpringSaleResponders"}
    report = json.loads(open_storage(azure_lake).read_bytes(f"{DS}/_runs/a2.json"))
    assert report["status"] == "committed" and report["files_replaced"] == 2
    if fmt == "delta":  # a Delta table on abfss:// as the profile source (read by deltalake's engine)
        table = f"{azure_lake}/{DS}/CustomerDimensions"
        argv = [
            "--profiles",
            table,
            "--output",
            azure_lake,
            "--data-source",
            "Again",
            "--user-key",
            "WebUserId",
        ]
        proc = run_cli("share-profiles", *argv, "--attribute", "LoyaltyTier", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["tables"]["CustomerDimensions"]["rows"] == 39


@pytest.mark.azurite
def test_killed_share_on_abfss_converges(azure_lake):
    source = upload_sample(azure_lake)
    killed = run_cli(
        *share_args(source, azure_lake, "--run-id", "dead"),
        env={"INSIGHTS_LINK_KILL_AT": "after_moves", "INSIGHTS_LINK_LEASE_SECONDS": "15"},
    )
    assert killed.returncode == -9
    again = run_cli(*share_args(source, azure_lake, "--run-id", "again"))
    assert again.returncode == 0, again.stderr
    storage = open_storage(azure_lake)
    manifest = json.loads(storage.read_bytes(f"{DS}/default.manifest.cdm.json"))
    locations = [p["location"] for e in manifest["entities"] for p in e["dataPartitions"]]
    assert locations and all("_again_" in loc for loc in locations)
    assert not storage.list(f"{DS}/_staging")
    assert len(committed_rows(azure_lake, "CustomerDimensions", "cdm")) == 39


@pytest.mark.azurite
def test_reader_without_hierarchical_namespace_is_refused(azure_lake, capsys):
    source = upload_sample(azure_lake)
    code = main(share_args(source, azure_lake, "--reader", OID))
    err = capsys.readouterr().err
    assert code == 2 and "hierarchical namespace" in err and "Traceback" not in err
    assert not open_storage(azure_lake).list(DS)  # nothing written
    code = main(share_args(source, azure_lake, "--reader", "alice"))
    assert code == 2 and "Entra object ids" in capsys.readouterr().err


class FakeDataLake:
    """A recording fake of the DataLake SDK surface the readers code calls (Azurite has no ACLs)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def get_directory_client(self, path):
        fake = self

        class Directory:
            def set_access_control_recursive(self, acl):
                fake.calls.append(("set_access_control_recursive", path, acl))

                class Result:
                    class counters:  # noqa: N801 - the SDK's attribute name
                        failure_count = 0

                return Result()

            def get_access_control(self):
                return {"acl": "user::rwx,group::r-x,other::---"}

            def set_access_control(self, acl):
                fake.calls.append(("set_access_control", path, acl))

        return Directory()


@pytest.mark.azurite
def test_readers_acls_at_the_sdk_boundary_with_a_recording_fake(azure_lake, monkeypatch, capsys):
    """Everything real on Azurite except the DataLake ACL calls, recorded by a fake."""
    from insights_link.storage.azure import AzureStorage

    fake = FakeDataLake()
    monkeypatch.setattr(AzureStorage, "is_hns_enabled", lambda self: True)
    monkeypatch.setattr(AzureStorage, "_datalake_file_system", lambda self: fake)
    source = upload_sample(azure_lake)
    twice = ["--reader", OID, "--reader", f" {OID.upper()} "]  # one principal, one entry
    code = main(share_args(source, azure_lake, *twice, "--run-id", "r1"))
    assert code == 0, capsys.readouterr().err
    (recursive,) = [c for c in fake.calls if c[0] == "set_access_control_recursive"]
    assert recursive[1].endswith(f"lake/{DS}")
    entries = recursive[2].split(",")
    named = {e for e in entries if e.removeprefix("default:").split(":")[1]}
    assert named == {f"user:{OID}:r-x", f"default:user:{OID}:r-x"}  # nobody else is added
    assert "other::---" in entries and "group::---" in entries and "default:other::---" in entries
    parents = [c for c in fake.calls if c[0] == "set_access_control"]
    assert parents and all(f"user:{OID}:--x" in c[2] for c in parents)
    fake.calls.clear()
    code = main(share_args(source, azure_lake, "--run-id", "r2"))  # no readers: owner only
    assert code == 0
    (recursive,) = [c for c in fake.calls if c[0] == "set_access_control_recursive"]
    assert (
        recursive[2]
        == "user::rwx,group::---,other::---," + "default:user::rwx,default:group::---,default:other::---"
    )


@pytest.mark.azurite
def test_enrich_on_abfss(azure_lake):
    source = upload_sample(azure_lake)
    export = run_cli("export", "--input", str(REPO / "sample_data" / "exports"), "--output", azure_lake)
    assert export.returncode == 0, export.stderr
    proc = run_cli(*share_args(source, azure_lake, "--enrich", "EngagementInsights/WebLog"))
    assert proc.returncode == 0, proc.stderr
    storage = open_storage(azure_lake)
    manifest = json.loads(storage.read_bytes("EngagementInsights/default.manifest.cdm.json"))
    (weblog,) = manifest["entities"]
    activities = [
        r
        for p in weblog["dataPartitions"]
        for r in pq.read_table(
            io.BytesIO(storage.read_bytes(f"EngagementInsights/{p['location']}"))
        ).to_pylist()
    ]
    enriched = committed_rows(azure_lake, "EnrichedActivities", "cdm")
    assert sorted(r["ActivityId"] for r in enriched) == sorted(r["ActivityId"] for r in activities)
    dims = {d["WebUserId"]: d for d in committed_rows(azure_lake, "CustomerDimensions", "cdm")}
    for row in enriched:
        profile = dims.get(row["CustomerId"], {})
        assert row["LoyaltyTier"] == profile.get("LoyaltyTier")
        assert row["OrdersCount"] == profile.get("OrdersCount")
