"""Property tests of the TPM wire parsers and the quote verifier: untrusted bytes raise only
FormatError (parsers) or AttestationError (verifier), whatever they are."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from tpm_structures import ak_public_bytes, digest_of, ek_public, pcr_values, quote_attest, sign

from edgeseal.sdk.errors import AttestationError, FormatError
from edgeseal.sdk.quote import verify_quote
from edgeseal.sdk.tpm_wire import parse_attest, parse_public, tpm_name

AK_KEY = ec.generate_private_key(ec.SECP256R1())
AK = ak_public_bytes(AK_KEY.public_key())
EK = bytes(ek_public(rsa.generate_private_key(65537, 2048).public_key()).marshal())
PCRS = pcr_values((0, 1, 7))
NONCE = b"n" * 32
QUOTE = quote_attest(extra_data=NONCE, pcr_digest=digest_of(PCRS))
PARSERS: list[Callable[[bytes], object]] = [parse_public, parse_attest, tpm_name]


def _only_format_errors(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(FormatError):
            parse(data)


@st.composite
def _mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """A valid structure with a few bytes changed, inserted or removed, or truncated."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "size"]))
        offset = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[offset] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[offset:offset] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and data:
            del data[offset : offset + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[offset:]
        elif action == "size" and len(data) > offset + 1:  # a big-endian u16 where a size may be
            data[offset : offset + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_format_error(data: bytes) -> None:
    _only_format_errors(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([AK[:12], EK[:42], QUOTE[:6], b"\x00\x23\x00\x0b", b"\x00\x01\x00\x0b"]),
    st.binary(max_size=400),
)
def test_valid_headers_then_random_bytes_raise_only_format_error(head: bytes, tail: bytes) -> None:
    _only_format_errors(head + tail)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_mutated(AK), _mutated(EK), _mutated(QUOTE)))
def test_mutated_structures_raise_only_format_error(data: bytes) -> None:
    _only_format_errors(data)


@settings(max_examples=200, deadline=None)
@given(_mutated(QUOTE))
def test_signed_mutated_quotes_raise_only_attestation_error(attest: bytes) -> None:
    """Signed by the AK, so every byte reaches the parser and the checks after it."""
    try:
        quote = verify_quote(attest, sign(AK_KEY, attest), AK, qualifying_data=NONCE, pcrs=PCRS)
    except AttestationError:
        return
    # Only a harmless change (clock, firmware version, signer name) can still verify.
    assert quote.extra_data == NONCE
    assert quote.pcr_selection == [(0x000B, (0, 1, 7))]
    assert quote.pcr_digest == digest_of(PCRS)


@settings(max_examples=200, deadline=None)
@given(_mutated(AK), st.binary(max_size=80))
def test_mutated_aks_and_random_signatures_raise_only_attestation_error(
    ak: bytes, signature: bytes
) -> None:
    try:
        verify_quote(QUOTE, signature, ak, qualifying_data=NONCE, pcrs=PCRS)
    except AttestationError:
        return
    raise AssertionError("a quote verified with a random signature")
