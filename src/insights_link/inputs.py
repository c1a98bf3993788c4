"""Find input files and read them as blocks of raw records.

``resolve_inputs`` turns the ``--input`` values (files, globs, folders; local paths or
``abfss://`` URLs) into a sorted list of :class:`InputFile`. ``read_blocks`` streams one file as
:class:`RawBlock` s of at most ``block_records`` records, keeping each record's position (line
number for JSON lines, record number for CSV and Avro) and its raw payload for dead letters.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from insights_link.storage import LocalStorage, StorageError, is_remote, open_storage

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "avro")
_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl", ".json.gz": "jsonl",
    ".csv": "csv", ".csv.gz": "csv", ".avro": "avro",
}
DEFAULT_BLOCK_RECORDS = 100_000
csv.field_size_limit(1 << 30)  # long URLs and titles are data, not errors
_CHUNK_BYTES = 8 << 20


class InputError(ValueError):
    """An ``--input`` value is unusable (matches nothing, unknown format...); names the value."""


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is (storage root + key), its format and fingerprint."""

    root: str
    key: str
    fmt: str
    size: int
    modified: str  # ISO 8601 UTC
    rank: int = 0  # position in the run's sorted input list: the dedupe tie-breaker

    @property
    def source(self) -> str:
        """The location shown to people and written to dead letters."""
        if is_remote(self.root):
            return self.root.rstrip("/") + "/" + self.key
        return os.path.join(self.root, *self.key.split("/"))

    @property
    def compressed(self) -> bool:
        return self.key.lower().endswith(".gz")


@dataclass
class RawBlock:
    """Up to ``block_records`` raw records of one file, in file order."""

    source: str
    rank: int
    index: int
    fmt: str
    positions: list[int] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)
    header: list[str] | None = None  # CSV only
    #: a record standing for an unreadable rest of the file: (position, detail)
    unreadable: tuple[int, str] | None = None
    #: the activity tables that read this file
    activities: tuple[str, ...] = ()


def format_of(key: str) -> str | None:
    """The input format implied by a file name, or None when it is not a supported extension."""
    lower = key.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return _EXTENSIONS[ext]
    return None


def _split_remote(url: str) -> tuple[str, str]:
    """``abfss://fs@acct.dfs.core.windows.net/a/b`` -> (file-system root URL, key ``a/b``)."""
    scheme, rest = url.split("://", 1)
    if scheme.lower() in ("abfss", "abfs"):
        authority, _, path = rest.partition("/")
        return f"{scheme}://{authority}", path
    host, _, path = rest.partition("/")
    filesystem, _, key = path.partition("/")
    return f"{scheme}://{host}/{filesystem}", key


def resolve_inputs(values: list[str], input_format: str | None = None) -> list[InputFile]:
    """Expand ``--input`` values to files, sorted by location; raises :class:`InputError`."""
    found: dict[tuple[str, str], InputFile] = {}
    for value in values:
        matches = _resolve_remote(value, input_format) if is_remote(value) else _resolve_local(
            value, input_format
        )
        if not matches:
            raise InputError(f"--input {value!r} matches no supported input file")
        for f in matches:
            found[(f.root, f.key)] = f
    ordered = sorted(found.values(), key=lambda f: (f.root, f.key))
    return [InputFile(f.root, f.key, f.fmt, f.size, f.modified, rank) for rank, f in enumerate(ordered)]


def _pick_format(key: str, explicit: bool, input_format: str | None, value: str) -> str | None:
    fmt = input_format or format_of(key)
    if fmt is None and explicit:
        raise InputError(
            f"--input {value!r}: cannot tell the format of {key!r} from its extension; "
            "use --input-format jsonl|csv|avro"
        )
    return fmt


def _resolve_local(value: str, input_format: str | None) -> list[InputFile]:
    path = os.path.abspath(os.path.expanduser(value))
    base = path  # what a folder or glob expands below: hidden/_ parts under it are skipped
    if os.path.isfile(path):
        candidates, explicit = [path], True
    elif os.path.isdir(path):
        candidates = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
        explicit = False
    elif glob.has_magic(value):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit(os.sep, 1)[0]
        candidates, explicit = [], False
        for hit in glob.glob(path, recursive=True):
            if os.path.isdir(hit):
                candidates.extend(os.path.join(d, n) for d, _, names in os.walk(hit) for n in names)
            else:
                candidates.append(hit)
    else:
        raise InputError(f"--input {value!r} does not exist")
    storage = LocalStorage("/")
    files = []
    for candidate in candidates:
        key = candidate.lstrip("/").replace(os.sep, "/")
        name = os.path.basename(candidate)
        relative = os.path.relpath(candidate, base) if not explicit else name
        if not explicit and (any(part.startswith((".", "_")) for part in relative.split(os.sep))
                             or name.endswith(".cdm.json")):
            continue  # hidden and bookkeeping files and folders (a lake's _runs, manifests, ...)
        fmt = _pick_format(key, explicit, input_format, value)
        info = storage.info(key)
        if fmt and info:
            files.append(InputFile("/", key, fmt, info.size, info.modified.isoformat()))
    return files


def glob_regex(pattern: str) -> re.Pattern:
    """A key pattern with the local ``glob`` semantics: ``*`` and ``?`` stay within one folder,
    ``**/`` matches any number of folders (also none), ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


# A '?' followed by 'name=' in the same path segment: a query string (e.g. a SAS), not a glob.
_QUERY_STRING = re.compile(r"\?[^/]*=")


def _resolve_remote(value: str, input_format: str | None) -> list[InputFile]:
    if _QUERY_STRING.search(value):  # never echo it: it may be a SAS token
        raise InputError(
            f"--input {value.split('?', 1)[0] + '?...'!r}: remove the query string (put a SAS token in "
            "AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_CONNECTION_STRING instead)"
        )
    root, key = _split_remote(value)
    try:
        storage = open_storage(root)
    except StorageError as exc:  # a malformed URL or credential setting: nothing was read yet
        raise InputError(str(exc)) from exc
    files = []
    if any(ch in key for ch in "*?["):
        head = key[: min(key.index(ch) for ch in "*?[" if ch in key)]
        prefix = head.rsplit("/", 1)[0] if "/" in head else ""
        pattern = glob_regex(key)
        infos = [o for o in storage.list(prefix) if pattern.fullmatch(o.key)]
        explicit = False
    else:
        single = storage.info(key) if key else None
        infos = [single] if single else storage.list(key)
        explicit = single is not None
    for info in infos:
        if os.path.basename(info.key).startswith(("_", ".")) and not explicit:
            continue
        fmt = _pick_format(info.key, explicit, input_format, value)
        if fmt:
            files.append(InputFile(root, info.key, fmt, info.size, info.modified.isoformat()))
    return files


# ---------------------------------------------------------------------------------------------
# Reading


def _open(f: InputFile):
    raw = open_storage(f.root).open_read(f.key)
    return gzip.GzipFile(fileobj=raw, mode="rb") if f.compressed else raw


def read_blocks(f: InputFile, block_records: int = DEFAULT_BLOCK_RECORDS) -> Iterator[RawBlock]:
    """Stream ``f`` as blocks; a file that breaks mid-way yields a final ``unreadable`` marker."""
    reader = {"jsonl": _jsonl_batches, "csv": _csv_batches, "avro": _avro_batches}[f.fmt]
    block = RawBlock(f.source, f.rank, 0, f.fmt)
    position = 0
    try:
        with _open(f) as stream:
            for positions, payloads, header in reader(stream):
                block.header = block.header or header
                start = 0
                while start < len(payloads):
                    take = min(block_records - len(block.payloads), len(payloads) - start)
                    block.positions.extend(positions[start:start + take])
                    block.payloads.extend(payloads[start:start + take])
                    start += take
                    if len(block.payloads) >= block_records:
                        yield block
                        block = RawBlock(f.source, f.rank, block.index + 1, f.fmt, header=block.header)
                if positions:
                    position = positions[-1]
    except Exception as exc:  # noqa: BLE001 - any decoder failure ends the file, never the run
        # gzip raises OSError/EOFError/zlib.error, fastavro ValueError/EOFError/IndexError/KeyError
        # and its own schema errors, csv csv.Error: the rest of this file is one dead letter.
        logger.warning("input %s is unreadable after record %d: %s", f.source, position, exc)
        block.unreadable = (position + 1, f"malformed: file unreadable after position {position}: {exc}")
    if block.payloads or block.unreadable:
        yield block


Batch = tuple[list[int], list, "list[str] | None"]


def _jsonl_batches(stream) -> Iterator[Batch]:
    """Per chunk read: line numbers and line bytes (without line endings) of non-blank lines."""
    line_no = 0
    pending = b""
    first = True
    while True:
        chunk, error = _read_chunk(stream)
        if error is not None:  # keep the complete lines before the break, then report it
            lines = (pending + chunk).split(b"\n")[:-1]
            if first:
                lines[:1] = [lines[0].removeprefix(b"\xef\xbb\xbf")] if lines else []
            if lines:
                yield _non_blank(lines, line_no)
            raise error
        if not chunk:
            break
        if first:
            chunk = chunk.removeprefix(b"\xef\xbb\xbf")
            first = False
        data = pending + chunk
        lines = data.split(b"\n")
        pending = lines.pop()
        if b"\r" in data or _BLANK_LINE.search(data) or not data[:1].strip():
            yield _non_blank(lines, line_no)
        else:  # the common case, decided by one scan of the chunk in C
            yield list(range(line_no + 1, line_no + 1 + len(lines))), lines, None
        line_no += len(lines)
    if pending:
        yield _non_blank([pending], line_no)


_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")  # a literal first byte keeps the scan fast


def _read_chunk(stream) -> tuple[bytes, BaseException | None]:
    """Up to 8 MB; on a read error, what was read before it and the error (a truncated gzip
    still yields its good part)."""
    parts: list[bytes] = []
    size = 0
    read = getattr(stream, "read1", stream.read)
    try:
        while size < _CHUNK_BYTES:
            piece = read(_CHUNK_BYTES - size)
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
    except (OSError, EOFError, zlib.error) as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


def _non_blank(lines: list[bytes], before: int) -> Batch:
    """Drop CR line endings and blank lines; positions are 1-based line numbers."""
    if any(line.endswith(b"\r") for line in lines):
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    keep = [k for k, line in enumerate(lines) if line.strip()]
    if len(keep) == len(lines):
        return list(range(before + 1, before + 1 + len(lines))), lines, None
    return [before + 1 + k for k in keep], [lines[k] for k in keep], None


def _batched(records: Iterator[tuple[int, Any, Any]], size: int = 10_000) -> Iterator[Batch]:
    positions: list[int] = []
    payloads: list = []
    header = None
    try:
        for position, payload, header in records:
            positions.append(position)
            payloads.append(payload)
            if len(payloads) >= size:
                yield positions, payloads, header
                positions, payloads = [], []
    finally:  # a reader that breaks mid-file still hands over the records before the break
        if payloads:
            yield positions, payloads, header


def _csv_batches(stream) -> Iterator[Batch]:
    return _batched(_csv_records(stream))


def _avro_batches(stream) -> Iterator[Batch]:
    return _batched(_avro_records(stream))


def _csv_records(stream) -> Iterator[tuple[int, list[str], list[str]]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=False)
    header = None
    record = 0
    for row in reader:
        if header is None:
            header = [h.strip() for h in row]
            continue
        if not row or all(cell == "" for cell in row) and len(row) <= 1:
            continue
        record += 1
        yield record, row, header


def _avro_records(stream) -> Iterator[tuple[int, Any, None]]:
    import fastavro

    for number, record in enumerate(fastavro.reader(stream), start=1):
        yield number, record, None
