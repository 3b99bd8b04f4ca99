"""A simulated device and its trust bundle, for the attestation checker and ``edgeseal attest``.

:class:`SimulatedDevice` plays the agent's side of the serial console contract
(docs/dev/attestation-contracts.md): a cryptography P-256 key plays the AK,
its TPMT_PUBLIC and every quote's TPMS_ATTEST are marshaled by tpm2-pytss
(tpm2-tss's own MU library, so the bytes are what a TPM produces and the sdk
parsers are checked against an independent implementation), and the quote is
qualified with ``attest_binding(nonce, status)`` exactly as the agent does.
Tests change one thing (a PCR, the nonce, the signer) and assert the checker
names it. A device may carry a signed PCR policy (boot states approved after
enrollment); it is signed with the hardware layer's own ``sign_pcr_policy``, so
the sdk's independent reader is checked against the writer the agent uses.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from components import require_module
from edgeseal.hardware.policy import BANK_SHA256, PCRValues, sign_pcr_policy
from edgeseal.sdk.console_wire import attest_binding, encode_pcr_policy
from edgeseal.sdk.trust_bundle import format_time

NOW = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
BASELINE_PCRS = (0, 1, 2, 3, 4, 7)
FAMILY = "detector"
MODEL_DIGEST = hashlib.sha256(b"plaintext model v3").hexdigest()


def pcr_value(index: int, boot: str = "good") -> bytes:
    return hashlib.sha256(f"{boot} boot pcr {index}".encode()).digest()


def baseline() -> dict[int, bytes]:
    return {i: pcr_value(i) for i in BASELINE_PCRS}


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signed_policy(authority: ec.EllipticCurvePrivateKey, values: dict[int, bytes]) -> bytes:
    """``SignedPCRPolicy.to_bytes()`` of ``values`` signed by ``authority`` (hardware's writer)."""
    return sign_pcr_policy(authority, PCRValues(BANK_SHA256, values)).to_bytes()


def ak_public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The contract's AK (ECC P-256, restricted signing, ECDSA/SHA-256), marshaled by tpm2-pytss."""
    require_module("tpm2_pytss", "tpm2-pytss")
    from tpm2_pytss.constants import TPMA_OBJECT as A
    from tpm2_pytss.types import TPM2B_PUBLIC

    attributes = (
        A.FIXEDTPM
        | A.FIXEDPARENT
        | A.SENSITIVEDATAORIGIN
        | A.USERWITHAUTH
        | A.RESTRICTED
        | A.SIGN_ENCRYPT
        | A.NODA
    )
    public = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attributes).publicArea
    numbers = key.public_numbers()
    public.unique.ecc.x = numbers.x.to_bytes(32, "big")
    public.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return bytes(public.marshal())


def quote_attest(extra_data: bytes, pcrs: dict[int, bytes], *, reset_count: int = 4) -> bytes:
    """A TPMS_ATTEST of a quote over ``pcrs`` (SHA-256 bank), marshaled by tpm2-pytss."""
    require_module("tpm2_pytss", "tpm2-pytss")
    from tpm2_pytss.constants import TPM2_GENERATED, TPM2_ST
    from tpm2_pytss.types import (
        TPM2B_DATA,
        TPM2B_DIGEST,
        TPM2B_NAME,
        TPML_PCR_SELECTION,
        TPMS_ATTEST,
        TPMS_CLOCK_INFO,
    )

    attest = TPMS_ATTEST()
    attest.magic = TPM2_GENERATED.VALUE
    attest.type = TPM2_ST.ATTEST_QUOTE
    attest.qualifiedSigner = TPM2B_NAME(b"\x00\x0b" + bytes(32))
    attest.extraData = TPM2B_DATA(extra_data)
    attest.clockInfo = TPMS_CLOCK_INFO(clock=987654, resetCount=reset_count, restartCount=0, safe=1)
    attest.firmwareVersion = 0x0001_0002_0003_0004
    selection = "sha256:" + ",".join(str(i) for i in sorted(pcrs))
    attest.attested.quote.pcrSelect = TPML_PCR_SELECTION.parse(selection)
    digest = hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()
    attest.attested.quote.pcrDigest = TPM2B_DIGEST(digest)
    return bytes(attest.marshal())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class SimulatedDevice:
    """The agent's side: a TPM (the AK, PCRs) and the status it reports."""

    device_id: str = "cam-0042"
    hardware_class: str = "rpi5-tpm"
    ak: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    pcrs: dict[int, bytes] = field(default_factory=baseline)
    model: dict[str, Any] | None = field(
        default_factory=lambda: {
            "family": FAMILY,
            "version": 3,
            "digest_alg": "sha256",
            "plaintext_digest": MODEL_DIGEST,
            "slot": "a",
        }
    )
    #: Why no model is served (the agent's start error), or None.
    model_error: str | None = None
    #: False plays an agent from before ``model_error``: the key is not sent at all.
    sends_model_error: bool = True
    floor: int | None = 2
    #: The key the device's PCR policies are signed with (its enrolled policy authority).
    policy_authority: ec.EllipticCurvePrivateKey | None = None
    #: The agent's current SignedPCRPolicy bytes, or None.
    pcr_policy: bytes | None = None
    #: False plays an agent from before ``pcr_policy``: the key is not sent at all.
    sends_pcr_policy: bool = True

    def approve_boot(self, authority: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """Sign the device's current PCRs (an approved update) and make it its policy."""
        signer = authority or self.policy_authority
        assert signer is not None, "the device has no policy authority"
        self.pcr_policy = signed_policy(signer, self.pcrs)
        return self.pcr_policy

    @property
    def ak_public(self) -> bytes:
        return ak_public_bytes(self.ak.public_key())

    def status(self) -> dict[str, Any]:
        status = {
            "device_id": self.device_id,
            "agent_version": "0.1.0",
            "time": "2025-06-01T11:59:58Z",
            "model": None if self.model is None else dict(self.model),
            "model_error": self.model_error,
            "floor": self.floor,
            "pcr_bank": "sha256",
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "pcr_policy": encode_pcr_policy(self.pcr_policy),
        }
        if not self.sends_model_error:
            del status["model_error"]
        if not self.sends_pcr_policy:
            del status["pcr_policy"]
        return status

    def respond(
        self,
        nonce: bytes,
        *,
        signer: ec.EllipticCurvePrivateKey | None = None,
        quoted_pcrs: dict[int, bytes] | None = None,
        qualifying_data: bytes | None = None,
    ) -> dict[str, Any]:
        """The ATTEST_RESPONSE; the keywords forge one part of it."""
        status = self.status()
        extra = qualifying_data if qualifying_data is not None else attest_binding(nonce, status)
        attest = quote_attest(extra, quoted_pcrs if quoted_pcrs is not None else self.pcrs)
        signature = (signer or self.ak).sign(attest, ec.ECDSA(hashes.SHA256()))
        return {**status, "quote": {"attest": b64(attest), "signature": b64(signature)}}

    def bundle_entry(self, **changes: Any) -> dict[str, Any]:
        entry = {
            "device_id": self.device_id,
            "hardware_class": self.hardware_class,
            "ak_public": b64(self.ak_public),
            "ek_certificate_sha256": hashlib.sha256(
                b"ek cert " + self.device_id.encode()
            ).hexdigest(),
            "pcr_bank": "sha256",
            "pcrs": {str(i): v.hex() for i, v in baseline().items()},
            "revoked": False,
            "pcr_policy_authority": (
                None
                if self.policy_authority is None
                else b64(spki(self.policy_authority.public_key()))
            ),
        }
        entry.update(changes)
        return entry


def release_entry(version: int = 3, **changes: Any) -> dict[str, Any]:
    entry = {
        "family": FAMILY,
        "version": version,
        "digest_alg": "sha256",
        "plaintext_digest": MODEL_DIGEST,
        "yanked": False,
    }
    entry.update(changes)
    return entry


def bundle_payload(
    devices: list[dict[str, Any]],
    releases: list[dict[str, Any]] | None = None,
    *,
    issued: dt.datetime = NOW - dt.timedelta(days=1),
    expires: dt.datetime = NOW + dt.timedelta(days=29),
) -> dict[str, Any]:
    return {
        "type": "edgeseal-trust-bundle",
        "version": 1,
        "issued": format_time(issued),
        "expires": format_time(expires),
        "issuer": "ota.example.com",
        "devices": devices,
        "releases": [release_entry(2), release_entry(3)] if releases is None else releases,
    }


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
