"""Issue #9: say what did nothing (a --property no record held, an --event-name that matched
nothing, files of unsupported types, an empty input folder) and --dry-run, which reads and
checks everything and writes nothing to the output. Real CLI runs; results read from the lake."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import event, read_activities, run_cli, run_reports, write_jsonl
from insights_link.core.batch import NAMES_KEPT, ActivitySpec, process_block, process_block_reference
from insights_link.core.blocks import RawBlock
from insights_link.pipeline.graph import NAMES_SEEN, PRESENT, MergeOutcomes
from insights_link.storage.resolve import InputError, resolve_inputs


def _spec(properties=(), event_names=None):
    return ActivitySpec(
        "WebLog",
        "WebLog",
        tuple(properties),
        "r1",
        datetime(2026, 1, 1, tzinfo=UTC),
        tuple(event_names) if event_names else None,
    )


def _jsonl_block(records):
    lines = [(r if isinstance(r, str) else json.dumps(r)).encode() for r in records]
    return RawBlock("mem.jsonl", 0, 0, "jsonl", list(range(1, len(lines) + 1)), lines, activities=("WebLog",))


def _balanced(report):
    for name, c in report["activities"].items():
        accounted = (
            c["activities_written"]
            + c["duplicates_dropped"]
            + sum(c["rejected"].values())
            + c["filtered_out"]
        )
        assert accounted == c["records_read"], name


def _export(*args):
    return run_cli("export", *args)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder below ``folder``: relative path -> bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


# -- 1 and 2: presence of properties and event names, counted on both paths ------------------------


def test_fast_and_reference_paths_count_present_properties_and_names_alike():
    records = [
        event("a", Session={"Id": "s1"}),  # plainly valid: the fast path
        event("b", Session={"Id": 7}),  # a number: the reference path
        event("c", Session={"Id": None}),  # null: not present
        event("d", uri="not a url", Session={"Id": "s2"}),  # rejected, still a record holding it
        event("e", name="ProductView"),
        '{"broken"',
    ]
    spec = _spec(["Signal.Session.Id", "Signal.Sesion.Id"], ["productview", "EmailPromoClick"])
    fast, reference = (
        process_block(_jsonl_block(records), spec),
        process_block_reference(_jsonl_block(records), spec),
    )
    assert fast.present == reference.present == {"Signal.Session.Id": 3, "Signal.Sesion.Id": 0}
    assert fast.names == reference.names == {"EmailPromoClick": 4, "ProductView": 1}


def test_signal_name_counts_stay_bounded_and_keep_the_filters_names():
    records = [event(str(i), name=f"N{i:03d}") for i in range(NAMES_KEPT * 3)] + [event("x", name="Rare")]
    spec = _spec(event_names=["Rare", "Never"])
    result = process_block(_jsonl_block(records), spec)
    assert len(result.names) <= NAMES_KEPT + 2 and result.names["Rare"] == 1
    merge = MergeOutcomes({"WebLog": ("Rare", "Never")})
    acc = merge.create_accumulator()
    for start in range(0, 300, 100):  # partial outcomes, as ValidateBlockFn emits them
        part = {f"M{i:03d}": 1 for i in range(start, start + 100)}
        acc = merge.add_input(acc, {"tables": {"WebLog": {NAMES_SEEN: part, PRESENT: {"Signal.X": 1}}}})
    acc = merge.add_input(acc, {"tables": {"WebLog": {NAMES_SEEN: {"Rare": 2}}}})
    out = merge.extract_output(acc)["tables"]["WebLog"]
    assert len(out[NAMES_SEEN]) <= NAMES_KEPT + 2 and out[NAMES_SEEN]["Rare"] == 2
    assert out[PRESENT] == {"Signal.X": 3}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_property_no_record_holds_and_an_event_name_that_matched_nothing_are_warned(tmp_path, lake, fmt):
    """JSON lines take the fast path, CSV the reference path: both count."""
    if fmt == "jsonl":
        src = write_jsonl(
            tmp_path / "in" / "e.jsonl",
            [event(f"p{i}", name="ProductView", Session={"Id": "s"}) for i in range(3)]
            + [event("m", Session={"Id": "s"})],
        )
    else:
        src = tmp_path / "in" / "e.csv"
        src.parent.mkdir(parents=True)
        header = "Signal.Export.Id,Signal.User.Id,Signal.Timestamp,Signal.View.Uri,Signal.Action.Name,Signal.Name,Signal.Session.Id"
        rows = [f"p{i},u1,2024-05-01T10:00:00Z,https://contoso.com/p,view,ProductView,s" for i in range(3)]
        rows.append("m,u1,2024-05-01T10:00:00Z,https://contoso.com/p,click,EmailPromoClick,s")
        src.write_text("\n".join([header, *rows]) + "\n")
    proc = _export(
        "--input",
        str(src),
        "--output",
        str(lake),
        "--property",
        "Signal.Sesion.Id",
        "--property",
        "Signal.Session.Id",
        "--event-name",
        "productview",
        "--event-name",
        "ProductView",
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: --property Signal.Sesion.Id was not present in any record" in proc.stdout.splitlines()
    assert (
        "warning: --event-name 'productview' matched no event (seen: 'ProductView' 3, 'EmailPromoClick' 1)"
        in proc.stdout.splitlines()
    )
    assert "Signal.Session.Id was not" not in proc.stdout and "'ProductView' matched" not in proc.stdout
    (report,) = run_reports(lake / "EngagementInsights")
    assert report["warnings"] == [
        "--property Signal.Sesion.Id was not present in any record",
        "--event-name 'productview' matched no event (seen: 'ProductView' 3, 'EmailPromoClick' 1)",
    ]
    assert report["activities_written"] == 3 and report["filtered_out"] == 1
    _balanced(report)


def test_a_run_with_nothing_to_say_has_an_empty_warnings_list_and_skipped_inputs_say_nothing(tmp_path, lake):
    src = write_jsonl(tmp_path / "e.jsonl", [event("a", Session={"Id": "s"})])
    first = _export("--input", str(src), "--output", str(lake), "--property", "Signal.Session.Id")
    assert first.returncode == 0, first.stderr
    assert "warning:" not in first.stdout
    # every input skipped as committed: nothing was read, so nothing is judged
    again = _export(
        "--input", str(src), "--output", str(lake), "--property", "Signal.Session.Id", "--event-name", "Nope"
    )
    assert again.returncode == 0, again.stderr
    assert [r["warnings"] for r in run_reports(lake / "EngagementInsights")] == [[], []]


# -- 3 and 4: unsupported files, empty inputs ----------------------------------------------------


def test_resolve_inputs_names_files_of_unsupported_types_per_input(tmp_path):
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [event("a")])
    for name in ("notes.txt", "x.parquet", "sub/y.xml", "z.tsv", ".hidden.txt", "_tmp.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    resolved = resolve_inputs([str(folder)])
    assert [Path(f.source).name for f in resolved.files] == ["a.jsonl"]
    assert resolved.warnings == [
        f"skipped 4 files of unsupported types in {folder}: notes.txt, sub/y.xml, x.parquet, ..."
    ]
    glob = resolve_inputs([f"{folder}/*.t*"])
    assert glob.files == [] and glob.warnings == [
        f"skipped 2 files of unsupported types in {folder}/*.t*: notes.txt, z.tsv"
    ]
    assert resolve_inputs([str(folder / "a.jsonl")]).warnings == []
    assert resolve_inputs([str(folder)], "jsonl").warnings == []  # --input-format reads every file


def test_unsupported_files_are_warned_in_summary_and_report(tmp_path, lake):
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [event("a")])
    (folder / "notes.txt").write_text("x")
    (folder / "x.parquet").write_bytes(b"PAR1")
    proc = _export("--input", str(folder), "--output", str(lake))
    assert proc.returncode == 0, proc.stderr
    line = f"skipped 2 files of unsupported types in {folder}: notes.txt, x.parquet"
    assert f"warning: {line}" in proc.stdout.splitlines()
    (report,) = run_reports(lake / "EngagementInsights")
    assert report["warnings"] == [line] and report["activities_written"] == 1


@pytest.mark.parametrize("pattern", ["{empty}", "{empty}/*.jsonl", "{empty}/**/*.csv"])
def test_an_existing_empty_input_is_a_run_with_nothing_to_do(tmp_path, lake, pattern):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _export("--input", pattern.format(empty=empty), "--output", str(lake))
    assert proc.returncode == 0, proc.stderr
    assert "  no input files" in proc.stdout.splitlines()
    (report,) = run_reports(lake / "EngagementInsights")
    assert report["status"] == "committed" and report["inputs"] == [] and report["warnings"] == []
    assert report["records_read"] == report["activities_written"] == sum(report["rejected"].values()) == 0
    _balanced(report)


@pytest.mark.parametrize("pattern", ["{tmp}/missing", "{tmp}/missing/*.jsonl", "{tmp}/missing.jsonl"])
def test_a_missing_input_stays_a_usage_error(tmp_path, lake, pattern):
    value = pattern.format(tmp=tmp_path)
    with pytest.raises(InputError, match="missing"):
        resolve_inputs([value])
    proc = _export("--input", value, "--output", str(lake))
    assert proc.returncode == 2, proc.stderr
    assert "missing" in proc.stderr and not lake.exists()


# -- 5. --dry-run --------------------------------------------------------------------------------


def _mixed_inputs(folder: Path) -> Path:
    long_uri = "https://" + "x" * 300 + " space"
    write_jsonl(
        folder / "a.jsonl",
        [
            event("a"),
            event("b"),
            event("a"),  # one duplicate within the run
            *[event(f"bad{i}", uri="nope") for i in range(4)],  # 4 invalid_uri: 3 examples
            event("long", uri=long_uri),  # invalid_uri, not an example
            event("nots", ts="yesterday"),
            '{"broken"',
        ],
    )
    return folder


def test_dry_run_on_a_new_output_reports_reasons_and_examples_and_creates_nothing(tmp_path, lake):
    folder = _mixed_inputs(tmp_path / "in")
    (folder / "notes.txt").write_text("x")
    proc = _export(
        "--input", str(folder), "--output", str(lake), "--dry-run", "--property", "Signal.Sesion.Id"
    )
    assert proc.returncode == 0, proc.stderr
    assert not lake.exists()
    out = proc.stdout.splitlines()
    assert out[0].endswith(": dry run, nothing was written")
    assert "  activities to write: 2" in out and "  duplicates dropped:  1" in out
    assert (
        "    invalid_uri        5" in out
        and "    invalid_timestamp  1" in out
        and "    malformed          1" in out
    )
    uri_examples = [line for line in out if line.startswith("      e.g. ") and '"nope"' in line]
    assert len(uri_examples) == 3 and all(f"{folder / 'a.jsonl'}:" in line for line in uri_examples)
    assert any(line.startswith("      e.g. ") and "yesterday" in line for line in out)
    assert any(line.startswith("      e.g. ") and '{"broken"' in line for line in out)
    assert f"warning: skipped 1 file of unsupported types in {folder}: notes.txt" in out
    assert "warning: --property Signal.Sesion.Id was not present in any record" in out


def test_dry_run_leaves_a_committed_lake_byte_for_byte_unchanged_and_a_real_run_follows(tmp_path, lake):
    first = write_jsonl(tmp_path / "in" / "first.jsonl", [event("a"), event("b")])
    committed = _export("--input", str(first), "--output", str(lake), "--run-id", "r1")
    assert committed.returncode == 0, committed.stderr
    ds = lake / "EngagementInsights"
    before = _snapshot(lake)
    assert "EngagementInsights/_lock" in before  # left by the real run; the dry run takes no lock

    # the next export: a new file repeating a committed id, with rejects; the committed file is skipped
    write_jsonl(
        tmp_path / "in" / "second.jsonl",
        [
            event("b"),
            event("c"),
            event("d", uri="nope"),
            json.dumps(event("e", uri="https://contoso.com/" + "p" * 400, action=None)),
        ],
    )
    args = ("--input", str(tmp_path / "in"), "--output", str(lake))
    dry = _export(*args, "--dry-run", "--log-format", "json", "--run-id", "r2")
    assert dry.returncode == 0, dry.stderr
    assert _snapshot(lake) == before
    would = json.loads(dry.stdout.strip().splitlines()[-1])
    assert would["status"] == "dry_run" and would["run_id"] == "r2"
    assert {Path(i["source"]).name: i["status"] for i in would["inputs"]} == {
        "first.jsonl": "skipped",
        "second.jsonl": "processed",
    }
    assert (would["records_read"], would["activities_written"], would["duplicates_dropped"]) == (4, 1, 1)
    assert would["rejected"]["invalid_uri"] == 1 and would["rejected"]["missing_field"] == 1
    assert would["warnings"] == []
    _balanced(would)
    (long_example,) = would["examples"]["missing_field"]
    assert len(long_example["payload"]) <= 200 and long_example["payload"].endswith("…")
    assert long_example["position"] == 4 and Path(long_example["source"]).name == "second.jsonl"

    real = _export(*args, "--log-format", "json", "--run-id", "r2")
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout.strip().splitlines()[-1])
    assert report["status"] == "committed"
    for key in ("records_read", "activities_written", "duplicates_dropped", "rejected", "inputs", "warnings"):
        assert report[key] == would[key], key
    assert read_activities(ds)["ActivityId"].to_pylist() == ["a", "b", "c"]
    assert [r["run_id"] for r in run_reports(ds)] == ["r1", "r2"]


def test_dry_run_that_would_exceed_the_rejected_ratio_exits_3_and_writes_nothing(tmp_path, lake):
    src = write_jsonl(tmp_path / "e.jsonl", [event("a"), event("b", uri="nope"), event("c", uri="nope")])
    proc = _export("--input", str(src), "--output", str(lake), "--dry-run", "--max-rejected-ratio", "0.5")
    assert proc.returncode == 3, proc.stderr
    assert "dry run, nothing was written" in proc.stderr and "2 of 3 records were rejected" in proc.stderr
    assert not lake.exists()
    ok = _export("--input", str(src), "--output", str(lake), "--dry-run", "--max-rejected-ratio", "0.7")
    assert ok.returncode == 0, ok.stderr
    assert not lake.exists()


@pytest.mark.azurite
def test_remote_inputs_and_a_dry_run_against_an_azure_lake(tmp_path, azure_lake):
    """Azure inputs: unsupported blobs are warned, a prefix with nothing readable is a run with
    nothing to do, a prefix with nothing at all is missing; a dry run leaves every blob as it was
    (no lease blob, no runs-index cache)."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    container = service.get_container_client(azure_lake.split("://", 1)[1].split("@", 1)[0])
    container.create_container()
    for name, data in {
        "in/a.jsonl": json.dumps(event("a")) + "\n",
        "in/notes.txt": "x",
        "only/readme.md": "x",
        "only/_tmp.jsonl": "x",
    }.items():
        container.upload_blob(name, data.encode())
    root = azure_lake.rsplit("/", 1)[0]
    resolved = resolve_inputs([f"{root}/in"])
    assert [f.key for f in resolved.files] == ["in/a.jsonl"]
    assert resolved.warnings == [f"skipped 1 file of unsupported types in {root}/in: notes.txt"]
    assert resolve_inputs([f"{root}/only"]).files == []
    assert resolve_inputs([f"{root}/only/*.jsonl"]).files == []
    for missing in (f"{root}/nope", f"{root}/nope/*.jsonl"):
        with pytest.raises(InputError, match="nope"):
            resolve_inputs([missing])

    first = _export("--input", f"{root}/in", "--output", azure_lake, "--run-id", "r1")
    assert first.returncode == 0, first.stderr

    def blobs():
        return {b.name: b.etag for b in container.list_blobs()}

    before = blobs()
    local = write_jsonl(tmp_path / "more.jsonl", [event("a"), event("b"), event("c", uri="nope")])
    dry = _export(
        "--input",
        f"{root}/in",
        "--input",
        str(local),
        "--output",
        azure_lake,
        "--dry-run",
        "--log-format",
        "json",
    )
    assert dry.returncode == 0, dry.stderr
    assert blobs() == before
    would = json.loads(dry.stdout.strip().splitlines()[-1])
    assert (
        would["status"],
        would["records_read"],
        would["activities_written"],
        would["duplicates_dropped"],
    ) == ("dry_run", 3, 1, 1)
    assert would["warnings"] == [f"skipped 1 file of unsupported types in {root}/in: notes.txt"]


def test_an_empty_adls_directory_is_nothing_to_do(tmp_path, azure_lake):
    """On ADLS Gen2 a directory is a folder marker in the Blob API: an empty one exists."""
    import os

    from azure.storage.blob import BlobServiceClient

    container = azure_lake.split("://", 1)[1].split("@", 1)[0]
    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    client = service.get_container_client(container)
    client.create_container()
    client.upload_blob("landing", b"", metadata={"hdi_isfolder": "true"})
    base = azure_lake.rsplit("/", 1)[0]
    for value in (f"{base}/landing", f"{base}/landing/*.jsonl"):
        run = run_cli("export", "--input", value, "--output", str(tmp_path / "lake"))
        assert run.returncode == 0, run.stderr
        assert "no input files" in run.stdout
    missing = run_cli("export", "--input", f"{base}/nothing-here", "--output", str(tmp_path / "lake"))
    assert missing.returncode == 2
