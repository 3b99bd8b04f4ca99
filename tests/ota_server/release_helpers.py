"""Build a real release for the server tests: sealed model, custom metadata, KEK envelope.

Everything a release manager's tooling does before talking to the server,
done with the sdk's real recipes (no mocks): seal random model bytes, describe
them with :class:`ReleaseMetadata`, seal the content key to the server's KEK.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from server_fixture import RunningServer

from edgeseal.sdk.envelope import seal_envelope
from edgeseal.sdk.golden import GoldenTensor, HealthCheck
from edgeseal.sdk.releases import PlaintextDigest, ReleaseMetadata
from edgeseal.sdk.sealed import SealedModelInfo, seal_model
from edgeseal.sdk.signing import sign_proposal


@dataclass
class BuiltRelease:
    family: str
    version: int
    sealed: bytes
    info: SealedModelInfo
    meta: ReleaseMetadata
    body: dict[str, Any]

    @property
    def target_path(self) -> str:
        return self.meta.target_path


def build_release(
    server: RunningServer,
    family: str,
    version: int,
    *,
    hardware: tuple[str, ...] = ("rpi5",),
    plaintext: bytes | None = None,
    rollout_percent: int = 100,
) -> BuiltRelease:
    model = plaintext if plaintext is not None else os.urandom(50_000)
    out = io.BytesIO()
    info = seal_model(io.BytesIO(model), out, family=family, version=version, hardware=hardware)
    sealed = out.getvalue()
    header = info.header
    tensor = GoldenTensor(dtype="float32", shape=(1, 2), data=bytes(8))
    meta = ReleaseMetadata(
        family=family,
        version=version,
        hardware=hardware,
        channel="stable",
        rollout_percent=rollout_percent,
        plaintext=PlaintextDigest(
            header.digest_alg, header.plaintext_digest, header.plaintext_size
        ),
        min_agent_version="0.1.0",
        health_check=HealthCheck(
            inputs=(tensor,), outputs=(tensor,), tolerance=0, latency_budget_ms=200
        ),
    )
    kek = server.request("GET", "/api/v1/kek", token=server.admin_token).json()
    kek_key = serialization.load_pem_public_key(kek["public_key_pem"].encode())
    assert isinstance(kek_key, ec.EllipticCurvePublicKey)
    body = {
        "family": family,
        "version": version,
        "custom": meta.to_custom(),
        "kek_envelope_b64": base64.b64encode(
            seal_envelope(info.content_key, kek_key, header)
        ).decode(),
        "sealed_size": len(sealed),
        "sealed_sha256": hashlib.sha256(sealed).hexdigest(),
    }
    return BuiltRelease(family, version, sealed, info, meta, body)


def sign(server: RunningServer, release_id: str, rm_token: str, signer_index: int) -> Any:
    """One release manager fetches the proposal, signs it, posts the signature."""
    proposal = server.request("GET", f"/api/v1/releases/{release_id}/proposal", token=rm_token)
    assert proposal.status == 200, proposal.body
    family = release_id.rsplit("-", 1)[0]
    keyid, sig = sign_proposal(proposal.body, server.release_managers[family][signer_index])
    answer = server.request(
        "POST",
        f"/api/v1/releases/{release_id}/signatures",
        token=rm_token,
        body={"keyid": keyid, "sig": sig},
    )
    assert answer.status == 200, answer.body
    return answer.json()


def publish(server: RunningServer, release: BuiltRelease, rm_token: str) -> str:
    """Create, upload and sign (2 of 3) a release; return its id."""
    created = server.request("POST", "/api/v1/releases", token=rm_token, body=release.body)
    assert created.status == 201, created.body
    release_id: str = created.json()["id"]
    uploaded = server.request(
        "PUT",
        f"/api/v1/releases/{release_id}/sealed-model",
        token=rm_token,
        body=release.sealed,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert uploaded.status == 200, uploaded.body
    sign(server, release_id, rm_token, 0)
    last = sign(server, release_id, rm_token, 1)
    assert last["state"] == "published", last
    return release_id


def device_key_pem() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()
