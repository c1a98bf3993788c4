"""``insights-link status`` and ``verify`` through the real CLI, on lakes the real exporter wrote
(CDM and Delta): the numbers status reports, verify passing on a healthy lake, and verify
failing (exit 1) with the named problem for each kind of damage planted; the lock seen while a
run is paused at a failpoint; nothing written by either command."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import event, run_cli, run_killed, write_jsonl
from faults.lake_checks import committed_locations, paused_export
from insights_link.storage import open_storage
from insights_link.storage.local import LocalStorage

DS = "EngagementInsights"
RUN_TIME = "2026-11-28T12:00:00Z"


def export(source: Path, lake: Path, run_id: str, fmt: str, *extra: str):
    proc = run_cli(
        "export",
        "--input",
        str(source),
        "--output",
        str(lake),
        "--run-id",
        run_id,
        "--run-time",
        RUN_TIME,
        "--table-format",
        fmt,
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def inputs(folder: Path) -> tuple[Path, Path]:
    first = write_jsonl(
        folder / "first.jsonl",
        [
            event("a"),
            event("b", ts="2024-05-02T10:00:00Z"),
            "garbage",
            event("a"),
            event("e", uri="nope"),
        ],
    )
    second = write_jsonl(
        folder / "second.jsonl",
        [event("c", ts="2024-05-03T08:00:00Z"), event("d", ts="2024-05-03T09:00:00Z")],
    )
    return first, second


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> dict[str, Path]:
    """One healthy lake per table format, two runs each (made once; tests copy them)."""
    base = tmp_path_factory.mktemp("healthy")
    first, second = inputs(base / "in")
    lakes = {}
    for fmt in ("cdm", "delta"):
        lake = base / fmt
        export(first, lake, "r1", fmt)
        export(second, lake, "r2", fmt)
        lakes[fmt] = lake
    return lakes


@pytest.fixture(params=["cdm", "delta"])
def fmt(request) -> str:
    return request.param


@pytest.fixture
def lake(healthy, fmt, tmp_path) -> Path:
    """A private copy of the healthy lake of format ``fmt``."""
    copy = tmp_path / "lake"
    shutil.copytree(healthy[fmt], copy)
    return copy


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def cli_json(*args: str) -> tuple[int, dict, str]:
    proc = run_cli(*args, "--json")
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else {}, proc.stderr


def located(lake: Path, date: str) -> str:
    """The committed file of WebLog holding ``date`` (data-source relative)."""
    found = [loc for loc in committed_locations(open_storage(str(lake)), DS) if date.replace("-", "") in loc]
    assert len(found) == 1, found
    return found[0]


# -- healthy lakes -----------------------------------------------------------------------------


def test_status_reports_the_real_numbers(lake, fmt):
    before = tree(lake)
    code, report, err = cli_json("status", "--lake", str(lake))
    assert code == 0, err
    assert tree(lake) == before  # read only: not even the lock file was touched
    (source,) = report["data_sources"]
    assert source["name"] == DS and source["format"] == fmt
    (table,) = source["tables"]
    assert table["name"] == "WebLog"
    assert table["rows"] == 4 and table["rows_complete"]
    assert (table["first_date"], table["last_date"], table["dates"]) == ("2024-05-01", "2024-05-03", 3)
    sizes = sorted(
        (lake / DS / loc).stat().st_size for loc in committed_locations(open_storage(str(lake)), DS)
    )
    assert table["files"] == {
        "count": 3,
        "bytes": sum(sizes),
        "smallest": sizes[0],
        "median": sizes[1],
        "largest": sizes[2],
        "under_16mb": 3,
    }
    assert table["missing_files"] == [] and table["crowded_folders"] == []
    assert source["dead_letters"]["by_reason"] == {"invalid_uri": 1, "malformed": 1}
    assert source["dead_letters"]["records"] == 2 and source["dead_letters"]["files"] == 1
    assert source["lock"] == {"held": False, "holder": None, "since": None}
    assert source["staging"] == []
    runs = source["runs"]
    assert runs["total"] == 2
    by_id = {r["run_id"]: r for r in runs["last"]}
    assert by_id["r1"]["kind"] == "export" and by_id["r1"]["status"] == "committed"
    assert (by_id["r1"]["records_read"], by_id["r1"]["activities_written"]) == (5, 2)
    assert (by_id["r1"]["duplicates_dropped"], by_id["r1"]["rejected"]) == (1, 2)
    assert (by_id["r2"]["records_read"], by_id["r2"]["activities_written"]) == (2, 2)
    # the human form fits an 80-column terminal
    proc = run_cli("status", "--lake", str(lake))
    assert proc.returncode == 0
    assert "WebLog" in proc.stdout and "lock: free" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


def test_verify_passes_on_a_healthy_lake_and_writes_nothing(lake, fmt):
    before = tree(lake)
    code, report, err = cli_json("verify", "--lake", str(lake))
    assert code == 0, err
    assert tree(lake) == before
    assert report["ok"] and report["problem_count"] == 0
    (source,) = report["data_sources"]
    assert source["checked"] == {"tables": 1, "files": 3, "rows": 4, "reports": 2}
    proc = run_cli("verify", "--lake", str(lake), "--data-source", DS)
    assert proc.returncode == 0 and "OK" in proc.stdout


def test_status_shows_a_conversion_among_the_runs(lake, fmt):
    target = "cdm" if fmt == "delta" else "delta"
    proc = run_cli("convert", "--lake", str(lake), "--to", target, "--run-id", "c1")
    assert proc.returncode == 0, proc.stderr
    code, report, _ = cli_json("status", "--lake", str(lake), "--runs", "1")
    assert code == 0
    (source,) = report["data_sources"]
    assert source["format"] == target
    assert [(r["run_id"], r["kind"]) for r in source["runs"]["last"]] == [("c1", "convert")]
    assert source["tables"][0]["rows"] == 4
    assert run_cli("verify", "--lake", str(lake)).returncode == 0


def test_a_missing_data_source_or_lake_is_a_usage_error(lake, tmp_path):
    for command in ("status", "verify"):
        proc = run_cli(command, "--lake", str(lake), "--data-source", "Nowhere")
        assert proc.returncode == 2 and "Nowhere" in proc.stderr
        proc = run_cli(command, "--lake", str(tmp_path / "no-lake"))
        assert proc.returncode == 2 and "no-lake" in proc.stderr
    assert not (lake / "Nowhere").exists() and not (tmp_path / "no-lake").exists()


# -- planted problems --------------------------------------------------------------------------


def template(lake: Path) -> pa.Table:
    """The committed rows of 2024-05-01 (ids a): a row to copy, with the real schema."""
    return pq.read_table(lake / DS / located(lake, "2024-05-01"))


def plant(lake: Path, fmt: str, date: str, table: pa.Table, **write) -> str:
    """Write ``table`` as an exporter-named file of ``date`` and add it to the committed state
    (the manifest, or the Delta log as the exporter commits: one add action)."""
    name = f"WebLog_{date.replace('-', '')}_planted_000.parquet"
    y, m, d = date.split("-")
    location = f"WebLog/FullData/{y}/{m}/{d}/{name}" if fmt == "cdm" else f"WebLog/ActivityDate={date}/{name}"
    path = lake / DS / location
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **write)
    if fmt == "cdm":
        manifest_path = lake / DS / "default.manifest.cdm.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["entities"][0]["dataPartitions"].append({"location": location})
        manifest_path.write_text(json.dumps(manifest))
    else:
        from deltalake import DeltaTable
        from deltalake.transaction import AddAction

        dt = DeltaTable(str(lake / DS / "WebLog"))
        add = AddAction(
            location.split("/", 1)[1],
            path.stat().st_size,
            {"ActivityDate": date},
            int(datetime.now(UTC).timestamp() * 1000),
            True,
            json.dumps({"numRecords": table.num_rows}),
        )
        dt.create_write_transaction(
            [add], mode="append", schema=pa.schema(dt.schema().to_arrow()), partition_by=["ActivityDate"]
        )
    return location


def delete_file(lake, fmt):
    location = located(lake, "2024-05-02")
    (lake / DS / location).unlink()
    return "missing_file", location


def truncate_file(lake, fmt):
    location = located(lake, "2024-05-02")
    path = lake / DS / location
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "unreadable_parquet", location


def wrong_schema(lake, fmt):
    rows = template(lake).drop_columns(["Details"]).append_column("Extra", pa.array(["x"]))
    rows = rows.set_column(0, "ActivityId", pa.array(["z"]))
    return "schema_mismatch", plant(lake, fmt, "2024-05-04", rows)


def unreferenced(lake, fmt):
    location = located(lake, "2024-05-01").replace("_r1_", "_ghost_")
    shutil.copy(lake / DS / located(lake, "2024-05-01"), lake / DS / location)
    return "unreferenced_file", location


def duplicate_across_dates(lake, fmt):
    rows = template(lake)  # id "a", committed on 2024-05-01, planted again on 2024-05-04
    plant(lake, fmt, "2024-05-04", rows)
    return "duplicate_id", "'a' appears 2 times"


def null_id(lake, fmt):
    rows = template(lake)
    schema = pa.schema([f.with_nullable(True) for f in rows.schema])
    rows = rows.cast(schema).set_column(0, pa.field("ActivityId", pa.string()), pa.array([None], pa.string()))
    return "null_id", plant(lake, fmt, "2024-05-04", rows)


def int96(lake, fmt):
    rows = template(lake).set_column(0, "ActivityId", pa.array(["z"]))
    return "int96", plant(lake, fmt, "2024-05-04", rows, use_deprecated_int96_timestamps=True)


def unbalanced(lake, fmt):
    path = lake / DS / "_runs" / "r1.json"
    report = json.loads(path.read_text())
    report["records_read"] += 1
    path.write_text(json.dumps(report))
    return "unbalanced_report", "_runs/r1.json"


def crowded_folder(lake, fmt):
    folder = (lake / DS / located(lake, "2024-05-01")).parent
    for i in range(1001):
        (folder / f"note_{i:04d}.txt").write_bytes(b"")
    return "folder_over_1000", str(folder.relative_to(lake / DS))


def bad_data_source_name(lake, fmt):
    shutil.copytree(lake / DS, lake / "Engagement-Insights")
    return "bad_name", "Engagement-Insights"


def unreadable_commit_object(lake, fmt):
    if fmt == "cdm":
        (lake / DS / "default.manifest.cdm.json").write_text("{not json")
        return "unreadable_manifest", "default.manifest.cdm.json"
    (lake / DS / "WebLog" / "_delta_log" / "00000000000000000001.json").write_text("{not json\n")
    return "unreadable_log", "WebLog/_delta_log"


PLANTED = [
    delete_file,
    truncate_file,
    wrong_schema,
    unreferenced,
    duplicate_across_dates,
    null_id,
    int96,
    unbalanced,
    crowded_folder,
    bad_data_source_name,
    unreadable_commit_object,
]


@pytest.mark.parametrize("damage", PLANTED, ids=[f.__name__ for f in PLANTED])
def test_verify_names_each_planted_problem(lake, fmt, damage):
    code_wanted, where = damage(lake, fmt)
    before = tree(lake)
    code, report, err = cli_json("verify", "--lake", str(lake))
    assert code == 1, err
    assert tree(lake) == before
    assert not report["ok"] and report["problem_count"] >= 1
    problems = [p for source in report["data_sources"] for p in source["problems"]]
    named = [p for p in problems if p["code"] == code_wanted]
    assert named, problems
    assert any(where in f"{p['data_source']}/{p['location']}: {p['detail']}" for p in named), named
    assert "problem" in err
    # the human form: one line per problem, code and location first
    proc = run_cli("verify", "--lake", str(lake))
    assert proc.returncode == 1
    assert any(line.startswith(f"{code_wanted}: ") and where in line for line in proc.stdout.splitlines())


# -- runs in flight and dead runs --------------------------------------------------------------


def test_status_and_verify_while_a_run_holds_the_lock(lake, fmt, tmp_path):
    more = write_jsonl(tmp_path / "more" / "third.jsonl", [event("f", ts="2024-05-05T10:00:00Z")])
    pause = tmp_path / "paused"
    args = ["--input", str(more), "--output", str(lake), "--run-id", "r3", "--table-format", fmt]
    run = paused_export("before_manifest" if fmt == "cdm" else "after_moves", pause, *args)
    try:
        code, report, err = cli_json("status", "--lake", str(lake))
        assert code == 0, err
        (source,) = report["data_sources"]
        lock = source["lock"]
        assert lock["held"] is True
        assert f"pid {run.pid}" in lock["holder"]
        assert lock["since"] and lock["since"].endswith("Z")
        assert [s["run_id"] for s in source["staging"]] == ["r3"]
        assert source["staging"][0]["commit_record"] is True
        # the run's moved files are unreferenced until its commit point: not a problem
        code, report, err = cli_json("verify", "--lake", str(lake))
        assert code == 0, report
        pending = report["data_sources"][0]["pending"]
        assert [p["location"].rsplit("/", 1)[-1] for p in pending] == ["WebLog_20240505_r3_000.parquet"]
        assert "committing now" in pending[0]["why"]
    finally:
        pause.unlink(missing_ok=True)
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err  # looking at the lock did not disturb the run
    code, report, _ = cli_json("status", "--lake", str(lake))
    assert report["data_sources"][0]["lock"]["held"] is False
    assert report["data_sources"][0]["tables"][0]["rows"] == 5


def test_a_dead_runs_leftovers_are_pending_not_problems(lake, fmt, tmp_path):
    more = write_jsonl(tmp_path / "more" / "third.jsonl", [event("f", ts="2024-05-05T10:00:00Z")])
    args = ["--input", str(more), "--output", str(lake), "--run-id", "r3", "--table-format", fmt]
    assert run_killed("after_moves", "export", *args).returncode != 0
    code, report, _ = cli_json("status", "--lake", str(lake))
    (source,) = report["data_sources"]
    assert source["lock"]["held"] is False
    assert [s["run_id"] for s in source["staging"]] == ["r3"]
    assert source["tables"][0]["rows"] == 4
    code, report, _ = cli_json("verify", "--lake", str(lake))
    assert code == 0, report
    (pending,) = report["data_sources"][0]["pending"]
    assert "died" in pending["why"]


# -- the storage's lock probe ------------------------------------------------------------------


def test_local_lock_holder_sees_a_held_lock_without_taking_or_creating_it(tmp_path):
    storage = LocalStorage(str(tmp_path))
    assert storage.lock_holder("ds/_lock") is None
    assert not (tmp_path / "ds" / "_lock").exists()  # probing creates nothing
    with storage.lock("ds/_lock") as handle:
        holder = storage.lock_holder("ds/_lock")
        assert holder is not None and holder.startswith("held by pid")
        handle.check()  # still ours after the probe
    assert storage.lock_holder("ds/_lock") is None  # the holder text stays, the lock does not
    assert (tmp_path / "ds" / "_lock").read_text().startswith("held by pid")


def test_files_a_compaction_removed_are_pending_until_vacuum(lake, fmt, tmp_path):
    more = write_jsonl(tmp_path / "more" / "third.jsonl", [event("g", ts="2024-05-01T11:00:00Z")])
    export(more, lake, "r3", fmt)  # a second, small file on 2024-05-01
    proc = run_cli("compact", "--lake", str(lake), "--run-id", "k1")
    assert proc.returncode == 0, proc.stderr
    code, report, _ = cli_json("verify", "--lake", str(lake))
    assert code == 0, report
    pending = report["data_sources"][0]["pending"]
    assert len(pending) == 2 and all("k1" in p["why"] for p in pending)
    code, report, _ = cli_json("status", "--lake", str(lake), "--runs", "1")
    (source,) = report["data_sources"]
    assert [(r["run_id"], r["kind"]) for r in source["runs"]["last"]] == [("k1", "compact")]
    assert source["tables"][0]["rows"] == 5 and source["tables"][0]["files"]["count"] == 3
