"""Hostile tests of Delta tables (``--table-format delta``) and ``insights-link convert``: the
guarantees of CDM mode, attacked where Delta differs (one log per table, delta-rs paths, the
format switch of a conversion).

Every run is a real process; kills are real (SIGKILL by a failpoint, or by the test while a
storage failpoint holds the process); results are read back with ``deltalake`` and pyarrow.
Tests marked xfail(strict=True) expose a bug (the reason says which); the rest held.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import signal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from lake_checks import committed_ids, freeze, paused_export, thaw, wait_for_file

from conftest import (
    RUN_TIME,
    dead_letters,
    event,
    export_run,
    read_activities,
    run_cli,
    run_reports,
    start_cli,
    write_jsonl,
)
from insights_link.storage import open_storage

DS = "EngagementInsights"
LEASE = {"INSIGHTS_LINK_LEASE_SECONDS": "15", "INSIGHTS_LINK_AZURE_READ_TIMEOUT": "120"}
TWO_TABLE_STEPS = [
    "after_staged_file",
    "before_commit",
    "after_dead_letters",
    "after_first_move",
    "after_moves",
    "before_manifest",
    "between_table_commits",
    "after_manifest",
    "after_report",
]


# -- helpers -------------------------------------------------------------------------------------


export = functools.partial(export_run, fmt="delta")  # (source, lake, run_id, *extra, fmt=, env=)


def convert(lake, to, *extra, env=None):
    return run_cli("convert", "--lake", str(lake), "--to", to, *extra, env=env)


def one_line_error(stderr: str) -> str:
    """The error line of a failed run's stderr (its last line; no traceback anywhere)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    return lines[-1]


def table_rows(lake, table="WebLog") -> list[dict]:
    """A Delta table's rows as a reader sees them (LastUpdated dropped), sorted by ActivityId."""
    t = DeltaTable(str(Path(lake) / DS / table)).to_pyarrow_table()
    return t.drop_columns(["LastUpdated"]).sort_by("ActivityId").to_pylist()


def table_ids(lake, table="WebLog") -> list[str]:
    return sorted(DeltaTable(str(Path(lake) / DS / table)).to_pyarrow_table()["ActivityId"].to_pylist())


def log_files(lake, table="WebLog") -> list[str]:
    return sorted(p.name for p in (Path(lake) / DS / table / "_delta_log").iterdir())


def two_activity_job(lake: Path, source: Path, run_id_suffix: str = "") -> Path:
    """A job file writing Buys (Signal.Name Buy) and Views (PageView) from one input, in Delta."""
    job = lake.parent / f"{lake.name}{run_id_suffix}-{source.parent.name}.toml"
    job.write_text(
        f'output = "{lake}"\ntable_format = "delta"\nrun_time = "{RUN_TIME}"\n'
        f'[[activity]]\nname = "Buys"\ninputs = ["{source}"]\nevent_names = ["Buy"]\n'
        f'[[activity]]\nname = "Views"\ninputs = ["{source}"]\nevent_names = ["PageView"]\n'
    )
    return job


def killed_in_storage(spec: str, pause: Path, *args: str) -> None:
    """Start ``insights-link *args``, let a storage failpoint hold it right before the call
    ``spec`` (``method:key part:n``), then SIGKILL it there."""
    proc = start_cli(*args, env={"INSIGHTS_LINK_PAUSE_STORAGE": spec, "INSIGHTS_LINK_PAUSE_FILE": str(pause)})
    try:
        wait_for_file(pause, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    pause.unlink(missing_ok=True)


@pytest.fixture
def inputs(tmp_path):
    first = write_jsonl(
        tmp_path / "in1" / "e.jsonl", [event("a"), event("b", ts="2024-05-02T10:00:00Z"), "garbage"]
    )
    second = write_jsonl(
        tmp_path / "in2" / "e.jsonl",
        [event("b", ts="2024-05-02T10:00:00Z"), event("c"), event("x"), event("e", uri="nope")],
    )
    return first, second


@pytest.fixture
def two_inputs(tmp_path):
    """Inputs of two activities (Buys, Views); the second repeats one id of each table."""
    first = write_jsonl(
        tmp_path / "t1" / "e.jsonl",
        [event("p1", name="PageView"), event("b1", name="Buy"), "junk"],
    )
    second = write_jsonl(
        tmp_path / "t2" / "e.jsonl",
        [
            event("p1", name="PageView"),
            event("p2", name="PageView", ts="2024-05-02T00:00:00Z"),
            event("b2", name="Buy", ts="2024-05-03T23:59:59.999Z"),
            event("b1", name="Buy"),
            "junk2",
        ],
    )
    return first, second


# -- kill and rerun, two tables ------------------------------------------------------------------


@pytest.mark.parametrize("step", TWO_TABLE_STEPS)
def test_two_table_run_killed_at_each_step_then_rerun_equals_a_clean_run(step, tmp_path, two_inputs):
    first, second = two_inputs
    clean = tmp_path / "clean"
    for n, source in enumerate((first, second)):
        proc = run_cli("export", "--job", str(two_activity_job(clean, source)), "--run-id", f"c{n}")
        assert proc.returncode == 0, proc.stderr

    lake = tmp_path / "lake"
    assert run_cli("export", "--job", str(two_activity_job(lake, first)), "--run-id", "k1").returncode == 0
    killed = run_cli(
        "export",
        "--job",
        str(two_activity_job(lake, second)),
        "--run-id",
        "k2",
        env={"INSIGHTS_LINK_KILL_AT": step},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = run_cli("export", "--job", str(two_activity_job(lake, second)), "--run-id", "k3")
    assert rerun.returncode == 0, rerun.stderr
    for table in ("Buys", "Views"):
        assert table_rows(lake, table) == table_rows(clean, table)
    assert committed_ids(str(lake)) == ["b1", "b2", "p1", "p2"]  # nothing twice, none orphaned
    assert not any((lake / DS / "_staging").rglob("*.parquet"))
    # each junk line dead-lettered once per activity table that read it, as in the clean lake
    got = sorted((d["source"].rsplit("/", 2)[-2], d["position"]) for d in dead_letters(lake / DS))
    want = sorted((d["source"].rsplit("/", 2)[-2], d["position"]) for d in dead_letters(clean / DS))
    assert got == want


# -- a run that lost its lock after its commit point -------------------------------------------


def test_run_that_lost_its_lock_between_table_commits_does_not_claim_nothing_committed(tmp_path, two_inputs):
    first, second = two_inputs
    lake = tmp_path / "lake"
    pause = tmp_path / "pause"
    run_a = paused_export("between_table_commits", pause, "--job", str(two_activity_job(lake, first)))
    (lake / DS / "_lock").unlink()  # A's lock is gone: B takes the data source over
    run_b = run_cli("export", "--job", str(two_activity_job(lake, second)), "--run-id", "B")
    assert run_b.returncode == 0, run_b.stderr
    assert "died after its commit point; finishing it" in run_b.stderr
    pause.unlink()
    _out, err = run_a.communicate(timeout=120)
    assert committed_ids(str(lake)) == ["b1", "b2", "p1", "p2"]
    (a_report,) = [r for r in run_reports(lake / DS) if r["run_id"] != "B"]
    assert a_report["status"] == "committed"  # A's rows are visible, B finished A's commit
    assert run_a.returncode == 1
    line = one_line_error(err)
    assert "nothing of this run was committed" not in line and "nothing committed" not in line, line


# -- other tools writing the table ----------------------------------------------------------------


def _foreign_rows(schema: pa.Schema, ids: list[str], date: str = "2024-05-01") -> pa.Table:
    """Rows in the table's schema as another tool would append them."""
    columns = {}
    for f in schema:
        if f.name == "ActivityId":
            columns[f.name] = pa.array(ids, f.type)
        elif f.name == "ActivityDate":
            columns[f.name] = pa.array([dt.date.fromisoformat(date)] * len(ids), f.type)
        elif pa.types.is_timestamp(f.type):
            moment = dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC if f.type.tz else None)
            columns[f.name] = pa.array([moment] * len(ids), f.type)
        else:
            columns[f.name] = pa.array(["foreign"] * len(ids), f.type)
    return pa.table(columns, schema=schema)


def test_rows_another_tool_appended_count_as_committed_and_stay(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1").returncode == 0
    table = lake / DS / "WebLog"
    schema = pa.schema(DeltaTable(str(table)).schema().to_arrow())
    write_deltalake(str(table), _foreign_rows(schema, ["x"]), mode="append", partition_by=["ActivityDate"])
    proc = export(second, lake, "r2")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((lake / DS / "_runs" / "r2.json").read_text())
    assert (report["activities_written"], report["duplicates_dropped"]) == (1, 2)  # c new; b, x known
    assert table_ids(lake) == ["a", "b", "c", "x"]
    assert [r["CustomerId"] for r in table_rows(lake) if r["ActivityId"] == "x"] == ["foreign"]


def test_checkpoint_compaction_and_vacuum_by_another_tool_then_reprocess(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1").returncode == 0
    assert export(second, lake, "r2").returncode == 0
    table = lake / DS / "WebLog"
    DeltaTable(str(table)).create_checkpoint()
    DeltaTable(str(table)).optimize.compact()
    DeltaTable(str(table)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert not list(table.rglob("WebLog_20240501_*.parquet"))  # compacted away
    before = table_rows(lake)
    again = export(second, lake, "r3", "--reprocess")
    assert again.returncode == 0, again.stderr
    report = json.loads((lake / DS / "_runs" / "r3.json").read_text())
    assert (report["activities_written"], report["duplicates_dropped"]) == (0, 3)
    assert table_rows(lake) == before


def test_existing_unpartitioned_table_gets_no_duplicate_ids(tmp_path, inputs):
    first, second = inputs
    proto = tmp_path / "proto"
    assert export(first, proto, "r0").returncode == 0
    schema = pa.schema(DeltaTable(str(proto / DS / "WebLog")).schema().to_arrow())
    lake = tmp_path / "lake"
    (lake / DS).mkdir(parents=True)
    write_deltalake(str(lake / DS / "WebLog"), _foreign_rows(schema, ["x"]))  # no partitions
    proc = export(second, lake, "r1")
    if proc.returncode:
        one_line_error(proc.stderr)
    ids = table_ids(lake)
    assert len(ids) == len(set(ids)), f"ActivityId twice in the table: {ids}"
    if proc.returncode == 0:
        assert all(r["ActivityDate"] is not None for r in table_rows(lake) if r["CustomerId"] != "foreign")


@pytest.mark.parametrize("kind", ["deletion_vectors", "timestamp_ntz"])
def test_existing_table_with_another_protocol_is_refused(kind, tmp_path, inputs):
    first, second = inputs
    proto = tmp_path / "proto"
    assert export(first, proto, "r0").returncode == 0
    schema = pa.schema(DeltaTable(str(proto / DS / "WebLog")).schema().to_arrow())
    configuration = None
    if kind == "timestamp_ntz":
        schema = schema.set(
            schema.get_field_index("ActivityTime"), pa.field("ActivityTime", pa.timestamp("us"))
        )
    else:
        configuration = {"delta.enableDeletionVectors": "true"}
    lake = tmp_path / "lake"
    (lake / DS).mkdir(parents=True)
    table = str(lake / DS / "WebLog")
    write_deltalake(
        table, _foreign_rows(schema, ["x"]), partition_by=["ActivityDate"], configuration=configuration
    )
    assert DeltaTable(table).protocol().min_reader_version == 3
    version = DeltaTable(table).version()
    proc = export(second, lake, "r1")
    assert proc.returncode in (1, 2), proc.stderr
    one_line_error(proc.stderr)
    assert DeltaTable(table).version() == version


# -- damaged logs: one line, nothing touched -----------------------------------------------------


def _truncate(log: Path) -> None:
    last = sorted(log.glob("*.json"))[-1]
    last.write_bytes(last.read_bytes()[:30])


def _garbage(log: Path) -> None:
    sorted(log.glob("*.json"))[-1].write_text("not json\n")


def _nul(log: Path) -> None:
    sorted(log.glob("*.json"))[-1].write_bytes(b"\x00" * 64)


def _first_entry_gone(log: Path) -> None:
    sorted(log.glob("*.json"))[0].unlink()


def _every_entry_gone(log: Path) -> None:
    for entry in log.glob("*.json"):
        entry.unlink()


def _future_protocol(log: Path) -> None:
    sorted(log.glob("*.json"))[-1].write_text(
        '{"protocol": {"minReaderVersion": 99, "minWriterVersion": 99}}\n'
    )


@pytest.mark.parametrize(
    "damage", [_truncate, _garbage, _nul, _first_entry_gone, _every_entry_gone, _future_protocol]
)
@pytest.mark.parametrize("dry", [False, True])
def test_damaged_delta_log_fails_in_one_line_and_touches_nothing(damage, dry, tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1").returncode == 0
    assert export(second, lake, "r2").returncode == 0
    table = lake / DS / "WebLog"
    damage(table / "_delta_log")
    before = sorted((str(p), p.read_bytes()) for p in table.rglob("*") if p.is_file())
    proc = export(second, lake, "r3", "--reprocess", *(["--dry-run"] if dry else []))
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc.stderr)
    assert "cannot read the Delta log of table 'WebLog'" in line, line
    assert sorted((str(p), p.read_bytes()) for p in table.rglob("*") if p.is_file()) == before
    failed = convert(lake, "cdm")
    assert failed.returncode == 1 and "Delta log" in one_line_error(failed.stderr)
    assert not (lake / DS / "default.manifest.cdm.json").exists()


# -- usage errors, dry runs, TZ ------------------------------------------------------------------


def test_changed_columns_on_a_delta_table_is_a_usage_error_that_writes_nothing(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1").returncode == 0
    logs = log_files(lake)
    for extra in ((), ("--dry-run",)):
        proc = export(second, lake, f"r2{len(extra)}", "--property", "Signal.Session.Id", *extra)
        assert proc.returncode == 2, proc.stderr
        assert "already has columns" in one_line_error(proc.stderr)
    assert log_files(lake) == logs
    assert not list((lake / DS / "_runs").glob("r2*.json"))
    assert table_ids(lake) == ["a", "b"]


def test_dry_run_with_delta_writes_nothing(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    empty = export(first, lake, "d0", "--dry-run")
    assert empty.returncode == 0, empty.stderr
    assert not lake.exists()
    assert export(first, lake, "r1").returncode == 0
    before = sorted(
        (str(p.relative_to(lake)), p.read_bytes())
        for p in lake.rglob("*")
        if p.is_file() and p.name != "_lock"
    )
    dry = export(second, lake, "d1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "activities to write: 2" in dry.stdout
    after = sorted(
        (str(p.relative_to(lake)), p.read_bytes())
        for p in lake.rglob("*")
        if p.is_file() and p.name != "_lock"
    )
    assert after == before


def test_empty_input_in_delta_mode_commits_no_table_and_no_log(tmp_path):
    lake = tmp_path / "lake"
    empty = write_jsonl(tmp_path / "empty" / "e.jsonl", [])
    proc = export(empty, lake, "r1")
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in run_reports(lake / DS)] == ["committed"]
    assert not list((lake / DS).rglob("_delta_log"))
    nothing = convert(lake, "cdm")
    assert nothing.returncode == 2 and "holds no tables yet" in one_line_error(nothing.stderr)


def test_delta_output_does_not_depend_on_tz(tmp_path):
    source = write_jsonl(
        tmp_path / "in" / "e.jsonl",
        [
            event("a", ts="2024-05-01T23:59:59.999Z"),
            event("b", ts="2024-05-01T18:15:00Z"),
            event("c", ts="2024-05-02T00:00:00+05:45"),
            event("d", ts="2024-05-01T20:00:00"),
        ],
    )
    seen = {}
    for tz in ("UTC", "Asia/Kathmandu", "America/St_Johns"):
        lake = tmp_path / tz.replace("/", "_")
        proc = export(source, lake, "r1", env={"TZ": tz})
        assert proc.returncode == 0, proc.stderr
        ds = lake / DS
        files = {
            str(p.relative_to(ds)): p.read_bytes()
            for p in ds.rglob("*.parquet")
            if "_delta_log" not in p.parts
        }
        adds = [
            {k: a["add"][k] for k in ("path", "partitionValues", "size", "stats")}
            for entry in sorted((ds / "WebLog" / "_delta_log").glob("*.json"))
            for a in map(json.loads, entry.read_text().splitlines())
            if "add" in a
        ]
        seen[tz] = (files, adds)
    assert seen["UTC"] == seen["Asia/Kathmandu"] == seen["America/St_Johns"]
    assert sorted(r["ActivityDate"].isoformat() for r in table_rows(tmp_path / "UTC")) == [
        "2024-05-01",
        "2024-05-01",
        "2024-05-01",
        "2024-05-01",
    ]


def test_delta_on_a_lake_root_with_a_percent_sequence_is_a_usage_error(tmp_path, inputs):
    """delta-rs decodes %XX when reading a table back but not when writing it: such a root is
    refused before anything is written (CDM works there), with a message naming the path."""
    first, _ = inputs
    lake = tmp_path / "100%41" / "lake"
    cdm = export(first, tmp_path / "cdm%41", "c1", fmt="cdm")
    assert cdm.returncode == 0, cdm.stderr
    proc = export(first, lake, "r1")
    assert proc.returncode == 2
    assert "%XX" in one_line_error(proc.stderr) and "100%41" in proc.stderr
    assert not (tmp_path / "100%41").exists() and not (tmp_path / "100A").exists()
    refused = convert(tmp_path / "cdm%41", "delta")
    assert refused.returncode == 2 and "%XX" in refused.stderr


# -- convert -------------------------------------------------------------------------------------


def test_convert_while_an_export_holds_the_lock_is_busy(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1").returncode == 0
    pause = tmp_path / "pause"
    run = paused_export(
        "before_manifest",
        pause,
        *("--input", str(second), "--output", str(lake), "--table-format", "delta", "--run-id", "r2"),
    )
    try:
        busy = convert(lake, "cdm", "--lock-wait", "1")
    finally:
        pause.unlink()
    assert busy.returncode == 4, busy.stderr
    assert "busy" in one_line_error(busy.stderr)
    _out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert convert(lake, "cdm").returncode == 0
    assert committed_ids(str(lake)) == ["a", "b", "c", "x"]


def _two_table_cdm(tmp_path, two_inputs) -> Path:
    lake = tmp_path / "lake"
    for n, source in enumerate(two_inputs):
        job = two_activity_job(lake, source)
        job.write_text(job.read_text().replace('table_format = "delta"', 'table_format = "cdm"'))
        assert run_cli("export", "--job", str(job), "--run-id", f"r{n}").returncode == 0
    return lake


def test_convert_to_delta_killed_between_two_tables_is_completed(tmp_path, two_inputs):
    lake = _two_table_cdm(tmp_path, two_inputs)
    rows = read_activities(lake / DS).drop_columns(["LastUpdated"]).to_pylist()
    # killed right before the first look at a Views file: the Buys log is written, Views' not
    killed_in_storage("info:/Views/:1", tmp_path / "pause", "convert", "--lake", str(lake), "--to", "delta")
    assert (lake / DS / "Buys" / "_delta_log").exists() and not (lake / DS / "Views" / "_delta_log").exists()
    done = convert(lake, "delta")
    assert done.returncode == 0, done.stderr
    got = sorted(table_rows(lake, "Buys") + table_rows(lake, "Views"), key=lambda r: r["ActivityId"])
    assert [{k: v for k, v in r.items() if k != "ActivityDate"} for r in got] == rows
    assert committed_ids(str(lake)) == ["b1", "b2", "p1", "p2"]


def test_convert_keeps_user_files_in_table_folders(tmp_path, inputs):
    first, _ = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1", fmt="cdm").returncode == 0
    day = lake / DS / "WebLog" / "FullData" / "2024" / "05" / "01"
    mine = {
        day / "mine.parquet": b"user",
        day / "WebLog_20240501_user_000.parquet": b"user too",
        lake / DS / "WebLog" / "notes.txt": b"notes",
    }
    for path, data in mine.items():
        path.write_bytes(data)
    assert convert(lake, "delta").returncode == 0
    assert sorted(DeltaTable(str(lake / DS / "WebLog")).to_pyarrow_table()["ActivityId"].to_pylist()) == [
        "a",
        "b",
    ]
    assert convert(lake, "cdm").returncode == 0
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert sorted(read_activities(lake / DS)["ActivityId"].to_pylist()) == ["a", "b"]


def test_convert_to_cdm_killed_between_two_log_removals_keeps_every_table(tmp_path, two_inputs):
    first, second = two_inputs
    lake = tmp_path / "lake"
    for n, source in enumerate((first, second)):
        assert (
            run_cli("export", "--job", str(two_activity_job(lake, source)), "--run-id", f"r{n}").returncode
            == 0
        )
    killed_in_storage(
        "delete_prefix:_delta_log:2", tmp_path / "pause", "convert", "--lake", str(lake), "--to", "cdm"
    )
    assert not (lake / DS / "Buys" / "_delta_log").exists() and (lake / DS / "Views" / "_delta_log").exists()
    done = convert(lake, "cdm")
    assert done.returncode == 0, done.stderr
    assert committed_ids(str(lake)) == ["b1", "b2", "p1", "p2"]


def test_convert_to_cdm_killed_inside_a_log_removal_can_be_finished(tmp_path, inputs):
    first, second = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1").returncode == 0
    assert export(second, lake, "r2").returncode == 0
    killed = convert(lake, "cdm", env={"INSIGHTS_LINK_KILL_AT": "before_format_switch"})
    assert killed.returncode == -signal.SIGKILL
    # the state a kill inside delete_prefix leaves: some entries of the log removed
    (lake / DS / "WebLog" / "_delta_log" / "00000000000000000000.json").unlink()
    done = convert(lake, "cdm")
    assert done.returncode == 0, done.stderr
    assert committed_ids(str(lake)) == ["a", "b", "c", "x"]


def test_convert_to_delta_killed_after_the_manifest_removal_is_completed(tmp_path, inputs):
    first, _ = inputs
    lake = tmp_path / "lake"
    assert export(first, lake, "r1", fmt="cdm").returncode == 0
    rows = read_activities(lake / DS).drop_columns(["LastUpdated"]).to_pylist()
    # the manifest is the first .cdm.json removed; killed right before the entity document's
    killed_in_storage(
        "delete:.cdm.json:2",
        tmp_path / "pause",
        "convert",
        "--lake",
        str(lake),
        "--to",
        "delta",
        "--run-id",
        "c1",
    )
    assert not (lake / DS / "default.manifest.cdm.json").exists()
    assert [{k: v for k, v in r.items() if k != "ActivityDate"} for r in table_rows(lake)] == rows
    done = convert(lake, "delta", "--run-id", "c2")
    assert done.returncode == 0, done.stderr
    assert not (lake / DS / "WebLog.cdm.json").exists()


# -- Azure: leases that lapse while frozen -------------------------------------------------------


@pytest.mark.timeout(600)
def test_azure_run_frozen_between_table_commits_past_its_lease_is_finished_once(tmp_path, azure_lake):
    """A two-table run SIGSTOPped after its first table's commit: its lease lapses, B finishes
    A's second table and commits its own rows; A, thawed, fails without touching anything."""
    source_a = write_jsonl(
        tmp_path / "a" / "e.jsonl",
        [event(f"pa{i}", name="PageView") for i in range(5)] + [event("ba", name="Buy")],
    )
    source_b = write_jsonl(
        tmp_path / "b" / "e.jsonl", [event("pa0", name="PageView"), event("bb", name="Buy")]
    )
    local = tmp_path / "unused"
    job_a = two_activity_job(local, source_a)
    job_a.write_text(job_a.read_text().replace(f'output = "{local}"', f'output = "{azure_lake}"'))
    job_b = two_activity_job(local, source_b, "-b")
    job_b.write_text(job_b.read_text().replace(f'output = "{local}"', f'output = "{azure_lake}"'))
    pause = tmp_path / "pause"
    run_a = paused_export("between_table_commits", pause, "--job", str(job_a), "--run-id", "A", env=LEASE)
    freeze(run_a)
    pause.unlink()
    try:
        run_b = run_cli("export", "--job", str(job_b), "--run-id", "B", "--lock-wait", "120", env=LEASE)
        assert run_b.returncode == 0, run_b.stderr
    finally:
        thaw(run_a)
    _out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 1, err
    assert "Traceback" not in err
    want = sorted([f"pa{i}" for i in range(5)] + ["ba", "bb"])
    assert committed_ids(azure_lake) == want
    storage = open_storage(azure_lake)
    report_a = json.loads(storage.read_bytes(f"{DS}/_runs/A.json"))
    assert report_a["status"] == "committed"
    assert not storage.list(f"{DS}/_staging/A")
    rerun = run_cli("export", "--job", str(job_a), "--lock-wait", "120", env=LEASE)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(azure_lake) == want


@pytest.mark.timeout(600)
def test_azure_convert_frozen_past_its_lease_cannot_switch_after_a_takeover(tmp_path, azure_lake, inputs):
    """convert --to cdm SIGSTOPped just before its switch; its lease lapses; a second convert
    finishes the switch and a CDM export commits new rows; the first, thawed, fails and removes
    nothing (the new manifest and rows stay)."""
    first, second = inputs
    assert export(first, azure_lake, "r1").returncode == 0
    pause = tmp_path / "pause"
    conv_a = start_cli(
        "convert",
        "--lake",
        azure_lake,
        "--to",
        "cdm",
        env={
            **LEASE,
            "INSIGHTS_LINK_PAUSE_AT": "before_format_switch",
            "INSIGHTS_LINK_PAUSE_FILE": str(pause),
        },
    )
    wait_for_file(pause, conv_a)
    freeze(conv_a)
    pause.unlink()
    try:
        conv_b = convert(azure_lake, "cdm", "--lock-wait", "120", env=LEASE)
        assert conv_b.returncode == 0, conv_b.stderr
        more = run_cli(
            "export", "--input", str(second), "--output", azure_lake, "--lock-wait", "120", env=LEASE
        )
        assert more.returncode == 0, more.stderr
    finally:
        thaw(conv_a)
    _out, err = conv_a.communicate(timeout=300)
    assert conv_a.returncode == 1, err
    assert "Traceback" not in err
    storage = open_storage(azure_lake)
    assert storage.exists(f"{DS}/default.manifest.cdm.json") and storage.exists(f"{DS}/WebLog.cdm.json")
    assert committed_ids(azure_lake) == ["a", "b", "c", "x"]


@pytest.mark.timeout(600)
def test_azure_first_run_frozen_before_its_tables_exist_cannot_create_them_late(tmp_path, azure_lake, inputs):
    """A first Delta run frozen before it creates its table (past its lease); B creates the table
    and commits; A, thawed, fails and leaves B's table as B committed it."""
    first, second = inputs
    pause = tmp_path / "pause"
    args = ("--output", azure_lake, "--table-format", "delta")
    run_a = paused_export("after_dead_letters", pause, "--input", str(first), *args, env=LEASE)
    freeze(run_a)
    pause.unlink()
    try:
        run_b = run_cli("export", "--input", str(second), *args, "--lock-wait", "120", env=LEASE)
        assert run_b.returncode == 0, run_b.stderr
    finally:
        thaw(run_a)
    _out, err = run_a.communicate(timeout=300)
    assert run_a.returncode == 1, err
    assert "nothing of this run was committed" in err
    assert committed_ids(azure_lake) == ["b", "c", "x"]
    rerun = run_cli("export", "--input", str(first), *args, "--lock-wait", "120", env=LEASE)
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(azure_lake) == ["a", "b", "c", "x"]
