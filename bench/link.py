"""A loopback TCP proxy that limits throughput to a device link's rate (for benchmarks).

``LinkProxy(upstream_port, mbit_per_s)`` listens on 127.0.0.1 and forwards
each connection to ``127.0.0.1:upstream_port``. Bytes from the server to the
device share one link budget: every piece reserves ``len / rate`` seconds of
the link, so parallel connections split the rate as they would on a real
uplink. The device-to-server direction is not limited (requests are small).

Only for ``bench/``: a benchmark that runs the real server and the real agent
on loopback uses it to put a realistic download between them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

_PIECE = 64 * 1024


class LinkProxy:
    def __init__(self, upstream_port: int, mbit_per_s: float) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._bytes_per_s = mbit_per_s * 1_000_000 / 8
        self._link_free = 0.0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limited: bool) -> None:
        try:
            while data := src.recv(_PIECE):
                if limited:
                    self._wait_for_link(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _wait_for_link(self, size: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._link_free)
            self._link_free = start + size / self._bytes_per_s
            done = self._link_free
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@contextlib.contextmanager
def link_proxy(upstream_port: int, mbit_per_s: float) -> Iterator[LinkProxy]:
    proxy = LinkProxy(upstream_port, mbit_per_s)
    try:
        yield proxy
    finally:
        proxy.close()
