"""Smoke tests for ``benchmarks/run.py``: its bookkeeping on given numbers, and one tiny real run.

Not a timing test: nothing here asserts how fast anything is, only that the harness measures,
verifies and reports what it should.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from conftest import load_script as _load

bench = _load("bench_run", REPO / "benchmarks" / "run.py")

EXPECTED: dict[str, Any] = {
    "events_total": 1000,
    "valid_unique": 960,
    "duplicates": 10,
    "invalid_total": 30,
    "invalid": {
        "malformed": 6,
        "missing_field": 6,
        "invalid_type": 6,
        "invalid_timestamp": 6,
        "invalid_uri": 6,
    },
    "valid_unique_per_date": {"2024-05-01": 480, "2024-05-02": 480},
}


def _report(**changes: Any) -> dict[str, Any]:
    report = {
        "status": "committed",
        "records_read": 1000,
        "activities_written": 960,
        "duplicates_dropped": 10,
        "rejected": dict(EXPECTED["invalid"]),
    }
    return report | changes


def _run(
    wall: float,
    rss: int = 100_000,
    tree: int | None = 120_000,
    problems: list[str] | None = None,
    others: float = 0.05,
):
    return {
        "wall_s": wall,
        "maxrss_kb": rss,
        "tree_rss_kb": tree,
        "problems": problems or [],
        "others_cpu_share": others,
    }


def test_median_rate_and_ratio() -> None:
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        bench.median([])
    assert bench.events_per_second(1_000_000, 4.0) == 250_000
    assert bench.events_per_second(10, None) is None
    assert bench.ratio(250_000, 500_000) == 0.5
    assert bench.ratio(None, 1.0) is None and bench.ratio(1.0, 0) is None


def test_parse_count_and_dataset_key() -> None:
    assert [bench.parse_count(t) for t in ("300000", "300_000", "300k", "1M", "2.5m")] == [
        300_000,
        300_000,
        300_000,
        1_000_000,
        2_500_000,
    ]
    for bad in ("0", "-5", "1.5", "abc"):
        with pytest.raises(ValueError):
            bench.parse_count(bad)
    key = bench.dataset_key(1000, 8, bench.DATA_PARAMS)
    assert key == "jsonl-e1000-f8-i0.03-u0.01-d30-2024-05-01-seed7"
    assert bench.dataset_key(1000, 8, {**bench.DATA_PARAMS, "seed": 8}) != key
    assert bench.next_start("2024-05-01", 30) == "2024-05-30"


def test_verify_ours_accepts_exact_counts_only() -> None:
    assert bench.verify_ours(0, _report(), EXPECTED) == []
    assert bench.verify_ours(1, _report(), EXPECTED) == ["exit code 1"]
    assert bench.verify_ours(0, None, EXPECTED) == ["no run report"]
    problems = bench.verify_ours(0, _report(records_read=999, activities_written=900), EXPECTED)
    assert any("records_read 999" in p for p in problems)
    assert any("activities_written 900" in p for p in problems)
    wrong_reason = _report(rejected={**EXPECTED["invalid"], "malformed": 5, "invalid_uri": 7})
    assert len(bench.verify_ours(0, wrong_reason, EXPECTED)) == 2
    assert bench.verify_ours(0, _report(status="failed"), EXPECTED)


def test_verify_duckdb_rows_and_partitions() -> None:
    assert bench.verify_duckdb(0, {"rows_written": 960, "partitions": 2}, EXPECTED) == []
    assert bench.verify_duckdb(0, {"rows_written": 961, "partitions": 2}, EXPECTED, tolerance=0.01) == []
    assert bench.verify_duckdb(0, {"rows_written": 0, "partitions": 0}, EXPECTED)  # an empty COPY
    assert bench.verify_duckdb(0, {"rows_written": 960, "partitions": 1}, EXPECTED)
    assert bench.verify_duckdb(2, None, EXPECTED) == ["exit code 2", "no result printed"]


def test_summarize_reports_no_speed_for_a_broken_round() -> None:
    good = bench.summarize([_run(3.0), _run(1.0, rss=200_000, others=0.3), _run(2.0, tree=None)], 1000)
    assert good["verified"] and good["median_wall_s"] == 2.0 and good["events_per_s"] == 500.0
    assert good["max_others_cpu_share"] == 0.3
    assert good["peak_rss_kb"] == 200_000 and good["peak_tree_rss_kb"] == 120_000
    assert bench.peak_memory_kb(good) == 200_000
    broken = bench.summarize([_run(3.0), _run(0.1, problems=["exit code 1"])], 1000)
    assert not broken["verified"] and broken["median_wall_s"] is None and broken["events_per_s"] is None
    assert broken["problems"] == ["exit code 1"]


def test_other_cpu_share() -> None:
    # 10 s on 2 CPUs = 20 CPU-seconds; the run used 12, the machine was busy for 15: others took 3.
    assert bench.other_cpu_share(15.0, 12.0, 10.0, 2) == pytest.approx(0.15)
    assert bench.other_cpu_share(11.0, 12.0, 10.0, 2) == 0.0  # sampling slack never goes negative
    assert bench.other_cpu_share(50.0, 0.0, 10.0, 2) == 1.0
    assert bench.other_cpu_share(1.0, 0.0, 0.0, 2) == 0.0


def test_noisy_runs_are_measured_again(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.is_noisy({"others_cpu_share": 0.5}) and not bench.is_noisy({"others_cpu_share": 0.1})
    assert not bench.is_noisy({"others_cpu_share": None})
    shares = iter([0.6, 0.4, 0.02, 0.9])

    def attempt(wait: float) -> dict:
        run = {
            **_run(1.0, others=next(shares)),
            "cpu_s": 1.0,
            "tree_processes": 1,
            "loadavg_1m_at_start": 0.1,
            "quiet_wait_s": wait,
            "stderr": "x",
        }
        return run

    settings = bench.Settings(quiet_wait=0.0, noisy_retries=2)
    run = bench.measured(attempt, "test", settings)
    assert run["others_cpu_share"] == 0.02
    assert [a["others_cpu_share"] for a in run["noisy_attempts"]] == [0.6, 0.4]
    run = bench.measured(attempt, "test", bench.Settings(noisy_retries=0))  # keeps the noisy one
    assert run["others_cpu_share"] == 0.9 and run["noisy_attempts"] == []
    assert "measuring again" in capsys.readouterr().out


def test_linear_cost_helpers() -> None:
    points = [(300_000, 1.0 + 0.3 * 4), (1_000_000, 1.0 + 4.0), (3_000_000, 1.0 + 12.0)]
    costs = bench.marginal_costs(points)
    assert [round(c["s_per_million"], 6) for c in costs] == [4.0, 4.0]
    fixed, per_million = bench.linear_fit(points)
    assert fixed == pytest.approx(1.0) and per_million == pytest.approx(4.0)


def _size(events: int, duck_wall: float, ours: dict[str, tuple[float, int]]) -> dict[str, Any]:
    engines = {"duckdb": bench.summarize([_run(duck_wall, rss=500_000, tree=None)], events)}
    for mode, (wall, rss) in ours.items():
        engines[f"insights-link/{mode}"] = bench.summarize([_run(wall, rss=rss, tree=None)], events)
    duck = engines["duckdb"]["events_per_s"]
    return {
        "events": events,
        "engines": engines,
        "ratio": {m: bench.ratio(engines[f"insights-link/{m}"]["events_per_s"], duck) for m in ours},
    }


def test_evaluate_targets_and_report() -> None:
    results = {
        "machine": {"cpu_model": "Test CPU", "nproc": 2},
        "loadavg": {"before": [0.1, 0.1, 0.1], "after": [0.2, 0.1, 0.1]},
        "sizes": [
            _size(300_000, 0.5, {"in_memory": (2.2, 600_000), "multi_processing": (3.0, 700_000)}),
            _size(1_000_000, 1.5, {"in_memory": (5.0, 700_000), "multi_processing": (4.5, 800_000)}),
            _size(3_000_000, 4.5, {"in_memory": (13.0, 1_000_000), "multi_processing": (12.0, 900_000)}),
        ],
        "incremental": {
            "events": 100_000,
            "base_events": 3_000_000,
            "dates": ["2024-05-30"],
            "into_base": bench.summarize([_run(2.2)], 100_000),
            "into_empty": bench.summarize([_run(2.0)], 100_000),
            "ratio": 1.1,
        },
    }
    targets = {t["target"]: t for t in bench.evaluate_targets(results)}
    assert targets["throughput"]["met"] is False and targets["throughput"]["measured"] == "0.30x"
    assert targets["peak RSS"]["met"] is True  # 1,000,000 KB = 1.02 GB
    assert targets["flat memory (in_memory)"]["met"] is False  # 1.43x
    assert targets["flat memory (multi_processing)"]["met"] is True  # 1.12x
    assert targets["linear cost"]["met"] is True  # 4.0 then 4.0 s per million
    assert targets["multi_processing"]["met"] is False  # slower at 0.3M
    assert targets["Nth run flat"]["met"] is True
    text = bench.render_report(results)
    assert "Test CPU" in text and "0.30x" in text and "NOT met" in text
    markdown = bench.render_report(results, markdown=True)
    assert "| 1,000,000 | insights-link/in_memory | 5.00 | 200,000 | 0.30x |" in markdown


def test_format_table_aligns_numbers_right() -> None:
    text = bench.format_table(("name", "n"), [["a", "1,000"], ["long name", "2"]])
    lines = text.splitlines()
    assert lines[0] == "name           n"
    assert lines[2] == "a          1,000"
    assert lines[3] == "long name      2"


def test_help_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0 and "--incremental" in capsys.readouterr().out
    for bad in (["--modes", "multi_threading"], ["--sizes", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit) as done:
            bench.main(bad)
        assert done.value.code == 2


def test_tiny_end_to_end_run(tmp_path: Path) -> None:
    """The real harness on 2,000 events, one round, in_memory only: exits 0 and reports verified numbers."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--sizes",
            "2000",
            "--rounds",
            "1",
            "--modes",
            "in_memory",
            "--quiet-wait",
            "0",
            "--noisy-retries",
            "0",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results["machine"]["nproc"] >= 1 and results["loadavg"]["after"]
    [size] = results["sizes"]
    assert size["events"] == 2000 and size["expected"]["events_total"] == 2000
    assert set(size["engines"]) == {"duckdb", "duckdb-bare", "insights-link/in_memory"}
    for summary in size["engines"].values():
        assert summary["verified"] and summary["problems"] == []
        assert summary["events_per_s"] > 0 and summary["peak_rss_kb"] > 0
        assert 0 <= summary["max_others_cpu_share"] <= 1
    ours = size["runs"]["insights-link/in_memory"][0]["report"]
    assert ours["records_read"] == 2000
    assert ours["activities_written"] == size["expected"]["valid_unique"]
    duck = size["runs"]["duckdb"][0]["result"]
    assert duck["rows_written"] == size["expected"]["valid_unique"]
    assert size["ratio"]["in_memory"] > 0
    assert "insights-link/in_memory" in done.stdout and "duckdb" in done.stdout
