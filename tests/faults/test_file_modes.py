"""Files others can use: everything the exporter writes follows the process's umask, like any
tool (0644 under 022, 0640 under 027), instead of mkstemp's private 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from conftest import REPO, event, write_jsonl


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_lake_files_follow_the_umask(tmp_path, umask, mode):
    src = write_jsonl(tmp_path / "in" / "e.jsonl", [event("a"), "junk"])
    lake = tmp_path / "lake"
    run = subprocess.run(
        [sys.executable, "-m", "insights_link.cli", "export", "--input", str(src), "--output", str(lake)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    assert run.returncode == 0, run.stderr
    files = [p for p in lake.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".parquet", ".json", ".gz"} <= kinds
    wrong = {
        str(p.relative_to(lake)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in files
        if stat.S_IMODE(p.stat().st_mode) != mode
    }
    assert not wrong, wrong
