"""A release manager's signature on a proposed family metadata, after checking it.

The server proposes the next version of a family's delegated targets metadata
(one release added, one yanked, or one's ``rollout_percent`` changed) and
collects the release managers' signatures. It holds none of their keys, so a
compromised server can only get a change published by making k release
managers sign it. Each of them therefore signs only after
:func:`verify_proposal` has shown that the proposal is exactly the expected
change against the currently published metadata:

* it is the next version (no version skipped, none reused);
* its target set is the published one plus the release's target (or minus
  it, for a yank), every other target byte-for-byte unchanged (length, hashes
  and custom metadata);
* for a rollout change, the target set is the published one and the only
  difference is the release's ``rollout_percent``, now the expected value
  (length, hashes and every other field of the release metadata unchanged);
* the added target has the length and SHA-256 that the release manager
  expects (the server's record, and the local sealed file when given) and
  valid release metadata naming the same family and version as its path;
* delegations and unknown fields are unchanged, and the expiry is in the
  future and not absurdly far.

Verification is pure (bytes in, raises :class:`ProposalError`). ``tuf`` and
``securesystemslib`` are imported lazily (the ``[release]`` extra), so the
sdk core does not need them.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeseal.sdk.errors import EdgesealError, FormatError
from edgeseal.sdk.releases import ReleaseMetadata, model_target_path

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner

__all__ = [
    "MAX_EXPIRY",
    "ExpectedChange",
    "ProposalError",
    "ProposalSummary",
    "load_release_signer",
    "sign_proposal",
    "verify_proposal",
]

logger = logging.getLogger(__name__)

#: A proposal expiring later than this is refused (family roles default to 90 days).
MAX_EXPIRY = timedelta(days=400)
MAX_KEY_FILE = 64 * 1024
_SCHEME = "ecdsa-sha2-nistp256"


class ProposalError(EdgesealError):
    """The proposal is not the change the release manager is asked to sign. Do not sign it."""

    def diagnostics(self) -> str:
        return f"refusing to sign: {self.message}"


@dataclass(frozen=True)
class ExpectedChange:
    """What the release manager expects the proposal to do to ``family``'s metadata."""

    family: str
    version: int
    action: Literal["add", "remove", "rollout"]
    #: Expected length and SHA-256 (hex) of the sealed model, when known.
    length: int | None = None
    sha256: str | None = None
    #: For ``"rollout"``: the new ``rollout_percent`` (required).
    rollout_percent: int | None = None

    @property
    def target_path(self) -> str:
        return model_target_path(self.family, self.version)


@dataclass(frozen=True)
class ProposalSummary:
    """What a verified proposal does; shown to the release manager before signing."""

    family: str
    version: int
    previous_version: int | None
    action: Literal["add", "remove", "rollout"]
    target_path: str
    length: int
    sha256: str
    release: ReleaseMetadata
    expires: datetime
    unchanged_targets: int
    #: For a rollout change: the published ``rollout_percent`` it replaces.
    previous_rollout_percent: int | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.release
        return {
            "family": self.family,
            "metadata_version": self.version,
            "previous_metadata_version": self.previous_version,
            "action": self.action,
            "target_path": self.target_path,
            "length": self.length,
            "sha256": self.sha256,
            "release_version": r.version,
            "hardware": list(r.hardware),
            "channel": r.channel,
            "rollout_percent": r.rollout_percent,
            "key_release": r.key_release,
            "min_agent_version": r.min_agent_version,
            "plaintext_digest": f"{r.plaintext.digest_alg}:{r.plaintext.digest.hex()}",
            "expires": self.expires.isoformat(),
            "unchanged_targets": self.unchanged_targets,
            "previous_rollout_percent": self.previous_rollout_percent,
        }


def verify_proposal(
    proposal: bytes,
    current: bytes | None,
    expected: ExpectedChange,
    *,
    now: datetime | None = None,
) -> ProposalSummary:
    """Check that ``proposal`` is exactly ``expected`` applied to ``current``; raise if not.

    ``current`` is the published family metadata (authenticated by the caller,
    see :mod:`edgeseal.sdk.published`), or None when the family has never been
    published (the proposal must then be version 1).
    """
    from tuf.api.metadata import Targets

    now = now or datetime.now(UTC)
    new = _parse(proposal, "the proposal")
    old = _parse(current, "the published metadata") if current is not None else None
    if not isinstance(new.signed, Targets) or (
        old is not None and not isinstance(old.signed, Targets)
    ):
        raise ProposalError("the proposal is not targets metadata", field="_type")
    proposed: Targets = new.signed
    published: Targets | None = old.signed if old is not None else None
    previous = published.version if published is not None else None
    wanted = (previous or 0) + 1
    if proposed.version != wanted:
        raise ProposalError(
            f"the proposal is version {proposed.version} but the next version of "
            f"{expected.family} is {wanted} (published: {previous})",
            field="version",
        )
    if proposed.delegations != (published.delegations if published else None):
        raise ProposalError("the proposal changes the family's delegations", field="delegations")
    if proposed.unrecognized_fields != (published.unrecognized_fields if published else {}):
        raise ProposalError("the proposal adds or changes unknown fields", field="signed")
    expires = proposed.expires
    if expires <= now or expires > now + MAX_EXPIRY:
        raise ProposalError(
            f"the proposal expires {expires.isoformat()}: not between now and "
            f"{MAX_EXPIRY.days} days from now",
            field="expires",
        )
    before = dict(published.targets) if published is not None else {}
    after = dict(proposed.targets)
    path = expected.target_path
    if expected.action == "rollout":
        return _verify_rollout(
            before, after, expected, version=proposed.version, previous=previous, expires=expires
        )
    if expected.action == "add":
        if path in before:
            raise ProposalError(f"{path} is already published", field="targets")
        expected_paths = set(before) | {path}
    else:
        if path not in before:
            raise ProposalError(f"{path} is not published, so it cannot be yanked", field="targets")
        expected_paths = set(before) - {path}
    extra = sorted(set(after) - expected_paths)
    if extra:
        raise ProposalError(f"the proposal adds unexpected target(s) {', '.join(extra)}")
    missing = sorted(expected_paths - set(after))
    if missing:
        raise ProposalError(f"the proposal removes or omits target(s) {', '.join(missing)}")
    for other in sorted(expected_paths - {path}):
        if after[other] != before[other]:
            raise ProposalError(f"the proposal changes the published target {other}")
    target = after[path] if expected.action == "add" else before[path]
    release = _check_target(target, expected, check_expected=expected.action == "add")
    return ProposalSummary(
        family=expected.family,
        version=proposed.version,
        previous_version=previous,
        action=expected.action,
        target_path=path,
        length=target.length,
        sha256=target.hashes["sha256"],
        release=release,
        expires=expires,
        unchanged_targets=len(expected_paths - {path}),
    )


def _verify_rollout(
    before: dict[str, Any],
    after: dict[str, Any],
    expected: ExpectedChange,
    *,
    version: int,
    previous: int | None,
    expires: datetime,
) -> ProposalSummary:
    """Exactly one change: ``expected.target_path``'s ``rollout_percent``, to the expected value."""
    from tuf.api.metadata import TargetFile

    path = expected.target_path
    percent = expected.rollout_percent
    if type(percent) is not int or not 1 <= percent <= 100:
        raise ProposalError("a rollout change needs the expected percentage (1 to 100)")
    if path not in before:
        raise ProposalError(f"{path} is not published, so its rollout cannot change")
    extra = sorted(set(after) - set(before))
    if extra:
        raise ProposalError(f"the proposal adds unexpected target(s) {', '.join(extra)}")
    missing = sorted(set(before) - set(after))
    if missing:
        raise ProposalError(f"the proposal removes or omits target(s) {', '.join(missing)}")
    for other in sorted(set(before) - {path}):
        if after[other] != before[other]:
            raise ProposalError(f"the proposal changes the published target {other}")
    old = before[path]
    old_release = _check_target(old, expected, check_expected=False)
    if old_release.rollout_percent == percent:
        raise ProposalError(f"{path} is already published at {percent}%", field="custom")
    # The published target with that one field replaced: anything else that differs
    # (length, hashes, another metadata field, an unknown field) is refused.
    fields = copy.deepcopy(old.unrecognized_fields)
    fields["custom"]["edgeseal"]["rollout_percent"] = percent
    wanted = TargetFile(old.length, dict(old.hashes), path, fields)
    new = after[path]
    if new != wanted:
        raise ProposalError(
            f"the proposal changes more of {path} than its rollout_percent to {percent}% "
            f"({', '.join(_target_differences(wanted, new))} differ)",
            field="targets",
        )
    release = _check_target(new, expected, check_expected=False)
    return ProposalSummary(
        family=expected.family,
        version=version,
        previous_version=previous,
        action="rollout",
        target_path=path,
        length=new.length,
        sha256=new.hashes["sha256"],
        release=release,
        expires=expires,
        unchanged_targets=len(before) - 1,
        previous_rollout_percent=old_release.rollout_percent,
    )


def _target_differences(wanted: Any, got: Any) -> list[str]:
    names = ("length", "hashes", "path")
    out = [name for name in names if getattr(wanted, name) != getattr(got, name)]
    want_fields, got_fields = dict(wanted.unrecognized_fields), dict(got.unrecognized_fields)
    want_custom, got_custom = want_fields.pop("custom", None), got_fields.pop("custom", None)
    if want_fields != got_fields:
        out.append("unknown fields")
    if want_custom != got_custom:
        w = want_custom.get("edgeseal", {}) if isinstance(want_custom, dict) else {}
        g = got_custom.get("edgeseal", {}) if isinstance(got_custom, dict) else {}
        if not isinstance(g, dict) or set(w) ^ set(g):
            out.append("custom")
        else:
            out.extend(f"custom.{key}" for key in sorted(w) if w[key] != g.get(key))
    return out or ["fields"]


def _parse(data: bytes, what: str) -> Any:
    from tuf.api.metadata import Metadata
    from tuf.api.serialization import DeserializationError

    try:
        return Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise ProposalError(f"{what} is not valid TUF metadata: {exc}") from exc


def _check_target(
    target: Any, expected: ExpectedChange, *, check_expected: bool
) -> ReleaseMetadata:
    sha256 = target.hashes.get("sha256")
    if not isinstance(sha256, str):
        raise ProposalError(f"{target.path} has no sha256 hash", field="hashes")
    if check_expected:
        if expected.length is not None and target.length != expected.length:
            raise ProposalError(
                f"{target.path} has length {target.length}, expected {expected.length}",
                field="length",
            )
        if expected.sha256 is not None and sha256 != expected.sha256.lower():
            raise ProposalError(
                f"{target.path} has sha256 {sha256}, expected {expected.sha256}", field="hashes"
            )
    try:
        release = ReleaseMetadata.from_custom(target.custom)
    except FormatError as exc:
        raise ProposalError(
            f"{target.path} carries invalid release metadata: {exc.diagnostics()}", field="custom"
        ) from exc
    if (release.family, release.version) != (expected.family, expected.version):
        raise ProposalError(
            f"{target.path} carries metadata for {release.family} {release.version}",
            field="custom",
        )
    return release


def load_release_signer(path: Path, passphrase: bytes) -> CryptoSigner:
    """Load a release manager's passphrase-encrypted PKCS#8 PEM P-256 key as a TUF signer."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from securesystemslib.signer import CryptoSigner, SSlibKey

    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise EdgesealError(f"cannot read key file {path}: {exc.strerror}", field="key") from exc
    if len(data) > MAX_KEY_FILE:
        raise EdgesealError(f"{path} is too large to be a key file", field="key")
    if not passphrase:
        raise EdgesealError("an empty passphrase is not allowed", field="passphrase")
    try:
        private = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        raise EdgesealError(
            f"key file {path} is not encrypted; release keys must be passphrase-protected",
            field="key",
        ) from exc
    except ValueError as exc:
        raise EdgesealError(
            f"cannot decrypt key file {path}: wrong passphrase or not a PEM private key",
            field="key",
        ) from exc
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise EdgesealError(f"key file {path} is not an ECDSA P-256 key", field="key")
    public = SSlibKey.from_crypto(private.public_key(), scheme=_SCHEME)
    return CryptoSigner(private, public)


def sign_proposal(proposal: bytes, signer: CryptoSigner) -> tuple[str, str]:
    """Sign the canonical form of the proposal's ``signed``; return ``(keyid, sig_hex)``.

    The signature is checked against the signer's public key before it is
    returned, so what goes to the server is a signature python-tuf accepts.
    """
    from securesystemslib.exceptions import UnverifiedSignatureError
    from tuf.api.serialization.json import CanonicalJSONSerializer

    metadata = _parse(proposal, "the proposal")
    signature = metadata.sign(signer, append=True)
    payload = CanonicalJSONSerializer().serialize(metadata.signed)
    try:
        signer.public_key.verify_signature(signature, payload)
    except UnverifiedSignatureError as exc:  # pragma: no cover - would mean a broken signer
        raise EdgesealError("the new signature does not verify") from exc
    logger.info("signed proposal version %d with key %s", metadata.signed.version, signature.keyid)
    return signature.keyid, signature.signature
