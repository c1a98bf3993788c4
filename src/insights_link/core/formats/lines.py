"""Reading lines of any length in linear time and bounded memory, shared by the line formats.

Hostile inputs never stop a file or hold it all in memory: a line longer than
:data:`MAX_RECORD_BYTES` is one malformed record (streamed past, only its start kept), and CR,
LF and CRLF all end a line.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20

#: The longest JSON line or CSV record (all its physical lines) read as a record: 16 MiB.
#: Engagement events are a few KB; a 16 MiB one is a broken export (a file without line ends, a
#: quote that swallowed the file), not an event. The limit bounds a worker's memory: a record is
#: held several times while it is decoded (bytes, text, parsed object, Arrow). A longer line is
#: one ``malformed`` record whose dead-letter payload keeps its first ``PREFIX_BYTES`` and its
#: length; the reader streams past the rest without holding it. Override it (tests, an unusual
#: feed) with the environment variable ``INSIGHTS_LINK_MAX_RECORD_BYTES`` (a byte count).
MAX_RECORD_BYTES = 16 << 20
MAX_RECORD_BYTES_ENV = "INSIGHTS_LINK_MAX_RECORD_BYTES"
PREFIX_BYTES = 1024


def max_record_bytes() -> int:
    """:data:`MAX_RECORD_BYTES`, or the positive integer in ``INSIGHTS_LINK_MAX_RECORD_BYTES``."""
    value = os.environ.get(MAX_RECORD_BYTES_ENV, "").strip()
    if not value:
        return MAX_RECORD_BYTES
    if value.isdigit() and int(value) > 0:
        return int(value)
    logger.warning(
        "%s=%r is not a positive byte count; using %d", MAX_RECORD_BYTES_ENV, value, MAX_RECORD_BYTES
    )
    return MAX_RECORD_BYTES


#: one reader batch: positions, payloads, the CSV header, {index in the batch: malformed detail}
Batch = tuple[list[int], list, "list[str] | None", dict[int, str]]


# -- lines of any length, in linear time ------------------------------------------------------


@dataclass
class LongLine:
    """A line over the size limit: its first bytes and its full length (the rest is not kept)."""

    prefix: bytes
    length: int
    blank: bool

    def payload(self, limit: int) -> bytes:
        """The start of the line (cut at a UTF-8 character boundary) and a note of its length.

        The note begins with ``" ..."``, which no JSON text can continue with, so the payload
        never decodes as an event."""
        cut = self.prefix[:PREFIX_BYTES]
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


def is_blank(line: bytes) -> bool:
    return not line or (line[:1].isspace() and not line.strip())


class Unfinished:
    """The line being read across chunks, kept as a list of pieces (joined once, so a line
    spanning many chunks costs linear time); over the limit only its start and length are kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pieces: list[bytes] = []
        self.size = 0
        self.long: LongLine | None = None

    def __bool__(self) -> bool:
        return bool(self.size or self.long)

    def add(self, piece: bytes) -> None:
        if self.long is not None:
            self.long.length += len(piece)
            if len(self.long.prefix) < PREFIX_BYTES + 4:  # its start never depends on read sizes
                self.long.prefix += piece[: PREFIX_BYTES + 4 - len(self.long.prefix)]
            if self.long.blank and not is_blank(piece):
                self.long.blank = False
        elif self.size + len(piece) > self.limit:
            blank = all(is_blank(p) for p in self.pieces) and is_blank(piece)
            prefix = b"".join([p[: PREFIX_BYTES + 4] for p in self.pieces] + [piece[: PREFIX_BYTES + 4]])
            self.long = LongLine(prefix[: PREFIX_BYTES + 4], self.size + len(piece), blank)
            self.pieces, self.size = [], 0
        else:
            self.pieces.append(piece)
            self.size += len(piece)

    def finish(self, piece: bytes) -> bytes | LongLine:
        """The whole line, ending with ``piece``; resets for the next line."""
        if not self.pieces and self.long is None and len(piece) <= self.limit:
            return piece  # the common case: a line within one chunk
        self.add(piece)
        line: bytes | LongLine = self.long if self.long is not None else b"".join(self.pieces)
        self.pieces, self.size, self.long = [], 0, None
        return line


def read_chunk(stream) -> tuple[bytes, BaseException | None]:
    """Up to 8 MB; on a read error, what was read before it and the error (a truncated gzip
    still yields its good part)."""
    parts: list[bytes] = []
    size = 0
    read = getattr(stream, "read1", stream.read)
    try:
        while size < CHUNK_BYTES:
            piece = read(CHUNK_BYTES - size)
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
    except (OSError, EOFError, zlib.error) as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


BOM = b"\xef\xbb\xbf"


# -- JSON lines ---------------------------------------------------------------------------------


def long_line(line: bytes) -> LongLine:
    return LongLine(line[: PREFIX_BYTES + 4], len(line), is_blank(line))


BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")  # a literal first byte keeps the scan fast


def line_batch(lines: list[bytes | LongLine], before: int, limit: int) -> Batch:
    """Drop blank lines; a long line becomes its short payload and a malformed note. Positions
    are 1-based line numbers."""
    positions: list[int] = []
    payloads: list[bytes] = []
    malformed: dict[int, str] = {}
    for k, line in enumerate(lines):
        if isinstance(line, LongLine):
            if line.blank:
                continue
            malformed[len(payloads)] = line.detail(limit)
            line = line.payload(limit)
        elif is_blank(line):
            continue
        positions.append(before + 1 + k)
        payloads.append(line)
    return positions, payloads, None, malformed


# -- CSV ------------------------------------------------------------------------------------------


def physical_line_batches(stream, limit: int) -> Iterator[list[bytes | LongLine]]:
    """Per chunk read: its complete lines with their endings (``\\n``, ``\\r\\n`` or ``\\r``),
    a line over ``limit`` as a :class:`LongLine`; a read error is raised after the complete
    lines before it."""
    unfinished = Unfinished(limit)
    carry = b""  # a CR ending a chunk waits for the next one: it may be half of a CRLF
    first = True
    while True:
        chunk, error = read_chunk(stream)
        more = bool(chunk) and error is None
        if first:
            chunk = chunk.removeprefix(BOM)
            first = False
        chunk, carry = carry + chunk, b""
        if more and chunk.endswith(b"\r"):
            chunk, carry = chunk[:-1], b"\r"
        lines: list[Any] = chunk.splitlines(keepends=True)
        tail = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        if lines:
            lines[0] = unfinished.finish(lines[0])
            if len(chunk) > limit:
                lines[1:] = [long_line(line) if len(line) > limit else line for line in lines[1:]]
            yield lines
        if error is not None:
            raise error
        if tail:
            unfinished.add(tail)
        if not more and not carry:
            break
    if unfinished:
        yield [unfinished.finish(b"")]


def batched(records: Iterator[tuple[int, Any, Any, str | None]], size: int = 10_000) -> Iterator[Batch]:
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


# -- chunks: cutting a file at line boundaries ------------------------------------------------


def _line_ends(data: bytes, end: int, after_cr: bool) -> int:
    """Line ends in ``data[:end]`` as the JSON-lines reader counts them (LF, CRLF, lone CR);
    ``after_cr``: the bytes before ``data`` ended with CR, so a leading LF completes that CRLF."""
    ends = data.count(b"\n", 0, end)
    crs = data.count(b"\r", 0, end)
    if crs:
        ends += crs - data.count(b"\r\n", 0, end)
    if after_cr and end and data[:1] == b"\n":
        ends -= 1
    return ends


def line_boundaries(stream, size: int, chunk_bytes: int) -> list[tuple[int, int, int]]:
    """Cut a file of ``size`` bytes into ``(start, end, lines_before)`` ranges of about
    ``chunk_bytes`` at line boundaries, reading it once (in C: ``find`` and ``count``).

    Range ``k > 0`` starts just after the first LF at or after offset ``k * chunk_bytes - 1`` (a
    line starting exactly at the nominal offset starts the range); the range before it ends
    there, with the line crossing its nominal end. Only LF cuts: a file with lone-CR line ends
    stays one range. Ranges that would be empty (a line longer than a chunk) are merged away.
    """
    targets = [k * chunk_bytes for k in range(1, -(-size // chunk_bytes))]
    starts: list[tuple[int, int]] = [(0, 0)]
    offset, lines, after_cr, t = 0, 0, False, 0
    while t < len(targets):
        piece = stream.read(CHUNK_BYTES)
        if not piece:
            break
        while t < len(targets):
            begin = targets[t] - 1 - offset
            if begin >= len(piece):
                break
            found = piece.find(b"\n", max(begin, 0))
            if found < 0:
                break
            boundary = offset + found + 1
            if boundary < size:
                starts.append((boundary, lines + _line_ends(piece, found + 1, after_cr)))
            while t < len(targets) and targets[t] - 1 <= boundary - 1:
                t += 1
        lines += _line_ends(piece, len(piece), after_cr)
        after_cr = piece.endswith(b"\r")
        offset += len(piece)
    ends = [s for s, _ in starts[1:]] + [size]
    return [(start, end, before) for (start, before), end in zip(starts, ends, strict=True)]
