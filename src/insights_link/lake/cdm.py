"""CDM documents for a data-source folder: the manifest and one entity document per table.

Built as plain JSON in the form Microsoft's CDM object model loads (see tests). Partition
locations are relative to the manifest's folder so the folder can be copied or moved.
"""

from __future__ import annotations

import json

import pyarrow as pa

from insights_link.core.contract import UTC_MICROS, Column
from insights_link.errors import InsightsLinkError
from insights_link.lake.layout import full_location
from insights_link.lake.tableformat import Check, Snapshot, TableState
from insights_link.storage import Storage, join

MANIFEST_FILE = "default.manifest.cdm.json"
PARQUET_TRAIT = "is.partition.format.parquet"
_IMPORTS = [{"corpusPath": "cdm:/foundations.cdm.json"}]


class ManifestError(InsightsLinkError, ValueError):
    """The data-source folder holds a manifest this tool cannot read or extend."""


INCREMENTAL_TRAIT = "is.partition.incremental"
#: the CDM data types of this tool's columns and their Arrow types
CDM_TYPES = {"string": pa.string(), "dateTime": UTC_MICROS}


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
    delete = {"traitReference": INCREMENTAL_TRAIT, "arguments": [{"name": "type", "value": "Delete"}]}
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
        if tables[name].incremental or tables[name].deletes:
            # Listed file by file rather than as a pattern: a pattern would make a file visible
            # the moment it lands, before its run commits.
            entity["incrementalPartitions"] = [
                {"location": location, "exhibitsTraits": [{"traitReference": PARQUET_TRAIT}, upsert]}
                for location in sorted(tables[name].incremental)
            ] + [
                {"location": location, "exhibitsTraits": [{"traitReference": PARQUET_TRAIT}, delete]}
                for location in sorted(tables[name].deletes)
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
            incremental, deletes = [], []
            for p in entity.get("incrementalPartitions", []):
                (deletes if _partition_type(p) == "Delete" else incremental).append(p["location"])
            tables[name] = TableState(name, locations, incremental, deletes)
        return tables
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"cannot read the existing manifest: {exc}") from exc


def _partition_type(partition: dict) -> str:
    """The ``is.partition.incremental`` trait's type of an incremental partition (Upsert, Delete)."""
    for trait in partition.get("exhibitsTraits", []):
        if trait.get("traitReference") == INCREMENTAL_TRAIT:
            for argument in trait.get("arguments", []):
                if argument.get("name") == "type":
                    return argument.get("value", "Upsert")
    return "Upsert"


class CdmFormat:
    """The CDM folder as a table format: the manifest is the one commit object (it lists every
    committed Parquet file of every table), and each table has an entity document declaring
    its columns. See :class:`~insights_link.lake.tableformat.TableFormat`."""

    name = "cdm"
    commit_file = MANIFEST_FILE

    def read(self, storage: Storage, data_source: str) -> Snapshot:
        data, version = storage.read_versioned(join(data_source, MANIFEST_FILE))
        return Snapshot(parse_manifest(data) if data is not None else {}, version, data)

    def foreign(self, storage: Storage, data_source: str) -> str | None:
        tables = [
            name
            for name in storage.folders(data_source)
            if not name.startswith("_") and "_delta_log" in storage.folders(join(data_source, name))
        ]
        return f"Delta tables ({', '.join(tables)})" if tables else None

    def declared_columns(
        self, storage: Storage, data_source: str, snapshot: Snapshot, table: str
    ) -> list[str] | None:
        key = join(data_source, f"{table}.cdm.json")
        return entity_columns(storage.read_bytes(key)) if storage.exists(key) else None

    def columns(self, storage: Storage, data_source: str, table: str) -> tuple[Column, ...]:
        """The table's columns with their types, from its entity document."""
        key = join(data_source, f"{table}.cdm.json")
        if not storage.exists(key):
            raise ManifestError(f"table {table!r} has no entity document {table}.cdm.json")
        doc = json.loads(storage.read_bytes(key))
        columns = []
        for attribute in doc["definitions"][0]["hasAttributes"]:
            kind = CDM_TYPES.get(attribute["dataType"])
            if kind is None:
                raise ManifestError(
                    f"table {table!r}: column {attribute['name']!r} has CDM type {attribute['dataType']!r}"
                )
            primary = attribute.get("purpose") == "identifiedBy"
            columns.append(Column(attribute["name"], kind, attribute["dataType"], primary))
        return tuple(columns)

    def location(self, table: str, date: str, name: str) -> str:
        return full_location(table, date, name)

    def table_documents(self, table_columns: dict[str, tuple[Column, ...]]) -> dict[str, bytes]:
        return {f"{name}.cdm.json": entity_document(name, columns) for name, columns in table_columns.items()}

    def prepare(self, storage, data_source, snapshot, table_columns, check: Check) -> None:
        """Nothing: entity documents are written after the moves, the manifest last."""

    def commit(
        self,
        storage,
        data_source,
        snapshot,
        files,
        table_columns,
        run_id,
        check: Check,
        removed=(),
        data_change=True,
        removed_at=0,
    ) -> None:
        """One conditional write of the manifest listing ``files`` besides the committed ones
        (and no longer the ``removed`` ones)."""
        tables = {
            name: TableState(name, list(t.partitions), list(t.incremental), list(t.deletes))
            for name, t in snapshot.tables.items()
        }
        for name in table_columns:
            tables.setdefault(name, TableState(name))
        gone = {r["location"] for r in removed}
        for held in tables.values():
            held.partitions = [loc for loc in held.partitions if loc not in gone]
            held.incremental = [loc for loc in held.incremental if loc not in gone]
        kinds = {"incremental": "incremental", "deletes": "deletes"}
        for f in files:
            held = tables.setdefault(f["table"], TableState(f["table"]))
            getattr(held, kinds.get(f.get("kind", ""), "partitions")).append(f["location"])
        check()
        storage.write_if(
            join(data_source, MANIFEST_FILE), manifest_document(data_source, tables), snapshot.version
        )

    def fence(self, storage, data_source, snapshot, tables) -> None:
        data = snapshot.data if snapshot.data is not None else manifest_document(data_source, {})
        storage.write_if(join(data_source, MANIFEST_FILE), data, snapshot.version)  # type: ignore[arg-type]

    def complete(self, storage, data_source, files, run_id, check: Check, **_change) -> None:
        """Nothing: the manifest write made every file visible at once."""
