"""Pure path and URL rules shared by storage and inputs: keys, remote URLs, hidden names, globs.

One place for the rule that decides which files a folder or glob expands to, so local and
remote inputs (and a lake inside an input folder) are treated alike.
"""

from __future__ import annotations

import re


def join(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts: ``join("a", "", "b/c") == "a/b/c"``."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def is_remote(url: str) -> bool:
    """True for Azure URLs (``abfss://``, ``abfs://``, ``https://``, ``http://``)."""
    return url.split("://", 1)[0].lower() in {"abfss", "abfs", "https", "http"} and "://" in url


def is_hidden(relative_key: str) -> bool:
    """Whether a file found by expanding a folder or glob is skipped: any part of its key below
    the folder (or the glob's fixed base) starting with ``.`` or ``_`` (a lake's ``_deadletter``,
    ``_staging``, ``_runs``, editors' temp files), or a CDM document (``*.cdm.json``). One rule
    for local and remote inputs; a file named explicitly is always read."""
    parts = [p for p in relative_key.replace("\\", "/").split("/") if p]
    return any(p.startswith((".", "_")) for p in parts) or bool(parts) and parts[-1].endswith(".cdm.json")


def split_remote(url: str) -> tuple[str, str]:
    """``abfss://fs@acct.dfs.core.windows.net/a/b`` -> (file-system root URL, key ``a/b``)."""
    scheme, rest = url.split("://", 1)
    if scheme.lower() in ("abfss", "abfs"):
        authority, _, path = rest.partition("/")
        return f"{scheme}://{authority}", path
    host, _, path = rest.partition("/")
    filesystem, _, key = path.partition("/")
    return f"{scheme}://{host}/{filesystem}", key


def glob_regex(pattern: str) -> re.Pattern:
    """A key pattern with the local ``glob`` semantics: ``*`` and ``?`` stay within one folder,
    ``**/`` matches any number of folders (also none), ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


# A '?' followed by 'name=' in the same path segment: a query string (e.g. a SAS), not a glob.
QUERY_STRING = re.compile(r"\?[^/]*=")
