"""Attested key release, the device's side: ask the OTA server for a release's key with a quote.

For a release whose signed metadata says ``key_release = "attested"`` there is
no envelope in the TUF repository (docs/dev/attestation-contracts.md,
"Attested key release"). :func:`fetch_envelope`:

1. ``POST /v1/keys/challenge`` ``{"device_id", "family", "version"}``; the
   server answers a challenge id, a 32-byte nonce and the PCRs to quote;
2. checks that those PCRs are **exactly the board profile's** (the PCRs the
   device enrolled with and the console quotes): the server's baseline is
   over that set, so any other set is a misconfigured server or one probing
   the device's boot state, and the device does not quote it;
3. reads the PCRs and quotes them with the attestation key (AK), back to back
   under the backend's lock, with qualifying data
   :func:`~edgeseal.sdk.key_release.key_release_binding` ``(nonce, device_id,
   family, version)``;
4. ``POST /v1/keys/release`` with the values, the quote and the signed PCR
   policy the agent runs under (``SignedPCRPolicy.to_bytes()``, or null): the
   server releases on the enrollment baseline or on a boot state the device's
   enrolled policy authority approved (an OS update); the answer is the
   content key's HPKE envelope, sealed to the device's TPM decryption key,
   which the updater opens like any other.

No token: the quote is the device's credential, and nothing secret crosses
the wire (the envelope opens only in this TPM, the quote is bound to a
single-use nonce), so plain HTTP is accepted as for the TUF URLs. Every
answer is bounded (:data:`~edgeseal.sdk.key_release.MAX_BODY_BYTES`, read
within one overall deadline), parsed strictly, redirects are not followed.

Errors, split by what the updater does next:

* :class:`NotEnrolledError` - no ``STATE/enrollment.json`` for this device, or
  no AK in the TPM: refused until ``edgeseal-agent enroll`` (which needs a
  restart of the agent);
* :class:`KeyReleaseRefusedError` - the server refused (403 attestation
  failed or revoked, 404 not enrolled or not an attested release, any other
  4xx but 408/409/425/429), with its status, code and message: the release
  is not asked for again until a new release or a restart;
* :class:`KeyReleaseInvalidError` - an answer the device will not act on
  (malformed, over the bound, a redirect, other PCRs than the profile's):
  refused this cycle, asked again next cycle (the server may be fixed);
* :class:`KeyReleaseUnavailableError` - no answer: connection refused,
  timeout, TLS, 5xx, 408/425/429, or 409 (the challenge expired): retried
  next cycle.

TPM failures are :class:`~edgeseal.hardware.errors.HardwareError` as everywhere.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeseal.device_agent.enroll import ENROLLMENT_FILE
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.locked_backend import exclusive
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import KeyNotFoundError
from edgeseal.sdk import strict_json
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.key_release import (
    CHALLENGE_PATH,
    MAX_BODY_BYTES,
    RELEASE_PATH,
    KeyChallenge,
    KeyChallengeRequest,
    KeyReleaseRequest,
    KeyReleaseResponse,
    key_release_binding,
)

log = logging.getLogger(__name__)

#: Seconds for a whole request: connect, send, and read the (bounded) answer.
DEFAULT_TIMEOUT_S = 30.0
#: HTTP statuses that mean "ask again later", not "no".
RETRY_STATUSES = frozenset({408, 409, 425, 429})
NOT_ENROLLED = "not enrolled: run edgeseal-agent enroll"
MAX_ENROLLMENT_BYTES = 64 * 1024
_MAX_MESSAGE = 300
_READ_CHUNK = 16 * 1024


class KeyReleaseError(AgentError):
    """Root of the attested key release's errors (module docstring)."""


class NotEnrolledError(KeyReleaseError):
    """This device has not enrolled its attestation key with the server."""


class KeyReleaseRefusedError(KeyReleaseError):
    """The server refused to release the key; ``status``, ``code`` and its message."""

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def diagnostics(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"the server refused the key release ({self.status}{code}): {self.message}"


class KeyReleaseUnavailableError(KeyReleaseError):
    """No answer from the server (network, timeout, 5xx, an expired challenge): retry later."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KeyReleaseInvalidError(KeyReleaseError):
    """The server's answer is malformed, too large, or asks for a quote the device refuses."""


# --- enrollment ------------------------------------------------------------------------------


def check_enrolled(state_dir: Path, device_id: str) -> dict[str, Any]:
    """``STATE/enrollment.json`` of this device, or :class:`NotEnrolledError` saying why."""
    path = Path(state_dir) / ENROLLMENT_FILE
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_ENROLLMENT_BYTES + 1)
    except FileNotFoundError:
        raise NotEnrolledError(NOT_ENROLLED) from None
    except OSError as exc:
        raise NotEnrolledError(f"cannot read {path}: {exc.strerror}; {NOT_ENROLLED}") from exc
    try:
        record = None if len(data) > MAX_ENROLLMENT_BYTES else strict_json.loads(data)
    except ValueError:
        record = None
    if record is None:
        raise NotEnrolledError(f"{path} is unreadable; {NOT_ENROLLED}")
    if not isinstance(record, dict) or record.get("enrolled") is not True:
        raise NotEnrolledError(f"{path} does not record an enrollment; {NOT_ENROLLED}")
    if record.get("device_id") != device_id:
        other = str(record.get("device_id"))[:64]
        raise NotEnrolledError(
            f"{path} records device {other!r}, not {device_id!r}; {NOT_ENROLLED}"
        )
    return record


# --- the client ------------------------------------------------------------------------------


class KeyReleaseClient:
    """The server's two key-release routes (no token; see the module docstring)."""

    def __init__(
        self,
        server_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        ca_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = urllib.parse.urlsplit(server_url)
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.query
            or parsed.fragment
            or parsed.username
            or parsed.password
        ):
            raise KeyReleaseError(
                f"server_url {server_url[:200]!r} must be http(s)://host[:port][/path]",
                field="server_url",
            )
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._timeout = timeout
        self._clock = clock
        self._ssl: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.base_url = urllib.parse.urlunsplit(
            (parsed.scheme, parsed.netloc, self._prefix, "", "")
        )

    def __repr__(self) -> str:
        return f"KeyReleaseClient({self.base_url!r})"

    def challenge(self, request: KeyChallengeRequest) -> KeyChallenge:
        body = self._post(CHALLENGE_PATH, request.encode())
        try:
            return KeyChallenge.parse(body)
        except FormatError as exc:
            raise KeyReleaseInvalidError(
                f"the server's challenge is malformed: {exc.message}", field=exc.field
            ) from None

    def release(self, request: KeyReleaseRequest) -> bytes:
        """The envelope the server released."""
        body = self._post(RELEASE_PATH, request.encode())
        try:
            return KeyReleaseResponse.parse(body).envelope
        except FormatError as exc:
            raise KeyReleaseInvalidError(
                f"the server's key release is malformed: {exc.message}", field=exc.field
            ) from None

    # -- transport ----------------------------------------------------------------------------

    def _post(self, path: str, payload: bytes) -> bytes:
        """POST JSON, return a 2xx body; every other outcome raises (module docstring)."""
        where = f"{self.base_url}{path}"
        deadline = self._clock() + self._timeout
        conn = self._connection()
        try:
            conn.request(
                "POST",
                self._prefix + path,
                body=payload,
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "User-Agent": "edgeseal-agent",
                },
            )
            response = conn.getresponse()
            body = self._read_bounded(response, deadline, where)
            status = response.status
        except TimeoutError as exc:
            raise KeyReleaseUnavailableError(
                f"{where} did not answer within {self._timeout:g} s"
            ) from exc
        except ssl.SSLError as exc:
            raise KeyReleaseUnavailableError(f"TLS with {where} failed: {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise KeyReleaseUnavailableError(f"cannot talk to {where}: {exc}") from exc
        finally:
            conn.close()
        log.debug("POST %s -> %d (%d bytes)", where, status, len(body))
        if 200 <= status < 300:
            return body
        code, message = _error_of(body, status)
        if status >= 500 or status in RETRY_STATUSES:
            what = f"{status} {code}" if code else str(status)
            raise KeyReleaseUnavailableError(f"{where} answered {what}: {message}", status=status)
        if 400 <= status < 500:
            raise KeyReleaseRefusedError(message, status=status, code=code)
        raise KeyReleaseInvalidError(f"{where} answered {status} (redirects are not followed)")

    def _read_bounded(
        self, response: http.client.HTTPResponse, deadline: float, where: str
    ) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
            raise KeyReleaseInvalidError(
                f"{where} answered {declared} bytes, over the {MAX_BODY_BYTES}-byte limit"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            if self._clock() > deadline:
                raise TimeoutError
            chunk = response.read1(_READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise KeyReleaseInvalidError(
                    f"{where} answered more than the {MAX_BODY_BYTES}-byte limit"
                )
            chunks.append(chunk)

    def _connection(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)


def _error_of(body: bytes, status: int) -> tuple[str | None, str]:
    """The server's ``{"error": {"code", "message"}}``, made printable and cut; never raises."""
    code, message = None, f"HTTP {status}"
    try:
        error = strict_json.loads(body)["error"]
        if isinstance(error.get("code"), str):
            code = _printable(error["code"])[:64]
        if isinstance(error.get("message"), str):
            message = _printable(error["message"])
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return code, message


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:_MAX_MESSAGE]


# --- the exchange ----------------------------------------------------------------------------


def fetch_envelope(  # noqa: PLR0917 - who asks, with what, for what
    client: KeyReleaseClient,
    backend: KeyBackend,
    device_id: str,
    profile_pcrs: Sequence[int],
    family: str,
    version: int,
    *,
    pcr_policy: bytes | None = None,
) -> bytes:
    """The release's envelope for this device, released by the server on a fresh quote.

    ``profile_pcrs`` are the board profile's PCRs: the challenge must name
    exactly these. ``pcr_policy`` is the signed PCR policy the agent runs under
    (``SignedPCRPolicy.to_bytes()``; None sends null), which lets the server
    accept a boot state approved after enrollment. Raises the errors of the
    module docstring, or HardwareError.
    """
    expected = tuple(sorted(set(profile_pcrs)))
    if not expected:
        raise KeyReleaseError("the board profile names no PCRs to quote for a key release")
    try:
        request = KeyChallengeRequest(device_id, family, version)
    except FormatError as exc:
        raise KeyReleaseError(f"cannot ask for this key: {exc.message}", field=exc.field) from None
    challenge = client.challenge(request)
    if challenge.pcrs != expected:
        raise KeyReleaseInvalidError(
            f"the server asked for a quote of PCRs {_indices(challenge.pcrs)}; this device "
            f"quotes its board profile's PCRs {_indices(expected)} only",
            field="pcrs",
        )
    binding = key_release_binding(challenge.nonce, device_id, family, version)
    try:
        with exclusive(backend) as tpm:
            values = tpm.pcr_read(challenge.pcrs)
            attest, signature = tpm.quote(binding, challenge.pcrs)
    except KeyNotFoundError as exc:
        raise NotEnrolledError(f"no attestation key in the TPM; {NOT_ENROLLED}") from exc
    log.info(
        "key release: quoted PCRs %s for %s v%d (challenge %s)",
        _indices(challenge.pcrs),
        family,
        version,
        challenge.challenge_id,
    )
    release = KeyReleaseRequest(
        challenge.challenge_id,
        {i: values.digests[i] for i in challenge.pcrs},
        attest,
        signature,
        pcr_policy=pcr_policy,
    )
    return client.release(release)


def _indices(indices: Sequence[int]) -> str:
    return ", ".join(str(i) for i in indices)


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "NOT_ENROLLED",
    "KeyReleaseClient",
    "KeyReleaseError",
    "KeyReleaseInvalidError",
    "KeyReleaseRefusedError",
    "KeyReleaseUnavailableError",
    "NotEnrolledError",
    "check_enrolled",
    "fetch_envelope",
]
