"""The pipeline on Beam's portable runner gives the same output as on the default runner.

Flink, Spark and Dataflow all run a Python pipeline through the portable Fn API: the launcher
submits the pipeline to a job service and SDK workers (other processes) run the DoFns. Here the
job service is Beam's own (``local_job_service_main``) and the workers are either the launcher
itself (``--environment_type=LOOPBACK``) or processes of a separate worker pool
(``--environment_type=EXTERNAL`` against ``worker_pool_main``), started in another folder with
only their own environment: nothing may depend on state in the launcher that workers don't have.

Each service is a real subprocess on a free loopback port, in its own process group, killed with
its children at teardown. The exports are real ``insights-link export`` processes with a fixed run
id and clock, compared with the same runs on the default runner: file set, rows, dead letters and
run-report counts, for a first run and for a ``--reprocess`` run whose events are all duplicates
of committed rows (dedupe reads the committed files on the workers).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import (
    REPO,
    dead_letters,
    event,
    manifest_locations,
    parquet_files,
    read_activities,
    run_cli,
    write_jsonl,
)
from conftest_azurite import CREDENTIAL_ENV
from insights_link.storage import open_storage

VENV_BIN = os.path.dirname(sys.executable)
RUN_TIME = "2026-11-28T12:00:00Z"
SAMPLE = REPO / "sample_data" / "exports"
DATA_SOURCE = "EngagementInsights"
STARTUP_SECONDS = 60
CLI_TIMEOUT = 240  # below the test timeout: a hung job fails with the CLI's output
# Report fields that name the lake's location or the wall clock; everything else must match.
VOLATILE = {"output", "started_at", "finished_at"}


def _env(**extra: str) -> dict[str, str]:
    """This environment with the venv's bin first on PATH: the worker pool starts its workers
    as plain ``python``, and a ``python`` without Beam crashes them (the job then hangs)."""
    path = os.environ.get("PATH", "")
    return dict(os.environ, PATH=VENV_BIN + (os.pathsep + path if path else ""), **extra)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("localhost", port), timeout=0.5):
        return True
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (the service and the workers it started), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # stragglers, or a leader that ignored TERM
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@dataclass
class Service:
    """A Beam service subprocess listening on ``localhost:port``; its output goes to ``log``."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def beam_service(
    name: str, module: str, port_flag: str, workdir: Path, env: dict[str, str]
) -> Iterator[Service]:
    """Start ``python -m module port_flag=<free port>`` in ``workdir``; yield once the port
    answers (a bounded wait); stop it and its children afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # the free port may be taken between picking and binding
        port = _free_port()
        log = workdir / f"{name}-{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, f"{port_flag}={port}"],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, port, log, proc)
        deadline = time.monotonic() + STARTUP_SECONDS
        while proc.poll() is None and not _answers(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None and _answers(port):
            break
        _stop(proc)
        if time.monotonic() >= deadline:
            pytest.fail(
                f"{name} did not answer on port {port} within {STARTUP_SECONDS} s:\n"
                f"{service.log_text()[-3000:]}"
            )
    else:
        pytest.fail(f"{name} exited at start three times:\n{service.log_text()[-3000:]}")
    try:
        yield service
    finally:
        _stop(proc)


def job_service_at(workdir: Path) -> contextlib.AbstractContextManager[Service]:
    return beam_service(
        "job-service", "apache_beam.runners.portability.local_job_service_main", "--port", workdir, _env()
    )


def worker_pool_at(workdir: Path, env: dict[str, str]) -> contextlib.AbstractContextManager[Service]:
    return beam_service(
        "worker-pool", "apache_beam.runners.worker.worker_pool_main", "--service_port", workdir, env
    )


@pytest.fixture(scope="module")
def job_service(tmp_path_factory) -> Iterator[Service]:
    with job_service_at(tmp_path_factory.mktemp("job-service")) as service:
        yield service


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory) -> Iterator[Service]:
    """Workers in their own folder (not the launcher's), with the venv's bin first on PATH."""
    with worker_pool_at(tmp_path_factory.mktemp("worker-pool"), _env()) as service:
        yield service


# -- the runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extra_input(tmp_path_factory) -> Path:
    """Events for the second run: two new ones (one on a new date), a bad line, a bad URI and
    an in-file duplicate. Shared by every runner so dead-letter sources are equal."""
    return write_jsonl(
        tmp_path_factory.mktemp("inputs") / "extra.jsonl",
        [
            event("portable-1"),
            event("portable-2", ts="2024-05-04T08:00:00Z"),
            "not json",
            event("portable-3", uri="ftp://x"),
            event("portable-1"),
        ],
    )


def _runs(extra: Path) -> list[tuple[str, list[str]]]:
    return [
        ("X", ["--input", str(SAMPLE)]),
        ("Y", ["--input", str(SAMPLE), "--input", str(extra), "--reprocess"]),
    ]


def _export(
    lake: str, run_id: str, args: list[str], beam_args: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``insights-link export`` as a real process (``conftest.run_cli``, or the same command in
    ``cwd``); fails the test with its output unless it exits 0."""
    argv = ["export", *args, "--output", lake, "--run-id", run_id, "--run-time", RUN_TIME, *beam_args]
    if cwd is None:
        result = run_cli(*argv, env=_env(), timeout=CLI_TIMEOUT)
    else:
        result = subprocess.run(
            [sys.executable, "-m", "insights_link.cli", *argv],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=CLI_TIMEOUT,
            cwd=cwd,
        )
    assert result.returncode == 0, f"run {run_id} failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    return result


def _report(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


def _snapshot(lake: Path, run_id: str) -> dict:
    ds = lake / DATA_SOURCE
    return {
        "files": parquet_files(ds),
        "manifest": manifest_locations(ds),
        "rows": read_activities(ds),
        "dead_letters": dead_letters(ds),
        "report": _report(json.loads((ds / "_runs" / f"{run_id}.json").read_text())),
    }


def _azure_snapshot(url: str, run_id: str) -> dict:
    """:func:`_snapshot` for a lake on Azure storage, read through the project's storage layer."""
    storage = open_storage(url)
    rel = [o.key[len(DATA_SOURCE) + 1 :] for o in storage.list(DATA_SOURCE)]
    manifest = json.loads(storage.read_bytes(f"{DATA_SOURCE}/default.manifest.cdm.json"))
    locations = sorted(p["location"] for e in manifest["entities"] for p in e["dataPartitions"])
    rows = pa.concat_tables(
        [pq.read_table(io.BytesIO(storage.read_bytes(f"{DATA_SOURCE}/{loc}"))) for loc in locations]
    ).sort_by("ActivityId")
    letters = []
    for key in sorted(r for r in rel if r.startswith("_deadletter/") and r.endswith(".jsonl.gz")):
        text = gzip.decompress(storage.read_bytes(f"{DATA_SOURCE}/{key}")).decode()
        letters.extend(json.loads(line) for line in text.splitlines())
    return {
        "files": sorted(
            r
            for r in rel
            if r.endswith(".parquet") and not any(part.startswith("_") for part in r.split("/"))
        ),
        "manifest": locations,
        "rows": rows,
        "dead_letters": letters,
        "report": _report(json.loads(storage.read_bytes(f"{DATA_SOURCE}/_runs/{run_id}.json"))),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, extra_input) -> dict[str, dict]:
    """The same runs on the default runner (FnApiRunner, in process)."""
    lake = tmp_path_factory.mktemp("reference") / "lake"
    out = {}
    for run_id, args in _runs(extra_input):
        _export(str(lake), run_id, args, [])
        out[run_id] = _snapshot(lake, run_id)
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got["files"] == want["files"]
    assert got["manifest"] == want["manifest"]
    assert got["rows"].schema == want["rows"].schema
    assert got["rows"].to_pylist() == want["rows"].to_pylist()
    assert [(d["reason"], d["source"], d["position"]) for d in got["dead_letters"]] == [
        (d["reason"], d["source"], d["position"]) for d in want["dead_letters"]
    ]
    assert got["dead_letters"] == want["dead_letters"]
    assert got["report"] == want["report"]


def test_reference_runs_cover_rows_rejects_and_duplicates(reference):
    """The comparison below means something: both runs write rows, reject and drop duplicates."""
    first, second = reference["X"]["report"], reference["Y"]["report"]
    assert first["activities_written"] > 100 and first["duplicates_dropped"] > 0
    assert sum(first["rejected"].values()) > 0
    assert second["activities_written"] == 2  # only portable-1 and portable-2 are new
    assert second["duplicates_dropped"] == first["activities_written"] + first["duplicates_dropped"] + 1
    assert len(reference["Y"]["files"]) == len(reference["X"]["files"]) + 2


def _portable(job_service: Service, pool: Service | None = None) -> list[str]:
    args = ["--runner=PortableRunner", f"--job_endpoint={job_service.address}"]
    if pool is None:
        return [*args, "--environment_type=LOOPBACK"]
    return [*args, "--environment_type=EXTERNAL", f"--environment_config={pool.address}"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("environment", ["loopback", "external"])
def test_portable_runner_gives_the_default_runners_output(
    environment, request, job_service, reference, extra_input, tmp_path
):
    pool = request.getfixturevalue("worker_pool") if environment == "external" else None
    beam_args = _portable(job_service, pool)
    lake = tmp_path / "lake"
    for run_id, args in _runs(extra_input):
        jobs_before = job_service.log_text().count("Completed job")
        started = time.monotonic()
        _export(str(lake), run_id, args, beam_args)
        elapsed = time.monotonic() - started
        # The job really went through the job service (not a silent fallback to a local runner).
        assert job_service.log_text().count("Completed job") == jobs_before + 1
        assert_same(_snapshot(lake, run_id), reference[run_id])
        print(f"{environment} run {run_id}: {elapsed:.1f} s")
    assert not list((lake / DATA_SOURCE / "_staging").glob("*/**/*.parquet"))
    if pool is not None:
        assert "Starting worker" in pool.log_text()


@pytest.mark.timeout(300)
def test_relative_output_works_with_workers_in_another_folder(
    job_service, worker_pool, reference, extra_input, tmp_path
):
    launch = tmp_path / "launch"
    launch.mkdir()
    run_id, args = _runs(extra_input)[0]
    _export("lake", run_id, args, _portable(job_service, worker_pool), cwd=launch)
    assert_same(_snapshot(launch / "lake", run_id), reference[run_id])


@pytest.mark.azurite
@pytest.mark.timeout(300)
def test_external_workers_reach_azure_with_credentials_from_their_own_environment(
    azurite, azure_lake, job_service, reference, extra_input, tmp_path
):
    """Workers open the lake themselves: the pool gets the credentials through its environment
    (as Dataflow/Flink/Spark workers must), and the output on Azure matches the local reference."""
    pool_env = {k: v for k, v in _env().items() if k not in CREDENTIAL_ENV}
    pool_env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
    with worker_pool_at(tmp_path / "pool", pool_env) as pool:
        for run_id, args in _runs(extra_input):
            _export(azure_lake, run_id, args, _portable(job_service, pool))
            assert_same(_azure_snapshot(azure_lake, run_id), reference[run_id])
        assert "Starting worker" in pool.log_text()
