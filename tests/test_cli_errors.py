"""Usage and configuration errors: non-zero exit, one clear line naming the value, nothing written."""

from __future__ import annotations

import pytest

from conftest import event, run_cli, write_jsonl


@pytest.fixture
def src(tmp_path):
    return write_jsonl(tmp_path / "in" / "events.jsonl", [event("a")])


def _cases(tmp_path, src):
    a_file = tmp_path / "existing-file"
    a_file.write_text("x")
    lake = str(tmp_path / "lake")
    return {
        "input matches nothing": (["--input", str(tmp_path / "nope" / "*.jsonl"), "--output", lake], "nope"),
        "input does not exist": (
            ["--input", str(tmp_path / "missing.jsonl"), "--output", lake],
            "missing.jsonl",
        ),
        "bad data source name": (["--input", str(src), "--output", lake, "--data-source", "2bad"], "'2bad'"),
        "hive-style name": (["--input", str(src), "--output", lake, "--activity-name", "date=1"], "'date=1'"),
        "typo in an option": (["--input", str(src), "--ouptut", lake], "--ouptut"),
        "shell-expanded glob": (
            ["--input", str(src), str(tmp_path / "other.jsonl"), "--output", lake],
            "other.jsonl",
        ),
        "output is a file": (["--input", str(src), "--output", str(a_file)], "existing-file"),
        "output below a file": (["--input", str(src), "--output", str(a_file / "lake")], "existing-file"),
        "unknown extension": (["--input", str(a_file), "--output", lake], "--input-format"),
        "bad input format": (["--input", str(src), "--output", lake, "--input-format", "xml"], "xml"),
        "missing output": (["--input", str(src)], "--output"),
        "bad run time": (
            ["--input", str(src), "--output", lake, "--run-time", "2024-02-30T00:00:00Z"],
            "2024-02-30",
        ),
    }


CASES = [
    "input matches nothing",
    "input does not exist",
    "bad data source name",
    "hive-style name",
    "typo in an option",
    "shell-expanded glob",
    "output is a file",
    "output below a file",
    "unknown extension",
    "bad input format",
    "missing output",
    "bad run time",
]


@pytest.mark.parametrize("case", CASES)
def test_usage_error(case, tmp_path, src):
    args, named = _cases(tmp_path, src)[case]
    proc = run_cli("export", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1 and named in error_lines[0], proc.stderr
    assert not (tmp_path / "lake").exists()


def test_no_command_and_unknown_command():
    assert run_cli().returncode == 2
    proc = run_cli("exprot")
    assert proc.returncode == 2 and "'exprot'" in proc.stderr


def test_help_exits_zero():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "insights-link export" in proc.stdout
