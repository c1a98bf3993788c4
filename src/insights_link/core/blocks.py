"""The units records travel in: an input file's identity and a block of its raw records."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from insights_link.core.paths import is_remote


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


@dataclass(frozen=True)
class Chunk:
    """A byte range ``[start, end)`` of an input file, cut at line boundaries (issue 14).

    ``start`` is 0 or just after a ``\n``; ``end`` is the next chunk's start or the file's
    size. ``lines_before`` is the number of line ends (LF, CRLF, lone CR, as the JSON-lines
    reader counts them) before ``start``, so the chunk's records keep the line numbers a reading
    of the whole file gives them: dead letters and the dedupe order don't depend on chunking.
    """

    index: int
    start: int
    end: int
    lines_before: int


#: block numbers at and over this get the long staged name (see ``pipeline.graph.block_name``).
#: Block numbers of a chunk start at its first byte offset: a chunk of ``n`` bytes has fewer
#: than ``n`` blocks (every record takes a byte and a line end), so chunks never share a number
#: whatever ``--block-records`` is, and numbers follow file order (a fixed stride per chunk did
#: not: a chunk of over a million blocks, ``--block-records 1``, ran into the next one's names)
CHUNK_BLOCK_STRIDE = 1_000_000


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
