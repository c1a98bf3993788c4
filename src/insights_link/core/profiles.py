"""Pure rules of ``share-profiles``: what a profile attribute is, which attributes are
identifiers (never shared), and the CDM/Arrow types an attribute keeps.

No I/O, no Beam, no storage: the readers in :mod:`insights_link.profiles` turn metadata into
:class:`Attribute` values and these functions decide.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import pyarrow as pa

from insights_link.core.contract import UTC_MICROS

#: CDM data types (manifest / entity documents and model.json) -> Arrow types
CDM_TO_ARROW: dict[str, pa.DataType] = {
    "string": pa.string(),
    "guid": pa.string(),
    "char": pa.string(),
    "unicode": pa.string(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "integer": pa.int32(),
    "int64": pa.int64(),
    "bigInteger": pa.int64(),
    "double": pa.float64(),
    "float": pa.float32(),
    "decimal": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "dateTime": UTC_MICROS,
    "dateTimeOffset": UTC_MICROS,
}
#: the lower-cased spellings model.json uses (int64, dateTime, ...) map the same way
_LOWER = {k.lower(): v for k, v in CDM_TO_ARROW.items()}


def arrow_type_of(data_type: str) -> pa.DataType | None:
    """The Arrow type of a CDM / model.json ``dataType`` (None: unknown)."""
    return CDM_TO_ARROW.get(data_type) or _LOWER.get(data_type.lower())


def cdm_type_of(arrow_type: pa.DataType) -> str:
    """The CDM data type an Arrow type is declared as in the entity documents this tool writes."""
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "bigInteger"  # the CDM name of a 64-bit integer
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "double"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_timestamp(arrow_type):
        return "dateTime"
    return "string"


def normalized_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a shared column is written with: one Arrow type per CDM type, so the Parquet
    files, the entity documents and the Delta schema agree (ints -> int64, decimals/floats ->
    float64, dates -> date32, timestamps -> UTC micros, everything else -> string)."""
    return {
        "boolean": pa.bool_(),
        "bigInteger": pa.int64(),
        "double": pa.float64(),
        "date": pa.date32(),
        "dateTime": UTC_MICROS,
        "string": pa.string(),
    }[cdm_type_of(arrow_type)]


@dataclass(frozen=True)
class Attribute:
    """One attribute of the profile table as its metadata describes it."""

    name: str
    arrow_type: pa.DataType
    #: what the metadata says about it: "primary key", "identifiedBy", "alternate key", ...
    marks: tuple[str, ...] = field(default=())


#: the unified profile's own identifier in Customer Insights
UNIFIED_ID = "CustomerId"
_CAMEL_ID = re.compile(r"(Id|ID|Guid|GUID|Uuid|UUID|Key|KEY|Number|No)$")
_SNAKE_ID = re.compile(r"(^|[_\-. ])(id|guid|uuid|key|number|no)$", re.IGNORECASE)
#: words ending in "id" that are not ids (``contactid`` is one; ``IsPaid`` is not)
_NOT_IDS = frozenset(
    "paid unpaid prepaid valid invalid rapid fluid liquid humid android solid hybrid squid acid "
    "lucid vivid timid avid druid pyramid void mid bid kid lid rid grid orchid cupid stupid "
    "overpaid underpaid".split()
)
_ALTERNATE = re.compile(r"^alternate|alternatekey|alternateid", re.IGNORECASE)
#: the words of a name: ``CustomerIDs`` -> Customer, IDs; ``id_customer`` -> id, customer
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+s?|[A-Z]+s?(?![a-z])|[0-9]+")
#: a first or last word that makes a name an id (``IdCustomer``, ``CustomerIds``, ``crm_identifier``)
_ID_WORDS = frozenset("id ids guid guids uuid uuids pk fk identifier identifiers".split())
_LAST_ID_WORDS = _ID_WORDS | frozenset("key keys number no num nr".split())
#: words that identify a person directly (contact points Customer Insights matches profiles on)
_PLURAL_ID = re.compile(r"(^|[a-z_\-. ])(ID|Id|id)s$")
_PERSONAL = frozenset("email emailaddress mail phone phonenumber mobile telephone ssn passport".split())


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(name)]


def identifier_reason(attribute: Attribute) -> str | None:
    """Why ``attribute`` is an identifier (and so never shared), or None when it can be shared.

    Names are compared after Unicode NFKC folding (a full-width ``ＩＤ`` is ``ID``).

    >>> identifier_reason(Attribute("CustomerId", pa.string()))
    'the unified customer id'
    >>> identifier_reason(Attribute("LoyaltyTier", pa.string())) is None
    True
    """
    name = unicodedata.normalize("NFKC", attribute.name).strip()
    if name.casefold() == UNIFIED_ID.casefold():
        return "the unified customer id"
    if attribute.marks:
        return f"the metadata marks it as {' and '.join(attribute.marks)}"
    if _ALTERNATE.search(name) or _words(name)[:1] == ["alternate"]:
        return "an alternate key"
    words = _words(name) or [name.lower()]
    last = re.split(r"[_\-. ]|(?<=[a-z])(?=[A-Z])", name)[-1].lower()
    glued = name.lower().endswith(("id", "guid", "uuid")) and last not in _NOT_IDS
    if (
        name.lower() in ("id", "guid", "uuid", "key")
        or _CAMEL_ID.search(name)
        or _SNAKE_ID.search(name)
        or glued
        or words[0] in _ID_WORDS
        or words[-1] in _LAST_ID_WORDS
        or _PLURAL_ID.search(name)
    ):
        return "an id by its name (Id, Id*, *Id(s), *_id, *ID, *id, Guid, *Identifier, *Key, *Number)"
    if words[-1] in _PERSONAL or "".join(words[-2:]) in _PERSONAL:
        return "a personal identifier by its name (email address, phone number, SSN, passport)"
    return None


def check_user_key(name: str, attributes: dict[str, Attribute]) -> Attribute:
    """The ``--user-key`` attribute; raises ValueError naming it when the profiles lack it or it
    is the unified CustomerId (Customer Insights' own id never leaves: pick the source's id
    that events carry as ``Signal.User.Id``)."""
    found = attributes.get(name)
    if found is None:
        raise ValueError(f"--user-key {name!r} is not an attribute of the profiles ({_names(attributes)})")
    if name.lower() == UNIFIED_ID.lower():
        raise ValueError(
            f"--user-key {name!r} is the unified customer id, which is never shared; name the "
            "profile column whose values events carry as Signal.User.Id"
        )
    kind = found.arrow_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
        raise ValueError(
            f"--user-key {name!r} has type {kind}; a user key is a string or an integer (its "
            "values are compared as text with Signal.User.Id, which a float, date or flag can't be)"
        )
    return found


def choose_attributes(wanted: list[str], attributes: dict[str, Attribute], user_key: str) -> list[Attribute]:
    """The ``--attribute`` values as attributes, in the order given, without repeats. Raises
    ValueError naming the first one that is unknown, the user key itself, or an identifier."""
    chosen: list[Attribute] = []
    for name in dict.fromkeys(wanted):
        found = attributes.get(name)
        if found is None:
            raise ValueError(
                f"--attribute {name!r} is not an attribute of the profiles ({_names(attributes)})"
            )
        if name == user_key:
            raise ValueError(f"--attribute {name!r} is the --user-key; it is shared as the join key already")
        reason = identifier_reason(found)
        if reason:
            raise ValueError(
                f"--attribute {name!r} is an identifier ({reason}); identifiers are never shared"
            )
        kind = found.arrow_type
        if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            raise ValueError(
                f"--attribute {name!r} has type {kind}, which has no dimension column type "
                "(strings, numbers, dates, timestamps and booleans can be shared)"
            )
        chosen.append(found)
    if not chosen:
        raise ValueError("name at least one --attribute to share (see --list-attributes)")
    return chosen


#: column names the written tables hold themselves (case-insensitively, as Delta, DuckDB and
#: Spark compare names): the lake's partition column and SegmentMembership's segment column
RESERVED = {"activitydate": "the lake's partition column", "segment": "SegmentMembership's segment column"}


def check_column_names(user_key: str, chosen: list[Attribute]) -> None:
    """Raise ValueError when the written tables would get two columns of one name (compared
    case-insensitively) or a column the tables hold themselves (``ActivityDate``, ``Segment``)."""
    seen: dict[str, str] = {}
    for flag, name in [("--user-key", user_key), *(("--attribute", a.name) for a in chosen)]:
        folded = name.casefold()
        if folded in RESERVED:
            raise ValueError(
                f"{flag} {name!r} has the name of {RESERVED[folded]}; share it under another name"
            )
        if folded in seen:
            raise ValueError(
                f"{flag} {name!r} and {seen[folded]!r} differ only in letter case; Delta, DuckDB and "
                "Spark would see one column"
            )
        seen[folded] = name


def _names(attributes: dict[str, Attribute]) -> str:
    names = sorted(attributes)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"it has {shown}"
