"""``insights-link doctor`` on local lakes: a healthy setup passes, each broken one is one FAIL
line (never a traceback), usage errors exit 2, and the only thing doctor ever writes (its probe
under ``_doctor/``) is gone afterwards."""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from insights_link.commands import doctor as doctor_command
from insights_link.errors import UsageError
from insights_link.storage.local import LocalStorage

CLOCK_TIME = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OID = "00000000-0000-0000-0000-0000000000c1"


def doctor(*args: str) -> tuple[int, dict]:
    """``doctor.run`` in this process, mapped to its exit code like ``cli.lake_command``;
    returns (exit code, report)."""
    try:
        report, _summary = doctor_command.run([*args, "--json"], lambda: CLOCK_TIME)
    except doctor_command.DoctorFailed:
        return 1, _last_report
    except UsageError as exc:
        return 2, {"error": str(exc)}
    return 0, report


_last_report: dict = {}


@pytest.fixture(autouse=True)
def _keep_printed_report(capsys, monkeypatch):
    """A failing doctor prints its JSON report before it raises: keep it for ``doctor()``."""
    real_run = doctor_command.run

    def run(argv, clock):
        global _last_report
        try:
            return real_run(argv, clock)
        except doctor_command.DoctorFailed:
            _last_report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            raise

    monkeypatch.setattr(doctor_command, "run", run)


def statuses(report: dict) -> dict[str, str]:
    return {c["check"]: c["status"] for c in report["checks"]}


def failed(report: dict) -> list[str]:
    return [c["check"] for c in report["checks"] if c["status"] == "fail"]


def detail(report: dict, check: str) -> str:
    (found,) = [c["detail"] for c in report["checks"] if c["check"] == check]
    return found


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def cdm_profiles(folder: Path) -> Path:
    """A Customer CDM folder as Customer Insights exports it: model.json and a CSV partition."""
    (folder / "Customer").mkdir(parents=True)
    (folder / "Customer" / "part-0.csv").write_text("c1,Contoso,1985-02-01\n", encoding="utf-8")
    model = {
        "name": "CustomerInsights",
        "version": "1.0",
        "entities": [
            {
                "$type": "LocalEntity",
                "name": "Customer",
                "attributes": [
                    {"name": "CustomerId", "dataType": "string"},
                    {"name": "CompanyName", "dataType": "string"},
                    {"name": "BirthDate", "dataType": "dateTime"},
                ],
                "partitions": [{"name": "part-0", "location": "Customer/part-0.csv"}],
            }
        ],
    }
    (folder / "model.json").write_text(json.dumps(model), encoding="utf-8")
    return folder


# -- healthy -----------------------------------------------------------------------------------


def test_healthy_local_setup_passes_and_leaves_the_lake_as_it_was(tmp_path):
    lake = tmp_path / "lake"
    (lake / "EngagementInsights").mkdir(parents=True)
    (lake / "EngagementInsights" / "default.manifest.cdm.json").write_text("{}", encoding="utf-8")
    before = tree(lake)
    me = pwd.getpwuid(os.getuid()).pw_name
    code, report = doctor(
        "--output",
        str(lake),
        "--profiles",
        str(cdm_profiles(tmp_path / "profiles")),
        "--reader",
        me,
        "--reader",
        f"user:{me}",
        "--ci-principal",
        OID,
    )
    assert code == 0, report
    assert report["ok"] is True and report["failed"] == []
    assert statuses(report) == {
        "lake": "ok",
        "write": "ok",
        "naming": "ok",
        "profiles": "ok",
        "namespace": "skip",
        "posix_acl": "ok",
        "readers": "ok",
        "ci_access": "skip",
        "adls_gen2": "note",
        "region_tenant": "note",
        "admin_rights": "note",
        "role_assignment": "note",
    }
    assert "data source folder EngagementInsights exists" in detail(report, "lake")
    assert detail(report, "profiles") == "a CDM folder: model.json with entities Customer"
    assert detail(report, "readers") == f"local principals: user:{me}, user:{me}"
    assert "local lake" in detail(report, "ci_access")
    assert "region" in detail(report, "region_tenant") and "tenant" in detail(report, "region_tenant")
    assert "Storage Blob Data Contributor" in detail(report, "role_assignment")
    assert tree(lake) == before  # the probe and the _doctor folder it made are gone


def test_doctor_deletes_only_its_own_probe(tmp_path):
    """Someone else's object under _doctor/ (and the folder holding it) stays."""
    lake = tmp_path / "lake"
    (lake / "_doctor").mkdir(parents=True)
    (lake / "_doctor" / "keep.txt").write_text("not doctor's", encoding="utf-8")
    code, report = doctor("--output", str(lake))
    assert code == 0, report
    assert tree(lake) == ["_doctor", "_doctor/keep.txt"]
    assert (lake / "_doctor" / "keep.txt").read_text(encoding="utf-8") == "not doctor's"


def test_cli_prints_one_line_per_check_and_exits_0(tmp_path):
    """As a real process: the text lines, exit 0, nothing on stderr but log lines."""
    (tmp_path / "lake").mkdir()
    proc = run_cli("doctor", "--output", str(tmp_path / "lake"), "--data-source", "WebLogs")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok"] + ["skip"] * 5 + ["note"] * 4
    assert lines[2].startswith("ok   naming: --data-source 'WebLogs' follows the naming rule")
    assert "Traceback" not in proc.stderr


# -- broken setups: one FAIL line each -----------------------------------------------------------


def test_missing_lake_is_one_fail_line(tmp_path):
    proc = run_cli("doctor", "--output", str(tmp_path / "nowhere"))
    assert proc.returncode == 1, proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == [f"FAIL lake: {tmp_path / 'nowhere'} does not exist"]
    assert "skip write: the lake is not reachable" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "insights-link doctor: failed: 1 check failed: lake"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_file_as_lake_fails(tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    code, report = doctor("--output", str(tmp_path / "file"))
    assert (code, failed(report)) == (1, ["lake"])
    assert "is a file, not a folder" in detail(report, "lake")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for name, says in (
        ("fifo", "is a named pipe (FIFO), not a folder"),
        ("dangling", "which does not exist"),
    ):
        code, report = doctor("--output", str(tmp_path / name))
        assert (code, failed(report)) == (1, ["lake"]) and says in detail(report, "lake")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "fifo", "file"]


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody may create files in: mode 0555, or for root (who ignores modes) the
    immutable attribute (chattr +i), removed again afterwards."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    made = chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0
    if not made:
        pytest.skip("running as root without chattr +i: no folder here is unwritable")
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_unwritable_lake_fails_the_write_check_only(unwritable):
    code, report = doctor("--output", str(unwritable), "--reader", pwd.getpwuid(os.getuid()).pw_name)
    assert (code, failed(report)) == (1, ["write"])
    assert detail(report, "write").startswith(f"cannot write below {unwritable}: ")
    assert statuses(report)["posix_acl"] == "skip"  # no probe file to try ACLs on
    assert tree(unwritable) == []


@pytest.mark.parametrize("name", ["1WebLog", "Web-Log", "date=2024"])
def test_bad_data_source_name_fails_the_naming_check(tmp_path, name):
    (tmp_path / "lake").mkdir()
    code, report = doctor("--output", str(tmp_path / "lake"), "--data-source", name)
    assert (code, failed(report)) == (1, ["naming"])
    assert "breaks the naming rule" in detail(report, "naming") and repr(name) in detail(report, "naming")


def test_unknown_reader_fails_naming_it(tmp_path):
    (tmp_path / "lake").mkdir()
    code, report = doctor("--output", str(tmp_path / "lake"), "--reader", "group:no_such_group_here")
    assert (code, failed(report)) == (1, ["readers"])
    assert detail(report, "readers") == "no local user or group 'group:no_such_group_here'"


def test_file_system_without_posix_acls_fails_fake_xattr_boundary(tmp_path, monkeypatch):
    """No writable file system here lacks ACLs, so os.setxattr is faked to answer as one that
    does (EOPNOTSUPP); the probe file is still really written and removed."""

    def fake_setxattr(path, name, value):
        assert name == "system.posix_acl_access" and "/_doctor/probe-" in path
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "setxattr", fake_setxattr)
    (tmp_path / "lake").mkdir()
    code, report = doctor("--output", str(tmp_path / "lake"), "--reader", pwd.getpwuid(os.getuid()).pw_name)
    assert (code, failed(report)) == (1, ["posix_acl"])
    assert "does not support POSIX ACLs" in detail(report, "posix_acl")
    assert "--reader can't be applied" in detail(report, "posix_acl")
    assert tree(tmp_path / "lake") == []


def test_posix_acl_probe_sets_and_reads_back_a_real_acl(tmp_path):
    storage = LocalStorage(str(tmp_path))
    storage.write_bytes("probe.txt", b"x")
    assert storage.posix_acl_probe("probe.txt") is None
    acl = os.getxattr(tmp_path / "probe.txt", "system.posix_acl_access")
    assert acl[:4] == (2).to_bytes(4, "little") and len(acl) == 4 + 5 * 8


# -- profiles ------------------------------------------------------------------------------------


def _manifest_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    manifest = {
        "manifestName": "default",
        "entities": [
            {"type": "LocalEntity", "entityName": "Customer", "entityPath": "Customer.cdm.json/Customer"},
            {"type": "LocalEntity", "entityName": "Segments", "entityPath": "Segments.cdm.json/Segments"},
        ],
    }
    (folder / "default.manifest.cdm.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def _delta_table(folder: Path) -> Path:
    from deltalake import write_deltalake

    write_deltalake(str(folder), pa.table({"CustomerId": ["c1"], "Tier": ["gold"]}))
    write_deltalake(str(folder), pa.table({"CustomerId": ["c2"], "Tier": ["blue"]}), mode="append")
    return folder


def _parquet_files(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.table({"CustomerId": [f"c{i}"]}), folder / f"part-{i}.parquet")
    return folder


def _one_csv(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "customers.csv").write_text("CustomerId,Tier\nc1,gold\n", encoding="utf-8")
    return folder / "customers.csv"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_manifest_folder, "a CDM folder: default.manifest.cdm.json with entities Customer, Segments"),
        (lambda p: cdm_profiles(p) / "model.json", "a CDM folder: model.json with entities Customer"),
        (_delta_table, "a Delta table (version 1)"),
        (_parquet_files, "2 Parquet files"),
        (_one_csv, "a CSV file (24 bytes)"),
    ],
    ids=["manifest", "model-json-file", "delta", "parquet", "csv"],
)
def test_recognised_profile_sources(tmp_path, make, says):
    (tmp_path / "lake").mkdir()
    source = make(tmp_path / "profiles")
    code, report = doctor("--output", str(tmp_path / "lake"), "--profiles", str(source))
    assert code == 0, report
    assert detail(report, "profiles") == says


def _broken_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text("{not json", encoding="utf-8")
    return folder


def _no_entities(folder: Path) -> Path:
    _manifest_folder(folder)
    (folder / "default.manifest.cdm.json").write_text('{"entities": []}', encoding="utf-8")
    return folder


def _unrelated(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("hello", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p.mkdir(), p)[1], "does not exist or holds no files"),
        (_broken_model, "model.json is not a valid CDM document"),
        (_no_entities, "default.manifest.cdm.json declares no entities"),
        (_unrelated, "holds no *.manifest.cdm.json, model.json, Delta log"),
        (lambda p: _unrelated(p) / "notes.txt", "is not a CSV or Parquet file"),
    ],
    ids=["missing", "empty", "broken-model-json", "no-entities", "unrelated-files", "unrelated-file"],
)
def test_unusable_profile_sources_fail_one_line(tmp_path, make, says):
    (tmp_path / "lake").mkdir()
    source = make(tmp_path / "profiles")
    code, report = doctor("--output", str(tmp_path / "lake"), "--profiles", str(source))
    assert (code, failed(report)) == (1, ["profiles"])
    assert detail(report, "profiles").startswith(f"--profiles {source}: ")
    assert says in detail(report, "profiles")


# -- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "--output"),
        (["--grant-read", "alice"], "--grant-read 'alice' is not an Entra object id"),
        (["--ci-principal", "not-a-guid"], "--ci-principal 'not-a-guid' is not an Entra object id"),
        (["--reader", "role:admins"], "--reader 'role:admins': expected NAME, user:NAME or group:NAME"),
        (["--profiles", "s3://bucket/customers"], "s3:// is not supported"),
        (
            ["--profiles", "abfss://ci@acct01.dfs.core.windows.net/Customer?sv=1&sig=SECRET"],
            "--profiles: invalid Azure storage URL 'abfss://ci@acct01.dfs.core.windows.net/Customer': "
            "remove the query string",
        ),
    ],
    ids=["no-output", "grant-read", "ci-principal", "reader-form", "profiles-scheme", "profiles-sas"],
)
def test_usage_errors_exit_2(tmp_path, args, says):
    lake = [] if not args else ["--output", str(tmp_path)]
    code, report = doctor(*lake, *args)
    assert code == 2
    assert says in report["error"] and "SECRET" not in report["error"]


def test_usage_error_as_a_process_is_one_line(tmp_path):
    proc = run_cli("doctor", "--output", "s3://bucket/lake")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("insights-link doctor: error: --output 's3://")
    assert proc.stdout == "" and "Traceback" not in proc.stderr


# -- ACL arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acl", "default", "expected"),
    [
        (f"user::rwx,user:{OID}:r-x,group::r-x,mask::r-x,other::---", False, "r-x"),
        (f"user::rwx,user:{OID}:r-x,group::r-x,mask::r--,other::---", False, "r--"),  # masked
        ("user::rwx,group::r-x,other::--x", False, "--x"),  # only other applies
        (f"user::rwx,user:{OID.upper()}:rwx,other::---", False, "rwx"),  # ids compare case-blind
        (f"user::rwx,user:{OID}:--x,default:user:{OID}:r-x,default:mask::r-x", True, "r-x"),
        (f"user::rwx,user:{OID}:r-x,other::---", True, "---"),  # no default entries
    ],
)
def test_effective_permissions(acl, default, expected):
    assert doctor_command.effective_permissions(acl, OID, default=default) == expected


def test_grant_read_on_a_local_lake_fails(tmp_path):
    """export refuses --grant-read on a local folder; doctor says so before the export does."""
    (tmp_path / "lake").mkdir()
    code, report = doctor("--output", str(tmp_path / "lake"), "--grant-read", OID)
    assert (code, failed(report)) == (1, ["namespace"])
    assert "needs an ADLS Gen2 lake" in detail(report, "namespace")


def test_interrupted_doctor_still_deletes_its_probe(tmp_path, monkeypatch):
    """SIGTERM arrives (as the CLI's handler raises it) after the probe was written."""
    import signal

    from insights_link.errors import Interrupted

    def interrupted(self):
        assert self.written and (tmp_path / "lake" / self.written).exists()
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(doctor_command.Doctor, "naming", interrupted)
    (tmp_path / "lake").mkdir()
    with pytest.raises(Interrupted):
        doctor("--output", str(tmp_path / "lake"))
    assert tree(tmp_path / "lake") == []


def test_probes_a_killed_doctor_left_are_removed_once_stale(tmp_path):
    """SIGKILL skips every cleanup: the next doctor deletes probes older than an hour (only
    files named like its probes; a fresh one, maybe a concurrent doctor's, and others stay)."""
    probes = tmp_path / "lake" / doctor_command.PROBE_FOLDER
    probes.mkdir(parents=True)
    stale = probes / "probe-20240101T000000Z-0123456789ab.txt"
    fresh = probes / "probe-20240101T000001Z-ba9876543210.txt"
    other = probes / "notes.txt"
    for path in (stale, fresh, other):
        path.write_text("x")
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    code, report = doctor("--output", str(tmp_path / "lake"))
    assert code == 0, report
    assert "removed 1 probe(s) a killed doctor left" in detail(report, "write")
    assert sorted(p.name for p in probes.iterdir()) == sorted([fresh.name, other.name])
