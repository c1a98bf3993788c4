"""The Beam wiring: one composite PTransform per stage, DoFns as thin adapters.

    InputFile -> SplitFiles -> ReadRawBlocks -> ValidateAndMap -+-> activities -> DedupeActivities -> WriteActivityFiles -+
                                                   +-> dead letters -> WriteDeadLetters -------------------+-> SummarizeRun
                                                   +-> tallies --------------------------------------------+

Records travel as Arrow tables keyed by (table, UTC date). Every outcome has a Metrics counter.
A large JSON-lines file is cut into chunks at line boundaries (``--chunk-mb``); the chunks are
separate elements after a Reshuffle, so one big file spreads over a distributed runner's workers.

Stages with several outputs emit ``(tag, value)`` pairs on one output and split them with
FlatMaps (:class:`TaggedParDo`) instead of ``with_outputs``: Beam's DaskRunner hands every
consumer of a multi-output ParDo all of its outputs mixed (apache-beam 2.77).
Workers write only below the run's ``_staging/<run>/`` folder; the launcher commits afterwards.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from insights_link.checkpoints import checkpoint
from insights_link.core.batch import (
    POSITION,
    RANK,
    ActivitySpec,
    add_counts,
    dedupe,
    file_slices,
    keep_names,
    process_block,
    split_by_date,
    window_dates,
)
from insights_link.core.blocks import CHUNK_BLOCK_STRIDE, Chunk, RawBlock
from insights_link.core.contract import REASONS
from insights_link.core.deadletters import dead_letter_key, encode_dead_letters
from insights_link.core.formats import chunkable, plan_chunks, read_blocks
from insights_link.lake.layout import partition_file_name, staging_key
from insights_link.lake.parquet import read_ids, read_pieces, write_parquet, write_piece
from insights_link.lifecycle import exit_with_launcher
from insights_link.storage import open_storage

logger = logging.getLogger(__name__)

NAMESPACE = "insights_link"
#: --chunk-mb's default in bytes (pipeline/spec.py DEFAULT_CHUNK_MB)
DEFAULT_CHUNK_BYTES = 64 << 20
DEAD_LETTERS = "dead_letters"
TALLIES = "tallies"


COUNTS = (
    "records_read",
    "activities_written",
    "duplicates_dropped",
    "filtered_out",
    "filtered_by_name",
    "dead_letters_already_recorded",
)
#: per-table tallies that are counts by name (not part of the report's balance): decoded records
#: holding each --property, and Signal.Name values seen (only with an event_names filter)
PRESENT = "properties_present"
NAMES_SEEN = "event_names_seen"


def block_name(index: int) -> str:
    """A block number as a name that sorts in file order: six digits as ever, and larger numbers
    (later chunks start at their byte offset) after ``~``, which sorts after every digit, with
    16 digits (any file size). Dead-letter members are published in name order, so this keeps
    them in file order."""
    return f"{index:06d}" if index < CHUNK_BLOCK_STRIDE else f"~{index:016d}"


def empty_counts() -> dict:
    """One activity table's counts."""
    return {name: 0 for name in COUNTS} | {"rejected": {reason: 0 for reason in REASONS}}


def empty_outcome() -> dict:
    """The run's merged bookkeeping: counts per table and the staged files."""
    return {"tables": {}, "files": [], "dead_letter_files": [], "unreadable_inputs": []}


class MergeOutcomes(beam.CombineFn):
    """Adds counts and concatenates file lists; the result is sorted (order-independent).

    Each input is a partial outcome: ``{"tables": {name: {count: n, "rejected": {...}}},
    "files": [...], "dead_letter_files": [...]}`` with any part missing. Signal.Name counts stay
    bounded (:func:`keep_names`); ``event_names`` (table -> its filter's names) are always kept.
    """

    def __init__(self, event_names: dict[str, tuple[str, ...]] | None = None) -> None:
        super().__init__()
        self.event_names = event_names or {}

    def create_accumulator(self):
        return empty_outcome()

    def add_input(self, acc, item):
        for table, counts in item.get("tables", {}).items():
            total = acc["tables"].setdefault(table, empty_counts())
            for name in COUNTS:
                total[name] += counts.get(name, 0)
            for reason, count in counts.get("rejected", {}).items():
                total["rejected"][reason] = total["rejected"].get(reason, 0) + count
            if PRESENT in counts:
                add_counts(total.setdefault(PRESENT, {}), counts[PRESENT])
            if NAMES_SEEN in counts:
                total[NAMES_SEEN] = keep_names(
                    add_counts(total.get(NAMES_SEEN, {}), counts[NAMES_SEEN]), self.event_names.get(table)
                )
        acc["files"].extend(item.get("files", []))
        acc["dead_letter_files"].extend(item.get("dead_letter_files", []))
        acc["unreadable_inputs"].extend(item.get("unreadable_inputs", []))
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc):
        acc["files"].sort(key=lambda f: f["staged"])
        acc["dead_letter_files"].sort()
        acc["unreadable_inputs"].sort(key=lambda u: (u["source"], u["position"]))
        return acc


# -- DoFns (thin adapters over the pure functions) ---------------------------------------------


class SplitFileFn(beam.DoFn):
    """(InputFile, activities) -> (InputFile, activities, Chunk or None): a plain JSON-lines file
    over ``chunk_bytes`` becomes its chunks (one read counting line ends); any other file one
    element (None: read it whole)."""

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.chunks = Metrics.counter(NAMESPACE, "chunks_planned")

    def setup(self):
        exit_with_launcher()

    def process(self, element: tuple):
        f, activities = element[0], element[1]
        if not chunkable(f, self.chunk_bytes):
            yield f, activities, None
            return
        # read as listed (its version checked): chunks planned on one version, read from another,
        # would give records wrong line numbers or lose and repeat them
        chunks = plan_chunks(
            f, lambda: open_storage(f.root).read_range(f.key, 0, f.size, f.version), self.chunk_bytes
        )
        logger.info("%s: %d chunk(s) of about %d bytes", f.source, len(chunks), self.chunk_bytes)
        self.chunks.inc(len(chunks))
        for chunk in chunks:
            yield f, activities, chunk if len(chunks) > 1 else None


class ReadBlocksFn(beam.DoFn):
    """(InputFile, activities, Chunk or None) -> RawBlock: the whole file, or one chunk of it
    (a ranged read) with the file's own line numbers."""

    def __init__(self, block_records: int) -> None:
        self.block_records = block_records
        self.files_read = Metrics.counter(NAMESPACE, "files_read")

    def setup(self):
        exit_with_launcher()

    def process(self, element: tuple):
        f, activities = element[0], element[1]
        chunk: Chunk | None = element[2] if len(element) > 2 else None
        if chunk is None:
            opener = lambda: open_storage(f.root).open_read(f.key)  # noqa: E731
        else:
            # conditional on the version the chunks were planned on: a changed file is a clear
            # unreadable-input error (named in the report), never shifted line numbers
            opener = lambda: open_storage(f.root).read_range(f.key, chunk.start, chunk.end, f.version)  # noqa: E731
        count = 0
        for block in read_blocks(f, opener, self.block_records, chunk):
            block.activities = activities
            count += len(block.payloads)
            logger.debug("reading %s: %d records so far", f.source, count)
            checkpoint("block_read", source=f.source, records=len(block.payloads))
            yield block
        if chunk is None or chunk.index == 0:
            self.files_read.inc()  # once per file
        if chunk is None or chunk.end >= f.size:  # once per file (progress showed "21/1 files")
            checkpoint("file_read", source=f.source, size=f.size)
        where = f" (chunk {chunk.index}, bytes {chunk.start}-{chunk.end})" if chunk else ""
        logger.info("read %s%s: %d records", f.source, where, count)


class ValidateBlockFn(beam.DoFn):
    """Check one block for every activity that reads its file.

    A record that can't be decoded is dead-lettered once, whatever the number of activities
    (each activity still counts it as rejected, so every activity's counts balance).
    """

    def __init__(self, specs: dict[str, ActivitySpec], recorded: frozenset[tuple] = frozenset()) -> None:
        self.specs = specs
        self.recorded = recorded  # dead letters committed runs already wrote (dead_letter_key)
        self.already = Metrics.counter(NAMESPACE, "dead_letters_already_recorded")
        self.read = Metrics.counter(NAMESPACE, "records_read")
        self.valid = Metrics.counter(NAMESPACE, "records_valid")
        self.filtered = Metrics.counter(NAMESPACE, "filtered_out")
        self.rejected = {r: Metrics.counter(NAMESPACE, f"rejected_{r}") for r in REASONS}
        self.unreadable = Metrics.counter(NAMESPACE, "unreadable_inputs")

    def process(self, block: RawBlock):
        tables: dict[str, dict] = {}
        dead: list[dict] = []
        seen_malformed: set[int] = set()
        several = len(block.activities) > 1
        for name in block.activities:
            spec = self.specs[name]
            result = process_block(block, spec)
            rejected = result.rejected()
            self.read.inc(result.records_read)
            self.valid.inc(result.table.num_rows)
            self.filtered.inc(result.filtered_out)
            for reason, count in rejected.items():
                self.rejected[reason].inc(count)
            tables[name] = {
                "records_read": result.records_read,
                "filtered_out": result.filtered_out,
                "filtered_by_name": result.filtered_out - result.outside_window,
                "rejected": dict(rejected),
                "dead_letters_already_recorded": 0,
                PRESENT: dict(result.present),
            }
            if spec.event_names is not None:
                tables[name][NAMES_SEEN] = dict(result.names)
            for letter in result.dead_letters:
                if letter["reason"] == "malformed":
                    if letter["position"] in seen_malformed:
                        continue
                    seen_malformed.add(letter["position"])
                elif several:
                    letter = dict(letter, activity=name)
                if self.recorded and dead_letter_key(letter) in self.recorded:
                    tables[name]["dead_letters_already_recorded"] += 1
                    self.already.inc()
                    continue
                dead.append(letter)
            for day, rows in split_by_date(result.table).items():
                yield (name, day), (block.rank, block.index, rows)
        tally: dict = {"tables": tables}
        if block.unreadable:  # named in the report and summary, not only counted as malformed
            position, detail = block.unreadable
            tally["unreadable_inputs"] = [{"source": block.source, "position": position, "detail": detail}]
            self.unreadable.inc()
        yield pvalue.TaggedOutput(TALLIES, tally)
        if dead:
            # Encoded here: a payload may hold invalid UTF-8 that no Beam coder carries as text.
            yield pvalue.TaggedOutput(
                DEAD_LETTERS, (block.rank, block.index, len(dead), encode_dead_letters(dead))
            )


class SpillPieceFn(beam.DoFn):
    """Write one block's rows of one (table, date) to staging; pass on a small reference.

    Keeps whole rows out of the shuffle: runners hold a GroupByKey's input in memory (or ship it
    between workers), so carrying references makes memory flat in the input's size.
    """

    def __init__(self, lake_url: str, data_source: str, run_id: str) -> None:
        self.lake_url = lake_url
        self.data_source = data_source
        self.run_id = run_id

    def setup(self):
        exit_with_launcher()
        self.storage = open_storage(self.lake_url)

    def process(self, element):
        (table_name, day), (rank, index, rows) = element
        key = staging_key(
            self.data_source, self.run_id, "pieces", table_name, day, f"{rank:06d}_{block_name(index)}.arrow"
        )
        write_piece(self.storage, key, rows)
        yield (table_name, day), key


class DedupeFn(beam.DoFn):
    """Read one (table, date) group's pieces; dedupe within the run and against the committed
    ids of the dates within ``window_days`` (``--dedupe-window-days``), and against this run's
    own rows of those other dates (the earliest copy in input order wins)."""

    def __init__(
        self,
        lake_url: str,
        existing: dict[tuple[str, str], list[str]],
        existing_url: str | None = None,
        data_source: str = "",
        run_id: str = "",
        window_days: int = 0,
    ) -> None:
        self.lake_url = lake_url
        self.existing = existing
        self.existing_url = existing_url or lake_url  # where committed files live (dry run: not staging)
        self.data_source = data_source
        self.run_id = run_id
        self.window_days = window_days
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates_dropped")

    def setup(self):
        exit_with_launcher()
        self.storage = open_storage(self.lake_url)
        self.committed = (
            self.storage if self.existing_url == self.lake_url else open_storage(self.existing_url)
        )

    def process(self, element):
        (table, day), piece_keys = element
        tables = read_pieces(self.storage, sorted(piece_keys))
        dates = window_dates(day, self.window_days)
        committed = [key for d in dates for key in self.existing.get((table, d), [])]
        existing = read_ids(self.committed, committed) if committed else None
        rows, dropped = dedupe(tables, existing, self._rivals(table, day, dates))
        self.duplicates.inc(dropped)
        key = (table, day)
        yield pvalue.TaggedOutput(TALLIES, {"tables": {key[0]: {"duplicates_dropped": dropped}}})
        yield key, rows

    def _rivals(self, table: str, day: str, dates: list[str]) -> pa.Table | None:
        """This run's rows of ``table`` on the other dates of the window (id and input order
        only). Every piece is written before any group is deduplicated (the GroupByKey is a
        barrier), so listing the staging folder sees them all."""
        if not self.window_days:
            return None
        folder = staging_key(self.data_source, self.run_id, "pieces", table)
        others = sorted(set(self.storage.folders(folder)) & set(dates) - {day})
        keys = [o.key for d in others for o in self.storage.list(f"{folder}/{d}")]
        pieces = [t.select(["ActivityId", RANK, POSITION]) for t in read_pieces(self.storage, sorted(keys))]
        return pa.concat_tables(pieces) if pieces else None


class WriteParquetFn(beam.DoFn):
    """Stage a (table, date) group as Parquet; the commit decides the final location."""

    def __init__(
        self, lake_url: str, data_source: str, specs: dict[str, ActivitySpec], max_rows: int
    ) -> None:
        self.lake_url = lake_url
        self.data_source = data_source
        self.specs = specs
        self.max_rows = max_rows
        self.written = Metrics.counter(NAMESPACE, "activities_written")
        self.files = Metrics.counter(NAMESPACE, "files_written")

    def setup(self):
        exit_with_launcher()
        self.storage = open_storage(self.lake_url)
        self.schemas = {name: spec.schema() for name, spec in self.specs.items()}

    def process(self, element):
        (table_name, day), rows = element
        spec = self.specs[table_name]
        files, written = [], 0
        for index, piece in enumerate(file_slices(rows, self.max_rows)):
            name = partition_file_name(table_name, day, spec.run_id, index)
            staged = staging_key(self.data_source, spec.run_id, "data", table_name, name)
            written += write_parquet(self.storage, staged, piece, self.schemas[table_name])
            checkpoint("after_staged_file")
            files.append(
                {"staged": staged, "name": name, "table": table_name, "date": day, "rows": piece.num_rows}
            )
        self.written.inc(written)
        self.files.inc(len(files))
        yield {"tables": {table_name: {"activities_written": written}}, "files": files}


class WriteDeadLettersFn(beam.DoFn):
    def __init__(self, lake_url: str, data_source: str, run_id: str) -> None:
        self.lake_url = lake_url
        self.data_source = data_source
        self.run_id = run_id
        self.dead_lettered = Metrics.counter(NAMESPACE, "dead_lettered")

    def setup(self):
        exit_with_launcher()
        self.storage = open_storage(self.lake_url)

    def process(self, element):
        rank, index, count, encoded = element
        key = staging_key(
            self.data_source, self.run_id, "deadletter", f"{rank:06d}_{block_name(index)}.jsonl.gz"
        )
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
    """(InputFile, activity names) -> RawBlock: files spread over workers, large JSON-lines
    files cut into chunks there, and the chunks spread again (each one a separate element)."""

    def __init__(self, block_records: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        super().__init__()
        self.block_records = block_records
        self.chunk_bytes = chunk_bytes

    def expand(self, files):
        return (
            files
            | "SpreadFiles" >> beam.Reshuffle()
            | "SplitFiles" >> beam.ParDo(SplitFileFn(self.chunk_bytes))
            | "SpreadChunks" >> beam.Reshuffle()
            | "ReadBlocks" >> beam.ParDo(ReadBlocksFn(self.block_records))
        )


MAIN = "main"


class _Tagging(beam.DoFn):
    """Runs ``fn`` and emits each output as ``(tag, value)`` on the main output (MAIN untagged).

    ``fn``'s lifecycle methods are forwarded; its ``process`` takes the element only (no DoFn
    parameters), and what its ``finish_bundle`` emits must be ``WindowedValue`` s, as Beam requires.
    """

    def __init__(self, fn: beam.DoFn) -> None:
        self.fn = fn

    def setup(self):
        self.fn.setup()

    def start_bundle(self):
        self.fn.start_bundle()

    def process(self, element):
        for out in self.fn.process(element) or ():
            if isinstance(out, pvalue.TaggedOutput):
                yield out.tag, out.value
            else:
                yield MAIN, out

    def finish_bundle(self):
        for out in self.fn.finish_bundle() or ():
            tag, value = (out.tag, out.value) if isinstance(out, pvalue.TaggedOutput) else (MAIN, out)
            yield WindowedValue((tag, value.value), value.timestamp, value.windows)

    def teardown(self):
        self.fn.teardown()


def _pick(item: tuple, tag: str) -> list:
    return [item[1]] if item[0] == tag else []


class TaggedOutputs(dict):
    """A stage's outputs by tag; ``outputs.name`` as with ``with_outputs(main=name)``."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TaggedParDo(beam.PTransform):
    """``ParDo(fn).with_outputs(*tags, main=main)`` that every runner splits correctly: ``fn``'s
    outputs travel as (tag, value) pairs and one FlatMap per tag picks its own (fused by runners
    that fuse; the DaskRunner needs it, see the module docstring)."""

    def __init__(self, fn: beam.DoFn, tags: tuple[str, ...], main: str) -> None:
        super().__init__()
        self.fn = fn
        self.tags = tags
        self.main = main

    def expand(self, pcoll):
        pairs = pcoll | "Run" >> beam.ParDo(_Tagging(self.fn))
        outputs = TaggedOutputs({self.main: pairs | f"Only_{self.main}" >> beam.FlatMap(_pick, MAIN)})
        for tag in self.tags:
            outputs[tag] = pairs | f"Only_{tag}" >> beam.FlatMap(_pick, tag)
        return outputs


class ValidateAndMap(beam.PTransform):
    """RawBlock -> ((table, date), Arrow rows) plus tagged dead letters and tallies."""

    def __init__(self, specs: dict[str, ActivitySpec], recorded: frozenset[tuple] = frozenset()) -> None:
        super().__init__()
        self.specs = specs
        self.recorded = recorded

    def expand(self, blocks):
        return blocks | "CheckAndMap" >> TaggedParDo(
            ValidateBlockFn(self.specs, self.recorded), (DEAD_LETTERS, TALLIES), main="activities"
        )


class DedupeActivities(beam.PTransform):
    """Group rows by (table, date) and keep one row per ActivityId, never one already committed
    on a date within the window, never a later copy of this run's own on another such date.

    Rows are spilled to staging per block first; only references go through the GroupByKey.
    """

    def __init__(
        self,
        lake_url: str,
        data_source: str,
        run_id: str,
        existing: dict[tuple[str, str], list[str]],
        existing_url: str | None = None,
        window_days: int = 0,
    ) -> None:
        super().__init__()
        self.lake_url = lake_url
        self.data_source = data_source
        self.run_id = run_id
        self.existing = existing
        self.existing_url = existing_url
        self.window_days = window_days

    def expand(self, keyed_rows):
        return (
            keyed_rows
            | "SpillPieces" >> beam.ParDo(SpillPieceFn(self.lake_url, self.data_source, self.run_id))
            | "GroupByTableAndDate" >> beam.GroupByKey()
            | "DropDuplicates"
            >> TaggedParDo(
                DedupeFn(
                    self.lake_url,
                    self.existing,
                    self.existing_url,
                    self.data_source,
                    self.run_id,
                    self.window_days,
                ),
                (TALLIES,),
                main="rows",
            )
        )


class WriteActivityFiles(beam.PTransform):
    """Stage one Parquet file per (table, date) (more when a date exceeds the row cap)."""

    def __init__(
        self, lake_url: str, data_source: str, specs: dict[str, ActivitySpec], max_rows: int
    ) -> None:
        super().__init__()
        self.args = (lake_url, data_source, specs, max_rows)

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

    def __init__(
        self, lake_url: str, key: str, event_names: dict[str, tuple[str, ...]] | None = None
    ) -> None:
        super().__init__()
        self.lake_url = lake_url
        self.key = key
        self.event_names = event_names

    def expand(self, outcomes):
        # one empty outcome always flows in, so the combine needs no default (a side input,
        # which the DaskRunner computes by re-running the graph) and an input without any
        # record still writes its outcome
        seed = outcomes[0].pipeline | "NoOutcome" >> beam.Create([{}])
        return (
            (*outcomes, seed)
            | "FlattenOutcomes" >> beam.Flatten()
            | "MergeOutcomes" >> beam.CombineGlobally(MergeOutcomes(self.event_names)).without_defaults()
            | "WriteOutcome" >> beam.ParDo(WriteOutcomeFn(self.lake_url, self.key))
        )


class ExportActivities(beam.PTransform):
    """The whole export: (input file, its activities) -> the staged run and its outcome.

    ``lake_url`` is where staging goes; ``existing_url`` where the committed files in
    ``existing`` live (default the same; a dry run stages into a temporary folder instead).
    """

    def __init__(
        self,
        specs: dict[str, ActivitySpec],
        run_id: str,
        lake_url: str,
        data_source: str,
        existing: dict[tuple[str, str], list[str]],
        block_records: int,
        max_rows: int,
        recorded: frozenset[tuple] = frozenset(),
        existing_url: str | None = None,
        window_days: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        self.chunk_bytes = chunk_bytes
        self.window_days = window_days
        self.existing_url = existing_url
        self.specs = specs
        self.recorded = recorded
        self.run_id = run_id
        self.lake_url = lake_url
        self.data_source = data_source
        self.existing = existing
        self.block_records = block_records
        self.max_rows = max_rows

    def expand(self, files):
        checked = (
            files
            | "Read" >> ReadRawBlocks(self.block_records, self.chunk_bytes)
            | "Validate" >> ValidateAndMap(self.specs, self.recorded)
        )
        deduped = checked.activities | "Dedupe" >> DedupeActivities(
            self.lake_url, self.data_source, self.run_id, self.existing, self.existing_url, self.window_days
        )
        written = deduped.rows | "Write" >> WriteActivityFiles(
            self.lake_url, self.data_source, self.specs, self.max_rows
        )
        dead = checked[DEAD_LETTERS] | "DeadLetters" >> WriteDeadLetters(
            self.lake_url, self.data_source, self.run_id
        )
        outcome_key = staging_key(self.data_source, self.run_id, "outcome.json")
        event_names = {name: spec.event_names for name, spec in self.specs.items() if spec.event_names}
        return (checked[TALLIES], deduped[TALLIES], written, dead) | "Summarize" >> SummarizeRun(
            self.lake_url, outcome_key, event_names
        )


def counter_totals(result) -> Counter:
    """Committed Metrics counter values by name, for reports and tests."""
    totals: Counter = Counter()
    try:
        counters = result.metrics().query()["counters"]
    except NotImplementedError:  # the DaskRunner collects no metrics (apache-beam 2.77)
        return totals
    for counter in counters:
        if counter.key.metric.namespace == NAMESPACE:
            totals[counter.key.metric.name] += counter.committed or counter.attempted or 0
    return totals
