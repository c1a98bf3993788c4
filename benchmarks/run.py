"""One command that measures ``insights-link export`` against the DuckDB baseline, side by side.

For each size it generates the input once (cached in the work folder, keyed by the generator's
parameters), then runs the DuckDB baseline (``benchmarks/duckdb_baseline.py``) and
``insights-link export`` alternately, each as its own process with a fresh output folder,
``--rounds`` times each. Per run it measures:

- whole-process wall time (``time.perf_counter`` around start and exit of the child);
- peak RSS of the largest process (``ru_maxrss`` from ``os.wait4`` on the child: on Linux the
  maximum over the child and the descendants it waited for, not their sum);
- peak RSS of the whole process tree (the child and all its descendants, summed, sampled from
  ``/proc`` every 0.1 s): what a multi-process run (Beam's ``multi_processing`` mode starts worker
  processes) really holds. Shared pages count once per process, so it is an upper bound.

The machine may be shared (other people's test runs): before each run the harness waits up to
``--quiet-wait`` seconds for other processes to use less than 15% of the CPUs, measures how much
CPU they took while the run ran (``others' CPU``: machine busy time from /proc/stat minus the run's
own CPU time), and measures a run again (up to ``--noisy-retries`` times) when that was over 15%.
The report shows the worst ``others' CPU`` among the kept runs of each row: read rows with a high
one as noisy.

Every run is verified before its time counts: ours must exit 0, commit, and report exactly the
counts the generator wrote into ``_expected.json`` (records read, activities written, duplicates
dropped, rejected per reason); DuckDB must exit 0 and write the valid unique events (within 0.1%:
its SQL only approximates the contract) into one partition per date. A size whose runs did not all
verify reports no speed.

``--incremental`` measures the scheduled Nth run: a separately generated set of 100k events
(another seed, so a disjoint id space; over the base's last date and the next one) exported into
a copy of a data source already holding the 3M-event run, against the same run into an empty
data source.

``--table-formats cdm,delta`` adds, for each mode, the same export with ``--table-format delta``
(one Delta table per activity, committed through delta-rs) as its own row,
``insights-link/<mode>/delta``, and a table of Delta's wall time against CDM's. A Delta run is
verified like a CDM run and, besides, its table's log must list exactly the valid unique rows
(the ``numRecords`` of its files) at reader 1 / writer 2, with no CDM manifest beside it. The
default is ``cdm`` only.

Usage (from the repository root; bench-work/ is git-ignored)::

    python benchmarks/run.py [--sizes 300000,1000000,3000000] [--rounds 3] [--work bench-work]
        [--files 8] [--modes in_memory,multi_processing] [--table-formats cdm,delta]
        [--incremental] [--json OUT.json]
        [--quiet-wait 30] [--noisy-retries 2] [--markdown]
    python benchmarks/run.py --from-json OUT.json [--markdown]   # the report of an earlier run

``in_memory`` is the default a user gets (no Beam options); ``multi_processing`` adds
``--direct_running_mode=multi_processing --direct_num_workers=2``. Not part of the test suite
(timing tests are flaky); ``tests/test_benchmark_harness.py`` is a smoke test of its bookkeeping.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "bench-work"
DEFAULT_SIZES = (300_000, 1_000_000, 3_000_000)

#: our runs on a dask.distributed cluster the harness starts: mode -> worker processes
DASK_MODES = {"dask_1": 1, "dask_2": 2}
#: Beam options per mode; in_memory is what a user gets without options.
MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "in_memory": (),
    "multi_processing": ("--direct_running_mode=multi_processing", "--direct_num_workers=2"),
    # --runner DaskRunner --dask_client_address tcp://...: added by ours_command (see DaskCluster)
    **{mode: () for mode in DASK_MODES},
}
DUCKDB = "duckdb"
#: the second baseline (issue 14): the fastest script a user could write (duckdb_bare.py)
BARE = "duckdb-bare"
BARE_TOLERANCE = 0.02  # it drops epoch-millisecond timestamps and keeps bad URIs: rows differ a little
OURS = "insights-link"
DATA_SOURCE = "EngagementInsights"
TABLE = "WebLog"  # the one activity table of a measured run
#: our table formats; cdm is what a user gets without --table-format
TABLE_FORMATS = ("cdm", "delta")
MANIFEST = "default.manifest.cdm.json"

#: The generator's parameters for the measured sets (the workload of issue 4).
DATA_PARAMS: dict[str, Any] = {
    "invalid_ratio": 0.03,
    "duplicate_ratio": 0.01,
    "days": 30,
    "start": "2024-05-01",
    "seed": 7,
}
INCREMENTAL_EVENTS = 100_000
INCREMENTAL_BASE = 3_000_000
INCREMENTAL_SEED = 1007
INCREMENTAL_DAYS = 2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_SHARE = 0.15  # "quiet": other processes use less than this share of the CPUs
DEFAULT_QUIET_WAIT = 30.0
NOISY_SHARE = 0.15  # a run during which other processes took more than this share of the CPUs is noisy
DEFAULT_NOISY_RETRIES = 2
DUCKDB_TOLERANCE = 0.001  # relative; the baseline's SQL only approximates the contract

# Targets from issue 4.
TARGET_RATIO = 0.5  # ours events/s / DuckDB events/s, at 1M events, default options
TARGET_RATIO_SIZE = 1_000_000
TARGET_RSS_BYTES = 1_500_000_000  # 1.5 GB (decimal: the stricter reading)
TARGET_RSS_GROWTH = 1.2  # peak RSS at 3M / at 1M
TARGET_LINEAR_SLOPE = 1.2  # marginal cost per event, later segment / earlier segment
TARGET_MP_VS_MEMORY = 1.0  # multi_processing wall / in_memory wall
TARGET_INCREMENTAL = 1.2
# Targets from issue 14 (against the bare DuckDB script).
TARGET_RATIO_BARE_3M = 0.4
TARGET_CPU_VS_BARE = 2.5  # 100k into the 3M data source / 100k into an empty one

# -- pure bookkeeping ----------------------------------------------------------------------------


def parse_count(text: str) -> int:
    """``300000``, ``300_000``, ``300k`` or ``1M`` -> an event count."""
    t = text.strip().replace("_", "").lower()
    scale = 1
    if t.endswith("k"):
        scale, t = 1_000, t[:-1]
    elif t.endswith("m"):
        scale, t = 1_000_000, t[:-1]
    value = float(t) * scale
    if value <= 0 or value != int(value):
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def variant(mode: str, table_format: str = "cdm") -> str:
    """The key of one of our configurations: ``in_memory`` (CDM) or ``in_memory/delta``."""
    return mode if table_format == "cdm" else f"{mode}/{table_format}"


def ours_label(mode: str, table_format: str = "cdm") -> str:
    """The engine label of one of our configurations: ``insights-link/in_memory[/delta]``."""
    return f"{OURS}/{variant(mode, table_format)}"


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count)."""
    if not values:
        raise ValueError("median of nothing")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def events_per_second(events: int, seconds: float | None) -> float | None:
    if seconds is None or seconds <= 0:
        return None
    return events / seconds


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def dataset_key(events: int, files: int, params: dict[str, Any]) -> str:
    """The cache folder name of a generated set: every parameter that changes its bytes."""
    return (
        f"jsonl-e{events}-f{files}-i{params['invalid_ratio']}-u{params['duplicate_ratio']}"
        f"-d{params['days']}-{params['start']}-seed{params['seed']}"
    )


def next_start(start: str, days: int, overlap: int = 1) -> str:
    """The first day of a follow-up set that overlaps the last ``overlap`` days of the base set."""
    return (date.fromisoformat(start) + timedelta(days=days - overlap)).isoformat()


def verify_ours(exit_code: int, report: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
    """Problems with one of our runs (empty: verified), from its exit code and ``_runs`` report."""
    problems = [] if exit_code == 0 else [f"exit code {exit_code}"]
    if report is None:
        return [*problems, "no run report"]
    if report.get("status") != "committed":
        problems.append(f"status {report.get('status')!r}, not 'committed'")
    wanted = {
        "records_read": expected["events_total"],
        "activities_written": expected["valid_unique"],
        "duplicates_dropped": expected["duplicates"],
    }
    for name, value in wanted.items():
        if report.get(name) != value:
            problems.append(f"{name} {report.get(name)} != expected {value}")
    rejected = report.get("rejected") or {}
    for reason, value in expected["invalid"].items():
        if rejected.get(reason, 0) != value:
            problems.append(f"rejected[{reason}] {rejected.get(reason, 0)} != expected {value}")
    return problems


def verify_delta_log(
    log_rows: int | None, protocol: tuple[int, int] | None, has_manifest: bool, expected: dict[str, Any]
) -> list[str]:
    """Problems with the Delta table a run left (empty: verified): the rows its log lists (the
    sum of its files' ``numRecords``), its protocol (reader, writer), no CDM manifest beside it."""
    if log_rows is None:
        return ["no Delta table"]
    problems = []
    if log_rows != expected["valid_unique"]:
        problems.append(f"Delta log lists {log_rows} rows != expected {expected['valid_unique']}")
    if protocol != (1, 2):
        problems.append(f"Delta protocol {protocol} != (1, 2)")
    if has_manifest:
        problems.append("a CDM manifest beside the Delta table")
    return problems


def read_delta_log(table_path: Path) -> tuple[int | None, tuple[int, int] | None]:
    """The rows a Delta table's log lists and its (reader, writer) protocol; (None, None) when
    there is no table. Reads the log only (delta-rs), never the data files."""
    if not (table_path / "_delta_log").is_dir():
        return None, None
    import pyarrow as pa
    from deltalake import DeltaTable

    dt = DeltaTable(str(table_path))
    adds = pa.table(dt.get_add_actions(flatten=True))
    rows = sum(n or 0 for n in adds.column("num_records").to_pylist()) if adds.num_rows else 0
    protocol = dt.protocol()
    return rows, (protocol.min_reader_version, protocol.min_writer_version)


def verify_duckdb(
    exit_code: int,
    result: dict[str, Any] | None,
    expected: dict[str, Any],
    tolerance: float = DUCKDB_TOLERANCE,
) -> list[str]:
    """Problems with one DuckDB run (empty: verified), from its exit code and printed result."""
    problems = [] if exit_code == 0 else [f"exit code {exit_code}"]
    if result is None:
        return [*problems, "no result printed"]
    rows = result.get("rows_written")
    want = expected["valid_unique"]
    if not isinstance(rows, int) or abs(rows - want) > tolerance * want:
        problems.append(f"rows_written {rows} not within {tolerance:.1%} of expected {want}")
    dates = len(expected.get("valid_unique_per_date") or {})
    if dates and result.get("partitions") != dates:
        problems.append(f"partitions {result.get('partitions')} != expected {dates} dates")
    return problems


def verify_bare(exit_code: int, result: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
    """Problems with one run of the bare DuckDB script: it must write about the valid unique
    events (within ``BARE_TOLERANCE``; it checks less) into at least one partition per date."""
    problems = [] if exit_code == 0 else [f"exit code {exit_code}"]
    if result is None:
        return [*problems, "no result printed"]
    rows, want = result.get("rows_written"), expected["valid_unique"]
    if not isinstance(rows, int) or abs(rows - want) > BARE_TOLERANCE * want:
        problems.append(f"rows_written {rows} not within {BARE_TOLERANCE:.0%} of expected {want}")
    dates = len(expected.get("valid_unique_per_date") or {})
    if dates and (result.get("partitions") or 0) < dates:
        problems.append(f"partitions {result.get('partitions')} < expected {dates} dates")
    return problems


def summarize(runs: Sequence[dict[str, Any]], events: int) -> dict[str, Any]:
    """Median wall, events/s and peak RSS over the rounds of one engine at one size.

    Speed is reported only when every round verified (a broken run must not give a fast number).
    """
    verified = bool(runs) and all(not run["problems"] for run in runs)
    walls = [run["wall_s"] for run in runs]
    wall = median(walls) if verified else None
    rss = [run["maxrss_kb"] for run in runs if run.get("maxrss_kb") is not None]
    tree = [run["tree_rss_kb"] for run in runs if run.get("tree_rss_kb") is not None]
    cpu = [run["cpu_s"] for run in runs if run.get("cpu_s") is not None]
    cpu_s = median(cpu) if verified and cpu and len(cpu) == len(runs) else None
    return {
        "rounds": len(runs),
        "verified": verified,
        "problems": sorted({p for run in runs for p in run["problems"]}),
        "walls_s": [round(w, 3) for w in walls],
        "median_wall_s": None if wall is None else round(wall, 3),
        "events_per_s": None if wall is None else round(events / wall, 1),
        "median_cpu_s": None if cpu_s is None else round(cpu_s, 2),
        "cpu_s_per_million": None if cpu_s is None or not events else round(cpu_s * 1e6 / events, 2),
        "peak_rss_kb": max(rss) if rss else None,
        "peak_tree_rss_kb": max(tree) if tree else None,
        "max_others_cpu_share": max(
            (run["others_cpu_share"] for run in runs if run.get("others_cpu_share") is not None), default=None
        ),
    }


def peak_memory_kb(summary: dict[str, Any]) -> int | None:
    """The memory a run held at its peak: the larger of the exact largest-process and the sampled tree."""
    values = [v for v in (summary.get("peak_rss_kb"), summary.get("peak_tree_rss_kb")) if v is not None]
    return max(values) if values else None


def other_cpu_share(busy_s: float, own_cpu_s: float, wall_s: float, ncpu: int) -> float:
    """The share of the machine's CPU that other processes used while a run ran (0: a quiet machine).

    ``busy_s`` is the CPU time the whole machine spent busy during the run (from /proc/stat),
    ``own_cpu_s`` what the run's own process tree used.
    """
    if wall_s <= 0 or ncpu <= 0:
        return 0.0
    return min(1.0, max(0.0, busy_s - own_cpu_s) / (wall_s * ncpu))


def is_noisy(run: dict[str, Any], threshold: float = NOISY_SHARE) -> bool:
    """Whether other processes took more than ``threshold`` of the CPUs while the run ran."""
    share = run.get("others_cpu_share")
    return share is not None and share > threshold


def marginal_costs(points: Iterable[tuple[int, float]]) -> list[dict[str, Any]]:
    """Seconds per million events between consecutive sizes (the slope, start-up cost excluded)."""
    ordered = sorted(points)
    out = []
    for (n0, w0), (n1, w1) in pairwise(ordered):
        out.append({"from": n0, "to": n1, "s_per_million": (w1 - w0) / (n1 - n0) * 1_000_000})
    return out


def linear_fit(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares ``wall = fixed + per_event * events``: (fixed seconds, seconds per million)."""
    if len(points) < 2:
        return None
    xs = [p[0] / 1_000_000 for p in points]
    ys = [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


def _target(name: str, goal: str, value: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value, "met": met}


def _engine(size: dict[str, Any], label: str) -> dict[str, Any] | None:
    return size["engines"].get(label)


def _is_dask(label: str) -> bool:
    return label.count("/") >= 1 and label.split("/")[1] in DASK_MODES


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 4's targets against the measured numbers: each with the measured value and met or not.

    ``met`` is None when the benchmark did not measure what the target needs.
    """
    sizes = {s["events"]: s for s in results.get("sizes", [])}
    memory_label = f"{OURS}/in_memory"
    out = []

    one_m = sizes.get(TARGET_RATIO_SIZE)
    r = one_m["ratio"].get("in_memory") if one_m else None
    out.append(
        _target(
            "throughput",
            f">= {TARGET_RATIO}x DuckDB events/s at 1M events, default options",
            "not measured" if r is None else f"{r:.2f}x",
            None if r is None else r >= TARGET_RATIO,
        )
    )

    bare = sizes.get(TARGET_RATIO_SIZE, {}).get("ratio_bare", {}).get("in_memory")
    out.append(
        _target(
            "throughput vs bare DuckDB",
            f">= {TARGET_RATIO}x the bare DuckDB script's events/s at 1M events, default options",
            "not measured" if bare is None else f"{bare:.2f}x",
            None if bare is None else bare >= TARGET_RATIO,
        )
    )
    bare_3m = sizes.get(3_000_000, {}).get("ratio_bare", {}).get("in_memory")
    out.append(
        _target(
            "throughput vs bare DuckDB at 3M",
            f">= {TARGET_RATIO_BARE_3M}x the bare DuckDB script's events/s at 3M events",
            "not measured" if bare_3m is None else f"{bare_3m:.2f}x",
            None if bare_3m is None else bare_3m >= TARGET_RATIO_BARE_3M,
        )
    )
    cpu = [
        (n, ratio(s["engines"][memory_label].get("median_cpu_s"), s["engines"][BARE].get("median_cpu_s")))
        for n, s in sorted(sizes.items())
        if memory_label in s["engines"] and BARE in s["engines"]
    ]
    cpu = [(n, v) for n, v in cpu if v is not None]
    out.append(
        _target(
            "CPU per event",
            f"CPU-s per event <= {TARGET_CPU_VS_BARE}x the bare DuckDB script's, default options",
            ", ".join(f"{n / 1e6:g}M {v:.2f}x" for n, v in cpu) if cpu else "not measured",
            all(v <= TARGET_CPU_VS_BARE for _, v in cpu) if cpu else None,
        )
    )

    peaks = []
    for n, size in sorted(sizes.items()):
        for label, summary in size["engines"].items():
            if _is_dask(label):  # a long-lived cluster's processes: reported, not the target's
                continue
            if label.startswith(OURS) and peak_memory_kb(summary) is not None:
                peaks.append((peak_memory_kb(summary), n, label))
    if peaks:
        kb, n, label = max(peaks)
        out.append(
            _target(
                "peak RSS",
                f"<= {TARGET_RSS_BYTES / 1e9:.1f} GB",
                f"{kb * 1024 / 1e9:.2f} GB ({label.split('/', 1)[1]}, {n:,} events)",
                kb * 1024 <= TARGET_RSS_BYTES,
            )
        )
    else:
        out.append(_target("peak RSS", f"<= {TARGET_RSS_BYTES / 1e9:.1f} GB", "not measured", None))

    if 1_000_000 in sizes and 3_000_000 in sizes:
        for label in sizes[3_000_000]["engines"]:
            if not label.startswith(OURS) or _is_dask(label):
                continue
            small = sizes[1_000_000]["engines"].get(label)
            big = sizes[3_000_000]["engines"].get(label)
            growth = ratio(peak_memory_kb(big or {}), peak_memory_kb(small or {}))
            out.append(
                _target(
                    f"flat memory ({label.split('/', 1)[1]})",
                    f"RSS at 3M <= {TARGET_RSS_GROWTH}x RSS at 1M",
                    "not measured" if growth is None else f"{growth:.2f}x",
                    None if growth is None else growth <= TARGET_RSS_GROWTH,
                )
            )
    else:
        out.append(
            _target("flat memory", f"RSS at 3M <= {TARGET_RSS_GROWTH}x RSS at 1M", "not measured", None)
        )

    points = [
        (n, s["engines"][memory_label]["median_wall_s"])
        for n, s in sorted(sizes.items())
        if memory_label in s["engines"] and s["engines"][memory_label]["median_wall_s"] is not None
    ]
    costs = marginal_costs(points)
    if len(costs) >= 2:
        slopes = [c["s_per_million"] for c in costs]
        worst = max(b / a for a, b in pairwise(slopes)) if min(slopes) > 0 else None
        text = ", ".join(
            f"{c['from'] / 1e6:g}M->{c['to'] / 1e6:g}M {c['s_per_million']:.2f} s/M" for c in costs
        )
        out.append(
            _target(
                "linear cost",
                f"marginal s/M events of each segment <= {TARGET_LINEAR_SLOPE}x the previous",
                text + ("" if worst is None else f" (worst step {worst:.2f}x)"),
                None if worst is None else worst <= TARGET_LINEAR_SLOPE,
            )
        )
    else:
        out.append(_target("linear cost", "0.3M, 1M and 3M on one line", "not measured", None))

    mp_label = f"{OURS}/multi_processing"
    mp = [
        (n, ratio(s["engines"][mp_label]["median_wall_s"], s["engines"][memory_label]["median_wall_s"]))
        for n, s in sorted(sizes.items())
        if mp_label in s["engines"] and memory_label in s["engines"]
    ]
    mp = [(n, v) for n, v in mp if v is not None]
    if mp:
        out.append(
            _target(
                "multi_processing",
                f"wall <= {TARGET_MP_VS_MEMORY}x in_memory wall",
                ", ".join(f"{n / 1e6:g}M {v:.2f}x" for n, v in mp),
                all(v <= TARGET_MP_VS_MEMORY for _, v in mp),
            )
        )
    else:
        out.append(_target("multi_processing", "not slower than in_memory", "not measured", None))

    inc = results.get("incremental")
    r = inc.get("ratio") if inc else None
    out.append(
        _target(
            "Nth run flat",
            f"100k into the 3M data source <= {TARGET_INCREMENTAL}x 100k into an empty one",
            "not measured" if r is None else f"{r:.2f}x",
            None if r is None else r <= TARGET_INCREMENTAL,
        )
    )
    return out


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def fmt_mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.0f}"


_NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?x?$")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Rows of text cells as an aligned plain-text table, or a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(_NUMBER.match(r[i]) or r[i] in ("", "-") for r in rows)
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


RESULT_HEADERS = (
    "events",
    "engine",
    "median wall s",
    "events/s",
    "vs DuckDB",
    "vs bare DuckDB",
    "CPU s",
    "CPU s / M events",
    "peak RSS MiB",
    "tree RSS MiB",
    "walls s",
    "others' CPU",
    "verified",
)


def result_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per size and engine: the numbers the report prints."""
    rows = []
    for size in results.get("sizes", []):
        for label, summary in size["engines"].items():
            mode = label.split("/", 1)[1] if "/" in label else None
            rows.append(
                [
                    f"{size['events']:,}",
                    label,
                    fmt_seconds(summary["median_wall_s"]),
                    fmt_rate(summary["events_per_s"]),
                    "" if mode is None else fmt_ratio(size["ratio"].get(mode)),
                    "" if mode is None else fmt_ratio((size.get("ratio_bare") or {}).get(mode)),
                    fmt_seconds(summary.get("median_cpu_s")),
                    fmt_seconds(summary.get("cpu_s_per_million")),
                    fmt_mib(summary["peak_rss_kb"]),
                    fmt_mib(summary["peak_tree_rss_kb"]),
                    " ".join(f"{w:.2f}" for w in summary["walls_s"]),
                    fmt_share(summary.get("max_others_cpu_share")),
                    "yes" if summary["verified"] else "NO: " + "; ".join(summary["problems"]),
                ]
            )
    return rows


INCREMENTAL_HEADERS = (
    "run",
    "median wall s",
    "events/s",
    "peak RSS MiB",
    "tree RSS MiB",
    "walls s",
    "others' CPU",
    "verified",
)


def incremental_rows(inc: dict[str, Any]) -> list[list[str]]:
    rows = []
    new, base = f"{inc['events']:,}", f"{inc['base_events']:,}"
    for label, key in (
        (f"{new} into the {base}-event data source", "into_base"),
        (f"{new} into an empty one", "into_empty"),
    ):
        summary = inc[key]
        rows.append(
            [
                label,
                fmt_seconds(summary["median_wall_s"]),
                fmt_rate(summary["events_per_s"]),
                fmt_mib(summary["peak_rss_kb"]),
                fmt_mib(summary["peak_tree_rss_kb"]),
                " ".join(f"{w:.2f}" for w in summary["walls_s"]),
                fmt_share(summary.get("max_others_cpu_share")),
                "yes" if summary["verified"] else "NO: " + "; ".join(summary["problems"]),
            ]
        )
    return rows


FORMAT_HEADERS = (
    "events",
    "mode",
    "CDM wall s",
    "Delta wall s",
    "Delta / CDM",
    "Delta - CDM s",
    "CDM CPU s",
    "Delta CPU s",
)


def median_cpu_s(size: dict[str, Any], label: str) -> float | None:
    """The median CPU seconds of one engine's verified rounds at one size (None if unknown).

    CPU time moves less than wall time when other processes share the machine."""
    runs = (size.get("runs") or {}).get(label) or []
    cpu = [run["cpu_s"] for run in runs if run.get("cpu_s") is not None and not run.get("problems")]
    return median(cpu) if cpu and len(cpu) == len(runs) else None


def format_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per size and mode measured in both table formats: Delta's wall (and CPU) time
    against CDM's."""
    rows = []
    for size in results.get("sizes", []):
        engines = size["engines"]
        for label in engines:
            if not label.startswith(f"{OURS}/") or label.count("/") != 1:
                continue
            mode = label.split("/", 1)[1]
            delta_label = ours_label(mode, "delta")
            delta = engines.get(delta_label)
            if delta is None:
                continue
            cdm_wall, delta_wall = engines[label]["median_wall_s"], delta["median_wall_s"]
            diff = None if cdm_wall is None or delta_wall is None else delta_wall - cdm_wall
            rows.append(
                [
                    f"{size['events']:,}",
                    mode,
                    fmt_seconds(cdm_wall),
                    fmt_seconds(delta_wall),
                    fmt_ratio(ratio(delta_wall, cdm_wall)),
                    "-" if diff is None else f"{diff:+.2f}",
                    fmt_seconds(median_cpu_s(size, label)),
                    fmt_seconds(median_cpu_s(size, delta_label)),
                ]
            )
    return rows


def target_rows(targets: Sequence[dict[str, Any]]) -> list[list[str]]:
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    return [[t["target"], t["goal"], t["measured"], verdict[t["met"]]] for t in targets]


def render_report(results: dict[str, Any], markdown: bool = False) -> str:
    """The whole report as text (or Markdown): machine, results, incremental run, targets."""
    m = results.get("machine", {})
    load = results.get("loadavg", {})
    parts = [
        f"machine: {m.get('cpu_model')}, {m.get('nproc')} CPUs, {m.get('mem_total_gib')} GiB RAM, "
        f"Linux {m.get('kernel')}, Python {m.get('python')}, duckdb {m.get('duckdb')}, "
        f"pyarrow {m.get('pyarrow')}, apache-beam {m.get('apache_beam')}, "
        f"insights-link {m.get('insights_link')} (git {m.get('git_commit')})",
        f"load average (1/5/15 min) before: {load.get('before')}, after: {load.get('after')}",
        "",
        format_table(RESULT_HEADERS, result_rows(results), markdown),
    ]
    formats = format_rows(results)
    if formats:
        parts += [
            "",
            "table formats: the same export with --table-format delta against the CDM folder",
            format_table(FORMAT_HEADERS, formats, markdown),
        ]
    if results.get("incremental"):
        inc = results["incremental"]
        parts += [
            "",
            f"incremental: {inc['events']:,} new events (dates {', '.join(inc['dates'])}); "
            f"into-base / into-empty = {fmt_ratio(inc.get('ratio'))}",
            format_table(INCREMENTAL_HEADERS, incremental_rows(inc), markdown),
        ]
    targets = results.get("targets") or evaluate_targets(results)
    parts += ["", format_table(("target", "goal", "measured", "verdict"), target_rows(targets), markdown)]
    return "\n".join(parts)


# -- measuring -----------------------------------------------------------------------------------


class TreeRss(threading.Thread):
    """Samples the summed RSS of a process and all its descendants from /proc; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.peak_processes = 0
        self._stop_event = threading.Event()
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._cpu_ticks: dict[int, int] = {}  # last CPU time seen per process of the tree

    @property
    def cpu_s(self) -> float:
        """CPU seconds the tree's processes used, as last sampled (misses each one's last 0.1 s)."""
        return sum(self._cpu_ticks.values()) / CLOCK_TICKS

    def sample(self) -> None:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        cpu: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * self._page_kb
            cpu[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
        tree, frontier = {self.pid}, [self.pid]
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        for pid in tree:
            if pid in cpu:
                self._cpu_ticks[pid] = cpu[pid]
        total = sum(rss.get(pid, 0) for pid in tree)
        if total > self.peak_kb:
            self.peak_kb = total
        self.peak_processes = max(self.peak_processes, len([p for p in tree if p in rss]))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def machine_busy_s() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat; idle and iowait excluded)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_for_quiet(
    max_wait: float, threshold: float = QUIET_SHARE, window: float = 1.0
) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` of the CPUs.

    Returns (seconds waited, the busy share last seen). With ``max_wait`` 0 it only looks once.
    """
    ncpu = len(os.sched_getaffinity(0))
    began = time.perf_counter()
    while True:
        before, t0 = machine_busy_s(), time.perf_counter()
        time.sleep(window)
        share = other_cpu_share(machine_busy_s() - before, 0.0, time.perf_counter() - t0, ncpu)
        waited = time.perf_counter() - began
        if share < threshold or waited >= max_wait:
            return round(waited, 1), round(share, 3)


def run_measured(cmd: Sequence[str], log_dir: Path, name: str, quiet_wait: float = 0.0) -> dict[str, Any]:
    """Run ``cmd`` as a child process; wall time, ru_maxrss (KB), sampled tree RSS (KB), noise.

    Before starting it waits up to ``quiet_wait`` s for the machine to be quiet; during the run it
    measures how much CPU other processes took (``other_cpu_share``: 0 is a clean measurement).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    waited, busy_before = wait_for_quiet(quiet_wait) if quiet_wait > 0 else (0.0, None)
    load = os.getloadavg()[0]
    ncpu = len(os.sched_getaffinity(0))
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        busy0 = machine_busy_s()
        began = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)
        sampler = TreeRss(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        busy = machine_busy_s() - busy0
    sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    own_cpu = max(usage.ru_utime + usage.ru_stime, sampler.cpu_s)
    return {
        "cmd": list(cmd),
        "exit_code": proc.returncode,
        "wall_s": wall,
        "cpu_s": round(own_cpu, 2),
        "maxrss_kb": usage.ru_maxrss,
        "tree_rss_kb": sampler.peak_kb or None,
        "tree_processes": sampler.peak_processes,
        "loadavg_1m_at_start": round(load, 2),
        "quiet_wait_s": waited,
        "others_cpu_before": busy_before,
        "others_cpu_share": round(other_cpu_share(busy, own_cpu, wall, ncpu), 3),
        "stdout": str(stdout_path),
        "stderr": str(stderr_path),
    }


def _load_generator() -> ModuleType:
    name = "bench_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("generate.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ensure_dataset(
    work: Path, events: int, files: int, params: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """The generated input for these parameters: reused from the work folder, else generated."""
    folder = work / "data" / dataset_key(events, files, params)
    expected_path = folder / "_expected.json"
    if expected_path.is_file():
        expected = json.loads(expected_path.read_text(encoding="utf-8"))
        wanted = {"events": events, "files": files, **params, "format": "jsonl", "gzip": False}
        if expected.get("params") == wanted and all((folder / f).is_file() for f in expected["files"]):
            return folder, expected
    print(f"generating {events:,} events in {files} files -> {folder}", flush=True)
    began = time.perf_counter()
    expected = _load_generator().generate(folder, events, files, **params)
    print(f"  generated in {time.perf_counter() - began:.1f} s", flush=True)
    return folder, expected


class DaskCluster:
    """A ``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes (no nanny,
    so each worker is one process whose CPU time and RSS the harness reads from /proc) on free
    loopback ports, started once and kept for every size (a cluster is long-lived in use too)."""

    def __init__(self, workers: int, log_dir: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        dask = [sys.executable, "-m", "dask"]

        def start(args: list[str], name: str) -> subprocess.Popen:
            with open(log_dir / f"{name}.log", "wb") as log:
                return subprocess.Popen([*dask, *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

        self.procs = [
            start(
                ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
                "scheduler",
            )
        ]
        for n in range(workers):
            self.procs.append(
                start(
                    [
                        "worker",
                        self.address,
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"bench-w{n}",
                        "--memory-limit",
                        "0",
                    ],
                    f"worker-{workers}-{n}",
                )
            )
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    def cpu_s(self) -> float:
        """CPU seconds the cluster's processes used so far."""
        total = 0
        for proc in self.procs:
            try:
                with open(f"/proc/{proc.pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def rss_kb(self) -> int:
        """The summed RSS of the cluster's processes now."""
        total = 0
        for proc in self.procs:
            try:
                with open(f"/proc/{proc.pid}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
            except OSError:
                continue
        return total

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


#: the running clusters of the dask modes, by mode
CLUSTERS: dict[str, DaskCluster] = {}


def ours_command(input_dir: Path, lake: Path, run_id: str, mode: str, table_format: str = "cdm") -> list[str]:
    script = Path(sys.executable).with_name("insights-link")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "insights_link.cli"]
    dask = (
        ("--runner", "DaskRunner", "--dask_client_address", CLUSTERS[mode].address)
        if mode in DASK_MODES
        else ()
    )
    return [
        *launcher,
        "export",
        "--input",
        str(input_dir),
        "--output",
        str(lake),
        "--run-id",
        run_id,
        *(() if table_format == "cdm" else ("--table-format", table_format)),
        *MODE_OPTIONS[mode],
        *dask,
    ]


def run_ours(
    input_dir: Path,
    expected: dict[str, Any],
    lake: Path,
    run_id: str,
    mode: str,
    logs: Path,
    fresh: bool = True,
    quiet_wait: float = 0.0,
    table_format: str = "cdm",
) -> dict[str, Any]:
    if fresh and lake.exists():
        shutil.rmtree(lake)
    cluster = CLUSTERS.get(mode)
    cluster_cpu = cluster.cpu_s() if cluster else 0.0
    run = run_measured(ours_command(input_dir, lake, run_id, mode, table_format), logs, run_id, quiet_wait)
    if cluster:  # the workers' CPU and memory count too (RSS: as the run ends, not a sampled peak)
        run["cluster_cpu_s"] = round(cluster.cpu_s() - cluster_cpu, 2)
        run["cpu_s"] = round(run["cpu_s"] + run["cluster_cpu_s"], 2)
        run["cluster_rss_kb"] = cluster.rss_kb()
        run["tree_rss_kb"] = (run["tree_rss_kb"] or 0) + run["cluster_rss_kb"]
    report_path = lake / DATA_SOURCE / "_runs" / f"{run_id}.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    run["problems"] = verify_ours(run["exit_code"], report, expected)
    if table_format == "delta" and run["exit_code"] == 0:  # checked after the timed run
        log_rows, protocol = read_delta_log(lake / DATA_SOURCE / TABLE)
        run["delta"] = {"log_rows": log_rows, "protocol": protocol}
        has_manifest = (lake / DATA_SOURCE / MANIFEST).exists()
        run["problems"] += verify_delta_log(log_rows, protocol, has_manifest, expected)
    run["report"] = (
        None
        if report is None
        else {
            k: report.get(k)
            for k in (
                "status",
                "records_read",
                "activities_written",
                "duplicates_dropped",
                "rejected",
                "partitions_written",
            )
        }
    )
    return run


def run_duckdb(
    input_dir: Path, expected: dict[str, Any], out: Path, name: str, logs: Path, quiet_wait: float = 0.0
) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "duckdb_baseline.py"),
        str(input_dir / "events-*.jsonl"),
        str(out),
    ]
    run = run_measured(cmd, logs, name, quiet_wait)
    result = None
    lines = Path(run["stdout"]).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    run["problems"] = verify_duckdb(run["exit_code"], result, expected)
    run["result"] = result
    return run


def run_bare(
    input_dir: Path, expected: dict[str, Any], out: Path, name: str, logs: Path, quiet_wait: float = 0.0
) -> dict[str, Any]:
    """One run of the bare DuckDB script (``duckdb_bare.py``), measured like the others."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "duckdb_bare.py"),
        str(input_dir / "events-*.jsonl"),
        str(out),
    ]
    run = run_measured(cmd, logs, name, quiet_wait)
    lines = Path(run["stdout"]).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    run["problems"] = verify_bare(run["exit_code"], result, expected)
    run["result"] = result
    return run


def _progress(label: str, run: dict[str, Any]) -> None:
    verdict = (
        "ok" if not run["problems"] else "FAILED: " + "; ".join(run["problems"]) + f" (see {run['stderr']})"
    )
    tree = run["tree_rss_kb"]
    waited = f" (waited {run['quiet_wait_s']:.0f} s for quiet)" if run["quiet_wait_s"] >= 2 else ""
    print(
        f"  {label}: {run['wall_s']:.2f} s, peak RSS {run['maxrss_kb'] / 1024:,.0f} MiB"
        f" (tree {'-' if tree is None else f'{tree / 1024:,.0f}'} MiB, {run['tree_processes']} proc), "
        f"cpu {run['cpu_s']:.1f} s, others' CPU {run['others_cpu_share']:.0%}"
        f"{waited}, "
        f"load {run['loadavg_1m_at_start']}, {verdict}",
        flush=True,
    )


@dataclass(frozen=True)
class Settings:
    """How carefully to measure on a shared machine."""

    quiet_wait: float = 0.0  # wait up to this long for a quiet machine before each run
    noisy_retries: int = 0  # run again (at most this often) when others took > NOISY_SHARE of the CPUs


def measured(attempt: Callable[[float], dict[str, Any]], label: str, settings: Settings) -> dict[str, Any]:
    """One verified measurement: ``attempt(quiet_wait)`` again while it was noisy, up to the retries.

    The noisy attempts are kept in the run's ``noisy_attempts`` (wall time and others' share).
    """
    noisy: list[dict[str, Any]] = []
    while True:
        run = attempt(settings.quiet_wait)
        _progress(label, run)
        if run["problems"] or not is_noisy(run) or len(noisy) >= settings.noisy_retries:
            run["noisy_attempts"] = noisy
            return run
        noisy.append({"wall_s": round(run["wall_s"], 3), "others_cpu_share": run["others_cpu_share"]})
        print(
            f"    noisy (others took {run['others_cpu_share']:.0%} of the CPUs): measuring again", flush=True
        )


def measure_size(
    work: Path,
    events: int,
    files: int,
    rounds: int,
    modes: Sequence[str],
    settings: Settings = Settings(),
    table_formats: Sequence[str] = ("cdm",),
) -> dict[str, Any]:
    """Alternate DuckDB and our modes (each in every table format) ``rounds`` times on one set."""
    input_dir, expected = ensure_dataset(work, events, files, DATA_PARAMS)
    input_bytes = sum((input_dir / f).stat().st_size for f in expected["files"])
    print(
        f"\n{events:,} events ({input_bytes / 1e6:,.0f} MB in {files} files), {rounds} round(s)", flush=True
    )
    out, logs = work / "out", work / "logs"
    ours = [(m, f) for m in modes for f in table_formats]
    runs: dict[str, list[dict[str, Any]]] = {DUCKDB: [], BARE: [], **{ours_label(m, f): [] for m, f in ours}}
    for r in range(1, rounds + 1):
        runs[DUCKDB].append(
            measured(
                lambda wait, r=r: run_duckdb(
                    input_dir, expected, out / "duckdb", f"duckdb-{events}-r{r}", logs, wait
                ),
                f"round {r} duckdb",
                settings,
            )
        )
        runs[BARE].append(
            measured(
                lambda wait, r=r: run_bare(
                    input_dir, expected, out / BARE, f"{BARE}-{events}-r{r}", logs, wait
                ),
                f"round {r} {BARE}",
                settings,
            )
        )
        for mode, fmt in ours:
            key = variant(mode, fmt)
            run_id = f"bench-{events}-{key.replace('/', '-')}-r{r}"
            runs[ours_label(mode, fmt)].append(
                measured(
                    lambda wait, run_id=run_id, mode=mode, fmt=fmt, key=key: run_ours(
                        input_dir,
                        expected,
                        out / f"ours-{key.replace('/', '-')}",
                        run_id,
                        mode,
                        logs,
                        quiet_wait=wait,
                        table_format=fmt,
                    ),
                    f"round {r} {OURS} {key}",
                    settings,
                )
            )
    engines = {label: summarize(label_runs, events) for label, label_runs in runs.items()}
    duck_eps = engines[DUCKDB]["events_per_s"]
    bare_eps = engines[BARE]["events_per_s"]
    delta_vs_cdm = {
        m: ratio(engines[ours_label(m, "delta")]["median_wall_s"], engines[ours_label(m)]["median_wall_s"])
        for m in modes
        if "cdm" in table_formats and "delta" in table_formats
    }
    return {
        "events": events,
        "files": files,
        "input_bytes": input_bytes,
        "input": str(input_dir),
        "expected": {k: expected[k] for k in ("events_total", "valid_unique", "duplicates", "invalid_total")},
        "engines": engines,
        "ratio": {variant(m, f): ratio(engines[ours_label(m, f)]["events_per_s"], duck_eps) for m, f in ours},
        "ratio_bare": {
            variant(m, f): ratio(engines[ours_label(m, f)]["events_per_s"], bare_eps) for m, f in ours
        },
        **({"delta_vs_cdm": delta_vs_cdm} if delta_vs_cdm else {}),
        "runs": runs,
    }


def measure_incremental(
    work: Path, files: int, rounds: int, base_events: int, events: int, settings: Settings = Settings()
) -> dict[str, Any]:
    """The Nth scheduled run: ``events`` new events into a data source holding ``base_events``, vs empty."""
    base_dir, base_expected = ensure_dataset(work, base_events, files, DATA_PARAMS)
    params = {
        **DATA_PARAMS,
        "seed": INCREMENTAL_SEED,
        "days": INCREMENTAL_DAYS,
        "start": next_start(DATA_PARAMS["start"], DATA_PARAMS["days"]),
    }
    new_dir, expected = ensure_dataset(work, events, files, params)
    out, logs = work / "out", work / "logs"
    print(
        f"\nincremental: {events:,} new events into a data source holding {base_events:,} vs an empty one",
        flush=True,
    )
    base_lake = out / "incremental-base"
    base_run = run_ours(base_dir, base_expected, base_lake, "bench-incremental-base", "in_memory", logs)
    _progress(f"building the {base_events:,}-event data source (not timed for the comparison)", base_run)

    def into_base(wait: float, r: int) -> dict[str, Any]:
        lake = out / "incremental-into-base"
        if lake.exists():
            shutil.rmtree(lake)
        shutil.copytree(base_lake, lake)  # a fresh copy of the data source per attempt, not timed
        return run_ours(
            new_dir,
            expected,
            lake,
            f"bench-incremental-into-base-r{r}",
            "in_memory",
            logs,
            fresh=False,
            quiet_wait=wait,
        )

    def into_empty(wait: float, r: int) -> dict[str, Any]:
        return run_ours(
            new_dir,
            expected,
            out / "incremental-into-empty",
            f"bench-incremental-into-empty-r{r}",
            "in_memory",
            logs,
            quiet_wait=wait,
        )

    runs: dict[str, list[dict[str, Any]]] = {"into_base": [], "into_empty": []}
    if base_run["problems"]:
        runs["into_base"].append(
            {**base_run, "problems": ["base data source failed: " + "; ".join(base_run["problems"])]}
        )
    else:
        for r in range(1, rounds + 1):
            runs["into_base"].append(
                measured(
                    lambda wait, r=r: into_base(wait, r),
                    f"round {r} into the {base_events:,}-event data source",
                    settings,
                )
            )
            runs["into_empty"].append(
                measured(
                    lambda wait, r=r: into_empty(wait, r), f"round {r} into an empty data source", settings
                )
            )
    summary_base, summary_empty = summarize(runs["into_base"], events), summarize(runs["into_empty"], events)
    return {
        "base_events": base_events,
        "events": events,
        "seed": INCREMENTAL_SEED,
        "dates": sorted(expected["valid_unique_per_date"]),
        "base_build": {k: base_run[k] for k in ("wall_s", "maxrss_kb", "tree_rss_kb", "problems")},
        "into_base": summary_base,
        "into_empty": summary_empty,
        "ratio": ratio(summary_base["median_wall_s"], summary_empty["median_wall_s"]),
        "runs": runs,
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    cpu_model, mem_kb = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": None if mem_kb is None else round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "duckdb": _version("duckdb"),
        "pyarrow": _version("pyarrow"),
        "apache_beam": _version("apache-beam"),
        "insights_link": _version("insights-link"),
        "git_commit": None if commit is None else commit + ("+uncommitted changes" if dirty else ""),
    }


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _strip_runs(results: dict[str, Any]) -> dict[str, Any]:
    """The results without the per-run command lines and log paths (kept: numbers and problems)."""
    keep = (
        "exit_code",
        "wall_s",
        "cpu_s",
        "maxrss_kb",
        "tree_rss_kb",
        "tree_processes",
        "loadavg_1m_at_start",
        "quiet_wait_s",
        "others_cpu_before",
        "others_cpu_share",
        "noisy_attempts",
        "problems",
        "report",
        "result",
        "delta",
        "cluster_cpu_s",
        "cluster_rss_kb",
    )

    def slim(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        return {label: [{k: run[k] for k in keep if k in run} for run in rs] for label, rs in runs.items()}

    out = dict(results)
    out["sizes"] = [{**s, "runs": slim(s["runs"])} for s in results.get("sizes", [])]
    if results.get("incremental"):
        out["incremental"] = {**results["incremental"], "runs": slim(results["incremental"]["runs"])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="comma-separated event counts (300000, 300k, 1M)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each engine per size (medians)")
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help="generated data, outputs and logs (default: bench-work/ in the repository)",
    )
    parser.add_argument("--files", type=int, default=8, help="input files per size")
    parser.add_argument(
        "--modes",
        default="in_memory,multi_processing",
        help=f"our Beam modes, comma-separated: {', '.join(MODE_OPTIONS)}",
    )
    parser.add_argument(
        "--table-formats",
        default="cdm",
        help="our table formats, comma-separated: cdm (the default a user gets), delta "
        "(--table-format delta); each mode runs in each",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="also measure 100k new events into a data source holding 3M vs into an empty one",
    )
    parser.add_argument("--incremental-base", default=str(INCREMENTAL_BASE), help="events already held")
    parser.add_argument("--incremental-events", default=str(INCREMENTAL_EVENTS), help="new events")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=DEFAULT_QUIET_WAIT,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to use less than "
        f"{QUIET_SHARE * 100:.0f}%% of the CPUs (0: don't wait)",
    )
    parser.add_argument(
        "--noisy-retries",
        type=int,
        default=DEFAULT_NOISY_RETRIES,
        metavar="N",
        help=f"measure a run again (up to N times) when other processes took more than "
        f"{NOISY_SHARE * 100:.0f}%% of the CPUs while it ran (0: keep every run)",
    )
    parser.add_argument("--json", type=Path, help="write every number (and every run) to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print the final report as Markdown tables")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS.json",
        help="measure nothing: print the report of an earlier --json file",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        saved["targets"] = evaluate_targets(saved)
        print(render_report(saved, markdown=args.markdown))
        return 0
    try:
        sizes = [parse_count(s) for s in parse_list(args.sizes)]
        base_events, new_events = parse_count(args.incremental_base), parse_count(args.incremental_events)
    except ValueError as exc:
        parser.error(str(exc))
    modes = parse_list(args.modes)
    unknown = [m for m in modes if m not in MODE_OPTIONS]
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODE_OPTIONS)}")
    table_formats = parse_list(args.table_formats)
    unknown = [f for f in table_formats if f not in TABLE_FORMATS]
    if unknown or not table_formats:
        parser.error(f"--table-formats: unknown {unknown}; choose from {', '.join(TABLE_FORMATS)}")
    if args.rounds < 1 or args.files < 1 or not sizes:
        parser.error("--rounds and --files must be >= 1 and --sizes must name at least one size")
    work = args.work.resolve()
    settings = Settings(quiet_wait=max(0.0, args.quiet_wait), noisy_retries=max(0, args.noisy_retries))
    work.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {
        "machine": machine_info(),
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "params": {
            "sizes": sizes,
            "rounds": args.rounds,
            "files": args.files,
            "modes": modes,
            "table_formats": table_formats,
            "data": DATA_PARAMS,
            "incremental": args.incremental,
        },
        "loadavg": {"before": _loadavg()},
        "sizes": [],
    }
    m = results["machine"]
    print(
        f"machine: {m['cpu_model']}; {m['nproc']} CPUs; {m['mem_total_gib']} GiB RAM; Linux {m['kernel']}; "
        f"Python {m['python']}; duckdb {m['duckdb']}; pyarrow {m['pyarrow']}; apache-beam {m['apache_beam']}; "
        f"insights-link {m['insights_link']} (git {m['git_commit']})"
    )
    print(f"load average before: {results['loadavg']['before']}", flush=True)

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(_strip_runs(results), indent=2) + "\n", encoding="utf-8")

    began = time.perf_counter()
    try:
        for mode in modes:
            if mode in DASK_MODES:
                print(f"starting a dask cluster with {DASK_MODES[mode]} worker(s) for {mode}", flush=True)
                CLUSTERS[mode] = DaskCluster(DASK_MODES[mode], work / "logs" / "dask")
        for events in sizes:
            results["sizes"].append(
                measure_size(work, events, args.files, args.rounds, modes, settings, table_formats)
            )
            save()
    finally:
        for cluster in CLUSTERS.values():
            cluster.stop()
        CLUSTERS.clear()
    if args.incremental:
        results["incremental"] = measure_incremental(
            work, args.files, args.rounds, base_events, new_events, settings
        )
    results["loadavg"]["after"] = _loadavg()
    results["seconds"] = round(time.perf_counter() - began, 1)
    results["targets"] = evaluate_targets(results)
    save()

    print("\n" + render_report(results, markdown=args.markdown))
    broken = [s["events"] for s in results["sizes"] if not all(e["verified"] for e in s["engines"].values())]
    inc = results.get("incremental")
    if inc and not (inc["into_base"]["verified"] and inc["into_empty"]["verified"]):
        broken.append("incremental")
    if broken:
        print(f"\nunverified runs (no speed reported): {broken}; see {work / 'logs'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
