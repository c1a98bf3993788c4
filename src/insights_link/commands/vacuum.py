"""``insights-link vacuum``: not built yet (issue 11)."""

from __future__ import annotations

from insights_link.commands.common import Clock, lake_parser
from insights_link.errors import UsageError


def build_parser():
    return lake_parser("insights-link vacuum", "Not built yet.")


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    build_parser().parse_args(argv)
    raise UsageError("insights-link vacuum is not built yet")
