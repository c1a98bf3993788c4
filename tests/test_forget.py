"""``insights-link forget``: a customer's rows leave every table and every reader's view (CDM SDK,
DuckDB, deltalake), their dead letters leave ``_deadletter/``, other customers' rows keep their
values, incremental tables get a Deletes file, reports never hold an id, and a killed forget
converges when run again."""

from __future__ import annotations

import gzip
import json
import signal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from cdm_check import load_data_source
from conftest import COMMIT_STEPS, event, run_cli, run_reports, write_jsonl
from faults.lake_checks import committed_ids, committed_locations
from insights_link.storage import open_storage

DS = "EngagementInsights"
GONE, ALSO_GONE, STAYS = "cust-gone", "cust-also", "cust-stays"


def _events(tmp_path):
    """Rows of three customers over two dates, and dead letters quoting them."""
    lines = [
        event("g1", user=GONE),
        event("g2", user=GONE, ts="2024-05-02T10:00:00Z"),
        event("a1", user=ALSO_GONE, ts="2024-05-02T11:00:00Z"),
        event("s1", user=STAYS),
        event("s2", user=STAYS, ts="2024-05-02T12:00:00Z"),
        event("bad-uri", user=GONE, uri="not a uri"),  # dead letter: decoded, Signal.User.Id = GONE
        event("bad-uri2", user=STAYS, uri="not a uri"),  # dead letter of a customer who stays
        '{"Signal": {"User": {"Id": "cust-gone"}, "Export": ',  # undecodable line quoting GONE
        "garbage without a customer",
    ]
    return write_jsonl(tmp_path / "in" / "e.jsonl", lines)


def _rows(lake) -> list[dict]:
    storage = open_storage(str(lake))
    tables = [
        pq.read_table(lake / DS / loc) for loc in committed_locations(storage, DS) if "/Deletes/" not in loc
    ]
    return pa.concat_tables(tables).sort_by("ActivityId").to_pylist()


def _letters(lake) -> list[dict]:
    out = []
    for f in sorted((lake / DS / "_deadletter").glob("*.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(f.read_bytes()).splitlines()]
    return out


def _export(source, lake, *extra):
    proc = run_cli(
        "export", "--input", str(source), "--output", str(lake), "--run-time", "2026-11-28T12:00:00Z", *extra
    )
    assert proc.returncode == 0, proc.stderr


def _forget(lake, *ids, env=None, extra=()):
    args = [a for i in ids for a in ("--customer-id", i)]
    return run_cli("forget", "--lake", str(lake), *args, "--run-id", "f1", *extra, env=env)


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_forgotten_customers_leave_every_table_reader_and_dead_letter(tmp_path, fmt):
    lake = tmp_path / "lake"
    _export(_events(tmp_path), lake, "--table-format", fmt)
    before = _rows(lake)
    letters_before = _letters(lake)
    assert len(letters_before) == 4

    proc = _forget(lake, GONE, ALSO_GONE, "nobody")
    assert proc.returncode == 0, proc.stderr
    assert "3 row(s) and 2 dead letter(s) removed" in proc.stdout
    assert "1 id(s) matched nothing: nobody" in proc.stdout

    after = _rows(lake)
    assert after == [r for r in before if r["CustomerId"] == STAYS]  # the others' values untouched
    assert committed_ids(str(lake), settled=False) == ["s1", "s2"]
    remaining = _letters(lake)
    assert sorted(letter["payload"] for letter in remaining if "bad-uri2" not in letter["payload"]) == [
        "garbage without a customer"
    ]
    assert len(remaining) == 2
    # what each reader sees
    files = [str(lake / DS / loc) for loc in committed_locations(open_storage(str(lake)), DS)]
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    query = f"select count(*) from read_parquet({files!r}) where CustomerId in ('{GONE}', '{ALSO_GONE}')"
    assert con.execute(query).fetchall() == [(0,)]
    if fmt == "delta":
        table = DeltaTable(str(lake / DS / "WebLog"))
        assert sorted(table.to_pyarrow_table()["CustomerId"].to_pylist()) == [STAYS, STAYS]
        assert not table.protocol().reader_features  # copy-on-write, no deletion vectors
        assert [h.get("insights_link.run_id") for h in table.history()][0] == "f1"
    else:
        loaded = load_data_source(str(lake / DS))
        assert len(loaded["WebLog"]["partitions"]) == 2
    # the report counts, and holds no id
    report = json.loads((lake / DS / "_runs" / "f1.json").read_text())
    assert report["rows_removed"] == 3 and report["dead_letters_removed"] == 2
    assert report["tables"]["WebLog"]["rows_removed"] == 3
    assert report["ids"]["given"] == 3 and report["ids"]["unmatched"] == 1
    text = (lake / DS / "_runs" / "f1.json").read_text()
    assert GONE not in text and ALSO_GONE not in text and "nobody" not in text
    # the old files stay for readers of the previous state until vacuum
    for old in report["partitions_removed"]:
        assert (lake / DS / old).exists()


def test_incremental_tables_get_a_deletes_file_customer_insights_reads(tmp_path):
    lake = tmp_path / "lake"
    first = write_jsonl(tmp_path / "a.jsonl", [event("s0", user=STAYS)])
    _export(first, lake, "--layout", "incremental")
    _export(_events(tmp_path), lake, "--layout", "incremental")
    proc = run_cli(
        "forget",
        "--lake",
        str(lake),
        "--customer-id",
        GONE,
        "--run-id",
        "f1",
        "--run-time",
        "2026-11-29T15:20:00Z",
    )
    assert proc.returncode == 0, proc.stderr
    deletes = sorted(
        (lake / DS / "WebLog" / "IncrementalData" / "2026" / "11" / "29" / "15" / "Deletes").glob("*.parquet")
    )
    assert len(deletes) == 1
    removed = pq.read_table(deletes[0])
    assert sorted(removed["ActivityId"].to_pylist()) == ["g1", "g2"]
    assert removed["CustomerId"].null_count == removed.num_rows  # names the keys, nothing else
    manifest = json.loads((lake / DS / "default.manifest.cdm.json").read_text())
    (entity,) = manifest["entities"]
    types = {
        p["location"]: p["exhibitsTraits"][1]["arguments"][0]["value"]
        for p in entity.get("incrementalPartitions", [])
    }
    assert types[str(deletes[0].relative_to(lake / DS))] == "Delete"
    assert sorted(r["ActivityId"] for r in _rows(lake)) == ["a1", "s0", "s1", "s2"]
    load_data_source(str(lake / DS))


@pytest.mark.parametrize("step", [*COMMIT_STEPS, "forget_before_dead_letters"])
def test_killed_forget_then_rerun_converges(tmp_path, step):
    lake = tmp_path / "lake"
    _export(_events(tmp_path), lake)
    killed = run_cli(
        "forget",
        "--lake",
        str(lake),
        "--customer-id",
        GONE,
        "--run-id",
        "k1",
        env={"INSIGHTS_LINK_KILL_AT": step},
    )
    assert killed.returncode == -signal.SIGKILL
    rerun = run_cli("forget", "--lake", str(lake), "--customer-id", GONE, "--run-id", "k2")
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(r["CustomerId"] for r in _rows(lake)) == [ALSO_GONE, STAYS, STAYS]
    assert committed_ids(str(lake), settled=False) == ["a1", "s1", "s2"]
    assert not any(GONE in json.dumps(letter) for letter in _letters(lake))
    assert not any((lake / DS / "_staging").rglob("*"))


def test_ids_file_with_blanks_and_repeats_and_usage_errors(tmp_path):
    lake = tmp_path / "lake"
    _export(_events(tmp_path), lake)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"\n{GONE}\n  \n {GONE} \n{ALSO_GONE}\n")
    proc = run_cli("forget", "--lake", str(lake), "--customer-ids-file", str(ids), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ids"] == {"given": 2, "unmatched": 0, "blank": 2, "repeated": 1}
    assert report["rows_removed"] == 3
    none = run_cli("forget", "--lake", str(lake))
    assert none.returncode == 2 and "--customer-id" in none.stderr
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    assert run_cli("forget", "--lake", str(lake), "--customer-ids-file", str(blank)).returncode == 2
    missing = run_cli("forget", "--lake", str(lake), "--customer-ids-file", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    reports = run_reports(lake / DS)
    assert all(GONE not in json.dumps(r) for r in reports)


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_forget_vacuum_deletes_the_old_files_at_once(tmp_path, fmt):
    lake = tmp_path / "lake"
    _export(_events(tmp_path), lake, "--table-format", fmt)
    proc = _forget(lake, GONE, extra=("--vacuum",))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((lake / DS / "_runs" / "f1.json").read_text())
    old = report["partitions_removed"]
    assert old and not any((lake / DS / loc).exists() for loc in old)
    assert committed_ids(str(lake)) == ["a1", "s1", "s2"]  # settled: no unreferenced file left
    on_disk = b"".join(p.read_bytes() for p in (lake / DS).rglob("*.parquet"))
    assert GONE.encode() not in on_disk


def test_forget_in_a_data_source_holding_only_dead_letters(tmp_path):
    lake = tmp_path / "lake"
    _export(write_jsonl(tmp_path / "bad.jsonl", [f"garbage of {GONE}", "garbage of nobody"]), lake)
    proc = _forget(lake, GONE)
    assert proc.returncode == 0, proc.stderr
    assert "0 row(s) and 1 dead letter(s) removed" in proc.stdout
    assert [letter["payload"] for letter in _letters(lake)] == ["garbage of nobody"]
