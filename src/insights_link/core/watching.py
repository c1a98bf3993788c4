"""Pure decisions of continuous export (``export --watch``): which input files are complete,
which of those a window takes, how late the export runs, and the windows' run ids.

No storage and no Beam here: the watcher (:mod:`insights_link.pipeline.watch`) lists the inputs
and the committed state, and asks these functions what to do with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from insights_link.core.blocks import InputFile

#: a folder holding this (empty) file says every file in it, written before the marker, is
#: complete (the Hadoop/Spark convention); it is hidden, so it is never read as input
MARKER_NAME = "_SUCCESS"

Ident = tuple[str, str]  # (storage root, key): a file's place, whatever its content


def ident(f: InputFile) -> Ident:
    return (f.root, f.key)


def observed(f: InputFile) -> tuple[int, str, str]:
    """What must stay the same between two polls for a file to count as complete: its size,
    modification time and storage version (local inode and change time, the blob's ETag)."""
    return (f.size, f.modified, f.version)


def folder_of(f: InputFile) -> Ident:
    """The folder a file's marker would be in: (root, key of the folder)."""
    return (f.root, f.key.rsplit("/", 1)[0] if "/" in f.key else "")


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_marked(f: InputFile, markers: Mapping[Ident, str]) -> bool:
    """Whether the file's folder holds a marker written at or after the file's last change."""
    marked_at = markers.get(folder_of(f))
    return marked_at is not None and _instant(marked_at) >= _instant(f.modified)


#: what the watcher remembers of a file between polls: what it observed, and since when (seconds
#: on a monotonic clock) it has observed exactly that
Tracked = tuple[tuple[int, str, str], float]


def track(
    current: Iterable[InputFile], previous: Mapping[Ident, Tracked], now: float
) -> dict[Ident, Tracked]:
    """This poll's memory of the files found: a file unchanged since the last poll keeps the time
    it was first seen like this; a new or changed file starts again at ``now``. Files gone are
    forgotten, so the memory never outgrows the input folder."""
    tracked = {}
    for f in current:
        seen = previous.get(ident(f))
        tracked[ident(f)] = seen if seen is not None and seen[0] == observed(f) else (observed(f), now)
    return tracked


def complete_files(
    current: Iterable[InputFile],
    tracked: Mapping[Ident, Tracked],
    now: float,
    interval: float,
    markers: Mapping[Ident, str] | None = None,
) -> list[InputFile]:
    """The files that are complete: observed unchanged (size, modified, version) for at least
    ``interval`` seconds, i.e. across two polls an interval apart, or covered by a marker in
    their folder written at or after their last change.

    A file seen for the first time is not complete (unless marked): a writer may still be
    appending to it. ``tracked`` is :func:`track` of this poll.
    """
    markers = markers or {}
    done = []
    for f in current:
        seen = tracked.get(ident(f))
        if seen is not None and seen[0] == observed(f) and now - seen[1] >= interval or is_marked(f, markers):
            done.append(f)
    return done


def select_window(candidates: Sequence[InputFile], max_files: int, max_bytes: int) -> list[InputFile]:
    """The files the next window commits: the oldest first (by modification time, then place),
    at most ``max_files`` of them and at most ``max_bytes`` together. A single file larger than
    ``max_bytes`` is a window of its own, so a big file never blocks the loop. Files stay in
    age order: the window stops at the first file that does not fit."""
    if max_files < 1 or max_bytes < 1:
        raise ValueError("a window holds at least one file and one byte")
    window: list[InputFile] = []
    total = 0
    for f in sorted(candidates, key=lambda f: (_instant(f.modified), f.root, f.key)):
        if len(window) >= max_files or (window and total + f.size > max_bytes):
            break
        window.append(f)
        total += f.size
    return window


def lag_seconds(
    waiting: Iterable[InputFile], now: datetime, since: Mapping[Ident, datetime] | None = None
) -> float:
    """The export's lag: the age of the oldest file not yet committed, 0 when nothing waits.
    A file's age counts from its modification time, or from when the watcher first found it
    waiting (``since``) if that is earlier: a file that never stops changing keeps a fresh
    modification time, yet its lag must grow. Never negative (a storage clock ahead of ours)."""
    since = since or {}

    def start(f: InputFile) -> datetime:
        found = since.get(ident(f))
        return _instant(f.modified) if found is None else min(found, _instant(f.modified))

    oldest = min((start(f) for f in waiting), default=None)
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


def waiting_since(
    uncommitted: Iterable[Ident], previous: Mapping[Ident, datetime], now: datetime
) -> dict[Ident, datetime]:
    """When the watcher first found each uncommitted file waiting (kept across its changes);
    files committed or gone are forgotten."""
    return {key: previous.get(key, now) for key in uncommitted}


def window_run_id(base: str, number: int) -> str:
    """The run id of window ``number`` of a watcher whose base run id is ``base``."""
    return f"{base}-w{number:04d}"


@dataclass(frozen=True)
class Poll:
    """What one poll found: complete files to commit, files still changing, and the lag."""

    ready: list[InputFile]
    changing: list[InputFile]
    lag_seconds: float

    @property
    def idle(self) -> bool:
        """Nothing waits: every input file is committed (none complete, none still changing)."""
        return not self.ready and not self.changing


def judge(
    current: Sequence[InputFile],
    uncommitted: Iterable[Ident],
    tracked: Mapping[Ident, Tracked],
    markers: Mapping[Ident, str],
    now: float,
    interval: float,
    wall_now: datetime,
    since: Mapping[Ident, datetime] | None = None,
) -> Poll:
    """One poll's verdict over the files found now: ``uncommitted`` are the places whose file
    (as found now) some activity has not committed yet; ``now`` is the monotonic time of the
    poll, ``wall_now`` its UTC time and ``since`` :func:`waiting_since` (for the lag)."""
    todo = set(uncommitted)
    waiting = [f for f in current if ident(f) in todo]
    ready = complete_files(waiting, tracked, now, interval, markers)
    done = {ident(f) for f in ready}
    changing = [f for f in waiting if ident(f) not in done]
    return Poll(ready, changing, lag_seconds(waiting, wall_now, since))
