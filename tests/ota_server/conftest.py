"""Fixtures of the OTA server tests: a real server on loopback (see server_fixture.py).

``ota_server`` initializes a fresh data directory (officers' keys generated in
memory, 16 envelope bins to keep it quick), starts uvicorn on 127.0.0.1 with
an OS-chosen port in a background thread, and yields a ``RunningServer``: its
base URL, the admin token, the data directory, the officers' targets signers
(to delegate families) and helpers to make tokens and families and to send
raw HTTP requests with the standard library. Other suites can reuse it with
``from server_fixture import running_server``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_fixture import RunningServer, running_server


@pytest.fixture
def ota_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A freshly initialized edgeseal server on 127.0.0.1 (real uvicorn, background thread)."""
    with running_server(tmp_path / "server") as server:
        yield server
