"""The Beam wiring: one composite PTransform per stage, DoFns as thin adapters.

    InputFile -> ReadRawBlocks -> ValidateAndMap -+-> activities -> DedupeActivities -> WriteActivityFiles -+
                                                   +-> dead letters -> WriteDeadLetters -------------------+-> SummarizeRun
                                                   +-> tallies --------------------------------------------+

Records travel as Arrow tables keyed by (table, UTC date). Every outcome has a Metrics counter.
Workers write only below the run's ``_staging/<run>/`` folder; the launcher commits afterwards.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from insights_link.batch import ActivitySpec, dedupe, file_slices, process_block, split_by_date
from insights_link.contract import REASONS
from insights_link.inputs import InputFile, RawBlock, read_blocks
from insights_link.lake import encode_dead_letters, failpoint, partition_file
from insights_link.parquet_io import read_ids, write_parquet
from insights_link.storage import join, open_storage

logger = logging.getLogger(__name__)

NAMESPACE = "insights_link"
DEAD_LETTERS = "dead_letters"
TALLIES = "tallies"


def empty_outcome() -> dict:
    """The run's merged bookkeeping: counts and the staged files."""
    return {
        "records_read": 0,
        "activities_in": 0,
        "activities_written": 0,
        "duplicates_dropped": 0,
        "rejected": {reason: 0 for reason in REASONS},
        "files": [],
        "dead_letter_files": [],
    }


class MergeOutcomes(beam.CombineFn):
    """Adds counts and concatenates file lists; the result is sorted (order-independent)."""

    def create_accumulator(self):
        return empty_outcome()

    def add_input(self, acc, item):
        for name in ("records_read", "activities_in", "activities_written", "duplicates_dropped"):
            acc[name] += item.get(name, 0)
        for reason, count in item.get("rejected", {}).items():
            acc["rejected"][reason] = acc["rejected"].get(reason, 0) + count
        acc["files"].extend(item.get("files", []))
        acc["dead_letter_files"].extend(item.get("dead_letter_files", []))
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc):
        acc["files"].sort(key=lambda f: f["location"])
        acc["dead_letter_files"].sort()
        return acc


# -- DoFns (thin adapters over the pure functions) ---------------------------------------------


class ReadBlocksFn(beam.DoFn):
    def __init__(self, block_records: int) -> None:
        self.block_records = block_records
        self.files_read = Metrics.counter(NAMESPACE, "files_read")

    def process(self, f: InputFile):
        count = 0
        for block in read_blocks(f, self.block_records):
            count += len(block.payloads)
            yield block
        self.files_read.inc()
        logger.info("read %s: %d records", f.source, count)


class ValidateBlockFn(beam.DoFn):
    def __init__(self, spec: ActivitySpec) -> None:
        self.spec = spec
        self.read = Metrics.counter(NAMESPACE, "records_read")
        self.valid = Metrics.counter(NAMESPACE, "records_valid")
        self.rejected = {r: Metrics.counter(NAMESPACE, f"rejected_{r}") for r in REASONS}

    def process(self, block: RawBlock):
        result = process_block(block, self.spec)
        rejected = result.rejected()
        self.read.inc(result.records_read)
        self.valid.inc(result.table.num_rows)
        for reason, count in rejected.items():
            self.rejected[reason].inc(count)
        yield pvalue.TaggedOutput(TALLIES, {
            "records_read": result.records_read,
            "activities_in": result.table.num_rows,
            "rejected": dict(rejected),
        })
        if result.dead_letters:
            # Encoded here: a payload may hold invalid UTF-8 that no Beam coder carries as text.
            encoded = encode_dead_letters(result.dead_letters)
            yield pvalue.TaggedOutput(DEAD_LETTERS, (block.rank, block.index, len(result.dead_letters), encoded))
        for day, rows in split_by_date(result.table).items():
            yield (self.spec.name, day), rows


class DedupeFn(beam.DoFn):
    """Dedupe one (table, date) group within the run and against that date's committed files."""

    def __init__(self, lake_url: str, existing: dict[tuple[str, str], list[str]]) -> None:
        self.lake_url = lake_url
        self.existing = existing
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates_dropped")

    def setup(self):
        self.storage = open_storage(self.lake_url)

    def process(self, element):
        key, tables = element
        keys = self.existing.get(key, [])
        existing = read_ids(self.storage, keys) if keys else None
        rows, dropped = dedupe(list(tables), existing)
        self.duplicates.inc(dropped)
        yield pvalue.TaggedOutput(TALLIES, {"duplicates_dropped": dropped})
        yield key, rows


class WriteParquetFn(beam.DoFn):
    def __init__(self, lake_url: str, data_source: str, spec: ActivitySpec, max_rows: int) -> None:
        self.lake_url = lake_url
        self.data_source = data_source
        self.spec = spec
        self.max_rows = max_rows
        self.written = Metrics.counter(NAMESPACE, "activities_written")
        self.files = Metrics.counter(NAMESPACE, "files_written")

    def setup(self):
        self.storage = open_storage(self.lake_url)
        self.schema = self.spec.schema()

    def process(self, element):
        (table_name, day), rows = element
        files, written = [], 0
        for index, piece in enumerate(file_slices(rows, self.max_rows)):
            location = partition_file(table_name, day, self.spec.run_id, index)
            staged = join(self.data_source, "_staging", self.spec.run_id, "data", location)
            written += write_parquet(self.storage, staged, piece, self.schema)
            failpoint("after_staged_file")
            files.append({"staged": staged, "location": location, "table": table_name,
                          "date": day, "rows": piece.num_rows})
        self.written.inc(written)
        self.files.inc(len(files))
        yield {"activities_written": written, "files": files}


class WriteDeadLettersFn(beam.DoFn):
    def __init__(self, lake_url: str, data_source: str, run_id: str) -> None:
        self.lake_url = lake_url
        self.data_source = data_source
        self.run_id = run_id
        self.dead_lettered = Metrics.counter(NAMESPACE, "dead_lettered")

    def setup(self):
        self.storage = open_storage(self.lake_url)

    def process(self, element):
        rank, index, count, encoded = element
        key = join(self.data_source, "_staging", self.run_id, "deadletter",
                   f"{rank:06d}_{index:06d}.jsonl.gz")
        self.storage.write_bytes(key, gzip.compress(encoded, compresslevel=1, mtime=0))
        self.dead_lettered.inc(count)
        yield {"dead_letter_files": [key]}


class WriteOutcomeFn(beam.DoFn):
    def __init__(self, lake_url: str, key: str) -> None:
        self.lake_url = lake_url
        self.key = key

    def process(self, outcome: dict):
        storage = open_storage(self.lake_url)
        storage.write_bytes(self.key, json.dumps(outcome, sort_keys=True).encode("utf-8"))
        yield outcome


# -- Composite transforms -----------------------------------------------------------------------


class ReadRawBlocks(beam.PTransform):
    """InputFile -> RawBlock, files spread over workers first."""

    def __init__(self, block_records: int) -> None:
        super().__init__()
        self.block_records = block_records

    def expand(self, files):
        return (
            files
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadBlocks" >> beam.ParDo(ReadBlocksFn(self.block_records))
        )


class ValidateAndMap(beam.PTransform):
    """RawBlock -> ((table, date), Arrow rows) plus tagged dead letters and tallies."""

    def __init__(self, spec: ActivitySpec) -> None:
        super().__init__()
        self.spec = spec

    def expand(self, blocks):
        return blocks | "CheckAndMap" >> beam.ParDo(ValidateBlockFn(self.spec)).with_outputs(
            DEAD_LETTERS, TALLIES, main="activities"
        )


class DedupeActivities(beam.PTransform):
    """Group rows by (table, date) and keep one row per ActivityId, never one already committed."""

    def __init__(self, lake_url: str, existing: dict[tuple[str, str], list[str]]) -> None:
        super().__init__()
        self.lake_url = lake_url
        self.existing = existing

    def expand(self, keyed_rows):
        return (
            keyed_rows
            | "GroupByTableAndDate" >> beam.GroupByKey()
            | "DropDuplicates" >> beam.ParDo(DedupeFn(self.lake_url, self.existing)).with_outputs(
                TALLIES, main="rows"
            )
        )


class WriteActivityFiles(beam.PTransform):
    """Stage one Parquet file per (table, date) (more when a date exceeds the row cap)."""

    def __init__(self, lake_url: str, data_source: str, spec: ActivitySpec, max_rows: int) -> None:
        super().__init__()
        self.args = (lake_url, data_source, spec, max_rows)

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.ParDo(WriteParquetFn(*self.args))


class WriteDeadLetters(beam.PTransform):
    """Stage each block's rejected records as one gzip JSON-lines member."""

    def __init__(self, lake_url: str, data_source: str, run_id: str) -> None:
        super().__init__()
        self.args = (lake_url, data_source, run_id)

    def expand(self, dead_letters):
        return dead_letters | "WriteDeadLetterFiles" >> beam.ParDo(WriteDeadLettersFn(*self.args))


class SummarizeRun(beam.PTransform):
    """Merge every stage's outcome into the run's ``outcome.json`` in staging."""

    def __init__(self, lake_url: str, key: str) -> None:
        super().__init__()
        self.lake_url = lake_url
        self.key = key

    def expand(self, outcomes):
        return (
            outcomes
            | "FlattenOutcomes" >> beam.Flatten()
            | "MergeOutcomes" >> beam.CombineGlobally(MergeOutcomes())
            | "WriteOutcome" >> beam.ParDo(WriteOutcomeFn(self.lake_url, self.key))
        )


class ExportActivities(beam.PTransform):
    """The whole export for one activity table: input files -> staged outcome."""

    def __init__(self, spec: ActivitySpec, lake_url: str, data_source: str,
                 existing: dict[tuple[str, str], list[str]], block_records: int, max_rows: int) -> None:
        super().__init__()
        self.spec = spec
        self.lake_url = lake_url
        self.data_source = data_source
        self.existing = existing
        self.block_records = block_records
        self.max_rows = max_rows

    def expand(self, files):
        checked = files | "Read" >> ReadRawBlocks(self.block_records) | "Validate" >> ValidateAndMap(self.spec)
        deduped = checked.activities | "Dedupe" >> DedupeActivities(self.lake_url, self.existing)
        written = deduped.rows | "Write" >> WriteActivityFiles(
            self.lake_url, self.data_source, self.spec, self.max_rows)
        dead = checked[DEAD_LETTERS] | "DeadLetters" >> WriteDeadLetters(
            self.lake_url, self.data_source, self.spec.run_id)
        outcome_key = join(self.data_source, "_staging", self.spec.run_id, "outcome.json")
        return (checked[TALLIES], deduped[TALLIES], written, dead) | "Summarize" >> SummarizeRun(
            self.lake_url, outcome_key)


def counter_totals(result) -> Counter:
    """Committed Metrics counter values by name, for reports and tests."""
    totals: Counter = Counter()
    for counter in result.metrics().query()["counters"]:
        if counter.key.metric.namespace == NAMESPACE:
            totals[counter.key.metric.name] += counter.committed or counter.attempted or 0
    return totals
