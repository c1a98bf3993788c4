"""Find input files and read them as blocks of raw records.

``resolve_inputs`` turns the ``--input`` values (files, globs, folders; local paths or
``abfss://`` URLs) into a sorted list of :class:`InputFile`. ``read_blocks`` streams one file as
:class:`RawBlock` s of at most ``block_records`` records, keeping each record's position (line
number for JSON lines, record number for CSV and Avro) and its raw payload for dead letters.

Hostile inputs never stop a file or hold it all in memory: a line longer than
:data:`MAX_RECORD_BYTES` is one malformed record (streamed past, only its start kept), a CSV quote
that never closes costs only its own line, and CR, LF and CRLF all end a line.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import logging
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator
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
csv.field_size_limit(1 << 30)  # long URLs and titles are data, not errors (records stop at MAX_RECORD_BYTES)
_CHUNK_BYTES = 8 << 20

#: The longest JSON line or CSV record (all its physical lines) read as a record: 16 MiB.
#: Engagement events are a few KB; a 16 MiB one is a broken export (a file without line ends, a
#: quote that swallowed the file), not an event. The limit bounds a worker's memory: a record is
#: held several times while it is decoded (bytes, text, parsed object, Arrow). A longer line is
#: one ``malformed`` record whose dead-letter payload keeps its first ``_PREFIX_BYTES`` and its
#: length; the reader streams past the rest without holding it. Override it (tests, an unusual
#: feed) with the environment variable ``INSIGHTS_LINK_MAX_RECORD_BYTES`` (a byte count).
MAX_RECORD_BYTES = 16 << 20
MAX_RECORD_BYTES_ENV = "INSIGHTS_LINK_MAX_RECORD_BYTES"
_PREFIX_BYTES = 1024


def max_record_bytes() -> int:
    """:data:`MAX_RECORD_BYTES`, or the positive integer in ``INSIGHTS_LINK_MAX_RECORD_BYTES``."""
    value = os.environ.get(MAX_RECORD_BYTES_ENV, "").strip()
    if not value:
        return MAX_RECORD_BYTES
    if value.isdigit() and int(value) > 0:
        return int(value)
    logger.warning("%s=%r is not a positive byte count; using %d", MAX_RECORD_BYTES_ENV, value,
                   MAX_RECORD_BYTES)
    return MAX_RECORD_BYTES


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
    #: what changes on every rewrite even when size and mtime are restored (``cp -p``,
    #: ``touch -r``): local ``inode:ctime_ns``, the blob's ETag on Azure; see ``ObjectInfo.version``
    version: str = ""

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
    #: records the reader already found malformed (a line over the size limit, a CSV record that
    #: is not valid CSV): index in ``payloads`` -> detail. Their payloads are shaped so that the
    #: decoders reject them as ``malformed`` too (a JSON line's start with its length appended;
    #: for CSV the raw line text as the only cell), so they are counted and dead-lettered.
    malformed: dict[int, str] = field(default_factory=dict)


def format_of(key: str) -> str | None:
    """The input format implied by a file name, or None when it is not a supported extension."""
    lower = key.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return _EXTENSIONS[ext]
    return None


def is_hidden(relative_key: str) -> bool:
    """Whether a file found by expanding a folder or glob is skipped: any part of its key below
    the folder (or the glob's fixed base) starting with ``.`` or ``_`` (a lake's ``_deadletter``,
    ``_staging``, ``_runs``, editors' temp files), or a CDM document (``*.cdm.json``). One rule
    for local and remote inputs; a file named explicitly is always read."""
    parts = [p for p in relative_key.replace("\\", "/").split("/") if p]
    return any(p.startswith((".", "_")) for p in parts) or bool(parts) and parts[-1].endswith(".cdm.json")


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
    return [dataclasses.replace(f, rank=rank) for rank, f in enumerate(ordered)]


def _pick_format(key: str, explicit: bool, input_format: str | None, value: str) -> str | None:
    fmt = input_format or format_of(key)
    if fmt is None and explicit:
        raise InputError(
            f"--input {value!r}: cannot tell the format of {key!r} from its extension; "
            "use --input-format jsonl|csv|avro"
        )
    return fmt


def _walk_files(folder: str) -> list[str]:
    """Every file below ``folder``; symlinked folders are not entered (a warning names them)."""
    files = []
    for dirpath, dirs, names in os.walk(folder):
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)):
                logger.warning("input: skipping %s: a symbolic link to a folder is not followed",
                               os.path.join(dirpath, d))
        files.extend(os.path.join(dirpath, n) for n in names)
    return files


def _resolve_local(value: str, input_format: str | None) -> list[InputFile]:
    """A file (read even if it is a symlink: it was named), a folder or a glob.

    Expanding a folder or glob reads regular files only: a symbolic link found below it (to a
    file or folder, pointing inside or outside) is skipped with a warning, so an input folder
    never leads out of itself (``link -> /etc/passwd``) and a file linked twice is not read twice.
    Name a link as ``--input`` to read it.
    """
    path = os.path.abspath(os.path.expanduser(value))
    storage = LocalStorage("/")
    if os.path.isfile(path):
        key = path.lstrip("/").replace(os.sep, "/")
        fmt = _pick_format(key, True, input_format, value)
        info = storage.info(key)
        return [InputFile("/", key, fmt, info.size, info.modified.isoformat(), version=info.version)] if (
            fmt and info) else []
    if os.path.isdir(path):
        base = path  # what a folder or glob expands below: hidden/_ parts under it are skipped
        candidates = _walk_files(path)
    elif glob.has_magic(value):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit(os.sep, 1)[0] or os.sep
        candidates = []
        for hit in glob.glob(path, recursive=True):
            candidates.extend(_walk_files(hit) if os.path.isdir(hit) else [hit])
    else:
        raise InputError(f"--input {value!r} does not exist")
    real_base = os.path.realpath(base)
    files = []
    for candidate in candidates:
        relative = os.path.relpath(candidate, base)
        if is_hidden(relative.replace(os.sep, "/")):
            continue  # hidden and bookkeeping files and folders (a lake's _runs, manifests, ...)
        if os.path.realpath(candidate) != os.path.join(real_base, relative):
            logger.warning("input: skipping %s: it is a symbolic link (or below one); name it as "
                           "--input to read it", candidate)
            continue
        key = candidate.lstrip("/").replace(os.sep, "/")
        fmt = _pick_format(key, False, input_format, value)
        info = storage.info(key) if fmt else None
        if fmt and info:
            files.append(InputFile("/", key, fmt, info.size, info.modified.isoformat(), version=info.version))
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
        prefix = key.strip("/")
        infos = [single] if single else storage.list(key)
        explicit = single is not None
    for info in infos:
        relative = info.key[len(prefix):] if prefix and info.key.startswith(prefix + "/") else info.key
        if not explicit and is_hidden(relative):
            continue
        fmt = _pick_format(info.key, explicit, input_format, value)
        if fmt:
            files.append(InputFile(root, info.key, fmt, info.size, info.modified.isoformat(),
                                   version=info.version))
    return files


# ---------------------------------------------------------------------------------------------
# Reading


def _open(f: InputFile):
    raw = open_storage(f.root).open_read(f.key)
    return gzip.GzipFile(fileobj=raw, mode="rb") if f.compressed else raw


#: one reader batch: positions, payloads, the CSV header, {index in the batch: malformed detail}
Batch = tuple[list[int], list, "list[str] | None", dict[int, str]]


def read_blocks(f: InputFile, block_records: int = DEFAULT_BLOCK_RECORDS) -> Iterator[RawBlock]:
    """Stream ``f`` as blocks; a file that breaks mid-way yields a final ``unreadable`` marker
    whose detail names the file and the last good position."""
    reader = {"jsonl": _jsonl_batches, "csv": _csv_batches, "avro": _avro_batches}[f.fmt]
    block = RawBlock(f.source, f.rank, 0, f.fmt)
    position = 0
    try:
        with _open(f) as stream:
            for positions, payloads, header, malformed in reader(stream):
                block.header = block.header or header
                start = 0
                while start < len(payloads):
                    take = min(block_records - len(block.payloads), len(payloads) - start)
                    for k, detail in malformed.items():
                        if start <= k < start + take:
                            block.malformed[len(block.payloads) + k - start] = detail
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
        unit = "line" if f.fmt == "jsonl" else "record"
        where = f"after {unit} {position}" if position else "from its start"
        logger.warning("input %s is unreadable %s: %s", f.source, where, exc)
        block.unreadable = (position + 1, f"malformed: {f.source} is unreadable {where}: {exc}")
    if block.payloads or block.unreadable:
        yield block


# -- lines of any length, in linear time ------------------------------------------------------


@dataclass
class _LongLine:
    """A line over the size limit: its first bytes and its full length (the rest is not kept)."""

    prefix: bytes
    length: int
    blank: bool

    def payload(self, limit: int) -> bytes:
        """The start of the line (cut at a UTF-8 character boundary) and a note of its length.

        The note begins with ``" ..."``, which no JSON text can continue with, so the payload
        never decodes as an event."""
        cut = self.prefix[:_PREFIX_BYTES]
        lead = len(cut) - 1
        while lead > 0 and len(cut) - lead < 4 and 0x80 <= cut[lead] < 0xC0:  # continuation bytes
            lead -= 1
        if cut and cut[lead] >= 0xC0:  # a multi-byte character starts here: drop it if cut short
            needed = 2 if cut[lead] < 0xE0 else 3 if cut[lead] < 0xF0 else 4
            if len(cut) - lead < needed:
                cut = cut[:lead]
        return cut + f" ... [line of {self.length} bytes, longer than {limit} bytes: cut]".encode()

    def detail(self, limit: int) -> str:
        return f"malformed: line longer than {limit} bytes ({self.length} bytes)"


def _is_blank(line: bytes) -> bool:
    return not line or (line[:1].isspace() and not line.strip())


class _Unfinished:
    """The line being read across chunks, kept as a list of pieces (joined once, so a line
    spanning many chunks costs linear time); over the limit only its start and length are kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pieces: list[bytes] = []
        self.size = 0
        self.long: _LongLine | None = None

    def __bool__(self) -> bool:
        return bool(self.size or self.long)

    def add(self, piece: bytes) -> None:
        if self.long is not None:
            self.long.length += len(piece)
            if self.long.blank and not _is_blank(piece):
                self.long.blank = False
        elif self.size + len(piece) > self.limit:
            blank = all(_is_blank(p) for p in self.pieces) and _is_blank(piece)
            prefix = b"".join([p[:_PREFIX_BYTES + 4] for p in self.pieces] + [piece[:_PREFIX_BYTES + 4]])
            self.long = _LongLine(prefix[:_PREFIX_BYTES + 4], self.size + len(piece), blank)
            self.pieces, self.size = [], 0
        else:
            self.pieces.append(piece)
            self.size += len(piece)

    def finish(self, piece: bytes) -> bytes | _LongLine:
        """The whole line, ending with ``piece``; resets for the next line."""
        if not self.pieces and self.long is None and len(piece) <= self.limit:
            return piece  # the common case: a line within one chunk
        self.add(piece)
        line: bytes | _LongLine = self.long if self.long is not None else b"".join(self.pieces)
        self.pieces, self.size, self.long = [], 0, None
        return line


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


_BOM = b"\xef\xbb\xbf"


# -- JSON lines ---------------------------------------------------------------------------------


def _jsonl_batches(stream) -> Iterator[Batch]:
    """Per chunk read: line numbers and line bytes (without line endings) of non-blank lines.

    ``\\n``, ``\\r\\n`` and a lone ``\\r`` (old Mac files) all end a line: a JSON text can't hold
    a raw CR inside a string, so a CR is never part of a record's data. A CRLF split between two
    chunks is one line end. A line over :func:`max_record_bytes` is a malformed record (one of
    only whitespace is a blank line, as a short one is).
    """
    limit = max_record_bytes()
    line_no = 0
    unfinished = _Unfinished(limit)
    after_cr = False  # the previous chunk ended with CR: a LF starting this one ends no line
    first = True
    while True:
        chunk, error = _read_chunk(stream)
        at_end = not chunk or error is not None
        if first:
            chunk = chunk.removeprefix(_BOM)
            first = False
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
            if b"\r" in chunk:  # CR-only line ends (old Mac files) or a stray CR
                chunk = chunk.replace(b"\r", b"\n")
        lines: list[Any] = chunk.split(b"\n")
        tail = lines.pop()
        if lines:
            lines[0] = unfinished.finish(lines[0])
            long_lines = isinstance(lines[0], _LongLine)
            if len(chunk) > limit:  # only then can a line inside the chunk be over the limit
                lines[1:] = [_long(line) if len(line) > limit else line for line in lines[1:]]
                long_lines = any(isinstance(line, _LongLine) for line in lines)
            if long_lines or _BLANK_LINE.search(chunk) or _is_blank(lines[0]):
                yield _line_batch(lines, line_no, limit)
            else:  # the common case, decided by one scan of the chunk in C
                yield list(range(line_no + 1, line_no + 1 + len(lines))), lines, None, {}
            line_no += len(lines)
        if error is not None:  # the complete lines before the break were kept; report it
            raise error
        if tail:
            unfinished.add(tail)
        if at_end:
            break
    if unfinished:
        yield _line_batch([unfinished.finish(b"")], line_no, limit)


def _long(line: bytes) -> _LongLine:
    return _LongLine(line[:_PREFIX_BYTES + 4], len(line), _is_blank(line))


_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")  # a literal first byte keeps the scan fast


def _line_batch(lines: list[bytes | _LongLine], before: int, limit: int) -> Batch:
    """Drop blank lines; a long line becomes its short payload and a malformed note. Positions
    are 1-based line numbers."""
    positions: list[int] = []
    payloads: list[bytes] = []
    malformed: dict[int, str] = {}
    for k, line in enumerate(lines):
        if isinstance(line, _LongLine):
            if line.blank:
                continue
            malformed[len(payloads)] = line.detail(limit)
            line = line.payload(limit)
        elif _is_blank(line):
            continue
        positions.append(before + 1 + k)
        payloads.append(line)
    return positions, payloads, None, malformed


# -- CSV ------------------------------------------------------------------------------------------


def _physical_line_batches(stream, limit: int) -> Iterator[list[bytes | _LongLine]]:
    """Per chunk read: its complete lines with their endings (``\\n``, ``\\r\\n`` or ``\\r``),
    a line over ``limit`` as a :class:`_LongLine`; a read error is raised after the complete
    lines before it."""
    unfinished = _Unfinished(limit)
    carry = b""  # a CR ending a chunk waits for the next one: it may be half of a CRLF
    first = True
    while True:
        chunk, error = _read_chunk(stream)
        more = bool(chunk) and error is None
        if first:
            chunk = chunk.removeprefix(_BOM)
            first = False
        chunk, carry = carry + chunk, b""
        if more and chunk.endswith(b"\r"):
            chunk, carry = chunk[:-1], b"\r"
        lines: list[Any] = chunk.splitlines(keepends=True)
        tail = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        if lines:
            lines[0] = unfinished.finish(lines[0])
            if len(chunk) > limit:
                lines[1:] = [_long(line) if len(line) > limit else line for line in lines[1:]]
            yield lines
        if error is not None:
            raise error
        if tail:
            unfinished.add(tail)
        if not more and not carry:
            break
    if unfinished:
        yield [unfinished.finish(b"")]


def _csv_batches(stream) -> Iterator[Batch]:
    return _batched(_csv_records(stream))


def _avro_batches(stream) -> Iterator[Batch]:
    return _batched((number, record, None, None) for number, record in _avro_records(stream))


def _batched(records: Iterator[tuple[int, Any, Any, str | None]], size: int = 10_000) -> Iterator[Batch]:
    positions: list[int] = []
    payloads: list = []
    malformed: dict[int, str] = {}
    header = None
    try:
        for position, payload, header, detail in records:
            if detail is not None:
                malformed[len(payloads)] = detail
            positions.append(position)
            payloads.append(payload)
            if len(payloads) >= size:
                yield positions, payloads, header, malformed
                positions, payloads, malformed = [], [], {}
    finally:  # a reader that breaks mid-file still hands over the records before the break
        if payloads:
            yield positions, payloads, header, malformed


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="surrogateescape")


def _strict_row(lines: list[bytes]) -> list[str] | str:
    """The one CSV row these physical lines hold, or why they aren't one (RFC 4180, strictly)."""
    if len(lines) == 1 and b'"' not in lines[0]:  # no quoting: a plain split, as csv would do
        text = _text(lines[0]).rstrip("\r\n")
        return text.split(",") if text else []
    try:
        rows = list(csv.reader([_text(line) for line in lines], strict=True))
    except csv.Error as exc:
        return "a quoted field is never closed" if "unexpected end of data" in str(exc) else str(exc)
    if len(rows) != 1:
        return f"{len(rows)} rows where one record was expected"
    return rows[0]


def _malformed_cells(header: list[str], text: str) -> list[str]:
    """A malformed record's payload: its raw text as the only cell. The cell count differs from
    the header's, so the CSV decoder rejects it as ``malformed`` and the dead letter keeps the text."""
    return [text] if len(header) != 1 else [text, ""]


def _csv_records(stream) -> Iterator[tuple[int, list[str], list[str], str | None]]:
    """CSV records with resynchronization: (record number, cells, header, malformed detail).

    A record is the physical lines read while its count of ``"`` is odd (a quoted field may run
    over lines, RFC 4180), and it is accepted only if it parses strictly as one row. A record
    that doesn't (the quote never closes before the end of the file or within
    :func:`max_record_bytes`, or the lines don't parse) is retried as its first physical line
    alone; if that fails too, that line is one ``malformed`` record and reading resumes at the
    next physical line. A stray quote so costs one record, never the rest of the file; each
    line is parsed at most three times. The header must parse, or the file is unreadable.

    Fast path: a chunk's lines are parsed in one go; when every line is one strict row (no
    record spans lines, none is over the limit) that is the answer the per-record rules give.
    """
    limit = max_record_bytes()
    batches = _physical_line_batches(stream, limit)
    pending: deque[bytes | _LongLine] = deque()  # lines to read one record at a time

    def next_line() -> bytes | _LongLine | None:
        while not pending:
            batch = next(batches, None)
            if batch is None:
                return None
            pending.extend(batch)
        return pending.popleft()

    header: list[str] | None = None
    record = 0
    after_header = False  # the rest of the header's chunk may take the fast path too
    while True:
        if header is not None and (after_header or not pending):
            batch = [pending.popleft() for _ in range(len(pending))] if after_header else next(batches, None)
            after_header = False
            if batch is None:
                break
            rows = _rows_one_per_line(batch)
            if rows is not None:
                for row in rows:
                    if row and not (len(row) == 1 and row[0] == ""):
                        record += 1
                        yield record, row, header, None
                continue
            pending.extend(batch)
        line = next_line()
        if line is None:
            break
        row = _next_row(line, next_line, pending, limit)
        if header is None:
            if isinstance(row, list):
                header = [h.strip() for h in row]
                after_header = bool(pending)
                continue
            raise ValueError(f"the CSV header is not valid CSV: {row}")
        if isinstance(row, list):
            if not row or all(cell == "" for cell in row) and len(row) <= 1:
                continue
            record += 1
            yield record, row, header, None
            continue
        record += 1
        if isinstance(line, _LongLine):
            yield record, _malformed_cells(header, _text(line.payload(limit))), header, line.detail(limit)
        else:
            yield (record, _malformed_cells(header, _text(line).rstrip("\r\n")), header,
                   f"malformed: not valid CSV ({row}); only this line was rejected, reading resumed "
                   "at the next line")


def _rows_one_per_line(lines: list[bytes | _LongLine]) -> list[list[str]] | None:
    """The rows of these lines parsed strictly in one go, or None unless each line is one row."""
    if any(isinstance(line, _LongLine) for line in lines):
        return None
    try:
        rows = list(csv.reader([_text(line) for line in lines], strict=True))  # type: ignore[arg-type]
    except csv.Error:
        return None
    return rows if len(rows) == len(lines) else None


def _next_row(line: bytes | _LongLine, next_line: Callable[[], bytes | _LongLine | None],
              handed_back: deque, limit: int) -> list[str] | str:
    """The row starting at ``line`` (reading more lines while a quote is open), or why there is
    none; lines read ahead for a record that fails go back to ``handed_back``."""
    if isinstance(line, _LongLine):
        return f"line longer than {limit} bytes"
    taken = [line]
    size, quotes = len(line), line.count(b'"')
    while quotes % 2:
        more = next_line()
        if more is None:
            break
        if isinstance(more, _LongLine) or size + len(more) > limit:
            handed_back.appendleft(more)
            break
        taken.append(more)
        size += len(more)
        quotes += more.count(b'"')
    row = _strict_row(taken) if quotes % 2 == 0 else "a quoted field is never closed"
    if isinstance(row, list) or len(taken) == 1:
        return row
    # the lines after the first go back: the first alone is a row (a literal quote inside an
    # unquoted field, as in 5" screen) or it is the malformed record
    handed_back.extendleft(reversed(taken[1:]))  # resynchronize at the next physical line
    return _strict_row(taken[:1])


# -- Avro -----------------------------------------------------------------------------------------


def _avro_records(stream) -> Iterator[tuple[int, Any]]:
    import fastavro

    yield from enumerate(fastavro.reader(stream), start=1)
