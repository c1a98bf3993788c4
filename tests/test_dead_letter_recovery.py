"""Dead letters as a working set, and replay (issue 12): ``dead-letters`` counts open and resolved
letters by reason and exports the open ones as JSON lines with a sidecar of keys; a script fixes
some; ``export --replay`` writes the fixed records once and marks their letters resolved, leaves
the rest open with their new reason, never replays a resolved letter, deletes nothing under
``_deadletter/``, and converges after a kill at any commit step. Through the real CLI, both table
formats."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import fastavro
import pytest

from conftest import REPO, event, run_cli, signal_avro_schema, write_jsonl
from faults.lake_checks import committed_ids

DS = "EngagementInsights"
T1, T2 = "2026-11-28T12:00:00Z", "2026-11-29T12:00:00Z"


def _events(tmp_path: Path) -> Path:
    """Two good events and six bad ones: relative URIs, a misspelt field, a line that isn't JSON,
    and one (dup) whose fix makes it a duplicate of the committed event ``a``."""
    return write_jsonl(
        tmp_path / "in" / "events.jsonl",
        [
            event("a"),
            event("b", uri="/rel/b"),
            event("c", uri="/rel/c"),
            event("d", action=None, Acton={"Name": "Click"}),
            event("e", action=None, Acton={"Name": "Click"}),
            "not json at all",
            event("f"),
            event("a", uri="/rel/dup"),
        ],
    )


#: The fixer, a script run on the exported file in place: b's URI and d's field fixed, dup fixed
#: (it is event a again), c's URI fixed but its timestamp broken (a new reason), e and the
#: garbage line left as they are. It keeps every line where it is.
FIXER = """
import sys
path = sys.argv[1]
out = []
for line in open(path, encoding="utf-8").read().splitlines():
    line = line.replace('"/rel/b"', '"https://contoso.com/b"').replace('"/rel/dup"', '"https://contoso.com/p"')
    if '"Id": "d"' in line:
        line = line.replace('"Acton"', '"Action"')
    if '"/rel/c"' in line:
        line = line.replace('"/rel/c"', '"https://contoso.com/c"').replace("2024-05-01T10:00:00Z", "not a time")
    out.append(line)
open(path, "w", encoding="utf-8").write("\\n".join(out) + "\\n")
"""


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = run_cli(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def listing(lake: str, *args: str) -> dict:
    return json.loads(cli("dead-letters", "--lake", lake, "--json", *args).stdout.strip().splitlines()[-1])


def by_reason(report: dict, part: str = "total") -> dict:
    return {r: (c["open"], c["resolved"]) for r, c in report[part]["by_reason"].items()}


def first_export(tmp_path: Path, lake: str, fmt: str) -> None:
    args = ["--input", str(_events(tmp_path)), "--output", lake, "--run-id", "r1", "--run-time", T1]
    cli("export", *args, "--table-format", fmt)


def replay(
    fixed: Path, lake: str, fmt: str, run_id: str, *extra: str, env=None
) -> subprocess.CompletedProcess:
    args = ["export", "--input", str(fixed), "--output", lake, "--replay", "--run-id", run_id]
    return run_cli(*args, "--table-format", fmt, "--run-time", T2, *extra, env=env)


def ledger(lake_dir: Path) -> list[dict]:
    out = []
    for f in sorted((lake_dir / DS / "_deadletter" / "_resolutions").glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def deadletter_files(lake_dir: Path) -> dict[str, bytes]:
    root = lake_dir / DS / "_deadletter"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def export_and_fix(tmp_path: Path, lake: str) -> Path:
    """``dead-letters --export`` then the fixer script as a separate process (as a user runs it)."""
    exported = tmp_path / "work" / "letters.jsonl"
    exported.parent.mkdir(exist_ok=True)
    report = listing(lake, "--export", str(exported))
    assert report["export"]["records"] == 6
    subprocess.run([sys.executable, "-c", FIXER, str(exported)], check=True, cwd=REPO)
    return exported


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_round_trip_export_fix_replay(tmp_path, fmt):
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    first_export(tmp_path, lake, fmt)
    before = listing(lake)
    assert (before["total"]["open"], before["total"]["resolved"]) == (6, 0)
    assert by_reason(before) == {"malformed": (1, 0), "missing_field": (2, 0), "invalid_uri": (3, 0)}

    fixed = export_and_fix(tmp_path, lake)
    keys = [json.loads(line) for line in Path(str(fixed) + ".keys.jsonl").read_text().splitlines()]
    assert [k["line"] for k in keys] == [1, 2, 3, 4, 5, 6]
    assert {k["reason"] for k in keys} == {"invalid_uri", "missing_field", "malformed"}
    assert fixed.read_text().splitlines()[4] == "not json at all"  # JSON lines exactly as received
    letters_before = deadletter_files(lake_dir)

    proc = replay(fixed, lake, fmt, "rp1")
    assert proc.returncode == 0, proc.stderr
    assert "3 resolved, 3 still open" in proc.stdout
    # the fixed records are written once; the duplicate of committed event a is not written again
    assert committed_ids(lake) == ["a", "b", "d", "f"]
    outcomes = {(r["dead_letter"], r["status"], r["outcome"], r.get("reason")) for r in ledger(lake_dir)}
    by_line = {k["line"]: k["dead_letter"] for k in keys}
    assert outcomes == {
        (by_line[1], "resolved", "written", None),  # b
        (by_line[2], "open", "rejected_again", "invalid_timestamp"),  # c: open with the new reason
        (by_line[3], "resolved", "written", None),  # d
        (by_line[4], "open", "rejected_again", "missing_field"),  # e: left broken
        (by_line[5], "open", "rejected_again", "malformed"),
        (by_line[6], "resolved", "duplicate", None),  # dup: a duplicate of a committed row
    }
    after = listing(lake)
    assert (after["total"]["open"], after["total"]["resolved"]) == (3, 3)
    assert by_reason(after) == {
        "malformed": (1, 0),
        "missing_field": (1, 1),
        "invalid_timestamp": (1, 0),
        "invalid_uri": (0, 2),
    }
    assert {e["status"] for e in after["examples"]} == {"open"}
    # nothing under _deadletter was deleted or changed; the replay added its letters and its ledger
    now = deadletter_files(lake_dir)
    assert {k: now[k] for k in letters_before} == letters_before
    assert set(now) - set(letters_before) == {"rp1.jsonl.gz", "_resolutions/rp1.jsonl"}
    assert not list((lake_dir / DS / "_state" / "replays").glob("*"))
    assert not any((lake_dir / DS / "_staging").rglob("*"))
    text = cli("dead-letters", "--lake", lake).stdout
    assert "3 open, 3 resolved" in text and "invalid_timestamp" in text

    # replaying again writes nothing and resolves nothing new: the file is skipped as committed...
    again = replay(fixed, lake, fmt, "rp2")
    assert again.returncode == 0, again.stderr
    assert "activities written:  0" in again.stdout
    # ...and with --reprocess the records of resolved letters are ignored, the others stay open
    forced = replay(fixed, lake, fmt, "rp3", "--reprocess")
    assert forced.returncode == 0, forced.stderr
    report = json.loads((lake_dir / DS / "_runs" / "rp3.json").read_text())
    assert report["activities_written"] == 0 and report["replay"]["ignored_resolved"] == 3
    assert committed_ids(lake) == ["a", "b", "d", "f"]
    assert not [r for r in ledger(lake_dir) if r["replay_run"] != "rp1" and r["status"] == "resolved"]
    final = listing(lake)
    assert (final["total"]["open"], final["total"]["resolved"]) == (3, 3)
    assert {k: deadletter_files(lake_dir)[k] for k in now} == now

    # the next export takes the open ones only, c as last replayed (its payload the fixer's attempt)
    second = tmp_path / "work" / "second.jsonl"
    assert listing(lake, "--export", str(second))["export"]["records"] == 3
    lines = second.read_text().splitlines()
    assert any("not a time" in line and '"c"' in line for line in lines)
    every = tmp_path / "work" / "every.jsonl"
    assert listing(lake, "--export", str(every), "--all")["export"]["records"] == 6


@pytest.mark.parametrize(
    "fmt,step",
    [
        ("cdm", "before_manifest"),
        ("cdm", "after_manifest"),
        ("cdm", "after_report"),
        ("cdm", "replay_before_resolutions"),
        ("delta", "after_first_move"),
        ("delta", "after_manifest"),
        ("delta", "replay_before_resolutions"),
    ],
)
def test_killed_replay_then_rerun_converges(tmp_path, fmt, step):
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    first_export(tmp_path, lake, fmt)
    fixed = export_and_fix(tmp_path, lake)
    letters_before = deadletter_files(lake_dir)
    killed = replay(fixed, lake, fmt, "k1", env={"INSIGHTS_LINK_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL
    rerun = replay(fixed, lake, fmt, "k2")
    assert rerun.returncode == 0, rerun.stderr
    assert committed_ids(lake) == ["a", "b", "d", "f"]
    final = listing(lake)
    assert (final["total"]["open"], final["total"]["resolved"]) == (3, 3)
    assert by_reason(final)["invalid_timestamp"] == (1, 0)
    resolved_by = {r["replay_run"] for r in ledger(lake_dir) if r["status"] == "resolved"}
    assert len(resolved_by) == 1  # one replay resolved them: the killed one if it had committed
    assert {k: deadletter_files(lake_dir)[k] for k in letters_before} == letters_before
    assert not list((lake_dir / DS / "_state" / "replays").glob("*"))
    assert not any((lake_dir / DS / "_staging").rglob("*"))


def test_embedded_keys_survive_a_fixer_that_reorders_and_drops_lines(tmp_path):
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    first_export(tmp_path, lake, "cdm")
    exported = tmp_path / "letters.jsonl"
    listing(lake, "--export", str(exported), "--embed-key")
    lines = exported.read_text().splitlines()
    assert all(
        line.startswith('{"_insights_link_dead_letter":"') for line in lines if line != "not json at all"
    )
    # the fixer renames the misspelt field in every record that has it, drops the line that is
    # not JSON and reverses the order: line numbers mean nothing now, the embedded keys do
    fixed = tmp_path / "fixed.jsonl"
    records = []
    for line in exported.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "Acton" in record["Signal"]:
            record["Signal"]["Action"] = record["Signal"].pop("Acton")
        records.append(json.dumps(record))
    fixed.write_text("\n".join(reversed(records)) + "\n")
    proc = replay(fixed, lake, "cdm", "rp1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((lake_dir / DS / "_runs" / "rp1.json").read_text())
    assert report["replay"]["embedded_keys"] == 5 and report["replay"]["tied"] == 5
    assert committed_ids(lake) == ["a", "d", "e", "f"]
    final = listing(lake)
    assert by_reason(final) == {"malformed": (1, 0), "missing_field": (0, 2), "invalid_uri": (3, 0)}
    # the embedded key was stripped before validation: the new dead letters don't carry it
    new = gzip.decompress((lake_dir / DS / "_deadletter" / "rp1.jsonl.gz").read_bytes()).decode()
    assert "_insights_link_dead_letter" not in new and new.count("\n") == 3


def test_sed_fix_in_place_and_csv_and_avro_letters_come_back_as_json_lines(tmp_path):
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    csv_in = tmp_path / "in" / "events.csv"
    csv_in.parent.mkdir(parents=True)
    csv_in.write_text(
        "Signal.Export.Id,Signal.User.Id,Signal.Timestamp,Signal.View.Uri,Signal.Action.Name\n"
        "c1,u1,2024-05-01T10:00:00Z,/rel/csv,Click\n"
        "c2,u1,2024-05-01T10:00:00Z,https://contoso.com/ok,Click\n"
    )
    avro_in = tmp_path / "in" / "events.avro"
    bad = event("v1", uri="/rel/avro")
    with open(avro_in, "wb") as f:
        fastavro.writer(f, signal_avro_schema(), [bad, event("v2")])
    cli("export", "--input", str(tmp_path / "in"), "--output", lake, "--run-id", "r1")
    exported = tmp_path / "letters.jsonl"
    listing(lake, "--export", str(exported))
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    csv_record = {
        "Signal.Export.Id": "c1",
        "Signal.User.Id": "u1",
        "Signal.Timestamp": "2024-05-01T10:00:00Z",
        "Signal.View.Uri": "/rel/csv",
        "Signal.Action.Name": "Click",
    }
    assert csv_record in records
    assert any(r.get("Signal", {}).get("Export") == {"Id": "v1"} for r in records)
    subprocess.run(["sed", "-i", "s#/rel/#https://contoso.com/#", str(exported)], check=True)
    proc = replay(exported, lake, "cdm", "rp1")
    assert proc.returncode == 0, proc.stderr
    assert committed_ids(lake) == ["c1", "c2", "v1", "v2"]
    final = listing(lake)
    assert (final["total"]["open"], final["total"]["resolved"]) == (0, 2)


def test_filters_reason_run_id_since(tmp_path):
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    first_export(tmp_path, lake, "cdm")
    later = write_jsonl(tmp_path / "in2" / "later.jsonl", [event("z", uri="/rel/z"), "{broken"])
    cli("export", "--input", str(later), "--output", lake, "--run-id", "r2", "--run-time", T2)
    assert by_reason(listing(lake)) == {"malformed": (2, 0), "missing_field": (2, 0), "invalid_uri": (4, 0)}
    only_uri = listing(lake, "--reason", "invalid_uri")
    assert by_reason(only_uri, "selected") == {"invalid_uri": (4, 0)}
    assert {e["reason"] for e in only_uri["examples"]} == {"invalid_uri"}
    assert by_reason(listing(lake, "--run-id", "r2"), "selected") == {
        "malformed": (1, 0),
        "invalid_uri": (1, 0),
    }
    assert by_reason(listing(lake, "--since", "2026-11-29"), "selected") == {
        "malformed": (1, 0),
        "invalid_uri": (1, 0),
    }
    assert listing(lake, "--since", "2026-11-30")["selected"]["open"] == 0
    out = tmp_path / "uri.jsonl"
    both = listing(
        lake, "--reason", "invalid_uri", "--reason", "malformed", "--run-id", "r1", "--export", str(out)
    )
    assert both["export"]["records"] == 4
    sidecar = [json.loads(x) for x in Path(str(out) + ".keys.jsonl").read_text().splitlines()]
    assert {k["run_id"] for k in sidecar} == {"r1"} and {k["reason"] for k in sidecar} == {
        "invalid_uri",
        "malformed",
    }


def test_bad_arguments_exit_2_naming_the_value(tmp_path):
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    first_export(tmp_path, lake, "cdm")

    def usage(*args: str, names: str) -> None:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert names in proc.stderr, (names, proc.stderr)

    usage("dead-letters", "--lake", lake, "--reason", "nope", names="'nope'")
    usage("dead-letters", "--lake", lake, "--run-id", "bad id!", names="'bad id!'")
    usage("dead-letters", "--lake", lake, "--run-id", "r9", names="'r9'")
    usage("dead-letters", "--lake", lake, "--since", "yesterday", names="'yesterday'")
    usage("dead-letters", "--lake", lake, "--data-source", "Nope", names="'Nope'")
    usage("dead-letters", "--lake", lake, "--embed-key", names="--export")
    existing = write_jsonl(tmp_path / "taken.jsonl", ["x"])
    usage("dead-letters", "--lake", lake, "--export", str(existing), names=str(existing))
    usage("dead-letters", "--lake", lake, "--export", str(tmp_path / "no" / "x.jsonl"), names="x.jsonl")
    # replay: a file without a sidecar or embedded keys, a fixer that deleted a line, a CSV file
    exported = tmp_path / "letters.jsonl"
    listing(lake, "--export", str(exported))
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(exported.read_bytes())
    usage("export", "--input", str(bare), "--output", lake, "--replay", names=str(bare))
    lines = exported.read_text().splitlines()
    exported.write_text("\n".join(lines[1:]) + "\n")
    usage("export", "--input", str(exported), "--output", lake, "--replay", names="line")
    csv_file = tmp_path / "x.csv"
    csv_file.write_text("Signal.Export.Id\nx\n")
    usage("export", "--input", str(csv_file), "--output", lake, "--replay", names="x.csv")
    # none of these wrote a run
    assert sorted(p.name for p in (lake_dir / DS / "_runs").glob("*.json")) == ["r1.json"]
    assert not any((lake_dir / DS / "_staging").rglob("*"))


def test_dry_run_replay_writes_nothing(tmp_path):
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    first_export(tmp_path, lake, "cdm")
    fixed = export_and_fix(tmp_path, lake)
    before = {str(p): p.read_bytes() for p in lake_dir.rglob("*") if p.is_file()}
    proc = replay(fixed, lake, "cdm", "dry", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "activities to write: 2" in proc.stdout  # b and d; dup is a duplicate
    assert {str(p): p.read_bytes() for p in lake_dir.rglob("*") if p.is_file()} == before


def test_core_letters_is_pure_and_ids_survive_forget(tmp_path):
    """The core module imports no storage, Beam or CLI; a forget that rewrites a dead-letter file
    keeps the other letters' ids (and so their resolutions)."""
    code = (
        "import sys, insights_link.core.letters\n"
        "print(sorted(m for m in sys.modules if m.startswith(('apache_beam', 'azure', "
        "'insights_link.storage', 'insights_link.lake', 'insights_link.pipeline', 'insights_link.cli'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]"
    lake_dir = tmp_path / "lake"
    lake = str(lake_dir)
    events = write_jsonl(
        tmp_path / "in" / "e.jsonl",
        [event("x", uri="/rel/x", user="gone"), event("y", uri="/rel/y", user="stays"), event("w")],
    )
    cli("export", "--input", str(events), "--output", lake, "--run-id", "r1")
    ids_before = {e["dead_letter"] for e in listing(lake)["examples"]}
    cli("forget", "--lake", lake, "--customer-id", "gone", "--run-id", "f1")
    ids_after = {e["dead_letter"] for e in listing(lake)["examples"]}
    assert len(ids_before) == 2 and len(ids_after) == 1 and ids_after < ids_before
