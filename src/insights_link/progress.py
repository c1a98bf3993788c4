"""What a person watching a run sees while it works: a live progress bar on a terminal, a plain
line every few seconds otherwise, nothing with ``--quiet``.

Fed by the checkpoints the readers pass (``file_read``, ``block_read``). With the default
in-process runner they arrive in the launcher; with worker processes (multi-processing, remote
runners) they don't, and the display shows the elapsed time and the files' total size only.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import Any

from insights_link.checkpoints import on_checkpoint, remove_listener

logger = logging.getLogger(__name__)

PLAIN_EVERY_SECONDS = 10.0


class Progress:
    """Files done of total, records, MB/s, elapsed and an estimate of the rest."""

    def __init__(self, files: int, total_bytes: int, mode: str) -> None:
        self.files = files
        self.total_bytes = total_bytes
        self.mode = mode  # "bar", "lines" or "off"
        self.done_files = 0
        self.done_bytes = 0
        self.records = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._lock = threading.Lock()
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.mode == "off":
            return self
        if self.mode == "bar":
            from tqdm import tqdm

            size = shutil.get_terminal_size((100, 20))  # a new pty may say 0 x 0: tqdm then hides the bar
            self._bar = tqdm(
                total=self.total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"files 0/{self.files}",
                file=sys.stderr,
                ncols=size.columns or 100,
                nrows=size.lines or 20,
                leave=True,
            )
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()  # log lines go above the bar, not through it
            self._redirect.__enter__()
        on_checkpoint(self._update)
        return self

    def __exit__(self, *exc: object) -> None:
        remove_listener(self._update)
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)

    def _update(self, name: str, **facts: Any) -> None:
        with self._lock:
            if name == "block_read":
                self.records += facts.get("records", 0)
            elif name == "file_read":
                self.done_files += 1
                size = facts.get("size", 0)
                self.done_bytes += size
                if self._bar is not None:
                    self._bar.update(size)
            else:
                return
            if self._bar is not None:
                self._bar.set_description(f"files {self.done_files}/{self.files}", refresh=False)
                self._bar.set_postfix(records=f"{self.records:,}", refresh=True)
            elif self.mode == "lines" and (
                name == "file_read" or time.monotonic() - self._last_line >= PLAIN_EVERY_SECONDS
            ):
                self._last_line = time.monotonic()
                logger.info("%s", self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done_bytes / elapsed / 1e6 if elapsed > 0 else 0.0
        left = ""
        if self.done_bytes and self.total_bytes > self.done_bytes:
            left = f", about {(self.total_bytes - self.done_bytes) / (self.done_bytes / elapsed):.0f} s left"
        return (
            f"progress: {self.done_files}/{self.files} files, {self.records:,} records, "
            f"{rate:.1f} MB/s, {elapsed:.0f} s elapsed{left}"
        )


def mode_for(quiet: bool, log_format: str) -> str:
    """A bar on a terminal, plain lines for logs and pipes, nothing when quiet."""
    if quiet:
        return "off"
    if log_format == "text" and sys.stderr.isatty():
        return "bar"
    return "lines"
