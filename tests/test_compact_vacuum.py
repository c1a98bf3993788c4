"""``insights-link compact`` and ``vacuum`` through the real CLI on local lakes, both table formats:
many small runs merge into few files with the same rows, readers of the previous state keep their
files until a vacuum, vacuum keeps what its retention and the exporter's naming rule protect,
killed compactions and vacuums converge, and incremental hour folders are never rewritten."""

from __future__ import annotations

import hashlib
import json
import signal
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from conftest import COMMIT_STEPS, event, run_cli, run_killed, start_cli, write_jsonl
from faults.lake_checks import committed_ids, committed_locations, wait_for_file
from insights_link.core.contract import ACTIVITY_COLUMNS, activity_schema
from insights_link.lake.cdm import MANIFEST_FILE, entity_document, manifest_document
from insights_link.lake.delta import DeltaFormat, delta_location
from insights_link.lake.layout import full_location, partition_file_name
from insights_link.lake.maintenance import exporter_written, fingerprint, plan_bins
from insights_link.lake.parquet import write_parquet
from insights_link.lake.tableformat import TableState
from insights_link.storage import open_storage

pytestmark = pytest.mark.timeout(300)

DS = "EngagementInsights"
DATES = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04"]
#: the operations' clock: in the past, so Delta's vacuum (real clock) and ours agree
T0 = (datetime.now(UTC) - timedelta(days=20)).replace(minute=0, second=0, microsecond=0)


def at(hours: float) -> str:
    """``--run-time`` T0 + hours."""
    return (T0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def small_run(run: int, table: str = "WebLog", rows: int = 5) -> pa.Table:
    """A small run's rows on one date (ids unique per table and run; some nulls; addresses that
    hardly compress, so file sizes follow the row count)."""
    day = DATES[run % len(DATES)]
    base = datetime.fromisoformat(day).replace(tzinfo=UTC)
    data = {
        "ActivityId": [f"{table}-{run:03d}-{k}" for k in range(rows)],
        "CustomerId": [f"u{(run * 7 + k) % 13}" for k in range(rows)],
        "ActivityTime": [base + timedelta(minutes=run % 97, seconds=k) for k in range(rows)],
        "EventActivity": ["Click" if k % 2 else "View" for k in range(rows)],
        "WebAddress": [
            f"https://contoso.com/{hashlib.sha1(b'%d-%d' % (run, k)).hexdigest()}" for k in range(rows)
        ],
        "Details": [None if k == 0 else f"d{k}" for k in range(rows)],
        "ActivityType": [table] * rows,
        "LastUpdated": [base + timedelta(days=1)] * rows,
    }
    return pa.table(data, schema=activity_schema())


def plant_runs(
    lake_url: str, fmt: str, runs: int = 200, tables: tuple[str, ...] = ("WebLog",), rows: int = 5
) -> None:
    """A data source as ``runs`` small committed runs left it (one file per run and table), written
    directly: Parquet files where the exporter puts them, then the manifest and entity documents
    (CDM) or one Delta version listing them (Delta)."""
    storage = open_storage(lake_url)
    states = {}
    for table in tables:
        files = []
        for run in range(runs):
            data = small_run(run, table, rows)
            date = DATES[run % len(DATES)]
            name = partition_file_name(table, date, f"r{run:03d}", 0)
            location = (delta_location if fmt == "delta" else full_location)(table, date, name)
            write_parquet(storage, f"{DS}/{location}", data, activity_schema())
            files.append({"location": location, "table": table, "date": date, "rows": data.num_rows})
        if fmt == "delta":
            DeltaFormat().create_with(storage, DS, table, ACTIVITY_COLUMNS, files, lambda: None)
        else:
            storage.write_bytes(f"{DS}/{table}.cdm.json", entity_document(table, ACTIVITY_COLUMNS))
        states[table] = TableState(table, [f["location"] for f in files])
    if fmt == "cdm":
        storage.write_bytes(f"{DS}/{MANIFEST_FILE}", manifest_document(DS, states))


def committed_rows(lake_url: str) -> list[dict]:
    """Every row the committed state references (CDM manifest or Delta logs), sorted by id."""
    storage = open_storage(lake_url)
    rows = []
    for location in committed_locations(storage, DS):
        rows += pq.read_table(pa.BufferReader(storage.read_bytes(f"{DS}/{location}"))).to_pylist()
    return sorted(rows, key=lambda r: r["ActivityId"])


def cli(*args: str, env: dict | None = None) -> dict:
    """Run a lake subcommand that must succeed; returns its JSON report."""
    proc = run_cli(*args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def compact(lake_url: str, run_id: str, hours: float = 0, *extra: str) -> dict:
    return cli("compact", "--lake", lake_url, "--run-id", run_id, "--run-time", at(hours), *extra)


def vacuum(lake_url: str, run_id: str, hours: float, *extra: str) -> dict:
    return cli("vacuum", "--lake", lake_url, "--run-id", run_id, "--run-time", at(hours), *extra)


def parquet_on_storage(lake_url: str) -> set[str]:
    storage = open_storage(lake_url)
    return {o.key[len(DS) + 1 :] for o in storage.list(DS) if o.key.endswith(".parquet")}


def check_compact_and_vacuum(lake_url: str, fmt: str, tmp_path) -> None:
    """Plant 200 runs, compact, check rows, old readers, reruns and vacuum with and without the
    retention; shared by the local and the Azurite tests."""
    plant_runs(lake_url, fmt)
    storage = open_storage(lake_url)
    before = committed_rows(lake_url)
    old_locations = committed_locations(storage, DS)
    assert len(before) == 1000 and len(old_locations) == 200
    old_version = None
    if fmt == "delta":
        uri, options = storage.external(f"{DS}/WebLog")
        old_version = DeltaTable(uri, storage_options=options).version()

    report = compact(lake_url, "c1")
    assert report["operation"] == "compact" and report["status"] == "committed"
    assert report["tables"]["WebLog"]["files_before"] == 200
    assert report["tables"]["WebLog"]["files_after"] == len(DATES)
    assert {d["date"] for d in report["dates"]} == set(DATES)
    assert all(d["checksum_before"] == d["checksum_after"] for d in report["dates"])
    assert sorted(report["partitions_removed"]) == old_locations
    new_locations = committed_locations(storage, DS)
    assert len(new_locations) == len(DATES) and all("_c1_" in loc for loc in new_locations)
    assert committed_rows(lake_url) == before
    # readers of the previous state still find every file it lists
    assert set(old_locations) <= parquet_on_storage(lake_url)
    if fmt == "delta":
        uri, options = storage.external(f"{DS}/WebLog")
        old = DeltaTable(uri, version=old_version, storage_options=options).to_pyarrow_table()
        assert old.drop_columns(["ActivityDate"]).sort_by("ActivityId").to_pylist() == before
        log = DeltaTable(uri, storage_options=options).history(1)[0]
        assert log.get("insights_link.run_id") == "c1"
        last = sorted(o.key for o in storage.list(f"{DS}/WebLog/_delta_log") if o.key.endswith(".json"))[-1]
        actions = [json.loads(line) for line in storage.read_bytes(last).splitlines()]
        assert not any("metaData" in a or "protocol" in a for a in actions)  # the schema as it was
        assert all(a[k]["dataChange"] is False for a in actions for k in ("add", "remove") if k in a)
    # nothing left to do: a second compaction commits nothing
    again = compact(lake_url, "c2", 0.5)
    assert again["nothing_to_do"] is True and committed_locations(storage, DS) == new_locations

    # dry run: lists the 200, deletes and writes nothing
    on_disk = parquet_on_storage(lake_url)
    dry = vacuum(lake_url, "v0", 1, "--retain-hours", "0", "--dry-run")
    assert dry["status"] == "dry_run" and sorted(d["location"] for d in dry["deleted"]) == old_locations
    assert parquet_on_storage(lake_url) == on_disk and not storage.exists(f"{DS}/_runs/v0.json")
    # within the retention: nothing deleted
    kept = vacuum(lake_url, "v1", 1)
    assert kept["deleted"] == [] and len(kept["waiting"]) == 200
    assert parquet_on_storage(lake_url) == on_disk
    # past it (200 h later on the operations' clock): the replaced files go, nothing else
    done = vacuum(lake_url, "v2", 200)
    assert sorted(d["location"] for d in done["deleted"]) == old_locations
    assert done["bytes_deleted"] == sum(d["bytes"] for d in done["deleted"]) > 0
    assert parquet_on_storage(lake_url) == set(new_locations)
    assert committed_ids(lake_url) == sorted(r["ActivityId"] for r in before)
    assert committed_rows(lake_url) == before


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_200_small_runs_compact_into_one_file_a_date_and_vacuum_after_the_retention(tmp_path, fmt):
    check_compact_and_vacuum(str(tmp_path / "lake"), fmt, tmp_path)


def test_small_target_splits_each_date_into_several_files_and_reruns_converge(tmp_path):
    lake = str(tmp_path / "lake")
    plant_runs(lake, "cdm", runs=40, rows=2000)
    before = committed_rows(lake)
    size = max(o.size for o in open_storage(lake).list(DS) if o.key.endswith(".parquet"))
    target_mb = f"{size * 3.5 / (1024 * 1024):.6f}"  # about three small files a bin
    report = compact(lake, "c1", 0, "--target-file-mb", target_mb)
    per_date = {d["date"]: len(d["written"]) for d in report["dates"]}
    assert all(n >= 3 for n in per_date.values()), per_date
    assert committed_rows(lake) == before
    assert compact(lake, "c2", 1, "--target-file-mb", target_mb)["nothing_to_do"] is True


def _export(source, lake, run_id, hours, *extra):
    proc = run_cli(
        "export",
        "--input",
        str(source),
        "--output",
        lake,
        "--run-id",
        run_id,
        "--run-time",
        at(hours),
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _inputs(tmp_path, runs: int) -> list:
    days = ["2024-05-01T10:00:00Z", "2024-05-02T11:00:00Z"]
    return [
        write_jsonl(
            tmp_path / "in" / f"batch{n}.jsonl",
            [event(f"e{n}-{k}", ts=days[k % 2], user=f"u{k}") for k in range(4)],
        )
        for n in range(runs)
    ]


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_real_exports_compact_vacuum_keeps_users_files_and_later_exports_still_dedupe(tmp_path, fmt):
    lake = str(tmp_path / "lake")
    ds = tmp_path / "lake" / DS
    inputs = _inputs(tmp_path, 5)
    for n, source in enumerate(inputs):
        _export(source, lake, f"r{n}", n, "--table-format", fmt)
    ids = committed_ids(lake)
    assert len(ids) == 20 and len(committed_locations(open_storage(lake), DS)) == 10
    # a user's files in the table folder: not the exporter's, never deleted
    mine = ds / "WebLog" / "FullData" / "2024" / "05" / "01" / "mine.parquet"
    mine.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": [1]}), mine)
    notes = ds / "WebLog" / "notes.txt"
    notes.write_text("my notes")
    lookalike = ds / "WebLog" / "Archive" / "WebLog_20240501_old_000.parquet"  # right name, wrong folder
    lookalike.parent.mkdir(parents=True)
    lookalike.write_bytes(mine.read_bytes())

    report = compact(lake, "c1", 10)
    assert report["tables"]["WebLog"]["files_after"] == 2
    assert committed_ids(lake, settled=False) == ids
    # on the real clock, so Delta's own vacuum (full) also lists the user's files: they stay
    vacuumed = cli("vacuum", "--lake", lake, "--run-id", "v1", "--retain-hours", "0")
    assert len(vacuumed["deleted"]) == 10
    assert mine.exists() and notes.read_text() == "my notes" and lookalike.exists()
    for path in (mine, notes, lookalike):
        path.unlink()
    assert committed_ids(lake) == ids  # no orphans: every Parquet file is referenced
    # the reports of compact and vacuum don't disturb the committed-inputs index or verify
    fmt_arg = ("--table-format", fmt)
    again = run_cli("export", "--input", str(inputs[0]), "--output", lake, "--run-id", "r9", *fmt_arg)
    assert again.returncode == 0 and "inputs skipped" in again.stdout
    reprocess = run_cli(
        "export", "--input", str(inputs[1]), "--output", lake, "--run-id", "r10", "--reprocess", *fmt_arg
    )
    assert reprocess.returncode == 0, reprocess.stderr
    report = json.loads((ds / "_runs" / "r10.json").read_text())
    assert report["activities_written"] == 0 and report["duplicates_dropped"] == 4
    verify = run_cli("verify", "--lake", lake)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_incremental_hour_folders_are_never_rewritten(tmp_path):
    lake = str(tmp_path / "lake")
    ds = tmp_path / "lake" / DS
    inputs = _inputs(tmp_path, 5)
    for n, source in enumerate(inputs):
        _export(source, lake, f"r{n}", n, "--layout", "full" if n < 3 else "incremental")
    hours = sorted(ds.glob("WebLog/IncrementalData/**/*.parquet"))
    assert len(hours) == 4  # two runs, two dates each
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in hours}
    manifest = json.loads((ds / MANIFEST_FILE).read_text())
    incremental = manifest["entities"][0]["incrementalPartitions"]
    entity = (ds / "WebLog.cdm.json").read_bytes()
    ids = committed_ids(lake)

    report = compact(lake, "c1", 10)
    assert report["tables"]["WebLog"]["incremental_files"] == 4
    assert report["tables"]["WebLog"]["files_before"] == 6 and report["tables"]["WebLog"]["files_after"] == 2
    assert all("/FullData/" in loc for loc in report["partitions_removed"] + report["partitions_written"])
    after = json.loads((ds / MANIFEST_FILE).read_text())["entities"][0]
    assert after["incrementalPartitions"] == incremental
    assert (ds / "WebLog.cdm.json").read_bytes() == entity  # the columns declared as before
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in hours} == stamps
    vacuum(lake, "v1", 11, "--retain-hours", "0")
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in hours} == stamps
    assert committed_ids(lake) == ids


KILL_STEPS = [s for s in COMMIT_STEPS if s != "after_staged_file"] + ["compact_after_staged_bin"]


@pytest.mark.parametrize(
    ("fmt", "step"),
    [(f, s) for f in ("cdm", "delta") for s in KILL_STEPS] + [("delta", "between_table_commits")],
)
def test_killed_compaction_then_rerun_converges(tmp_path, fmt, step):
    lake = str(tmp_path / "lake")
    plant_runs(lake, fmt, runs=12, tables=("PageView", "WebLog"))
    before = committed_rows(lake)
    args = ("compact", "--lake", lake, "--run-id", "k1", "--run-time", at(0))
    killed = run_killed(step, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert committed_ids(lake, settled=False) == sorted(r["ActivityId"] for r in before)
    rerun = compact(lake, "k2", 1)
    assert rerun["recovered"] == {"k1": rerun["recovered"]["k1"]}
    k1 = json.loads(open_storage(lake).read_bytes(f"{DS}/_runs/k1.json"))
    assert k1["status"] == ("committed" if rerun["recovered"]["k1"] == "committed" else "rolled_back")
    locations = committed_locations(open_storage(lake), DS)
    assert len(locations) == 2 * len(DATES)  # one file a table and date, whichever run made it
    assert committed_rows(lake) == before
    vacuum(lake, "v1", 2, "--retain-hours", "0")
    assert committed_rows(lake) == before
    assert committed_ids(lake) == sorted(r["ActivityId"] for r in before)  # no orphans
    assert not open_storage(lake).list(f"{DS}/_staging")


@pytest.mark.parametrize("step", ["vacuum_before_delete", "vacuum_before_report"])
def test_killed_vacuum_then_rerun_converges(tmp_path, step):
    lake = str(tmp_path / "lake")
    plant_runs(lake, "cdm", runs=12)
    before = committed_rows(lake)
    compact(lake, "c1", 0)
    killed = run_killed(step, "vacuum", "--lake", lake, "--run-id", "v1", "--retain-hours", "0")
    assert killed.returncode == -signal.SIGKILL
    assert committed_rows(lake) == before
    done = vacuum(lake, "v2", 1, "--retain-hours", "0")
    assert len(done["deleted"]) == (12 if step == "vacuum_before_delete" else 0)
    assert committed_ids(lake) == sorted(r["ActivityId"] for r in before)


def test_delta_vacuum_on_the_real_clock_right_after_a_compaction(tmp_path):
    lake = str(tmp_path / "lake")
    plant_runs(lake, "delta", runs=8)
    ids = committed_ids(lake)
    assert cli("compact", "--lake", lake)["tables"]["WebLog"]["files_after"] == len(DATES)
    assert len(cli("vacuum", "--lake", lake, "--retain-hours", "0")["deleted"]) == 8
    assert committed_ids(lake) == ids


def test_sigterm_during_a_compaction_rolls_it_back_and_exits_143(tmp_path):
    lake = str(tmp_path / "lake")
    plant_runs(lake, "cdm", runs=8)
    before = committed_locations(open_storage(lake), DS)
    pause = tmp_path / "pause"
    env = {"INSIGHTS_LINK_PAUSE_AT": "compact_after_staged_bin", "INSIGHTS_LINK_PAUSE_FILE": str(pause)}
    proc = start_cli("compact", "--lake", lake, "--run-id", "t1", env=env)
    wait_for_file(pause, proc)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    storage = open_storage(lake)
    assert committed_locations(storage, DS) == before
    assert json.loads(storage.read_bytes(f"{DS}/_runs/t1.json"))["status"] == "failed"
    assert not storage.list(f"{DS}/_staging") and not any("_t1_" in p for p in parquet_on_storage(lake))


def test_unreferenced_files_without_a_record_wait_from_when_a_vacuum_first_saw_them(tmp_path):
    lake = str(tmp_path / "lake")
    ds = tmp_path / "lake" / DS
    plant_runs(lake, "cdm", runs=8)
    # an exporter-named file no commit lists and no report removed (e.g. left by an older version)
    stray = ds / "WebLog" / "FullData" / "2024" / "05" / "01" / "WebLog_20240501_old_000.parquet"
    stray.write_bytes((ds / committed_locations(open_storage(lake), DS)[0]).read_bytes())
    first = vacuum(lake, "v1", 0)
    assert first["deleted"] == [] and first["waiting"][0]["location"].endswith("old_000.parquet")
    assert first["waiting"][0]["unreferenced_since"] == at(0)
    state = json.loads((ds / "_state" / "vacuum.json").read_text())
    assert state["first_seen"] == {"WebLog/FullData/2024/05/01/WebLog_20240501_old_000.parquet": at(0)}
    assert vacuum(lake, "v2", 100)["deleted"] == [] and stray.exists()  # 100 h < 168 h
    gone = vacuum(lake, "v3", 168)
    assert [d["location"] for d in gone["deleted"]] == [
        "WebLog/FullData/2024/05/01/WebLog_20240501_old_000.parquet"
    ]
    assert not stray.exists() and json.loads((ds / "_state" / "vacuum.json").read_text())["first_seen"] == {}


def test_dry_run_needs_no_lock_and_a_real_vacuum_waits_for_it(tmp_path):
    lake = str(tmp_path / "lake")
    plant_runs(lake, "cdm", runs=8)
    compact(lake, "c1", 0)
    storage = open_storage(lake)
    on_disk = parquet_on_storage(lake)
    with storage.lock(f"{DS}/_lock"):  # another run holds the data source
        dry = vacuum(lake, "v1", 1, "--retain-hours", "0", "--dry-run")
        assert len(dry["deleted"]) == 8
        busy = run_cli("vacuum", "--lake", lake, "--retain-hours", "0", "--lock-wait", "0")
        assert busy.returncode == 4, busy.stderr
        compact_busy = run_cli("compact", "--lake", lake, "--lock-wait", "0")
        assert compact_busy.returncode == 4
    assert parquet_on_storage(lake) == on_disk
    assert not storage.exists(f"{DS}/_state/vacuum.json")
    assert sorted(o.key.rsplit("/", 1)[-1] for o in storage.list(f"{DS}/_runs")) == ["c1.json"]


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_vacuum_settles_a_dead_compaction_and_a_dry_run_leaves_its_files_to_that(tmp_path, fmt):
    lake = str(tmp_path / "lake")
    plant_runs(lake, fmt, runs=8)
    ids = committed_ids(lake)
    killed = run_killed("after_moves", "compact", "--lake", lake, "--run-id", "k1")
    assert killed.returncode == -signal.SIGKILL
    placed = {loc for loc in parquet_on_storage(lake) if "_k1_" in loc}
    assert len(placed) == len(DATES)  # placed, never committed
    dry = cli("vacuum", "--lake", lake, "--retain-hours", "0", "--dry-run")
    assert dry["deleted"] == [] and open_storage(lake).list(f"{DS}/_staging/k1")
    done = cli("vacuum", "--lake", lake, "--run-id", "v1", "--retain-hours", "0")
    assert done["recovered"] == {"k1": "rolled back"} and done["deleted"] == []
    assert not placed & parquet_on_storage(lake) and not open_storage(lake).list(f"{DS}/_staging")
    assert committed_ids(lake) == ids


def test_usage_errors_and_a_reused_run_id(tmp_path):
    lake = str(tmp_path / "lake")
    plant_runs(lake, "cdm", runs=4)
    assert run_cli("compact", "--lake", lake, "--target-file-mb", "0").returncode == 2
    assert run_cli("vacuum", "--lake", lake, "--retain-hours", "-1").returncode == 2
    assert run_cli("vacuum", "--lake", str(tmp_path / "nowhere")).returncode == 2
    compact(lake, "c1", 0)
    reused = run_cli("vacuum", "--lake", lake, "--run-id", "c1")
    assert reused.returncode == 2 and "already used" in reused.stderr
    nothing = run_cli("compact", "--lake", lake)
    assert nothing.returncode == 0 and "nothing to compact" in nothing.stdout


def test_fingerprint_is_order_free_and_sees_a_changed_value():
    rows = small_run(1, rows=50)
    rows_count, checksum = fingerprint(rows)
    assert rows_count == 50
    assert fingerprint(rows.sort_by([("ActivityId", "descending")])) == (50, checksum)
    assert fingerprint(pa.concat_tables([rows.slice(0, 20), rows.slice(20)])) == (50, checksum)
    changed = rows.set_column(5, "Details", pa.array(["x"] + rows["Details"].to_pylist()[1:]))
    assert fingerprint(changed)[1] != checksum
    assert fingerprint(rows.slice(1))[0] == 49


def test_exporter_naming_rule_and_bins():
    assert exporter_written("WebLog/FullData/2024/05/01/WebLog_20240501_r1_000.parquet")
    assert exporter_written("WebLog/IncrementalData/2026/11/28/14/Upserts/WebLog_20240504_r_1_000.parquet")
    assert exporter_written("WebLog/ActivityDate=2024-05-01/WebLog_20240501_x_012.parquet")
    assert exporter_written("WebLog/IncrementalData/2026/11/28/14/Deletes/WebLog_20240504_f1_000.parquet")
    assert not exporter_written("WebLog/FullData/2024/05/01/mine.parquet")
    assert not exporter_written("WebLog/notes.txt")
    assert not exporter_written("WebLog/FullData/2024/05/02/WebLog_20240501_r1_000.parquet")  # wrong day
    assert not exporter_written("WebLog/Archive/WebLog_20240501_r1_000.parquet")
    assert not exporter_written("WebLog/FullData/2024/05/01/PageView_20240501_r1_000.parquet")
    assert not exporter_written("WebLog/_delta_log/WebLog_20240501_r1_000.parquet")
    # bins: at most the target, single files left alone, so a second pass finds nothing
    assert plan_bins({"a": 60, "b": 50, "c": 40, "d": 90}, 100) == [(["a", "c"], 100)]
    assert plan_bins({"a": 60, "b": 60}, 100) == []
