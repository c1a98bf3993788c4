"""Find input files: ``--input`` values (files, globs, folders; local paths or Azure URLs) to a
sorted list of :class:`InputFile`, with one rule for hidden and bookkeeping names."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os

from insights_link.core.blocks import InputFile
from insights_link.core.formats import format_of
from insights_link.core.paths import QUERY_STRING, glob_regex, is_hidden, is_remote, split_remote
from insights_link.errors import UsageError
from insights_link.storage import open_storage
from insights_link.storage.base import StorageError
from insights_link.storage.local import LocalStorage

logger = logging.getLogger(__name__)


class InputError(UsageError):
    """An ``--input`` value is unusable (matches nothing, unknown format...); names the value."""


#: how many names of skipped files a warning shows
SKIPPED_EXAMPLES = 3


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Files of unsupported types an ``--input`` folder or glob held (not read)."""

    value: str
    names: tuple[str, ...]  # relative to the folder or the glob's fixed base, sorted

    def warning(self) -> str:
        shown = ", ".join(self.names[:SKIPPED_EXAMPLES]) + (
            ", ..." if len(self.names) > SKIPPED_EXAMPLES else ""
        )
        return (
            f"skipped {len(self.names)} file{'s' if len(self.names) != 1 else ''} of unsupported types "
            f"in {self.value}: {shown}"
        )


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What ``--input`` values expand to: the files to read and what was left out."""

    files: list[InputFile]
    skipped: list[Skipped] = dataclasses.field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [s.warning() for s in self.skipped]


def resolve_inputs(values: list[str], input_format: str | None = None) -> Resolved:
    """Expand ``--input`` values to files, sorted by location; raises :class:`InputError`.

    An existing folder (or a glob whose fixed base folder exists) that holds no supported file
    is not an error: the run has nothing to do. Files of unsupported types found while
    expanding a folder or glob are named in :attr:`Resolved.skipped`.
    """
    found: dict[tuple[str, str], InputFile] = {}
    skipped: list[Skipped] = []
    for value in values:
        unsupported: list[str] = []
        matches = (
            _resolve_remote(value, input_format, unsupported)
            if is_remote(value)
            else _resolve_local(value, input_format, unsupported)
        )
        if not matches:
            logger.info("input %s holds no supported input file", value)
        if unsupported:
            skipped.append(Skipped(value, tuple(sorted(unsupported))))
        for f in matches:
            found[(f.root, f.key)] = f
    ordered = sorted(found.values(), key=lambda f: (f.root, f.key))
    return Resolved([dataclasses.replace(f, rank=rank) for rank, f in enumerate(ordered)], skipped)


def _pick_format(key: str, explicit: bool, input_format: str | None, value: str) -> str | None:
    fmt = input_format or format_of(key)
    if fmt is None and explicit:
        raise InputError(
            f"--input {value!r}: cannot tell the format of {key!r} from its extension; "
            "use --input-format jsonl|csv|avro"
        )
    return fmt


def _walk_files(folder: str) -> list[str]:
    """Every file below ``folder``; symlinked folders are not entered (a warning names them)."""
    files = []
    for dirpath, dirs, names in os.walk(folder):
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)):
                logger.warning(
                    "input: skipping %s: a symbolic link to a folder is not followed",
                    os.path.join(dirpath, d),
                )
        files.extend(os.path.join(dirpath, n) for n in names)
    return files


def _resolve_local(value: str, input_format: str | None, unsupported: list[str]) -> list[InputFile]:
    """A file (read even if it is a symlink: it was named), a folder or a glob.

    Expanding a folder or glob reads regular files only: a symbolic link found below it (to a
    file or folder, pointing inside or outside) is skipped with a warning, so an input folder
    never leads out of itself (``link -> /etc/passwd``) and a file linked twice is not read twice.
    Name a link as ``--input`` to read it. Files of unsupported types are appended to
    ``unsupported`` (relative to the folder or the glob's fixed base).
    """
    path = os.path.abspath(os.path.expanduser(value))
    storage = LocalStorage("/")
    if os.path.isfile(path):
        key = path.lstrip("/").replace(os.sep, "/")
        fmt = _pick_format(key, True, input_format, value)
        info = storage.info(key)
        if not (fmt and info):
            raise InputError(f"--input {value!r} does not exist")
        return [InputFile("/", key, fmt, info.size, info.modified.isoformat(), version=info.version)]
    if os.path.isdir(path):
        base = path  # what a folder or glob expands below: hidden/_ parts under it are skipped
        candidates = _walk_files(path)
    elif glob.has_magic(value):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit(os.sep, 1)[0] or os.sep
        if not os.path.isdir(base):
            raise InputError(f"--input {value!r}: the folder {base} does not exist")
        candidates = []
        for hit in glob.glob(path, recursive=True):
            candidates.extend(_walk_files(hit) if os.path.isdir(hit) else [hit])
    else:
        raise InputError(f"--input {value!r} does not exist")
    real_base = os.path.realpath(base)
    files = []
    for candidate in candidates:
        relative = os.path.relpath(candidate, base)
        if is_hidden(relative.replace(os.sep, "/")):
            continue  # hidden and bookkeeping files and folders (a lake's _runs, manifests, ...)
        if os.path.realpath(candidate) != os.path.join(real_base, relative):
            logger.warning(
                "input: skipping %s: it is a symbolic link (or below one); name it as --input to read it",
                candidate,
            )
            continue
        key = candidate.lstrip("/").replace(os.sep, "/")
        fmt = _pick_format(key, False, input_format, value)
        if fmt is None:
            unsupported.append(relative.replace(os.sep, "/"))
            continue
        info = storage.info(key)
        if info:
            files.append(InputFile("/", key, fmt, info.size, info.modified.isoformat(), version=info.version))
    return files


def _resolve_remote(value: str, input_format: str | None, unsupported: list[str]) -> list[InputFile]:
    """A blob, a folder (prefix) or a glob below an Azure URL. A prefix that lists nothing is
    missing (object stores have no empty folders); one that lists only hidden or unsupported
    files is an existing input with nothing to read."""
    if QUERY_STRING.search(value):  # never echo it: it may be a SAS token
        raise InputError(
            f"--input {value.split('?', 1)[0] + '?...'!r}: remove the query string (put a SAS token in "
            "AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_CONNECTION_STRING instead)"
        )
    root, key = split_remote(value)
    try:
        storage = open_storage(root)
    except StorageError as exc:  # a malformed URL or credential setting: nothing was read yet
        raise InputError(str(exc)) from exc
    files = []
    if any(ch in key for ch in "*?["):
        head = key[: min(key.index(ch) for ch in "*?[" if ch in key)]
        prefix = head.rsplit("/", 1)[0] if "/" in head else ""
        pattern = glob_regex(key)
        listed = storage.list(prefix)
        if not listed and not _is_folder(storage, prefix):
            raise InputError(f"--input {value!r}: nothing exists below {prefix or 'the file system root'!r}")
        infos = [o for o in listed if pattern.fullmatch(o.key)]
        explicit = False
    else:
        single = storage.info(key) if key else None
        prefix = key.strip("/")
        infos = [single] if single else storage.list(key)
        explicit = single is not None
        if not infos and not _is_folder(storage, prefix):
            raise InputError(f"--input {value!r} does not exist")
    for info in infos:
        relative = info.key[len(prefix) :] if prefix and info.key.startswith(prefix + "/") else info.key
        if not explicit and is_hidden(relative):
            continue
        fmt = _pick_format(info.key, explicit, input_format, value)
        if fmt:
            files.append(
                InputFile(root, info.key, fmt, info.size, info.modified.isoformat(), version=info.version)
            )
        else:
            unsupported.append(relative.lstrip("/"))
    return files


def _is_folder(storage, key: str) -> bool:
    """An existing, empty folder: an ADLS Gen2 directory (a folder marker through the Blob API)."""
    check = getattr(storage, "is_folder", None)
    return bool(key) and check is not None and check(key)
