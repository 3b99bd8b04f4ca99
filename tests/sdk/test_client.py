"""ManagementClient transport behaviour against a small real HTTP server on loopback.

Only pure client behaviour is tested here (status mapping, bounded reads,
streaming, token hygiene); the real OTA server is exercised end to end in
tests/ota_server/test_release_flow.py.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgeseal.sdk.client import UPLOAD_BLOCK, ClientError, ManagementClient

TOKEN = "tok-SECRET-4f1c2a9e"
Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Fake:
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


def _reply(req: http.server.BaseHTTPRequestHandler, status: int, body: Any, **headers: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req.send_response(status)
    req.send_header("Content-Type", headers.pop("content_type", "application/json"))
    if headers.pop("no_length", None) is None:
        req.send_header("Content-Length", str(len(data)))
    else:
        req.send_header("Connection", "close")
    for name, value in headers.items():
        req.send_header(name.replace("_", "-"), value)
    req.end_headers()
    req.wfile.write(data)


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()

    class _Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _dispatch(self) -> None:
            state.seen.append({"method": self.command, "path": self.path, "headers": self.headers})
            handler = state.routes.get((self.command, self.path.split("?")[0]))
            if handler is None:
                _reply(self, 404, {"error": {"code": "not-found", "message": "no such route"}})
                return
            handler(self)

        do_GET = do_POST = do_PUT = _dispatch  # noqa: N815

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _client(fake: Fake, **kw: Any) -> ManagementClient:
    return ManagementClient(fake.url, TOKEN, **kw)


def test_json_call_sends_bearer_token_and_parses_answer(fake: Fake) -> None:
    fake.routes["GET", "/api/v1/whoami"] = lambda r: _reply(
        r, 200, {"name": "alice", "role": "release-manager", "family": "detector"}
    )
    who = _client(fake).whoami()
    assert (who.name, who.role, who.family) == ("alice", "release-manager", "detector")
    assert fake.seen[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (
            409,
            {"error": {"code": "conflict", "message": "a proposal is pending"}},
            "conflict",
            "a proposal is pending",
        ),
        (
            403,
            {"error": {"code": "forbidden", "message": "not a release manager"}},
            "forbidden",
            "not a release manager",
        ),
        (
            401,
            {"error": {"code": "unauthorized", "message": "bad token"}},
            "unauthorized",
            "bad token",
        ),
        (500, b"<html>oops</html>", None, "HTTP 500"),
        (400, {"error": {"code": "bad", "message": "line\x1b[31m\nred"}}, "bad", "line [31m red"),
    ],
)
def test_error_answers_become_client_errors(
    fake: Fake, status: int, body: Any, code: str | None, message: str
) -> None:
    fake.routes["GET", "/api/v1/releases/r1"] = lambda r: _reply(r, status, body)
    with pytest.raises(ClientError) as info:
        _client(fake).get_release("r1")
    err = info.value
    assert (err.status, err.code, err.message) == (status, code, message)
    assert str(status) in err.diagnostics() and message in err.diagnostics()


def test_error_message_is_bounded(fake: Fake) -> None:
    long = {"error": {"code": "x", "message": "m" * 100_000}}
    fake.routes["GET", "/api/v1/releases/r1"] = lambda r: _reply(r, 400, long)
    with pytest.raises(ClientError) as info:
        _client(fake).get_release("r1")
    assert len(info.value.message) <= 500


def test_declared_oversized_answer_is_refused_unread(fake: Fake) -> None:
    fake.routes["GET", "/api/v1/releases"] = lambda r: _reply(r, 200, b"[" + b" " * 5000 + b"]")
    with pytest.raises(ClientError, match="exceeds the 1000-byte limit"):
        _client(fake, max_response=1000).list_releases()


def test_undeclared_oversized_answer_is_cut_off(fake: Fake) -> None:
    fake.routes["GET", "/api/v1/releases"] = lambda r: _reply(
        r, 200, b"[" + b" " * 5000 + b"]", no_length="1"
    )
    with pytest.raises(ClientError, match="exceeds the 1000-byte limit"):
        _client(fake, max_response=1000).list_releases()


def test_non_json_success_is_an_error(fake: Fake) -> None:
    fake.routes["GET", "/api/v1/releases"] = lambda r: _reply(r, 200, b"not json")
    with pytest.raises(ClientError, match="not JSON"):
        _client(fake).list_releases()


def test_lists_are_accepted_bare_or_wrapped(fake: Fake) -> None:
    rec = {"id": "r1", "state": "published", "family": "detector", "version": 7, "signatures": 2}
    fake.routes["GET", "/api/v1/releases"] = lambda r: _reply(r, 200, {"releases": [rec]})
    (got,) = _client(fake).list_releases(family="detector")
    assert (got.id, got.version, got.signatures) == ("r1", 7, 2)
    assert fake.seen[-1]["path"] == "/api/v1/releases?family=detector"


def test_upload_streams_the_file_in_bounded_blocks(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = bytes(range(256)) * (3 * UPLOAD_BLOCK // 256 + 17)
    path = tmp_path / "m.esm"
    path.write_bytes(payload)
    received: dict[str, Any] = {}

    def upload(r: http.server.BaseHTTPRequestHandler) -> None:
        length = int(r.headers["Content-Length"])
        digest, got = hashlib.sha256(), 0
        while got < length:
            block = r.rfile.read(min(65536, length - got))
            digest.update(block)
            got += len(block)
        received.update(size=got, sha256=digest.hexdigest(), type=r.headers["Content-Type"])
        _reply(r, 200, {"id": "r1", "state": "awaiting-signatures", "proposal_version": 3})

    fake.routes["PUT", "/api/v1/releases/r%2F1/sealed-model"] = upload
    sizes: list[int] = []
    original = http.client.HTTPConnection.send

    def spy(self: http.client.HTTPConnection, data: Any) -> None:
        sizes.append(len(data))
        original(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", spy)
    record = _client(fake).upload_sealed_model("r/1", path)
    assert record.proposal_version == 3 and record.state == "awaiting-signatures"
    assert received == {
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "type": "application/octet-stream",
    }
    assert max(sizes) <= UPLOAD_BLOCK and len(sizes) > 3


def test_early_refusal_during_upload_reports_the_servers_answer(fake: Fake, tmp_path: Path) -> None:
    path = tmp_path / "big.esm"
    path.write_bytes(b"\0" * (8 * UPLOAD_BLOCK))

    def refuse(r: http.server.BaseHTTPRequestHandler) -> None:
        r.close_connection = True
        _reply(r, 413, {"error": {"code": "too-large", "message": "over the upload limit"}})

    fake.routes["PUT", "/api/v1/releases/r1/sealed-model"] = refuse
    with pytest.raises(ClientError) as info:
        _client(fake).upload_sealed_model("r1", path)
    # Either the 413 was read, or the connection died first: never a silent success.
    assert info.value.status in (413, None)


def test_tuf_metadata_fetch_is_anonymous_and_404_is_none(fake: Fake) -> None:
    fake.routes["GET", "/tuf/metadata/timestamp.json"] = lambda r: _reply(r, 200, {"signed": {}})
    client = _client(fake)
    assert client.fetch_tuf_metadata("timestamp.json") == b'{"signed": {}}'
    assert "Authorization" not in fake.seen[-1]["headers"]
    assert client.fetch_tuf_metadata("9.snapshot.json") is None
    with pytest.raises(ClientError):
        client.fetch_tuf_metadata("../server.db")


def test_proposal_is_returned_as_exact_bytes(fake: Fake) -> None:
    raw = b'{"signatures":[],"signed":{"_type":"targets"}}'
    fake.routes["GET", "/api/v1/releases/r1/proposal"] = lambda r: _reply(r, 200, raw)
    assert _client(fake).proposal("r1") == raw


def test_token_never_appears_in_logs_repr_or_errors(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.routes["GET", "/api/v1/whoami"] = lambda r: _reply(
        r, 401, {"error": {"code": "unauthorized", "message": "token expired"}}
    )
    client = _client(fake)
    with pytest.raises(ClientError) as info:
        client.whoami()
    with pytest.raises(ClientError):
        client.get_release("missing")
    assert caplog.records, "the client should log its requests at debug level"
    for text in (caplog.text, repr(client), str(info.value), info.value.diagnostics()):
        assert TOKEN not in text


def test_unreachable_server_and_timeout_are_client_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClientError) as info:
        ManagementClient(f"http://127.0.0.1:{port}", TOKEN, timeout=5).whoami()
    assert info.value.status is None
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ClientError, match="did not answer"):
            ManagementClient(url, TOKEN, timeout=0.2).whoami()


def test_refuses_plain_http_to_remote_hosts_and_bad_tokens() -> None:
    with pytest.raises(ClientError, match="plain HTTP"):
        ManagementClient("http://ota.example.com", TOKEN)
    ManagementClient("http://ota.example.com", TOKEN, allow_http=True)
    ManagementClient("https://ota.example.com", TOKEN)
    for url in ("ftp://x", "https://user:pw@x", "https://x/?q=1", "not a url"):
        with pytest.raises(ClientError):
            ManagementClient(url, TOKEN)
    for token in ("", "a\r\nX-Injected: 1", "é"):
        with pytest.raises(ClientError) as info:
            ManagementClient("https://x", token)
        assert token not in info.value.message or not token


def test_missing_token_is_reported_before_any_request(fake: Fake) -> None:
    with pytest.raises(ClientError, match="EDGESEAL_TOKEN"):
        ManagementClient(fake.url, None).whoami()
    assert fake.seen == []
