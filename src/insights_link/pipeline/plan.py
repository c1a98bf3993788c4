"""Planning a run: which inputs to process for which activity, and what the lake already holds.

Pure decisions over the resolved inputs and the committed state (no Beam, no writes).
"""

from __future__ import annotations

from insights_link.core.blocks import InputFile
from insights_link.lake.commit import Lake, LakeState
from insights_link.lake.layout import input_key


def fingerprint(f: InputFile) -> str:
    """An input's identity across runs: location, size, modification time and the storage's
    version (local inode and ctime, Azure ETag), which changes on every rewrite even when size
    and mtime are restored (``cp -p``, ``touch -r``)."""
    return f"{f.source}|{f.size}|{f.modified}|{f.version}"


def plan_inputs(
    files: list[InputFile], wanted: dict[tuple[str, str], tuple[str, ...]], state: LakeState, reprocess: bool
) -> tuple[list[tuple[InputFile, tuple[str, ...]]], list[dict]]:
    """Which inputs to process for which activities; the report's ``inputs`` entries.

    A file is skipped for an activity that already committed it (same path, size, modified time and storage version: local inode and change time, the blob's ETag), so an activity added to a job later still reads the files others have committed.
    """
    work, entries = [], []
    for f in files:
        activities = wanted[(f.root, f.key)]
        earlier = {a: state.committed_inputs.get(input_key(a, fingerprint(f))) for a in activities}
        todo = tuple(a for a in activities if reprocess or not earlier[a])
        entry = {
            "source": f.source,
            "format": f.fmt,
            "size": f.size,
            "modified": f.modified,
            "fingerprint": fingerprint(f),
            "activities": list(todo),
        }
        if todo:
            work.append((f, todo))
            entries.append(entry | {"status": "processed"})
        else:
            entries.append(entry | {"status": "skipped", "committed_by": sorted(set(earlier.values()))[0]})
    return work, entries


def existing_partitions(lake: Lake, state: LakeState, tables: list[str]) -> dict[tuple[str, str], list[str]]:
    """Committed files per (table, date), as storage keys, for dedupe against earlier runs."""
    return {
        (table, day): [lake.key(loc) for loc in locations]
        for table in tables
        for day, locations in state.partitions_by_date(table).items()
    }
