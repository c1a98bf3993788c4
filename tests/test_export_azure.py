"""The lake on ADLS Gen2, tested against stock Azurite: the same export, guarantees and failures
as the local lake, read back through the Blob API and Microsoft's CDM object model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
)

from cdm_check import load_data_source
from conftest import (
    REPO,
    dead_letters,
    event,
    manifest_locations,
    parquet_files,
    read_activities,
    run_cli,
    run_reports,
    write_jsonl,
)

pytestmark = pytest.mark.timeout(600)
SAMPLE = REPO / "sample_data" / "exports"
FIXED = ("--run-id", "r1", "--run-time", "2026-11-28T12:00:00Z")


def _container_name(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0]


def _container(url: str):
    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    return service.get_container_client(_container_name(url))


def download(url: str, dest: Path, data_source: str = "EngagementInsights") -> Path:
    """Copy the data-source folder's blobs to ``dest`` (partition locations are relative)."""
    container = _container(url)
    prefix = f"lake/{data_source}/"
    for blob in container.list_blobs(name_starts_with=prefix):
        target = dest / data_source / blob.name[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(container.download_blob(blob.name).readall())
    return dest / data_source


def _comparable(ds: Path):
    rows = read_activities(ds).to_pylist()
    letters = sorted((d["reason"], Path(d["source"]).name, d["position"]) for d in dead_letters(ds))
    (report,) = run_reports(ds)
    counts = {k: report[k] for k in ("records_read", "activities_written", "duplicates_dropped", "rejected")}
    return manifest_locations(ds), rows, letters, counts


def test_export_to_azure_equals_the_local_export(tmp_path, azure_lake):
    local = run_cli("export", "--input", str(SAMPLE), "--output", str(tmp_path / "local"), *FIXED)
    assert local.returncode == 0, local.stderr
    assert not _container(azure_lake).exists()  # decided: a missing file system is created
    remote = run_cli("export", "--input", str(SAMPLE), "--output", azure_lake, *FIXED)
    assert remote.returncode == 0, remote.stderr
    ds = download(azure_lake, tmp_path / "copy")
    assert parquet_files(ds) == manifest_locations(ds)
    assert _comparable(ds) == _comparable(tmp_path / "local" / "EngagementInsights")
    loaded = load_data_source(str(ds))
    assert loaded["WebLog"]["primary_key"] == "ActivityId"
    assert sorted(loaded["WebLog"]["partitions"]) == manifest_locations(ds)
    expected = json.loads((REPO / "sample_data" / "expected.json").read_text())
    (report,) = run_reports(ds)
    assert report["status"] == "committed"
    for key in ("records_read", "activities_written", "duplicates_dropped", "rejected"):
        assert report[key] == expected[key], key
    assert report["records_read"] == (
        report["activities_written"] + report["duplicates_dropped"] + sum(report["rejected"].values())
    )
    assert len(dead_letters(ds)) == expected["rejected_total"]
    assert read_activities(ds).num_rows == expected["activities_written"]
    assert "abfss://" in remote.stdout


def test_https_url_form_addresses_the_same_lake_and_reruns_skip(tmp_path, azure_lake):
    assert run_cli("export", "--input", str(SAMPLE), "--output", azure_lake).returncode == 0
    https = f"https://devstoreaccount1.dfs.core.windows.net/{_container_name(azure_lake)}/lake"
    again = run_cli("export", "--input", str(SAMPLE), "--output", https)
    assert again.returncode == 0, again.stderr
    ds = download(azure_lake, tmp_path / "copy")
    reports = run_reports(ds)
    assert len(reports) == 2
    second = max(reports, key=lambda r: r["started_at"])
    assert {i["status"] for i in second["inputs"]} == {"skipped"}
    reprocess = run_cli("export", "--input", str(SAMPLE), "--output", https, "--reprocess")
    assert reprocess.returncode == 0, reprocess.stderr
    ds = download(azure_lake, tmp_path / "copy2")
    rows = read_activities(ds)
    assert rows.num_rows == len(set(rows["ActivityId"].to_pylist()))
    expected = json.loads((REPO / "sample_data" / "expected.json").read_text())
    assert rows.num_rows == expected["activities_written"]
    third = max(run_reports(ds), key=lambda r: r["started_at"])
    assert third["activities_written"] == 0
    assert third["duplicates_dropped"] == expected["activities_written"] + expected["duplicates_dropped"]


@pytest.mark.parametrize(
    "pattern,files",
    [
        ("exports", 5),
        ("exports/*.jsonl", 1),
        ("exports/web-events.csv", 1),
        ("exports/**/*.avro", 2),
        ("exports/web-events-2024-05-0?.jsonl*", 2),  # '?' is a glob here, not a query string
    ],
)
def test_inputs_read_from_abfss_where_they_lie(tmp_path, azure_lake, pattern, files):
    container = _container(azure_lake)
    container.create_container()
    for f in sorted(SAMPLE.iterdir()):
        container.upload_blob(f"exports/{f.name}", f.read_bytes())
    source = azure_lake.rsplit("/", 1)[0] + "/" + pattern
    proc = run_cli("export", "--input", source, "--output", str(tmp_path / "lake"))
    assert proc.returncode == 0, proc.stderr
    (report,) = run_reports(tmp_path / "lake" / "EngagementInsights")
    assert len(report["inputs"]) == files
    assert all(i["source"].startswith("abfss://") for i in report["inputs"])
    expected = json.loads((REPO / "sample_data" / "expected.json").read_text())
    if files == 5:
        assert report["records_read"] == expected["records_read"]
        assert report["activities_written"] == expected["activities_written"]


@pytest.mark.parametrize("step", ["after_staged_file", "after_first_move", "after_manifest"])
def test_killed_run_then_rerun_on_azure_equals_a_clean_run(tmp_path, azure_lake, step):
    first = write_jsonl(
        tmp_path / "in" / "a.jsonl", [event("a"), event("b", ts="2024-05-02T00:00:00Z"), "bad"]
    )
    killed = run_cli(
        "export",
        "--input",
        str(first),
        "--output",
        azure_lake,
        "--block-records",
        "1",
        env={"INSIGHTS_LINK_KILL_AT": step},
    )
    assert killed.returncode == -signal.SIGKILL
    rerun = run_cli("export", "--input", str(first), "--output", azure_lake)
    assert rerun.returncode == 0, rerun.stderr
    ds = download(azure_lake, tmp_path / "copy")
    assert parquet_files(ds) == manifest_locations(ds)
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b"]
    assert not list(_container(azure_lake).list_blobs(name_starts_with="lake/EngagementInsights/_staging/"))
    assert [d["reason"] for d in dead_letters(ds)] == ["malformed"]


@pytest.mark.parametrize("step", ["after_staged_file", "before_commit"])
def test_emulator_stopped_mid_run_fails_cleanly_and_a_later_run_converges(
    tmp_path, azure_lake, azurite, step
):
    src = write_jsonl(tmp_path / "in" / "a.jsonl", [event("a"), event("b")])
    marker = tmp_path / "paused"
    env = dict(os.environ, INSIGHTS_LINK_PAUSE_AT=step, INSIGHTS_LINK_PAUSE_FILE=str(marker))
    proc = subprocess.Popen(
        [sys.executable, "-m", "insights_link.cli", "export", "--input", str(src), "--output", azure_lake],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()
    azurite.stop()
    try:
        marker.unlink()
        out, err = proc.communicate(timeout=300)
    finally:
        azurite.start()
    assert proc.returncode == 1, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("insights-link:")]
    assert len(lines) == 1 and "nothing committed" in lines[0]
    assert "Traceback" not in err
    assert azurite.account_key not in out + err
    container = _container(azure_lake)
    assert not container.get_blob_client("lake/EngagementInsights/default.manifest.cdm.json").exists()
    again = run_cli("export", "--input", str(src), "--output", azure_lake)
    assert again.returncode == 0, again.stderr
    ds = download(azure_lake, tmp_path / "copy")
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b"]
    assert parquet_files(ds) == manifest_locations(ds)


def test_wrong_credentials_clear_error_and_no_secret_echoed(tmp_path, azure_lake, azurite, monkeypatch):
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=" * 2
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(azurite.account_key, wrong_key)
    )
    src = write_jsonl(tmp_path / "a.jsonl", [event("a")])
    proc = run_cli("export", "--input", str(src), "--output", azure_lake)
    assert proc.returncode == 2, proc.stderr  # a configuration mistake, found before anything is written
    assert "Traceback" not in proc.stderr
    assert wrong_key not in proc.stdout + proc.stderr and "AccountKey" not in proc.stdout + proc.stderr
    assert any(
        "authentication" in line.lower() or "credential" in line.lower()
        for line in proc.stderr.splitlines()
        if line.startswith("insights-link:")
    )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    container = _container(azure_lake)  # nothing at all was written: no report, no dead letters
    assert not container.exists() or not list(container.list_blobs())


def test_secrets_never_reach_logs_reports_or_dead_letters(tmp_path, azure_lake, azurite):
    src = write_jsonl(tmp_path / "a.jsonl", [event("a"), "not json"])
    proc = run_cli("export", "--input", str(src), "--output", azure_lake, "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    for secret in (azurite.account_key, azurite.connection_string, "AccountKey="):
        _assert_secret_absent(secret, _container(azure_lake), proc.stdout, proc.stderr)


def _sas_connection_string(azurite, signature: str | None = None) -> tuple[str, str]:
    """A connection string carrying an account SAS (read/write/list/delete/create), and its
    signature; ``signature`` replaces the real one (a wrong SAS)."""
    sas = generate_account_sas(
        azurite.account,
        azurite.account_key,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=2),
    )
    real = parse_qs(sas)["sig"][0]
    if signature is not None:
        sas = "&".join(
            f"sig={quote(signature, safe='')}" if part.startswith("sig=") else part for part in sas.split("&")
        )
        assert parse_qs(sas)["sig"][0] == signature
    return f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}", signature or real


def _assert_secret_absent(secret: str, container, *texts: str) -> None:
    """Neither ``secret`` nor its URL-quoted form in ``texts``, in any blob's bytes (gzip
    unpacked) or in any blob's properties (copy source, metadata)."""
    import gzip

    forms = {secret, quote(secret, safe="")}
    for text in texts:
        assert not any(f in text for f in forms)
    for blob in container.list_blobs(include=["copy", "metadata"]):
        assert not any(f in str(blob.copy.source or "") for f in forms), blob.name
        assert not any(f in json.dumps(blob.metadata or {}) for f in forms), blob.name
        data = container.download_blob(blob.name).readall()
        if blob.name.endswith(".gz"):
            data = gzip.decompress(data)
        assert not any(f.encode() in data for f in forms), blob.name


def test_sas_connection_string_exports_and_the_sas_is_stored_nowhere(
    tmp_path, azure_lake, azurite, monkeypatch
):
    """A SAS in the connection string works, and never lands in the lake: not in a blob, and not
    in the committed Parquet files' copy-source property (readable by every reader of the lake)."""
    conn, sig = _sas_connection_string(azurite)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    src = write_jsonl(tmp_path / "a.jsonl", [event("a"), event("b", ts="2024-05-02T00:00:00Z"), "bad"])
    proc = run_cli("export", "--input", str(src), "--output", azure_lake, "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    ds = download(azure_lake, tmp_path / "copy")
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b"]
    assert parquet_files(ds) == manifest_locations(ds)
    _assert_secret_absent(sig, _container(azure_lake), proc.stdout, proc.stderr)
    assert "SharedAccessSignature" not in proc.stdout + proc.stderr


def test_wrong_sas_clear_error_and_no_secret_echoed(tmp_path, azure_lake, azurite, monkeypatch):
    wrong = "V3JvbmdTaWduYXR1cmVXcm9uZ1NpZ25hdHVyZTEyMzQ="
    conn, _sig = _sas_connection_string(azurite, signature=wrong)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    src = write_jsonl(tmp_path / "a.jsonl", [event("a")])
    proc = run_cli("export", "--input", str(src), "--output", azure_lake)
    assert proc.returncode == 2, proc.stderr  # a configuration mistake, found before anything is written
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("insights-link:")]
    assert len(lines) == 1 and "authentication" in lines[0].lower(), proc.stderr
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    container = _container(azure_lake)
    assert not container.exists() or not list(container.list_blobs())
    for secret in (wrong, azurite.account_key):
        assert (
            secret not in proc.stdout + proc.stderr
            and quote(secret, safe="") not in proc.stdout + proc.stderr
        )


@pytest.mark.parametrize(
    "flag,url,says",
    [
        ("--output", "abfss://x@devstoreaccount1.dfs.core.windows.net/lake", "file system name 'x'"),
        (
            "--output",
            "abfss://lake@devstoreaccount1.dfs.core.windows.net/l?sv=1&sig=TOPSECRET",
            "query string",
        ),
        ("--output", "http://127.0.0.1:10000/devstoreaccount1/lake", "plain http"),
        ("--input", "abfss://x@devstoreaccount1.dfs.core.windows.net/exports", "file system name 'x'"),
        (
            "--input",
            "abfss://{c}@devstoreaccount1.dfs.core.windows.net/exports/a.jsonl?sv=1&sig=TOPSECRET",
            "query string",
        ),
    ],
)
def test_a_bad_azure_url_is_a_usage_error_that_never_echoes_a_sas(tmp_path, azure_lake, flag, url, says):
    """Exit 2 (usage), one line naming the URL without its query string; nothing written."""
    container = _container(azure_lake)
    container.create_container()
    container.upload_blob("exports/a.jsonl", json.dumps(event("a")).encode())
    url = url.format(c=_container_name(azure_lake))
    src = write_jsonl(tmp_path / "a.jsonl", [event("a")])
    args = (
        ["--input", url, "--output", str(tmp_path / "lake")]
        if flag == "--input"
        else ["--input", str(src), "--output", url]
    )
    proc = run_cli("export", *args)
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert line.startswith("insights-link: error:") and says in line, line
    assert "TOPSECRET" not in proc.stdout + proc.stderr
    assert not (tmp_path / "lake").exists()
    assert [b.name for b in container.list_blobs()] == ["exports/a.jsonl"]


GRANT_DRIVER = """
import json, sys
from insights_link import cli
from insights_link.storage import azure as azure_storage

def is_hns_enabled(self):
    return True

def grant_read(self, folder, oids):
    manifest = folder + "/default.manifest.cdm.json"
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({"folder": folder, "oids": list(oids), "committed": self.exists(manifest)}) + "\\n")
    if sys.argv[2] == "fail":
        raise azure_storage.StorageError("granting read access failed for 2 paths")

azure_storage.AzureStorage.is_hns_enabled = is_hns_enabled
azure_storage.AzureStorage.grant_read = grant_read
sys.exit(cli.main(sys.argv[3:]))
"""


def test_grant_read_runs_after_the_commit_with_a_faked_namespace(tmp_path, azure_lake):
    """Azurite has no namespace, so this fakes ``is_hns_enabled``/``grant_read`` (the ACL calls
    themselves are tested at the SDK boundary and live): the CLI grants on the data-source
    folder only after the manifest is committed, and a failed grant says the data is committed."""
    driver = tmp_path / "driver.py"
    driver.write_text(GRANT_DRIVER)
    calls = tmp_path / "calls.jsonl"
    src = write_jsonl(tmp_path / "in" / "a.jsonl", [event("a")])
    oids = ["00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"]
    grant = [x for oid in oids for x in ("--grant-read", oid)]

    def export(mode):
        return subprocess.run(
            [
                sys.executable,
                str(driver),
                str(calls),
                mode,
                "export",
                "--input",
                str(src),
                "--output",
                azure_lake,
                *grant,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )

    failed = export("fail")
    assert failed.returncode == 1, failed.stderr
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("insights-link:")]
    assert "the run committed, but --grant-read failed" in line and "Traceback" not in failed.stderr
    ds = download(azure_lake, tmp_path / "copy")
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a"]
    again = export("ok")
    assert again.returncode == 0, again.stderr
    made = [json.loads(x) for x in calls.read_text().splitlines()]
    assert made == [{"folder": "EngagementInsights", "oids": oids, "committed": True}] * 2
    second = max(run_reports(download(azure_lake, tmp_path / "copy2")), key=lambda r: r["started_at"])
    assert {i["status"] for i in second["inputs"]} == {"skipped"}


def test_grant_read_needs_a_hierarchical_namespace(tmp_path, azure_lake):
    src = write_jsonl(tmp_path / "a.jsonl", [event("a")])
    proc = run_cli(
        "export",
        "--input",
        str(src),
        "--output",
        azure_lake,
        "--grant-read",
        "00000000-0000-0000-0000-000000000001",
    )
    assert proc.returncode == 2, proc.stderr
    assert "hierarchical namespace" in proc.stderr and "Traceback" not in proc.stderr
    container = _container(azure_lake)
    assert not container.exists() or not list(container.list_blobs(name_starts_with="lake/"))
    local = run_cli("export", "--input", str(src), "--output", str(tmp_path / "lake"), "--grant-read", "x")
    assert local.returncode == 2 and "local folder" in local.stderr
