"""Hostile inputs (issue #8): an unterminated CSV quote, CR-only line ends, lines far over the size
limit, every Avro codec, symlinks out of an input folder, a lake inside an input folder (local and
on Azurite), files rewritten with their size and mtime restored, and files that break mid-way.

Real files and the real CLI; each test asserts the outcome (rows, dead letters, counts)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tracemalloc
from pathlib import Path

import fastavro
import pytest

from conftest import dead_letters, event, read_activities, run_cli, write_jsonl
from insights_link.core.blocks import InputFile
from insights_link.core.formats import lines, read_blocks
from insights_link.core.paths import is_hidden
from insights_link.pipeline.plan import fingerprint
from insights_link.storage import open_storage
from insights_link.storage.resolve import resolve_inputs

RUN_TIME = ("--run-time", "2026-01-01T00:00:00Z")
HEADER = ["Signal.Export.Id", "Signal.User.Id", "Signal.Timestamp", "Signal.View.Uri", "Signal.Action.Name"]
LIMIT_ENV = {lines.MAX_RECORD_BYTES_ENV: str(1 << 20)}  # 1 MiB for the long-line tests


def _export(inp: Path | str, lake: Path, *extra: str, run_id: str = "r1", env: dict | None = None) -> dict:
    """Run the CLI, expect success, return this run's report."""
    proc = run_cli(
        "export", "--input", str(inp), "--output", str(lake), *RUN_TIME, "--run-id", run_id, *extra, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((lake / "EngagementInsights" / "_runs" / f"{run_id}.json").read_text())


def _balanced(report: dict) -> bool:
    return report["records_read"] == (
        report["activities_written"] + report["duplicates_dropped"] + sum(report["rejected"].values())
    )


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


def _row(i: int) -> list[str]:
    return [f"e{i}", f"u{i}", "2024-05-01T10:00:00Z", f"https://contoso.com/p{i}", "Click"]


def _opened(f: InputFile):
    """``read_blocks``' first two arguments: the file and how to open its bytes."""
    return f, lambda: open_storage(f.root).open_read(f.key)


def _file(path: Path, fmt: str) -> InputFile:
    (f,) = resolve_inputs([str(path)], fmt).files
    return f


def _records(path: Path, fmt: str | None = None) -> list[tuple[int, object, str | None]]:
    """(position, payload, reader's malformed detail) of every record ``read_blocks`` yields."""
    out = []
    for block in read_blocks(*_opened(_file(path, fmt)), block_records=1000):
        pairs = zip(block.positions, block.payloads, strict=True)
        out.extend((p, x, block.malformed.get(k)) for k, (p, x) in enumerate(pairs))
    return out


# -- 1. CSV: a quote that never closes costs one record ------------------------------------------


@pytest.mark.parametrize("column", [1, 4], ids=["quote-in-second-column", "quote-in-last-column"])
def test_unterminated_csv_quote_rejects_only_its_line(tmp_path, lake, column):
    lines = [_csv_line(HEADER)]
    for i in range(1, 1001):
        line = _csv_line(_row(i))
        if i == 10:
            cells = line.rstrip("\r\n").split(",")
            cells[column] = '"' + cells[column]  # opens a quote that never closes
            line = ",".join(cells) + "\r\n"
        lines.append(line)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "events.csv").write_text("".join(lines), newline="")

    report = _export(tmp_path / "in", lake)
    assert report["records_read"] == 1000
    assert report["activities_written"] == 999
    assert report["rejected"]["malformed"] == 1 and sum(report["rejected"].values()) == 1
    assert _balanced(report)
    ids = set(read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist())
    assert ids == {f"e{i}" for i in range(1, 1001)} - {"e10"}
    (letter,) = dead_letters(lake / "EngagementInsights")
    assert letter["reason"] == "malformed" and letter["position"] == 10
    assert lines[10].rstrip("\r\n") in letter["payload"].values()  # the raw line text is kept
    # the reader says why (batch.py can show this detail)
    (bad,) = [r for r in _records(tmp_path / "in" / "events.csv") if r[2]]
    assert bad[0] == 10 and "never closed" in bad[2]


def test_multi_line_quoted_field_is_one_record(tmp_path, lake):
    text = (
        _csv_line(HEADER)
        + _csv_line(_row(1))
        + 'e2,u2,2024-05-01T10:00:00Z,https://contoso.com/p2,"Click\r\nthen ""buy""\r\nnow"\r\n'
        + _csv_line(_row(3))
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "events.csv").write_bytes(text.encode())
    report = _export(tmp_path / "in", lake)
    assert (report["records_read"], report["activities_written"]) == (3, 3)
    rows = {r["ActivityId"]: r for r in read_activities(lake / "EngagementInsights").to_pylist()}
    assert rows["e2"]["Details"] == 'Click\r\nthen "buy"\r\nnow'
    assert [p for p, _, _ in _records(tmp_path / "in" / "events.csv")] == [1, 2, 3]


def test_csv_resynchronizes_after_each_bad_line(tmp_path):
    """Two bad lines, a literal quote inside an unquoted field (accepted, as csv does), a quoted
    field opening then failing strict parsing, an unterminated quote on the last line."""
    text = (
        _csv_line(HEADER)
        + 'e1,u1,2024-05-01T10:00:00Z,https://contoso.com/a,"Click\n'
        + 'e2,u2,2024-05-01T10:00:00Z,https://contoso.com/b,5" screen\n'
        + 'e3,u3,2024-05-01T10:00:00Z,https://contoso.com/c,"Cl"ick\n'
        + "e4,u4,2024-05-01T10:00:00Z,https://contoso.com/d,Click\n"
        + 'e5,u5,2024-05-01T10:00:00Z,https://contoso.com/e,"Click'
    )
    path = tmp_path / "events.csv"
    path.write_bytes(text.encode())
    records = _records(path)
    assert [(p, d is not None) for p, _, d in records] == [
        (1, True),
        (2, False),
        (3, True),
        (4, False),
        (5, True),
    ]
    assert records[1][1][4] == '5" screen'
    assert records[0][1][0].endswith('"Click')  # the malformed record's payload is its raw line


def test_csv_with_a_bad_header_is_unreadable_not_a_crash(tmp_path, lake):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "events.csv").write_text('"Signal.Export.Id,Signal.User.Id\ne1,u1\n')
    report = _export(tmp_path / "in", lake)
    assert report["records_read"] == 1 and report["rejected"]["malformed"] == 1
    (letter,) = dead_letters(lake / "EngagementInsights")
    assert "events.csv" in letter["detail"] and "header" in letter["detail"]


# -- 2. JSON lines: CR, LF and CRLF all end a line -----------------------------------------------


def test_cr_only_json_lines_file_gives_every_record(tmp_path, lake):
    n = 250
    (tmp_path / "in").mkdir()
    text = "\r".join(json.dumps(event(f"e{i}")) for i in range(n)) + "\r"
    (tmp_path / "in" / "mac.jsonl").write_bytes(text.encode())
    report = _export(tmp_path / "in", lake)
    assert (report["records_read"], report["activities_written"]) == (n, n)
    assert [p for p, _, _ in _records(tmp_path / "in" / "mac.jsonl")] == list(range(1, n + 1))


def test_line_ends_at_the_chunk_boundary_are_counted_once(tmp_path):
    """A CRLF split between two 8 MiB reads is one line end; a CR ending a read followed by a
    record is one line end too; a stray CR mid-file ends a line."""
    chunk = lines.CHUNK_BYTES
    first = json.dumps(event("e1"))
    pad = json.dumps(event("e2", action="x" * (chunk - len(first) - 200)))
    filler = " " * (chunk - len(first) - 1 - len(pad) - 1)  # whitespace before the line end is JSON
    head = first + "\n" + pad + filler + "\r"
    assert len(head) == chunk
    path = tmp_path / "split.jsonl"
    path.write_bytes(
        (
            head
            + "\n"
            + json.dumps(event("e3"))
            + "\r"
            + json.dumps(event("e4"))
            + "\r\n"
            + "\n"
            + json.dumps(event("e5"))
        ).encode()
    )
    records = _records(path)
    assert [p for p, _, _ in records] == [1, 2, 3, 4, 6]
    assert [json.loads(x)["Signal"]["Export"]["Id"] for _, x, _ in records] == ["e1", "e2", "e3", "e4", "e5"]

    path.write_bytes((head + json.dumps(event("e3")) + "\n").encode())  # CR alone at the boundary
    assert [p for p, _, _ in _records(path)] == [1, 2, 3]


# -- 3. Lines far over the limit: one malformed record, streamed past ----------------------------


def test_a_line_over_the_limit_is_one_short_dead_letter_and_reading_goes_on(tmp_path, lake, monkeypatch):
    (tmp_path / "in").mkdir()
    long_line = json.dumps(event("huge", action="x" * (5 << 20)))
    write_jsonl(tmp_path / "in" / "a.jsonl", [event("e1"), event("e2"), long_line, event("e3")])
    report = _export(tmp_path / "in", lake, env=LIMIT_ENV)
    assert report["records_read"] == 4 and report["activities_written"] == 3
    assert report["rejected"]["malformed"] == 1 and _balanced(report)
    assert sorted(read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist()) == [
        "e1",
        "e2",
        "e3",
    ]
    (letter,) = dead_letters(lake / "EngagementInsights")
    assert letter["reason"] == "malformed" and letter["position"] == 3
    assert len(json.dumps(letter)) < 4096  # a bounded prefix, not 5 MiB
    assert f"{len(long_line)} bytes" in letter["payload"] and letter["payload"].startswith(long_line[:500])
    monkeypatch.setenv(lines.MAX_RECORD_BYTES_ENV, str(1 << 20))
    (bad,) = [r for r in _records(tmp_path / "in" / "a.jsonl") if r[2]]
    assert bad[2] == f"malformed: line longer than {1 << 20} bytes ({len(long_line)} bytes)"


def test_a_csv_line_over_the_limit_is_one_dead_letter(tmp_path, lake):
    (tmp_path / "in").mkdir()
    text = (
        _csv_line(HEADER)
        + _csv_line(_row(1))
        + _csv_line([*_row(2)[:4], "y" * (3 << 20)])
        + _csv_line(_row(3))
    )
    (tmp_path / "in" / "events.csv").write_text(text, newline="")
    report = _export(tmp_path / "in", lake, env=LIMIT_ENV)
    assert (report["records_read"], report["activities_written"], report["rejected"]["malformed"]) == (
        3,
        2,
        1,
    )
    (letter,) = dead_letters(lake / "EngagementInsights")
    assert letter["position"] == 2 and len(json.dumps(letter)) < 4096


def test_a_long_line_is_never_held_in_memory(tmp_path, monkeypatch):
    """64 MiB in one line with a 1 MiB limit: memory stays near a few read chunks (the old reader
    held the whole line twice), and the records around it are read."""
    monkeypatch.setenv(lines.MAX_RECORD_BYTES_ENV, str(1 << 20))
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as out:
        out.write(json.dumps(event("e1")).encode() + b"\n" + b'{"Signal": "')
        for _ in range(64):
            out.write(b"z" * (1 << 20))
        out.write(b'"}\n' + json.dumps(event("e2")).encode() + b"\n")
    tracemalloc.start()
    try:
        records = _records(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(p, d is not None) for p, _, d in records] == [(1, False), (2, True), (3, False)]
    assert len(records[1][1]) < 2048
    assert peak < 40 << 20, f"peak {peak >> 20} MiB while reading a 64 MiB line"


# -- 4. Every Avro codec fastavro supports -------------------------------------------------------


AVRO_CODECS = ["null", "deflate", "snappy", "zstandard", "lz4", "bzip2", "xz"]


def test_every_avro_codec_is_readable(tmp_path, lake):
    schema = {"type": "record", "name": "EventData", "fields": [{"name": "Body", "type": "bytes"}]}
    (tmp_path / "in").mkdir()
    for codec in AVRO_CODECS:
        records = [{"Body": json.dumps(event(f"{codec}-{i}")).encode()} for i in range(20)]
        with open(tmp_path / "in" / f"{codec}.avro", "wb") as out:
            fastavro.writer(out, fastavro.parse_schema(schema), records, codec=codec)
    report = _export(tmp_path / "in", lake)
    assert report["records_read"] == report["activities_written"] == 20 * len(AVRO_CODECS)
    assert sum(report["rejected"].values()) == 0
    ids = read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist()
    assert {i.split("-")[0] for i in ids} == set(AVRO_CODECS)


# -- 5. Symlinks never lead out of an input folder -----------------------------------------------


def test_folder_inputs_do_not_follow_symlinks(tmp_path, lake, caplog):
    outside = tmp_path / "outside"
    write_jsonl(outside / "secret.jsonl", [event("outside")])
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [event("e1")])
    (folder / "passwd.jsonl").symlink_to("/etc/passwd")
    (folder / "secret.jsonl").symlink_to(outside / "secret.jsonl")
    (folder / "again.jsonl").symlink_to(folder / "a.jsonl")  # inside: read once, under its own name
    (folder / "linked-dir").symlink_to(outside, target_is_directory=True)

    for value in (folder, f"{folder}/*.jsonl", f"{folder}/**/*.jsonl"):
        with caplog.at_level("WARNING", logger="insights_link.storage.resolve"):
            keys = [Path(f.source).name for f in resolve_inputs([str(value)]).files]
        assert keys == ["a.jsonl"], value
    assert "passwd.jsonl" in caplog.text and "symbolic link" in caplog.text

    report = _export(folder, lake)
    assert [Path(i["source"]).name for i in report["inputs"]] == ["a.jsonl"]
    assert read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist() == ["e1"]
    # a symlink named explicitly is read: the user asked for it
    assert [Path(f.source).name for f in resolve_inputs([str(folder / "secret.jsonl")]).files] == [
        "secret.jsonl"
    ]


# -- 6. One hidden-name rule, local and remote ---------------------------------------------------


def test_is_hidden_rule():
    assert not is_hidden("a.jsonl") and not is_hidden("2024/05/a.jsonl")
    assert is_hidden("lake/EngagementInsights/_deadletter/r1.jsonl.gz")
    assert is_hidden("lake/EngagementInsights/_staging/r1/x.jsonl")
    assert is_hidden(".git/x.json") and is_hidden("sub/.x.jsonl") and is_hidden("_tmp.csv")
    assert is_hidden("lake/EngagementInsights/WebLog.cdm.json")


def test_a_lake_inside_the_local_input_folder_is_not_read_back(tmp_path):
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [event("e1"), '{"broken"'])
    _export(folder, folder / "lake")
    (folder / "lake" / "EngagementInsights" / "_staging" / "r0").mkdir(parents=True)
    write_jsonl(folder / "lake" / "EngagementInsights" / "_staging" / "r0" / "x.jsonl", [event("s")])
    assert (folder / "lake" / "EngagementInsights" / "_deadletter").is_dir()
    for value in (folder, f"{folder}/**/*.json*"):
        assert [Path(f.source).name for f in resolve_inputs([str(value)]).files] == ["a.jsonl"], value


@pytest.mark.azurite
def test_a_lake_inside_a_remote_input_folder_is_not_read_back(azure_lake):
    from azure.storage.blob import BlobServiceClient

    container_name = azure_lake.split("://", 1)[1].split("@", 1)[0]
    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    container = service.get_container_client(container_name)
    container.create_container()
    line = (json.dumps(event("e1")) + "\n").encode()
    for name in [
        "in/a.jsonl",
        "in/sub/b.jsonl",
        "in/.hidden/c.jsonl",
        "in/sub/_tmp.jsonl",
        "in/lake/EngagementInsights/_deadletter/r1.jsonl.gz",
        "in/lake/EngagementInsights/_staging/r1/x.jsonl",
        "in/lake/EngagementInsights/WebLog.cdm.json",
        "in/lake/EngagementInsights/default.manifest.cdm.json",
    ]:
        container.upload_blob(name, gzip.compress(line) if name.endswith(".gz") else line)
    root = azure_lake.rsplit("/", 1)[0]
    expected = {
        "in": ["in/a.jsonl", "in/sub/b.jsonl"],
        "in/": ["in/a.jsonl", "in/sub/b.jsonl"],
        "in/**/*.json*": ["in/a.jsonl", "in/sub/b.jsonl"],
        "in/*": ["in/a.jsonl"],
    }
    for value, keys in expected.items():
        assert [f.key for f in resolve_inputs([f"{root}/{value}"]).files] == keys, value
    # named explicitly, a hidden file is read
    assert [f.key for f in resolve_inputs([f"{root}/in/sub/_tmp.jsonl"]).files] == ["in/sub/_tmp.jsonl"]
    # the ETag is the blob's version: an overwrite with the same bytes still changes it
    (before,) = resolve_inputs([f"{root}/in/a.jsonl"]).files
    container.upload_blob("in/a.jsonl", line, overwrite=True)
    (after,) = resolve_inputs([f"{root}/in/a.jsonl"]).files
    assert before.version and after.version and before.version != after.version
    assert fingerprint(before) != fingerprint(after)


# -- 7. A rewritten file with its size and mtime restored is read again --------------------------


def test_rewrite_with_restored_mtime_is_processed_again(tmp_path, lake):
    folder = tmp_path / "in"
    path = write_jsonl(folder / "a.jsonl", [event("e1"), event("e2")])
    stat = path.stat()
    first = _export(folder, lake)
    assert first["activities_written"] == 2
    assert not first["inputs"][0]["fingerprint"].endswith("|"), (
        "the run lost InputFile.version: pipeline._locked_run rebuilds each InputFile positionally; "
        "it must keep the version (dataclasses.replace(f, rank=rank))"
    )

    write_jsonl(path, [event("e3"), event("e4")])  # same size: ids of the same length
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p / touch -r do
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = _export(folder, lake, run_id="r2")
    assert [i["status"] for i in second["inputs"]] == ["processed"]
    assert second["activities_written"] == 2
    assert sorted(read_activities(lake / "EngagementInsights")["ActivityId"].to_pylist()) == [
        "e1",
        "e2",
        "e3",
        "e4",
    ]


def test_unchanged_file_is_still_skipped(tmp_path, lake):
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [event("e1")])
    _export(folder, lake)
    second = _export(folder, lake, run_id="r2")
    assert [i["status"] for i in second["inputs"]] == ["skipped"]
    assert second["records_read"] == 0


def test_version_changes_on_rewrite_but_not_on_read(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [event("e1")])
    stat = path.stat()
    before = _file(path, "jsonl")
    assert before.version and _file(path, "jsonl").version == before.version
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = _file(path, "jsonl")
    assert (after.size, after.modified) == (before.size, before.modified)
    assert after.version != before.version and fingerprint(after) != fingerprint(before)


# -- 8. A file that can't be read to its end names itself and the position -----------------------


def test_truncated_gzip_detail_names_the_file_and_position(tmp_path):
    data = gzip.compress("".join(json.dumps(event(f"e{i}")) + "\n" for i in range(2000)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    blocks = list(read_blocks(*_opened(_file(path, "jsonl")), block_records=100_000))
    position, detail = blocks[-1].unreadable
    good = sum(len(b.payloads) for b in blocks)
    assert 0 < good < 2000 and position == good + 1
    assert str(path) in detail and f"after line {good}" in detail and detail.startswith("malformed:")


def test_damaged_avro_detail_names_the_file_and_position(tmp_path):
    schema = {"type": "record", "name": "EventData", "fields": [{"name": "Body", "type": "bytes"}]}
    buf = io.BytesIO()
    fastavro.writer(
        buf,
        fastavro.parse_schema(schema),
        [{"Body": json.dumps(event(f"e{i}")).encode()} for i in range(3000)],
        sync_interval=4000,
    )
    data = buf.getvalue()
    path = tmp_path / "cut.avro"
    path.write_bytes(data[: len(data) * 2 // 3])
    blocks = list(read_blocks(*_opened(_file(path, "avro"))))
    position, detail = blocks[-1].unreadable
    good = sum(len(b.payloads) for b in blocks)
    assert 0 < good < 3000 and position == good + 1
    assert str(path) in detail and f"after record {good}" in detail
