"""HPKE envelopes opened inside a real TPM (swtpm): the device key never leaves it."""

from __future__ import annotations

import io
import os

import pytest
from cryptography.hazmat.primitives import hpke as crypto_hpke
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.device_agent.recipient import TPMRecipient
from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.errors import PolicyCheckError
from edgeseal.hardware.policy import sign_pcr_policy
from edgeseal.hardware.swtpm import SwtpmProcess
from edgeseal.sdk.envelope import envelope_info, open_envelope, seal_envelope
from edgeseal.sdk.errors import EnvelopeError
from edgeseal.sdk.hazmat import hpke
from edgeseal.sdk.sealed import seal_model

pytestmark = pytest.mark.swtpm


def _sealed_header(family: str = "demo") -> tuple[object, object]:
    info = seal_model(
        io.BytesIO(os.urandom(1000)), io.BytesIO(), family=family, version=1, hardware=["emulated"]
    )
    return info.header, info.content_key


def test_cryptography_hpke_opened_by_tpm_zgen(swtpm: SwtpmProcess) -> None:
    """Raw RFC 9180 interop: cryptography seals, the TPM's ECDH_ZGen opens."""
    with open_backend(swtpm.tcti) as backend:
        public = backend.create_device_key(None)
        suite = crypto_hpke.Suite(
            crypto_hpke.KEM.P256, crypto_hpke.KDF.HKDF_SHA256, crypto_hpke.AEAD.AES_256_GCM
        )
        for message, info in [(b"k" * 32, b"edgeseal test"), (b"", b""), (os.urandom(200), b"i")]:
            sealed = suite.encrypt(message, public, info)
            opened = hpke.single_shot_open(
                sealed,
                public,
                TPMRecipient(backend, None).ecdh,
                info=info,
                aead_id=hpke.AEAD_AES_256_GCM,
            )
            assert opened == message


def test_envelope_opens_in_tpm_only_for_its_model(swtpm: SwtpmProcess) -> None:
    header, key = _sealed_header()
    other_header, _ = _sealed_header("other")
    with open_backend(swtpm.tcti) as backend:
        envelope = seal_envelope(key, backend.create_device_key(None), header)  # type: ignore[arg-type]
        recipient = TPMRecipient(backend, None)
        assert open_envelope(envelope, recipient, header) == key  # type: ignore[arg-type]
        with pytest.raises(EnvelopeError):
            open_envelope(envelope, recipient, other_header)  # type: ignore[arg-type]
        assert envelope_info(header) != envelope_info(other_header)  # type: ignore[arg-type]


def test_envelope_for_another_key_refused(swtpm: SwtpmProcess) -> None:
    header, key = _sealed_header()
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    envelope = seal_envelope(key, stranger, header)  # type: ignore[arg-type]
    with open_backend(swtpm.tcti) as backend:
        backend.create_device_key(None)
        with pytest.raises(EnvelopeError, match="failed authentication"):
            open_envelope(envelope, TPMRecipient(backend, None), header)  # type: ignore[arg-type]


def test_envelope_refused_after_pcr_change_and_allowed_under_new_policy(
    swtpm: SwtpmProcess,
) -> None:
    header, key = _sealed_header()
    authority = ec.generate_private_key(ec.SECP256R1())
    with open_backend(swtpm.tcti) as backend:
        public = backend.create_device_key(authority.public_key())
        envelope = seal_envelope(key, public, header)  # type: ignore[arg-type]
        approved = sign_pcr_policy(authority, backend.pcr_read([0, 9]))
        assert open_envelope(envelope, TPMRecipient(backend, approved), header) == key  # type: ignore[arg-type]
        backend.pcr_extend(9, b"\x42" * 32)
        with pytest.raises(PolicyCheckError, match="PCR 9"):
            open_envelope(envelope, TPMRecipient(backend, approved), header)  # type: ignore[arg-type]
        reapproved = sign_pcr_policy(authority, backend.pcr_read([0, 9]))
        assert open_envelope(envelope, TPMRecipient(backend, reapproved), header) == key  # type: ignore[arg-type]
