"""The ``insights-link`` command: subcommands (``export``, ``help``), ``--help`` and ``--version``.

Thin: configure logging, call :func:`insights_link.pipeline.run.run`, print the summary, map the
errors of :mod:`insights_link.errors` to their exit codes (documented there and in ``--help``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime

from insights_link import lifecycle

EXIT_OK = 0
EXIT_USAGE = 2


logger = logging.getLogger("insights_link")


def summary_text(report: dict) -> str:
    """The short human summary printed at the end of a run (a dry run's also shows a few
    rejected records per reason), then what did nothing as ``warning:`` lines."""
    dry = report["status"] == "dry_run"
    lines = [
        f"run {report['run_id']}: " + ("dry run, nothing was written" if dry else report["status"]),
        f"  records read:        {report.get('records_read', 0)}",
        f"  {'activities to write:' if dry else 'activities written:':<20} {report.get('activities_written', 0)}",
        f"  duplicates dropped:  {report.get('duplicates_dropped', 0)}",
    ]
    if not report.get("inputs"):
        lines.append("  no input files")
    if report.get("filtered_out"):
        lines.append(f"  filtered out:        {report['filtered_out']}")
    rejected = report.get("rejected", {})
    lines.append(f"  rejected:            {sum(rejected.values())}")
    examples = report.get("examples", {})
    for reason, count in rejected.items():
        if count:
            lines.append(f"    {reason:<18} {count}")
            for ex in examples.get(reason, []):
                lines.append(f"      e.g. {ex['source']}:{ex['position']}: {ex['payload']}")
                lines.append(f"           {ex['detail']}")
    activities = report.get("activities", {})
    if len(activities) > 1:
        for name, counts in activities.items():
            lines.append(
                f"  table {name}: {counts['activities_written']} written, "
                f"{counts['duplicates_dropped']} duplicates, {sum(counts['rejected'].values())} "
                f"rejected, {counts['filtered_out']} filtered out"
            )
    for broken in report.get("unreadable_inputs", []):
        lines.append(
            f"  UNREADABLE input:    {broken['source']} (after position {broken['position'] - 1}; "
            "its rest is one malformed dead letter)"
        )
    skipped = [i["source"] for i in report.get("inputs", []) if i.get("status") == "skipped"]
    if skipped:
        lines.append(f"  inputs skipped (committed earlier, use --reprocess): {len(skipped)}")
    lines.append(f"  data source:         {report.get('output')}" + (" (not written)" if dry else ""))
    if report.get("dead_letters"):
        lines.append(f"  dead letters:        {report['dead_letters']}")
    if "replay" in report:
        r = report["replay"]
        lines.append(
            f"  replayed:            {r.get('tied', 0)} record(s) of open dead letters"
            + (f": {r['resolved']} resolved, {r['open']} still open" if "resolved" in r else "")
        )
        ignored = {k: r.get(k, 0) for k in ("ignored_resolved", "ignored_unknown", "untied")}
        if any(ignored.values()):
            lines.append(
                f"    ignored: {ignored['ignored_resolved']} of resolved letters, "
                f"{ignored['ignored_unknown']} of unknown letters; {ignored['untied']} untied record(s) "
                "exported as plain input"
            )
    lines.extend(f"warning: {text}" for text in report.get("warnings", []))
    return "\n".join(lines)


class _QuietDependencies(logging.Filter):
    """Our INFO lines, other libraries' warnings, minus Beam's import-time noise about GCP."""

    NOISE = (
        "apitools not found",
        "bigquery_storage",
        "Converting string literal type hint",
        "Unable to create default GCS bucket",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("insights_link"):
            return True
        if record.levelno < logging.WARNING:
            return False
        if lifecycle.received_signal is not None and record.name.startswith("apache_beam"):
            return False  # the interrupted DoFn's traceback: the run's one line says it all
        if record.exc_info and _storage_failure(record.exc_info[1]):
            # Beam logs a failing DoFn with its traceback; a storage failure is already one
            # clear line (and the run's final line), so keep just the message.
            record.exc_info = None
            record.exc_text = None
        return not any(n in record.getMessage() for n in self.NOISE)


def _storage_failure(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was caused by, a StorageError (an expected, explained failure)."""
    from insights_link.storage import StorageError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StorageError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))  # structured fields, e.g. a --watch window
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _utc_text_formatter() -> logging.Formatter:
    """Text log lines stamped in UTC (``2026-11-30T05:33:12.340Z``), whatever the host's zone."""
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    return formatter


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Log lines to stderr; stdout is kept for the summary. Other libraries' chatter (Beam's
    start-up, the Azure SDK's credential probing) stays out unless ``--verbose`` (DEBUG)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_utc_text_formatter())
    if level > logging.DEBUG:
        handler.addFilter(_QuietDependencies())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("azure").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.ERROR)


COMMANDS = {
    "export": "export refined engagement events into a Customer Insights activity data source",
    "status": "what a data source holds: tables, files, runs, dead letters, the lock",
    "verify": "check everything a reader relies on; exit 1 naming each problem",
    "compact": "merge small files of each table and date, atomically",
    "vacuum": "delete files no commit references any more, after a retention",
    "forget": "erase customers: their rows in every table and their dead letters",
    "convert": "convert a data source between the CDM folder and Delta tables, in place",
    "dead-letters": "list rejected records (open and resolved), export them to fix and --replay",
    "share-profiles": "share chosen profile attributes and segments (never identifiers) as dimensions",
    "doctor": "check the link's prerequisites from here: access, namespace, naming, readers",
    "help": "show the help of a command: insights-link help export",
}
#: subcommands working on a data source, each a module of insights_link.commands
LAKE_COMMANDS = (
    "status",
    "verify",
    "compact",
    "vacuum",
    "forget",
    "convert",
    "dead-letters",
    "share-profiles",
    "doctor",
)


def top_level_help() -> str:
    width = max(10, *(len(name) + 2 for name in COMMANDS))
    commands = "\n".join(f"  {name:<{width}}{text}" for name, text in COMMANDS.items())
    return f"""usage: insights-link [--version] [--help] COMMAND [ARGS]

Moves refined web engagement events into a Customer Insights - Data lake as activity data:
a CDM folder (manifest + entity documents) or Delta tables, with Parquet files, locally or on
ADLS Gen2; and keeps the lake healthy (status, verify, compact, vacuum, forget, dead letters).

commands:
{commands}

Run 'insights-link help export' (or 'insights-link export --help') for every option, its
default and job-file key, the exit codes and examples."""


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    return (
        f"insights-link {of('insights-link')} (apache-beam {of('apache-beam')}, pyarrow {of('pyarrow')}, "
        f"Python {sys.version.split()[0]})"
    )


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code. A reader that closed stdout early (``| head``)
    ends it quietly, as other command-line tools do."""
    try:
        return _main(argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(top_level_help(), file=sys.stderr)
        return EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help"):
        print(top_level_help())
        return EXIT_OK
    if command == "--version":
        print(version_text())
        return EXIT_OK
    if command == "help":
        if not rest:
            print(top_level_help())
            return EXIT_OK
        command, rest = rest[0], ["--help"]
    if command in LAKE_COMMANDS:
        return lake_command(command, rest)
    if command != "export":
        print(
            f"insights-link: unknown command {command!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr
        )
        return EXIT_USAGE
    if "-h" in rest or "--help" in rest:
        configure_logging("text", logging.WARNING)  # keeps Beam's import-time chatter out
        from insights_link.pipeline.options import build_parser

        print(build_parser().format_help())
        return EXIT_OK
    return export(rest)


def export(argv: list[str]) -> int:
    """``insights-link export``: run, print the summary, map errors to exit codes."""
    log_format = _flag_value(argv, "--log-format") or "text"  # until the options are checked
    level = logging.DEBUG if "--verbose" in argv else logging.WARNING if "--quiet" in argv else logging.INFO
    configure_logging(log_format, level)

    def settle_output(config) -> None:
        """The checked options (flags over the job file) decide the output from here on."""
        nonlocal log_format
        log_format = config.log_format
        configure_logging(
            log_format, logging.DEBUG if config.verbose else logging.WARNING if config.quiet else logging.INFO
        )

    from insights_link.errors import (
        CommittedWithErrors,
        DataSourceBusy,
        InsightsLinkError,
        Interrupted,
        RunFailed,
        TooManyRejected,
        UsageError,
    )
    from insights_link.pipeline import watch
    from insights_link.pipeline.run import run

    def window_out(_line: dict, window_report: dict) -> None:
        if log_format == "json":  # each window's run report as one stdout line
            print(json.dumps(window_report, sort_keys=True), flush=True)

    previous = {
        signum: signal.signal(signum, lifecycle.interrupt) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        if watch.wants_watch(argv):
            report = watch.watch(argv, on_config=settle_output, on_window=window_out)
        else:
            watch.check_not_watching(argv)
            report = run(argv, on_config=settle_output)
    except UsageError as exc:
        return _failed(log_format, exc.exit_code, f"insights-link: error: {exc}", exc.status)
    except TooManyRejected as exc:
        if getattr(exc, "report", None) and log_format == "text":  # a dry run: show what it found
            print(summary_text(exc.report))
        return _failed(log_format, exc.exit_code, f"insights-link: run failed: {exc}", exc.status)
    except DataSourceBusy as exc:
        return _failed(log_format, exc.exit_code, f"insights-link: data source busy: {exc}", exc.status)
    except CommittedWithErrors as exc:
        message = str(exc) if str(exc).startswith("the run committed") else f"the run committed, but {exc}"
        return _failed(log_format, exc.exit_code, f"insights-link: {message}", exc.status)
    except RunFailed as exc:
        logger.debug("run failed", exc_info=True)
        return _failed(
            log_format, exc.exit_code, f"insights-link: run failed, nothing committed: {exc}", exc.status
        )
    except InsightsLinkError as exc:  # any other explained failure: its class knows its exit code
        return _failed(log_format, exc.exit_code, f"insights-link: run failed: {exc}", exc.status)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        settled = (
            "the run had already committed"
            if getattr(exc, "committed", False)
            else "nothing committed; the next run cleans up"
        )
        window = getattr(exc, "window", None)  # export --watch: name the window the signal met
        if window:
            settled = f"window {window}: " + ("it had already committed" if exc.committed else settled)
        return _failed(
            log_format,
            128 + signum,
            f"insights-link: interrupted by {signal.Signals(signum).name}: {settled}",
            "interrupted",
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if log_format == "json":
        print(json.dumps(report, sort_keys=True))
    else:
        print(watch.summary_text(report) if "windows" in report else summary_text(report))
    return EXIT_OK


def lake_command(name: str, argv: list[str]) -> int:
    """A subcommand of :mod:`insights_link.commands`: run it, print its summary (or JSON), map
    errors to exit codes like ``export``."""
    import importlib

    from insights_link.errors import DataSourceBusy, InsightsLinkError, Interrupted, UsageError

    module = importlib.import_module(f"insights_link.commands.{name.replace('-', '_')}")
    if "-h" in argv or "--help" in argv:
        print(module.build_parser().format_help())
        return EXIT_OK
    log_format = _flag_value(argv, "--log-format") or "text"
    level = logging.DEBUG if "--verbose" in argv else logging.WARNING if "--quiet" in argv else logging.INFO
    configure_logging(log_format if log_format in ("text", "json") else "text", level)
    as_json = "--json" in argv or log_format == "json"
    previous = {
        signum: signal.signal(signum, lifecycle.interrupt) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        report, summary = module.run(argv, lambda: datetime.now(UTC))
    except UsageError as exc:
        return _failed(log_format, exc.exit_code, f"insights-link {name}: error: {exc}", exc.status)
    except DataSourceBusy as exc:
        return _failed(
            log_format, exc.exit_code, f"insights-link {name}: data source busy: {exc}", exc.status
        )
    except InsightsLinkError as exc:
        logger.debug("%s failed", name, exc_info=True)
        return _failed(log_format, exc.exit_code, f"insights-link {name}: failed: {exc}", exc.status)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        return _failed(
            log_format,
            128 + signum,
            f"insights-link {name}: interrupted by {signal.Signals(signum).name}; run it again to finish",
            "interrupted",
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(json.dumps(report, sort_keys=True) if as_json else summary)
    return EXIT_OK


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _failed(log_format: str, code: int, message: str, status: str) -> int:
    """One clear line on stderr; with JSON logs also a JSON summary as the last stdout line."""
    print(message, file=sys.stderr)
    if log_format == "json":
        print(json.dumps({"status": status, "exit_code": code, "error": message}))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
