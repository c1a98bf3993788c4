"""Scheduled runs: job files, several activities, filters, time windows, thresholds, locking,
incremental layout and JSON logs — all through the real CLI, results read back from the lake."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

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
    start_cli,
    write_jsonl,
)
from insights_link.storage.local import LocalStorage


@pytest.fixture
def job_dir(tmp_path):
    """A copy of the shipped sample job and its exports."""
    shutil.copytree(REPO / "sample_data" / "exports", tmp_path / "sample" / "exports")
    shutil.copy(REPO / "sample_data" / "job.toml", tmp_path / "sample" / "job.toml")
    return tmp_path / "sample"


def _names(folder):
    """Signal.Name of every decodable JSON-lines event in the sample exports, by Export.Id."""
    import gzip

    names = {}
    for f in sorted(folder.glob("*.jsonl*")):
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        for line in raw.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("Signal"), dict):
                names[str(doc["Signal"].get("Export", {}).get("Id"))] = doc["Signal"].get("Name")
    return names


def test_job_file_with_two_activities_commits_two_tables_in_one_manifest(job_dir):
    proc = run_cli("export", "--job", str(job_dir / "job.toml"), "--run-id", "j1")
    assert proc.returncode == 0, proc.stderr
    ds = (
        job_dir.parent / "job-lake" / "EngagementInsights"
    )  # output = "../job-lake", relative to the job file
    loaded = load_data_source(str(ds))
    assert sorted(loaded) == ["EmailPromo", "ProductViews"]
    assert loaded["EmailPromo"]["attributes"][-1] == "SignalSessionId"
    assert parquet_files(ds) == manifest_locations(ds)

    (report,) = run_reports(ds)
    for name, counts in report["activities"].items():
        balance = (
            counts["activities_written"]
            + counts["duplicates_dropped"]
            + sum(counts["rejected"].values())
            + counts["filtered_out"]
        )
        assert balance == counts["records_read"], name
    promo = read_activities_table(ds, "EmailPromo")
    assert set(promo["EventActivity"].to_pylist()) == {"EmailPromoClick"}
    views = read_activities_table(ds, "ProductViews")
    assert set(views["EventActivity"].to_pylist()) <= {"ProductView", "view"}
    names = _names(job_dir / "exports")
    assert all(names.get(i) in (None, "EmailPromoClick") for i in promo["ActivityId"].to_pylist())

    # A record that can't be decoded is dead-lettered once, not once per activity.
    dead = dead_letters(ds)
    malformed = [(d["source"], d["position"]) for d in dead if d["reason"] == "malformed"]
    assert len(malformed) == len(set(malformed)) > 0
    assert all("activity" in d for d in dead if d["reason"] != "malformed")


def read_activities_table(ds, table):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables(
        [pq.read_table(ds / loc) for loc in manifest_locations(ds) if loc.startswith(table + "/")]
    )


def test_flags_override_the_job_file(job_dir, tmp_path):
    other = tmp_path / "elsewhere"
    proc = run_cli(
        "export", "--job", str(job_dir / "job.toml"), "--output", str(other), "--data-source", "Override"
    )
    assert proc.returncode == 0, proc.stderr
    assert (other / "Override" / "default.manifest.cdm.json").is_file()
    assert not (job_dir.parent / "lake").exists()


@pytest.mark.parametrize(
    "content,named",
    [
        ('output = "x"\nbogus = 1\n', "'bogus'"),
        ("output = 5\n", "'output'"),
        ('output = "x"\n[[activity]]\nname = "A"\ninputs = "not-a-list"\n', "activity[0].'inputs'"),
        ('output = "x"\n[[activity]]\nname = "A"\ninputs = ["a"]\nevnt_names = ["x"]\n', "'evnt_names'"),
        ('output = "x"\n[[activity]]\ninputs = ["a"]\n', "'name'"),
        ('output = "x"\nlayout = "sideways"\n[[activity]]\nname = "A"\ninputs = ["a"]\n', "sideways"),
        ('output = "x\n', "not valid TOML"),
    ],
)
def test_bad_job_file_is_a_usage_error_naming_the_key(tmp_path, content, named):
    job = tmp_path / "job.toml"
    job.write_text(content)
    (tmp_path / "a").write_text("")
    proc = run_cli("export", "--job", str(job))
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr


def test_activity_flags_cannot_override_several_activities(job_dir):
    proc = run_cli("export", "--job", str(job_dir / "job.toml"), "--activity-name", "X")
    assert proc.returncode == 2 and "--activity-name" in proc.stderr


def test_since_until_count_outside_events_as_filtered_out(tmp_path, lake):
    src = write_jsonl(
        tmp_path / "e.jsonl",
        [
            event("a", ts="2024-05-01T00:00:00Z"),
            event("b", ts="2024-05-01T23:59:59Z"),
            event("c", ts="2024-05-02T00:00:00Z"),
            event("d", ts="2024-04-30T23:59:59.999Z"),
            event("bad", uri="nope"),
        ],
    )
    proc = run_cli(
        "export",
        "--input",
        str(src),
        "--output",
        str(lake),
        "--since",
        "2024-05-01T00:00:00Z",
        "--until",
        "2024-05-02T00:00:00Z",
    )
    assert proc.returncode == 0, proc.stderr
    ds = lake / "EngagementInsights"
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b"]
    (report,) = run_reports(ds)
    assert (report["filtered_out"], sum(report["rejected"].values())) == (2, 1)


def test_event_name_flag_filters_before_validation(tmp_path, lake):
    src = write_jsonl(
        tmp_path / "e.jsonl",
        [event("a", name="Keep"), event("b", name="Other", uri="invalid but filtered"), "garbage"],
    )
    proc = run_cli("export", "--input", str(src), "--output", str(lake), "--event-name", "Keep")
    assert proc.returncode == 0, proc.stderr
    (report,) = run_reports(lake / "EngagementInsights")
    assert (
        report["activities_written"],
        report["filtered_out"],
        report["rejected"]["malformed"],
        report["rejected"]["invalid_uri"],
    ) == (1, 1, 1, 0)


def test_max_rejected_ratio_fails_the_run_and_commits_nothing(lake):
    expected = json.loads((REPO / "sample_data" / "expected.json").read_text())
    ratio = sum(expected["rejected"].values()) / expected["records_read"]
    proc = run_cli(
        "export",
        "--input",
        str(REPO / "sample_data" / "exports"),
        "--output",
        str(lake),
        "--max-rejected-ratio",
        f"{ratio * 0.9:.4f}",
    )
    assert proc.returncode == 3, proc.stderr
    assert "max-rejected-ratio" in proc.stderr and "Traceback" not in proc.stderr
    ds = lake / "EngagementInsights"
    assert not (ds / "default.manifest.cdm.json").exists()
    assert parquet_files(ds) == []
    assert [r["status"] for r in run_reports(ds)] == ["failed"]
    ok = run_cli(
        "export",
        "--input",
        str(REPO / "sample_data" / "exports"),
        "--output",
        str(lake),
        "--max-rejected-ratio",
        f"{ratio * 1.1:.4f}",
    )
    assert ok.returncode == 0, ok.stderr


def test_a_held_lock_makes_the_second_run_exit_4(tmp_path, lake):
    src = write_jsonl(tmp_path / "e.jsonl", [event("a")])
    with LocalStorage(str(lake)).lock("EngagementInsights/_lock"):
        proc = run_cli("export", "--input", str(src), "--output", str(lake), "--lock-wait", "0")
    assert proc.returncode == 4, proc.stderr
    assert "EngagementInsights" in proc.stderr and "Traceback" not in proc.stderr
    assert not (lake / "EngagementInsights" / "default.manifest.cdm.json").exists()


def test_lock_of_a_killed_run_is_released(tmp_path, lake):
    src = write_jsonl(tmp_path / "e.jsonl", [event("a"), event("b")])
    killed = run_cli(
        "export",
        "--input",
        str(src),
        "--output",
        str(lake),
        env={"INSIGHTS_LINK_KILL_AT": "after_staged_file"},
    )
    assert killed.returncode < 0
    proc = run_cli("export", "--input", str(src), "--output", str(lake), "--lock-wait", "0")
    assert proc.returncode == 0, proc.stderr
    assert read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist() == ["a", "b"]


def test_concurrent_runs_on_one_local_data_source(tmp_path, lake):
    """Two runs started together: one waits for the other; both commit; nothing is lost."""
    first = write_jsonl(tmp_path / "in1" / "e.jsonl", [event(f"a{i}") for i in range(50)] + [event("shared")])
    second = write_jsonl(
        tmp_path / "in2" / "e.jsonl", [event(f"b{i}") for i in range(50)] + [event("shared")]
    )
    procs = [
        start_cli("export", "--input", str(src), "--output", str(lake), "--lock-wait", "120")
        for src in (first, second)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    ds = lake / "EngagementInsights"
    ids = read_activities(ds)["ActivityId"].to_pylist()
    assert sorted(ids) == sorted({f"a{i}" for i in range(50)} | {f"b{i}" for i in range(50)} | {"shared"})
    reports = run_reports(ds)
    assert sum(r["activities_written"] for r in reports) == 101
    assert sum(r["duplicates_dropped"] for r in reports) == 1
    assert parquet_files(ds) == manifest_locations(ds)
    load_data_source(str(ds))


def test_incremental_layout_writes_upserts_by_commit_hour(tmp_path, lake):
    first = write_jsonl(tmp_path / "in1" / "e.jsonl", [event("a"), event("b", ts="2024-05-02T10:00:00Z")])
    later = write_jsonl(tmp_path / "in2" / "e.jsonl", [event("b", ts="2024-05-02T10:00:00Z"), event("c")])
    args = ["--output", str(lake), "--layout", "incremental"]
    assert (
        run_cli(
            "export", "--input", str(first), *args, "--run-id", "r1", "--run-time", "2026-11-28T13:05:00Z"
        ).returncode
        == 0
    )
    proc = run_cli(
        "export", "--input", str(later), *args, "--run-id", "r2", "--run-time", "2026-11-28T14:30:00Z"
    )
    assert proc.returncode == 0, proc.stderr
    ds = lake / "EngagementInsights"
    loaded = load_data_source(str(ds))["WebLog"]
    assert [p.split("/")[1] for p in loaded["partitions"]] == ["FullData", "FullData"]
    assert loaded["incremental"] == [
        "WebLog/IncrementalData/2026/11/28/14/Upserts/WebLog_20240501_r2_000.parquet"
    ]
    assert parquet_files(ds) == manifest_locations(ds)
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b", "c"]  # b: a counted duplicate
    r2 = [r for r in run_reports(ds) if r["run_id"] == "r2"][0]
    assert (r2["activities_written"], r2["duplicates_dropped"]) == (1, 1)


def test_json_logs_and_summary(tmp_path, lake):
    src = write_jsonl(tmp_path / "e.jsonl", [event("a"), "garbage"])
    proc = run_cli("export", "--input", str(src), "--output", str(lake), "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    logs = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert logs and all({"time", "level", "logger", "message"} <= set(entry) for entry in logs)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    (report,) = run_reports(lake / "EngagementInsights")
    assert summary == report
    assert Counter({"malformed": 1}) == Counter({k: v for k, v in summary["rejected"].items() if v})
    failed = run_cli(
        "export", "--input", str(tmp_path / "none.jsonl"), "--output", str(lake), "--log-format", "json"
    )
    assert failed.returncode == 2
    assert json.loads(failed.stdout.strip().splitlines()[-1])["status"] == "usage_error"


def test_unknown_pipeline_option_in_job_file_is_a_usage_error(tmp_path, lake):
    src = write_jsonl(tmp_path / "e.jsonl", [event("a")])
    job = tmp_path / "job.toml"
    job.write_text(
        f'output = "{lake}"\npipeline_options = ["--runnr=PortableRunner"]\n'
        f'[[activity]]\nname = "A"\ninputs = ["{src}"]\n'
    )
    proc = run_cli("export", "--job", str(job))
    assert proc.returncode == 2 and "--runnr=PortableRunner" in proc.stderr


def test_an_activity_added_later_still_reads_files_others_committed(tmp_path, lake):
    src = write_jsonl(tmp_path / "in" / "e.jsonl", [event("a", name="Promo"), event("b", name="View")])
    job = tmp_path / "job.toml"
    first = f'output = "{lake}"\n[[activity]]\nname = "Promo"\ninputs = ["{src}"]\nevent_names = ["Promo"]\n'
    job.write_text(first)
    assert run_cli("export", "--job", str(job)).returncode == 0
    job.write_text(first + f'[[activity]]\nname = "Views"\ninputs = ["{src}"]\nevent_names = ["View"]\n')
    proc = run_cli("export", "--job", str(job), "--run-id", "second")
    assert proc.returncode == 0, proc.stderr
    ds = lake / "EngagementInsights"
    assert read_activities_table(ds, "Views")["ActivityId"].to_pylist() == ["b"]
    assert read_activities_table(ds, "Promo")["ActivityId"].to_pylist() == ["a"]
    second = [r for r in run_reports(ds) if r["run_id"] == "second"][0]
    assert second["inputs"][0]["activities"] == ["Views"]
    assert second["activities"]["Promo"]["records_read"] == 0
