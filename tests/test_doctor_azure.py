"""``insights-link doctor`` on Azurite: a healthy lake passes, a missing file system, wrong
credentials and a missing hierarchical namespace are one FAIL line each, the probe blob is gone
afterwards, and the profile source is read through abfss://.

Azurite has no hierarchical namespace, so the ACL checks of a namespace-enabled account run
against a recording fake of the DataLake ``FileSystemClient`` (the SDK boundary); its test names
say so. Everything else is real Azurite.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from azurite import ACCOUNT, connection_string
from conftest import run_cli
from insights_link.commands import doctor as doctor_command
from insights_link.errors import UsageError
from insights_link.storage import open_storage
from insights_link.storage.azure import AzureStorage

pytestmark = pytest.mark.azurite

CLOCK_TIME = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OID = "00000000-0000-0000-0000-0000000000c1"
OTHER_OID = "00000000-0000-0000-0000-0000000000d2"
WRONG_KEY = "d3JvbmdrZXk=" * 7


def doctor(capsys, *args: str) -> tuple[int, dict]:
    """``doctor.run`` in this process (the fakes live here), mapped to its exit code."""
    try:
        report, _summary = doctor_command.run([*args, "--json"], lambda: CLOCK_TIME)
    except doctor_command.DoctorFailed:
        return 1, json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    except UsageError as exc:
        return 2, {"error": str(exc)}
    return 0, report


def statuses(report: dict) -> dict[str, str]:
    return {c["check"]: c["status"] for c in report["checks"]}


def failed(report: dict) -> list[str]:
    return [c["check"] for c in report["checks"] if c["status"] == "fail"]


def detail(report: dict, check: str) -> str:
    (found,) = [c["detail"] for c in report["checks"] if c["check"] == check]
    return found


def container_of(azure_lake: str, azurite):
    name = azure_lake.split("://", 1)[1].split("@", 1)[0]
    return BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(name)


@pytest.fixture
def container(azure_lake, azurite):
    """The lake's container, created (Customer Insights attaches an existing one)."""
    client = container_of(azure_lake, azurite)
    client.create_container()
    return client


def upload_profiles(container) -> str:
    """A Customer CDM folder (model.json + a CSV partition) below ``profiles/`` in the container."""
    model = {
        "name": "CustomerInsights",
        "entities": [
            {
                "$type": "LocalEntity",
                "name": "Customer",
                "attributes": [{"name": "CustomerId", "dataType": "string"}],
                "partitions": [{"name": "p0", "location": "Customer/p0.csv"}],
            }
        ],
    }
    container.upload_blob("profiles/model.json", json.dumps(model).encode())
    container.upload_blob("profiles/Customer/p0.csv", b"c1\n")
    return f"abfss://{container.container_name}@{ACCOUNT}.dfs.core.windows.net/profiles"


def blob_names(container) -> list[str]:
    return sorted(b.name for b in container.list_blobs())


def test_healthy_azurite_lake_passes_and_leaves_no_probe(capsys, azure_lake, container):
    profiles = upload_profiles(container)
    before = blob_names(container)
    code, report = doctor(capsys, "--output", azure_lake, "--profiles", profiles)
    assert code == 0, report
    assert statuses(report) == {
        "lake": "ok",
        "write": "ok",
        "naming": "ok",
        "profiles": "ok",
        "namespace": "skip",
        "posix_acl": "skip",
        "readers": "skip",
        "ci_access": "skip",
        "region_tenant": "note",
        "admin_rights": "note",
        "role_assignment": "note",
    }
    assert "is reachable with connection string from AZURE_STORAGE_CONNECTION_STRING" in detail(
        report, "lake"
    )
    assert "no data source folder EngagementInsights yet" in detail(report, "lake")
    assert detail(report, "profiles") == "a CDM folder: model.json with entities Customer"
    assert blob_names(container) == before  # the probe blob was written and deleted


def test_missing_file_system_is_one_fail_line_and_creates_nothing(capsys, azure_lake, azurite):
    code, report = doctor(capsys, "--output", azure_lake, "--grant-read", OID, "--ci-principal", OID)
    assert (code, failed(report)) == (1, ["lake"])
    assert "does not exist in account 'devstoreaccount1'" in detail(report, "lake")
    assert {s for c, s in statuses(report).items() if c in ("write", "namespace", "ci_access")} == {"skip"}
    assert not container_of(azure_lake, azurite).exists()


def test_wrong_credentials_are_one_fail_line_without_the_secret(azure_lake, container, azurite, monkeypatch):
    """As a real process, with a connection string whose key Azurite refuses."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(azurite.port, WRONG_KEY))
    proc = run_cli("doctor", "--output", azure_lake)
    assert proc.returncode == 1, proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL lake: "), proc.stdout
    assert "authentication" in fails[0] or "authorization" in fails[0]
    assert proc.stderr.strip().splitlines()[-1] == "insights-link doctor: failed: 1 check failed: lake"
    assert "Traceback" not in proc.stderr and WRONG_KEY not in proc.stdout + proc.stderr
    assert blob_names(container) == []


def test_readers_without_hierarchical_namespace_fail_on_azurite(capsys, azure_lake, container):
    """Azurite reports no namespace: --reader/--grant-read would set ACLs that can't exist."""
    code, report = doctor(
        capsys, "--output", azure_lake, "--reader", OID, "--grant-read", OTHER_OID, "--ci-principal", OID
    )
    assert (code, failed(report)) == (1, ["namespace"])
    assert detail(report, "namespace").startswith(
        "account devstoreaccount1 has no hierarchical namespace: --reader and --grant-read set ACLs"
    )
    assert statuses(report)["ci_access"] == "skip"  # one cause, one FAIL line
    assert blob_names(container) == []


def test_ci_principal_without_hierarchical_namespace_fails_on_azurite(capsys, azure_lake, container):
    code, report = doctor(capsys, "--output", azure_lake, "--ci-principal", OID)
    assert (code, failed(report)) == (1, ["ci_access"])
    assert "no hierarchical namespace" in detail(report, "ci_access")


def test_reader_on_azure_must_be_an_object_id(capsys, azure_lake, container):
    code, report = doctor(capsys, "--output", azure_lake, "--reader", "alice")
    assert code == 2 and report["error"] == "--reader 'alice' is not an Entra object id (a GUID)"


def test_missing_profiles_on_abfss_fail_one_line(capsys, azure_lake, container):
    url = f"abfss://{container.container_name}@{ACCOUNT}.dfs.core.windows.net/no/profiles"
    code, report = doctor(capsys, "--output", azure_lake, "--profiles", url)
    assert (code, failed(report)) == (1, ["profiles"])
    assert detail(report, "profiles") == f"--profiles {url}: does not exist or holds no files"


# -- a namespace-enabled account: a recording fake of the DataLake SDK -------------------------


class FakeDirectoryClient:
    def __init__(self, fs: FakeFileSystemClient, path: str) -> None:
        self.fs, self.path = fs, path

    def _acl(self) -> list[str]:
        if self.path not in self.fs.acls:
            raise ResourceNotFoundError("The specified path does not exist.")
        return self.fs.acls[self.path]

    def get_access_control(self, **kwargs):
        self.fs.calls.append(("get", self.path))
        return {"acl": ",".join(self._acl())}

    def set_access_control(self, acl=None, **kwargs):
        self.fs.calls.append(("set", self.path))
        self._acl()
        self.fs.acls[self.path] = acl.split(",")

    def update_access_control_recursive(self, acl, **kwargs):
        """Adds or replaces each entry on the folder (its children are not modelled)."""
        self.fs.calls.append(("update_recursive", self.path))
        current = self._acl()
        for entry in acl.split(","):
            head = entry.rsplit(":", 1)[0]
            current[:] = [e for e in current if e.rsplit(":", 1)[0] != head] + [entry]
        from types import SimpleNamespace

        return SimpleNamespace(counters=SimpleNamespace(failure_count=0))


class FakeFileSystemClient:
    """Stands in for ``azure.storage.filedatalake.FileSystemClient`` on an account with a
    hierarchical namespace (Azurite has none): folders' ACLs in a dict, every call recorded."""

    BASE = ["user::rwx", "group::r-x", "mask::r-x", "other::---"]

    def __init__(self, folders: list[str]) -> None:
        self.acls = {path: list(self.BASE) for path in folders}
        self.calls: list[tuple[str, str]] = []

    def get_directory_client(self, path: str) -> FakeDirectoryClient:
        return FakeDirectoryClient(self, path)


@pytest.fixture
def fake_namespace(monkeypatch):
    """Make AzureStorage see a namespace and reach the fake instead of the DataLake endpoint."""
    fake = FakeFileSystemClient(["/", "lake", "lake/EngagementInsights"])
    monkeypatch.setattr(AzureStorage, "is_hns_enabled", lambda self: True)
    monkeypatch.setattr(AzureStorage, "_datalake_file_system", lambda self: fake)
    return fake


def test_principal_granted_by_export_passes_fake_datalake_sdk(capsys, azure_lake, container, fake_namespace):
    """What export --grant-read sets (AzureStorage.grant_read through the fake) is what
    doctor accepts; doctor itself only reads ACLs."""
    open_storage(azure_lake).grant_read("EngagementInsights", [OID])
    fake_namespace.calls.clear()
    code, report = doctor(capsys, "--output", azure_lake, "--grant-read", OID, "--ci-principal", OID)
    assert code == 0, report
    assert statuses(report)["namespace"] == "ok" and statuses(report)["ci_access"] == "ok"
    assert (
        detail(report, "ci_access") == f"object id {OID} may traverse to and read EngagementInsights (ACLs)"
    )
    assert {kind for kind, _ in fake_namespace.calls} == {"get"}
    assert sorted(path for _, path in fake_namespace.calls) == ["/", "lake", "lake/EngagementInsights"]
    assert blob_names(container) == []


def test_principal_without_grants_fails_naming_what_is_missing_fake_datalake_sdk(
    capsys, azure_lake, container, fake_namespace
):
    open_storage(azure_lake).grant_read("EngagementInsights", [OTHER_OID])
    code, report = doctor(capsys, "--output", azure_lake, "--ci-principal", OID)
    assert (code, failed(report)) == (1, ["ci_access"])
    text = detail(report, "ci_access")
    assert text.startswith(f"object id {OID}: the file system root does not let it traverse (needs --x); ")
    assert "lake does not let it traverse" in text
    assert "EngagementInsights grants it --- (needs r-x)" in text
    assert "default ACL grants it ---" in text
    assert f"export --grant-read {OID} sets these ACLs" in text


def test_principal_with_access_only_no_default_acl_fails_fake_datalake_sdk(
    capsys, azure_lake, container, fake_namespace
):
    """Read access now but no default entry: files written later would be unreadable."""
    for path in ("/", "lake"):
        fake_namespace.acls[path].append(f"user:{OID}:--x")
    fake_namespace.acls["lake/EngagementInsights"].append(f"user:{OID}:r-x")
    code, report = doctor(capsys, "--output", azure_lake, "--ci-principal", OID)
    assert (code, failed(report)) == (1, ["ci_access"])
    assert "EngagementInsights's default ACL grants it --- (files written later need r-x)" in detail(
        report, "ci_access"
    )


def test_missing_data_source_folder_fails_fake_datalake_sdk(capsys, azure_lake, container, fake_namespace):
    del fake_namespace.acls["lake/EngagementInsights"]
    code, report = doctor(capsys, "--output", azure_lake, "--ci-principal", OID)
    assert (code, failed(report)) == (1, ["ci_access"])
    assert detail(report, "ci_access") == (
        f"{azure_lake}/EngagementInsights does not exist yet: export with --grant-read {OID} creates "
        "and shares it"
    )
