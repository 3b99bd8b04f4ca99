"""A release manager signs a proposal only if it is exactly the expected change.

Attacks by a compromised server, each refused before signing: adding an extra
target, dropping or altering another target, skipping or reusing a version,
swapping the sealed model's hashes, relabelling the release metadata, adding a
delegation, stretching the expiry.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from release_fixtures import metadata
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Signature, TargetFile, Targets
from tuf.api.serialization.json import CanonicalJSONSerializer

from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.signing import (
    ExpectedChange,
    ProposalError,
    load_release_signer,
    sign_proposal,
    verify_proposal,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _target(version: int, content: bytes | None = None, **meta: Any) -> TargetFile:
    content = content if content is not None else f"sealed {version}".encode()
    m = metadata(version=version, **meta)
    return TargetFile(
        length=len(content),
        hashes={"sha256": hashlib.sha256(content).hexdigest()},
        path=m.target_path,
        unrecognized_fields={"custom": m.to_custom()},
    )


def _md(version: int, targets: list[TargetFile], **kw: Any) -> Metadata[Targets]:
    signed = Targets(
        version=version,
        expires=NOW + timedelta(days=90),
        targets={t.path: t for t in targets},
        **kw,
    )
    return Metadata(signed)


def _bytes(md: Metadata[Targets]) -> bytes:
    return md.to_bytes(CanonicalJSONSerializer())


CURRENT = _md(4, [_target(5), _target(6)])
NEW = _target(7, b"sealed seven")
EXPECT = ExpectedChange(
    "detector", 7, "add", len(b"sealed seven"), hashlib.sha256(b"sealed seven").hexdigest()
)


def _verify(proposal: Metadata[Targets], expected: ExpectedChange = EXPECT) -> Any:
    return verify_proposal(_bytes(proposal), _bytes(CURRENT), expected, now=NOW)


def test_the_expected_addition_verifies() -> None:
    summary = _verify(_md(5, [_target(5), _target(6), NEW]))
    assert (summary.version, summary.previous_version, summary.action) == (5, 4, "add")
    assert summary.target_path == "detector/7/detector-7.esm"
    assert summary.unchanged_targets == 2
    assert summary.release.version == 7
    assert summary.to_json()["sha256"] == EXPECT.sha256


def test_extra_target_is_refused() -> None:
    with pytest.raises(ProposalError, match=r"adds unexpected target.*detector/8"):
        _verify(_md(5, [_target(5), _target(6), NEW, _target(8)]))


def test_removing_another_target_is_refused() -> None:
    with pytest.raises(ProposalError, match=r"removes or omits.*detector/5"):
        _verify(_md(5, [_target(6), NEW]))


def test_changing_another_targets_hashes_is_refused() -> None:
    with pytest.raises(ProposalError, match="changes the published target detector/6"):
        _verify(_md(5, [_target(5), _target(6, b"evil"), NEW]))


def test_changing_another_targets_custom_metadata_is_refused() -> None:
    with pytest.raises(ProposalError, match="changes the published target detector/6"):
        _verify(_md(5, [_target(5), _target(6, rollout_percent=1), NEW]))


@pytest.mark.parametrize("version", [4, 6, 7, 1])
def test_skipped_or_reused_version_is_refused(version: int) -> None:
    with pytest.raises(ProposalError, match=r"is not|next version"):
        _verify(_md(version, [_target(5), _target(6), NEW]))


def test_other_sealed_model_hash_or_length_is_refused() -> None:
    with pytest.raises(ProposalError, match="sha256"):
        _verify(_md(5, [_target(5), _target(6), _target(7, b"sealed sev3n")]))
    with pytest.raises(ProposalError, match="length"):
        _verify(_md(5, [_target(5), _target(6), _target(7, b"sealed seven!")]))


def test_without_expected_hashes_the_proposals_are_shown_not_trusted() -> None:
    loose = ExpectedChange("detector", 7, "add")
    summary = _verify(_md(5, [_target(5), _target(6), NEW]), loose)
    assert summary.length == len(b"sealed seven")


def test_relabelled_release_metadata_is_refused() -> None:
    relabelled = _target(7, b"sealed seven")
    relabelled.unrecognized_fields["custom"] = metadata(version=8).to_custom()
    with pytest.raises(ProposalError, match="metadata for detector 8"):
        _verify(_md(5, [_target(5), _target(6), relabelled]))
    broken = _target(7, b"sealed seven")
    broken.unrecognized_fields["custom"] = {"edgeseal": {"schema": 9}}
    with pytest.raises(ProposalError, match="invalid release metadata"):
        _verify(_md(5, [_target(5), _target(6), broken]))


def test_added_delegation_is_refused() -> None:
    role = DelegatedRole("sub", ["k"], 1, True, paths=["detector/*"])
    delegations = Delegations(keys={}, roles={"sub": role})
    with pytest.raises(ProposalError, match="delegations"):
        _verify(_md(5, [_target(5), _target(6), NEW], delegations=delegations))


def test_expiry_must_be_future_and_bounded() -> None:
    md = _md(5, [_target(5), _target(6), NEW])
    md.signed.expires = NOW - timedelta(seconds=1)
    with pytest.raises(ProposalError, match="expires"):
        _verify(md)
    md.signed.expires = NOW + timedelta(days=3650)
    with pytest.raises(ProposalError, match="expires"):
        _verify(md)


def test_yank_removes_exactly_its_target() -> None:
    yank = ExpectedChange("detector", 6, "remove")
    summary = verify_proposal(_bytes(_md(5, [_target(5)])), _bytes(CURRENT), yank, now=NOW)
    assert (summary.action, summary.target_path, summary.release.version) == (
        "remove",
        "detector/6/detector-6.esm",
        6,
    )
    with pytest.raises(ProposalError, match=r"removes or omits.*detector/5"):
        verify_proposal(_bytes(_md(5, [])), _bytes(CURRENT), yank, now=NOW)
    with pytest.raises(ProposalError, match="adds unexpected"):
        verify_proposal(_bytes(_md(5, [_target(5), _target(6)])), _bytes(CURRENT), yank, now=NOW)
    with pytest.raises(ProposalError, match="not published"):
        verify_proposal(
            _bytes(_md(5, [_target(5), _target(6)])),
            _bytes(CURRENT),
            ExpectedChange("detector", 9, "remove"),
            now=NOW,
        )


def test_first_release_of_a_family_is_version_one() -> None:
    verify_proposal(_bytes(_md(1, [NEW])), None, EXPECT, now=NOW)
    with pytest.raises(ProposalError, match="next version"):
        verify_proposal(_bytes(_md(2, [NEW])), None, EXPECT, now=NOW)


def test_garbage_is_refused() -> None:
    with pytest.raises(ProposalError, match="not valid TUF metadata"):
        verify_proposal(b"{}", _bytes(CURRENT), EXPECT, now=NOW)


def test_signature_verifies_under_the_family_delegation(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "rm.pem"
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    signer = load_release_signer(key_file, b"correct horse")
    other = CryptoSigner.generate_ecdsa()
    role = DelegatedRole("detector", [signer.public_key.keyid], 1, True, paths=["detector/*"])
    parent = Metadata(
        Targets(
            expires=NOW + timedelta(days=90),
            delegations=Delegations(
                keys={
                    signer.public_key.keyid: signer.public_key,
                    other.public_key.keyid: other.public_key,
                },
                roles={"detector": role},
            ),
        )
    )
    proposal = _bytes(_md(5, [_target(5), _target(6), NEW]))
    keyid, sig = sign_proposal(proposal, signer)
    assert keyid == signer.public_key.keyid
    signed = Metadata[Targets].from_bytes(proposal)

    signed.signatures[keyid] = Signature(keyid, sig)
    parent.verify_delegate("detector", signed)  # python-tuf accepts it
    signed.signatures[keyid] = Signature(keyid, sig[:-2] + ("00" if sig[-2:] != "00" else "11"))
    with pytest.raises(UnsignedMetadataError, match="signed by 0/1 keys"):
        parent.verify_delegate("detector", signed)


def test_key_file_rules(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(EdgesealError, match="not encrypted"):
        load_release_signer(plain, b"pw")
    enc = tmp_path / "enc.pem"
    enc.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(EdgesealError, match="wrong passphrase"):
        load_release_signer(enc, b"other")
    with pytest.raises(EdgesealError, match="cannot read"):
        load_release_signer(tmp_path / "missing.pem", b"pw")
