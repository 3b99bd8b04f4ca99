"""The device's TPM decryption key as an HPKE recipient.

``edgeseal.sdk.envelope.open_envelope`` needs a recipient that can do the
Diffie-Hellman step; here that step is TPM2_ECDH_ZGen inside the device's TPM
under the signed PCR policy, so the private key never leaves the TPM.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.policy import SignedPCRPolicy


class TPMRecipient:
    """Implements the sdk's ``Recipient`` protocol with a :class:`KeyBackend`."""

    def __init__(self, backend: KeyBackend, approved: SignedPCRPolicy | None) -> None:
        self._backend = backend
        self._approved = approved

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._backend.device_key_public()

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        return self._backend.ecdh_zgen(peer, approved=self._approved)
