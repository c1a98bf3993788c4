"""``--enrich``: the committed activity rows of a table joined with the shared dimensions and
segment memberships, as a Beam pipeline (CoGroupByKey on CustomerId = user key).

Each activity becomes one ``EnrichedActivities`` row: its own columns, then each shared
attribute (null when the activity's CustomerId has no profile), then ``Segments``: the sorted
list of the segments its customer belongs to (empty when none). One row per activity, so event
counts stay right; ``list_contains(Segments, 'X')`` (DuckDB), ``array_contains`` (Spark) or
expanding the list (Power BI) slices by segment. Workers write Parquet pieces into the run's
staging, per activity date; the commit moves them like an export's files.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import UTC

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from insights_link.core.contract import Column, columns_schema
from insights_link.errors import RunFailed
from insights_link.lake.parquet import read_committed, write_parquet

logger = logging.getLogger(__name__)

SEGMENTS = "Segments"
#: rows a worker buffers per activity date before it writes a piece
PIECE_ROWS = 200_000


def enriched_columns(activity: tuple[Column, ...], dimensions: tuple[Column, ...]) -> tuple[Column, ...]:
    """The activity's columns, the dimensions without their key, then ``Segments``."""
    extra = tuple(Column(c.name, c.arrow_type, c.cdm_type) for c in dimensions if not c.primary_key)
    return activity + extra + (Column(SEGMENTS, pa.list_(pa.string()), "list"),)


class _ReadActivities(beam.DoFn):
    """A committed activity file -> (CustomerId or "", row) pairs."""

    def __init__(self, url: str):
        self.url = url

    def setup(self):
        from insights_link.storage import open_storage

        self.storage = open_storage(self.url)

    def process(self, key: str):
        for row in read_committed(self.storage, key).to_pylist():
            yield row.get("CustomerId") or "", row


def _join(item, attributes: list[str]):
    """One customer's activities with its dimensions (first) and its segments."""
    _key, grouped = item
    dims = list(grouped["dimensions"])
    segments = sorted(set(grouped["segments"]))
    values = dims[0] if dims else {}
    for row in grouped["activities"]:
        out = dict(row)
        for name in attributes:
            out[name] = values.get(name)
        out[SEGMENTS] = segments
        yield out


class _WritePieces(beam.DoFn):
    """Buffer rows per UTC activity date; write each buffer as one Parquet piece in staging."""

    def __init__(self, url: str, prefix: str, schema: pa.Schema):
        self.url, self.prefix, self.schema = url, prefix, schema

    def setup(self):
        from insights_link.storage import open_storage

        self.storage = open_storage(self.url)

    def start_bundle(self):
        self.buffers = defaultdict(list)

    def process(self, row: dict):
        when = row.get("ActivityTime")
        day = when.astimezone(UTC).date().isoformat() if when else "1970-01-01"
        self.buffers[day].append(row)
        if len(self.buffers[day]) >= PIECE_ROWS:
            self._flush(day)

    def finish_bundle(self):
        for day in list(self.buffers):
            self._flush(day)

    def _flush(self, day: str) -> None:
        rows = self.buffers.pop(day, [])
        if rows:
            table = pa.Table.from_pylist(rows, schema=self.schema)
            write_parquet(self.storage, f"{self.prefix}/{day}/{uuid.uuid4().hex}.parquet", table, self.schema)


def run_enrichment(
    lake_url: str,
    activity_keys: list[str],
    dimensions: pa.Table,
    memberships: pa.Table,
    key: str,
    columns: tuple[Column, ...],
    staging_prefix: str,
) -> None:
    """Join the activity files ``activity_keys`` (keys below ``lake_url``) with ``dimensions``
    (keyed by ``key``) and ``memberships`` (``key``, Segment); write pieces below
    ``staging_prefix``/<date>/ with the explicit schema of ``columns``."""
    attributes = [n for n in dimensions.column_names if n != key]
    dims = [(row.pop(key), row) for row in dimensions.to_pylist()]
    segs = [(row[key], row["Segment"]) for row in memberships.to_pylist()]
    schema = columns_schema(columns)
    options = PipelineOptions([], runner="FnApiRunner")  # never sys.argv
    p = beam.Pipeline(options=options)
    activities = (
        p
        | "ActivityFiles" >> beam.Create(sorted(activity_keys))
        | "ReadActivities" >> beam.ParDo(_ReadActivities(lake_url))
    )
    dimension_rows = p | "Dimensions" >> beam.Create(dims)
    segment_rows = p | "Memberships" >> beam.Create(segs)
    _ = (
        {"activities": activities, "dimensions": dimension_rows, "segments": segment_rows}
        | "ByCustomer" >> beam.CoGroupByKey()
        | "Join" >> beam.FlatMap(_join, attributes)
        | "WritePieces" >> beam.ParDo(_WritePieces(lake_url, staging_prefix, schema))
    )
    state = p.run().wait_until_finish()
    if state not in (None, "DONE"):
        raise RunFailed(f"the enrichment pipeline ended in state {state}")
