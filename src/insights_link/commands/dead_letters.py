"""``insights-link dead-letters``: the rejected records of a data source as a working set —
counts (open and resolved) by reason, examples, and ``--export`` of the records for a fixer."""

from __future__ import annotations

import argparse
from typing import Any

from insights_link.commands.common import Clock, Parser
from insights_link.core.contract import REASONS
from insights_link.core.letters import SIDECAR_SUFFIX, Item, Selection, counts
from insights_link.errors import UsageError
from insights_link.pipeline.spec import BY_DEST, OptionError, parse_time_option

DESCRIPTION = f"""List the dead letters of a data source: how many are open and resolved, by
reason, with a few examples. --export FILE writes the selected open letters' records as JSON
lines a fixer edits (jq, sed, Python), and FILE{SIDECAR_SUFFIX} tying line n to its dead letter;
replay the fixed file with 'insights-link export --input FILE --output LAKE_ROOT --replay'.
Reads only: takes no lock and writes nothing to the lake. See docs/dead-letters.md."""

#: examples shown per reason, and how much of each payload
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 200


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="insights-link dead-letters", description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument(
        "--lake", required=True, metavar="LAKE_ROOT", help="the lake root: a folder or an abfss:// URL"
    )
    for dest in ("data_source", "log_format", "quiet", "verbose"):
        o = BY_DEST[dest]
        text = o.help + (f" (default {o.default_text()})" if o.default_text() else "")
        kwargs: dict[str, Any] = {"dest": dest, "help": text, "default": None}
        if o.kind == "bool":
            kwargs |= {"action": "store_true", "default": False}
        else:
            kwargs["metavar"] = o.metavar or ("|".join(o.choices) if o.choices else None)
        parser.add_argument(o.flag, **kwargs)
    parser.add_argument(
        "--reason",
        action="append",
        choices=REASONS,
        default=[],
        help="only this (current) reason (repeatable)",
    )
    parser.add_argument(
        "--run-id",
        dest="run_id",
        action="append",
        default=[],
        metavar="ID",
        help="only letters written by this run (repeatable)",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="only letters of runs committed at or after this time (ISO 8601 or a date, UTC)",
    )
    parser.add_argument("--all", action="store_true", help="export resolved letters too (default: open ones)")
    parser.add_argument(
        "--export", metavar="FILE", help=f"write the selected records to FILE (and FILE{SIDECAR_SUFFIX})"
    )
    parser.add_argument(
        "--embed-key",
        action="store_true",
        help='also put each letter\'s id in its record ("_insights_link_dead_letter", JSON objects only)',
    )
    parser.add_argument("--force", action="store_true", help="with --export: replace FILE if it exists")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def _selection(args: argparse.Namespace) -> Selection:
    """The filters, checked: a bad run id or time is a usage error naming it."""
    try:
        run_ids = frozenset(BY_DEST["run_id"].convert(r) for r in args.run_id)
        since = parse_time_option(args.since, "--since") if args.since is not None else None
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    return Selection(frozenset(args.reason), run_ids, since, include_resolved=args.all)


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    """List (and export) the dead letters; returns the report and its text summary."""
    from insights_link.lake.deadletters import export, load, pending_replays

    args = build_parser().parse_args(argv)
    if (args.embed_key or args.force) and not args.export:
        raise UsageError("--embed-key and --force go with --export FILE")
    selection = _selection(args)
    lake = _open(args, clock)
    for run_id in sorted(selection.run_ids):
        if not lake.storage.exists(lake.key("_runs", f"{run_id}.json")):
            raise UsageError(f"--run-id {run_id!r}: no such run in data source {lake.data_source!r}")
    ws = load(lake)
    chosen = [item for item in ws.items if selection.matches(item)]
    report: dict[str, Any] = {
        "data_source": lake.data_source,
        "output": lake.describe(),
        "filters": {
            "reason": sorted(selection.reasons),
            "run_id": sorted(selection.run_ids),
            "since": args.since,
        },
        "total": counts(ws.items),
        "selected": counts(chosen),
        "examples": _examples(chosen, selection.include_resolved),
        "pending_replays": pending_replays(lake),
    }
    if args.export:
        report["export"] = export(ws, selection, args.export, args.embed_key, args.force)
    return report, _summary(report)


def _open(args: argparse.Namespace, clock: Clock):
    """The data source's lake; its table format does not matter for reading dead letters."""
    import os

    from insights_link.core.paths import is_remote
    from insights_link.lake.commit import Lake
    from insights_link.pipeline.options import check_location
    from insights_link.storage import open_storage

    check_location(args.lake, "--lake")
    root = args.lake if is_remote(args.lake) else os.path.abspath(os.path.expanduser(args.lake))
    if not is_remote(root) and not os.path.isdir(root):
        raise UsageError(f"--lake {args.lake!r} is not a folder")
    try:
        data_source = BY_DEST["data_source"].convert(args.data_source or BY_DEST["data_source"].default)
        BY_DEST["log_format"].convert(args.log_format or "text")
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    lake = Lake(open_storage(root), data_source, clock=clock)
    if not {"_runs", "_deadletter"} & set(lake.storage.folders(lake.data_source)):
        raise UsageError(f"no data source {lake.data_source!r} in {lake.storage.describe()}")
    return lake


def _examples(items: list[Item], include_resolved: bool) -> list[dict]:
    """A few items per reason (open ones; resolved too with --all), payloads cut short."""
    shown: dict[str, int] = {}
    out = []
    order = {reason: i for i, reason in enumerate(REASONS)}
    for item in sorted(items, key=lambda i: order.get(i.reason, len(order))):  # stable: file order kept
        if item.status != "open" and not include_resolved:
            continue
        if shown.get(item.reason, 0) >= EXAMPLES_PER_REASON:
            continue
        shown[item.reason] = shown.get(item.reason, 0) + 1
        current = item.current()
        payload = current.get("payload")
        text = payload if isinstance(payload, str) else _json(payload)
        out.append(
            {
                "dead_letter": item.id,
                "status": item.status,
                "reason": item.reason,
                "run_id": item.run_id,
                "source": item.letter.get("source"),
                "position": item.letter.get("position"),
                "attempts": item.attempts,
                "detail": _clip(item.detail),
                "payload": _clip(text),
            }
        )
    return out


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _summary(report: dict) -> str:
    total, selected = report["total"], report["selected"]
    lines = [
        f"dead letters of {report['data_source']}: {total['open']} open, {total['resolved']} resolved",
    ]
    filters = {k: v for k, v in report["filters"].items() if v}
    if filters:
        shown = "; ".join(
            f"--{k.replace('_', '-')} {', '.join(v) if isinstance(v, list) else v}"
            for k, v in filters.items()
        )
        lines.append(f"  selected ({shown}): {selected['open']} open, {selected['resolved']} resolved")
    lines.append(f"  {'reason':<20}{'open':>8}{'resolved':>10}")
    for reason, c in selected["by_reason"].items():
        lines.append(f"  {reason:<20}{c['open']:>8}{c['resolved']:>10}")
    for ex in report["examples"]:
        again = f", {ex['attempts']} replay(s)" if ex["attempts"] else ""
        lines.append(
            f"    e.g. {ex['dead_letter']} ({ex['status']}{again}) {ex['source']}:{ex['position']}: {ex['payload']}"
        )
        lines.append(f"         {ex['detail']}")
    for run_id in report["pending_replays"]:
        lines.append(f"  replay {run_id} committed; its resolutions are recorded by the next export")
    if "export" in report:
        e = report["export"]
        lines.append(f"  exported {e['records']} record(s) to {e['file']} (keys in {e['sidecar']})")
        if e["without_payload"]:
            lines.append(f"  {e['without_payload']} letter(s) hold no record (an unreadable file's rest)")
    return "\n".join(lines)
