"""The sealed-secret blob both key backends return from ``seal()``.

A blob says how the secret is bound (``auth``: only to this TPM; ``pcr``: to
the literal values of some PCRs; ``authorize``: to PCR policies signed by an
authority) and carries backend-specific parts: TPM2B_PUBLIC and TPM2B_PRIVATE
for the TPM backend, nonce and ciphertext for the software backend. The
recorded PCR values and authority are what the TPM enforces (through the
object's authPolicy); the backends also use them to say *which* PCR changed
when the TPM refuses.

Versioned JSON, bounded, parsed strictly: a blob is read from disk, where it
may be truncated or tampered with.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.hardware.errors import PolicyFormatError
from edgeseal.hardware.policy import BANK_SHA256, PCRValues

BLOB_FORMAT = "edgeseal-sealed-secret"
BLOB_VERSION = 1
MAX_BLOB_BYTES = 8 * 1024
# TPM2B_SENSITIVE_DATA holds at most MAX_SYM_DATA (128) bytes (Part 2, 11.1.14).
MAX_SECRET_BYTES = 128

BINDINGS = ("auth", "pcr", "authorize")
BACKENDS = ("tpm", "software")


@dataclass(frozen=True)
class SealedBlob:
    backend: str
    binding: str
    pcrs: PCRValues | None
    authority: ec.EllipticCurvePublicKey | None = field(hash=False)
    parts: Mapping[str, bytes] = field(hash=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PolicyFormatError(f"unknown sealed-secret backend {self.backend!r}")
        if self.binding not in BINDINGS:
            raise PolicyFormatError(f"unknown sealed-secret binding {self.binding!r}")
        if (self.binding == "pcr") != (self.pcrs is not None):
            raise PolicyFormatError("a 'pcr' binding, and only it, records PCR values")
        if (self.binding == "authorize") != (self.authority is not None):
            raise PolicyFormatError("an 'authorize' binding, and only it, records an authority")
        object.__setattr__(self, "parts", MappingProxyType(dict(self.parts)))

    def header(self) -> bytes:
        """Canonical bytes of everything but the parts (the software backend's AEAD AAD)."""
        return _dumps(self._header_doc())

    def _header_doc(self) -> dict[str, Any]:
        return {
            "format": BLOB_FORMAT,
            "version": BLOB_VERSION,
            "backend": self.backend,
            "binding": self.binding,
            "pcrs": (
                None
                if self.pcrs is None
                else {str(i): d.hex() for i, d in self.pcrs.digests.items()}
            ),
            "authority": (
                None
                if self.authority is None
                else _b64e(
                    self.authority.public_bytes(
                        serialization.Encoding.DER,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                )
            ),
        }

    def to_bytes(self) -> bytes:
        doc = self._header_doc()
        doc["parts"] = {name: _b64e(value) for name, value in sorted(self.parts.items())}
        return _dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: str, part_names: tuple[str, ...]) -> SealedBlob:
        """Parse a blob that ``backend`` sealed; raise PolicyFormatError saying what is wrong."""
        if len(data) > MAX_BLOB_BYTES:
            raise PolicyFormatError(
                f"sealed blob is {len(data)} bytes, more than the {MAX_BLOB_BYTES} allowed"
            )
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PolicyFormatError("sealed blob is not valid JSON (truncated?)") from exc
        keys = {"format", "version", "backend", "binding", "pcrs", "authority", "parts"}
        if not isinstance(doc, dict) or set(doc) != keys:
            raise PolicyFormatError("sealed blob does not have the expected fields")
        if doc["format"] != BLOB_FORMAT:
            raise PolicyFormatError(f"not a sealed blob (format {doc['format']!r})")
        if doc["version"] != BLOB_VERSION or isinstance(doc["version"], bool):
            raise PolicyFormatError(
                f"unsupported sealed blob version {doc['version']!r} (supported: {BLOB_VERSION})"
            )
        if doc["backend"] != backend:
            raise PolicyFormatError(
                f"this blob was sealed by the {doc['backend']!r} key backend, not {backend!r}"
            )
        pcrs = None if doc["pcrs"] is None else _pcrs(doc["pcrs"])
        authority = None if doc["authority"] is None else _authority(doc["authority"])
        raw_parts = doc["parts"]
        if not isinstance(raw_parts, dict) or set(raw_parts) != set(part_names):
            raise PolicyFormatError(f"sealed blob parts must be exactly {sorted(part_names)}")
        parts = {name: _b64d(value, name) for name, value in raw_parts.items()}
        return cls(
            backend=backend,
            binding=doc["binding"] if isinstance(doc["binding"], str) else "",
            pcrs=pcrs,
            authority=authority,
            parts=parts,
        )


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64d(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise PolicyFormatError(f"sealed blob part {name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise PolicyFormatError(f"sealed blob part {name} is not valid base64") from exc


def _pcrs(value: Any) -> PCRValues:
    if not isinstance(value, dict):
        raise PolicyFormatError("sealed blob pcrs must be an object")
    if not all(k.isdigit() and isinstance(v, str) for k, v in value.items()):
        raise PolicyFormatError("sealed blob pcrs must map decimal indices to hex digests")
    try:
        return PCRValues(BANK_SHA256, {int(k): bytes.fromhex(v) for k, v in value.items()})
    except ValueError as exc:
        raise PolicyFormatError(f"sealed blob pcrs are malformed: {exc}") from exc


def _authority(value: Any) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(_b64d(value, "authority"))
    except ValueError as exc:
        raise PolicyFormatError("sealed blob authority is not a public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PolicyFormatError("sealed blob authority must be an ECC P-256 key")
    return key
