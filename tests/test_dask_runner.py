"""Beam's DaskRunner on a real ``dask.distributed`` cluster (issue 14): a scheduler and two
worker processes started here as separate processes on free loopback ports, and
``insights-link export --runner DaskRunner --dask_client_address tcp://HOST:PORT`` must write
exactly the rows, dead letters and report counts of the default runner on the sample data."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, dead_letters, export_run, read_activities, run_reports

distributed = pytest.importorskip("distributed", reason="the dask extra: pip install -e '.[test]'")

SAMPLE = REPO / "sample_data" / "exports"
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process below
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker`` processes; yields the scheduler's address."""
    logs = tmp_path_factory.mktemp("dask")
    address = f"tcp://{HOST}:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    procs = [
        _start(
            ["scheduler", "--host", HOST, "--port", port, "--dashboard-address", f"{HOST}:0"], logs / "s.log"
        )
    ]
    try:
        for n in (1, 2):
            procs.append(
                _start(
                    [
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"w{n}",
                        "--host",
                        HOST,
                    ],
                    logs / f"w{n}.log",
                )
            )
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _counts(report: dict) -> dict:
    keep = ("records_read", "activities_written", "duplicates_dropped", "rejected", "activities")
    return {k: report[k] for k in keep} | {"files": sorted(i["source"] for i in report["inputs"])}


def _outcome(lake: Path) -> tuple[list[dict], list[dict], dict]:
    ds = lake / "EngagementInsights"
    (report,) = run_reports(ds)
    return read_activities(ds).to_pylist(), dead_letters(ds), _counts(report)


def test_dask_runner_writes_what_the_default_runner_writes(tmp_path, dask_cluster):
    local = export_run(SAMPLE, tmp_path / "local", "run-same")
    assert local.returncode == 0, local.stderr[-2000:]
    # small chunks too: the JSON-lines file is cut, its chunks spread over the two workers
    dask = export_run(
        SAMPLE,
        tmp_path / "dask",
        "run-same",
        "--runner",
        "DaskRunner",
        "--dask_client_address",
        dask_cluster,
        "--chunk-mb",
        "0.002",
    )
    assert dask.returncode == 0, dask.stderr[-3000:]
    rows, letters, counts = _outcome(tmp_path / "dask")
    expected_rows, expected_letters, expected_counts = _outcome(tmp_path / "local")
    assert rows and letters
    assert rows == expected_rows
    assert letters == expected_letters
    assert counts == expected_counts


def test_dask_runner_arguments_pass_the_strict_check(tmp_path):
    """``--dask_client_address`` is a Beam argument once the dask extra is installed; a typo
    in it is still refused as an unknown argument (exit 2, one line)."""
    from insights_link.pipeline.beam_args import unknown_beam_arguments

    assert unknown_beam_arguments(["--dask_client_address", "tcp://127.0.0.1:1"]) == []
    typo = export_run(
        SAMPLE, tmp_path / "lake", "run-typo", "--runner", "DaskRunner", "--dask_client_adress", "tcp://x:1"
    )
    assert typo.returncode == 2
    assert "--dask_client_adress" in typo.stderr and "Traceback" not in typo.stderr


def test_the_same_dask_run_twice_commits_once(tmp_path, dask_cluster):
    """Idempotent on the DaskRunner too: the second run of the same inputs skips them all
    (reported as skipped) and the lake holds exactly the first run's rows and dead letters."""
    args = ("--runner", "DaskRunner", "--dask_client_address", dask_cluster, "--chunk-mb", "0.002")
    first = export_run(SAMPLE, tmp_path / "lake", "run-one", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    rows, letters, _ = _outcome(tmp_path / "lake")
    second = export_run(SAMPLE, tmp_path / "lake", "run-two", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    ds = tmp_path / "lake" / "EngagementInsights"
    assert read_activities(ds).to_pylist() == rows and dead_letters(ds) == letters
    (again,) = [r for r in run_reports(ds) if r["run_id"] == "run-two"]
    assert again["inputs"] and {i["status"] for i in again["inputs"]} == {"skipped"}


def test_a_dead_scheduler_is_one_line_and_exit_1(tmp_path):
    """No scheduler at the address: after --dask_connection_timeout, one line naming the
    address, exit 1 (the run failed, nothing committed), no traceback and no data written."""
    address = f"tcp://{HOST}:{_free_port()}"  # nothing listens there
    dead = export_run(
        SAMPLE,
        tmp_path / "lake",
        "run-dead",
        "--runner",
        "DaskRunner",
        "--dask_client_address",
        address,
        "--dask_connection_timeout",
        "1",
    )
    assert dead.returncode == 1
    last = dead.stderr.strip().splitlines()[-1]
    assert "nothing committed" in last and address in last, dead.stderr[-2000:]
    assert "Traceback" not in dead.stderr
    assert not list((tmp_path / "lake" / "EngagementInsights").glob("*/*.parquet"))
