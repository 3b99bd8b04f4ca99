"""Framing of the serial console a field technician attests a device over.

One frame, in both directions (docs/dev/attestation-contracts.md)::

    2 bytes   magic b"ES"
    1 byte    version (1)
    1 byte    type: ATTEST_REQUEST 0x01, ATTEST_RESPONSE 0x02, ERROR 0x03
    4 bytes   big-endian payload length N (0 <= N <= 64 KiB)
    N bytes   payload: a UTF-8 JSON object
    4 bytes   big-endian CRC-32 of everything before it

A serial line loses, repeats and invents bytes (boot logs, a login prompt, line
noise, a wrong baud rate), so :class:`FrameDecoder` treats the stream as
untrusted: it skips bytes until the magic, refuses a header before waiting for
the payload it announces (version, length bound), drops frames with a bad
version, length or CRC and counts them in :attr:`FrameDecoder.dropped` (a magic
followed by text, as in ``YES``, is console noise: skipped, not counted), and
never holds more than one maximal frame (:data:`MAX_FRAME_BYTES`). After a drop
it resynchronizes on the next magic *inside* the dropped bytes, so a frame that
a bogus header appeared to swallow is still found. The CRC only detects line
errors; authenticity comes from the TPM quote in the response
(:mod:`edgeseal.sdk.attest_check`).

Payloads are JSON text, which cannot contain the control bytes of a frame
header (the version byte 0x01 is not allowed raw in JSON), so no payload can
hide a complete frame: the decoder may give up on an announced frame as soon
as a complete valid frame starts inside it, and does (a garbage ``ES`` header
announcing 64 KiB would otherwise stall the line until 64 KiB arrived).

:func:`attest_binding` is what the agent's quote is qualified with: it binds
the technician's nonce to the status the agent reports, so neither can be
replayed nor changed without the quote failing. That status includes the
response's ``pcr_policy`` (:func:`encode_pcr_policy`): the agent's current
signed PCR policy, which lets a boot state approved after enrollment pass
(:mod:`edgeseal.sdk.pcr_policy`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from edgeseal.sdk import strict_json
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.pcr_policy import MAX_POLICY_BYTES

__all__ = [
    "ATTEST_REQUEST",
    "ATTEST_RESPONSE",
    "BINDING_LABEL",
    "ERROR",
    "FRAME_TYPES",
    "MAGIC",
    "MAX_ERROR_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_MODEL_ERROR_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_PCR_POLICY_BYTES",
    "NONCE_SIZE",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "attest_binding",
    "canonical_json",
    "decode_pcr_policy",
    "encode_attest_request",
    "encode_error",
    "encode_frame",
    "encode_pcr_policy",
    "is_model_error",
    "model_error_text",
    "parse_attest_request",
    "parse_error",
    "parse_json_payload",
]

MAGIC = b"ES"
VERSION = 1
ATTEST_REQUEST = 0x01
ATTEST_RESPONSE = 0x02
ERROR = 0x03
FRAME_TYPES = {ATTEST_REQUEST: "ATTEST_REQUEST", ATTEST_RESPONSE: "ATTEST_RESPONSE", ERROR: "ERROR"}
#: Largest payload a frame may carry (64 KiB).
MAX_PAYLOAD_BYTES = 64 * 1024
_HEADER = struct.Struct(">2sBBI")
_CRC = struct.Struct(">I")
HEADER_BYTES = _HEADER.size
#: Largest frame on the wire: header, maximal payload, CRC.
MAX_FRAME_BYTES = _HEADER.size + MAX_PAYLOAD_BYTES + _CRC.size
#: The technician's nonce: 32 random bytes, 64 hex characters in the request.
NONCE_SIZE = 32
#: An ERROR frame's message is cut to this many characters when read.
MAX_ERROR_CHARS = 512
#: An ATTEST_RESPONSE's ``model_error`` (why no model is served) is 1 to this many printable
#: characters.
MAX_MODEL_ERROR_CHARS = 512
#: An ATTEST_RESPONSE's ``pcr_policy`` is base64 of 1 to this many bytes (16 KiB decoded).
MAX_PCR_POLICY_BYTES = MAX_POLICY_BYTES
BINDING_LABEL = b"edgeseal-attest-v1\x00"

_NEED_MORE = 0
_BAD = 1
_OK = 2


@dataclass(frozen=True)
class Frame:
    """A decoded frame whose CRC checked out; ``type`` may be one this version does not know."""

    type: int
    payload: bytes

    @property
    def type_name(self) -> str:
        return FRAME_TYPES.get(self.type, f"unknown type 0x{self.type:02x}")


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    """The bytes of one frame; :class:`FormatError` for a type or payload out of bounds."""
    if type(frame_type) is not int or not 0 <= frame_type <= 0xFF:
        raise FormatError("a frame type is one byte", field="type")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise FormatError("a frame payload must be bytes", field="payload")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise FormatError(
            f"a frame payload of {len(payload)} bytes is over the limit of {MAX_PAYLOAD_BYTES}",
            field="payload",
        )
    body = _HEADER.pack(MAGIC, VERSION, frame_type, len(payload)) + bytes(payload)
    return body + _CRC.pack(zlib.crc32(body))


class FrameDecoder:
    """Turns a byte stream into frames; bounded, resynchronizing, never raising.

    ``feed(data)`` returns the frames completed by ``data`` (possibly none).
    ``dropped`` counts frames refused for a bad version, an over-long length or
    a bad CRC; ``skipped`` counts bytes that were not part of any frame.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._probe = 0  # positions of _buf below this were already found not to start a frame
        self.dropped = 0
        self.skipped = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (at most :data:`MAX_FRAME_BYTES`)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        frames: list[Frame] = []
        view = memoryview(data).cast("B")
        position = 0
        while position < len(view):
            room = MAX_FRAME_BYTES - len(self._buf)
            self._buf += view[position : position + room]
            position += room
            frames.extend(self._drain())
        return frames

    def _drain(self) -> list[Frame]:
        frames: list[Frame] = []
        while True:
            start = self._buf.find(MAGIC)
            if start < 0:
                # Keep a trailing first byte of the magic: its second byte may come next.
                keep = 1 if self._buf[-1:] == MAGIC[:1] else 0
                self._discard(len(self._buf) - keep, skipped=True)
                return frames
            if start:
                self._discard(start, skipped=True)
            status, size, frame = self._candidate(0)
            if status == _OK:
                assert frame is not None
                frames.append(frame)
                self._discard(size, skipped=False)
            elif status == _BAD:
                if not _is_text(self._buf[len(MAGIC)]):
                    self.dropped += 1
                self._discard(len(MAGIC), skipped=True)
            else:
                later = self._complete_frame_after_start()
                if later is None:
                    return frames
                self.dropped += 1
                self._discard(later, skipped=True)

    def _candidate(self, at: int) -> tuple[int, int, Frame | None]:
        """Whether a frame starts at ``at``: (_OK, size, frame), (_BAD, 0, None) or _NEED_MORE."""
        header = self._buf[at : at + _HEADER.size]
        if len(header) < _HEADER.size:
            return _NEED_MORE, 0, None
        _magic, version, frame_type, length = _HEADER.unpack(header)
        if version != VERSION or length > MAX_PAYLOAD_BYTES:
            return _BAD, 0, None
        size = _HEADER.size + length + _CRC.size
        if len(self._buf) - at < size:
            return _NEED_MORE, size, None
        end = at + size - _CRC.size
        (crc,) = _CRC.unpack_from(self._buf, end)
        if zlib.crc32(memoryview(self._buf)[at:end]) != crc:
            return _BAD, 0, None
        payload = bytes(self._buf[at + _HEADER.size : end])
        return _OK, size, Frame(frame_type, payload)

    def _complete_frame_after_start(self) -> int | None:
        """The position of a complete valid frame starting inside the incomplete one at 0."""
        at = self._buf.find(MAGIC, max(self._probe, 1))
        while at >= 0:
            status, _size, _frame = self._candidate(at)
            if status == _OK:
                return at
            if status == _NEED_MORE:
                self._probe = at
                return None
            at = self._buf.find(MAGIC, at + 1)
        self._probe = max(1, len(self._buf) - 1)
        return None

    def _discard(self, count: int, *, skipped: bool) -> None:
        if count <= 0:
            return
        del self._buf[:count]
        self._probe = 0
        if skipped:
            self.skipped += count


def _is_text(version: int) -> bool:
    """Whether the byte after a magic is text ("YES", "ESP32"): console noise, not a frame."""
    return version >= 0x20 or version in (0x09, 0x0A, 0x0D)


# --- payloads --------------------------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of a JSON value: sorted keys, no spaces, UTF-8 (the contract's)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def attest_binding(nonce: bytes, status: dict[str, Any]) -> bytes:
    """``SHA-256(BINDING_LABEL || nonce || canonical_json(status))``: the quote's qualifying data.

    ``status`` is the ATTEST_RESPONSE object without its ``"quote"``.
    """
    return hashlib.sha256(BINDING_LABEL + bytes(nonce) + canonical_json(status)).digest()


def parse_json_payload(payload: bytes | bytearray, what: str = "payload") -> Any:
    """A frame payload as JSON: bounded, strict UTF-8, no duplicate keys, no floats or NaN."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise FormatError(f"a {what} is at most {MAX_PAYLOAD_BYTES} bytes", field=what)
    try:
        return strict_json.loads(bytes(payload))
    except strict_json.StrictJSONError as exc:
        raise FormatError(
            f"the {what} is not strict UTF-8 JSON: {_short(exc)}", field=what
        ) from None


def encode_attest_request(nonce: bytes) -> bytes:
    """The ATTEST_REQUEST frame carrying ``nonce`` (:data:`NONCE_SIZE` bytes)."""
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise FormatError(f"a nonce is {NONCE_SIZE} bytes", field="nonce")
    return encode_frame(ATTEST_REQUEST, canonical_json({"nonce": nonce.hex()}))


def parse_attest_request(payload: bytes | bytearray) -> bytes:
    """The nonce of an ATTEST_REQUEST payload ``{"nonce": <64 lowercase hex>}``."""
    body = parse_json_payload(payload, "request")
    if not isinstance(body, dict) or set(body) != {"nonce"}:
        raise FormatError('a request is exactly {"nonce": <64 hex>}', field="request")
    nonce = body["nonce"]
    if (
        not isinstance(nonce, str)
        or len(nonce) != 2 * NONCE_SIZE
        or nonce.strip("0123456789abcdef") != ""
    ):
        raise FormatError(f"nonce must be {2 * NONCE_SIZE} lowercase hex characters", field="nonce")
    return bytes.fromhex(nonce)


def encode_error(message: str) -> bytes:
    """An ERROR frame ``{"error": message}`` (cut to :data:`MAX_ERROR_CHARS` characters)."""
    return encode_frame(ERROR, canonical_json({"error": _printable(message)}))


def parse_error(payload: bytes | bytearray) -> str:
    """The message of an ERROR payload, made printable and cut; never raises."""
    try:
        body = parse_json_payload(payload, "error")
    except FormatError:
        return "(unreadable error message)"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return _printable(body["error"])
    return "(unreadable error message)"


def model_error_text(reason: str) -> str:
    """``reason`` as an ATTEST_RESPONSE ``model_error``: printable, one line, bounded.

    Control and other non-printable characters become spaces, runs of spaces
    one, and text over :data:`MAX_MODEL_ERROR_CHARS` is cut (ending ``...``);
    the result always satisfies :func:`is_model_error`.
    """
    head = str(reason)[: 4 * MAX_MODEL_ERROR_CHARS]  # bounded before any work on it
    cleaned = " ".join(_printable(head, limit=None).split()) or "(no reason given)"
    if len(cleaned) > MAX_MODEL_ERROR_CHARS:
        cleaned = cleaned[: MAX_MODEL_ERROR_CHARS - 3] + "..."
    return cleaned


def is_model_error(value: object) -> bool:
    """Whether ``value`` is a valid non-null ``model_error``: a string of 1 to
    :data:`MAX_MODEL_ERROR_CHARS` printable characters (nothing a terminal would act on)."""
    return (
        isinstance(value, str) and 0 < len(value) <= MAX_MODEL_ERROR_CHARS and value.isprintable()
    )


def encode_pcr_policy(policy: bytes | None) -> str | None:
    """An ATTEST_RESPONSE ``pcr_policy``: canonical base64 of the signed PCR policy bytes, or
    None (JSON null) when the agent has none. FormatError when it is empty or over
    :data:`MAX_PCR_POLICY_BYTES`."""
    if policy is None:
        return None
    if not isinstance(policy, bytes | bytearray) or not 0 < len(policy) <= MAX_PCR_POLICY_BYTES:
        raise FormatError(f"a pcr_policy is 1 to {MAX_PCR_POLICY_BYTES} bytes", field="pcr_policy")
    return base64.b64encode(bytes(policy)).decode("ascii")


def decode_pcr_policy(value: object) -> bytes | None:
    """The bytes of an ATTEST_RESPONSE ``pcr_policy`` (None for null); bounded before decoding.

    Only the encoding is checked here: whether the policy counts is
    :func:`edgeseal.sdk.pcr_policy.approved_state`'s question.
    """
    if value is None:
        return None
    limit = 4 * ((MAX_PCR_POLICY_BYTES + 2) // 3)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise FormatError(
            f"pcr_policy must be null or base64 of 1 to {MAX_PCR_POLICY_BYTES} bytes",
            field="pcr_policy",
        )
    try:
        policy = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise FormatError("pcr_policy is not valid base64", field="pcr_policy") from None
    if not 0 < len(policy) <= MAX_PCR_POLICY_BYTES:
        raise FormatError(
            f"pcr_policy must be null or base64 of 1 to {MAX_PCR_POLICY_BYTES} bytes",
            field="pcr_policy",
        )
    return policy


def _printable(text: str, limit: int | None = MAX_ERROR_CHARS) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in str(text))
    return cleaned if limit is None else cleaned[:limit]


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 80 else text[:77] + "..."
