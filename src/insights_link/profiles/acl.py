"""Who can read the shared data source: nobody but its owner unless readers are added.

Local lakes: the data-source folder is owner-only (0700 folders, 0600 files) and each
``--reader`` (``user:NAME``, ``group:NAME`` or a bare user name) gets a POSIX ACL entry: r-x on
folders, r-- on files, plus the mask and the same entries as default ACLs on folders, so files
written later inherit them. The ACLs are written as the kernel's ``system.posix_acl_access`` /
``system.posix_acl_default`` extended attributes (the documented binary form), so neither
``setfacl`` nor a library is needed. Re-applying without readers removes earlier readers.

ADLS Gen2: :func:`set_adls_readers` replaces the folder's ACLs (recursively) with the
owner's and the listed Entra object ids' entries only; ``other`` gets nothing.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from insights_link.errors import UsageError

logger = logging.getLogger(__name__)

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
_VERSION = 2
_UNDEFINED = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True)
class Reader:
    """A local user or group allowed to read: kind "user" or "group", its name and id."""

    kind: str
    name: str
    id: int


def parse_readers(values: list[str]) -> list[Reader]:
    """``user:NAME`` / ``group:NAME`` / ``NAME`` as local users and groups; an unknown one is a
    :class:`UsageError` naming it."""
    readers = []
    for value in dict.fromkeys(v.strip() for v in values):
        kind, _, name = value.partition(":") if ":" in value else ("user", "", value)
        if kind not in ("user", "group") or not name:
            raise UsageError(f"--reader {value!r}: give user:NAME, group:NAME or a user name")
        try:
            if kind == "user":
                ident = pwd.getpwnam(name).pw_uid if not name.isdigit() else pwd.getpwuid(int(name)).pw_uid
            else:
                ident = grp.getgrnam(name).gr_gid if not name.isdigit() else grp.getgrgid(int(name)).gr_gid
        except KeyError:
            raise UsageError(f"--reader {value!r}: no such local {kind}") from None
        if all((r.kind, r.id) != (kind, ident) for r in readers):  # one ACL entry per principal
            readers.append(Reader(kind, name, ident))
    return readers


def encode_acl(owner: int, readers: list[Reader], reader_perm: int) -> bytes:
    """One ACL in the kernel's xattr form: owner ``owner`` bits, named readers ``reader_perm``,
    owning group and others nothing, the mask ``reader_perm`` (when there are readers)."""
    entries = [(USER_OBJ, owner, _UNDEFINED)]
    entries += sorted((USER, reader_perm, r.id) for r in readers if r.kind == "user")
    entries.append((GROUP_OBJ, 0, _UNDEFINED))
    entries += sorted((GROUP, reader_perm, r.id) for r in readers if r.kind == "group")
    if readers:
        entries.append((MASK, reader_perm, _UNDEFINED))
    entries.append((OTHER, 0, _UNDEFINED))
    return struct.pack("<I", _VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def decode_acl(data: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) entries of an ACL xattr (for checks and tests)."""
    (version,) = struct.unpack_from("<I", data)
    if version != _VERSION:
        raise ValueError(f"unknown POSIX ACL version {version}")
    return [struct.unpack_from("<HHI", data, 4 + 8 * i) for i in range((len(data) - 4) // 8)]


def restrict_local(folder: str, readers: list[Reader]) -> dict:
    """Make ``folder`` and everything below it owner-only, readable by ``readers`` alone;
    returns counts for the report. A file system without ACLs is a :class:`UsageError` when
    readers were asked for (owner-only modes still apply)."""
    counts = {"folders": 0, "files": 0}
    for path, is_dir in _walk(folder):
        _apply(path, is_dir, readers)
        counts["folders" if is_dir else "files"] += 1
    return counts


def check_local_acls(folder: str, readers: list[Reader]) -> None:
    """Before writing anything: create ``folder`` owner-only and set its ACLs, so an unknown
    principal or a file system that can't hold ACLs stops the run with exit 2."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _apply(folder, True, readers)


def _walk(folder: str):
    yield folder, True
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            yield os.path.join(root, name), True
        for name in files:
            yield os.path.join(root, name), False


def _apply(path: str, is_dir: bool, readers: list[Reader]) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return  # removed meanwhile (staging of a run that finished)
    if stat.S_ISLNK(mode):
        return
    os.chmod(path, 0o700 if is_dir else 0o600)
    try:
        if readers:
            os.setxattr(path, ACCESS, encode_acl(7 if is_dir else 6, readers, 5 if is_dir else 4))
            if is_dir:
                os.setxattr(path, DEFAULT, encode_acl(7, readers, 5))
        else:
            for name in (ACCESS, DEFAULT) if is_dir else (ACCESS,):
                _remove(path, name)
            os.chmod(path, 0o700 if is_dir else 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.EINVAL) and readers:
            raise UsageError(
                f"--reader needs POSIX ACLs, and {path} can't hold them ({os.strerror(exc.errno)}); "
                "use a file system with ACLs (ext4, xfs, btrfs) or share without --reader"
            ) from None
        raise


def _remove(path: str, name: str) -> None:
    try:
        os.removexattr(path, name)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise


def set_adls_readers(storage, folder_key: str, object_ids: Iterable[str]) -> None:
    """Make ``folder_key`` (recursively) readable by its owner and the listed Entra object ids
    only (see ``AzureStorage.set_readers``): later files inherit it, parents get ``--x``."""
    storage.set_readers(folder_key, object_ids)
