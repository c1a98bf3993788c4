"""Continuous export: ``insights-link export --watch`` (see docs/continuous.md).

One long-running process polls the inputs every ``--interval`` seconds. Files that are complete
(unchanged for an interval, or marked by a ``_SUCCESS`` file in their folder) and not yet
committed (the runs' own record of committed inputs, the same one a normal run skips by) are
committed as *windows*: each window is one normal run of :func:`insights_link.pipeline.run.run`
over at most ``--max-window-files`` files / ``--max-window-mb`` megabytes, with its own run id
(``<base>-wNNNN``), its own lock, recovery, Beam batch pipeline, fenced commit and report. The
lock is held per window, so ``compact``, ``forget`` and other runs interleave between windows.

After each window the watcher logs one line (JSON with ``--log-format json``) and records the
window in ``_state/watch.json`` (a conditional write), which ``insights-link status`` shows.
A signal between windows ends the loop with exit 0; a signal inside a window is handled by the
run (it settles the window whole) and ends with 130/143.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from insights_link import lifecycle
from insights_link.checkpoints import checkpoint
from insights_link.core.blocks import InputFile
from insights_link.core.paths import join
from insights_link.core.watching import (
    MARKER_NAME,
    Ident,
    Poll,
    Tracked,
    folder_of,
    ident,
    judge,
    lag_seconds,
    observed,
    select_window,
    track,
    waiting_since,
    window_run_id,
)
from insights_link.errors import DataSourceBusy, Interrupted, RunFailed, UsageError
from insights_link.lake import table_format
from insights_link.lake.commit import CommitLost, CommitUnknown, Lake
from insights_link.lake.layout import input_key
from insights_link.pipeline.jobfile import JobFileError, load_job
from insights_link.pipeline.options import RunConfig, build_parser, parse_args
from insights_link.pipeline.plan import fingerprint
from insights_link.pipeline.run import Clock, EmptyWindow, _resolve_all, run, utc_now
from insights_link.pipeline.spec import BY_DEST
from insights_link.storage import CredentialsError, PreconditionFailed, Storage, StorageError, open_storage

logger = logging.getLogger(__name__)

#: the window record ``status`` shows, below the data-source folder
WATCH_STATE = "watch.json"
#: how often an idle watcher refreshes its record (lag, waiting files) at most
RECORD_EVERY_SECONDS = 60.0
#: how long storage may keep failing (polls and windows alike) before the watcher gives up
RETRY_FOR_SECONDS = 900.0
#: the longest pause between two attempts while storage fails
RETRY_DELAY_MAX = 60.0
ENV_RETRY_FOR = "INSIGHTS_LINK_WATCH_RETRY_SECONDS"
WATCH_KEYS = ("watch", "interval", "max_window_files", "max_window_mb", "max_windows", "until_idle")


@dataclass(frozen=True)
class WatchSettings:
    """The continuous-export options of a run (flags over the job file)."""

    interval: float
    max_window_files: int
    max_window_bytes: int
    max_windows: int | None
    until_idle: bool
    run_id_given: bool


def _given(argv: list[str]) -> dict:
    """The watch options and ``run_id`` as given (flags over the job file), checked by the spec."""
    flags, _ = build_parser().parse_known_args(argv)
    given = vars(flags)
    settings: dict = {}
    if given.get("job"):
        try:
            settings.update(load_job(given["job"]).settings)
        except JobFileError as exc:
            raise UsageError(str(exc)) from exc
    for key in (*WATCH_KEYS, "run_id", "dry_run", "replay", "reprocess"):
        if key in given:
            settings[key] = BY_DEST[key].convert(given[key])
    return settings


def wants_watch(argv: list[str]) -> bool:
    """Whether ``export`` was asked to watch (``--watch`` or the job key ``watch``)."""
    return bool(_given(argv).get("watch"))


def watch_settings(argv: list[str]) -> WatchSettings:
    """The loop's settings; a usage error for options a watcher can't honour."""
    s = _given(argv)
    for key, why in (
        ("dry_run", "a dry run writes nothing, so every poll would find the same files"),
        ("replay", "replay dead letters with a normal run"),
        ("reprocess", "every window would read every file again"),
    ):
        if s.get(key):
            raise UsageError(f"--{key.replace('_', '-')} can't be combined with --watch: {why}")

    def value(key: str):
        return s[key] if s.get(key) is not None else BY_DEST[key].default

    return WatchSettings(
        interval=float(value("interval")),
        max_window_files=int(value("max_window_files")),
        max_window_bytes=max(1, int(float(value("max_window_mb")) * 1024 * 1024)),
        max_windows=s.get("max_windows"),
        until_idle=bool(s.get("until_idle")),
        run_id_given=bool(s.get("run_id")),
    )


def check_not_watching(argv: list[str]) -> None:
    """Without --watch, the watch options do nothing: say so (a usage error) instead."""
    s = _given(argv)
    stray = [k for k in WATCH_KEYS[1:] if k in s and s[k] not in (None, False)]
    if stray and not s.get("watch"):
        raise UsageError(f"--{stray[0].replace('_', '-')} applies with --watch only")


def rss_mb() -> float | None:
    """This process's resident memory in MB (``/proc/self/status``), None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class _Stop:
    """Signals while the watcher is between windows: remember, wake the sleeper, exit 0."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.event = threading.Event()

    def handler(self, signum: int, _frame: object = None) -> None:
        self.signum = signum
        self.event.set()


def watch(
    argv: list[str],
    clock: Clock = utc_now,
    on_config: Callable[[RunConfig], None] | None = None,
    on_window: Callable[[dict, dict], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict:
    """Run the loop until ``--max-windows``, ``--until-idle`` or a signal between windows.

    ``on_window(line, report)`` sees each committed window's log record and run report. Returns
    the watcher's summary (windows, totals, why it stopped). A failing window ends the loop with
    its error (a supervisor restarts the watcher; the restart converges), except a busy lock,
    which is retried at the next poll.
    """
    config, _ = parse_args(argv, clock())
    if on_config is not None:
        on_config(config)
    settings = watch_settings(argv)
    base = config.run_id
    parse_args([*argv, "--run-id", window_run_id(base, 9999)], clock())  # the window ids are valid
    lake = Lake(open_storage(config.output), config.data_source, table_format(config.table_format))
    stop = _Stop()
    interrupt_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:  # a closed terminal stops it like SIGTERM
        interrupt_handlers[signal.SIGHUP] = lifecycle.interrupt  # (ignored under nohup: left so)
    previous_handlers = {s: signal.getsignal(s) for s in interrupt_handlers}
    tracked: dict[Ident, Tracked] = {}
    pending: dict[Ident, datetime] = {}  # when each uncommitted file was first found waiting
    summary: dict = {
        "status": "running",
        "base_run_id": base,
        "data_source": config.data_source,
        "output": lake.describe(),
        "started_at": _iso(clock()),
        "windows": 0,
        "first_run_id": None,
        "last_run_id": None,
        "records_read": 0,
        "activities_written": 0,
        "duplicates_dropped": 0,
        "rejected": 0,
        "polls": 0,
    }
    number = 0
    last_record = -RECORD_EVERY_SECONDS
    waiting_before: bool | None = None
    last_verdict: tuple = (set(), set())  # a poll's line is INFO when what waits changed
    logger.info(
        "watching %d input(s) every %g s; windows of at most %d file(s) / %g MB commit to %s",
        sum(len(a.inputs) for a in config.activities),
        settings.interval,
        settings.max_window_files,
        settings.max_window_bytes / 1024 / 1024,
        lake.describe(),
    )

    def between_windows() -> None:
        for s in interrupt_handlers:
            signal.signal(s, stop.handler)

    def in_window() -> None:
        for s, h in interrupt_handlers.items():
            signal.signal(s, h)

    outage = _Outage(settings.interval, monotonic)
    between_windows()
    try:
        while stop.signum is None:
            try:
                files, wanted = _current_files(config)
                poll_time = monotonic()
                uncommitted = _uncommitted(lake, files, wanted)
                markers = _markers([f for f in files if ident(f) in uncommitted])
            except (RunFailed, StorageError, OSError) as exc:
                _sleep(stop, outage.failed(exc, "poll"))
                continue
            outage.ended()
            tracked = track(files, tracked, poll_time)
            now = clock()
            pending = waiting_since(uncommitted, pending, now)
            poll = judge(files, uncommitted, tracked, markers, poll_time, settings.interval, now, pending)
            summary["polls"] += 1
            verdict = ({ident(f) for f in poll.ready}, {(ident(f), observed(f)) for f in poll.changing})
            (logger.info if verdict != last_verdict else logger.debug)(
                "poll: %d file(s), %d ready, %d changing, lag %.1f s",
                len(files),
                len(poll.ready),
                len(poll.changing),
                poll.lag_seconds,
            )
            last_verdict = verdict
            if stop.signum is not None:
                break
            if poll.ready:
                window = select_window(poll.ready, settings.max_window_files, settings.max_window_bytes)
                try:
                    number = _next_number(lake, base, number + 1)
                except (StorageError, OSError) as exc:
                    _sleep(stop, outage.failed(exc, "poll"))
                    continue
                run_id = window_run_id(base, number)
                chosen = {ident(f): observed(f) for f in window}
                checkpoint("watch_window_chosen", run_id=run_id)
                in_window()
                try:
                    report = run([*argv, "--run-id", run_id], clock, select=_only(chosen))
                    checkpoint("watch_window_ran", run_id=run_id)
                    held = signal.pthread_sigmask(signal.SIG_BLOCK, set(interrupt_handlers))
                except DataSourceBusy as exc:
                    logger.warning("window %s: %s; trying again at the next poll", run_id, exc)
                    between_windows()
                    _sleep(stop, settings.interval)
                    continue
                except EmptyWindow as exc:
                    logger.info("window %s: %s; they wait for a later window", run_id, exc)
                    between_windows()
                    continue  # nothing was written: the files are judged again at the next poll
                except (RunFailed, StorageError, OSError) as exc:
                    between_windows()
                    _sleep(stop, outage.failed(exc, f"window {run_id}"))
                    continue
                except KeyboardInterrupt as exc:
                    # A signal may land after the window's run returned and before signals are
                    # held: the lake, not the exception's origin, says whether it committed.
                    if getattr(exc, "committed", None) is None:
                        exc.committed = _window_committed(lake, run_id)  # type: ignore[attr-defined]
                    exc.window = run_id  # type: ignore[attr-defined]
                    raise
                outage.ended()
                try:
                    between_windows()
                    line = _window_line(number, report, window, poll, chosen, clock, pending)
                    _log_window(line)
                    _add(summary, report)
                    _record(lake, summary, line, poll, clock)
                    last_record = monotonic()
                    if on_window is not None:
                        on_window(line, report)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                if settings.max_windows is not None and summary["windows"] >= settings.max_windows:
                    summary["status"] = "max_windows"
                    break
                continue  # a backlog: the next window at once
            waiting = bool(poll.changing)
            if waiting != waiting_before or monotonic() - last_record >= RECORD_EVERY_SECONDS:
                _record(lake, summary, None, poll, clock)
                last_record, waiting_before = monotonic(), waiting
            if settings.until_idle and poll.idle:
                summary["status"] = "idle"
                break
            _sleep(stop, settings.interval)
    except Interrupted:
        if stop.signum is None:
            raise
    finally:
        for s, h in previous_handlers.items():
            signal.signal(s, h)
    if stop.signum is not None:
        summary["status"] = "stopped"
        summary["signal"] = signal.Signals(stop.signum).name
        logger.info("stopped by %s between windows", summary["signal"])
    summary["finished_at"] = _iso(clock())
    return summary


def _sleep(stop: _Stop, seconds: float) -> None:
    stop.event.wait(seconds)


def _transient(exc: BaseException) -> bool:
    """Whether a failure may pass by itself: a storage or OS error (also as the cause of a failed
    run), or a window that lost its lock or could not tell whether its commit point passed (the
    next window settles it), but not missing or refused credentials, nor a damaged lake or a
    usage error."""
    if isinstance(exc, RunFailed):
        exc = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(exc, CommitLost | CommitUnknown):
        return True
    return isinstance(exc, StorageError | OSError) and not isinstance(exc, CredentialsError)


class _Outage:
    """Transient storage failures of a long-running watcher: retried with a doubling delay (from
    the interval up to :data:`RETRY_DELAY_MAX`), each logged as a warning, for at most
    ``INSIGHTS_LINK_WATCH_RETRY_SECONDS`` (default :data:`RETRY_FOR_SECONDS`) in a row; then the
    last failure ends the watcher. Anything else ends it at once."""

    def __init__(self, interval: float, monotonic: Callable[[], float]) -> None:
        self.interval = interval
        self.monotonic = monotonic
        self.since: float | None = None
        self.attempts = 0
        raw = os.environ.get(ENV_RETRY_FOR, "")
        try:
            self.limit = float(raw) if raw else RETRY_FOR_SECONDS
        except ValueError:
            raise UsageError(f"{ENV_RETRY_FOR}={raw!r} is not a number of seconds") from None
        if not self.limit >= 0:
            raise UsageError(f"{ENV_RETRY_FOR}={raw!r} must not be negative")

    def failed(self, exc: Exception, what: str) -> float:
        """Re-raise ``exc`` unless it is transient and the outage is still within its bound;
        otherwise the seconds to wait before the next attempt."""
        now = self.monotonic()
        self.since = now if self.since is None else self.since
        self.attempts += 1
        lasted = now - self.since
        if not _transient(exc):
            raise exc
        if lasted >= self.limit:
            raise RunFailed(f"{exc} (storage kept failing for {lasted:.0f} s; gave up)") from exc
        delay = min(max(self.interval, 0.5) * 2 ** min(self.attempts - 1, 16), RETRY_DELAY_MAX)
        delay = min(delay, max(self.limit - lasted, 0.0) + 0.01)
        logger.warning(
            "%s failed (attempt %d, failing for %.0f s): %s; retrying in %.1f s",
            what,
            self.attempts,
            lasted,
            exc,
            delay,
        )
        return delay

    def ended(self) -> None:
        if self.since is not None:
            logger.warning(
                "storage answers again after %d failed attempt(s) in %.0f s",
                self.attempts,
                self.monotonic() - self.since,
            )
        self.since, self.attempts = None, 0


def _window_committed(lake: Lake, run_id: str) -> bool:
    """Whether the window's run report says it committed (read after a signal)."""
    try:
        data = lake.storage.read_bytes(lake.key("_runs", f"{run_id}.json"))
        return json.loads(data).get("status") == "committed"
    except (StorageError, OSError, ValueError, AttributeError):
        return False


def _current_files(config: RunConfig) -> tuple[list[InputFile], dict[Ident, tuple[str, ...]]]:
    """Every input file found now (once, in place order) and the activities that read each."""
    found: dict[Ident, InputFile] = {}
    wanted: dict[Ident, tuple[str, ...]] = {}
    for name, fs in _resolve_all(config).files.items():
        for f in fs:
            found.setdefault(ident(f), f)
            wanted[ident(f)] = (*wanted.get(ident(f), ()), name)
    return [found[k] for k in sorted(found)], wanted


def _uncommitted(lake: Lake, files: list[InputFile], wanted: dict[Ident, tuple[str, ...]]) -> set[Ident]:
    """The places whose file, as found now, an activity has not committed: the same record of
    committed inputs a normal run skips by (read only, without the lock)."""
    try:
        committed = lake.committed_inputs(cache=False)
    except (ValueError, KeyError) as exc:
        raise RunFailed(f"cannot read the data source's committed inputs: {exc}") from exc
    return {
        ident(f)
        for f in files
        if any(input_key(a, fingerprint(f)) not in committed for a in wanted[ident(f)])
    }


def _markers(files: list[InputFile]) -> dict[Ident, str]:
    """The ``_SUCCESS`` markers of the folders holding these files: folder -> its modified time."""
    markers: dict[Ident, str] = {}
    storages: dict[str, Storage] = {}
    for folder in sorted({folder_of(f) for f in files}):
        root, key = folder
        storage = storages.get(root) or storages.setdefault(root, open_storage(root))
        info = storage.info(join(key, MARKER_NAME))
        if info is not None:
            markers[folder] = info.modified.isoformat()
    return markers


def _only(chosen: dict[Ident, tuple[int, str, str]]):
    """The ``select`` of a window's run: the chosen files, only as they were when chosen (a file
    changed since waits for a later window)."""

    def select(files: dict[str, list[InputFile]]) -> dict[str, list[InputFile]]:
        return {name: [f for f in fs if chosen.get(ident(f)) == observed(f)] for name, fs in files.items()}

    return select


def _next_number(lake: Lake, base: str, number: int) -> int:
    """The first window number from ``number`` on whose run id is unused in the data source
    (a restart with the same ``--run-id`` goes on after the windows it committed or left)."""
    while True:
        run_id = window_run_id(base, number)
        if not lake.storage.exists(lake.key("_runs", f"{run_id}.json")) and not lake.storage.list(
            lake.staging(run_id)
        ):
            return number
        number += 1


def _window_line(
    number: int,
    report: dict,
    window: list[InputFile],
    poll: Poll,
    chosen: dict,
    clock: Clock,
    pending: dict[Ident, datetime],
) -> dict:
    """The one log record of a committed window."""
    processed = [i for i in report.get("inputs", []) if i.get("status") == "processed"]
    committed = {i["source"] for i in processed}
    later = [f for f in poll.ready if f.source not in committed] + poll.changing
    return {
        "event": "window",
        "window": number,
        "run_id": report["run_id"],
        "status": report.get("status"),
        "files": len(processed),
        "bytes": sum(i.get("size", 0) for i in processed),
        "records": report.get("records_read", 0),
        "written": report.get("activities_written", 0),
        "rejected": sum(report.get("rejected", {}).values()),
        "duplicates": report.get("duplicates_dropped", 0),
        "lag_seconds": round(poll.lag_seconds, 3),
        "lag_after_seconds": round(lag_seconds(later, clock(), pending), 3),
        "waiting_files": len(later),
        "finished_at": report.get("finished_at"),
        "rss_mb": rss_mb(),
    }


def _log_window(line: dict) -> None:
    text = (
        "window {window} ({run_id}): {files} file(s), {records} record(s), {written} written, "
        "{rejected} rejected, {duplicates} duplicate(s); lag {lag_seconds:.1f} s"
    ).format(**line)
    if line["rss_mb"] is not None:
        text += f", rss {line['rss_mb']:.0f} MB"
    logger.info(text, extra={"fields": line})


def _add(summary: dict, report: dict) -> None:
    summary["windows"] += 1  # counts, not lists: a watcher may run for months
    summary["first_run_id"] = summary["first_run_id"] or report["run_id"]
    summary["last_run_id"] = report["run_id"]
    for key in ("records_read", "activities_written", "duplicates_dropped"):
        summary[key] += report.get(key, 0)
    summary["rejected"] += sum(report.get("rejected", {}).values())


def _record(lake: Lake, summary: dict, line: dict | None, poll: Poll, clock: Clock) -> None:
    """Write ``_state/watch.json`` (the last window, the current lag) with a conditional write;
    a failure is a warning only: the record is for people, the commits don't depend on it."""
    key = lake.key("_state", WATCH_STATE)
    now = clock()
    for _ in range(3):
        try:
            data, version = lake.storage.read_versioned(key)
            record = json.loads(data) if data else {}
            if not isinstance(record, dict):
                record = {}
            record.update(
                {
                    "watcher": {
                        "base_run_id": summary["base_run_id"],
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "started_at": summary["started_at"],
                        "windows": summary["windows"],
                    },
                    "polled_at": _iso(now),
                    "lag_seconds": round(poll.lag_seconds, 3),
                    "waiting_files": len(poll.ready) + len(poll.changing),
                }
            )
            if line is not None:
                record["last_window"] = line
                record["lag_seconds"] = line["lag_after_seconds"]
                record["waiting_files"] = line["waiting_files"]
            lake.storage.write_if(key, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"), version)
            return
        except PreconditionFailed:
            continue  # another watcher wrote meanwhile: read again
        except (StorageError, OSError, ValueError) as exc:
            logger.warning("could not record the window in %s: %s", key, exc)
            return


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def summary_text(summary: dict) -> str:
    """The human summary a watcher prints when it ends."""
    why = {
        "max_windows": "--max-windows reached",
        "idle": "idle (--until-idle)",
        "stopped": f"stopped by {summary.get('signal')} between windows",
    }.get(summary["status"], summary["status"])
    return "\n".join(
        [
            f"watch {summary['base_run_id']}: {why}",
            f"  windows committed:   {summary['windows']}",
            f"  records read:        {summary['records_read']}",
            f"  activities written:  {summary['activities_written']}",
            f"  duplicates dropped:  {summary['duplicates_dropped']}",
            f"  rejected:            {summary['rejected']}",
            f"  data source:         {summary['output']}",
        ]
    )
