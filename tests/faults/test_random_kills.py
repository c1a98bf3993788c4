"""Randomized kill-and-rerun trials: a seeded sequence of runs over overlapping inputs, each run
possibly SIGKILLed at a random step of its work (recovery of an earlier victim included), then
every input exported once more. The end state must equal a clean lake built without kills:
the same rows, the same dead letters, the manifest listing exactly the Parquet files present.

A few trials run in the default suite; ``-m faults_long`` runs many more.
"""

from __future__ import annotations

import random
import signal

import pytest
from lake_checks import committed_ids

from conftest import COMMIT_STEPS, dead_letters, event, read_activities, run_cli, write_jsonl

STEPS = [*COMMIT_STEPS, "recovery_before_delete"]
DAYS = ["2024-05-01T23:59:00Z", "2024-05-02T00:01:00Z", "2024-05-03T12:00:00Z"]


def _inputs(tmp_path, rng: random.Random):
    """Three files sharing some ids (identical events, so which copy wins doesn't matter)."""
    pool = {f"id{i}": event(f"id{i}", ts=DAYS[i % 3], user=f"u{i % 5}") for i in range(60)}
    files = []
    for n in range(3):
        ids = rng.sample(sorted(pool), 25)
        lines = [pool[i] for i in ids] + rng.sample(["junk", "{}", '{"Signal": 1}'], 2)
        files.append(write_jsonl(tmp_path / "in" / f"f{n}.jsonl", lines))
    return files


def _reader_state(lake):
    ds = lake / "EngagementInsights"
    rows = read_activities(ds).drop_columns(["LastUpdated"]).to_pylist()
    letters = sorted((d["reason"], d["source"], d["position"]) for d in dead_letters(ds))
    return rows, letters


def _trial(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    files = _inputs(tmp_path, rng)
    clean = tmp_path / "clean"
    for f in files:
        assert (
            run_cli("export", "--input", str(f), "--output", str(clean), "--block-records", "7").returncode
            == 0
        )

    lake = tmp_path / "lake"
    plan = [(rng.choice(files), rng.choice(STEPS) if rng.random() < 0.7 else None) for _ in range(4)]
    for source, step in plan:
        env = {"INSIGHTS_LINK_KILL_AT": step} if step else {}
        run = run_cli(
            "export", "--input", str(source), "--output", str(lake), "--block-records", "7", env=env
        )
        assert run.returncode in (0, -signal.SIGKILL), run.stderr
        committed_ids(str(lake), settled=False)  # whatever the moment, readers see a sound data source
    for f in files:
        run = run_cli("export", "--input", str(f), "--output", str(lake), "--block-records", "7")
        assert run.returncode == 0, f"seed {seed}, plan {plan}: {run.stderr}"
    ids = committed_ids(str(lake))
    assert ids == sorted(set(ids)), f"seed {seed}: an id twice"
    assert _reader_state(lake) == _reader_state(clean), f"seed {seed}, plan {plan}"


@pytest.mark.parametrize("seed", range(3))
def test_random_kill_trials_converge(seed, tmp_path):
    _trial(tmp_path, seed)


@pytest.mark.faults_long
@pytest.mark.parametrize("seed", range(3, 43))
def test_random_kill_trials_converge_long(seed, tmp_path):
    _trial(tmp_path, seed)
