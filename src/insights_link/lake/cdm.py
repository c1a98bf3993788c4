"""CDM documents for a data-source folder: the manifest and one entity document per table.

Built as plain JSON in the form Microsoft's CDM object model loads (see tests). Partition
locations are relative to the manifest's folder so the folder can be copied or moved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from insights_link.core.contract import Column
from insights_link.errors import InsightsLinkError

MANIFEST_FILE = "default.manifest.cdm.json"
PARQUET_TRAIT = "is.partition.format.parquet"
_IMPORTS = [{"corpusPath": "cdm:/foundations.cdm.json"}]


class ManifestError(InsightsLinkError, ValueError):
    """The data-source folder holds a manifest this tool cannot read or extend."""


INCREMENTAL_TRAIT = "is.partition.incremental"


@dataclass
class TableState:
    """What the committed manifest says about one table: its partition locations."""

    name: str
    partitions: list[str] = field(default_factory=list)  # FullData files
    incremental: list[str] = field(default_factory=list)  # IncrementalData/.../Upserts files

    def all_locations(self) -> list[str]:
        return self.partitions + self.incremental


def entity_document(table: str, columns: tuple[Column, ...]) -> bytes:
    """The ``<Table>.cdm.json`` entity document: columns with CDM types, ActivityId as key."""
    attributes = []
    for c in columns:
        attribute = {"name": c.name, "dataType": c.cdm_type}
        if c.primary_key:
            attribute["purpose"] = "identifiedBy"
        attributes.append(attribute)
    doc = {
        "jsonSchemaSemanticVersion": "1.0.0",
        "imports": _IMPORTS,
        "definitions": [{"entityName": table, "hasAttributes": attributes}],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def entity_columns(document: bytes) -> list[str]:
    """The column names an entity document declares."""
    doc = json.loads(document)
    return [a["name"] for a in doc["definitions"][0]["hasAttributes"]]


def manifest_document(data_source: str, tables: dict[str, TableState]) -> bytes:
    """The manifest listing every committed Parquet file of every table as a data partition."""
    entities = []
    upsert = {"traitReference": INCREMENTAL_TRAIT, "arguments": [{"name": "type", "value": "Upsert"}]}
    for name in sorted(tables):
        entity = {
            "type": "LocalEntity",
            "entityName": name,
            "entityPath": f"{name}.cdm.json/{name}",
            "dataPartitions": [
                {"location": location, "exhibitsTraits": [{"traitReference": PARQUET_TRAIT}]}
                for location in sorted(tables[name].partitions)
            ],
        }
        if tables[name].incremental:
            # Listed file by file rather than as a pattern: a pattern would make a file visible
            # the moment it lands, before its run commits.
            entity["incrementalPartitions"] = [
                {"location": location, "exhibitsTraits": [{"traitReference": PARQUET_TRAIT}, upsert]}
                for location in sorted(tables[name].incremental)
            ]
        entities.append(entity)
    doc = {
        "jsonSchemaSemanticVersion": "1.0.0",
        "imports": _IMPORTS,
        "manifestName": data_source,
        "explanation": "Activity data source written by insights-link",
        "entities": entities,
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def parse_manifest(document: bytes) -> dict[str, TableState]:
    """Tables and partitions of a manifest this tool wrote."""
    try:
        doc = json.loads(document)
        tables = {}
        for entity in doc.get("entities", []):
            name = entity["entityName"]
            locations = [p["location"] for p in entity.get("dataPartitions", [])]
            incremental = [p["location"] for p in entity.get("incrementalPartitions", [])]
            tables[name] = TableState(name, locations, incremental)
        return tables
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"cannot read the existing manifest: {exc}") from exc


class CdmFormat:
    """The CDM folder as a table format: the manifest is the commit object (it lists every
    committed Parquet file), and each table has an entity document declaring its columns."""

    name = "cdm"
    commit_file = MANIFEST_FILE

    def parse(self, data: bytes | None) -> dict[str, TableState]:
        """The committed tables in a commit object's bytes (none when there is no object yet)."""
        return parse_manifest(data) if data is not None else {}

    def render(self, data_source: str, tables: dict[str, TableState]) -> bytes:
        return manifest_document(data_source, tables)

    def table_documents(self, table_columns: dict[str, tuple[Column, ...]]) -> dict[str, bytes]:
        """Relative key -> bytes of each table's document."""
        return {f"{name}.cdm.json": entity_document(name, columns) for name, columns in table_columns.items()}

    def declared_columns(self, read: Callable[[str], bytes | None], table: str) -> list[str] | None:
        """The columns a committed table declares (None when it has no document)."""
        doc = read(f"{table}.cdm.json")
        return entity_columns(doc) if doc is not None else None
