"""``insights-link share-profiles`` on a local lake: the sample Customer export and segments
shared and read back (CDM object model, DuckDB, Delta), every kind of identifier refused, the
accepted input forms, owner-only folders and POSIX ACLs for readers, and a kill at every step of
the commit followed by a re-run converging on one snapshot."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import stat
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from cdm_check import load_data_source
from conftest import REPO, RUN_TIME, manifest_locations, run_cli, run_killed, start_cli
from faults.lake_checks import wait_for_file
from insights_link.cli import main
from insights_link.core.profiles import Attribute, identifier_reason
from insights_link.profiles.acl import ACCESS, DEFAULT, GROUP, MASK, OTHER, USER, decode_acl

SAMPLE = REPO / "sample_data" / "profiles"
DS = "CustomerProfiles"
ATTRS = ["LoyaltyTier", "City", "LifetimeSpend", "OrdersCount", "EmailOptIn", "FirstPurchaseOn"]


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


def share_args(lake, *extra, profiles=SAMPLE / "Customer", attrs=ATTRS, segments=True) -> list[str]:
    args = ["share-profiles", "--profiles", str(profiles), "--output", str(lake), "--user-key", "WebUserId"]
    for a in attrs:
        args += ["--attribute", a]
    if segments:
        args += ["--segments", str(SAMPLE / "segments" / "HighValue")]
        args += ["--segments", str(SAMPLE / "segments" / "SpringSaleResponders.csv")]
    return args + ["--run-time", RUN_TIME, *extra]


def sample_profiles() -> list[dict]:
    """The sample profiles read independently with the csv module (model.json column order)."""
    model = json.loads((SAMPLE / "Customer" / "model.json").read_text())
    names = [a["name"] for a in model["entities"][0]["attributes"]]
    rows = []
    for part in sorted((SAMPLE / "Customer" / "Snapshot").glob("*.csv")):
        with part.open(newline="") as f:
            rows += [dict(zip(names, r, strict=True)) for r in csv.reader(f)]
    return rows


def expected_memberships() -> set[tuple[str, str]]:
    by_id = {r["CustomerId"]: r["WebUserId"] for r in sample_profiles()}
    pairs = set()
    high = (SAMPLE / "segments" / "HighValue" / "HighValue" / "Snapshot" / "HighValue_1.csv").read_text()
    pairs |= {(by_id[line], "HighValue") for line in high.split()}
    with (SAMPLE / "segments" / "SpringSaleResponders.csv").open(newline="") as f:
        pairs |= {(by_id[r["CustomerId"]], "SpringSaleResponders") for r in csv.DictReader(f)}
    return pairs


def duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.sql("SET TimeZone='UTC'")
    return con


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_shared_as_cdm_and_read_back(tmp_path):
    lake = tmp_path / "lake"
    proc = run_cli(*share_args(lake, "--run-id", "s1", "--json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    folder = lake / DS
    loaded = load_data_source(str(folder))  # Microsoft's CDM object model, as Customer Insights loads it
    assert set(loaded) == {"CustomerDimensions", "SegmentMembership"}
    assert loaded["CustomerDimensions"]["attributes"] == ["WebUserId", *ATTRS]
    entity = json.loads((folder / "CustomerDimensions.cdm.json").read_text())
    types = {a["name"]: a["dataType"] for a in entity["definitions"][0]["hasAttributes"]}
    assert types == {
        "WebUserId": "string",
        "LoyaltyTier": "string",
        "City": "string",
        "LifetimeSpend": "double",
        "OrdersCount": "bigInteger",
        "EmailOptIn": "boolean",
        "FirstPurchaseOn": "dateTime",
    }
    files = [str(folder / loc) for loc in manifest_locations(folder) if loc.startswith("CustomerDimensions/")]
    got = (
        duck()
        .sql(
            f"select WebUserId, LoyaltyTier, City, LifetimeSpend, OrdersCount, EmailOptIn, "
            f"strftime(FirstPurchaseOn, '%Y-%m-%dT%H:%M:%SZ') from read_parquet({files!r})"
        )
        .fetchall()
    )
    want = [
        (
            r["WebUserId"],
            r["LoyaltyTier"],
            r["City"],
            float(r["LifetimeSpend"]),
            int(r["OrdersCount"]),
            r["EmailOptIn"] == "true",
            r["FirstPurchaseOn"],
        )
        for r in sample_profiles()
    ]
    assert sorted(got) == sorted(want)
    schema = pq.read_schema(files[0])
    assert schema.field("FirstPurchaseOn").type == pa.timestamp("us", tz="UTC")
    assert "CustomerId" not in schema.names and "crm_contactid" not in schema.names
    members = [
        str(folder / loc) for loc in manifest_locations(folder) if loc.startswith("SegmentMembership/")
    ]
    got_members = set(duck().sql(f"select WebUserId, Segment from read_parquet({members!r})").fetchall())
    assert got_members == expected_memberships()
    assert report["tables"]["CustomerDimensions"]["rows"] == len(want)
    assert json.loads((folder / "_runs" / "s1.json").read_text())["status"] == "committed"
    assert run_cli("verify", "--lake", str(lake), "--data-source", DS).returncode == 0
    # hidden: owner-only folders and files, no ACL for anyone
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
        with pytest.raises(OSError):
            os.getxattr(path, ACCESS)


def test_list_attributes_says_what_can_be_shared(capsys):
    code, out, _ = cli(
        [
            "share-profiles",
            "--profiles",
            str(SAMPLE / "Customer"),
            "--list-attributes",
            "--user-key",
            "WebUserId",
        ],
        capsys,
    )
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "identifier: the unified customer id" in lines["CustomerId"]
    assert "identifier: an id by its name" in lines["crm_contactid"]
    assert "user key" in lines["WebUserId"]
    for name in ATTRS:
        assert "shareable" in lines[name]


def write_manifest_source(folder: Path) -> Path:
    """A Customer CDM folder with a manifest: keys marked by purpose and trait, a CSV partition
    with a header and a Parquet one."""
    folder.mkdir(parents=True)
    entity = {
        "jsonSchemaSemanticVersion": "1.0.0",
        "imports": [{"corpusPath": "cdm:/foundations.cdm.json"}],
        "definitions": [
            {
                "entityName": "Customer",
                "exhibitsTraits": [
                    {
                        "traitReference": "is.identifiedBy",
                        "arguments": [
                            {"name": "attribute", "value": "Customer/(resolvedAttributes)/ProfileKey"}
                        ],
                    }
                ],
                "hasAttributes": [
                    {"name": "CustomerId", "dataType": "string", "purpose": "identifiedBy"},
                    {"name": "ProfileKey", "dataType": "string"},
                    {"name": "LoyaltyNumber", "dataType": "string"},
                    {"name": "Handle", "dataType": "string", "appliedTraits": ["is.identifiedBy"]},
                    {"name": "WebUserId", "dataType": "string"},
                    {"name": "Tier", "dataType": "string"},
                    {"name": "Visits", "dataType": "int32"},
                    {"name": "Born", "dataType": "date"},
                    {"name": "Vip", "dataType": "boolean"},
                ],
            }
        ],
    }
    (folder / "Customer.cdm.json").write_text(json.dumps(entity))
    (folder / "Customer").mkdir()
    header = "CustomerId,ProfileKey,LoyaltyNumber,Handle,WebUserId,Tier,Visits,Born,Vip\n"
    (folder / "Customer" / "part1.csv").write_text(header + "c1,k1,L1,h1,u1,Gold,3,1990-02-03,true\n")
    pq.write_table(
        pa.table(
            {
                "CustomerId": ["c2"],
                "ProfileKey": ["k2"],
                "LoyaltyNumber": ["L2"],
                "Handle": ["h2"],
                "WebUserId": ["u2"],
                "Tier": ["Silver"],
                "Visits": pa.array([5], pa.int32()),
                "Born": pa.array([None], pa.date32()),
                "Vip": [False],
            }
        ),
        folder / "Customer" / "part2.parquet",
    )
    csv_trait = {
        "traitReference": "is.partition.format.CSV",
        "arguments": [{"name": "columnHeaders", "value": "true"}, {"name": "delimiter", "value": ","}],
    }
    manifest = {
        "manifestName": "ci",
        "entities": [
            {
                "type": "LocalEntity",
                "entityName": "Customer",
                "entityPath": "Customer.cdm.json/Customer",
                "dataPartitions": [
                    {"location": "Customer/part1.csv", "exhibitsTraits": [csv_trait]},
                    {
                        "location": "Customer/part2.parquet",
                        "exhibitsTraits": [{"traitReference": "is.partition.format.parquet"}],
                    },
                ],
            }
        ],
    }
    (folder / "ci.manifest.cdm.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [
        ("CustomerId", "the unified customer id"),
        ("ProfileKey", "the metadata marks it as the entity's key"),
        ("Handle", "the metadata marks it as trait is.identifiedBy"),
        ("LoyaltyNumber", "an id by its name"),
    ],
)
def test_identifiers_marked_by_the_metadata_are_refused(tmp_path, capsys, attribute, reason):
    source = write_manifest_source(tmp_path / "ci")
    lake = tmp_path / "lake"
    code, _, err = cli(share_args(lake, profiles=source, attrs=["Tier", attribute], segments=False), capsys)
    assert code == 2
    assert f"--attribute {attribute!r} is an identifier ({reason}" in err
    assert "Traceback" not in err
    assert not (lake / DS / "_runs").exists()  # nothing written


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [
        ("CustomerId", "the unified customer id"),
        ("crm_contactid", "an id by its name"),
        ("WebUserId", "is the --user-key"),
    ],
)
def test_identifiers_of_the_sample_are_refused(tmp_path, capsys, attribute, reason):
    code, _, err = cli(share_args(tmp_path / "lake", attrs=["City", attribute], segments=False), capsys)
    assert code == 2 and reason in err and attribute in err


def test_model_json_key_annotation_alternate_keys_and_name_conventions(tmp_path, capsys):
    folder = tmp_path / "mj"
    folder.mkdir()
    attributes = [
        {"name": "WebUserId", "dataType": "string"},
        {"name": "Email", "dataType": "string", "annotations": [{"name": "isKey", "value": "true"}]},
        {"name": "AlternateKey_Phone", "dataType": "string"},
        {"name": "source_id", "dataType": "string"},
        {"name": "DeviceGuid", "dataType": "guid"},
        {"name": "LegacyID", "dataType": "string"},
        {"name": "Tier", "dataType": "string"},
    ]
    model = {
        "name": "m",
        "entities": [
            {"$type": "LocalEntity", "name": "Customer", "attributes": attributes, "partitions": []}
        ],
    }
    (folder / "model.json").write_text(json.dumps(model))
    wanted = {
        "Email": "the metadata marks it as an identifier (annotation isKey)",
        "AlternateKey_Phone": "an alternate key",
        "source_id": "an id by its name",
        "DeviceGuid": "an id by its name",
        "LegacyID": "an id by its name",
    }
    for name, reason in wanted.items():
        code, _, err = cli(
            share_args(tmp_path / "lake", profiles=folder, attrs=[name], segments=False), capsys
        )
        assert code == 2 and f"--attribute {name!r} is an identifier ({reason}" in err, err
    code, out, _ = cli(["share-profiles", "--profiles", str(folder), "--list-attributes"], capsys)
    assert code == 0 and "Tier" in out and "shareable" in out


def test_manifest_csv_with_header_and_parquet_partitions_keep_their_types(tmp_path):
    source = write_manifest_source(tmp_path / "ci")
    lake = tmp_path / "lake"
    proc = run_cli(
        *share_args(lake, profiles=source, attrs=["Tier", "Visits", "Born", "Vip"], segments=False),
        "--table-format",
        "delta",
    )
    assert proc.returncode == 0, proc.stderr
    table = DeltaTable(str(lake / DS / "CustomerDimensions")).to_pyarrow_table()
    assert table.schema.field("Visits").type == pa.int64()
    assert table.schema.field("Born").type == pa.date32()
    assert table.schema.field("Vip").type == pa.bool_()
    rows = sorted(
        table.select(["WebUserId", "Tier", "Visits", "Born", "Vip"]).to_pylist(), key=lambda r: r["WebUserId"]
    )
    assert [(r["WebUserId"], r["Tier"], r["Visits"], r["Vip"]) for r in rows] == [
        ("u1", "Gold", 3, True),
        ("u2", "Silver", 5, False),
    ]
    assert str(rows[0]["Born"]) == "1990-02-03" and rows[1]["Born"] is None


def test_plain_parquet_and_delta_profile_sources(tmp_path):
    rows = pa.table({"CustomerId": ["a", "b"], "UserRef": ["u1", "u2"], "Score": [1.5, 2.5]})
    plain = tmp_path / "profiles.parquet"
    pq.write_table(rows, plain)
    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "delta_profiles"), rows)
    for source, ds in ((plain, "FromParquet"), (tmp_path / "delta_profiles", "FromDelta")):
        args = ["share-profiles", "--profiles", str(source), "--output", str(tmp_path / "lake")]
        args += ["--user-key", "UserRef", "--attribute", "Score", "--data-source", ds]
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        locations = manifest_locations(tmp_path / "lake" / ds)
        files = [
            str(tmp_path / "lake" / ds / loc) for loc in locations if loc.startswith("CustomerDimensions/")
        ]
        got = duck().sql(f"select UserRef, Score from read_parquet({files!r})").fetchall()
        assert sorted(got) == [("u1", 1.5), ("u2", 2.5)]


def test_readers_get_posix_acls_and_nobody_else(tmp_path, capsys):
    lake = tmp_path / "lake"
    import grp
    import pwd

    uid, gid = pwd.getpwnam("daemon").pw_uid, grp.getgrnam("nogroup").gr_gid
    same = ["--reader", "daemon", "--reader", f"user:{uid}"]  # the same user again: one entry
    code, _, err = cli(
        share_args(lake, "--reader", "user:daemon", "--reader", "group:nogroup", *same), capsys
    )
    assert code == 0, err
    folder = lake / DS
    for path in [folder, *folder.rglob("*")]:
        is_dir = path.is_dir()
        acl = decode_acl(os.getxattr(path, ACCESS))
        entries = {(tag, ident): perm for tag, perm, ident in acl}
        assert len(entries) == len(acl)  # no principal twice (an invalid ACL)
        want = 5 if is_dir else 4
        assert entries[(USER, uid)] == want and entries[(GROUP, gid)] == want, path
        assert entries[(MASK, 0xFFFFFFFF)] == want
        assert entries[(OTHER, 0xFFFFFFFF)] == 0
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
        if is_dir:
            defaults = {(t, i): p for t, p, i in decode_acl(os.getxattr(path, DEFAULT))}
            assert defaults[(USER, uid)] == 5 and defaults[(OTHER, 0xFFFFFFFF)] == 0
    # re-sharing without readers takes them away again
    code, _, err = cli(share_args(lake), capsys)
    assert code == 0, err
    for path in [folder, *folder.rglob("*")]:
        with pytest.raises(OSError):
            os.getxattr(path, ACCESS)
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_unknown_reader_is_a_usage_error_before_writing(tmp_path, capsys):
    lake = tmp_path / "lake"
    code, _, err = cli(share_args(lake, "--reader", "user:no-such-user-x"), capsys)
    assert code == 2 and "--reader 'user:no-such-user-x': no such local user" in err
    assert not (lake / DS).exists()


def test_new_snapshot_replaces_the_old_one(tmp_path):
    profiles = tmp_path / "Customer"
    shutil.copytree(SAMPLE / "Customer", profiles)
    lake = tmp_path / "lake"
    assert run_cli(*share_args(lake, "--run-id", "r1", profiles=profiles, segments=False)).returncode == 0
    first = manifest_locations(lake / DS)
    for part in (profiles / "Snapshot").glob("*.csv"):
        part.write_text(part.read_text().replace(",Berlin,", ",Munich,"))
    assert run_cli(*share_args(lake, "--run-id", "r2", profiles=profiles, segments=False)).returncode == 0
    second = manifest_locations(lake / DS)
    assert not set(first) & set(second) and all("_r2_" in loc for loc in second)
    assert all((lake / DS / loc).exists() for loc in first)  # left for vacuum
    files = [str(lake / DS / loc) for loc in second if loc.startswith("CustomerDimensions/")]
    cities = {c for (c,) in duck().sql(f"select distinct City from read_parquet({files!r})").fetchall()}
    assert "Munich" in cities and "Berlin" not in cities


@pytest.mark.parametrize("step", ["share_before_commit", "after_moves", "after_manifest"])
def test_kill_and_rerun_converges(tmp_path, step):
    lake = tmp_path / "lake"
    assert run_cli(*share_args(lake, "--run-id", "old", segments=False)).returncode == 0
    killed = run_killed(step, *share_args(lake, "--run-id", "dead"))
    assert killed.returncode == -9, killed.stderr
    again = run_cli(*share_args(lake, "--run-id", "again"))
    assert again.returncode == 0, again.stderr
    folder = lake / DS
    locations = manifest_locations(folder)
    assert {loc.split("/")[0] for loc in locations} == {"CustomerDimensions", "SegmentMembership"}
    assert all("_again_" in loc for loc in locations)
    assert not list((folder / "_staging").glob("*/*"))
    report = json.loads((folder / "_runs" / "dead.json").read_text())
    assert report["status"] in ("committed", "rolled_back")
    verify = run_cli("verify", "--lake", str(lake), "--data-source", DS)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for path in [folder, *folder.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_delta_kill_between_table_commits_is_completed(tmp_path):
    """Delta commits one table at a time: a run killed between two tables is rolled forward
    by the next run, which then publishes its own snapshot."""
    lake = tmp_path / "lake"
    fmt = ("--table-format", "delta")
    assert run_cli(*share_args(lake, "--run-id", "old", *fmt)).returncode == 0
    killed = run_killed("between_table_commits", *share_args(lake, "--run-id", "dead", *fmt))
    assert killed.returncode == -9, killed.stderr
    again = run_cli(*share_args(lake, "--run-id", "again", *fmt))
    assert again.returncode == 0, again.stderr
    assert json.loads((lake / DS / "_runs" / "dead.json").read_text())["status"] == "committed"
    for table in ("CustomerDimensions", "SegmentMembership"):
        dt = DeltaTable(str(lake / DS / table))
        assert all("_again_" in path for path in dt.file_uris()), table
    dims = DeltaTable(str(lake / DS / "CustomerDimensions")).to_pyarrow_table()
    assert dims.num_rows == len(sample_profiles())


def test_file_system_without_acls_is_a_usage_error_simulated(tmp_path, capsys, monkeypatch):
    """Simulated: every file system here holds ACLs, so the kernel's EOPNOTSUPP answer to
    setting one is faked; the run stops with exit 2 before writing anything."""
    import errno

    def no_acls(path, name, value, *args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), path)

    monkeypatch.setattr(os, "setxattr", no_acls)
    lake = tmp_path / "lake"
    code, _, err = cli(share_args(lake, "--reader", "user:daemon"), capsys)
    assert code == 2 and "--reader needs POSIX ACLs" in err and "Traceback" not in err
    assert not (lake / DS / "_runs").exists() and not (lake / DS / "default.manifest.cdm.json").exists()


def test_manifest_with_partition_patterns_and_headerless_csv(tmp_path, capsys):
    """A manifest declaring its partitions by pattern (rootLocation + globPattern), its entity
    document in a subfolder, CSV without a header as the trait says."""
    folder = tmp_path / "ci"
    (folder / "docs").mkdir(parents=True)
    entity = {
        "definitions": [
            {
                "entityName": "Customer",
                "hasAttributes": [
                    {"name": "WebUserId", "dataType": "string"},
                    {"name": "Spend", "dataType": "decimal"},
                    {"name": "Since", "dataType": "dateTime"},
                ],
            }
        ]
    }
    (folder / "docs" / "Customer.cdm.json").write_text(json.dumps(entity))
    for n, line in ((1, "u1,10.5,2024-01-02T03:04:05Z\n"), (2, "u2,,2023-12-31T23:00:00Z\n")):
        (folder / "Customer" / "2024").mkdir(parents=True, exist_ok=True)
        (folder / "Customer" / "2024" / f"part{n}.csv").write_text(line)
    (folder / "Customer" / "notes.txt").write_text("not a partition")
    csv_trait = {
        "traitReference": "is.partition.format.CSV",
        "arguments": [{"name": "columnHeaders", "value": "false"}],
    }
    manifest = {
        "entities": [
            {
                "entityName": "Customer",
                "entityPath": "local:/docs/Customer.cdm.json/Customer",
                "dataPartitionPatterns": [
                    {"rootLocation": "Customer", "globPattern": "**/*.csv", "exhibitsTraits": [csv_trait]}
                ],
            }
        ]
    }
    (folder / "x.manifest.cdm.json").write_text(json.dumps(manifest))
    lake = tmp_path / "lake"
    args = ["share-profiles", "--profiles", str(folder), "--output", str(lake), "--user-key", "WebUserId"]
    code, _, err = cli([*args, "--attribute", "Spend", "--attribute", "Since"], capsys)
    assert code == 0, err
    files = [
        str(lake / DS / loc) for loc in manifest_locations(lake / DS) if loc.startswith("CustomerDimensions/")
    ]
    got = duck().sql(f"select WebUserId, Spend, epoch(Since)::bigint from read_parquet({files!r})").fetchall()
    assert sorted(got) == [("u1", 10.5, 1704164645), ("u2", None, 1704063600)]
    manifest["entities"][0]["dataPartitionPatterns"] = [
        {"rootLocation": "Customer", "regularExpression": "["}
    ]
    (folder / "x.manifest.cdm.json").write_text(json.dumps(manifest))
    code, _, err = cli([*args, "--attribute", "Spend"], capsys)
    assert code == 2 and "is not a valid regular expression" in err


def test_an_export_data_source_is_refused(tmp_path, capsys):
    lake = tmp_path / "lake"
    from conftest import event, export_run, write_jsonl

    assert export_run(write_jsonl(tmp_path / "e.jsonl", [event("a")]), lake, "e1").returncode == 0
    before = sorted(p.name for p in (lake / "EngagementInsights").iterdir())
    mode = stat.S_IMODE((lake / "EngagementInsights").stat().st_mode)
    code, _, err = cli(share_args(lake, "--data-source", "EngagementInsights", segments=False), capsys)
    assert code == 2 and "holds other tables (WebLog)" in err
    assert sorted(p.name for p in (lake / "EngagementInsights").iterdir()) == before
    assert stat.S_IMODE((lake / "EngagementInsights").stat().st_mode) == mode


def test_nested_attribute_types_are_refused(tmp_path, capsys):
    source = tmp_path / "p.parquet"
    pq.write_table(pa.table({"UserRef": ["a"], "Tags": [["x"]], "Level": [1]}), source)
    args = ["share-profiles", "--profiles", str(source)]
    code, out, _ = cli([*args, "--list-attributes"], capsys)
    assert code == 0 and "unsupported" in next(line for line in out.splitlines() if "Tags" in line)
    code, _, err = cli(
        [*args, "--output", str(tmp_path / "lake"), "--user-key", "UserRef", "--attribute", "Tags"], capsys
    )
    assert code == 2 and "--attribute 'Tags' has type list<element: string>" in err


def write_model_source(folder: Path, attributes: list, partitions: dict[str, bytes], header=False) -> Path:
    """A legacy CDM folder: ``attributes`` ((name, dataType) pairs or dicts) and CSV partitions
    (file name -> bytes) listed by their relative location."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in partitions.items():
        (folder / name).write_bytes(data)
    settings = {"$type": "CsvFormatSettings", "columnHeaders": header}
    entity = {
        "$type": "LocalEntity",
        "name": "Customer",
        "attributes": [a if isinstance(a, dict) else {"name": a[0], "dataType": a[1]} for a in attributes],
        "partitions": [{"name": n, "location": n, "fileFormatSettings": settings} for n in partitions],
    }
    (folder / "model.json").write_text(json.dumps({"name": "m", "entities": [entity]}))
    return folder


TYPED = [("WebUserId", "string"), ("Tier", "string"), ("Spend", "decimal"), ("Since", "dateTime")]


def test_metadata_never_makes_it_read_outside_the_folder(tmp_path, capsys):
    """Partition locations climbing out (``..``, an absolute URL with ``..``, a symlink to a file
    outside) and an entity document outside the folder are refused; nothing is read or written."""
    secret = tmp_path / "secret.csv"
    secret.write_text("u1,Gold,1,2024-01-01T00:00:00Z\n")
    relative = write_model_source(tmp_path / "rel", TYPED, {})
    model = json.loads((relative / "model.json").read_text())
    model["entities"][0]["partitions"] = [{"name": "p", "location": "../secret.csv"}]
    (relative / "model.json").write_text(json.dumps(model))
    url = tmp_path / "url"
    shutil.copytree(relative, url)
    model["entities"][0]["partitions"] = [
        {"name": "p", "location": "https://acct.dfs.core.windows.net/fs/x/../../secret.csv"}
    ]
    (url / "model.json").write_text(json.dumps(model))
    link = write_model_source(tmp_path / "link", TYPED, {})
    (link / "p.csv").symlink_to(secret)
    model["entities"][0]["partitions"] = [{"name": "p", "location": "p.csv"}]
    (link / "model.json").write_text(json.dumps(model))
    manifest = write_manifest_source(tmp_path / "ci")
    doc = json.loads((manifest / "ci.manifest.cdm.json").read_text())
    doc["entities"][0]["entityPath"] = "../outside.cdm.json/Customer"
    (tmp_path / "outside.cdm.json").write_text((manifest / "Customer.cdm.json").read_text())
    (manifest / "ci.manifest.cdm.json").write_text(json.dumps(doc))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.csv").symlink_to(secret)  # a plain folder's file linking out: not even its header is read
    for source, attrs in (
        (relative, ["Tier"]),
        (url, ["Tier"]),
        (link, ["Tier"]),
        (manifest, ["Tier"]),
        (plain, ["Tier"]),
    ):
        code, _, err = cli(
            share_args(tmp_path / "lake", profiles=source, attrs=attrs, segments=False), capsys
        )
        assert code == 2 and "outside the folder given" in err and "Traceback" not in err, (source, err)
    assert not (tmp_path / "lake" / DS / "_runs").exists()


def test_hostile_csv_values_name_file_row_and_value(tmp_path, capsys):
    """Values that don't parse as the declared type stop the run naming file, row and value;
    invalid UTF-8 names the line; nothing is committed."""
    good = "u1,Gold,1.5,2024-01-01T00:00:00Z\n"
    cases = {
        "number": (
            good + "u2,Gold,abc,2024-01-01T00:00:00Z\n",
            "p.csv row 2: Spend value 'abc' is not a double",
        ),
        "time": (
            good * 3 + "u3,Gold,1,yesterday\n",
            "p.csv row 4: Since value 'yesterday' is not a timestamp",
        ),
        "columns": (good + "u2,Gold\n", "Expected 4 columns, got 2"),
        "quote": ('u1,"Gold,1.5,2024-01-01T00:00:00Z\n' + good, "Expected 4 columns"),
    }
    for name, (text, message) in cases.items():
        source = write_model_source(tmp_path / name, TYPED, {"p.csv": text.encode()})
        code, _, err = cli(
            share_args(tmp_path / "lake", profiles=source, attrs=["Spend", "Since"], segments=False), capsys
        )
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
    source = write_model_source(
        tmp_path / "utf8", TYPED, {"p.csv": (good + "u2,G\xffld,1,2024-01-01Z\n").encode("latin-1")}
    )
    code, _, err = cli(share_args(tmp_path / "lake", profiles=source, attrs=["Tier"], segments=False), capsys)
    assert code == 2 and "line 2: invalid UTF-8 (byte 0xff)" in err
    assert not (tmp_path / "lake" / DS / "_runs").exists()


def test_csv_quirks_and_timestamps_read_as_utc(tmp_path):
    """BOM, CRLF, doubled quotes, a newline inside a quoted value, blank numbers, timestamps
    without an offset (UTC) or with 7 fraction digits (.NET), and an empty partition (0 rows);
    the values are the same under any host time zone."""
    text = (
        '\ufeffu1,"Gold ""A""\nline2", 1.5 ,2024-01-01T10:00:00.1234567\r\n'
        "u2,Silver,,2024-01-01 10:00:00\r\n"
        "u3,Bronze,2,2024-01-01T10:00:00+05:30\r\n"
    )
    source = write_model_source(tmp_path / "q", TYPED, {"p.csv": text.encode(), "q.csv": b""}, header="false")
    outputs = []
    for zone in ("Pacific/Kiritimati", "America/St_Johns"):
        lake = tmp_path / zone.replace("/", "_")
        args = share_args(lake, profiles=source, attrs=["Tier", "Spend", "Since"], segments=False)
        proc = run_cli(*args, "--run-id", "tz1", env={**os.environ, "TZ": zone})
        assert proc.returncode == 0, proc.stderr
        files = sorted((lake / DS / "CustomerDimensions").rglob("*.parquet"))
        outputs.append([f.read_bytes() for f in files])
        rows = {r["WebUserId"]: r for r in pq.read_table(files[0]).to_pylist()}
    assert outputs[0] == outputs[1]
    assert rows["u1"]["Tier"] == 'Gold "A"\nline2' and rows["u1"]["Spend"] == 1.5
    assert rows["u2"]["Spend"] is None
    assert rows["u1"]["Since"].isoformat() == "2024-01-01T10:00:00.123456+00:00"
    assert rows["u2"]["Since"].isoformat() == "2024-01-01T10:00:00+00:00"
    assert rows["u3"]["Since"].isoformat() == "2024-01-01T04:30:00+00:00"
    assert len(rows) == 3


@pytest.mark.parametrize(
    "name",
    "customerID Customer_Id CUSTOMERID CustomerＩＤ ALTERNATE_KEY AlternateEmail id_customer IdCustomer "
    "CustomerIds CustomerIDs CustomerIdentifier crm_identifier PK AccountNum ClientNo EmailAddress "
    "PrimaryEmail Email_Address MobilePhone SSN".split(),
)
def test_id_names_in_any_case_or_spelling_are_identifiers(name):
    assert identifier_reason(Attribute(name, pa.string())) is not None


@pytest.mark.parametrize(
    "name", "EmailOptIn Paid Grid Video Idle IdealCustomer KeyAccount Country Age".split()
)
def test_ordinary_words_are_shareable(name):
    assert identifier_reason(Attribute(name, pa.string())) is None


def test_key_marks_spelled_in_variants_are_identifiers(tmp_path, capsys):
    """A CDM purpose given as a reference object, traits in other letter cases or as sub-traits,
    and model.json annotations spelled differently all mark identifiers."""
    source = write_manifest_source(tmp_path / "ci")
    doc = json.loads((source / "Customer.cdm.json").read_text())
    attrs = doc["definitions"][0]["hasAttributes"]
    attrs[5]["purpose"] = {"purposeReference": "identifiedBy"}  # Tier
    attrs[6]["appliedTraits"] = [{"traitReference": "IS.IdentifiedBy"}]  # Visits
    attrs[7]["appliedTraits"] = ["means.identity.brand"]  # Born
    (source / "Customer.cdm.json").write_text(json.dumps(doc))
    model = write_model_source(
        tmp_path / "mj",
        [
            ("WebUserId", "string"),
            {"name": "Tier", "annotations": [{"name": "Is_Primary_Key", "value": True}]},
        ],
        {},
    )
    for folder, name in ((source, "Tier"), (source, "Visits"), (source, "Born"), (model, "Tier")):
        code, _, err = cli(
            share_args(tmp_path / "lake", profiles=folder, attrs=[name], segments=False), capsys
        )
        assert code == 2 and f"--attribute {name!r} is an identifier (the metadata marks it" in err, err


def test_frozen_run_keeps_the_lock_and_umask_000_stays_owner_only(tmp_path):
    """A run frozen (SIGSTOP) inside its commit keeps the data source's lock: a second run is
    busy (exit 4) and changes nothing; resumed, the frozen run commits. Under umask 000 every
    folder and file of the data source ends owner-only; ``forget`` refuses the profile tables."""
    lake = tmp_path / "lake"
    pause = tmp_path / "pause"
    env = {"INSIGHTS_LINK_PAUSE_AT": "share_before_commit", "INSIGHTS_LINK_PAUSE_FILE": str(pause)}
    old = os.umask(0)
    try:
        frozen = start_cli(*share_args(lake, "--run-id", "f1", attrs=["City"]), env=env)
        wait_for_file(pause, frozen)
        frozen.send_signal(signal.SIGSTOP)
        second = run_cli(*share_args(lake, "--run-id", "f2", "--lock-wait", "0", attrs=["City"]))
        assert second.returncode == 4, second.stderr
        assert not (lake / DS / "default.manifest.cdm.json").exists()
        frozen.send_signal(signal.SIGCONT)
        pause.unlink()
        _out, err = frozen.communicate(timeout=120)
    finally:
        os.umask(old)
    assert frozen.returncode == 0, err
    assert json.loads((lake / DS / "_runs" / "f1.json").read_text())["status"] == "committed"
    assert not (lake / DS / "_runs" / "f2.json").exists()
    loose = [
        str(p)
        for p in [lake / DS, *(lake / DS).rglob("*")]
        if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert loose == []
    before = sorted(str(p) for p in (lake / DS).rglob("*.parquet"))
    forgot = run_cli("forget", "--lake", str(lake), "--data-source", DS, "--customer-id", "cust-00001")
    assert forgot.returncode == 1 and "has no CustomerId column" in forgot.stderr, forgot.stderr
    assert sorted(str(p) for p in (lake / DS).rglob("*.parquet")) == before


def test_a_sas_token_in_a_source_url_is_never_printed(tmp_path, capsys):
    sas = "sv=2024-01-01&sig=SECRETSIGNATURE"
    url = f"https://acct.blob.core.windows.net/fs/Customer?{sas}"
    for argv in (
        ["share-profiles", "--profiles", url, "--list-attributes"],
        share_args(tmp_path / "lake", "--segments", url, "--json", attrs=["City"], segments=False),
    ):
        code, out, err = cli(argv, capsys)
        assert code == 2 and "remove the query string" in err and "SECRETSIGNATURE" not in out + err


def test_user_key_must_be_text_or_an_integer(tmp_path, capsys):
    source = tmp_path / "p.parquet"
    pq.write_table(pa.table({"Key": [1.0, 2.5], "Tier": ["a", "b"]}), source)
    argv = ["share-profiles", "--profiles", str(source), "--output", str(tmp_path / "lake")]
    code, _, err = cli([*argv, "--user-key", "Key", "--attribute", "Tier"], capsys)
    assert code == 2 and "--user-key 'Key' has type double" in err
    assert not (tmp_path / "lake").exists()


def test_column_names_the_tables_hold_or_case_twins_are_refused(tmp_path, capsys):
    """A user key named ``Segment``, an attribute named ``ActivityDate`` (Delta's partition
    column) and attributes differing only in case would be duplicate columns: exit 2."""
    source = tmp_path / "p.parquet"
    pq.write_table(pa.table({"Segment": ["u1"], "ActivityDate": ["x"], "Tier": ["a"], "tier": ["b"]}), source)
    argv = [
        "share-profiles",
        "--profiles",
        str(source),
        "--output",
        str(tmp_path / "lake"),
        "--table-format",
        "delta",
    ]
    for extra, says in (
        (["--user-key", "Segment", "--attribute", "Tier"], "SegmentMembership's segment column"),
        (["--user-key", "Tier", "--attribute", "ActivityDate"], "the lake's partition column"),
        (["--user-key", "ActivityDate", "--attribute", "Tier"], "the lake's partition column"),
        (["--user-key", "Tier", "--attribute", "tier"], "differ only in letter case"),
    ):
        code, _, err = cli([*argv, *extra], capsys)
        assert code == 2 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "lake").exists()


def test_metadata_of_the_wrong_shape_and_partitions_of_another_schema(tmp_path, capsys):
    """Valid JSON that isn't shaped like the metadata, and a Parquet partition lacking a
    column or holding text where the metadata says integer: exit 2 naming the file, no traceback."""
    bad = {"list": [1, 2], "entities": {"entities": {"a": 1}}, "nameless": None}
    for name, doc in bad.items():
        folder = tmp_path / name
        folder.mkdir()
        if doc is None:
            write_model_source(folder, [{"dataType": "string"}], {})
        else:
            (folder / "model.json").write_text(json.dumps(doc))
        code, _, err = cli(["share-profiles", "--profiles", str(folder), "--list-attributes"], capsys)
        assert code == 2 and "is not shaped like Customer Insights' metadata" in err, err
    two = tmp_path / "two"
    two.mkdir()
    entities = [{"name": n, "attributes": [{"name": "CustomerId"}]} for n in ("A", "B")]
    (two / "model.json").write_text(json.dumps({"entities": entities}))
    code, _, err = cli(share_args(tmp_path / "lake", "--segments", str(two), segments=False), capsys)
    assert code == 2 and "holds several entities (A, B); give one segment's folder" in err, err
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"WebUserId": ["u1"], "Visits": pa.array([1], pa.int32())}), parts / "a.parquet")
    pq.write_table(pa.table({"WebUserId": ["u2"], "Visits": ["many"]}), parts / "b.parquet")
    pq.write_table(pa.table({"WebUserId": ["u3"]}), parts / "c.parquet")
    argv = [
        "share-profiles",
        "--profiles",
        str(parts),
        "--output",
        str(tmp_path / "lake"),
        "--user-key",
        "WebUserId",
    ]
    code, _, err = cli([*argv, "--attribute", "Visits"], capsys)
    assert code == 2 and "b.parquet row 1: Visits value 'many' is not a int32" in err
    (parts / "b.parquet").unlink()
    code, _, err = cli([*argv, "--attribute", "Visits"], capsys)
    assert code == 2 and "c.parquet can't be read" in err and "Visits" in err and "UTF-8" not in err


def test_delta_sources_with_deletion_vectors_and_column_mapping(tmp_path):
    """Rows a deletion vector removed stay removed, a column-mapped table's columns keep their
    values (its physical column names differ from the logical ones), and a log pointing at a
    file outside the table folder is refused."""
    from deltalake import write_deltalake

    rows = pa.table({"WebUserId": ["u1", "u2", "u3"], "Tier": ["a", "b", "c"]})
    mapped, deleted = tmp_path / "mapped", tmp_path / "deleted"
    mapping = {
        "delta.columnMapping.mode": "name",
        "delta.minReaderVersion": "2",
        "delta.minWriterVersion": "5",
    }
    write_deltalake(str(mapped), rows, configuration=mapping)
    write_deltalake(str(deleted), rows, configuration={"delta.enableDeletionVectors": "true"})
    DeltaTable(str(deleted)).delete("WebUserId = 'u2'")
    for source, want in ((mapped, rows), (deleted, rows.filter(pa.array([True, False, True])))):
        lake = tmp_path / f"lake_{source.name}"
        argv = [
            "--profiles",
            str(source),
            "--output",
            str(lake),
            "--user-key",
            "WebUserId",
            "--attribute",
            "Tier",
        ]
        proc = run_cli("share-profiles", *argv)
        assert proc.returncode == 0, proc.stderr
        (written,) = (lake / DS / "CustomerDimensions").rglob("*.parquet")
        assert sorted(pq.read_table(written).to_pylist(), key=str) == sorted(want.to_pylist(), key=str)
    # a log whose add action names a file outside the table folder is refused, not read
    escaping = tmp_path / "escaping"
    write_deltalake(str(escaping), rows)
    (data,) = escaping.glob("*.parquet")
    data.rename(tmp_path / "outside.parquet")
    log = escaping / "_delta_log" / "00000000000000000000.json"
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    for action in actions:
        if "add" in action:
            action["add"]["path"] = "../outside.parquet"
    log.write_text("".join(json.dumps(a) + "\n" for a in actions))
    argv = ["--profiles", str(escaping), "--output", str(tmp_path / "lake_x"), "--user-key", "WebUserId"]
    proc = run_cli("share-profiles", *argv, "--attribute", "Tier")
    assert proc.returncode == 2 and "outside its folder" in proc.stderr, proc.stderr
    assert not (tmp_path / "lake_x" / DS / "_runs").exists()


def test_text_of_any_arrow_string_type_converts_alike():
    """Delta's engine may hand text over as string_view or large_string: trimmed, blank = null."""
    from insights_link.profiles.source import _converted

    for kind in (pa.string(), pa.large_string(), pa.string_view()):
        column = pa.chunked_array([pa.array([" 1 ", "", None, "2"], kind)])
        assert _converted(column, pa.field("N", pa.int64()), "f", 1).to_pylist() == [1, None, None, 2]
