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
import os
import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
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
    #: False for one file named explicitly (it may be a link); True: reads stay in the folder
    confined: bool = True

    def read(self, columns: list[str]) -> pa.Table:
        """The rows of ``columns`` (attribute names), each with its metadata type."""
        schema = pa.schema([pa.field(n, self.attributes[n].arrow_type) for n in columns])
        if self.delta_key is not None:
            return self._read_delta(schema)
        pieces = [self._read_partition(p, schema) for p in self.partitions]
        return pa.concat_tables(pieces) if pieces else schema.empty_table()

    def _read_delta(self, schema: pa.Schema) -> pa.Table:
        """The Delta table's current rows through deltalake's query engine, which applies
        deletion vectors and column mapping (renamed columns); its plain Arrow reader does
        neither (rows deleted by a deletion vector came back, mapped columns came back null)."""
        from deltalake import DeltaTable, QueryBuilder

        assert self.delta_key is not None
        uri, options = self.storage.external(self.delta_key)
        shown = self.storage.describe(self.delta_key)
        select = ", ".join('"' + name.replace('"', '""') + '"' for name in schema.names)
        try:
            table = DeltaTable(uri, storage_options=options)
            outside = [f for f in table.file_uris() if not _below(uri, f)]
            if outside:  # a log naming ../x.parquet or another account: never read it
                raise ProfileSourceError(
                    f"the Delta table {shown} lists {len(outside)} data file(s) outside its folder "
                    f"(e.g. {unquote(outside[0])}); refused"
                )
            query = QueryBuilder().register("profiles", table).execute(f"SELECT {select} FROM profiles")
            rows = pa.table(query.read_all())
        except ProfileSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - deltalake's engine raises plain Exception too
            detail = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
            raise ProfileSourceError(f"the Delta table {shown} can't be read: {detail}") from None
        return pa.table([_converted(rows[f.name], f, shown, 1) for f in schema], schema=schema)

    def _read_partition(self, part: Partition, schema: pa.Schema) -> pa.Table:
        data = self._bytes(part.key)
        shown = self.storage.describe(part.key)
        try:
            if part.kind == "parquet":
                table = pq.read_table(io.BytesIO(data), columns=schema.names)
            elif not data.strip(b"\xef\xbb\xbf \t\r\n"):
                return schema.empty_table()  # an empty partition (an empty segment) has no rows
            else:
                names = list(self.attributes)
                table = pacsv.read_csv(
                    io.BytesIO(data),
                    read_options=pacsv.ReadOptions(
                        column_names=None if part.header else names, encoding="utf8"
                    ),
                    parse_options=pacsv.ParseOptions(delimiter=part.delimiter, newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types={f.name: pa.string() for f in schema},
                        include_columns=schema.names,
                        strings_can_be_null=True,
                        quoted_strings_can_be_null=False,
                    ),
                )
        except (pa.ArrowException, ValueError, KeyError) as exc:
            detail = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
            try:
                data.decode("utf-8") if part.kind == "csv" else None
            except UnicodeDecodeError as bad:  # name the line, as pyarrow names only the column
                line = data.count(b"\n", 0, bad.start) + 1
                detail = f"line {line}: invalid UTF-8 (byte {data[bad.start]:#04x}); the file must be UTF-8"
            raise ProfileSourceError(f"{shown} can't be read: {detail}") from None
        first_row = 2 if part.kind == "csv" and part.header else 1
        return pa.table([_converted(table[f.name], f, shown, first_row) for f in schema], schema=schema)

    def _bytes(self, key: str) -> bytes:
        if self.confined:
            _inside(self.storage, key, self.location)
        try:
            return self.storage.read_bytes(key)
        except (OSError, StorageError) as exc:
            raise ProfileSourceError(f"{self.storage.describe(key)} can't be read: {exc}") from None


def _below(root: str, uri: str) -> bool:
    """Whether data file ``uri`` (as deltalake lists it, percent-encoded) lies below ``root``."""
    if "://" not in root:
        real = os.path.realpath(unquote(uri.removeprefix("file://")))
        base = os.path.realpath(root)
        return real.startswith(base.rstrip(os.sep) + os.sep)
    scheme, _, rest = unquote(uri).partition("://")
    base_scheme, _, base_rest = root.partition("://")
    normal = posixpath.normpath(rest)
    return scheme == base_scheme and normal.startswith(posixpath.normpath(base_rest).rstrip("/") + "/")


#: a timestamp without an offset (taken as UTC) and fractions past microseconds (truncated)
_NAIVE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"
_LONG_FRACTION = r"(\.\d{6})\d+"


def _converted(column: pa.ChunkedArray, target: pa.Field, shown: str, first_row: int) -> pa.ChunkedArray:
    """``column`` as ``target``'s type. Text is trimmed for non-string types (blank = null),
    timestamps without an offset are UTC; a value that doesn't convert raises
    :class:`ProfileSourceError` naming the file, the row (1 = the file's first row, a header
    counted) and the value, never a traceback and never a dropped row."""
    kind = target.type
    values = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if values.type == kind:
        return pa.chunked_array([values], kind)
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = values.cast(pa.string())  # one text type to trim, match and report
    prepared = values
    if pa.types.is_string(values.type):
        if not pa.types.is_string(kind):
            prepared = pc.utf8_trim_whitespace(values)
            prepared = pc.if_else(pc.equal(prepared, ""), pa.scalar(None, prepared.type), prepared)
        if pa.types.is_timestamp(kind):
            prepared = pc.replace_substring_regex(prepared, _LONG_FRACTION, r"\1")
            naive = pc.fill_null(pc.match_substring_regex(prepared, _NAIVE), False)
            prepared = pc.if_else(naive, pc.binary_join_element_wise(prepared, "Z", ""), prepared)
    try:
        return pa.chunked_array([pc.cast(prepared, kind)], kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    index = _first_bad(prepared, kind)
    value = values[index].as_py()
    raise ProfileSourceError(
        f"{shown} row {index + first_row}: {target.name} value {str(value)[:80]!r} is not a "
        f"{kind} (the type its metadata declares)"
    )


def _first_bad(values: pa.Array, kind: pa.DataType) -> int:
    """The index of the first value of ``values`` that does not cast to ``kind``."""
    start, size = 0, len(values)
    while size > 1:  # halve the range holding the first failure
        half = size // 2
        try:
            pc.cast(values.slice(start, half), kind)
            start, size = start + half, size - half
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            size = half
    return start


def _inside(storage: Storage, key: str, where: str) -> str:
    """``key`` when it names a file below the source folder; a location climbing out of it
    (``..``), or a local symlink resolving outside it, is refused: metadata never makes this
    tool read anything but the folder it was given."""
    parts = key.replace("\\", "/").split("/")
    if not key or any(p in ("..", ".") for p in parts) or "\x00" in key:
        raise ProfileSourceError(f"{where}: location {key!r} is outside the folder given")
    if not is_remote(storage.describe()):
        root = os.path.realpath(storage.describe())
        real = os.path.realpath(storage.describe(key))
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise ProfileSourceError(f"{where}: {key!r} resolves outside the folder given ({real})")
    return key


def open_source(path: str, entity: str | None = None, what: str = "--profiles") -> SourceTable:
    """The table at ``path``; ``entity`` picks one of a CDM folder's entities (default: the only
    one, or ``Customer``). Raises :class:`ProfileSourceError` naming ``path``."""
    if is_remote(path) and ("?" in path or "#" in path):  # a SAS token is never repeated
        raise ProfileSourceError(
            f"{what} {path.split('?')[0].split('#')[0]!r}: remove the query string (put a SAS "
            "token in AZURE_STORAGE_SAS_TOKEN instead)"
        )
    lowered = path.lower().rstrip("/")
    if lowered.endswith((".csv", ".parquet")):
        parent, _, name = path.rstrip("/").rpartition("/")
        storage = _storage(parent or ".", what, path)
        if not storage.exists(name):
            raise ProfileSourceError(f"{what} {path!r}: no such file")
        return _plain(storage, path, [name], what, confined=False)
    storage = _storage(path, what, path)
    try:
        keys = [o.key for o in storage.list("")]
    except (OSError, StorageError) as exc:
        raise ProfileSourceError(f"{what} {path!r} can't be listed: {exc}") from None
    top = [k for k in keys if "/" not in k]
    manifests = sorted(k for k in top if k.endswith(".manifest.cdm.json"))
    metadata = manifests[:1] or (["model.json"] if "model.json" in top else [])
    if metadata:
        try:
            if manifests:
                return _from_manifest(storage, path, manifests[0], entity, what)
            return _from_model(storage, path, entity, what)
        except (KeyError, AttributeError, TypeError, IndexError) as exc:  # valid JSON, wrong shape
            raise ProfileSourceError(
                f"{what} {path!r}: {metadata[0]} (or an entity document it names) is not shaped "
                f"like Customer Insights' metadata ({type(exc).__name__}: {exc})"
            ) from None
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
    _inside(storage, key, f"{what} {path}")
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
        f"{what} {path!r} holds several entities ({', '.join(names)}); "
        + ("name one with --profiles-entity" if what == "--profiles" else "give one segment's folder")
    )


def _attribute(name: str, data_type: str, marks: list[str], what: str, path: str) -> Attribute:
    kind = arrow_type_of(data_type or "string")
    if kind is None:
        logger.warning("%s %s: attribute %s has dataType %r; read as string", what, path, name, data_type)
        kind = pa.string()
    return Attribute(name, kind, tuple(dict.fromkeys(marks)))


def _traits(node: dict) -> list[str]:
    names = []
    for trait in (node.get("appliedTraits") or []) + (node.get("exhibitsTraits") or []):
        if isinstance(trait, dict):
            trait = trait.get("traitReference", "")
            if isinstance(trait, dict):  # an inline trait definition
                trait = trait.get("traitName", "")
        names.append(str(trait))
    return names


#: model.json annotation names (letters only, lower case) that mark a key or an identifier
_KEY_ANNOTATIONS = {"iskey", "isprimarykey", "primarykey", "isidentifier", "identifier", "isalternatekey"}


def _is_key_trait(name: str) -> bool:
    """A trait marking a key or an identity, in any letter case and its sub-traits
    (``means.identity.brand.id``, ``is.identifiedBy``)."""
    lowered = name.strip().lower()
    return any(lowered == t.lower() or lowered.startswith(t.lower() + ".") for t in KEY_TRAITS)


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
        purpose = a.get("purpose")
        if isinstance(purpose, dict):  # a purpose reference object
            purpose = purpose.get("purposeReference")
        if str(purpose).lower() in ("identifiedby", "hasa") or a["name"] in keys:
            marks.append("the entity's key (identifiedBy)")
        marks += [f"trait {t}" for t in _traits(a) if _is_key_trait(t)]
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
        if root:
            _inside(storage, root, f"{what} {path}")
        if pattern.get("globPattern"):
            glob = str(pattern["globPattern"]).lstrip("/")
            regex = glob_regex(glob if glob.startswith("**/") or "/" in glob else "**/" + glob)
        else:
            try:
                regex = re.compile(str(pattern.get("regularExpression", ".*")).lstrip("/"))
            except re.error as exc:
                raise ProfileSourceError(
                    f"{what} {path!r}: partition pattern {pattern.get('regularExpression')!r} is not "
                    f"a valid regular expression ({exc})"
                ) from None
        for obj in storage.list(root):
            relative = obj.key[len(root) + 1 :] if root else obj.key
            if regex.fullmatch(relative):
                found.append(_partition(storage, obj.key, pattern, what, path))
    return found


def _primary_keys(definition: dict) -> list[str]:
    found = []
    for trait in definition.get("exhibitsTraits", []):
        if isinstance(trait, dict) and str(trait.get("traitReference", "")).lower() == "is.identifiedby":
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
        if any(p in ("..", ".") for p in parts):
            raise ProfileSourceError(f"{what} {path!r}: partition {location} is outside the folder given")
        for i in range(len(parts)):
            candidate = join(*parts[i:])
            if storage.exists(candidate):
                return candidate
        raise ProfileSourceError(f"{what} {path!r}: partition {location} is not below the folder given")
    _inside(storage, location, f"{what} {path}")
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
        marks += [f"trait {t}" for t in _traits(a) if _is_key_trait(t)]
        for annotation in a.get("annotations", []) or []:
            if not isinstance(annotation, dict):
                continue
            if re.sub(r"[^a-z]", "", str(annotation.get("name", "")).lower()) in _KEY_ANNOTATIONS:
                if str(annotation.get("value", "true")).strip().lower() in ("true", "1", "yes"):
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
                str(settings.get("columnHeaders", False)).strip().lower() in ("true", "1"),  # "false" too
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


def _plain(storage: Storage, path: str, keys: list[str], what: str, confined: bool = True) -> SourceTable:
    kinds = {"parquet" if k.lower().endswith(".parquet") else "csv" for k in keys}
    if len(kinds) > 1:
        raise ProfileSourceError(f"{what} {path!r} mixes CSV and Parquet files; give one kind")
    kind = kinds.pop()
    if confined:
        for key in keys:
            _inside(storage, key, f"{what} {path}")
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
    return SourceTable(path, kind, _stem(path), storage, attributes, partitions, confined=confined)


def _stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".parquet", ".csv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name
