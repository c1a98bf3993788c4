"""Keys as files below a local folder: the embedded default lake and local inputs."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import BinaryIO

from insights_link.storage.base import (
    InputChanged,
    LockBusy,
    LockLost,
    ObjectInfo,
    PreconditionFailed,
    StorageError,
    holder_text,
    range_stream,
)


def _process_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # elsewhere: the classic swap, once per storage object
    os.umask(current)
    return current


#: POSIX ACLs as the kernel stores them in the ``system.posix_acl_access`` xattr (linux/posix_acl_xattr.h)
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF

#: How long a conditional write waits for another writer of the same folder: one in the middle of
#: its write holds it for milliseconds, so this long means a frozen (SIGSTOP) process.
COMMIT_LOCK_WAIT_SECONDS = 30.0


def _flock_within(fd: int, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StorageError(
                    f"another process has held the commit lock on {what} for {seconds:g} s "
                    "(frozen in the middle of a commit?); nothing was written, run again"
                ) from None
            time.sleep(0.05)


def _local_version(st: os.stat_result) -> str:
    """A local file's version: ``os.replace`` gives every write a new inode and change time."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}:{st.st_mtime_ns}:{st.st_size}"


def _listed_version(st: os.stat_result) -> str:
    """An input file's :attr:`ObjectInfo.version` as listed: inode and change time."""
    return f"{st.st_ino}:{st.st_ctime_ns}"


class LocalLock:
    """A held ``flock`` on a lock file; lost when the file at the path is no longer the one
    locked (removed or replaced: a new file would be a second, independent lock)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def check(self) -> None:
        held = os.fstat(self.fd)
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            raise LockLost(f"the lock file {self.path} was removed while this run held it") from None
        if (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
            raise LockLost(f"the lock file {self.path} was replaced while this run held it")


class LocalStorage:
    """Keys as files below a local folder (the embedded default lake)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root
        self._file_mode = 0o666 & ~_process_umask()  # files follow the umask like any tool's

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
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC), _listed_version(st))

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
                try:
                    st = os.stat(full)
                except FileNotFoundError:  # renamed or deleted by a writer since the walk saw it
                    continue
                modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
                found.append(ObjectInfo(rel, st.st_size, modified, _listed_version(st)))
        return sorted(found, key=lambda o: o.key)

    def folders(self, prefix: str = "") -> list[str]:
        try:
            with os.scandir(self._path(prefix)) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def external(self, key: str = "") -> tuple[str, dict[str, str]]:
        return self._path(key), {}

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from exc

    def read_range(self, key: str, start: int, end: int, version: str = "") -> BinaryIO:
        """Checked against ``version`` when opened and again once the range is read (an
        append or an in-place rewrite changes the change time), so a chunk is never read from
        a file other than the one its boundaries were planned on."""
        raw = self.open_read(key)
        path = self._path(key)

        def check() -> None:
            if version and _listed_version(os.fstat(raw.fileno())) != version:
                raise InputChanged(
                    f"{path} changed since it was listed (rewritten, appended to or truncated "
                    "while it was read in chunks); export it again"
                )

        try:
            check()
        except BaseException:
            raw.close()
            raise
        return range_stream(raw, start, end, path, check if version else None)

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    @contextlib.contextmanager
    def open_write(self, key: str, sync: bool = True) -> Iterator[BinaryIO]:
        """``sync=False`` skips the fsync: only for scratch files no commit ever makes visible."""
        path = self._path(key)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            os.fchmod(fd, self._file_mode)  # mkstemp makes 0600 whatever the umask
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno is not None:  # disk full, permissions...
                raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
            raise

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            with open(self._path(key), "rb") as f:
                return f.read(), _local_version(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from exc

    def write_if(self, key: str, data: bytes, version: str | None) -> str:
        """Check and replace under an exclusive ``flock`` on the object's folder: every
        conditional writer of that folder takes it, so the check and the write are one step.
        (A folder, unlike a lock file, can't be removed and recreated under a live lake.)"""
        path = self._path(key)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _flock_within(dir_fd, folder, COMMIT_LOCK_WAIT_SECONDS)
            try:
                current = _local_version(os.stat(path))
            except FileNotFoundError:
                current = None
            if current != version:
                raise PreconditionFailed(
                    f"{path} changed since this run read it (another run committed meanwhile)"
                )
            self.write_bytes(key, data)
            os.fsync(dir_fd)
            return _local_version(os.stat(path))
        finally:
            os.close(dir_fd)  # closing releases the flock

    def move(self, src: str, dst: str) -> None:
        target = self._path(dst)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(self._path(src), target)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def lock_holder(self, key: str) -> str | None:
        """Whether a process holds the ``flock`` of lock file ``key`` (then its holder text).

        Probes with a *shared* non-blocking ``flock`` on a separate, read-only descriptor and
        releases it at once: it fails exactly when a run holds the exclusive lock. The lock file
        is never created or written (its text stays after a run ends, so it alone can't tell)."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_holder(path)
        finally:
            os.close(fd)  # closing releases the probe's shared lock, if it got one
        return None

    def posix_acl_probe(self, key: str) -> str | None:
        """Whether the file system below ``key`` (an existing file the caller wrote) holds
        POSIX ACLs: sets an extended ACL on it (a named entry for its own owner, read-only, so
        nobody new gains anything) through the ``system.posix_acl_access`` xattr and reads it
        back. None when it does, else why not (for ``insights-link doctor``)."""
        path = self._path(key)
        st = os.stat(path)
        acl = struct.pack("<I", _ACL_VERSION) + b"".join(
            struct.pack("<HHI", tag, perm, ident)
            for tag, perm, ident in (
                (_ACL_USER_OBJ, 6, _ACL_UNDEFINED_ID),
                (_ACL_USER, 4, st.st_uid),
                (_ACL_GROUP_OBJ, 0, _ACL_UNDEFINED_ID),
                (_ACL_MASK, 4, _ACL_UNDEFINED_ID),
                (_ACL_OTHER, 0, _ACL_UNDEFINED_ID),
            )
        )
        try:
            os.setxattr(path, _ACL_XATTR, acl)
            back = os.getxattr(path, _ACL_XATTR)
        except AttributeError:
            return "this platform has no extended attributes (os.setxattr)"
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                return f"the file system of {self.root} does not support POSIX ACLs ({exc.strerror})"
            return f"cannot set a POSIX ACL on {path}: {exc.strerror}"
        if back != acl:
            return f"the file system of {self.root} did not keep the POSIX ACL set on {path}"
        return None

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[LocalLock]:
        """``flock`` on a lock file: the kernel releases it when the holder exits or is killed.

        The file holds who took it and when (for a waiting run's message). A lock file removed
        between our open and our flock is retried, so two runs never lock two different files.
        """
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, self._file_mode)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(fd)
                raise LockBusy(f"{path} is locked by another run ({_lock_holder(path)})") from exc
            handle = LocalLock(path, fd)
            try:
                handle.check()
                break
            except LockLost:
                os.close(fd)  # removed between open and flock: lock the new file instead
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder_text().encode("utf-8"), 0)
            yield handle
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _lock_holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(200).strip() or "holder unknown"
    except OSError:
        return "holder unknown"
