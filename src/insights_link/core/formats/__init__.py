"""Input formats behind one registry: a format is a module with ``batches(stream)``.

``read_blocks`` streams one file as :class:`RawBlock` s of at most ``block_records`` records,
keeping each record's position (line number for JSON lines, record number for CSV and Avro) and
its raw payload for dead letters. Opening the bytes is the caller's (storage) business.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterator
from functools import partial
from typing import BinaryIO

from insights_link.core.blocks import Chunk, InputFile, RawBlock
from insights_link.core.formats import avro, csv, jsonl
from insights_link.core.formats.lines import Batch, line_boundaries
from insights_link.errors import InsightsLinkError

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "avro")  # the registry below, in the order --help lists them
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".json.gz": "jsonl",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".avro": "avro",
}
DEFAULT_BLOCK_RECORDS = 100_000

#: format name -> the function turning a binary stream into reader batches
READERS: dict[str, Callable[[BinaryIO], Iterator[Batch]]] = {
    "jsonl": jsonl.batches,
    "csv": csv.batches,
    "avro": avro.batches,
}


def format_of(key: str) -> str | None:
    """The input format implied by a file name, or None when it is not a supported extension."""
    lower = key.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return _EXTENSIONS[ext]
    return None


def chunkable(f: InputFile, chunk_bytes: int) -> bool:
    """Whether ``f`` is read as several chunks: plain (not gzipped) JSON lines over ``chunk_bytes``.

    CSV never is: a quoted field may hold line ends, so a cut can't be placed without reading
    from the start (and the resynchronizing reader decides record ends sequentially). Avro never
    is either: its record numbers would need every earlier block's count. gzip has no random access.
    """
    return f.fmt == "jsonl" and not f.compressed and f.size > chunk_bytes


def plan_chunks(f: InputFile, open_raw: Callable[[], BinaryIO], chunk_bytes: int) -> list[Chunk]:
    """``f`` cut at line boundaries into chunks of about ``chunk_bytes`` (one read of the file,
    counting line ends so each chunk knows its first line number). A file that isn't
    :func:`chunkable`, or can't be read through (a storage error, or it changed since it was
    listed: ``open_raw`` checks its version), is one chunk covering it all: read whole, the way
    an unchunked run reads it."""
    if not chunkable(f, chunk_bytes):
        return [Chunk(0, 0, f.size, 0)]
    try:
        with open_raw() as stream:
            ranges = line_boundaries(stream, f.size, chunk_bytes)
    except (OSError, InsightsLinkError) as exc:  # the whole-file read reports what is wrong
        logger.warning("cannot cut %s into chunks (%s); reading it whole", f.source, exc)
        return [Chunk(0, 0, f.size, 0)]
    return [Chunk(k, start, end, before) for k, (start, end, before) in enumerate(ranges)]


def read_blocks(
    f: InputFile,
    open_raw: Callable[[], BinaryIO],
    block_records: int = DEFAULT_BLOCK_RECORDS,
    chunk: Chunk | None = None,
) -> Iterator[RawBlock]:
    """Stream ``f`` (or one ``chunk`` of it, ``open_raw`` then opening just that byte range) as
    blocks; a file that breaks mid-way yields a final ``unreadable`` marker whose detail names
    the file and the last good position. Positions are the file's, whatever the chunking."""
    if chunk is None or (chunk.start == 0 and chunk.end >= f.size):
        reader = READERS[f.fmt]
        first_index, position = 0, 0
    else:
        reader = partial(jsonl.batches, lines_before=chunk.lines_before, at_file_start=chunk.start == 0)
        first_index, position = chunk.start, chunk.lines_before  # see blocks.CHUNK_BLOCK_STRIDE
    block = RawBlock(f.source, f.rank, first_index, f.fmt)
    try:
        with _decompressed(f, open_raw()) as stream:
            for positions, payloads, header, malformed in reader(stream):
                block.header = block.header or header
                start = 0
                while start < len(payloads):
                    take = min(block_records - len(block.payloads), len(payloads) - start)
                    for k, detail in malformed.items():
                        if start <= k < start + take:
                            block.malformed[len(block.payloads) + k - start] = detail
                    block.positions.extend(positions[start : start + take])
                    block.payloads.extend(payloads[start : start + take])
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


def _decompressed(f: InputFile, raw: BinaryIO) -> BinaryIO:
    return gzip.GzipFile(fileobj=raw, mode="rb") if f.compressed else raw  # type: ignore[return-value]
