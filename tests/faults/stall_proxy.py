"""A loopback TCP proxy that stalls one client's traffic, as a frozen network would.

What: :class:`StallProxy` forwards bytes between a client (an exporter run) and an upstream
(Azurite). Once a client request matching ``trigger`` (a regex over the request bytes, e.g. the
manifest's PUT) passes by, every further client-to-server byte on every connection is held,
including the request that matched, until :meth:`release`. Responses flow freely.

Why: a lease-holding run whose requests hang in a network stall keeps running but can't renew its
lease; its manifest write reaches the service long after another run took over. This reproduces
that without timers: the test waits for :attr:`triggered`, lets the other run commit, and then
releases the held bytes.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading

HOST = "127.0.0.1"
HOLD_LIMIT_SECONDS = 600.0  # a safety net: a test that forgets to release can't hang forever


class StallProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``; stall after ``trigger`` is seen.

    With ``drop_response=True`` the matching request goes through unhindered but its response
    is swallowed and the connection cut: the write happened, the writer can't know it.
    """

    def __init__(self, upstream_port: int, trigger: bytes, drop_response: bool = False) -> None:
        self.upstream_port = upstream_port
        self.drop_response = drop_response
        self.trigger = re.compile(trigger)
        self.triggered = threading.Event()
        self._released = threading.Event()
        self._server = socket.create_server((HOST, 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closing = False
        threading.Thread(target=self._accept, daemon=True, name="stall-proxy").start()

    def release(self) -> None:
        """Let the held bytes (and everything after them) through."""
        self._released.set()

    def close(self) -> None:
        self._closing = True
        self.release()
        for sock in [self._server, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.upstream_port))
            self._sockets += [client, upstream]
            connection: dict[str, bool] = {}
            for args in ((client, upstream, True, connection), (upstream, client, False, connection)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, from_client: bool, connection: dict[str, bool]
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if from_client:
                    if not self.triggered.is_set() and self.trigger.search(data):
                        connection["matched"] = True
                        self.triggered.set()
                    if self.triggered.is_set() and not self.drop_response:
                        self._released.wait(HOLD_LIMIT_SECONDS)
                elif connection.get("matched"):  # swallow the response and cut the connection
                    source.close()
                    target.close()
                    return
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)
