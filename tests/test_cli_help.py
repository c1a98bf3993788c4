"""A CLI that explains itself: help and version, one options spec behind the parser, the job-file
schema, the help text and the README, and every configuration mistake an exit 2 that names it
before anything is written."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO, event, run_cli, run_killed, write_jsonl
from insights_link.pipeline.beam_args import unknown_beam_arguments
from insights_link.pipeline.jobfile import JobFileError, load_job
from insights_link.pipeline.spec import OPTIONS, RUN_OPTIONS, markdown_table


def test_top_level_help_lists_the_commands():
    run = run_cli("--help")
    assert run.returncode == 0
    assert "commands:" in run.stdout and "export" in run.stdout and "help" in run.stdout
    bare = run_cli()
    assert bare.returncode == 2 and "commands:" in bare.stderr


def test_version():
    run = run_cli("--version")
    assert run.returncode == 0
    assert re.match(r"insights-link \d+\.\d+\.\d+ \(apache-beam ", run.stdout)


@pytest.mark.parametrize("args", [("export", "--help"), ("export", "-h"), ("help", "export")])
def test_export_help_names_every_option_default_job_key_exit_codes_and_examples(args):
    run = run_cli(*args)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())  # argparse wraps lines
    for o in OPTIONS:
        assert o.flag in text
        if o.job:
            assert f"job key {'[[activity]] ' if o.scope == 'activity' else ''}{o.key}" in text, o.flag
        if o.default_text():
            assert f"default {o.default_text()}" in text, o.flag
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130, 143"):
        assert code in run.stdout.split("exit codes:")[1]
    assert "examples:" in run.stdout and "--job sample_data/job.toml" in run.stdout
    assert "apache_beam.options.pipeline_options" in run.stdout
    assert "WARNING" not in run.stderr


def test_help_is_the_same_whichever_way_it_is_asked():
    outputs = {run_cli(*args).stdout for args in [("export", "--help"), ("export", "-h"), ("help", "export")]}
    assert len(outputs) == 1


def test_readme_option_table_is_generated_from_the_spec():
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, "README's option table is stale: paste pipeline.spec.markdown_table()"


def test_every_run_option_has_a_job_key_and_the_job_file_takes_it(tmp_path):
    samples = {"str": "x", "int": 3, "float": 0.5, "bool": True, "list": ["a"], "time": "2024-05-01"}
    special = {
        "output": "lake",
        "data_source": "Ds",
        "input_format": "csv",
        "layout": "incremental",
        "table_format": "cdm",
        "run_id": "r1",
        "log_format": "json",
    }
    lines = []
    for o in RUN_OPTIONS:
        value = special.get(o.key, samples[o.kind])
        lines.append(f"{o.key} = {value!r}".replace("True", "true").replace("'", '"'))
    lines += ["[[activity]]", 'name = "T"', 'inputs = ["in"]']
    job = tmp_path / "job.toml"
    job.write_text("\n".join(lines) + "\n")
    parsed = load_job(str(job))
    assert set(parsed.settings) == {o.dest for o in RUN_OPTIONS}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_rows_per_file", "0"),
        ("max_rows_per_file", "-5"),
        ("block_records", "0"),
        ("lock_wait", "-1"),
        ("max_rejected_ratio", "1.5"),
        ("data_source", '""'),
        ("layout", '"sideways"'),
        ("since", '"yesterday"'),
        ("max_rows_per_file", '"many"'),
        ("reprocess", '"yes"'),
        ("grant_read", '[""]'),
        ("nonsense", "1"),
        ("lock_wait", "nan"),
        ("max_rows_per_file", "1e300"),
        ("grant_read", "[]"),
    ],
)
def test_bad_job_file_values_are_usage_errors_naming_the_key(tmp_path, key, value):
    job = tmp_path / "job.toml"
    job.write_text(f'output = "lake"\n{key} = {value}\n[[activity]]\nname = "T"\ninputs = ["in"]\n')
    with pytest.raises(JobFileError, match=key):
        load_job(str(job))


def test_strict_beam_arguments_are_pinned():
    """The one place that decides which arguments Beam knows."""
    assert unknown_beam_arguments([]) == []
    assert (
        unknown_beam_arguments(
            [
                "--runner",
                "DirectRunner",
                "--direct_num_workers=2",
                "--direct_running_mode",
                "multi_processing",
                "--temp_location=/tmp",
            ]
        )
        == []
    )
    assert unknown_beam_arguments(["--ouptut", "x", "--runner=DirectRunner"]) == ["--ouptut", "x"]
    assert unknown_beam_arguments(["stray.jsonl"]) == ["stray.jsonl"]


@pytest.fixture
def source(tmp_path):
    return write_jsonl(tmp_path / "in" / "e.jsonl", [event("a")])


NO_CREDENTIALS = {
    "AZURE_STORAGE_CONNECTION_STRING": "",
    "AZURE_STORAGE_KEY": "",
    "AZURE_STORAGE_SAS_TOKEN": "",
    "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token",
    "IDENTITY_HEADER": "none",
    "MSI_ENDPOINT": "",
    "AZURE_CLIENT_ID": "",
    "AZURE_TENANT_ID": "",
    "AZURE_CLIENT_SECRET": "",
}


@pytest.mark.parametrize(
    ("extra", "named", "env"),
    [
        (["--runner", "NoSuchRunner"], "NoSuchRunner", {}),
        (["--runner", "DataflowRunner"], "DataflowRunner", {}),
        (["--output", "gs://bucket/lake"], "gs://", {}),
        (["--input", "s3://bucket/in.jsonl"], "s3://", {}),
        (["--property", "Session.Id"], "Session.Id", {}),
        (["--max-rows-per-file", "0"], "--max-rows-per-file", {}),
        (["--lock-wait", "-3"], "--lock-wait", {}),
        (["--since", "2024-13-01"], "--since", {}),
        (["--data-source", ""], "--data-source", {}),
        (["--activity-name", "A" * 300], "--activity-name", {}),
        (["--run-id", "r" * 300], "--run-id", {}),
        (["--run-id", "a/b"], "--run-id", {}),
        (["--max-rows-per-file", "9" * 30], "--max-rows-per-file", {}),
        (["--runner=os.system"], "os.system", {}),
        (["--direct_num_workers=-3"], "direct_num_workers", {}),
        (["--runner=PortableRunner"], "job_endpoint", {}),
        (["--job", ""], "--job", {}),
        (["--property", 'Signal.a"b'], "--property", {}),
        (
            ["--output", "abfss://lake@devstoreaccount1.dfs.core.windows.net/x"],
            "credential settings",
            NO_CREDENTIALS,
        ),
    ],
)
def test_configuration_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path, source, extra, named, env):
    lake = tmp_path / "lake"
    args = ["export", "--input", str(source), "--output", str(lake), *extra]
    run = run_cli(*args, env={**env, "HOME": str(tmp_path)} if env else None, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("insights-link: error:") and named in lines[0]
    assert not lake.exists()


def test_plain_dates_are_accepted_for_since_and_until(tmp_path):
    src = write_jsonl(
        tmp_path / "in" / "e.jsonl",
        [event("a", ts="2024-05-01T10:00:00Z"), event("b", ts="2024-05-02T10:00:00Z")],
    )
    run = run_cli(
        "export",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "lake"),
        "--since",
        "2024-05-02",
        "--until",
        "2024-05-03",
    )
    assert run.returncode == 0, run.stderr
    assert "activities written:  1" in run.stdout


def test_progress_bar_on_a_pseudo_terminal(tmp_path):
    """On a terminal the run draws a live progress bar (tqdm) with files done of total."""
    import pty
    import subprocess

    src = write_jsonl(tmp_path / "in" / "e.jsonl", [event(f"e{i}") for i in range(50)])
    write_jsonl(tmp_path / "in" / "f.jsonl", [event(f"f{i}") for i in range(50)])
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "insights_link.cli",
            "export",
            "--input",
            str(src.parent),
            "--output",
            str(tmp_path / "lake"),
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
        env=dict(os.environ, COLUMNS="120"),
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen
    assert "files 2/2" in screen and "records=100" in screen, screen


def test_quiet_prints_only_the_summary(tmp_path, source):
    run = run_cli("export", "--input", str(source), "--output", str(tmp_path / "lake"), "--quiet")
    assert run.returncode == 0
    assert run.stderr.strip() == ""
    assert "activities written:  1" in run.stdout


def test_no_path_outside_the_repository_in_readme():
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme and "/work/" not in readme
    assert Path(REPO / "docs").is_dir()


def test_no_azure_credentials_at_all_is_one_line_exit_2_without_retries(tmp_path, source):
    """No credential anywhere (managed identity probed on a closed loopback port, no CLI login):
    one line that says what to set, no retry warnings, nothing written."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MSI_", "IDENTITY_"))}
    env.update(
        {
            "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token",
            "IDENTITY_HEADER": "none",
            "HOME": str(tmp_path),
        }
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "insights_link.cli",
            "export",
            "--input",
            str(source),
            "--output",
            "abfss://lake@devstoreaccount1.dfs.core.windows.net/x",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "no Azure credentials" in lines[0], run.stderr
    assert "AZURE_STORAGE_CONNECTION_STRING" in lines[0]


def test_empty_event_names_list_in_a_job_is_a_usage_error(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('output = "lake"\n[[activity]]\nname = "T"\ninputs = ["in"]\nevent_names = []\n')
    with pytest.raises(JobFileError, match="event_names"):
        load_job(str(job))


def test_job_file_output_settings_count_like_flags(tmp_path, source):
    """log_format, quiet and a TOML date for since, set in the job file, take effect."""
    job = tmp_path / "job.toml"
    job.write_text(
        f'output = "{tmp_path / "lake"}"\nlog_format = "json"\nquiet = true\nsince = 2024-05-01\n'
        f'[[activity]]\nname = "WebLog"\ninputs = ["{source}"]\n'
    )
    run = run_cli("export", "--job", str(job))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["status"] == "committed" and report["activities_written"] == 1
    assert "INFO" not in run.stderr


def test_conditional_write_waits_only_so_long_for_a_frozen_writer(tmp_path, monkeypatch):
    """A process frozen in the middle of a commit holds the folder's commit lock: the next
    writer gives up after a bounded wait instead of hanging."""
    import fcntl

    from insights_link.storage import StorageError, local

    monkeypatch.setattr(local, "COMMIT_LOCK_WAIT_SECONDS", 0.3)
    storage = local.LocalStorage(str(tmp_path))
    storage.write_if("m.json", b"1", None)
    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(StorageError, match="commit lock"):
            storage.write_if("m.json", b"2", storage.read_versioned("m.json")[1])
    finally:
        os.close(fd)
    assert storage.read_versioned("m.json")[0] == b"1"


def test_a_run_id_left_by_a_dead_run_is_refused_before_anything_is_written(tmp_path, source):
    import signal as signals

    lake = tmp_path / "lake"
    ds = lake / "EngagementInsights"
    killed = run_killed(
        "after_staged_file", "export", "--input", str(source), "--output", str(lake), "--run-id", "dead2"
    )
    assert killed.returncode == -signals.SIGKILL
    for extra in ([], ["--dry-run"]):
        again = run_cli("export", "--input", str(source), "--output", str(lake), "--run-id", "dead2", *extra)
        assert again.returncode == 2 and "already used" in again.stderr, again.stderr
        assert not (ds / "_runs").exists() and (ds / "_staging" / "dead2").exists()
    assert run_cli("export", "--input", str(source), "--output", str(lake)).returncode == 0
