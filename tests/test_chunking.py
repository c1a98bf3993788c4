"""Chunked reading of large input files (issue 14): a JSON-lines file over ``--chunk-mb`` is cut
at line boundaries and its chunks are read separately, yet every record keeps the line number
a whole-file read gives it. Proved on the reader (any chunk size, hostile line ends) and on the
real CLI: the same input exported with chunks of 0.001 MB, 0.01 MB and the default gives the
same rows, the same dead letters and the same report counts."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import dead_letters, event, export_run, read_activities, run_reports, write_jsonl
from insights_link.core.blocks import InputFile
from insights_link.core.formats import chunkable, lines, plan_chunks, read_blocks
from insights_link.storage import open_storage
from insights_link.storage.resolve import resolve_inputs

LIMIT = 300  # INSIGHTS_LINK_MAX_RECORD_BYTES for these tests: some lines are over it


def _file(path: Path) -> InputFile:
    (f,) = resolve_inputs([str(path)]).files
    return f


def _records(f: InputFile, chunk_bytes: int | None) -> list[tuple]:
    """(position, payload, malformed detail, unreadable) of every record, read whole or in chunks."""
    storage = open_storage(f.root)
    if chunk_bytes is None:
        parts = [(None, lambda: storage.open_read(f.key))]
    else:
        chunks = plan_chunks(f, lambda: storage.open_read(f.key), chunk_bytes)
        parts = [(c, lambda c=c: storage.read_range(f.key, c.start, c.end)) for c in chunks]
    out = []
    for chunk, opener in parts:
        for block in read_blocks(f, opener, 7, chunk):
            out.extend(
                (p, bytes(x), block.malformed.get(i))
                for i, (p, x) in enumerate(zip(block.positions, block.payloads, strict=True))
            )
            if block.unreadable:
                out.append(block.unreadable)
    return out


LINE_PARTS = [
    b'{"a":1}',
    b'{"b":"' + b"x" * 40 + b'"}',
    b"",
    b"   ",
    b"not json",
    b"\xff\xfe bad utf-8",
    b"y" * (LIMIT + 50),  # over the record limit: one malformed record
    b" " * (LIMIT + 10),  # a long blank line: skipped like a short one
]
ENDS = [b"\n", b"\r\n", b"\r"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(st.tuples(st.sampled_from(LINE_PARTS), st.sampled_from(ENDS)), min_size=1, max_size=40),
    bom=st.booleans(),
    last_end=st.booleans(),
    chunk_bytes=st.integers(min_value=1, max_value=400),
)
def test_chunks_read_the_same_records_as_the_whole_file(
    tmp_path_factory, monkeypatch, picks, bom, last_end, chunk_bytes
):
    """Any mix of LF, CRLF and lone CR, blank and over-long lines, a BOM, a missing last line
    end, and any chunk size: the chunks together yield exactly the whole file's records.
    (The one environment variable set is the same for every example.)"""
    monkeypatch.setenv(lines.MAX_RECORD_BYTES_ENV, str(LIMIT))
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line + end for line, end in picks)
    if not last_end:
        data = data.rstrip(b"\r\n")
    path = tmp_path_factory.mktemp("chunks") / "in.jsonl"
    path.write_bytes(data)
    f = _file(path)
    whole = _records(f, None)
    assert _records(f, chunk_bytes) == whole


def test_chunk_boundaries_follow_line_ends(tmp_path):
    """Chunks cover the file exactly, start at 0 or just after a LF, and count the line ends
    before them (CRLF once, a lone CR once); a line longer than a chunk merges chunks away."""
    data = b'{"a":1}\r\n' * 50 + b"z" * 500 + b"\n" + b'{"b":2}\r' * 30 + b'{"c":3}\n' * 40
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    f = _file(path)
    chunks = plan_chunks(f, lambda: open(path, "rb"), 100)
    assert chunks[0].start == 0 and chunks[-1].end == len(data)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.end == after.start and data[after.start - 1 : after.start] == b"\n"
    for c in chunks:
        prefix = data[: c.start]
        assert c.lines_before == prefix.count(b"\n") + prefix.count(b"\r") - prefix.count(b"\r\n")
        assert c.end > c.start
    assert len(chunks) < -(-len(data) // 100)  # the 500-byte line and the CR-only run merge chunks
    # only plain JSON lines over the chunk size are cut
    assert chunkable(f, 100) and not chunkable(f, len(data))
    gz = write_jsonl(tmp_path / "y.jsonl.gz", [event(str(i)) for i in range(50)], gz=True)
    csv_path = tmp_path / "z.csv"
    csv_path.write_text("Signal.Export.Id\n" + "a\n" * 500)
    assert not chunkable(_file(gz), 10) and not chunkable(_file(csv_path), 10)


def _input(folder: Path) -> Path:
    """Two JSON-lines files (~60 KB and ~15 KB) with what chunking could get wrong: copies of one
    id far apart (the earliest must win) also across files, every kind of dead letter, blank
    lines, CRLF and lone-CR line ends, a line over the record limit and no final line end."""
    rng = random.Random(14)
    lines_a: list[str] = []
    for i in range(300):
        eid = f"id-{rng.randrange(120)}"  # many repeats, far apart
        kind = rng.randrange(12)
        if kind == 0:
            lines_a.append("{broken json")
        elif kind == 1:
            lines_a.append(json.dumps(event(eid, ts="not a time", user=f"u{i}")))
        elif kind == 2:
            lines_a.append(json.dumps(event(eid, uri="nota uri", user=f"u{i}")))
        elif kind == 3:
            lines_a.append("")
        elif kind == 4:
            lines_a.append(json.dumps(event(eid, user=None)))
        else:
            lines_a.append(json.dumps(event(eid, user=f"u{i}", ts=f"2024-05-0{1 + i % 3}T10:00:00Z")))
    lines_a[150] = '{"Signal": "' + "q" * (LIMIT + 100) + '"}'
    text = ""
    for k, line in enumerate(lines_a):
        text += line + ("\r\n" if k % 7 == 0 else "\r" if k % 11 == 0 else "\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_bytes(text.encode())
    b = [json.dumps(event(f"id-{rng.randrange(150)}", user=f"b{i}")) for i in range(80)]
    (folder / "b.jsonl").write_bytes("\n".join(b).encode())  # no final line end
    return folder


def _counts(report: dict) -> dict:
    keep = (
        "records_read",
        "activities_written",
        "duplicates_dropped",
        "rejected",
        "activities",
        "unreadable_inputs",
    )
    return {k: report[k] for k in keep if k in report}


def test_export_is_identical_whatever_the_chunk_size(tmp_path):
    source = _input(tmp_path / "in")
    env = {lines.MAX_RECORD_BYTES_ENV: str(LIMIT)}
    outcomes = []
    for n, chunk_mb in enumerate(("0.001", "0.01", None)):
        lake = tmp_path / f"lake{n}"
        extra = ("--chunk-mb", chunk_mb) if chunk_mb else ()
        done = export_run(source, lake, "run-chunks", *extra, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        # progress counts files, not chunks (it showed "21/2 files")
        assert not re.search(r"progress: ([3-9]|\d\d+)/2 files", done.stderr), done.stderr[-2000:]
        ds = lake / "EngagementInsights"
        rows = read_activities(ds).sort_by([("ActivityId", "ascending")])
        (report,) = run_reports(ds)
        outcomes.append((rows, dead_letters(ds), _counts(report)))
    rows0, letters0, counts0 = outcomes[0]
    assert rows0.num_rows > 50 and len(letters0) > 20
    assert counts0["duplicates_dropped"] > 50
    assert any(letter["position"] > 150 and letter["source"].endswith("a.jsonl") for letter in letters0)
    key = lambda d: (d["source"], d["position"], d.get("reason"))  # noqa: E731
    for rows, letters, counts in outcomes[1:]:
        assert rows.to_pylist() == rows0.to_pylist()
        assert sorted(letters, key=key) == sorted(letters0, key=key)
        assert letters == letters0  # published in file order, too
        assert counts == counts0


@pytest.mark.parametrize("chunk_bytes", [64, 1000])
def test_chunked_blocks_are_numbered_in_file_order(tmp_path, chunk_bytes):
    """Block numbers are unique and sort in file order (staged pieces and dead-letter members
    are named by them and published in name order)."""
    path = write_jsonl(tmp_path / "n.jsonl", [event(str(i)) for i in range(200)])
    f = _file(path)
    storage = open_storage(f.root)
    blocks = []
    for c in plan_chunks(f, lambda: storage.open_read(f.key), chunk_bytes):
        blocks.extend(read_blocks(f, lambda c=c: storage.read_range(f.key, c.start, c.end), 5, c))
    indexes = [b.index for b in blocks]
    assert len(set(indexes)) == len(indexes) and indexes == sorted(indexes)
    firsts = [b.positions[0] for b in blocks]
    assert firsts == sorted(firsts) and sum(len(b.positions) for b in blocks) == 200
    data = path.read_bytes()
    for start, end in ((0, 10), (7, 7), (100, len(data)), (len(data) - 3, len(data) + 50)):
        with storage.read_range(f.key, start, end) as part:
            assert part.read() == data[start:end]


@pytest.mark.azurite
def test_chunks_of_a_blob_are_ranged_reads_on_azurite(azure_lake):
    """On Azure each chunk is one ranged download; the chunks of a blob give the records a
    whole-blob read gives, and the local and Azure range reads agree byte for byte."""
    data = b"".join(json.dumps(event(f"id-{i}")).encode() + (b"\r\n" if i % 3 else b"\n") for i in range(300))
    storage = open_storage(azure_lake)
    storage.write_bytes("in/big.jsonl", data)
    for start, end in ((0, 10), (5, 5), (100, len(data)), (len(data) - 3, len(data))):
        with storage.read_range("in/big.jsonl", start, end) as part:
            assert part.read() == data[start:end]
    (f,) = resolve_inputs([azure_lake.rstrip("/") + "/in"]).files
    storage = open_storage(f.root)
    chunks = plan_chunks(f, lambda: storage.open_read(f.key), 4096)
    assert len(chunks) > 5
    got = []
    for c in chunks:
        for block in read_blocks(f, lambda c=c: storage.read_range(f.key, c.start, c.end), 50, c):
            got.extend(zip(block.positions, block.payloads, strict=True))
    whole = [
        pair
        for block in read_blocks(f, lambda: storage.open_read(f.key), 50)
        for pair in zip(block.positions, block.payloads, strict=True)
    ]
    assert got == whole and [p for p, _ in got] == list(range(1, 301))


# -- attacks (issue 14 hardening): a file that changes between the split and the chunks' reads --


def _split_then_read(f: InputFile, change) -> tuple[list, list, list]:
    """Plan ``f``'s chunks with the real split step, ``change`` the file, then read every chunk
    with the real read step: (chunks planned, (position, payload) records, unreadable markers)."""
    from insights_link.pipeline.graph import ReadBlocksFn, SplitFileFn

    elements = list(SplitFileFn(512).process((f, ("A",))))
    change()
    records, unreadable = [], []
    for element in elements:
        for block in ReadBlocksFn(5).process(element):
            records.extend(zip(block.positions, block.payloads, strict=True))
            if block.unreadable:
                unreadable.append(block.unreadable)
    return [e[2] for e in elements], records, unreadable


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(".new")
    tmp.write_bytes(data)
    tmp.replace(path)


@pytest.mark.parametrize("how", ["rewritten", "shifted", "truncated", "appended"])
def test_a_file_changed_after_its_split_never_gives_shifted_or_lost_lines_silently(tmp_path, how):
    """Chunks planned on one version of a file and read from another gave records the wrong
    line numbers and lost or repeated some, silently. Now each chunk's read is checked against
    the version the run listed: every record read is the listed file's line at its position,
    and a chunk that could not be read as listed is an unreadable-input error naming the change."""
    path = write_jsonl(tmp_path / "big.jsonl", [event(f"id-{i}") for i in range(120)])
    original = path.read_bytes()
    by_line = dict(enumerate(original.split(b"\n"), start=1))
    f = _file(path)
    changes = {
        "rewritten": lambda: _replace(path, original.replace(b"id-", b"ID-")),  # same size
        "shifted": lambda: _replace(path, b"\n" * 3 + original[: len(original) - 3]),
        "truncated": lambda: path.write_bytes(original[: len(original) // 2]),
        "appended": lambda: path.open("ab").write(original[:200]),
    }
    chunks, records, unreadable = _split_then_read(f, changes[how])
    assert len(chunks) > 5 and all(c is not None for c in chunks)
    assert all(by_line[p] == payload for p, payload in records), "a record at another line's number"
    assert len({p for p, _ in records}) == len(records)
    if len(records) < 120:  # not all read as listed: said so, per chunk
        assert unreadable and all("changed since it was listed" in d for _, d in unreadable)
    if how != "appended":  # a rewrite always has a new inode or size: never read as if unchanged
        assert unreadable and len(records) < 120


def test_a_file_changed_before_its_split_is_read_whole(tmp_path):
    """A file already changed when the split step reads it is not cut (the chunks would be
    planned on bytes the run did not list): it is read whole, as an unchunked run reads it."""
    from insights_link.pipeline.graph import SplitFileFn

    path = write_jsonl(tmp_path / "big.jsonl", [event(f"id-{i}") for i in range(120)])
    f = _file(path)
    _replace(path, path.read_bytes())
    assert [e[2] for e in SplitFileFn(512).process((f, ("A",)))] == [None]


@pytest.mark.azurite
def test_a_blob_rewritten_after_its_split_is_a_clear_error_on_azurite(azure_lake):
    """On Azure the chunks' ranged downloads are conditional on the listed ETag (If-Match)."""
    data = b"".join(json.dumps(event(f"id-{i}")).encode() + b"\n" for i in range(120))
    storage = open_storage(azure_lake)
    storage.write_bytes("in/big.jsonl", data)
    (f,) = resolve_inputs([azure_lake.rstrip("/") + "/in"]).files
    by_line = dict(enumerate(data.split(b"\n"), start=1))
    chunks, records, unreadable = _split_then_read(
        f, lambda: storage.write_bytes("in/big.jsonl", b"\n" * 5 + data)
    )
    assert len(chunks) > 5
    assert all(by_line[p] == payload for p, payload in records)
    assert len(unreadable) == len(chunks) and not records
    assert all("changed since it was listed" in d for _, d in unreadable)


def test_a_long_lines_dead_letter_does_not_depend_on_read_sizes(monkeypatch):
    """With a record limit under 1 KiB, a long line's dead-letter payload (its first bytes) was
    cut at the limit or at the 1 KiB prefix depending on where the reader's 8 MB reads fell,
    so a chunked run's dead letter differed from an unchunked run's."""
    import io

    monkeypatch.setenv(lines.MAX_RECORD_BYTES_ENV, "20")
    data = b'{"a":1}\n' + b"x" * 100 + b"\n"
    f = InputFile("/", "x.jsonl", "jsonl", len(data), "t")
    payloads = set()
    for read_size in (3, 7, 64, 1 << 20):
        monkeypatch.setattr(lines, "CHUNK_BYTES", read_size)
        (block,) = read_blocks(f, lambda: io.BytesIO(data), 10)
        payloads.add(bytes(block.payloads[1]))
    assert payloads == {b"x" * 100 + b" ... [line of 100 bytes, longer than 20 bytes: cut]"}


@settings(max_examples=40, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.sampled_from(LINE_PARTS[:6]), st.sampled_from(ENDS)), min_size=1, max_size=60
    ),
    chunk_bytes=st.integers(min_value=1, max_value=120),
)
def test_block_numbers_of_chunks_never_collide_whatever_the_block_size(picks, chunk_bytes):
    """One record per block (``--block-records 1``): chunks numbered their blocks from a fixed
    stride of a million, so a chunk of over a million blocks took the next chunk's numbers, and
    its staged pieces and dead-letter members the same names (one overwriting the other). Now
    each chunk's block numbers lie within its byte range: unique and in file order, as names too."""
    import io

    from insights_link.pipeline.graph import block_name

    data = b"".join(line + end for line, end in picks)
    f = InputFile("/", "x.jsonl", "jsonl", len(data), "t")
    indexes = []
    for c in plan_chunks(f, lambda: io.BytesIO(data), chunk_bytes):
        numbers = [b.index for b in read_blocks(f, lambda c=c: io.BytesIO(data[c.start : c.end]), 1, c)]
        assert all(c.start <= n < max(c.end, c.start + 1) for n in numbers)
        indexes.extend(numbers)
    names = [block_name(n) for n in indexes]
    assert len(set(indexes)) == len(indexes) and indexes == sorted(indexes) and names == sorted(names)


def test_an_export_whose_input_changes_between_split_and_chunks_fails_on_unreadable(tmp_path):
    """End to end: the run pauses right before its first chunk read, the input is rewritten
    (three lines added at the top: every later line number shifts), the run goes on. The
    changed chunks are an unreadable input named in the output; with --fail-on-unreadable the
    run exits 3 and commits nothing (it used to commit every record under another line's number
    and lose the last ones)."""
    from conftest import RUN_TIME, start_cli
    from faults.lake_checks import wait_for_file

    source = tmp_path / "in"
    path = write_jsonl(source / "big.jsonl", [event(f"id-{i}") for i in range(300)])
    pause = tmp_path / "pause"
    env = {"INSIGHTS_LINK_PAUSE_STORAGE": "read_range:big.jsonl:2", "INSIGHTS_LINK_PAUSE_FILE": str(pause)}
    args = ["--output", str(tmp_path / "lake"), "--run-id", "r1", "--run-time", RUN_TIME]
    proc = start_cli(
        "export", "--input", str(source), *args, "--chunk-mb", "0.002", "--fail-on-unreadable", env=env
    )
    wait_for_file(pause, proc)
    _replace(path, b"\n" * 3 + path.read_bytes())
    pause.unlink()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    assert "changed since it was listed" in out + err
    assert not list((tmp_path / "lake").glob("**/*.parquet"))
