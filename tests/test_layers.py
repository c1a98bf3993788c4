"""The layers hold: the pure core imports nothing of storage, Beam or the CLI, and the core
type-checks."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

CORE = [
    "insights_link.core.contract",
    "insights_link.core.records",
    "insights_link.core.blocks",
    "insights_link.core.batch",
    "insights_link.core.fastpath",
    "insights_link.core.formats",
    "insights_link.core.deadletters",
    "insights_link.core.paths",
]


def test_core_imports_no_storage_beam_or_cli():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE)
        + "bad = sorted(m for m in sys.modules if m.startswith(('apache_beam', 'azure', "
        "'insights_link.storage', 'insights_link.lake', 'insights_link.pipeline', 'insights_link.cli')))\n"
        "print(bad)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_core_type_checks():
    run = subprocess.run(
        [sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_check_and_format_are_clean():
    """The code style CI holds: ``ruff check`` and ``ruff format --check`` over the repository."""
    for args in (["check", "."], ["format", "--check", "."]):
        run = subprocess.run(
            [sys.executable, "-m", "ruff", *args], capture_output=True, text=True, cwd=REPO, timeout=300
        )
        assert run.returncode == 0, f"ruff {' '.join(args)}:\n{run.stdout}{run.stderr}"
