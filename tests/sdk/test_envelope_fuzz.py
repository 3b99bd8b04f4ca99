"""Property tests of the envelope parser: untrusted bytes raise only EnvelopeError."""

from __future__ import annotations

import io

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.sdk.envelope import ENVELOPE_SIZE, SoftwareRecipient, open_envelope, seal_envelope
from edgeseal.sdk.errors import EnvelopeError
from edgeseal.sdk.sealed import ContentKey, inspect_sealed_model, seal_model

_out = io.BytesIO()
seal_model(io.BytesIO(b"m"), _out, family="f", version=1, hardware=["h"])
_out.seek(0)
HEADER = inspect_sealed_model(_out)
DEVICE = ec.generate_private_key(ec.SECP256R1())
RECIPIENT = SoftwareRecipient(DEVICE)
ENVELOPE = seal_envelope(ContentKey.generate(), DEVICE.public_key(), HEADER)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_envelope_error(data: bytes) -> None:
    try:
        open_envelope(data, RECIPIENT, HEADER)
    except EnvelopeError:
        return
    raise AssertionError("random bytes opened as an envelope")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, ENVELOPE_SIZE - 1), st.integers(1, 255))
def test_any_single_byte_change_is_refused(offset: int, xor: int) -> None:
    tampered = bytearray(ENVELOPE)
    tampered[offset] ^= xor
    try:
        open_envelope(bytes(tampered), RECIPIENT, HEADER)
    except EnvelopeError:
        return
    raise AssertionError("a tampered envelope opened")
