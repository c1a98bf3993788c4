"""CSV with a header row of dotted names, RFC 4180 quoting, resynchronizing after a bad record."""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator

from insights_link.core.formats.lines import Batch, LongLine, batched, max_record_bytes, physical_line_batches

csv.field_size_limit(1 << 30)  # long URLs and titles are data, not errors (records stop at MAX_RECORD_BYTES)


def batches(stream) -> Iterator[Batch]:
    return batched(_csv_records(stream))


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
    batches = physical_line_batches(stream, limit)
    pending: deque[bytes | LongLine] = deque()  # lines to read one record at a time

    def next_line() -> bytes | LongLine | None:
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
        parsed = _next_row(line, next_line, pending, limit)
        if header is None:
            if isinstance(parsed, list):
                header = [h.strip() for h in parsed]
                after_header = bool(pending)
                continue
            raise ValueError(f"the CSV header is not valid CSV: {parsed}")
        if isinstance(parsed, list):
            if not parsed or all(cell == "" for cell in parsed) and len(parsed) <= 1:
                continue
            record += 1
            yield record, parsed, header, None
            continue
        record += 1
        if isinstance(line, LongLine):
            yield record, _malformed_cells(header, _text(line.payload(limit))), header, line.detail(limit)
        else:
            yield (
                record,
                _malformed_cells(header, _text(line).rstrip("\r\n")),
                header,
                f"malformed: not valid CSV ({parsed}); only this line was rejected, reading resumed "
                "at the next line",
            )


def _rows_one_per_line(lines: list[bytes | LongLine]) -> list[list[str]] | None:
    """The rows of these lines parsed strictly in one go, or None unless each line is one row."""
    if any(isinstance(line, LongLine) for line in lines):
        return None
    try:
        rows = list(csv.reader([_text(line) for line in lines], strict=True))  # type: ignore[arg-type]
    except csv.Error:
        return None
    return rows if len(rows) == len(lines) else None


def _next_row(
    line: bytes | LongLine, next_line: Callable[[], bytes | LongLine | None], handed_back: deque, limit: int
) -> list[str] | str:
    """The row starting at ``line`` (reading more lines while a quote is open), or why there is
    none; lines read ahead for a record that fails go back to ``handed_back``."""
    if isinstance(line, LongLine):
        return f"line longer than {limit} bytes"
    taken = [line]
    size, quotes = len(line), line.count(b'"')
    while quotes % 2:
        more = next_line()
        if more is None:
            break
        if isinstance(more, LongLine) or size + len(more) > limit:
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
