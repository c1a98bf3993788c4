"""The export contract: field names, reason codes, naming rule and the activity schema.

Pure data and small pure functions; imports neither Beam nor storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from insights_link.errors import UsageError

EXPORT_ID = "Signal.Export.Id"
USER_ID = "Signal.User.Id"
TIMESTAMP = "Signal.Timestamp"
VIEW_URI = "Signal.View.Uri"
ACTION_NAME = "Signal.Action.Name"
EVENT_NAME = "Signal.Name"

#: The Signal fields every event needs, in the order problems are reported.
REQUIRED_FIELDS: tuple[str, ...] = (EXPORT_ID, USER_ID, TIMESTAMP, VIEW_URI, ACTION_NAME)

#: Dead-letter reason codes, in priority order: with several problems the first one wins.
REASONS: tuple[str, ...] = (
    "malformed",
    "missing_field",
    "invalid_type",
    "invalid_timestamp",
    "invalid_uri",
)

DEFAULT_DATA_SOURCE = "EngagementInsights"
DEFAULT_ACTIVITY_NAME = "WebLog"
DEFAULT_ACTIVITY_TYPE = "WebLog"

_NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class ContractError(UsageError):
    """A configuration value breaks the contract (the message names the value)."""


#: Longest table, data-source and run name: file names hold a table and a run id (255 bytes at most).
MAX_NAME_LENGTH = 100


def check_name(value: str, what: str) -> str:
    """Enforce Customer Insights' naming rule: a letter, then letters, digits or underscores.

    >>> check_name("WebLog", "--activity-name")
    'WebLog'
    """
    if value and len(value) > MAX_NAME_LENGTH:
        raise ContractError(
            f"{what} {value[:40]!r}... is {len(value)} characters long; at most "
            f"{MAX_NAME_LENGTH} make valid file names"
        )
    if not _NAME_RULE.fullmatch(value or ""):
        raise ContractError(
            f"{what} {value!r} breaks the naming rule: it must begin with a letter and "
            "contain only letters, digits and underscores"
        )
    return value


def cdm_safe_name(prop: str) -> str:
    """Column name for a pass-through Signal property: ``Signal.Session.Id`` -> ``SignalSessionId``."""
    name = re.sub(r"[^A-Za-z0-9_]", "", "".join(p[:1].upper() + p[1:] for p in prop.split(".")))
    if not name or not name[0].isalpha():
        raise ContractError(f"property {prop!r} does not make a valid column name")
    return name


@dataclass(frozen=True)
class Column:
    """One activity column: its name, Arrow type, CDM data type and whether it is the key."""

    name: str
    arrow_type: pa.DataType
    cdm_type: str
    primary_key: bool = False


UTC_MICROS = pa.timestamp("us", tz="UTC")

ACTIVITY_COLUMNS: tuple[Column, ...] = (
    Column("ActivityId", pa.string(), "string", primary_key=True),
    Column("CustomerId", pa.string(), "string"),
    Column("ActivityTime", UTC_MICROS, "dateTime"),
    Column("EventActivity", pa.string(), "string"),
    Column("WebAddress", pa.string(), "string"),
    Column("Details", pa.string(), "string"),
    Column("ActivityType", pa.string(), "string"),
    Column("LastUpdated", UTC_MICROS, "dateTime"),
)


def activity_columns(properties: tuple[str, ...] = ()) -> tuple[Column, ...]:
    """The table's columns: the fixed activity columns, then one string column per property."""
    extra = tuple(Column(cdm_safe_name(p), pa.string(), "string") for p in properties)
    names = [c.name for c in ACTIVITY_COLUMNS + extra]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ContractError(f"property columns clash with existing columns: {', '.join(clash)}")
    return ACTIVITY_COLUMNS + extra


def columns_schema(columns: tuple[Column, ...]) -> pa.Schema:
    """The explicit Arrow schema of a table's Parquet files: its columns, the key not null."""
    return pa.schema([pa.field(c.name, c.arrow_type, nullable=not c.primary_key) for c in columns])


def activity_schema(properties: tuple[str, ...] = ()) -> pa.Schema:
    """The explicit Arrow schema of the Parquet files (timestamps written as INT64 micros)."""
    return columns_schema(activity_columns(properties))
