"""Convert a data source between the CDM folder and Delta tables, in place and without copying.

Both formats reference the same Parquet files (one UTC event date per file), so a conversion
writes only metadata: CDM -> Delta creates one Delta table per entity whose log adds the files
where they are (``WebLog/FullData/2024/05/01/x.parquet`` becomes ``FullData/2024/05/01/x.parquet``
with partition value ``ActivityDate=2024-05-01``); Delta -> CDM writes entity documents and a
manifest listing each table's current files. Under the data source's lock, every write fenced.

The switch is one step: to Delta, removing the manifest (after every table's log is written); to
CDM, writing the manifest (listing every table). While both a manifest and Delta logs exist, the
manifest is what counts, runs refuse to write, and running the conversion again completes it:
tables or documents it already wrote are recognized, never written twice, and what is left of the
old format (entity documents, logs, even a log removed half way) is removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from insights_link.checkpoints import checkpoint
from insights_link.errors import InsightsLinkError
from insights_link.lake.cdm import CDM_TYPES, MANIFEST_FILE, CdmFormat, manifest_document
from insights_link.lake.commit import Lake
from insights_link.lake.delta import LOG_FOLDER, DeltaFormat
from insights_link.lake.layout import date_of_partition
from insights_link.lake.maintenance import check_run_id
from insights_link.lake.tableformat import TableState
from insights_link.storage import PreconditionFailed

logger = logging.getLogger(__name__)


class ConvertError(InsightsLinkError, RuntimeError):
    """The data source can't be converted as it is; the message says what stops it."""


def convert(lake: Lake, target: str, run_id: str, clock: Callable[[], datetime]) -> dict:
    """Convert ``lake``'s data source (opened in its *current* format, lock held by the caller)
    to ``target`` ("cdm" or "delta"); returns the report (also written to ``_runs/``)."""
    started = clock()
    check_run_id(lake, run_id)
    lake.recover()
    lake.sweep_abandoned()
    source = lake.snapshot()
    if not source.tables:
        raise ConvertError(f"data source {lake.data_source!r} holds no {lake.format.name} tables to convert")
    if target == "delta" and lake.format.name == "delta":  # the switch happened: finish it
        tables = _drop_cdm_documents(lake, source.tables)
    elif target == "delta":
        tables = _to_delta(lake, source.tables)
    elif lake.format.name == "cdm":  # the manifest is written: finish the switch
        tables = _drop_delta_logs(lake, source.tables)
    else:
        tables = _to_cdm(lake, source.tables)
    report = {
        "run_id": run_id,
        "status": "committed",
        "operation": "convert",
        "from": "cdm" if target == "delta" else "delta",
        "to": target,
        "data_source": lake.data_source,
        "output": lake.describe(),
        "tables": {name: {"files": len(t.data_locations())} for name, t in sorted(tables.items())},
        "started_at": _iso(started),
        "finished_at": _iso(clock()),
    }
    deletes = sorted(loc for t in tables.values() for loc in t.deletes)
    if target == "delta" and deletes:  # forget's Deletes files: no Delta meaning; vacuum takes them
        report["partitions_removed"] = deletes
    lake.check_lock()
    lake.storage.write_if(
        lake.key("_runs", f"{run_id}.json"),
        (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        None,
    )
    return report


def _to_delta(lake: Lake, tables: dict[str, TableState]) -> dict[str, TableState]:
    delta = DeltaFormat()
    existing = delta.read(lake.storage, lake.data_source)
    for name, state in sorted(tables.items()):
        columns = CdmFormat().columns(lake.storage, lake.data_source, name)
        files = []
        for location in state.data_locations():
            date = date_of_partition(location)
            if date is None:
                raise ConvertError(
                    f"{location} is not named by its event date; only files this tool wrote "
                    "(one UTC date per file) can be converted in place"
                )
            files.append({"location": location, "table": name, "date": date, "rows": None})
        wanted = {loc.split("/", 1)[1] for loc in state.data_locations()}
        if name in existing.tables:
            held = {loc.split("/", 1)[1] for loc in existing.tables[name].all_locations()}
            if held != wanted:
                raise ConvertError(
                    f"table {name!r} already has a Delta log that lists other files than the "
                    "manifest; move it away before converting"
                )
            logger.info("table %s: Delta log already written by an earlier conversion", name)
            continue
        lake.check_lock()
        logger.info("table %s: writing a Delta log over %d existing file(s)", name, len(files))
        try:
            delta.create_with(lake.storage, lake.data_source, name, columns, files, lake.check_lock)
        except PreconditionFailed as exc:
            raise ConvertError(f"{exc}; nothing was switched (run the conversion again)") from exc
    # the switch: the data source stops being a CDM folder
    checkpoint("before_format_switch")
    lake.check_lock()
    lake.storage.delete(lake.key(MANIFEST_FILE))
    return _drop_cdm_documents(lake, tables)


def _drop_cdm_documents(lake: Lake, tables: dict[str, TableState]) -> dict[str, TableState]:
    """After the switch to Delta: remove the entity documents the manifest used."""
    for name in sorted(tables):
        checkpoint("convert_before_document_removal")
        lake.check_lock()
        lake.storage.delete(lake.key(f"{name}.cdm.json"))
    return tables


def _drop_delta_logs(lake: Lake, tables: dict[str, TableState]) -> dict[str, TableState]:
    """After the switch to CDM (the manifest lists every table): remove the tables' Delta logs.
    A log removed half way is no problem: from here on the manifest is what counts."""
    for name in sorted(tables):
        checkpoint("convert_before_log_removal")
        lake.check_lock()
        lake.storage.delete_prefix(lake.key(name, LOG_FOLDER))
    return tables


def _to_cdm(lake: Lake, tables: dict[str, TableState]) -> dict[str, TableState]:
    cdm = CdmFormat()
    snapshot = lake.snapshot()
    documents = {}
    for name in sorted(tables):
        columns = DeltaFormat().columns(lake.storage, lake.data_source, name)
        unsupported = [c.name for c in columns if c.arrow_type not in CDM_TYPES.values()]
        if unsupported:
            raise ConvertError(
                f"table {name!r} has columns CDM folders of this tool can't hold: {unsupported}"
            )
        documents.update(cdm.table_documents({name: columns}))
    current, version = lake.storage.read_versioned(lake.key(MANIFEST_FILE))
    manifest = manifest_document(
        lake.data_source, {n: TableState(n, list(t.partitions)) for n, t in tables.items()}
    )
    for relative, doc in sorted(documents.items()):
        lake.check_lock()
        lake.storage.write_bytes(lake.key(relative), doc)
    if current != manifest:
        lake.check_lock()
        try:
            lake.storage.write_if(lake.key(MANIFEST_FILE), manifest, version)
        except PreconditionFailed as exc:
            raise ConvertError(f"the manifest changed meanwhile ({exc}); run the conversion again") from exc
    # the switch happened with the manifest write: the data source is a CDM folder now, whose
    # tables were the Delta tables (their logs go; the data files stay, listed by the manifest)
    checkpoint("before_format_switch")
    _drop_delta_logs(lake, snapshot.tables)
    return tables


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
