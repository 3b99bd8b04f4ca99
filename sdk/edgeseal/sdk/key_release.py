"""Attested key release: the binding a device's quote carries, and the four JSON bodies.

For a release whose signed metadata says ``key_release = "attested"`` there is
no envelope in the TUF repository; the device asks the OTA server for the
content key with a fresh TPM quote instead (DESIGN.md flow 3, the contract in
docs/dev/attestation-contracts.md, "Attested key release")::

    device  POST /v1/keys/challenge  KeyChallengeRequest  {"device_id", "family", "version"}
    server  200                      KeyChallenge         {"challenge_id", "nonce", "pcrs"}
    device  POST /v1/keys/release    KeyReleaseRequest    {"challenge_id", "pcrs", "quote",
                                                           "pcr_policy"}
    server  200                      KeyReleaseResponse   {"envelope"}

The device quotes the PCRs the challenge names with qualifying data
:func:`key_release_binding` ``(nonce, device_id, family, version)``, so the
quote is fresh (the nonce is single use) and cannot be spent on another
device's or another release's key. The envelope is the HPKE envelope of
:mod:`edgeseal.sdk.envelope`, sealed to the device's TPM decryption key.

Pure: no I/O, nothing here trusts its input. Each body is a frozen dataclass:

* ``Body(...)`` - the constructor validates (bounds, types), so a body built
  by the server or the agent is always one the other side accepts;
* ``body.encode() -> bytes`` - canonical JSON (sorted keys, no spaces): the
  bytes to send; ``body.to_json() -> dict`` - the same as a JSON object;
* ``Body.parse(data: bytes)`` - for bytes off the network: at most
  :data:`MAX_BODY_BYTES`, strict JSON (:mod:`edgeseal.sdk.strict_json`: no
  duplicate keys, floats, NaN or non-UTF-8), then :meth:`from_json`;
* ``Body.from_json(doc: object)`` - for an already strictly parsed document:
  exactly the keys above (a missing or an unknown key is refused), each of
  its type and within its bound.

``parse(body.encode()) == body`` for every valid body. Every refusal is a
:class:`~edgeseal.sdk.errors.FormatError` whose ``field`` names the offending
JSON key (``"quote.attest"``, ``"pcrs.7"``; ``"body"`` for the whole), with a
message that never quotes more than a few characters of the input.

Wire encodings: ``nonce`` 64 lowercase hex characters (:data:`NONCE_SIZE`
bytes); ``pcrs`` in a challenge a list of distinct PCR indices 0..23 (any
order; kept sorted), in a release request an object ``{"<index>": <64
lowercase hex>}`` of SHA-256 bank values with canonical decimal indices;
``quote.attest`` (marshaled TPMS_ATTEST), ``quote.signature`` (DER ECDSA) and
``envelope`` canonical base64 (standard alphabet, padded). A release request's
``pcr_policy`` is the device's current signed PCR policy
(:mod:`edgeseal.sdk.pcr_policy`), canonical base64 of 1 to
:data:`~edgeseal.sdk.pcr_policy.MAX_POLICY_BYTES` bytes, or null; it is always
sent, and a request without it (an older agent) reads as null. It is not part of
the quote's binding: it is signed by the policy authority, so it authenticates
itself.

A server uses it as::

    request = KeyChallengeRequest.parse(raw)         # -> device_id, family, version
    answer = KeyChallenge(challenge_id, secrets.token_bytes(NONCE_SIZE), pcrs).encode()
    ...
    release = KeyReleaseRequest.parse(raw)
    verify_quote(release.attest, release.signature, ak_public,
                 qualifying_data=key_release_binding(nonce, device_id, family, version),
                 pcrs=release.pcrs)                  # edgeseal.sdk.quote
    answer = KeyReleaseResponse(envelope).encode()
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from edgeseal.sdk import strict_json
from edgeseal.sdk.console_wire import canonical_json
from edgeseal.sdk.envelope import MAX_ENVELOPE_SIZE
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.hazmat.format import MAX_MODEL_VERSION, NAME_RULE, is_valid_name
from edgeseal.sdk.pcr_policy import MAX_POLICY_BYTES
from edgeseal.sdk.releases import DEVICE_ID_RULE, is_valid_device_id
from edgeseal.sdk.tpm_wire import MAX_ATTEST_SIZE

__all__ = [
    "BINDING_LABEL",
    "CHALLENGE_ID_RULE",
    "CHALLENGE_PATH",
    "MAX_BODY_BYTES",
    "MAX_SIGNATURE_SIZE",
    "NONCE_SIZE",
    "PCR_COUNT",
    "PCR_SIZE",
    "RELEASE_PATH",
    "KeyChallenge",
    "KeyChallengeRequest",
    "KeyReleaseRequest",
    "KeyReleaseResponse",
    "key_release_binding",
]

CHALLENGE_PATH = "/v1/keys/challenge"
RELEASE_PATH = "/v1/keys/release"
BINDING_LABEL = b"edgeseal-key-release-v1\x00"
#: Largest body of either route, request or answer (the largest real one is ~3 KiB).
MAX_BODY_BYTES = 64 * 1024
#: The server's nonce: 32 random bytes (TPM2B_DATA qualifying data is at most 32).
NONCE_SIZE = 32
#: PCR indices are 0..23 (the PCRs a TCG PC Client TPM implements).
PCR_COUNT = 24
#: A SHA-256 bank's PCR values.
PCR_SIZE = 32
#: DER ECDSA-Sig-Value of two P-256 integers is at most 72 bytes.
MAX_SIGNATURE_SIZE = 72
CHALLENGE_ID_RULE = "1-128 characters of A-Z, a-z, 0-9, '.', '_', ':', '-'"
_CHALLENGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)
_LOWER_HEX = re.compile(r"[0-9a-f]*", re.ASCII)
_PCR_INDEX = re.compile(r"0|[1-9][0-9]?", re.ASCII)


# --- the binding -----------------------------------------------------------------------------


def key_release_binding(nonce: bytes, device_id: str, family: str, version: int) -> bytes:
    """The quote's qualifying data: ``SHA-256(BINDING_LABEL || nonce || canonical_json(
    {"device_id", "family", "version"}))`` (32 bytes).

    FormatError for a nonce that is not :data:`NONCE_SIZE` bytes or an invalid
    device id, family or version (the same rules as the bodies).
    """
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise FormatError(f"a key-release nonce is {NONCE_SIZE} bytes", field="nonce")
    request = KeyChallengeRequest(device_id, family, version)
    return hashlib.sha256(BINDING_LABEL + nonce + canonical_json(request.to_json())).digest()


# --- the bodies ------------------------------------------------------------------------------


class _Body:
    """``encode``/``parse`` of a message body, from its ``to_json``/``from_json``."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, doc: object) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def parse(cls, data: bytes | bytearray) -> Self:
        return cls.from_json(_loads(data))


@dataclass(frozen=True)
class KeyChallengeRequest(_Body):
    """``POST /v1/keys/challenge``: which device asks for which release's key."""

    device_id: str
    family: str
    version: int

    def __post_init__(self) -> None:
        _check_device_id(self.device_id)
        _check_family(self.family)
        _check_version(self.version)

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "family": self.family, "version": self.version}

    @classmethod
    def from_json(cls, doc: object) -> Self:
        obj = _exact(doc, ("device_id", "family", "version"))
        return cls(obj["device_id"], obj["family"], obj["version"])


@dataclass(frozen=True)
class KeyChallenge(_Body):
    """The server's challenge: its id, a fresh nonce and the PCRs to quote (kept sorted)."""

    challenge_id: str
    nonce: bytes
    pcrs: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_challenge_id(self.challenge_id)
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_SIZE:
            raise FormatError(f"nonce must be {NONCE_SIZE} bytes", field="nonce")
        object.__setattr__(self, "pcrs", _pcr_selection(self.pcrs))

    def to_json(self) -> dict[str, Any]:
        return {
            "challenge_id": self.challenge_id,
            "nonce": self.nonce.hex(),
            "pcrs": list(self.pcrs),
        }

    @classmethod
    def from_json(cls, doc: object) -> Self:
        obj = _exact(doc, ("challenge_id", "nonce", "pcrs"))
        _check_challenge_id(obj["challenge_id"])
        nonce = _hex(obj["nonce"], NONCE_SIZE, "nonce")
        pcrs = obj["pcrs"]
        if not isinstance(pcrs, list):
            raise FormatError("pcrs must be a list of PCR indices", field="pcrs")
        return cls(obj["challenge_id"], nonce, tuple(pcrs))


@dataclass(frozen=True)
class KeyReleaseRequest(_Body):
    """``POST /v1/keys/release``: the PCR values read and the quote over them.

    ``pcrs`` maps each quoted index to its SHA-256 bank value (ascending order),
    the form :func:`edgeseal.sdk.quote.verify_quote` takes. ``pcr_policy`` is the
    device's current signed PCR policy bytes, or None when it has none (the
    server checks it with :func:`edgeseal.sdk.pcr_policy.approved_state`).
    """

    challenge_id: str
    pcrs: Mapping[int, bytes]
    attest: bytes
    signature: bytes
    pcr_policy: bytes | None = None

    def __post_init__(self) -> None:
        _check_challenge_id(self.challenge_id)
        if not isinstance(self.pcrs, Mapping):
            raise FormatError("pcrs must map PCR indices to values", field="pcrs")
        values = dict(self.pcrs)
        _pcr_selection(values)
        for index, value in values.items():
            if not isinstance(value, bytes) or len(value) != PCR_SIZE:
                raise FormatError(
                    f"a PCR value is {PCR_SIZE} bytes (sha256)", field=f"pcrs.{index}"
                )
        object.__setattr__(self, "pcrs", dict(sorted(values.items())))
        _check_bytes(self.attest, MAX_ATTEST_SIZE, "quote.attest")
        _check_bytes(self.signature, MAX_SIGNATURE_SIZE, "quote.signature")
        if self.pcr_policy is not None:
            _check_bytes(self.pcr_policy, MAX_POLICY_BYTES, "pcr_policy")

    def to_json(self) -> dict[str, Any]:
        return {
            "challenge_id": self.challenge_id,
            "pcrs": {str(i): value.hex() for i, value in self.pcrs.items()},
            "quote": {"attest": _b64(self.attest), "signature": _b64(self.signature)},
            "pcr_policy": None if self.pcr_policy is None else _b64(self.pcr_policy),
        }

    @classmethod
    def from_json(cls, doc: object) -> Self:
        # pcr_policy is optional: an agent from before signed PCR policies does not send it.
        obj = _exact(doc, ("challenge_id", "pcrs", "quote"), optional=("pcr_policy",))
        _check_challenge_id(obj["challenge_id"])
        raw_pcrs = obj["pcrs"]
        if not isinstance(raw_pcrs, dict):
            raise FormatError('pcrs must be an object {"<index>": <hex>}', field="pcrs")
        if not 1 <= len(raw_pcrs) <= PCR_COUNT:
            raise FormatError(f"pcrs must name 1 to {PCR_COUNT} PCRs", field="pcrs")
        pcrs: dict[int, bytes] = {}
        for key, value in raw_pcrs.items():
            if _PCR_INDEX.fullmatch(key) is None or int(key) >= PCR_COUNT:
                raise FormatError(
                    f"PCR index {key[:8]!r} is not one of 0..{PCR_COUNT - 1}", field="pcrs"
                )
            pcrs[int(key)] = _hex(value, PCR_SIZE, f"pcrs.{key}")
        quote = _exact(obj["quote"], ("attest", "signature"), "quote")
        policy = obj.get("pcr_policy")
        return cls(
            obj["challenge_id"],
            pcrs,
            _unb64(quote["attest"], MAX_ATTEST_SIZE, "quote.attest"),
            _unb64(quote["signature"], MAX_SIGNATURE_SIZE, "quote.signature"),
            None if policy is None else _unb64(policy, MAX_POLICY_BYTES, "pcr_policy"),
        )


@dataclass(frozen=True)
class KeyReleaseResponse(_Body):
    """The server's answer to a release: the content key in an HPKE envelope for the device."""

    envelope: bytes

    def __post_init__(self) -> None:
        _check_bytes(self.envelope, MAX_ENVELOPE_SIZE, "envelope")

    def to_json(self) -> dict[str, Any]:
        return {"envelope": _b64(self.envelope)}

    @classmethod
    def from_json(cls, doc: object) -> Self:
        obj = _exact(doc, ("envelope",))
        return cls(_unb64(obj["envelope"], MAX_ENVELOPE_SIZE, "envelope"))


# --- rules -----------------------------------------------------------------------------------


def _loads(data: bytes | bytearray) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise FormatError("a key-release body must be bytes", field="body")
    if len(data) > MAX_BODY_BYTES:
        raise FormatError(
            f"a key-release body is at most {MAX_BODY_BYTES} bytes, not {len(data)}", field="body"
        )
    try:
        return strict_json.loads(bytes(data))
    except strict_json.StrictJSONError as exc:
        raise FormatError(f"the body is not strict JSON ({exc.rule})", field="body") from None


def _exact(
    doc: object, keys: Iterable[str], where: str = "body", *, optional: Iterable[str] = ()
) -> dict[str, Any]:
    maybe = set(optional)
    wanted = set(keys) | maybe
    if not isinstance(doc, dict):
        raise FormatError(f"the {where} must be a JSON object", field=where)
    missing = sorted(wanted - maybe - doc.keys())
    if missing:
        raise FormatError(f"the {where} lacks {', '.join(missing)}", field=where)
    unknown = sorted(str(k)[:40] for k in doc.keys() - wanted)
    if unknown:
        raise FormatError(f"the {where} has unknown key(s) {', '.join(unknown)}", field=where)
    return doc


def _check_device_id(value: object) -> None:
    if not is_valid_device_id(value):
        raise FormatError(f"device_id is invalid: use {DEVICE_ID_RULE}", field="device_id")


def _check_family(value: object) -> None:
    if not is_valid_name(value):
        raise FormatError(f"family is invalid: use {NAME_RULE}", field="family")


def _check_version(value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_MODEL_VERSION:
        raise FormatError(
            f"version must be an integer from 0 to {MAX_MODEL_VERSION}", field="version"
        )


def _check_challenge_id(value: object) -> None:
    if not isinstance(value, str) or _CHALLENGE_ID.fullmatch(value) is None:
        raise FormatError(f"challenge_id is invalid: use {CHALLENGE_ID_RULE}", field="challenge_id")


def _pcr_selection(indices: Iterable[object]) -> tuple[int, ...]:
    """Distinct PCR indices 0..23, 1 to 24 of them, sorted."""
    items = list(indices)
    if (
        not 1 <= len(items) <= PCR_COUNT
        or not all(type(i) is int and 0 <= i < PCR_COUNT for i in items)
        or len(set(items)) != len(items)
    ):
        raise FormatError(
            f"pcrs must be 1 to {PCR_COUNT} distinct PCR indices from 0 to {PCR_COUNT - 1}",
            field="pcrs",
        )
    return tuple(sorted(i for i in items if type(i) is int))


def _check_bytes(value: object, limit: int, field: str) -> None:
    if not isinstance(value, bytes) or not 1 <= len(value) <= limit:
        raise FormatError(f"{field} must be 1 to {limit} bytes", field=field)


def _hex(value: object, size: int, field: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size or not _LOWER_HEX.fullmatch(value):
        raise FormatError(f"{field} must be {2 * size} lowercase hex characters", field=field)
    return bytes.fromhex(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, limit: int, field: str) -> bytes:
    """Canonical padded standard base64 of 1..``limit`` bytes (checked before decoding)."""
    if not isinstance(value, str) or not 4 <= len(value) <= 4 * ((limit + 2) // 3):
        raise FormatError(f"{field} must be base64 of 1 to {limit} bytes", field=field)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{field} is not base64", field=field) from None
    if _b64(data) != value:
        raise FormatError(f"{field} is not canonical base64", field=field)
    _check_bytes(data, limit, field)
    return data
