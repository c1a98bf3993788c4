"""Worker processes never outlive their launcher.

Beam's multi-processing runner starts SDK workers as subprocesses (through a shell). When the
launcher is killed (``kill -9``, OOM killer) nobody stops them, and they keep reading inputs and
writing staging files. The launcher names itself in the environment the workers inherit; each
worker process that finds a launcher other than itself watches it and exits when it is gone.
Workers of remote runners (Dataflow, Flink, Spark, an external worker pool) inherit no such
variable from this machine's launcher and are left to their runner.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

LAUNCHER_ENV = "INSIGHTS_LINK_LAUNCHER"
#: The SIGINT/SIGTERM this launcher received, if any: Beam re-wraps exceptions raised inside a
#: DoFn, so the run asks this instead of trusting the exception's type.
received_signal: int | None = None
POLL_SECONDS = 1.0
_watching = threading.Lock()
_started = False


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (``/proc/<pid>/stat`` field 22), which tells a
    live launcher from a new process that reused its pid; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, started: str) -> bool:
    if os.path.exists("/proc/self/stat"):
        return _start_time(pid) == started
    try:  # no /proc: a signal 0 probe (pid reuse is not detected there)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def interrupt(signum: int, _frame: object = None) -> None:
    """Signal handler for the launcher: remember the signal and stop the run like Ctrl-C."""
    global received_signal
    from insights_link.errors import Interrupted

    received_signal = signum
    raise Interrupted(signum)


def mark_launcher() -> None:
    """Name this process as the launcher for the workers it is about to start."""
    os.environ[LAUNCHER_ENV] = f"{os.getpid()}:{_start_time(os.getpid()) or ''}"


def exit_with_launcher() -> None:
    """In a worker subprocess: start (once) a daemon thread that ends this process when the
    launcher that started it is gone. A no-op in the launcher itself and on remote runners."""
    global _started
    value = os.environ.get(LAUNCHER_ENV, "")
    pid_text, _, started = value.partition(":")
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return
    pid = int(pid_text)
    with _watching:
        if _started:
            return
        _started = True
    if not _alive(pid, started):
        os._exit(1)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(POLL_SECONDS):
            if not _alive(pid, started):
                logger.error("the launcher (pid %d) is gone; this worker exits", pid)
                os._exit(1)

    threading.Thread(target=watch, name="insights-link-launcher-watch", daemon=True).start()
