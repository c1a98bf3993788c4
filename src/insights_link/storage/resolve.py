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


def resolve_inputs(values: list[str], input_format: str | None = None) -> list[InputFile]:
    """Expand ``--input`` values to files, sorted by location; raises :class:`InputError`."""
    found: dict[tuple[str, str], InputFile] = {}
    for value in values:
        matches = _resolve_remote(value, input_format) if is_remote(value) else _resolve_local(
            value, input_format
        )
        if not matches:
            raise InputError(f"--input {value!r} matches no supported input file")
        for f in matches:
            found[(f.root, f.key)] = f
    ordered = sorted(found.values(), key=lambda f: (f.root, f.key))
    return [dataclasses.replace(f, rank=rank) for rank, f in enumerate(ordered)]


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
                logger.warning("input: skipping %s: a symbolic link to a folder is not followed",
                               os.path.join(dirpath, d))
        files.extend(os.path.join(dirpath, n) for n in names)
    return files


def _resolve_local(value: str, input_format: str | None) -> list[InputFile]:
    """A file (read even if it is a symlink: it was named), a folder or a glob.

    Expanding a folder or glob reads regular files only: a symbolic link found below it (to a
    file or folder, pointing inside or outside) is skipped with a warning, so an input folder
    never leads out of itself (``link -> /etc/passwd``) and a file linked twice is not read twice.
    Name a link as ``--input`` to read it.
    """
    path = os.path.abspath(os.path.expanduser(value))
    storage = LocalStorage("/")
    if os.path.isfile(path):
        key = path.lstrip("/").replace(os.sep, "/")
        fmt = _pick_format(key, True, input_format, value)
        info = storage.info(key)
        return [InputFile("/", key, fmt, info.size, info.modified.isoformat(), version=info.version)] if (
            fmt and info) else []
    if os.path.isdir(path):
        base = path  # what a folder or glob expands below: hidden/_ parts under it are skipped
        candidates = _walk_files(path)
    elif glob.has_magic(value):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit(os.sep, 1)[0] or os.sep
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
            logger.warning("input: skipping %s: it is a symbolic link (or below one); name it as "
                           "--input to read it", candidate)
            continue
        key = candidate.lstrip("/").replace(os.sep, "/")
        fmt = _pick_format(key, False, input_format, value)
        info = storage.info(key) if fmt else None
        if fmt and info:
            files.append(InputFile("/", key, fmt, info.size, info.modified.isoformat(), version=info.version))
    return files


def _resolve_remote(value: str, input_format: str | None) -> list[InputFile]:
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
        infos = [o for o in storage.list(prefix) if pattern.fullmatch(o.key)]
        explicit = False
    else:
        single = storage.info(key) if key else None
        prefix = key.strip("/")
        infos = [single] if single else storage.list(key)
        explicit = single is not None
    for info in infos:
        relative = info.key[len(prefix):] if prefix and info.key.startswith(prefix + "/") else info.key
        if not explicit and is_hidden(relative):
            continue
        fmt = _pick_format(info.key, explicit, input_format, value)
        if fmt:
            files.append(InputFile(root, info.key, fmt, info.size, info.modified.isoformat(),
                                   version=info.version))
    return files
