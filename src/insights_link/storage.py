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
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, Protocol


class StorageError(Exception):
    """A storage operation failed; the message is safe to show (no secrets)."""


class LockBusy(StorageError):
    """Another run holds the lock."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes and last-modified time (UTC)."""

    key: str
    size: int
    modified: datetime


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

    def read_bytes(self, key: str) -> bytes: ...

    def open_read(self, key: str) -> BinaryIO: ...

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

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive lock named by ``key`` for the block, or raise :class:`LockBusy` at
        once. A holder that dies loses the lock by itself (a released file lock, an expiring
        lease)."""


def join(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts: ``join("a", "", "b/c") == "a/b/c"``."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class LocalStorage:
    """Keys as files below a local folder (the embedded default lake)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def describe(self, key: str = "") -> str:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def info(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(self._path(key)):
            return None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        found: list[ObjectInfo] = []
        if os.path.isfile(base):
            info = self.info(prefix)
            return [info] if info else []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                st = os.stat(full)
                modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
                found.append(ObjectInfo(rel, st.st_size, modified))
        return sorted(found, key=lambda o: o.key)

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def move(self, src: str, dst: str) -> None:
        target = self._path(dst)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(self._path(src), target)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """``flock`` on a lock file: the kernel releases it when the holder exits or is killed."""
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise LockBusy(f"{path} is locked by another run") from exc
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def open_storage(url: str) -> Storage:
    """The storage for a lake root or input location: a local folder or an ``abfss://`` /
    ``https://<account>.dfs|blob.core.windows.net`` URL."""
    if is_remote(url):
        from insights_link.azure_storage import AzureStorage  # Azure SDKs load only when used

        return AzureStorage.from_url(url)
    return LocalStorage(url)


def is_remote(url: str) -> bool:
    """True for Azure URLs (``abfss://``, ``abfs://``, ``https://``, ``http://``)."""
    return url.split("://", 1)[0].lower() in {"abfss", "abfs", "https", "http"} and "://" in url
