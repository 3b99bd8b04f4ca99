"""``edgeseal-agent provision`` on a TPM reached by its TCTI (not the emulated
device's shortcut): the device key is created bound to the policy authority, kept on
a second run, usable under the signed PCR policy; a policy signed by another
authority is refused before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tuf.api.metadata import Metadata, Root

from edgeseal.device_agent.cli import main as agent_main
from edgeseal.device_agent.config import load_config
from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.errors import KeyNotFoundError
from edgeseal.hardware.policy import SignedPCRPolicy, sign_pcr_policy
from edgeseal.hardware.profiles import load_profile
from edgeseal.hardware.swtpm import SwtpmProcess

pytestmark = pytest.mark.swtpm


def _files(tmp_path: Path, tcti: str, signer: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    pcrs = load_profile("x86-dtpm").policy_pcrs
    with open_backend(tcti) as backend:
        policy = sign_pcr_policy(signer, backend.pcr_read(pcrs))
    (tmp_path / "pcr-policy.json").write_bytes(policy.to_bytes())
    (tmp_path / "root.json").write_bytes(Metadata(Root()).to_bytes())
    return tmp_path / "pcr-policy.json", tmp_path / "root.json"


def _provision(tmp_path: Path, tcti: str, authority: Path, policy: Path, root: Path) -> int:
    return agent_main(
        [
            "provision", "--config", str(tmp_path / "agent.toml"), "--device-id", "x86-7",
            "--family", "detector", "--server", "http://127.0.0.1:9", "--root", str(root),
            "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "run" / "s"),
            "--backend", tcti, "--profile", "x86-dtpm", "--policy-authority", str(authority),
            "--pcr-policy", str(policy), "--force",
        ]
    )  # fmt: skip


def test_provision_creates_the_key_under_the_signed_policy(
    tmp_path: Path, swtpm: SwtpmProcess
) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    authority = tmp_path / "authority.pub.pem"
    authority.write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    policy, root = _files(tmp_path, swtpm.tcti, signer)
    assert _provision(tmp_path, swtpm.tcti, authority, policy, root) == 0
    exported = (tmp_path / "state" / "device-key.pub.pem").read_bytes()
    config = load_config(tmp_path / "agent.toml")
    assert config.key_backend == swtpm.tcti and config.pcr_policy_path == policy.resolve()
    assert (tmp_path / "state" / "tuf" / "root.json").read_bytes() == root.read_bytes()

    # a second run keeps the key (envelopes already sealed to it stay valid)
    assert _provision(tmp_path, swtpm.tcti, authority, policy, root) == 0
    assert (tmp_path / "state" / "device-key.pub.pem").read_bytes() == exported

    # the key works only through the signed policy
    approved = SignedPCRPolicy.from_bytes(policy.read_bytes())
    peer = ec.generate_private_key(ec.SECP256R1())
    with open_backend(swtpm.tcti) as backend:
        device = backend.device_key_public()
        assert (
            device.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == exported
        )
        shared = backend.ecdh_zgen(peer.public_key(), approved=approved)
    assert shared == peer.exchange(ec.ECDH(), device)


def test_policy_of_another_authority_refused_before_any_key(
    tmp_path: Path, swtpm: SwtpmProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    ours, theirs = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    authority = tmp_path / "authority.pub.pem"
    authority.write_bytes(
        ours.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    policy, root = _files(tmp_path, swtpm.tcti, theirs)
    assert _provision(tmp_path, swtpm.tcti, authority, policy, root) == 1
    assert "different authority" in capsys.readouterr().err
    assert not (tmp_path / "agent.toml").exists()
    with open_backend(swtpm.tcti) as backend, pytest.raises(KeyNotFoundError):
        backend.device_key_public()
