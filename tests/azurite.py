"""Run a throwaway Azurite (Microsoft's Azure Storage emulator) for tests.

What: :class:`Azurite` starts stock Azurite from ``<repo>/.azurite/node_modules/.bin/azurite``
on free loopback ports with its data in a given folder, waits until the blob port answers, and
can be stopped and started again on the same ports and data (to simulate an outage).
:func:`check_storage_contract` is the storage contract shared by the Azurite tests and the
live ADLS tests.

Why: the Azure backend must be tested against a real HTTP service, not mocks; Azurite is the
only one available offline. Install it with ``npm install --prefix .azurite azurite@3.37.0``.
Notes on what it does and does not emulate: ``/work/shared/notes/azurite.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from insights_link.storage import Storage, StorageError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_VERSION = "3.37.0"
AZURITE_BIN = REPO_ROOT / ".azurite" / "node_modules" / ".bin" / "azurite"
INSTALL_HINT = f"cd {REPO_ROOT} && npm install --prefix .azurite azurite@{AZURITE_VERSION}"
ENV_AZURITE_BIN = "INSIGHTS_LINK_AZURITE_BIN"  # optional override of the binary's path

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key, published in Microsoft's docs: not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"


class AzuriteError(RuntimeError):
    """Azurite is missing, did not start, or died."""


def azurite_binary() -> Path:
    """The azurite launcher: ``$INSIGHTS_LINK_AZURITE_BIN`` or the repo's npm install."""
    override = os.environ.get(ENV_AZURITE_BIN, "").strip()
    return Path(override) if override else AZURITE_BIN


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on the loopback interface (Azurite cannot take 0)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def connection_string(port: int, account_key: str = ACCOUNT_KEY) -> str:
    """The connection string for the development account on ``port``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={account_key};"
        f"BlobEndpoint=http://{HOST}:{port}/{ACCOUNT};"
    )


def port_answers(port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``HOST:port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


class Azurite:
    """One Azurite process (blob, queue and table services) on fixed free loopback ports."""

    account = ACCOUNT
    account_key = ACCOUNT_KEY

    def __init__(self, location: Path, binary: Path | None = None, startup_timeout: float = 30.0) -> None:
        self.location = Path(location)
        self.binary = binary or azurite_binary()
        self.startup_timeout = startup_timeout
        self.port, self.queue_port, self.table_port = free_ports(3)
        self.log_path = self.location / "azurite.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--location",
            str(self.location / "data"),
            "--blobHost",
            HOST,
            "--blobPort",
            str(self.port),
            "--queueHost",
            HOST,
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            HOST,
            "--tablePort",
            str(self.table_port),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--silent",
        ]

    def start(self) -> None:
        """Start Azurite (same ports and data as before) and wait until the blob port answers."""
        if self.is_running:
            return
        if not self.binary.exists():
            raise AzuriteError(f"Azurite is not installed at {self.binary}; install it with: {INSTALL_HINT}")
        (self.location / "data").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.location,
                )
            except OSError as exc:  # e.g. no `node` on PATH
                raise AzuriteError(f"cannot run {self.binary}: {exc}") from exc
        deadline = time.monotonic() + self.startup_timeout
        while not port_answers(self.port):
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise AzuriteError(f"Azurite exited with code {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AzuriteError(
                    f"Azurite did not answer on port {self.port} within "
                    f"{self.startup_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        logger.info("Azurite pid %s listening on %s", self._process.pid, self.blob_endpoint)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Azurite (SIGTERM, then SIGKILL after ``timeout``); its data stays on disk."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def __enter__(self) -> Azurite:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def new_container_name() -> str:
    """A fresh, valid container (file system) name."""
    return f"t{uuid.uuid4().hex[:20]}"


def check_storage_contract(storage: Storage, base: str) -> None:
    """Exercise every ``Storage`` method below the folder key ``base`` (which should not
    exist yet) and leave it empty. Shared by the Azurite and the live ADLS tests."""
    k = f"{base.strip('/')}/"
    assert storage.list(base) == []
    assert storage.info(k + "missing.bin") is None
    assert not storage.exists(k + "missing.bin")

    storage.write_bytes(k + "b/2.bin", b"two")
    storage.write_bytes(k + "a/1.bin", b"one")
    with storage.open_write(k + "a/sub/3.bin") as f:
        f.write(b"thr")
        f.write(b"ee")
    storage.write_bytes(k + "a2/sibling.bin", b"s")
    assert storage.read_bytes(k + "a/sub/3.bin") == b"three"
    with storage.open_read(k + "a/1.bin") as f:
        assert f.read() == b"one"
    info = storage.info(k + "b/2.bin")
    assert info is not None and info.size == 3 and info.key == k + "b/2.bin"
    assert info.modified.tzinfo is not None
    assert [o.key for o in storage.list(base)] == [
        k + "a/1.bin",
        k + "a/sub/3.bin",
        k + "a2/sibling.bin",
        k + "b/2.bin",
    ]
    assert [o.key for o in storage.list(k + "a")] == [k + "a/1.bin", k + "a/sub/3.bin"]

    class Boom(Exception):
        pass

    try:
        with storage.open_write(k + "a/1.bin") as f:
            f.write(b"partial")
            raise Boom
    except Boom:
        pass
    assert storage.read_bytes(k + "a/1.bin") == b"one"

    storage.move(k + "a/1.bin", k + "moved/1.bin")
    assert storage.read_bytes(k + "moved/1.bin") == b"one"
    assert not storage.exists(k + "a/1.bin")
    storage.write_bytes(k + "b/2.bin", b"two again")
    storage.move(k + "b/2.bin", k + "moved/1.bin")  # overwrites
    assert storage.read_bytes(k + "moved/1.bin") == b"two again"

    storage.delete(k + "moved/1.bin")
    storage.delete(k + "moved/1.bin")  # missing is fine
    assert not storage.exists(k + "moved/1.bin")

    storage.delete_prefix(k + "a")
    assert [o.key for o in storage.list(base)] == [k + "a2/sibling.bin"]
    storage.delete_prefix(base)
    assert storage.list(base) == []
    try:
        storage.read_bytes(k + "a2/sibling.bin")
    except StorageError:
        pass
    else:
        raise AssertionError("reading a deleted object must raise StorageError")
