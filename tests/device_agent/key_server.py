"""A fake OTA server for the attested key release, on loopback, that does the real checks.

:class:`FakeKeyServer` answers ``POST /v1/keys/challenge`` and
``POST /v1/keys/release`` as docs/dev/attestation-contracts.md says the OTA
server does, with the sdk's pure pieces: bodies parsed strictly
(:mod:`edgeseal.sdk.key_release`), the quote verified with the enrolled AK
and the binding recomputed (:func:`edgeseal.sdk.quote.verify_quote`), the
PCRs compared with the enrollment baseline or, failing that, accepted when the
request's signed PCR policy approves them under the device's enrolled policy
authority (:func:`edgeseal.sdk.pcr_policy.approved_state`), single-use
challenges, and a real
HPKE envelope sealed to the device's TPM decryption key
(:func:`edgeseal.sdk.envelope.seal_envelope`). ``mode`` injects the server
misbehaviours and refusals the tests name; ``problems`` collects every
contract violation seen in the agent's requests.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.envelope import seal_envelope
from edgeseal.sdk.errors import AttestationError, FormatError
from edgeseal.sdk.hazmat.format import SealedModelHeader
from edgeseal.sdk.key_release import (
    CHALLENGE_PATH,
    RELEASE_PATH,
    KeyChallenge,
    KeyChallengeRequest,
    KeyReleaseRequest,
    KeyReleaseResponse,
    key_release_binding,
)
from edgeseal.sdk.pcr_policy import PCRPolicyError, approved_state
from edgeseal.sdk.quote import verify_quote
from edgeseal.sdk.sealed import ContentKey

PROFILE_PCRS = (0, 4, 9, 15)


@dataclass
class Enrolled:
    """What the server knows of an enrolled device."""

    ak_public: bytes
    baseline: dict[int, bytes]
    device_key: ec.EllipticCurvePublicKey
    #: DER SubjectPublicKeyInfo of the policy authority sent at enrollment (None: none).
    pcr_policy_authority: bytes | None = None


@dataclass
class Published:
    """An attested release: the sealed model's header and its content key (the server's KEK)."""

    header: SealedModelHeader
    content_key: ContentKey


@dataclass
class FakeKeyServer:
    url: str = ""
    #: ok | refuse | unavailable | expired | oversize | oversize-chunked | wrong-pcrs |
    #: malformed | redirect | stall
    mode: str = "ok"
    devices: dict[str, Enrolled] = field(default_factory=dict)
    releases: dict[tuple[str, int], Published] = field(default_factory=dict)
    challenges: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    released: int = 0
    #: The ``pcr_policy`` of every release request received (None: null).
    policies: list[bytes | None] = field(default_factory=list)

    def challenge(self, raw: bytes) -> tuple[int, Any]:
        try:
            request = KeyChallengeRequest.parse(raw)
        except FormatError as exc:
            self.problems.append(f"challenge body: {exc.diagnostics()}")
            return 400, _error("bad-request", exc.diagnostics())
        if self.mode == "refuse":
            return 403, _error("revoked", f"device {request.device_id} is revoked")
        if self.mode == "unavailable":
            return 503, _error("unavailable", "database is down")
        if request.device_id not in self.devices:
            return 404, _error("not-found", "unknown or not enrolled device")
        if (request.family, request.version) not in self.releases:
            return 404, _error("not-found", "no such attested release")
        pcrs = (0, 4, 7, 9, 15) if self.mode == "wrong-pcrs" else PROFILE_PCRS
        challenge = KeyChallenge(secrets.token_hex(8), secrets.token_bytes(32), pcrs)
        # at most one open challenge per device
        self.challenges = {
            k: v for k, v in self.challenges.items() if v["device_id"] != request.device_id
        }
        self.challenges[challenge.challenge_id] = {
            "device_id": request.device_id,
            "family": request.family,
            "version": request.version,
            "nonce": challenge.nonce,
            "at": time.monotonic(),
        }
        if self.mode == "malformed":
            return 200, {**challenge.to_json(), "nonce": "00"}
        return 200, challenge.to_json()

    def release(self, raw: bytes) -> tuple[int, Any]:
        try:
            request = KeyReleaseRequest.parse(raw)
        except FormatError as exc:
            self.problems.append(f"release body: {exc.diagnostics()}")
            return 400, _error("bad-request", exc.diagnostics())
        self.policies.append(request.pcr_policy)
        open_challenge = self.challenges.pop(request.challenge_id, None)  # single use
        if open_challenge is None:
            return 404, _error("not-found", "unknown challenge")
        if self.mode == "expired":
            return 409, _error("challenge-expired", "the challenge expired")
        device = self.devices[open_challenge["device_id"]]
        binding = key_release_binding(
            open_challenge["nonce"],
            open_challenge["device_id"],
            open_challenge["family"],
            open_challenge["version"],
        )
        try:
            verify_quote(
                request.attest,
                request.signature,
                device.ak_public,
                qualifying_data=binding,
                pcrs=request.pcrs,
            )
        except AttestationError as exc:
            self.problems.append(f"quote: {exc.diagnostics()}")
            return 403, _error("attestation-failed", exc.diagnostics())
        differ = [i for i in sorted(device.baseline) if request.pcrs.get(i) != device.baseline[i]]
        if set(request.pcrs) != set(device.baseline):
            return 403, _error("attestation-failed", "not the enrolled PCR selection")
        if differ:
            try:
                approved_state(request.pcr_policy, device.pcr_policy_authority, request.pcrs)
            except PCRPolicyError as exc:
                return 403, _error(
                    "attestation-failed",
                    f"PCR {', '.join(map(str, differ))} differ from the baseline ({exc.message})",
                )
        release = self.releases[(open_challenge["family"], open_challenge["version"])]
        envelope = seal_envelope(release.content_key, device.device_key, release.header)
        self.released += 1
        return 200, KeyReleaseResponse(envelope).to_json()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _handler(server: FakeKeyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if "Authorization" in self.headers:
                server.problems.append("a key release carries no token")
            if self.headers.get("Content-Type") != "application/json":
                server.problems.append(f"content type {self.headers.get('Content-Type')}")
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            server.requests.append(self.path)
            if server.mode == "stall":
                time.sleep(3)
            if server.mode == "redirect":
                self.send_response(302)
                self.send_header("Location", "http://example.invalid/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if server.mode == "oversize-chunked":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for _ in range(20):
                        self.wfile.write(b" " * 8192)
                except OSError:
                    pass
                return
            routes = {CHALLENGE_PATH: server.challenge, RELEASE_PATH: server.release}
            status, answer = routes[self.path](raw) if self.path in routes else (404, {})
            data = json.dumps(answer).encode()
            if server.mode == "oversize":
                data = b" " * (70 * 1024) + data
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up on a stalled or oversize answer is what the test wanted."""


@contextmanager
def running_key_server() -> Iterator[FakeKeyServer]:
    server = FakeKeyServer()
    httpd = _QuietServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
