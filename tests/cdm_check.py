"""Load a data-source folder with Microsoft's CDM object model, as Customer Insights would."""

from __future__ import annotations

import asyncio
import os

from cdm.enums import CdmStatusLevel, PartitionFileStatusCheckType
from cdm.objectmodel import CdmCorpusDefinition
from cdm.storage import LocalAdapter


def load_data_source(folder: str, manifest: str = "default.manifest.cdm.json") -> dict:
    """Load the manifest, resolve each entity; fail on any CDM error or missing partition file.

    Returns {entity name: {"primary_key": ..., "attributes": [...], "partitions": [...]}}.
    """
    return asyncio.run(_load(folder, manifest))


async def _load(folder: str, manifest_name: str) -> dict:
    logs: list[tuple] = []
    corpus = CdmCorpusDefinition()
    corpus.set_event_callback(lambda level, msg: logs.append((level, msg)), CdmStatusLevel.WARNING)
    corpus.storage.mount("local", LocalAdapter(root=os.path.abspath(folder)))
    corpus.storage.default_namespace = "local"
    manifest = await corpus.fetch_object_async(f"local:/{manifest_name}")
    assert manifest is not None, f"manifest did not load: {logs}"
    await manifest.file_status_check_async(PartitionFileStatusCheckType.FULL_AND_INCREMENTAL)
    out = {}
    for decl in manifest.entities:
        entity = await corpus.fetch_object_async(decl.entity_path, manifest)
        assert entity is not None, f"entity {decl.entity_name} did not load: {logs}"
        resolved = await entity.create_resolved_entity_async(f"{decl.entity_name}_resolved")
        partitions, incremental = [], []
        for found, declared in (
            (partitions, decl.data_partitions),
            (incremental, decl.incremental_partitions),
        ):
            for partition in declared:
                traits = [t.named_reference for t in partition.exhibits_traits]
                assert "is.partition.format.parquet" in traits, traits
                assert partition.is_incremental == (found is incremental), partition.location
                path = os.path.join(folder, *partition.location.split("/"))
                assert os.path.isfile(path), f"partition {partition.location} does not exist"
                found.append(partition.location)
        out[decl.entity_name] = {
            "primary_key": resolved.primary_key,
            "attributes": [a.name for a in resolved.attributes],
            "partitions": partitions,
            "incremental": incremental,
        }
    errors = [msg for level, msg in logs if level == CdmStatusLevel.ERROR]
    assert not errors, errors
    return out
