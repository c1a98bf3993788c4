"""Nothing unreadable is silent: a file that can't be read to its end is named in the summary and
the run report, and ``--fail-on-unreadable`` fails the run for it (exit 3, nothing committed)."""

from __future__ import annotations

import gzip
import json

from lake_checks import committed_ids

from conftest import event, run_cli, run_reports, write_jsonl


def _truncated_gzip(path, ids):
    data = gzip.compress("".join(json.dumps(event(i)) + "\n" for i in ids).encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def test_truncated_file_is_named_in_summary_and_report(tmp_path):
    broken = _truncated_gzip(tmp_path / "in" / "broken.jsonl.gz", [f"t{i}" for i in range(2000)])
    write_jsonl(tmp_path / "in" / "fine.jsonl", [event("f1"), event("f2")])
    lake = tmp_path / "lake"
    run = run_cli("export", "--input", str(tmp_path / "in"), "--output", str(lake))
    assert run.returncode == 0, run.stderr
    assert f"UNREADABLE input:    {broken}" in run.stdout
    (report,) = run_reports(lake / "EngagementInsights")
    (entry,) = report["unreadable_inputs"]
    assert entry["source"] == str(broken) and entry["position"] > 1 and str(broken) in entry["detail"]
    ids = committed_ids(str(lake))
    assert {"f1", "f2"} <= set(ids) and len(ids) == entry["position"] - 1 + 2  # the good part is kept
    assert report["rejected"]["malformed"] == 1


def test_fail_on_unreadable_fails_the_run_and_commits_nothing(tmp_path):
    broken = _truncated_gzip(tmp_path / "in" / "broken.jsonl.gz", [f"t{i}" for i in range(2000)])
    lake = tmp_path / "lake"
    run = run_cli("export", "--input", str(tmp_path / "in"), "--output", str(lake), "--fail-on-unreadable")
    assert run.returncode == 3, run.stderr
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("insights-link:")]
    assert str(broken) in line and "nothing was committed" in line
    assert committed_ids(str(lake)) == []
