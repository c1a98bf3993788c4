"""Each composite transform under Beam's TestPipeline, with its Metrics counters asserted."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from conftest import event, write_jsonl
from insights_link.core.batch import ActivitySpec, process_block_reference
from insights_link.core.blocks import RawBlock
from insights_link.pipeline.graph import (
    DEAD_LETTERS,
    TALLIES,
    DedupeActivities,
    MergeOutcomes,
    ReadRawBlocks,
    ValidateAndMap,
)
from insights_link.storage.resolve import resolve_inputs

SPEC = ActivitySpec("WebLog", "WebLog", (), "run1", datetime(2026, 1, 1, tzinfo=UTC))
OPTIONS = PipelineOptions(["--runner=FnApiRunner"])


def _counter(result, name):
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


def test_read_raw_blocks_splits_files_into_blocks(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [event(str(i)) for i in range(5)])
    write_jsonl(tmp_path / "b.jsonl", [event("x"), "", event("y")])
    files = resolve_inputs([str(tmp_path)]).files
    p = TestPipeline(options=OPTIONS)
    blocks = p | beam.Create([(f, ("WebLog",)) for f in files]) | ReadRawBlocks(block_records=2)
    summary = blocks | beam.Map(lambda b: (b.source.rsplit("/", 1)[1], b.index, b.positions))
    assert_that(
        summary,
        equal_to(
            [("a.jsonl", 0, [1, 2]), ("a.jsonl", 1, [3, 4]), ("a.jsonl", 2, [5]), ("b.jsonl", 0, [1, 3])]
        ),
    )
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "files_read") == 2


def _block(records, rank=0, index=0):
    lines = [(r if isinstance(r, str) else json.dumps(r)).encode() for r in records]
    return RawBlock(
        "mem.jsonl", rank, index, "jsonl", list(range(1, len(lines) + 1)), lines, activities=("WebLog",)
    )


def test_validate_and_map_tags_dead_letters_and_keys_rows_by_date():
    block = _block([event("a"), event("b", ts="2024-05-02T00:00:00Z"), "nope", event("c", uri="x")])
    p = TestPipeline(options=OPTIONS)
    out = p | beam.Create([block]) | ValidateAndMap({"WebLog": SPEC})
    keyed = out.activities | beam.Map(lambda kv: (kv[0], kv[1][2]["ActivityId"].to_pylist()))
    assert_that(
        keyed, equal_to([(("WebLog", "2024-05-01"), ["a"]), (("WebLog", "2024-05-02"), ["b"])]), label="rows"
    )
    reasons = out[DEAD_LETTERS] | beam.FlatMap(
        lambda t: [(d["reason"], d["position"]) for d in map(json.loads, t[3].splitlines())]
    )
    assert_that(reasons, equal_to([("malformed", 3), ("invalid_uri", 4)]), label="dead")
    read = out[TALLIES] | beam.Map(lambda t: t["tables"]["WebLog"]["records_read"])
    assert_that(read, equal_to([4]), label="tallies")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "records_read") == 4
    assert _counter(result, "records_valid") == 2
    assert _counter(result, "rejected_malformed") == 1
    assert _counter(result, "rejected_invalid_uri") == 1


def test_dedupe_keeps_the_first_copy_in_input_order_whatever_the_bundles(tmp_path):
    late = process_block_reference(_block([event("x", action="late"), event("y")], rank=1), SPEC).table
    early = process_block_reference(_block([event("z"), event("x", action="early")], rank=0), SPEC).table
    key = ("WebLog", "2024-05-01")
    p = TestPipeline(options=OPTIONS)
    out = (
        p
        | beam.Create([(key, (1, 0, late)), (key, (0, 0, early))])
        | DedupeActivities(str(tmp_path), "DS", "run1", {})
    )
    rows = out.rows | beam.FlatMap(
        lambda kv: list(zip(kv[1]["ActivityId"].to_pylist(), kv[1]["Details"].to_pylist(), strict=True))
    )
    assert_that(rows, equal_to([("x", "early"), ("y", "Email promo"), ("z", "Email promo")]))
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "duplicates_dropped") == 1
    pieces = sorted(p.name for p in (tmp_path / "DS" / "_staging" / "run1" / "pieces").rglob("*.arrow"))
    assert pieces == ["000000_000000.arrow", "000001_000000.arrow"]  # rows spilled, references shuffled


def test_merge_outcomes_is_order_independent():
    parts = [
        {"tables": {"T": {"records_read": 2, "rejected": {"malformed": 1}}}, "files": [{"staged": "b"}]},
        {"tables": {"T": {"records_read": 3, "duplicates_dropped": 1}}, "files": [{"staged": "a"}]},
        {"dead_letter_files": ["z", "y"]},
    ]
    merged = [
        MergeOutcomes().extract_output(
            MergeOutcomes().merge_accumulators(
                [MergeOutcomes().add_input(MergeOutcomes().create_accumulator(), x) for x in order]
            )
        )
        for order in (parts, parts[::-1])
    ]
    assert merged[0] == merged[1]
    assert merged[0]["tables"]["T"]["records_read"] == 5
    assert [f["staged"] for f in merged[0]["files"]] == ["a", "b"]
