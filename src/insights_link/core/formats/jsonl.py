"""JSON lines: one event object per line (nested or flat dotted keys), optionally gzipped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from insights_link.core.formats.lines import (
    BLANK_LINE,
    BOM,
    Batch,
    LongLine,
    Unfinished,
    is_blank,
    line_batch,
    long_line,
    max_record_bytes,
    read_chunk,
)


def batches(stream, lines_before: int = 0, at_file_start: bool = True) -> Iterator[Batch]:
    """Per chunk read: line numbers and line bytes (without line endings) of non-blank lines.

    ``\\n``, ``\\r\\n`` and a lone ``\\r`` (old Mac files) all end a line: a JSON text can't hold
    a raw CR inside a string, so a CR is never part of a record's data. A CRLF split between two
    chunks is one line end. A line over :func:`max_record_bytes` is a malformed record (one of
    only whitespace is a blank line, as a short one is).

    A :class:`~insights_link.core.blocks.Chunk` of a file is read with ``lines_before`` (the
    line ends before it) and ``at_file_start=False`` (a byte-order mark counts only at offset 0).
    """
    limit = max_record_bytes()
    line_no = lines_before
    unfinished = Unfinished(limit)
    after_cr = False  # the previous chunk ended with CR: a LF starting this one ends no line
    first = at_file_start
    while True:
        chunk, error = read_chunk(stream)
        at_end = not chunk or error is not None
        if first:
            chunk = chunk.removeprefix(BOM)
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
            long_lines = isinstance(lines[0], LongLine)
            if len(chunk) > limit:  # only then can a line inside the chunk be over the limit
                lines[1:] = [long_line(line) if len(line) > limit else line for line in lines[1:]]
                long_lines = any(isinstance(line, LongLine) for line in lines)
            if long_lines or BLANK_LINE.search(chunk) or is_blank(lines[0]):
                yield line_batch(lines, line_no, limit)
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
        yield line_batch([unfinished.finish(b"")], line_no, limit)
