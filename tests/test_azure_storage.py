"""Tests of the Azure storage backend against a real (emulated) service: stock Azurite.

Everything the Blob API does runs for real here. What Azurite cannot do (hierarchical
namespace, ACLs) is tested at the SDK boundary with small fakes whose test names say so
(``..._fake_sdk_boundary``); ``test_live_adls.py`` covers a real account when configured.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobServiceClient

from azurite import (
    ACCOUNT,
    ACCOUNT_KEY,
    Azurite,
    check_storage_contract,
    connection_string,
    new_container_name,
)
from insights_link.storage import StorageError, open_storage
from insights_link.storage import azure as azure_storage
from insights_link.storage.azure import (
    AzureStorage,
    LockBusy,
    describe_credential_source,
    merge_acl,
    parse_url,
    to_storage_error,
)

pytestmark = pytest.mark.azurite

OID_1 = "11111111-2222-3333-4444-555555555555"
OID_2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@pytest.fixture
def store(azure_lake: str) -> AzureStorage:
    """An AzureStorage on a fresh Azurite container (conftest's ``lake`` is a local folder)."""
    return AzureStorage.from_url(azure_lake)


def _service(azurite: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string)


# -- the Storage methods ---------------------------------------------------------------------


def test_storage_contract_on_azurite(store: AzureStorage) -> None:
    check_storage_contract(store, "contract")


def test_write_read_round_trip(store: AzureStorage) -> None:
    store.write_bytes("EngagementInsights/WebLog/x.parquet", b"\x00data\xff")
    assert store.read_bytes("EngagementInsights/WebLog/x.parquet") == b"\x00data\xff"
    with store.open_read("EngagementInsights/WebLog/x.parquet") as f:
        assert f.seekable()
        f.seek(1)
        assert f.read(4) == b"data"
    info = store.info("EngagementInsights/WebLog/x.parquet")
    assert info is not None
    assert (info.key, info.size) == ("EngagementInsights/WebLog/x.parquet", 6)
    assert info.modified.utcoffset() is not None and info.modified.utcoffset().total_seconds() == 0
    assert store.exists("EngagementInsights/WebLog/x.parquet")
    store.write_bytes("EngagementInsights/WebLog/x.parquet", b"new")
    assert store.read_bytes("EngagementInsights/WebLog/x.parquet") == b"new"


def test_parquet_written_and_read_through_the_file_objects(store: AzureStorage) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"ActivityId": ["a", "b"], "n": [1, 2]})
    with store.open_write("t/part-0.parquet") as f:
        pq.write_table(table, f)
    with store.open_read("t/part-0.parquet") as f:
        assert pq.read_table(f).equals(table)


def test_keys_live_below_the_url_path(azurite: Azurite, store: AzureStorage) -> None:
    store.write_bytes("a/b.txt", b"1")
    names = [b.name for b in _service(azurite).get_container_client(store.location.file_system).list_blobs()]
    assert names == ["lake/a/b.txt"]
    assert store.describe("a/b.txt") == f"{store.url}/a/b.txt"
    assert store.describe() == store.url


def test_open_write_uploads_once_on_clean_exit(store: AzureStorage) -> None:
    with store.open_write("out/file.bin") as f:
        f.write(b"part one, ")
        assert not store.exists("out/file.bin")  # nothing visible before the block ends
        f.write(b"part two")
    assert store.read_bytes("out/file.bin") == b"part one, part two"


def test_open_write_discards_on_exception(store: AzureStorage) -> None:
    store.write_bytes("out/file.bin", b"old")
    with pytest.raises(RuntimeError, match="boom"), store.open_write("out/file.bin") as f:
        f.write(b"half written")
        raise RuntimeError("boom")
    assert store.read_bytes("out/file.bin") == b"old"
    with pytest.raises(RuntimeError), store.open_write("out/new.bin") as f:
        f.write(b"x")
        raise RuntimeError("boom")
    assert not store.exists("out/new.bin")


def test_open_write_large_spills_and_commits_staged_blocks(
    store: AzureStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(azure_storage, "SPOOL_MAX_BYTES", 1024)  # spill to disk early
    config: Any = store._container._config  # force the staged-block path with small blocks
    monkeypatch.setattr(config, "max_single_put_size", 4096)
    monkeypatch.setattr(config, "max_block_size", 4096)
    payload = bytes(range(256)) * 80  # 20 KiB: 5 blocks
    with store.open_write("big.bin") as f:
        for i in range(0, len(payload), 1000):
            f.write(payload[i : i + 1000])
    assert store.read_bytes("big.bin") == payload
    committed, uncommitted = store._blob("big.bin").get_block_list("all")
    assert len(committed) == 5 and not uncommitted
    with store.open_read("big.bin") as f:
        assert f.read() == payload


def test_list_is_sorted_recursive_and_prefix_scoped(azure_lake: str, store: AzureStorage) -> None:
    for key in ["b/2", "a/x/3", "a/1", "a2/4", "a/x/y/5"]:
        store.write_bytes(key, key.encode())
    outside = AzureStorage.from_url(azure_lake.rsplit("/", 1)[0] + "/other")
    outside.write_bytes("a/zzz", b"not in the lake")
    assert [o.key for o in store.list()] == ["a/1", "a/x/3", "a/x/y/5", "a2/4", "b/2"]
    assert [o.key for o in store.list("a")] == ["a/1", "a/x/3", "a/x/y/5"]
    assert [o.key for o in store.list("a/")] == ["a/1", "a/x/3", "a/x/y/5"]
    assert [o.key for o in store.list("a/x")] == ["a/x/3", "a/x/y/5"]
    assert [(o.key, o.size) for o in store.list("b/2")] == [("b/2", 3)]  # an object key
    assert store.list("nothing/here") == []


def test_folder_marker_blobs_are_not_objects(azurite: Azurite, store: AzureStorage) -> None:
    store.write_bytes("d/file.txt", b"x")
    container = _service(azurite).get_container_client(store.location.file_system)
    for name in ["lake/d", "lake/d/sub"]:  # what HNS directories / tools look like in Blob API
        container.upload_blob(name, b"", metadata={"hdi_isfolder": "true"})
    assert [o.key for o in store.list()] == ["d/file.txt"]
    assert store.info("d/sub") is None
    assert not store.exists("d")
    store.delete_prefix("d")
    assert [b.name for b in container.list_blobs()] == []


def test_move_copies_then_deletes(store: AzureStorage) -> None:
    store.write_bytes("staging/run1/x.bin", b"payload")
    store.write_bytes("final/x.bin", b"older")
    store.move("staging/run1/x.bin", "final/x.bin")
    assert store.read_bytes("final/x.bin") == b"payload"
    assert not store.exists("staging/run1/x.bin")
    store.move("final/x.bin", "final/x.bin")  # to itself: nothing to do
    assert store.read_bytes("final/x.bin") == b"payload"


def test_move_of_a_missing_object_raises(store: AzureStorage) -> None:
    store.write_bytes("keep.bin", b"k")  # the container exists
    with pytest.raises(StorageError, match=r"missing\.bin.*does not exist"):
        store.move("missing.bin", "target.bin")
    assert not store.exists("target.bin")


def test_move_copies_through_client_when_server_copy_refused_fake_sdk_boundary(
    store: AzureStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: BlobClient, source_url: str, **kwargs: Any) -> None:
        raise HttpResponseError(message="copy not supported here")

    monkeypatch.setattr(BlobClient, "start_copy_from_url", refuse)
    store.write_bytes("src.bin", b"bytes to move")
    store.move("src.bin", "dst/dst.bin")
    assert store.read_bytes("dst/dst.bin") == b"bytes to move"
    assert not store.exists("src.bin")


def test_delete_and_missing_is_fine(store: AzureStorage) -> None:
    store.write_bytes("x.bin", b"x")
    store.delete("x.bin")
    assert not store.exists("x.bin")
    store.delete("x.bin")
    store.delete("never/was.bin")


def test_delete_prefix_deletes_only_below_the_folder(store: AzureStorage) -> None:
    keys = ["t/2024/01/a", "t/2024/01/b/c", "t/2024/010/d", "t/2024/02/e", "u/f"]
    for key in keys:
        store.write_bytes(key, b"x")
    store.delete_prefix("t/2024/01")
    assert [o.key for o in store.list()] == ["t/2024/010/d", "t/2024/02/e", "u/f"]
    store.delete_prefix("no/such/folder")
    store.delete_prefix("")
    assert store.list() == []


def test_missing_container_reads_empty_and_first_write_creates_it(
    azurite: Azurite, store: AzureStorage
) -> None:
    container = _service(azurite).get_container_client(store.location.file_system)
    assert not container.exists()
    assert store.list() == []
    assert store.list("a") == []
    assert store.info("a/b") is None
    assert not store.exists("a/b")
    store.delete("a/b")
    store.delete_prefix("a")
    with pytest.raises(StorageError, match="does not exist"):
        store.read_bytes("a/b")
    with pytest.raises(StorageError, match="does not exist"):
        store.open_read("a/b")
    assert not container.exists()  # reads created nothing
    store.write_bytes("a/b", b"first")
    assert container.exists()
    assert store.read_bytes("a/b") == b"first"


def test_open_write_creates_missing_container(store: AzureStorage) -> None:
    with store.open_write("a/b") as f:
        f.write(b"streamed")
    assert store.read_bytes("a/b") == b"streamed"


def test_https_and_abfss_url_forms_reach_the_same_objects(store: AzureStorage) -> None:
    fs = store.location.file_system
    store.write_bytes("k.txt", b"same")
    for url in [
        f"abfss://{fs}@{ACCOUNT}.dfs.core.windows.net/lake",
        f"abfs://{fs}@{ACCOUNT}.dfs.core.windows.net/lake/",
        f"https://{ACCOUNT}.dfs.core.windows.net/{fs}/lake",
        f"https://{ACCOUNT}.blob.core.windows.net/{fs}/lake/",
    ]:
        other = open_storage(url)
        assert isinstance(other, AzureStorage)
        assert other.read_bytes("k.txt") == b"same", url
        assert [o.key for o in other.list()] == ["k.txt"], url
    root = AzureStorage.from_url(f"https://{ACCOUNT}.blob.core.windows.net/{fs}")
    assert [o.key for o in root.list()] == ["lake/k.txt"]


# -- URLs ------------------------------------------------------------------------------------


def test_parse_url_forms() -> None:
    loc = parse_url("abfss://my-lake@acct01.dfs.core.windows.net/a/b/")
    assert (loc.account, loc.file_system, loc.prefix) == ("acct01", "my-lake", "a/b")
    assert loc.url == "abfss://my-lake@acct01.dfs.core.windows.net/a/b"
    assert loc.blob_account_url == "https://acct01.blob.core.windows.net"
    assert loc.dfs_account_url == "https://acct01.dfs.core.windows.net"
    loc = parse_url("https://acct01.blob.core.windows.net/my-lake")
    assert (loc.account, loc.file_system, loc.prefix) == ("acct01", "my-lake", "")
    loc = parse_url("https://acct01.dfs.core.chinacloudapi.cn/fs1/x%20y")
    assert (loc.endpoint_suffix, loc.prefix) == ("core.chinacloudapi.cn", "x y")


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/key",
        "abfss://acct01.dfs.core.windows.net/lake",
        "abfss://lake@acct01.dfs.core.windows.net:8443/x",
        "abfss://Lake@acct01.dfs.core.windows.net/x",
        "abfss://la@acct01.dfs.core.windows.net/x",
        "abfss://lake@ac.dfs.core.windows.net/x",
        "abfss://lake@acct01.file.core.windows.net/x",
        "abfss://lake@acct01.dfs.core.windows.net/a/../b",
        "https://acct01.dfs.core.windows.net/",
        "https://example.com/lake/x",
        "http://127.0.0.1:10000/devstoreaccount1/lake",
        "https://acct01.dfs.core.windows.net/lake/x?sv=2024&sig=TOPSECRETSIG",
    ],
)
def test_bad_url_raises_storage_error_naming_it(url: str) -> None:
    with pytest.raises(StorageError) as err:
        AzureStorage.from_url(url)
    message = str(err.value)
    assert url.split("?")[0] in message
    assert "TOPSECRETSIG" not in message
    assert "\n" not in message


# -- credentials and failures ----------------------------------------------------------------


def test_wrong_account_key_is_a_clear_error_without_the_key(
    azurite: Azurite, azure_lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_key = "V3JvbmdXcm9uZ1dyb25nV3JvbmdXcm9uZ1dyb25nV3JvbmdXcm9uZ1dyb25nV3Jvbmc="
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(azurite.port, wrong_key))
    storage = AzureStorage.from_url(azure_lake)
    for attempt in (lambda: storage.write_bytes("a.bin", b"x"), lambda: storage.list()):
        with pytest.raises(StorageError) as err:
            attempt()
        message = str(err.value)
        assert azure_lake in message
        assert "credentials" in message
        assert wrong_key not in message and ACCOUNT_KEY not in message
        assert "AccountKey" not in message
        assert isinstance(err.value.__cause__, HttpResponseError)
        assert wrong_key not in str(err.value.__cause__)


def test_malformed_account_key_is_a_clear_error_without_the_key(
    azurite: Azurite, azure_lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_key = "this-is-not-base64-$$$"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(azurite.port, bad_key))
    with pytest.raises(StorageError) as err:
        AzureStorage.from_url(azure_lake).list()
    assert bad_key not in str(err.value)
    assert azure_lake in str(err.value)


def test_connection_string_for_another_account_is_rejected(
    azure_lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = azure_lake.replace(ACCOUNT, "otheraccount")
    with pytest.raises(StorageError) as err:
        AzureStorage.from_url(url)
    assert "otheraccount" in str(err.value) and ACCOUNT in str(err.value)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "garbage")
    with pytest.raises(StorageError, match="malformed"):
        AzureStorage.from_url(azure_lake)


def test_emulator_down_fails_fast_with_the_url_then_recovers(
    azurite: Azurite, azure_lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSIGHTS_LINK_AZURE_RETRIES", "1")
    monkeypatch.setenv("INSIGHTS_LINK_AZURE_BACKOFF", "0.05")
    storage = AzureStorage.from_url(azure_lake)
    storage.write_bytes("before.bin", b"kept")
    azurite.stop()
    try:
        for attempt, key in [
            (lambda: storage.read_bytes("before.bin"), "before.bin"),
            (lambda: storage.write_bytes("during.bin", b"x"), "during.bin"),
            (lambda: storage.list("sub"), "sub"),
        ]:
            started = time.monotonic()
            with pytest.raises(StorageError) as err:
                attempt()
            assert time.monotonic() - started < 10
            message = str(err.value)
            assert storage.describe(key) in message
            assert "cannot reach Azure storage" in message
            assert "Connection refused" in message
    finally:
        azurite.start()
    assert storage.read_bytes("before.bin") == b"kept"  # same client, emulator back


def test_invalid_retry_setting_is_a_clear_error(azure_lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSIGHTS_LINK_AZURE_RETRIES", "lots")
    with pytest.raises(StorageError, match="INSIGHTS_LINK_AZURE_RETRIES='lots'"):
        AzureStorage.from_url(azure_lake)


DROP, SLOW = 0, -1  # scripted "statuses": close the connection unanswered / answer too late


class _ScriptedBlobServer(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next status of ``script`` (a fake Blob endpoint)."""

    script: ClassVar[list[int]] = []
    seen: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:  # http.server's naming
        status = self.script.pop(0) if self.script else 404
        self.seen.append(f"{self.command} {status}")
        if status == DROP:
            self.close_connection = True
            return
        if status == SLOW:
            time.sleep(1.0)
            status = 404
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        if status == 404:
            self.send_header("x-ms-error-code", "BlobNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up on a SLOW answer: expected


@pytest.fixture
def scripted_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_ScriptedBlobServer]]:
    handler = type("Handler", (_ScriptedBlobServer,), {"script": [], "seen": []})
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(server.server_port))
    monkeypatch.setenv("INSIGHTS_LINK_AZURE_RETRIES", "3")
    monkeypatch.setenv("INSIGHTS_LINK_AZURE_BACKOFF", "0.01")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_retries_503_and_429_then_succeeds_scripted_http_server(
    scripted_server: type[_ScriptedBlobServer],
) -> None:
    scripted_server.script[:] = [503, 429, 500, 404]
    storage = AzureStorage.from_url(f"abfss://{new_container_name()}@{ACCOUNT}.dfs.core.windows.net")
    assert storage.info("x") is None  # the final 404 means "no object"
    assert scripted_server.seen == ["HEAD 503", "HEAD 429", "HEAD 500", "HEAD 404"]


def test_retries_dropped_connections_and_read_timeouts_scripted_http_server(
    scripted_server: type[_ScriptedBlobServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSIGHTS_LINK_AZURE_READ_TIMEOUT", "0.3")
    scripted_server.script[:] = [DROP, SLOW, 404]
    storage = AzureStorage.from_url(f"abfss://{new_container_name()}@{ACCOUNT}.dfs.core.windows.net")
    assert storage.info("x") is None
    assert scripted_server.seen == [f"HEAD {DROP}", f"HEAD {SLOW}", "HEAD 404"]


def test_dropped_connections_give_a_clear_error_scripted_http_server(
    scripted_server: type[_ScriptedBlobServer],
) -> None:
    scripted_server.script[:] = [DROP] * 10
    url = f"abfss://{new_container_name()}@{ACCOUNT}.dfs.core.windows.net/lake"
    with pytest.raises(StorageError) as err:
        AzureStorage.from_url(url).info("x")
    assert len(scripted_server.seen) == 4
    message = str(err.value)
    assert message.startswith("the connection to Azure storage dropped or timed out")
    assert f"{url}/x" in message and "gave up after 3 retries" in message


def test_gives_up_after_the_configured_retries_scripted_http_server(
    scripted_server: type[_ScriptedBlobServer],
) -> None:
    scripted_server.script[:] = [503] * 10
    url = f"abfss://{new_container_name()}@{ACCOUNT}.dfs.core.windows.net/lake"
    storage = AzureStorage.from_url(url)
    with pytest.raises(StorageError) as err:
        storage.info("x")
    assert len(scripted_server.seen) == 4  # 1 try + 3 retries
    assert f"{url}/x" in str(err.value)
    assert "busy or unavailable" in str(err.value) and "HTTP 503" in str(err.value)


def test_describe_credential_source_never_reveals_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert "DefaultAzureCredential" in describe_credential_source("acct01")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=2024&sig=SASSECRET")
    assert "AZURE_STORAGE_SAS_TOKEN" in describe_credential_source("acct01")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "KEYSECRET==")
    assert "AZURE_STORAGE_KEY" in describe_credential_source("acct01")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(10000))
    text = describe_credential_source("acct01")
    assert "AZURE_STORAGE_CONNECTION_STRING" in text and ACCOUNT in text
    for secret in ("SASSECRET", "KEYSECRET", ACCOUNT_KEY, "AccountKey"):
        assert secret not in text


def test_error_messages_scrub_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(10000))
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2024&ss=b&sig=SAS%2BSECRET")
    sdk_error = HttpResponseError(
        message=f"failed: {connection_string(10000)} https://a.blob/c?sv=1&sig=OTHERSIG\nmore"
    )
    error = to_storage_error(sdk_error, "read", "abfss://c01@acct01.dfs.core.windows.net/x")
    for secret in (ACCOUNT_KEY, "SAS%2BSECRET", "OTHERSIG"):
        assert secret not in str(error)
        assert secret not in str(sdk_error)  # the kept __cause__ is scrubbed too
    assert "abfss://c01@acct01.dfs.core.windows.net/x" in str(error)
    assert "\n" not in str(error)


def test_no_usable_default_credential_is_a_clear_error() -> None:
    from azure.core.exceptions import ClientAuthenticationError

    sdk_error = ClientAuthenticationError(
        "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
        "Attempted credentials: ..."
    )
    error = to_storage_error(sdk_error, "list", "abfss://c01@acct01.dfs.core.windows.net/x")
    assert str(error).startswith(
        "no Azure credentials available to list abfss://c01@acct01.dfs.core.windows.net/x"
    )
    assert "AZURE_STORAGE_KEY" in str(error) and "az login" in str(error)


# -- hierarchical namespace ------------------------------------------------------------------


def test_azurite_has_no_hierarchical_namespace(store: AzureStorage) -> None:
    assert store.is_hns_enabled() is False


def test_grant_read_without_hns_raises_the_clear_error(store: AzureStorage) -> None:
    with pytest.raises(StorageError) as err:
        store.grant_read("EngagementInsights", [OID_1])
    assert str(err.value) == (
        "--grant-read needs an account with a hierarchical namespace (ADLS Gen2); devstoreaccount1 has none"
    )


def test_grant_read_rejects_non_guid_object_ids(store: AzureStorage) -> None:
    with pytest.raises(StorageError, match="GUID"):
        store.grant_read("x", ["someone,other::rwx"])


class _FakeDirectory:
    def __init__(self, fs: _FakeFileSystem, path: str) -> None:
        self.fs, self.path = fs, path

    def update_access_control_recursive(self, acl: str, **kwargs: Any) -> Any:
        self.fs.calls.append(("update_recursive", self.path, acl))
        counters = SimpleNamespace(
            directories_successful=2, files_successful=5, failure_count=self.fs.failures
        )
        return SimpleNamespace(counters=counters, continuation=None)

    def get_access_control(self, **kwargs: Any) -> dict[str, Any]:
        return {"acl": self.fs.acls.get(self.path, "user::rwx,group::r-x,other::---")}

    def set_access_control(self, acl: str | None = None, **kwargs: Any) -> None:
        assert not kwargs, "only the ACL may change"
        self.fs.calls.append(("set", self.path, acl))


class _FakeFileSystem:
    """Stands in for azure.storage.filedatalake.FileSystemClient (Azurite has no ACLs)."""

    def __init__(self, acls: dict[str, str], failures: int = 0) -> None:
        self.acls, self.failures = acls, failures
        self.calls: list[tuple[str, str, str | None]] = []

    def get_directory_client(self, path: str) -> _FakeDirectory:
        return _FakeDirectory(self, path)


def test_grant_read_calls_datalake_acl_api_fake_sdk_boundary(
    store: AzureStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeFileSystem(
        acls={
            "/": "user::rwx,user:" + OID_1 + ":r--,group::r-x,mask::r--,other::---",
            "lake": f"user::rwx,user:{OID_1}:--x,user:{OID_2}:r-x,group::r-x,other::---",
        }
    )
    monkeypatch.setattr(store, "is_hns_enabled", lambda: True)
    monkeypatch.setattr(store, "_datalake_file_system", lambda: fake)
    store.grant_read("EngagementInsights/WebLog", [OID_1, OID_2])
    assert fake.calls == [
        (
            "update_recursive",
            "lake/EngagementInsights/WebLog",
            f"user:{OID_1}:r-x,default:user:{OID_1}:r-x,user:{OID_2}:r-x,default:user:{OID_2}:r-x",
        ),
        (
            "set",
            "/",
            f"user::rwx,user:{OID_1}:r-x,group::r-x,mask::r-x,other::---,user:{OID_2}:--x",
        ),
        # "lake" already lets both traverse: left alone
        (
            "set",
            "lake/EngagementInsights",
            f"user::rwx,group::r-x,other::---,user:{OID_1}:--x,user:{OID_2}:--x",
        ),
    ]


def test_grant_read_reports_recursive_failures_fake_sdk_boundary(
    store: AzureStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeFileSystem(acls={}, failures=3)
    monkeypatch.setattr(store, "is_hns_enabled", lambda: True)
    monkeypatch.setattr(store, "_datalake_file_system", lambda: fake)
    with pytest.raises(StorageError, match="failed for 3 paths"):
        store.grant_read("x", [OID_1])


def test_merge_acl_widens_and_never_narrows() -> None:
    assert merge_acl("user::rwx,user:a:rw-,mask::rw-", {"a": "--x"}) == ("user::rwx,user:a:rwx,mask::rwx")
    assert merge_acl("user::rwx,default:user:a:---", {"a": "r-x"}) == (
        "user::rwx,default:user:a:---,user:a:r-x"
    )


# -- leases ----------------------------------------------------------------------------------


def test_lease_is_exclusive_and_released(store: AzureStorage) -> None:
    with store.lease("_locks/WebLog.lock", seconds=15) as held:  # container created on demand
        assert held.id
        with pytest.raises(LockBusy, match=r"WebLog\.lock") as busy, store.lease("_locks/WebLog.lock", 15):
            pass
        assert f"held by pid {os.getpid()}" in str(busy.value) and " since " in str(busy.value)
        held.renew()
    with store.lease("_locks/WebLog.lock", seconds=15):
        pass
    with pytest.raises(ValueError), store.lease("_locks/x.lock", seconds=5):
        pass


KEY = "a2V5" * 8
BLOB = "http://127.0.0.1:10000/devstoreaccount1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AZURE_STORAGE_CONNECTION_STRING": f"AccountName=acct;AccountKey={KEY};BlobEndpoint={BLOB}/"},
            {
                "account_name": "acct",
                "account_key": KEY,
                "azure_storage_endpoint": BLOB,
                "allow_http": "true",
            },
        ),
        (
            {
                "AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct;SharedAccessSignature=?sv=1&sig=x",
                "AZURE_STORAGE_KEY": KEY,  # the connection string comes first
            },
            {"account_name": "acct", "sas_token": "sv=1&sig=x"},
        ),
        (
            {"AZURE_STORAGE_KEY": KEY, "AZURE_STORAGE_SAS_TOKEN": "sv=2"},
            {"account_name": "acct", "account_key": KEY},
        ),
        ({"AZURE_STORAGE_SAS_TOKEN": "?sv=2&sig=y"}, {"account_name": "acct", "sas_token": "sv=2&sig=y"}),
        (
            {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"},
            {"use_emulator": "true", "allow_http": "true", "account_name": "devstoreaccount1"},
        ),
    ],
)
def test_delta_rs_gets_the_same_credentials_in_the_same_order(monkeypatch, env, expected):
    """What delta-rs (object_store) is handed for an abfss:// lake follows the Blob SDK's order."""
    from insights_link.storage.azure import object_store_options, parse_url

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    location = parse_url("abfss://events@acct.dfs.core.windows.net/lake")
    assert object_store_options(location) == expected
