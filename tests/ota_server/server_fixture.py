"""The real OTA server used by tests/ota_server/conftest.py (``ota_server`` fixture).

``ota_server`` initializes a fresh data directory (officers' keys generated in
memory, 16 envelope bins to keep it quick), starts uvicorn on 127.0.0.1 with
an OS-chosen port in a background thread, and yields a :class:`RunningServer`:
its base URL, the admin token, the data directory, the officers' targets
signers (to delegate families) and small helpers to make tokens and families
and to send raw HTTP requests with the standard library.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner

from edgeseal.ota_server.config import ServerConfig
from edgeseal.ota_server.initialize import Officers, initialize


def new_signer() -> CryptoSigner:
    return CryptoSigner(ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RunningServer:
    base_url: str
    admin_token: str
    data_dir: Path
    root_signers: list[CryptoSigner]
    targets_signers: list[CryptoSigner]
    release_managers: dict[str, list[CryptoSigner]] = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.base_url)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One real HTTP request; ``body`` is JSON-encoded unless it is bytes."""
        host, port = self.host_port
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            all_headers = dict(headers or {})
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            data: bytes | None = None
            if body is not None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                all_headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=all_headers)
            response = conn.getresponse()
            return Response(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def token(self, role: str, family: str | None = None, name: str | None = None) -> str:
        body: dict[str, Any] = {"name": name or f"{role}-{family or 'all'}", "role": role}
        if family is not None:
            body["family"] = family
        answer = self.request("POST", "/api/v1/tokens", token=self.admin_token, body=body)
        assert answer.status == 201, answer.body
        token: str = answer.json()["token"]
        return token

    def add_family(self, family: str, managers: int = 3, threshold: int = 2) -> list[CryptoSigner]:
        """Delegate ``family`` to fresh release-manager keys (signed by the officers)."""
        from edgeseal.ota_server.repository import Repository

        signers = [new_signer() for _ in range(managers)]
        repo = Repository(self.data_dir / "repository", self.data_dir / "keys")
        repo.set_family(family, [s.public_key for s in signers], threshold, self.targets_signers)
        self.release_managers[family] = signers
        return signers


def _free_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running_server(
    data_dir: Path, *, config: ServerConfig | None = None, hint_settings: Any = None
) -> Iterator[RunningServer]:
    """Initialize ``data_dir`` and serve it with uvicorn on 127.0.0.1 (port chosen by the OS)."""
    import uvicorn

    from edgeseal.ota_server.app import create_app

    root = [new_signer() for _ in range(3)]
    targets = [new_signer() for _ in range(3)]
    officers = Officers(
        root_keys=[s.public_key for s in root],
        root_threshold=2,
        root_signers=root[:2],
        targets_keys=[s.public_key for s in targets],
        targets_threshold=2,
        targets_signers=targets[:2],
    )
    config = config or ServerConfig(bin_bits=4, max_upload=8 * 1024 * 1024, refresh_interval=3600)
    admin = initialize(data_dir, officers, config=config)
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(data_dir, hint_settings=hint_settings),
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the OTA server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(
            base_url=f"http://127.0.0.1:{port}",
            admin_token=admin,
            data_dir=data_dir,
            root_signers=root,
            targets_signers=targets[:2],
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
