"""Vectorized JSON-lines path (placeholder until measured): uses the reference path."""

from __future__ import annotations

from insights_link.batch import ActivitySpec, BlockResult, process_block_reference
from insights_link.inputs import RawBlock


def process_jsonl_block(block: RawBlock, spec: ActivitySpec) -> BlockResult:
    """Validate and map a JSON-lines block."""
    return process_block_reference(block, spec)
