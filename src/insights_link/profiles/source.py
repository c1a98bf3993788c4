"""Read a table Customer Insights - Data exports: the unified ``Customer`` profiles or a segment.

Accepted at ``PATH`` (a local path or an ``abfss://`` URL, read through
:mod:`insights_link.storage`):

- a CDM folder with a ``*.manifest.cdm.json`` (entity documents give the attributes and their
  ``dataType``, ``purpose: identifiedBy`` / ``is.identifiedBy`` traits mark keys; partitions are
  CSV, with or without a header as the ``is.partition.format.CSV`` trait says, or Parquet);
- a legacy CDM folder with a ``model.json`` (attributes with ``dataType``; partitions are CSV with
  ``columnHeaders`` as its ``fileFormatSettings`` say, or Parquet; absolute partition URLs are
  mapped onto the folder given);
- a Delta table (a folder with ``_delta_log``);
- plain files: one ``.csv`` (with a header) or ``.parquet`` file, or a folder of them.

Types come from the metadata (CDM / model.json ``dataType``, the Parquet or Delta schema); a
plain CSV file's are inferred by pyarrow.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from insights_link.core.paths import glob_regex, is_remote, join
from insights_link.core.profiles import Attribute, arrow_type_of
from insights_link.errors import UsageError
from insights_link.storage import Storage, StorageError, open_storage

logger = logging.getLogger(__name__)

KEY_TRAITS = ("is.identifiedBy", "means.identity", "is.linkedEntity.identifier")


class ProfileSourceError(UsageError):
    """The profile or segment source can't be read as any accepted form; the message says why."""


@dataclass
class Partition:
    """One data file of a source table and how to parse it."""

    key: str
    kind: str  # "csv" | "parquet"
    header: bool = True
    delimiter: str = ","


@dataclass
class SourceTable:
    """A table read from a Customer Insights export: its attributes (metadata order) and files."""

    location: str
    form: str  # "cdm manifest" | "model.json" | "delta" | "parquet" | "csv"
    entity: str
    storage: Storage
    attributes: dict[str, Attribute]
    partitions: list[Partition] = field(default_factory=list)
    delta_key: str | None = None

    def read(self, columns: list[str]) -> pa.Table:
        """The rows of ``columns`` (attribute names), each with its metadata type."""
        schema = pa.schema([pa.field(n, self.attributes[n].arrow_type) for n in columns])
        if self.delta_key is not None:
            from deltalake import DeltaTable

            uri, options = self.storage.external(self.delta_key)
            table = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=columns)
            return table.select(columns).cast(schema)
        pieces = [self._read_partition(p, schema) for p in self.partitions]
        return pa.concat_tables(pieces) if pieces else schema.empty_table()

    def _read_partition(self, part: Partition, schema: pa.Schema) -> pa.Table:
        data = self._bytes(part.key)
        try:
            if part.kind == "parquet":
                table = pq.read_table(io.BytesIO(data), columns=schema.names)
            else:
                names = list(self.attributes)
                table = pacsv.read_csv(
                    io.BytesIO(data),
                    read_options=pacsv.ReadOptions(
                        column_names=None if part.header else names, encoding="utf8"
                    ),
                    parse_options=pacsv.ParseOptions(delimiter=part.delimiter, newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types={f.name: f.type for f in schema},
                        include_columns=schema.names,
                        strings_can_be_null=True,
                        quoted_strings_can_be_null=False,
                    ),
                )
            return table.select(schema.names).cast(schema)
        except (pa.ArrowException, ValueError, KeyError) as exc:
            detail = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
            raise ProfileSourceError(f"{self.storage.describe(part.key)} can't be read: {detail}") from None

    def _bytes(self, key: str) -> bytes:
        try:
            return self.storage.read_bytes(key)
        except (OSError, StorageError) as exc:
            raise ProfileSourceError(f"{self.storage.describe(key)} can't be read: {exc}") from None


def open_source(path: str, entity: str | None = None, what: str = "--profiles") -> SourceTable:
    """The table at ``path``; ``entity`` picks one of a CDM folder's entities (default: the only
    one, or ``Customer``). Raises :class:`ProfileSourceError` naming ``path``."""
    lowered = path.lower().rstrip("/")
    if lowered.endswith((".csv", ".parquet")):
        parent, _, name = path.rstrip("/").rpartition("/")
        storage = _storage(parent or ".", what, path)
        if not storage.exists(name):
            raise ProfileSourceError(f"{what} {path!r}: no such file")
        return _plain(storage, path, [name], what)
    storage = _storage(path, what, path)
    try:
        keys = [o.key for o in storage.list("")]
    except (OSError, StorageError) as exc:
        raise ProfileSourceError(f"{what} {path!r} can't be listed: {exc}") from None
    top = [k for k in keys if "/" not in k]
    manifests = sorted(k for k in top if k.endswith(".manifest.cdm.json"))
    if manifests:
        return _from_manifest(storage, path, manifests[0], entity, what)
    if "model.json" in top:
        return _from_model(storage, path, entity, what)
    if any(k.startswith("_delta_log/") for k in keys):
        return _from_delta(storage, path, what)
    data = [k for k in keys if k.lower().endswith((".csv", ".parquet")) and not k.startswith(("_", "."))]
    if data:
        return _plain(storage, path, data, what)
    raise ProfileSourceError(
        f"{what} {path!r} holds no *.manifest.cdm.json, model.json, Delta table, CSV or Parquet file"
    )


def _storage(url: str, what: str, shown: str) -> Storage:
    if not is_remote(url):
        import os

        if not os.path.exists(url):
            raise ProfileSourceError(f"{what} {shown!r}: no such file or folder")
    try:
        return open_storage(url)
    except StorageError as exc:
        raise ProfileSourceError(f"{what} {shown!r}: {exc}") from None


def _json(storage: Storage, key: str, what: str, path: str) -> dict:
    try:
        return json.loads(storage.read_bytes(key))
    except (ValueError, OSError, StorageError) as exc:
        raise ProfileSourceError(f"{what} {path!r}: {key} is not readable JSON ({exc})") from None


def _pick(names: list[str], entity: str | None, what: str, path: str) -> str:
    if entity:
        if entity not in names:
            raise ProfileSourceError(f"{what} {path!r} has no entity {entity!r} (it has {', '.join(names)})")
        return entity
    if len(names) == 1:
        return names[0]
    if "Customer" in names:
        return "Customer"
    raise ProfileSourceError(
        f"{what} {path!r} holds several entities ({', '.join(names)}); name one with --profiles-entity"
    )


def _attribute(name: str, data_type: str, marks: list[str], what: str, path: str) -> Attribute:
    kind = arrow_type_of(data_type or "string")
    if kind is None:
        logger.warning("%s %s: attribute %s has dataType %r; read as string", what, path, name, data_type)
        kind = pa.string()
    return Attribute(name, kind, tuple(dict.fromkeys(marks)))


def _traits(node: dict) -> list[str]:
    names = []
    for trait in node.get("appliedTraits", []) + node.get("exhibitsTraits", []):
        names.append(trait if isinstance(trait, str) else str(trait.get("traitReference", "")))
    return names


def _trait_args(trait: dict) -> dict[str, str]:
    return {
        str(a.get("name")): str(a.get("value")) for a in trait.get("arguments", []) if isinstance(a, dict)
    }


def _from_manifest(storage: Storage, path: str, manifest: str, entity: str | None, what: str) -> SourceTable:
    doc = _json(storage, manifest, what, path)
    entities = {e.get("entityName"): e for e in doc.get("entities", [])}
    name = _pick(sorted(n for n in entities if n), entity, what, path)
    declared = entities[name]
    doc_key = _relative(str(declared.get("entityPath", f"{name}.cdm.json/{name}")).rsplit("/", 1)[0])
    entity_doc = _json(storage, doc_key, what, path)
    definition = next(
        (d for d in entity_doc.get("definitions", []) if d.get("entityName") == name),
        (entity_doc.get("definitions") or [{}])[0],
    )
    keys = set(_primary_keys(definition))
    attributes = {}
    for a in definition.get("hasAttributes", []):
        if "name" not in a:
            continue
        marks = []
        if a.get("purpose") in ("identifiedBy", "hasA") or a["name"] in keys:
            marks.append("the entity's key (identifiedBy)")
        marks += [f"trait {t}" for t in _traits(a) if t in KEY_TRAITS]
        attributes[a["name"]] = _attribute(a["name"], str(a.get("dataType", "string")), marks, what, path)
    partitions = [
        _partition(storage, _relative(str(p.get("location", ""))), p, what, path)
        for p in declared.get("dataPartitions", [])
    ]
    partitions += _pattern_partitions(storage, declared.get("dataPartitionPatterns", []), what, path)
    return SourceTable(path, "cdm manifest", name, storage, attributes, partitions)


def _relative(location: str) -> str:
    """A manifest location as a key below the folder (``local:/x``, ``/x`` and ``./x`` too)."""
    if location.startswith("local:"):
        location = location[len("local:") :]
    return location.removeprefix("./").lstrip("/")


def _pattern_partitions(storage: Storage, patterns: list, what: str, path: str) -> list[Partition]:
    """The files ``dataPartitionPatterns`` match (``rootLocation`` plus a ``globPattern`` or a
    ``regularExpression``), as Customer Insights' exports may declare their partitions."""
    found = []
    for pattern in patterns:
        root = _relative(str(pattern.get("rootLocation", ""))).rstrip("/")
        if pattern.get("globPattern"):
            glob = str(pattern["globPattern"]).lstrip("/")
            regex = glob_regex(glob if glob.startswith("**/") or "/" in glob else "**/" + glob)
        else:
            regex = re.compile(str(pattern.get("regularExpression", ".*")).lstrip("/"))
        for obj in storage.list(root):
            relative = obj.key[len(root) + 1 :] if root else obj.key
            if regex.fullmatch(relative):
                found.append(_partition(storage, obj.key, pattern, what, path))
    return found


def _primary_keys(definition: dict) -> list[str]:
    found = []
    for trait in definition.get("exhibitsTraits", []):
        if isinstance(trait, dict) and trait.get("traitReference") == "is.identifiedBy":
            for value in _trait_args(trait).values():
                found.append(value.rsplit("/", 1)[-1])
    return found


def _partition(storage: Storage, location: str, node: dict, what: str, path: str) -> Partition:
    kind = "parquet" if location.lower().endswith(".parquet") else "csv"
    header, delimiter = False, ","
    for trait in node.get("exhibitsTraits", []):
        if not isinstance(trait, dict):
            continue
        ref = str(trait.get("traitReference", "")).lower()
        if ref == "is.partition.format.parquet":
            kind = "parquet"
        if ref == "is.partition.format.csv":
            kind = "csv"
            args = _trait_args(trait)
            header = args.get("columnHeaders", "false").lower() == "true"
            delimiter = args.get("delimiter", ",") or ","
    return Partition(_existing(storage, location, what, path), kind, header, delimiter)


def _existing(storage: Storage, location: str, what: str, path: str) -> str:
    """The key of a partition location: relative to the folder, or an absolute URL whose
    trailing path is found below the folder (model.json lists full https:// URLs)."""
    if "://" in location:
        parts = [unquote(p) for p in urlsplit(location).path.split("/") if p]
        for i in range(len(parts)):
            candidate = join(*parts[i:])
            if storage.exists(candidate):
                return candidate
        raise ProfileSourceError(f"{what} {path!r}: partition {location} is not below the folder given")
    if not storage.exists(location):
        raise ProfileSourceError(f"{what} {path!r}: partition {location} is missing")
    return location


def _from_model(storage: Storage, path: str, entity: str | None, what: str) -> SourceTable:
    doc = _json(storage, "model.json", what, path)
    entities = {e.get("name"): e for e in doc.get("entities", [])}
    name = _pick(sorted(n for n in entities if n), entity, what, path)
    declared = entities[name]
    attributes = {}
    for a in declared.get("attributes", []):
        marks = []
        if a.get("isKey") or a.get("isPrimaryKey") or a.get("cdm:isKey"):
            marks.append("a key (isKey)")
        marks += [f"trait {t}" for t in _traits(a) if t in KEY_TRAITS]
        for annotation in a.get("annotations", []):
            if str(annotation.get("name", "")).lower() in (
                "iskey",
                "isprimarykey",
                "isidentifier",
                "identifier",
            ):
                if str(annotation.get("value", "true")).lower() == "true":
                    marks.append(f"an identifier (annotation {annotation['name']})")
        attributes[a["name"]] = _attribute(a["name"], str(a.get("dataType", "string")), marks, what, path)
    partitions = []
    for p in declared.get("partitions", []):
        location = str(p.get("location", ""))
        settings = p.get("fileFormatSettings", {}) or {}
        kind = (
            "parquet"
            if "parquet" in str(settings.get("$type", "")).lower() or location.lower().endswith(".parquet")
            else "csv"
        )
        partitions.append(
            Partition(
                _existing(storage, location, what, path),
                kind,
                bool(settings.get("columnHeaders", False)),
                str(settings.get("delimiter", ",") or ","),
            )
        )
    return SourceTable(path, "model.json", name, storage, attributes, partitions)


def _from_delta(storage: Storage, path: str, what: str) -> SourceTable:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    uri, options = storage.external("")
    try:
        schema = pa.schema(DeltaTable(uri, storage_options=options).schema().to_arrow())
    except (DeltaError, OSError) as exc:
        raise ProfileSourceError(f"{what} {path!r} is not a readable Delta table: {exc}") from None
    attributes = {f.name: Attribute(f.name, _plain_type(f.type)) for f in schema}
    return SourceTable(path, "delta", _stem(path), storage, attributes, delta_key="")


def _plain_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_timestamp(kind):
        return pa.timestamp("us", tz="UTC")  # naive timestamps are taken as UTC
    return kind


def _plain(storage: Storage, path: str, keys: list[str], what: str) -> SourceTable:
    kinds = {"parquet" if k.lower().endswith(".parquet") else "csv" for k in keys}
    if len(kinds) > 1:
        raise ProfileSourceError(f"{what} {path!r} mixes CSV and Parquet files; give one kind")
    kind = kinds.pop()
    first = storage.read_bytes(keys[0])
    try:
        if kind == "parquet":
            schema = pq.read_schema(io.BytesIO(first))
        else:
            schema = pacsv.read_csv(io.BytesIO(first)).schema
    except (pa.ArrowException, ValueError) as exc:
        raise ProfileSourceError(f"{what} {path!r}: {keys[0]} can't be read: {exc}") from None
    attributes = {f.name: Attribute(f.name, _plain_type(f.type)) for f in schema}
    partitions = [Partition(k, kind) for k in sorted(keys)]
    return SourceTable(path, kind, _stem(path), storage, attributes, partitions)


def _stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".parquet", ".csv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name
