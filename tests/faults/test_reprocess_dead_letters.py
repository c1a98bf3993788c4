"""A record already dead-lettered by a committed run is not dead-lettered again: not on
``--reprocess``, and not when a file that grew is read again. It still counts as rejected (the
counts balance) and the report says how many were already recorded."""

from __future__ import annotations

from conftest import dead_letters, event, run_cli, run_reports, write_jsonl

BAD = ["not json", '{"Signal": {"Export": {"Id": "x"}}}', event("u", uri="relative/path")]


def _export(src, lake, *extra):
    run = run_cli("export", "--input", str(src), "--output", str(lake), *extra)
    assert run.returncode == 0, run.stderr
    return run


def test_reprocess_does_not_repeat_dead_letters(tmp_path):
    src = write_jsonl(tmp_path / "in" / "e.jsonl", [event("a"), *BAD, event("b")])
    lake = tmp_path / "lake"
    ds = lake / "EngagementInsights"
    _export(src, lake, "--run-id", "r1")
    assert len(dead_letters(ds)) == 3
    _export(src, lake, "--run-id", "r2", "--reprocess")
    _export(src, lake, "--run-id", "r3", "--reprocess")
    assert len(dead_letters(ds)) == 3, "the same records were dead-lettered again"
    reports = {r["run_id"]: r for r in run_reports(ds)}
    for run_id in ("r2", "r3"):
        assert sum(reports[run_id]["rejected"].values()) == 3
        assert reports[run_id]["dead_letters_already_recorded"] == 3
        assert reports[run_id]["duplicates_dropped"] == 2


def test_grown_file_dead_letters_only_its_new_records(tmp_path):
    src = write_jsonl(tmp_path / "in" / "e.jsonl", [event("a"), *BAD])
    lake = tmp_path / "lake"
    ds = lake / "EngagementInsights"
    _export(src, lake, "--run-id", "r1")
    with src.open("a") as f:
        f.write("another bad line\n")
    _export(src, lake, "--run-id", "r2")
    letters = dead_letters(ds)
    assert sorted(d["position"] for d in letters) == [2, 3, 4, 5]
    assert [d["run_id"] for d in letters if d["position"] == 5] == ["r2"]
