"""What lake subcommands share: the parser base, the data source's lake, the run id and clock.

The shared flags (``--data-source``, ``--lock-wait``, ``--run-id``, ``--run-time``,
``--log-format``, ``--quiet``, ``--verbose``) are the export's own declarations in
:mod:`insights_link.pipeline.spec`, checked by the same code.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from insights_link.core.paths import is_remote
from insights_link.errors import UsageError
from insights_link.lake import table_format
from insights_link.lake.cdm import MANIFEST_FILE
from insights_link.lake.commit import Lake
from insights_link.lake.delta import DeltaFormat
from insights_link.pipeline.spec import BY_DEST, OptionError

Clock = Callable[[], datetime]
SHARED = ("data_source", "lock_wait", "run_id", "run_time", "log_format", "quiet", "verbose")


class Parser(argparse.ArgumentParser):
    """argparse raising :class:`UsageError` (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def lake_parser(prog: str, description: str) -> Parser:
    """A parser with ``--lake`` and the shared options every lake subcommand takes."""
    parser = Parser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument(
        "--lake", required=True, metavar="LAKE_ROOT", help="the lake root: a folder or an abfss:// URL"
    )
    for dest in SHARED:
        o = BY_DEST[dest]
        text = o.help + (f" (default {o.default_text()})" if o.default_text() else "")
        kwargs: dict[str, Any] = {"dest": dest, "help": text, "default": None}
        if o.kind == "bool":
            kwargs["action"] = "store_true"
            kwargs["default"] = False
        else:
            kwargs["metavar"] = o.metavar or ("|".join(o.choices) if o.choices else None)
        parser.add_argument(o.flag, **kwargs)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def checked(args: argparse.Namespace, shared: tuple[str, ...] = SHARED) -> dict[str, Any]:
    """The shared options' values, checked like the export's (defaults filled in)."""
    values = {}
    try:
        for dest in shared:
            o = BY_DEST[dest]
            raw = getattr(args, dest)
            values[dest] = o.convert(raw) if raw not in (None, False) else o.default
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    return values


def open_lake(args: argparse.Namespace, clock: Clock, fmt: str | None = None) -> Lake:
    """The data source's :class:`Lake` in format ``fmt`` (default: the one it holds)."""
    from insights_link.pipeline.options import check_output
    from insights_link.storage import open_storage

    check_output(args.lake)
    root = args.lake if is_remote(args.lake) else os.path.abspath(os.path.expanduser(args.lake))
    storage = open_storage(root)
    data_source = checked(args)["data_source"]
    fmt = fmt or detect_format(storage, data_source)
    return Lake(storage, data_source, table_format(fmt), clock=clock)


def detect_format(storage, data_source: str) -> str:
    """ "cdm" when the data source has a manifest, "delta" when it has Delta tables, "both" when it
    has both (a conversion that stopped half way), "none" when its runs committed no table yet."""
    manifest = storage.exists(f"{data_source}/{MANIFEST_FILE}")
    tables = DeltaFormat().tables(storage, data_source)
    if manifest and not tables:
        return "cdm"
    if tables and not manifest:
        return "delta"
    if manifest and tables:
        return "both"
    if storage.list(f"{data_source}/_runs") or storage.list(f"{data_source}/_deadletter"):
        return "none"  # runs committed no rows yet (only dead letters): the default format's rules
    raise UsageError(f"no data source {data_source!r} in {storage.describe()} (no manifest, no Delta tables)")


def clock_and_id(args: argparse.Namespace, clock: Clock) -> tuple[Clock, str]:
    """The operation's clock (``--run-time`` fixes it) and run id (``--run-id`` or generated)."""
    values = checked(args)
    if values["run_time"] is not None:
        fixed: datetime = values["run_time"]

        def clock() -> datetime:
            return fixed

    run_id = values["run_id"] or f"{clock().astimezone(UTC):%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:8]}"
    return clock, run_id
