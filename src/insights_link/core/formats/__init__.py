"""Input formats behind one registry: a format is a module with ``batches(stream)``.

``read_blocks`` streams one file as :class:`RawBlock` s of at most ``block_records`` records,
keeping each record's position (line number for JSON lines, record number for CSV and Avro) and
its raw payload for dead letters. Opening the bytes is the caller's (storage) business.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterator
from typing import BinaryIO

from insights_link.core.blocks import InputFile, RawBlock
from insights_link.core.formats import avro, csv, jsonl
from insights_link.core.formats.lines import Batch

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


def read_blocks(
    f: InputFile, open_raw: Callable[[], BinaryIO], block_records: int = DEFAULT_BLOCK_RECORDS
) -> Iterator[RawBlock]:
    """Stream ``f`` as blocks; a file that breaks mid-way yields a final ``unreadable`` marker
    whose detail names the file and the last good position."""
    reader = READERS[f.fmt]
    block = RawBlock(f.source, f.rank, 0, f.fmt)
    position = 0
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
