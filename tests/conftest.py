"""Shared fixtures: input builders, a CLI runner (real processes) and lake readers."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
# Every process a test starts loads tests/testing/sitecustomize.py (the failpoints).
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).parent / "testing"), os.environ.get("PYTHONPATH", "")) if p
)

pytest_plugins = ["conftest_azurite"]


def event(
    eid,
    ts="2024-05-01T10:00:00Z",
    user="u1",
    uri="https://contoso.com/p",
    action="Email promo",
    name="EmailPromoClick",
    **extra,
):
    """A nested refined event; pass None to drop a field."""
    signal = {
        "Export": {"Id": eid},
        "User": {"Id": user},
        "Timestamp": ts,
        "View": {"Uri": uri},
        "Action": {"Name": action},
        "Name": name,
    }
    signal = {
        k: v
        for k, v in signal.items()
        if v is not None and v != {"Id": None} and v != {"Uri": None} and v != {"Name": None}
    }
    signal.update(extra)
    return {"Signal": signal}


def signal_avro_schema(timestamp_type="string", with_name: bool = True) -> dict:
    """The Avro schema of a nested refined event (Signal.Export.Id, ...; Signal.Name optional)."""

    def rec(name, field):
        return {"type": "record", "name": name, "fields": [{"name": field, "type": "string"}]}

    fields = [
        {"name": "Export", "type": rec("ExportRecord", "Id")},
        {"name": "User", "type": rec("UserRecord", "Id")},
        {"name": "Timestamp", "type": timestamp_type},
        {"name": "View", "type": rec("ViewRecord", "Uri")},
        {"name": "Action", "type": rec("ActionRecord", "Name")},
    ]
    if with_name:
        fields.append({"name": "Name", "type": ["null", "string"], "default": None})
    return {
        "type": "record",
        "name": "Event",
        "fields": [{"name": "Signal", "type": {"type": "record", "name": "SignalRecord", "fields": fields}}],
    }


def write_jsonl(path: Path, records, gz: bool = False) -> Path:
    """Write records (dicts, or str lines written as they are) as JSON lines."""
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load_script(name: str, path: Path):
    """Import a script that is not in a package (benchmarks/, sample_data/) under ``name``."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``insights-link`` as a real process, as a scheduler would start it."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "insights_link.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


#: the fixed clock of the exports tests compare
RUN_TIME = "2026-11-28T12:00:00Z"


def export_run(
    source, lake, run_id: str, *extra: str, fmt: str = "cdm", env=None, run_time: str | None = RUN_TIME
):
    """``insights-link export`` of ``source`` into ``lake`` with a fixed run id, table format and
    (unless ``run_time=None``) clock, as a real process."""
    args = [
        "export",
        "--input",
        str(source),
        "--output",
        str(lake),
        "--run-id",
        run_id,
        "--table-format",
        fmt,
    ]
    return run_cli(*args, *(["--run-time", run_time] if run_time else []), *extra, env=env)


#: The checkpoints of a run's commit, in order (see insights_link.checkpoints and tests/testing).
COMMIT_STEPS = [
    "after_staged_file",
    "before_commit",
    "after_dead_letters",
    "after_first_move",
    "after_moves",
    "before_manifest",
    "after_manifest",
    "after_report",
]


def run_killed(step: str, *args: str) -> subprocess.CompletedProcess:
    """``insights-link`` SIGKILLed by its own failpoint at checkpoint ``step``."""
    return run_cli(*args, env={"INSIGHTS_LINK_KILL_AT": step})


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``insights-link`` as a background process (stdout/stderr captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "insights_link.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
        cwd=REPO,
    )


def manifest_locations(data_source: Path) -> list[str]:
    """Every Parquet file the manifest references (full and incremental partitions)."""
    doc = json.loads((data_source / "default.manifest.cdm.json").read_text())
    return sorted(
        p["location"]
        for e in doc["entities"]
        for p in e["dataPartitions"] + e.get("incrementalPartitions", [])
    )


def read_activities(data_source: Path) -> pa.Table:
    """Every row the manifest references, sorted by ActivityId."""
    tables = [pq.read_table(data_source / loc) for loc in manifest_locations(data_source)]
    return pa.concat_tables(tables).sort_by("ActivityId")


def parquet_files(data_source: Path) -> list[str]:
    """Every Parquet file below the data-source folder outside ``_`` folders."""
    return sorted(
        str(p.relative_to(data_source))
        for p in data_source.rglob("*.parquet")
        if not any(part.startswith("_") for part in p.relative_to(data_source).parts)
    )


def dead_letters(data_source: Path) -> list[dict]:
    rows = []
    for f in sorted((data_source / "_deadletter").glob("*.jsonl.gz")):
        rows.extend(json.loads(line) for line in gzip.decompress(f.read_bytes()).decode().splitlines())
    return rows


def run_reports(data_source: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((data_source / "_runs").glob("*.json"))]


def duckdb_rows(data_source: Path) -> list[tuple]:
    """The same rows read back by DuckDB (an independent Parquet reader)."""
    files = [str(data_source / loc) for loc in manifest_locations(data_source)]
    return duckdb.sql(
        f"select ActivityId, CustomerId, epoch_us(ActivityTime) from read_parquet({files!r}) order by 1"
    ).fetchall()


@pytest.fixture
def lake(tmp_path) -> Path:
    return tmp_path / "lake"


def pytest_collection_modifyitems(config, items):
    """``faults_long`` trials run only when selected with ``-m faults_long``."""
    if "faults_long" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="long fault trials: select with -m faults_long")
    for item in items:
        if "faults_long" in item.keywords:
            item.add_marker(skip)
