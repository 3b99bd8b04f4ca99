"""Open a sealed model on this device: unwrap in the TPM, decrypt into memory.

The order matters and is the whole point of this module:

1. parse the sealed model's header (bounded, not yet trusted);
2. open the envelope with TPM2_ECDH_ZGen under the device's signed PCR policy
   (a changed boot chain stops here, with the PCRs named);
3. authenticate and decrypt the model into memory (any bit flipped anywhere
   stops here, with one opaque error);
4. check that the now-authenticated header is meant for this hardware class.

The plaintext is returned as ``bytes`` for the TFLite interpreter; it is never
written anywhere.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from edgeseal.device_agent.errors import WrongHardwareError
from edgeseal.device_agent.recipient import TPMRecipient
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.sdk.envelope import open_envelope
from edgeseal.sdk.sealed import OpenedModel, inspect_sealed_model, open_sealed_model

log = logging.getLogger(__name__)


def open_on_device(
    sealed: BinaryIO,
    envelope: bytes,
    *,
    backend: KeyBackend,
    approved: SignedPCRPolicy | None,
    hardware_class: str,
) -> OpenedModel:
    """Return the authenticated plaintext model, or raise saying what was refused."""
    header = inspect_sealed_model(sealed)
    content_key = open_envelope(envelope, TPMRecipient(backend, approved), header)
    sealed.seek(0)
    opened = open_sealed_model(sealed, content_key=content_key)
    if hardware_class not in opened.header.hardware:
        raise WrongHardwareError(
            f"model {opened.header.family} v{opened.header.version} is for hardware "
            f"{', '.join(opened.header.hardware)}, not for this device's {hardware_class!r}"
        )
    log.info(
        "opened %s v%d (%d bytes) in memory",
        opened.header.family,
        opened.header.version,
        opened.header.plaintext_size,
    )
    return opened
