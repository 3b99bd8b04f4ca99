"""The serial console frame codec: round trips, resynchronization, bounds, and fuzzing.

A serial line carries boot logs, login prompts and line noise next to frames;
the decoder must find every intact frame, drop and count damaged ones, never
hold more than one maximal frame, and never raise on any input.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.sdk.console_wire import (
    ATTEST_REQUEST,
    ATTEST_RESPONSE,
    ERROR,
    MAX_FRAME_BYTES,
    MAX_MODEL_ERROR_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_PCR_POLICY_BYTES,
    Frame,
    FrameDecoder,
    attest_binding,
    canonical_json,
    decode_pcr_policy,
    encode_attest_request,
    encode_error,
    encode_frame,
    encode_pcr_policy,
    is_model_error,
    model_error_text,
    parse_attest_request,
    parse_error,
    parse_json_payload,
)
from edgeseal.sdk.errors import FormatError

RESPONSE = canonical_json({"device_id": "cam-1", "pcrs": {"0": "00" * 32}, "note": "YES, ES"})


def _frame(
    frame_type: int, payload: bytes, *, version: int = 1, length: int | None = None
) -> bytes:
    """A frame built independently of the encoder (the contract's layout, by hand)."""
    size = len(payload) if length is None else length
    body = b"ES" + bytes([version, frame_type]) + struct.pack(">I", size) + payload
    return body + struct.pack(">I", zlib.crc32(body))


# --- encoding --------------------------------------------------------------------------------


def test_encoder_writes_the_contract_layout() -> None:
    assert encode_frame(ATTEST_RESPONSE, RESPONSE) == _frame(ATTEST_RESPONSE, RESPONSE)
    frame = encode_frame(ERROR, b"")
    assert frame[:8] == b"ES\x01\x03\x00\x00\x00\x00"
    assert frame[8:] == struct.pack(">I", zlib.crc32(frame[:8]))


def test_encoder_refuses_payloads_over_64_kib_and_bad_types() -> None:
    assert len(encode_frame(ATTEST_RESPONSE, b"x" * MAX_PAYLOAD_BYTES)) == MAX_FRAME_BYTES
    with pytest.raises(FormatError, match="over the limit"):
        encode_frame(ATTEST_RESPONSE, b"x" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(FormatError, match="one byte"):
        encode_frame(256, b"")


# --- decoding --------------------------------------------------------------------------------


def test_round_trip_of_every_type() -> None:
    decoder = FrameDecoder()
    stream = b"".join(encode_frame(t, RESPONSE) for t in (ATTEST_REQUEST, ATTEST_RESPONSE, ERROR))
    frames = decoder.feed(stream)
    assert frames == [Frame(t, RESPONSE) for t in (ATTEST_REQUEST, ATTEST_RESPONSE, ERROR)]
    assert (decoder.dropped, decoder.skipped, decoder.buffered) == (0, 0, 0)


def test_a_frame_split_at_every_byte_boundary_is_decoded_once() -> None:
    frame = encode_frame(ATTEST_RESPONSE, RESPONSE)
    for cut in range(len(frame) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(frame[:cut]) + decoder.feed(frame[cut:])
        assert frames == [Frame(ATTEST_RESPONSE, RESPONSE)], cut
        assert decoder.dropped == 0


def test_byte_by_byte_with_boot_log_noise_in_between() -> None:
    noise = b"U-Boot 2024.01\r\nStarting kernel ...\r\nlogin: ESP EEE\x00\xff"
    stream = noise + encode_frame(ATTEST_RESPONSE, RESPONSE) + noise + encode_frame(ERROR, b"{}")
    decoder = FrameDecoder()
    frames = [f for byte in stream for f in decoder.feed(bytes([byte]))]
    assert frames == [Frame(ATTEST_RESPONSE, RESPONSE), Frame(ERROR, b"{}")]
    assert decoder.skipped == 2 * len(noise)
    assert decoder.dropped == 0


def test_a_bad_crc_is_dropped_and_counted_and_the_next_frame_found() -> None:
    damaged = bytearray(encode_frame(ATTEST_RESPONSE, RESPONSE))
    damaged[20] ^= 0x01
    decoder = FrameDecoder()
    frames = decoder.feed(bytes(damaged) + encode_frame(ERROR, b"{}"))
    assert frames == [Frame(ERROR, b"{}")]
    assert decoder.dropped == 1


def test_an_unknown_version_is_dropped_and_counted() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(_frame(ATTEST_RESPONSE, RESPONSE, version=2) + _frame(ERROR, b"{}"))
    assert frames == [Frame(ERROR, b"{}")]
    assert decoder.dropped == 1


def test_an_over_long_length_is_refused_without_waiting_for_it() -> None:
    decoder = FrameDecoder()
    bogus = b"ES\x01\x02" + struct.pack(">I", MAX_PAYLOAD_BYTES + 1)
    assert decoder.feed(bogus) == []
    assert decoder.dropped == 1
    assert decoder.feed(encode_frame(ERROR, b"{}")) == [Frame(ERROR, b"{}")]


def test_a_garbage_header_announcing_64_kib_does_not_swallow_the_real_frame() -> None:
    """Line noise that looks like a header must not stall the line until 64 KiB arrive."""
    decoder = FrameDecoder()
    bogus = b"ES\x01\x02" + struct.pack(">I", MAX_PAYLOAD_BYTES) + b"noise"
    frames = decoder.feed(bogus) + decoder.feed(encode_frame(ATTEST_RESPONSE, RESPONSE))
    assert frames == [Frame(ATTEST_RESPONSE, RESPONSE)]
    assert decoder.dropped == 1
    assert decoder.buffered == 0


def test_unknown_frame_types_are_returned_for_the_caller_to_ignore() -> None:
    frames = FrameDecoder().feed(encode_frame(0x7F, b"{}"))
    assert frames == [Frame(0x7F, b"{}")]
    assert frames[0].type_name == "unknown type 0x7f"


def test_the_buffer_never_exceeds_one_maximal_frame() -> None:
    decoder = FrameDecoder()
    # A header announcing a maximal frame, then endless bytes without a magic.
    decoder.feed(b"ES\x01\x02" + struct.pack(">I", MAX_PAYLOAD_BYTES))
    for _ in range(5):
        decoder.feed(b"\x00" * 50_000)
        assert decoder.buffered <= MAX_FRAME_BYTES
    assert decoder.dropped == 1  # its CRC failed once complete
    # One feed of megabytes of noise holding frames: all found, buffer bounded.
    frame = encode_frame(ATTEST_RESPONSE, b"x" * MAX_PAYLOAD_BYTES)
    frames = decoder.feed((b"E" * 300_000 + frame) * 3)
    assert frames == [Frame(ATTEST_RESPONSE, b"x" * MAX_PAYLOAD_BYTES)] * 3
    assert decoder.buffered <= 1


# --- fuzzing ---------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            assert isinstance(frame, Frame) and len(frame.payload) <= MAX_PAYLOAD_BYTES
        assert decoder.buffered <= MAX_FRAME_BYTES
    assert decoder.dropped >= 0 and decoder.skipped <= sum(map(len, chunks))


_NOISE = st.binary(max_size=64).map(lambda b: b.replace(b"E", b"e"))  # noise without a magic


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3]), st.binary(max_size=200), _NOISE),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_frames_survive_noise_and_any_chunking(
    items: list[tuple[int, bytes, bytes]], data: st.DataObject
) -> None:
    # Payloads here are arbitrary bytes (not JSON), so keep them free of "ES" to keep
    # the decoder's one documented assumption: no complete frame hides inside a payload.
    items = [(t, p.replace(b"ES", b"es"), n) for t, p, n in items]
    stream = b"".join(noise + encode_frame(t, p) for t, p, noise in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    frames = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += decoder.feed(stream[start:end])
    assert frames == [Frame(t, p) for t, p, _ in items]
    assert decoder.dropped == 0
    assert decoder.skipped == sum(len(n) for _, _, n in items)


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=120), st.integers(0, 10_000))
def test_a_flipped_bit_is_never_delivered(payload: bytes, position: int) -> None:
    frame = bytearray(encode_frame(ATTEST_RESPONSE, payload))
    index = position % len(frame)
    frame[index] ^= 1 << (position % 8)
    frames = FrameDecoder().feed(bytes(frame))
    assert Frame(ATTEST_RESPONSE, payload) not in frames
    assert all(f.payload != payload for f in frames)


# --- payloads and the binding ----------------------------------------------------------------


def test_canonical_json_is_the_contract_form() -> None:
    value = {"b": [1, None, True], "a": "é", "c": {"z": 0, "y": "x"}}
    assert canonical_json(value) == '{"a":"é","b":[1,null,true],"c":{"y":"x","z":0}}'.encode()
    assert canonical_json(value) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_attest_binding_known_answer() -> None:
    nonce = bytes(range(32))
    status = {"device_id": "cam-1", "model": None, "pcrs": {"0": "ab" * 32}}
    expected = hashlib.sha256(
        b"edgeseal-attest-v1\x00"
        + nonce
        + b'{"device_id":"cam-1","model":null,"pcrs":{"0":"'
        + b"ab" * 32
        + b'"}}'
    ).digest()
    assert attest_binding(nonce, status) == expected
    assert attest_binding(bytes(32), status) != expected
    assert attest_binding(nonce, {**status, "model": {}}) != expected


def test_attest_binding_covers_the_model_error() -> None:
    nonce = bytes(range(32))
    status = {"device_id": "cam-1", "model": None, "model_error": None}
    locked = {**status, "model_error": "PCR policy check failed: PCR 9 changed"}
    expected = hashlib.sha256(
        b"edgeseal-attest-v1\x00"
        + nonce
        + b'{"device_id":"cam-1","model":null,"model_error":"PCR policy check failed: '
        + b'PCR 9 changed"}'
    ).digest()
    assert attest_binding(nonce, locked) == expected
    bindings = {
        attest_binding(nonce, status),
        attest_binding(nonce, locked),
        attest_binding(nonce, {k: v for k, v in status.items() if k != "model_error"}),
    }
    assert len(bindings) == 3  # null, a reason and an absent key are three statuses


def test_attest_binding_covers_the_pcr_policy() -> None:
    nonce = bytes(range(32))
    status = {"device_id": "cam-1", "pcr_policy": None}
    signed = {**status, "pcr_policy": encode_pcr_policy(b'{"format":"x"}')}
    assert signed["pcr_policy"] == "eyJmb3JtYXQiOiJ4In0="
    expected = hashlib.sha256(
        b"edgeseal-attest-v1\x00"
        + nonce
        + b'{"device_id":"cam-1","pcr_policy":"eyJmb3JtYXQiOiJ4In0="}'
    ).digest()
    assert attest_binding(nonce, signed) == expected
    bindings = {
        attest_binding(nonce, status),
        attest_binding(nonce, signed),
        attest_binding(nonce, {"device_id": "cam-1"}),
    }
    assert len(bindings) == 3


def test_pcr_policy_field_round_trip_and_bounds() -> None:
    assert encode_pcr_policy(None) is None and decode_pcr_policy(None) is None
    largest = b"p" * MAX_PCR_POLICY_BYTES
    assert MAX_PCR_POLICY_BYTES == 16 * 1024
    assert decode_pcr_policy(encode_pcr_policy(largest)) == largest
    with pytest.raises(FormatError, match="1 to 16384 bytes"):
        encode_pcr_policy(largest + b"p")
    with pytest.raises(FormatError, match="1 to 16384 bytes"):
        encode_pcr_policy(b"")
    for value in (5, "", "A" * 21_848, "QUFB" * 5462 + "QQ=="):
        with pytest.raises(FormatError, match="base64 of 1 to 16384 bytes") as info:
            decode_pcr_policy(value)
        assert info.value.field == "pcr_policy"
    for value in ("not base64!", "QQ", "é==="):
        with pytest.raises(FormatError, match="pcr_policy is not valid base64"):
            decode_pcr_policy(value)


def test_model_error_text_is_printable_one_line_and_bounded() -> None:
    text = "PCR policy check failed: PCR 9 changed (TPM response code 0x99d)"
    assert model_error_text(text) == text
    assert model_error_text("locked\n  \x1b[2J\tkey\u202e!") == "locked [2J key !"
    assert model_error_text(" \x00\n") == "(no reason given)"
    long = model_error_text("x" * 100_000)
    assert len(long) == MAX_MODEL_ERROR_CHARS and long.endswith("...")
    for text in ("a", "é" * MAX_MODEL_ERROR_CHARS, long):
        assert is_model_error(text), text
    for bad in (None, 5, "", "a\nb", "\x1b", "\u202e", "x" * (MAX_MODEL_ERROR_CHARS + 1)):
        assert not is_model_error(bad), bad


@settings(max_examples=200)
@given(st.text())
def test_model_error_text_always_makes_a_valid_model_error(text: str) -> None:
    assert is_model_error(model_error_text(text))


def test_request_round_trip_and_refusals() -> None:
    nonce = bytes(range(32))
    frames = FrameDecoder().feed(encode_attest_request(nonce))
    assert frames[0].type == ATTEST_REQUEST
    assert frames[0].payload == b'{"nonce":"' + nonce.hex().encode() + b'"}'
    assert parse_attest_request(frames[0].payload) == nonce
    for bad in (
        b'{"nonce":"' + b"AB" * 32 + b'"}',
        b'{"nonce":"' + b"ab" * 31 + b'"}',
        b'{"nonce":"' + b"ab" * 32 + b'","x":1}',
        b'{"nonce":"' + b"ab" * 32 + b'","nonce":"' + b"cd" * 32 + b'"}',
        b"[]",
        b"\xff",
    ):
        with pytest.raises(FormatError):
            parse_attest_request(bad)
    with pytest.raises(FormatError):
        encode_attest_request(b"short")


def test_error_messages_are_printable_and_bounded() -> None:
    payload = FrameDecoder().feed(encode_error("busy\x1b[2J" + "x" * 2000))[0].payload
    message = parse_error(payload)
    assert message.startswith("busy [2J") and len(message) == 512
    assert parse_error(b"not json") == "(unreadable error message)"
    assert parse_error(b'{"error": 5}') == "(unreadable error message)"


def test_json_payloads_are_strict() -> None:
    assert parse_json_payload(b'{"a": 1}') == {"a": 1}
    for bad in (b'{"a": 1.5}', b'{"a": NaN}', b'{"a":1,"a":2}', b"\xff", b"[" * 100_000):
        with pytest.raises(FormatError):
            parse_json_payload(bad)
    with pytest.raises(FormatError, match="at most"):
        parse_json_payload(b" " * (MAX_PAYLOAD_BYTES + 1))
