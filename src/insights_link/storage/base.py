"""One small storage interface for the lake and for inputs.

Every path the exporter touches below the lake root is a *key*: a POSIX-style relative path
(``EngagementInsights/WebLog/FullData/2024/05/01/x.parquet``). Backends map keys to their own
world: :class:`LocalStorage` to files under a folder, the Azure backend (``azure_storage``) to
blobs below a container prefix. Nothing else in the project opens lake files directly.

Guarantees every backend gives:
- ``write_bytes`` / ``open_write`` are all-or-nothing: a reader sees the old object or the whole
  new one, never a partial one (local: temp file + ``os.replace``; Azure: one block-blob commit).
- ``list`` is recursive and returns keys sorted, so callers never depend on listing order.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, Protocol

from insights_link.core.paths import is_remote, join  # noqa: F401 - the storage vocabulary
from insights_link.errors import InsightsLinkError


def holder_text() -> str:
    """Who holds a lock: host, process id and since when (UTC), one line."""
    since = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"held by pid {os.getpid()} on {socket.gethostname()} since {since}"


class StorageError(InsightsLinkError):
    """A storage operation failed; the message is safe to show (no secrets)."""


class CredentialsError(StorageError):
    """The storage refused who we are or found no credentials: a configuration mistake."""


class LockBusy(StorageError):
    """Another run holds the lock."""


class LockLost(StorageError):
    """This process no longer holds the lock it took (a lapsed lease, a removed lock file):
    it must not commit, move or delete anything."""


class PreconditionFailed(StorageError):
    """A conditional write found the object changed since the version the writer read."""


class InputChanged(StorageError):
    """An input file is no longer what the run listed (rewritten, appended to or truncated)
    while it was being read in chunks: its chunk boundaries and line numbers no longer hold."""


class LockHandle(Protocol):
    """A held lock: ``check()`` raises :class:`LockLost` once it can no longer be trusted."""

    def check(self) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes and last-modified time (UTC), and a version
    that changes on every write even when size and mtime are set back (``cp -p``, ``touch -r``):
    local ``inode:ctime_ns`` (neither can be set back), the ETag on Azure; "" when unknown."""

    key: str
    size: int
    modified: datetime
    version: str = ""


class Storage(Protocol):
    """What the exporter needs from a lake or an input location."""

    url: str

    def describe(self, key: str = "") -> str:
        """A human-readable location for ``key`` (a path or URL, never a secret)."""

    def exists(self, key: str) -> bool: ...

    def info(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when there is no object (folders are not objects)."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object below ``prefix`` (a folder key, '' for the root), recursively, sorted."""

    def folders(self, prefix: str = "") -> list[str]:
        """The names of the folders directly below ``prefix``, sorted (not recursive)."""

    def external(self, key: str = "") -> tuple[str, dict[str, str]]:
        """The URI and object-store options with which another library (delta-rs, polars)
        reaches ``key`` under this storage's credentials; the options may hold secrets, so
        they are never logged."""

    def read_bytes(self, key: str) -> bytes: ...

    def open_read(self, key: str) -> BinaryIO: ...

    def read_range(self, key: str, start: int, end: int, version: str = "") -> BinaryIO:
        """The bytes ``[start, end)`` of the object as a readable stream (a chunk of a large
        input file, read by one worker without fetching the rest). With ``version`` (the
        listing's :attr:`ObjectInfo.version`), raises :class:`InputChanged` when the object is
        no longer at that version, or ends before ``end``. Without it, a range past the end
        just ends there."""

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def open_write(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary file whose content becomes the object, all at once, when the block exits
        without an exception (and is discarded otherwise)."""

    def move(self, src: str, dst: str) -> None:
        """Make ``dst`` hold ``src``'s bytes and remove ``src``. Each step is atomic per object;
        the pair is not (blob stores copy then delete), so callers make moves re-runnable."""

    def delete(self, key: str) -> None:
        """Delete one object; a missing object is not an error."""

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object below a folder key."""

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and version (None, None when absent). A version changes on every
        write, even of identical bytes (local: inode and change time; Azure: the ETag)."""

    def write_if(self, key: str, data: bytes, version: str | None) -> str:
        """Write ``data`` only if the object is still at ``version`` (None: only if it does not
        exist), as one atomic check-and-write; returns the new version. Raises
        :class:`PreconditionFailed` otherwise. This is the commit point's fence."""

    def lock_holder(self, key: str) -> str | None:
        """Who holds the lock named by ``key`` right now (its holder text: pid, host, since
        when), None when nobody does. Read-only: never takes the lock, never creates anything."""

    def lock(self, key: str) -> contextlib.AbstractContextManager[LockHandle]:
        """Hold an exclusive lock named by ``key`` for the block, or raise :class:`LockBusy` at
        once. A holder that dies loses the lock by itself (a released file lock, an expiring
        lease). The yielded handle's ``check()`` says whether it is still held."""


class RangeReader(io.RawIOBase):
    """At most ``length`` bytes of an open binary file, from where it stands (closes it too)."""

    def __init__(self, raw: BinaryIO, length: int, name: str = "", check=None) -> None:
        super().__init__()
        self.raw = raw
        self.left = max(length, 0)
        self.name = name or "the input"
        #: called once the range is read, to raise if the file changed meanwhile; a checked range
        #: that ends early was truncated (an unchecked one just ends, like ``read``)
        self.check = check

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.left <= 0:
            return 0
        view = memoryview(buffer).cast("B")[: self.left]
        got = self.raw.readinto(view) or 0  # type: ignore[attr-defined]
        self.left -= got
        if not got and self.left > 0 and self.check is not None:  # a checked range: truncated
            raise InputChanged(f"{self.name} ended {self.left} bytes early: it changed since it was listed")
        if self.left <= 0 and self.check is not None:
            self.check()
        return got

    def close(self) -> None:
        self.raw.close()
        super().close()


def range_stream(raw: BinaryIO, start: int, end: int, name: str = "", check=None) -> BinaryIO:
    """``raw`` positioned at ``start``, ending at ``end`` (buffered: ``read1`` works); ``check``
    runs when the range has been read (see :class:`RangeReader`)."""
    raw.seek(start)
    reader = RangeReader(raw, end - start, name, check)
    return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[return-value]
