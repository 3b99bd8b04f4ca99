"""RFC 9180 known-answer tests for the hazmat HPKE key schedule.

Vectors live in tests/sdk/vectors/hpke_p256_sha256.json; each entry carries a
``_provenance`` field. The RFC entries are Appendix A.3.1 (AES-128-GCM) and
A.5.1 (ChaCha20-Poly1305) of RFC 9180, base mode, DHKEM(P-256, HKDF-SHA256),
HKDF-SHA256: they pin the key schedule that the envelope suite (AES-256-GCM)
shares, since only Nk differs. The AES-256-GCM entry was generated with
pyca/cryptography (no RFC text vector exists for that suite).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from edgeseal.sdk.errors import EnvelopeError
from edgeseal.sdk.hazmat import hpke

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hpke_p256_sha256.json").read_text())
RFC = VECTORS["rfc9180"]


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _private(hex_scalar: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int(hex_scalar, 16), ec.SECP256R1())


def _ids(vector: dict[str, Any]) -> str:
    return f"aead-0x{vector['aead_id']:04x}"


def test_vectors_are_the_suite_under_test() -> None:
    for vector in RFC:
        assert (vector["mode"], vector["kem_id"], vector["kdf_id"]) == (0, 0x10, 0x01)
        assert vector["_provenance"].startswith("RFC 9180 Appendix A.")
    assert {v["aead_id"] for v in RFC} == {hpke.AEAD_AES_128_GCM, hpke.AEAD_CHACHA20_POLY1305}


@pytest.mark.parametrize("vector", RFC, ids=_ids)
def test_key_pairs_match_vector(vector: dict[str, Any]) -> None:
    sk_r, sk_e = _private(vector["skRm"]), _private(vector["skEm"])
    assert hpke.serialize_public_key(sk_r.public_key()) == _h(vector["pkRm"])
    assert hpke.serialize_public_key(sk_e.public_key()) == _h(vector["pkEm"])


@pytest.mark.parametrize("vector", RFC, ids=_ids)
def test_receiver_decap_and_key_schedule(vector: dict[str, Any]) -> None:
    sk_r = _private(vector["skRm"])

    def dh(peer: ec.EllipticCurvePublicKey) -> bytes:
        return sk_r.exchange(ec.ECDH(), peer)

    shared_secret = hpke.decap(_h(vector["enc"]), sk_r.public_key(), dh)
    assert shared_secret == _h(vector["shared_secret"])
    schedule = hpke.key_schedule_base(shared_secret, _h(vector["info"]), vector["aead_id"])
    assert schedule.key_schedule_context == _h(vector["key_schedule_context"])
    assert schedule.secret == _h(vector["secret"])
    assert schedule.key == _h(vector["key"])
    assert schedule.base_nonce == _h(vector["base_nonce"])
    assert schedule.exporter_secret == _h(vector["exporter_secret"])


@pytest.mark.parametrize("vector", RFC, ids=_ids)
def test_sender_encap_reproduces_enc_and_ciphertexts(vector: dict[str, Any]) -> None:
    pk_r = _private(vector["skRm"]).public_key()
    enc, context = hpke.setup_base_s(
        pk_r, _h(vector["info"]), vector["aead_id"], _private(vector["skEm"])
    )
    assert enc == _h(vector["enc"])
    # The vector lists sequence numbers 0, 1, 2 in a row: seal them in order.
    for entry in vector["encryptions"][:3]:
        assert context.seal(_h(entry["aad"]), _h(entry["pt"])) == _h(entry["ct"])


@pytest.mark.parametrize("vector", RFC, ids=_ids)
def test_receiver_opens_every_listed_sequence_number(vector: dict[str, Any]) -> None:
    sk_r = _private(vector["skRm"])
    context = hpke.setup_base_r(
        _h(vector["enc"]),
        sk_r.public_key(),
        lambda peer: sk_r.exchange(ec.ECDH(), peer),
        _h(vector["info"]),
        vector["aead_id"],
    )
    aead_cls = AESGCM if vector["aead_id"] == hpke.AEAD_AES_128_GCM else ChaCha20Poly1305
    aead = aead_cls(_h(vector["key"]))
    for entry in vector["encryptions"]:
        nonce = context.compute_nonce(entry["seq"])
        assert nonce == _h(entry["nonce"])
        assert aead.decrypt(nonce, _h(entry["ct"]), _h(entry["aad"])) == _h(entry["pt"])
    # In-order opens through the context itself (seq 0, 1, 2).
    for entry in vector["encryptions"][:3]:
        assert context.open(_h(entry["aad"]), _h(entry["ct"])) == _h(entry["pt"])


def test_single_shot_open_of_rfc_seq0() -> None:
    vector = RFC[0]
    sk_r = _private(vector["skRm"])
    first = vector["encryptions"][0]
    plaintext = hpke.single_shot_open(
        _h(vector["enc"]) + _h(first["ct"]),
        sk_r.public_key(),
        lambda peer: sk_r.exchange(ec.ECDH(), peer),
        info=_h(vector["info"]),
        aead_id=vector["aead_id"],
        aad=_h(first["aad"]),
    )
    assert plaintext == _h(first["pt"])


@pytest.mark.parametrize("vector", VECTORS["cryptography_generated"], ids=_ids)
def test_aes_256_gcm_vector_from_cryptography(vector: dict[str, Any]) -> None:
    assert vector["aead_id"] == hpke.AEAD_AES_256_GCM
    sk_r = _private(vector["skRm"])
    plaintext = hpke.single_shot_open(
        _h(vector["enc"]) + _h(vector["ct"]),
        sk_r.public_key(),
        lambda peer: sk_r.exchange(ec.ECDH(), peer),
        info=_h(vector["info"]),
        aead_id=vector["aead_id"],
    )
    assert plaintext == _h(vector["pt"])


def test_open_with_wrong_info_is_opaque_failure() -> None:
    vector = RFC[0]
    sk_r = _private(vector["skRm"])
    first = vector["encryptions"][0]
    with pytest.raises(EnvelopeError, match=r"^envelope failed authentication$"):
        hpke.single_shot_open(
            _h(vector["enc"]) + _h(first["ct"]),
            sk_r.public_key(),
            lambda peer: sk_r.exchange(ec.ECDH(), peer),
            info=b"another info",
            aead_id=vector["aead_id"],
            aad=_h(first["aad"]),
        )


@pytest.mark.parametrize(
    ("enc", "reason"),
    [
        (b"\x04" + b"\x00" * 64, "not a point on P-256"),
        (b"\x02" + b"\x11" * 64, "not an uncompressed P-256 point"),
        (b"\x04" * 33, "not an uncompressed P-256 point"),
    ],
)
def test_decap_rejects_invalid_encapsulated_keys(enc: bytes, reason: str) -> None:
    sk_r = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EnvelopeError, match=reason):
        hpke.decap(enc, sk_r.public_key(), lambda peer: sk_r.exchange(ec.ECDH(), peer))


def test_decap_rejects_a_dh_that_is_not_an_x_coordinate() -> None:
    sk_r = ec.generate_private_key(ec.SECP256R1())
    enc = hpke.serialize_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(EnvelopeError, match="returned 65 bytes"):
        hpke.decap(enc, sk_r.public_key(), lambda peer: b"\x04" + bytes(64))
