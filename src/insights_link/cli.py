"""The ``insights-link`` command: ``insights-link export ...``.

Thin: configure logging, call :func:`insights_link.pipeline.run`, print the summary, map errors
to exit codes. Exit codes: 0 committed (also with rejected records), 1 the run failed and
committed nothing, 2 usage or configuration error (nothing written).
"""

from __future__ import annotations

import logging
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

USAGE = """usage: insights-link export --input PATH [--input PATH ...] --output LAKE_ROOT
         [--data-source NAME] [--activity-name NAME] [--activity-type TYPE]
         [--input-format jsonl|csv|avro] [--reprocess] [--property Signal.X.Y ...]
         [--run-id ID] [--run-time ISO8601] [any Apache Beam pipeline option]"""

logger = logging.getLogger("insights_link")


def summary_text(report: dict) -> str:
    """The short human summary printed at the end of a run."""
    lines = [
        f"run {report['run_id']}: {report['status']}",
        f"  records read:        {report.get('records_read', 0)}",
        f"  activities written:  {report.get('activities_written', 0)}",
        f"  duplicates dropped:  {report.get('duplicates_dropped', 0)}",
    ]
    rejected = report.get("rejected", {})
    total = sum(rejected.values())
    lines.append(f"  rejected:            {total}")
    for reason, count in rejected.items():
        if count:
            lines.append(f"    {reason:<18} {count}")
    skipped = [i["source"] for i in report.get("inputs", []) if i.get("status") == "skipped"]
    if skipped:
        lines.append(f"  inputs skipped (committed earlier, use --reprocess): {len(skipped)}")
    lines.append(f"  data source:         {report.get('output')}")
    if report.get("dead_letters"):
        lines.append(f"  dead letters:        {report['dead_letters']}")
    return "\n".join(lines)


class _QuietDependencies(logging.Filter):
    """Our INFO lines, other libraries' warnings, minus Beam's import-time noise about GCP."""

    NOISE = ("apitools not found", "bigquery_storage", "Converting string literal type hint")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("insights_link"):
            return True
        if record.levelno < logging.WARNING:
            return False
        return not any(n in record.getMessage() for n in self.NOISE)


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr; stdout is kept for the summary."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_QuietDependencies())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] != "export":
        print(f"insights-link: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging()
    from insights_link.pipeline import RunFailed, UsageError, run

    try:
        report = run(argv[1:])
    except UsageError as exc:
        print(f"insights-link: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as exc:
        logger.debug("run failed", exc_info=True)
        print(f"insights-link: run failed, nothing committed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summary_text(report))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
