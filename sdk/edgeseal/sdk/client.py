"""Client of the OTA server's management API (and its static TUF files).

Standard library only (``http.client``), so the release tooling needs nothing
beyond the sdk core. Deliberate choices:

* **No redirects, no proxies from the environment**: the bearer token goes to
  the one server the user named, never anywhere a response points to.
* **Plain HTTP only to loopback** unless ``allow_http=True``: a bearer token
  over plain HTTP across a network is readable by anyone on the path.
* **Every response is bounded** (``max_response``, larger for proposals and
  TUF metadata) before it is read, and every call has a timeout.
* **Uploads stream** from the file in :data:`UPLOAD_BLOCK` pieces; a sealed
  model is never held in memory.
* **Errors are normalized**: any refusal becomes :class:`ClientError` with
  the HTTP status, the server's error code and its (sanitized, bounded)
  message; network failures become a :class:`ClientError` without a status.
* **The token is never logged** and never part of ``repr`` or an error.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import logging
import os
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.errors import EdgesealError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_METADATA_RESPONSE",
    "MAX_RESPONSE",
    "ClientError",
    "FamilyInfo",
    "Identity",
    "ManagementClient",
    "ReleaseRecord",
    "SignatureStatus",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
#: Largest JSON answer read from the management API.
MAX_RESPONSE = 4 * 1024 * 1024
#: Largest proposal or TUF metadata file read (python-tuf's default targets limit is 5 MB).
MAX_METADATA_RESPONSE = 16 * 1024 * 1024
UPLOAD_BLOCK = 1024 * 1024
_MAX_MESSAGE = 500


class ClientError(EdgesealError):
    """The server refused a request, answered nonsense, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.code = code

    def diagnostics(self) -> str:
        if self.status is None:
            return self.message
        code = f" {self.code}" if self.code else ""
        return f"server answered {self.status}{code}: {self.message}"


@dataclass(frozen=True)
class Identity:
    """Who the token belongs to (``GET /api/v1/whoami``)."""

    name: str
    role: str
    family: str | None


@dataclass(frozen=True)
class FamilyInfo:
    family: str
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class ReleaseRecord:
    """A release as the server describes it. ``raw`` is the whole JSON object."""

    id: str
    state: str
    family: str | None = None
    version: int | None = None
    channel: str | None = None
    hardware: tuple[str, ...] = ()
    target_path: str | None = None
    signatures: int | None = None
    threshold: int | None = None
    proposal_version: int | None = None
    sealed_size: int | None = None
    sealed_sha256: str | None = None
    created: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, value: object) -> ReleaseRecord:
        obj = _expect_object(value, "release")
        release_id = obj.get("id")
        if isinstance(release_id, int) and not isinstance(release_id, bool):
            release_id = str(release_id)
        if not isinstance(release_id, str) or not release_id:
            raise ClientError("the server's release record has no id")
        signatures = obj.get("signatures")
        if isinstance(signatures, list):
            signatures = len(signatures)
        hardware = obj.get("hardware")
        return cls(
            id=release_id,
            state=_opt(obj, "state", str) or "unknown",
            family=_opt(obj, "family", str),
            version=_opt(obj, "version", int),
            channel=_opt(obj, "channel", str),
            hardware=tuple(h for h in hardware if isinstance(h, str))
            if isinstance(hardware, list)
            else (),
            target_path=_opt(obj, "target_path", str),
            signatures=signatures if type(signatures) is int else None,
            threshold=_opt(obj, "threshold", int),
            proposal_version=_opt(obj, "proposal_version", int),
            sealed_size=_opt(obj, "sealed_size", int),
            sealed_sha256=_opt(obj, "sealed_sha256", str),
            created=_opt(obj, "created", str),
            raw=dict(obj),
        )


@dataclass(frozen=True)
class SignatureStatus:
    """Answer to a signature: how many of the threshold are in, and the new state."""

    signatures: int
    threshold: int
    state: str


def _opt(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if kind is int and (type(value) is not int):
        return None
    return value if isinstance(value, kind) else None


def _expect_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClientError(f"the server's answer about {what} is not a JSON object")
    return value


def _expect_list(value: object, key: str) -> list[Any]:
    """A list answer, bare or wrapped as ``{key: [...]}``."""
    if isinstance(value, dict) and isinstance(value.get(key), list):
        value = value[key]
    if not isinstance(value, list):
        raise ClientError(f"the server's answer about {key} is not a JSON list")
    return value


def _sanitize(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:_MAX_MESSAGE]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ManagementClient:
    """One server's management API, authenticated by a bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response: int = MAX_RESPONSE,
        ca_file: Path | None = None,
        allow_http: bool = False,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ClientError(
                f"server URL {base_url[:200]!r} must be http(s)://host[:port]", field="server"
            )
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            raise ClientError("server URL must not carry credentials, a query or a fragment")
        if parsed.scheme == "http" and not allow_http and not _is_loopback(parsed.hostname):
            raise ClientError(
                f"refusing plain HTTP to {parsed.hostname}: the token would cross the network "
                "unencrypted; use https (plain http is allowed to loopback only)",
                field="server",
            )
        if token is not None and (
            not token or len(token) > 4096 or not all(33 <= ord(c) < 127 for c in token)
        ):
            raise ClientError("the API token is malformed (empty, too long or not printable)")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._max_response = max_response
        self._ssl: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.base_url = urllib.parse.urlunsplit(
            (parsed.scheme, parsed.netloc, self._prefix, "", "")
        )

    def __repr__(self) -> str:
        return f"ManagementClient({self.base_url!r}, token=<{'set' if self._token else 'none'}>)"

    # -- the API -------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        return _expect_object(self._json("GET", "/healthz", auth=False), "health")

    def whoami(self) -> Identity:
        obj = _expect_object(self._json("GET", "/api/v1/whoami"), "whoami")
        return Identity(
            name=_opt(obj, "name", str) or "?",
            role=_opt(obj, "role", str) or "?",
            family=_opt(obj, "family", str),
        )

    def kek_public_key(self) -> ec.EllipticCurvePublicKey:
        """The server's key-encryption key, which the content key is sealed to."""
        obj = _expect_object(self._json("GET", "/api/v1/kek"), "the KEK")
        pem = obj.get("public_key_pem")
        if not isinstance(pem, str):
            raise ClientError("the server's KEK answer has no public_key_pem")
        try:
            key = serialization.load_pem_public_key(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ClientError("the server's KEK is not a PEM public key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ClientError("the server's KEK is not a P-256 public key")
        return key

    def families(self) -> list[FamilyInfo]:
        result = []
        for item in _expect_list(self._json("GET", "/api/v1/families"), "families"):
            obj = _expect_object(item, "a family")
            keyids = obj.get("keyids")
            threshold = obj.get("threshold")
            if (
                not isinstance(obj.get("family"), str)
                or not isinstance(keyids, list)
                or type(threshold) is not int
            ):
                raise ClientError("the server's family entry is malformed")
            result.append(
                FamilyInfo(obj["family"], tuple(k for k in keyids if isinstance(k, str)), threshold)
            )
        return result

    def create_release(
        self,
        *,
        family: str,
        version: int,
        custom: dict[str, Any],
        kek_envelope: bytes,
        sealed_size: int,
        sealed_sha256: str,
    ) -> ReleaseRecord:
        body = {
            "family": family,
            "version": version,
            "custom": custom,
            "kek_envelope_b64": base64.b64encode(kek_envelope).decode("ascii"),
            "sealed_size": sealed_size,
            "sealed_sha256": sealed_sha256,
        }
        return ReleaseRecord.from_json(self._json("POST", "/api/v1/releases", body))

    def upload_sealed_model(self, release_id: str, path: Path) -> ReleaseRecord:
        """Stream the sealed model at ``path`` to the release (PUT, Content-Length)."""
        target = f"/api/v1/releases/{_quote(release_id)}/sealed-model"
        try:
            with Path(path).open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                status, body = self._request(
                    "PUT",
                    target,
                    upload=(handle, size),
                    content_type="application/octet-stream",
                    limit=self._max_response,
                )
        except OSError as exc:
            raise ClientError(f"cannot read the sealed model {path}: {exc.strerror}") from exc
        return ReleaseRecord.from_json(self._decode(status, body))

    def proposal(self, release_id: str) -> bytes:
        """The unsigned proposed family metadata, exactly as the server will verify it."""
        status, body = self._request(
            "GET", f"/api/v1/releases/{_quote(release_id)}/proposal", limit=MAX_METADATA_RESPONSE
        )
        self._decode(status, body, parse=False)
        return body

    def add_signature(self, release_id: str, keyid: str, sig: str) -> SignatureStatus:
        obj = _expect_object(
            self._json(
                "POST",
                f"/api/v1/releases/{_quote(release_id)}/signatures",
                {"keyid": keyid, "sig": sig},
            ),
            "the signature",
        )
        signatures, threshold = obj.get("signatures"), obj.get("threshold")
        if isinstance(signatures, list):
            signatures = len(signatures)
        if type(signatures) is not int or type(threshold) is not int:
            raise ClientError("the server's answer to a signature lacks signatures/threshold")
        return SignatureStatus(signatures, threshold, _opt(obj, "state", str) or "unknown")

    def yank(self, release_id: str) -> ReleaseRecord:
        return ReleaseRecord.from_json(
            self._json("POST", f"/api/v1/releases/{_quote(release_id)}/yank", {})
        )

    def rollout(self, release_id: str, percent: int) -> ReleaseRecord:
        """Propose changing a published release's ``rollout_percent`` (then k managers sign).

        The record's ``raw["pending_rollout_percent"]`` is the proposed value.
        """
        return ReleaseRecord.from_json(
            self._json(
                "POST", f"/api/v1/releases/{_quote(release_id)}/rollout", {"percent": percent}
            )
        )

    def list_releases(self, family: str | None = None) -> list[ReleaseRecord]:
        path = "/api/v1/releases"
        if family is not None:
            path += "?" + urllib.parse.urlencode({"family": family})
        items = _expect_list(self._json("GET", path), "releases")
        return [ReleaseRecord.from_json(item) for item in items]

    def get_release(self, release_id: str) -> ReleaseRecord:
        return ReleaseRecord.from_json(self._json("GET", f"/api/v1/releases/{_quote(release_id)}"))

    def add_device(
        self, device_id: str, public_key_pem: str, hardware_class: str, channel: str
    ) -> dict[str, Any]:
        body = {
            "id": device_id,
            "public_key_pem": public_key_pem,
            "hardware_class": hardware_class,
            "channel": channel,
        }
        return _expect_object(self._json("POST", "/api/v1/devices", body), "the device")

    def list_devices(self) -> list[dict[str, Any]]:
        items = _expect_list(self._json("GET", "/api/v1/devices"), "devices")
        return [_expect_object(item, "a device") for item in items]

    def fleet(self, family: str, silent_hours: int = 24) -> dict[str, Any]:
        """The fleet view of ``family`` (``GET /api/v1/fleet``): ``devices`` (each with its
        last telemetry ``report`` or None) and a ``summary`` (versions served, devices
        whose last cycle failed or was refused, devices silent for ``silent_hours``)."""
        query = urllib.parse.urlencode({"family": family, "silent_hours": silent_hours})
        obj = _expect_object(self._json("GET", f"/api/v1/fleet?{query}"), "the fleet")
        _expect_list(obj, "devices")
        _expect_object(obj.get("summary"), "the fleet summary")
        return obj

    def fetch_tuf_metadata(self, name: str) -> bytes | None:
        """A published TUF metadata file (``timestamp.json``, ``3.detector.json``), or None
        if the server has no such file. Unauthenticated, like the devices' fetches."""
        if "/" in name or name.startswith(".") or not name.endswith(".json"):
            raise ClientError(f"not a TUF metadata file name: {name[:80]!r}")
        status, body = self._request(
            "GET", f"/tuf/metadata/{_quote(name)}", auth=False, limit=MAX_METADATA_RESPONSE
        )
        if status == 404:
            return None
        self._decode(status, body, parse=False)
        return body

    # -- transport -------------------------------------------------------------

    def _json(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        status, raw = self._request(
            method, path, payload=payload, auth=auth, limit=self._max_response
        )
        return self._decode(status, raw)

    def _decode(self, status: int, body: bytes, *, parse: bool = True) -> Any:
        if 200 <= status < 300:
            if not parse:
                return None
            try:
                return json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ClientError(f"the server's answer ({status}) is not JSON") from exc
        code, message = None, f"HTTP {status}"
        try:
            error = json.loads(body)["error"]
            if isinstance(error.get("code"), str):
                code = _sanitize(error["code"])[:64]
            if isinstance(error.get("message"), str):
                message = _sanitize(error["message"])
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
            pass
        raise ClientError(message, status=status, code=code)

    def _connection(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _request(
        self,
        method: str,
        path: str,
        *,
        payload: bytes | None = None,
        upload: tuple[Any, int] | None = None,
        content_type: str = "application/json",
        auth: bool = True,
        limit: int,
    ) -> tuple[int, bytes]:
        url = self._prefix + path
        headers = {"Accept": "application/json", "User-Agent": "edgeseal-release"}
        if auth:
            if self._token is None:
                raise ClientError("no API token: set EDGESEAL_TOKEN or give --token-file")
            headers["Authorization"] = f"Bearer {self._token}"
        if payload is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(len(payload))
        elif upload is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(upload[1])
        elif method in ("POST", "PUT"):
            headers["Content-Length"] = "0"
        conn = self._connection()
        try:
            try:
                conn.putrequest(method, url, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders(payload)
                if upload is not None:
                    _send_file(conn, *upload)
            except (BrokenPipeError, ConnectionResetError):
                # The server may have refused early (413, 401) and closed: its answer says why.
                logger.debug("%s %s: connection closed while sending", method, path)
            response = conn.getresponse()
            body = _read_bounded(response, limit)
            logger.debug("%s %s -> %d (%d bytes)", method, path, response.status, len(body))
            return response.status, body
        except TimeoutError as exc:
            raise ClientError(f"{self.base_url} did not answer within {self._timeout:g} s") from exc
        except ssl.SSLError as exc:
            raise ClientError(f"TLS with {self.base_url} failed: {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"cannot talk to {self.base_url}: {exc}") from exc
        finally:
            conn.close()


def _send_file(conn: http.client.HTTPConnection, handle: Any, size: int) -> None:
    sent = 0
    while sent < size:
        block = handle.read(min(UPLOAD_BLOCK, size - sent))
        if not block:
            raise ClientError("the sealed model shrank while it was being uploaded")
        conn.send(block)
        sent += len(block)


def _read_bounded(response: http.client.HTTPResponse, limit: int) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(f"the server's answer ({declared} bytes) exceeds the {limit}-byte limit")
    body = response.read(limit + 1)
    if len(body) > limit:
        raise ClientError(f"the server's answer exceeds the {limit}-byte limit")
    return body


def _quote(segment: str) -> str:
    if not isinstance(segment, str) or not 1 <= len(segment) <= 256:
        raise ClientError("release id must be a non-empty string of at most 256 characters")
    return urllib.parse.quote(segment, safe="")
