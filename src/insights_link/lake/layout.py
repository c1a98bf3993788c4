"""Where things live below ``LAKE_ROOT/<DataSource>/``: file names, data folders, bookkeeping.

One module so that workers (which write staging) and the commit (which moves files into place)
agree on every path::

    <Table>/FullData/yyyy/mm/dd/<Table>_yyyymmdd_<run>_<nnn>.parquet
    <Table>/IncrementalData/yyyy/mm/dd/hh/Upserts/<Table>_yyyymmdd_<run>_<nnn>.parquet
    <Table>/IncrementalData/yyyy/mm/dd/hh/Deletes/<Table>_yyyymmdd_<run>_<nnn>.parquet  (forget)
    <Table>/ActivityDate=yyyy-mm-dd/<Table>_yyyymmdd_<run>_<nnn>.parquet   (Delta tables)
    <Table>/_delta_log/                     a Delta table's log (Delta tables)
    _staging/<run>/...                      a run's work in progress
    _deadletter/<run>.jsonl.gz              rejected records of committed runs
    _runs/<run>.json                        run reports
    _state/runs_index.json                  cache: which inputs committed runs processed
    _state/abandoned.json                   files of rolled-back runs, swept for a day
    _lock                                   the data source's lock (local lakes; a leased blob on Azure)
"""

from __future__ import annotations

from datetime import UTC, datetime

from insights_link.core.paths import join


def staging_key(data_source: str, run_id: str, *parts: str) -> str:
    """A key in a run's staging folder (workers and the commit use the same)."""
    return join(data_source, "_staging", run_id, *parts)


INDEX_FILE = "runs_index.json"
COMMIT_RECORD = "commit.json"  # in a run's staging: where its files go, written before the moves


def input_key(table: str, fingerprint: str) -> str:
    """Key of the committed-inputs index: an input counts as committed per activity table."""
    return f"{table}\t{fingerprint}"


LAYOUTS = ("full", "incremental")


def partition_file_name(table: str, date: str, run_id: str, index: int) -> str:
    """A Parquet file's name: table, event date, run, piece (``WebLog_20240501_<run>_000.parquet``)."""
    return f"{table}_{date.replace('-', '')}_{run_id}_{index:03d}.parquet"


def full_location(table: str, date: str, name: str) -> str:
    """``WebLog/FullData/2024/05/01/<name>``: initial data, foldered by event date."""
    year, month, day = date.split("-")
    return f"{table}/FullData/{year}/{month}/{day}/{name}"


def incremental_location(table: str, committed: datetime, name: str) -> str:
    """``WebLog/IncrementalData/2026/11/28/14/Upserts/<name>``: foldered by the UTC hour of the
    commit, as Customer Insights' incremental refresh expects (it reads an hour once it ended)."""
    return f"{table}/IncrementalData/{committed.astimezone(UTC):%Y/%m/%d/%H}/Upserts/{name}"


def deletes_location(table: str, committed: datetime, name: str) -> str:
    """``WebLog/IncrementalData/2026/11/28/14/Deletes/<name>``: the keys a run removed (forget),
    in the hour folder of its commit, for Customer Insights' incremental refresh."""
    return f"{table}/IncrementalData/{committed.astimezone(UTC):%Y/%m/%d/%H}/Deletes/{name}"


def run_of(location: str) -> str | None:
    """The run id in a partition file's name (``<Table>_<yyyymmdd>_<run>_<nnn>.parquet``)."""
    table = location.split("/", 1)[0]
    name = location.rsplit("/", 1)[-1]
    stem = name[len(table) + 10 :].removesuffix(".parquet")  # skip "<Table>_<yyyymmdd>_"
    return stem.rsplit("_", 1)[0] if name.startswith(table + "_") and "_" in stem else None


def date_of_partition(location: str) -> str | None:
    """The event date a partition file holds: from a Delta partition folder
    (``WebLog/ActivityDate=2024-05-01/...``), else from its name (``WebLog_20240501_...``)."""
    for part in location.split("/")[1:-1]:
        if part.startswith("ActivityDate="):
            return part.split("=", 1)[1]
    table = location.split("/", 1)[0]
    name = location.rsplit("/", 1)[-1]
    digits = name[len(table) + 1 : len(table) + 9]
    if name.startswith(table + "_") and digits.isdigit():
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
    return None
