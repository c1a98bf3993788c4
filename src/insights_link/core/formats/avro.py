"""Avro: records mirroring the nested event form, or Event Hubs Capture ``EventData`` records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from insights_link.core.formats.lines import Batch, batched


def batches(stream) -> Iterator[Batch]:
    return batched((number, record, None, None) for number, record in _avro_records(stream))


def _avro_records(stream) -> Iterator[tuple[int, Any]]:
    import fastavro

    yield from enumerate(fastavro.reader(stream), start=1)
