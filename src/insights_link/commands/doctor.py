"""``insights-link doctor``: placeholder until issue 13 lands."""

from __future__ import annotations

import argparse

from insights_link.commands.common import Clock, Parser
from insights_link.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    return Parser(prog="insights-link doctor", description="not built yet")


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    raise UsageError("insights-link doctor is not built yet")
