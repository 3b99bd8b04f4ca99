"""The attested key release, the device's side, against a fake server that does the real checks.

The device is a real emulated one (swtpm): its attestation key quotes, the
fake server (tests/device_agent/key_server.py) verifies the quote with that
AK and the recomputed binding, compares the PCRs with the baseline (or checks
that the signed PCR policy the device sends approves them under its enrolled
policy authority) and seals a real HPKE envelope to the device's TPM
decryption key, which the TPM then opens. The updater's use of it is
tests/device_agent/test_updater_attested.py.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from key_server import PROFILE_PCRS, Enrolled, FakeKeyServer, Published, running_key_server

from edgeseal.device_agent.enroll import ENROLLMENT_FILE
from edgeseal.device_agent.key_release import (
    NOT_ENROLLED,
    KeyReleaseClient,
    KeyReleaseError,
    KeyReleaseInvalidError,
    KeyReleaseRefusedError,
    KeyReleaseUnavailableError,
    NotEnrolledError,
    check_enrolled,
    fetch_envelope,
)
from edgeseal.device_agent.locked_backend import LockedBackend
from edgeseal.device_agent.recipient import TPMRecipient
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.emulated import AUTHORITY_KEY_FILE, EmulatedDevice
from edgeseal.hardware.policy import SignedPCRPolicy, sign_pcr_policy
from edgeseal.sdk.envelope import open_envelope
from edgeseal.sdk.sealed import seal_model

FAMILY = "demo"
DEVICE_ID = "kr-1"


@dataclass
class Device:
    emulated: EmulatedDevice
    backend: KeyBackend

    @property
    def policy(self) -> SignedPCRPolicy:
        """The signed PCR policy the agent runs under (what it sends with a release)."""
        return self.emulated.signed_policy()

    def approve_current_state(self, authority: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """Sign the PCRs as they are now (an approved OS update), with the device's
        policy authority unless another key is given; the policy's bytes."""
        if authority is None:
            pem = (self.emulated.state_dir / AUTHORITY_KEY_FILE).read_bytes()
            key = serialization.load_pem_private_key(pem, password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            authority = key
        return sign_pcr_policy(authority, self.backend.pcr_read(PROFILE_PCRS)).to_bytes()


@pytest.fixture
def device(tmp_path: Path, swtpm_ca: Path) -> Iterator[Device]:
    emulated = EmulatedDevice.create(
        tmp_path / "dev", device_id=DEVICE_ID, ca_dir=swtpm_ca, running=True
    )
    try:
        with emulated.backend() as backend:
            yield Device(emulated, backend)
    finally:
        emulated.stop()


@pytest.fixture
def server(device: Device) -> Iterator[FakeKeyServer]:
    """The fake server, with the device enrolled (AK created now, with its policy
    authority, as ``edgeseal-agent enroll`` sends it) and release demo v3."""
    ak_public = device.backend.create_attestation_key()
    values = device.backend.pcr_read(PROFILE_PCRS)
    authority = device.policy.authority.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with running_key_server() as srv:
        srv.devices[DEVICE_ID] = Enrolled(
            ak_public,
            {i: values.digests[i] for i in PROFILE_PCRS},
            device.emulated.device_key_public(),
            authority,
        )
        info = seal_model(
            io.BytesIO(b"not really a model" * 10),
            io.BytesIO(),
            family=FAMILY,
            version=3,
            hardware=["emulated"],
        )
        srv.releases[(FAMILY, 3)] = Published(info.header, info.content_key)
        yield srv


_CURRENT = b"the device's policy"


def fetch(
    device: Device, server: FakeKeyServer, *, pcr_policy: bytes | None = _CURRENT, **client: float
) -> bytes:
    """Ask as the updater does: with the signed PCR policy the agent runs under."""
    return fetch_envelope(
        KeyReleaseClient(server.url, **client),
        device.backend,
        DEVICE_ID,
        PROFILE_PCRS,
        FAMILY,
        3,
        pcr_policy=device.policy.to_bytes() if pcr_policy is _CURRENT else pcr_policy,
    )


@pytest.mark.swtpm
def test_the_released_envelope_opens_in_the_tpm(device: Device, server: FakeKeyServer) -> None:
    envelope = fetch(device, server)
    assert server.problems == []
    assert server.requests == ["/v1/keys/challenge", "/v1/keys/release"]
    assert server.released == 1 and server.challenges == {}  # the challenge was used up
    assert server.policies == [device.policy.to_bytes()]  # the policy the agent runs under
    published = server.releases[(FAMILY, 3)]
    recipient = TPMRecipient(device.backend, device.emulated.signed_policy())
    key = open_envelope(envelope, recipient, published.header)
    assert key.secret_bytes() == published.content_key.secret_bytes()
    # through the agent's shared, locked backend too (PCR read and quote under one lock)
    locked = LockedBackend(device.backend)
    fetch_envelope(KeyReleaseClient(server.url), locked, DEVICE_ID, PROFILE_PCRS, FAMILY, 3)
    assert server.problems == [] and server.released == 2
    assert server.policies[-1] is None  # no policy given: null, and the baseline still counts


@pytest.mark.swtpm
def test_a_changed_boot_state_is_refused_with_the_servers_message(
    device: Device, server: FakeKeyServer
) -> None:
    device.backend.pcr_extend(9, b"\x01" * 32)  # another kernel, not approved
    with pytest.raises(KeyReleaseRefusedError) as err:
        fetch(device, server)
    assert err.value.status == 403 and err.value.code == "attestation-failed"
    assert err.value.message.startswith("PCR 9 differ from the baseline (PCR 9 reported")
    assert "refused the key release (403 attestation-failed)" in err.value.diagnostics()
    assert server.problems == []  # the quote itself was good


@pytest.mark.swtpm
def test_a_boot_state_the_policy_authority_approved_gets_the_key(
    device: Device, server: FakeKeyServer
) -> None:
    """An approved OS update: PCR 9 changed, and the device's authority signed the new
    state; the agent sends that policy, the server releases, the TPM opens it with it."""
    device.backend.pcr_extend(9, b"\x01" * 32)
    approved = device.approve_current_state()
    envelope = fetch(device, server, pcr_policy=approved)
    assert server.problems == [] and server.released == 1
    published = server.releases[(FAMILY, 3)]
    recipient = TPMRecipient(device.backend, SignedPCRPolicy.from_bytes(approved))
    key = open_envelope(envelope, recipient, published.header)
    assert key.secret_bytes() == published.content_key.secret_bytes()


@pytest.mark.swtpm
@pytest.mark.parametrize(
    ("policy", "match"),
    [
        ("none", "the device sent no signed PCR policy"),
        ("stale", "PCR 9 reported by the device differ"),
        ("other-authority", "not by the device's enrolled policy authority"),
        ("not-enrolled", "no PCR policy authority is enrolled"),
    ],
)
def test_a_changed_boot_state_without_an_approval_is_refused(
    device: Device, server: FakeKeyServer, policy: str, match: str
) -> None:
    device.backend.pcr_extend(9, b"\x01" * 32)
    sent = {
        "none": None,
        "stale": device.policy.to_bytes(),  # the policy of the enrolled state
        "other-authority": device.approve_current_state(ec.generate_private_key(ec.SECP256R1())),
        "not-enrolled": device.approve_current_state(),
    }[policy]
    if policy == "not-enrolled":  # enrolled before enroll sent an authority
        server.devices[DEVICE_ID].pcr_policy_authority = None
    with pytest.raises(KeyReleaseRefusedError, match=match) as err:
        fetch(device, server, pcr_policy=sent)
    assert err.value.message.startswith("PCR 9 differ from the baseline")
    assert server.released == 0 and server.policies == [sent]


@pytest.mark.swtpm
def test_a_revoked_device_is_refused(device: Device, server: FakeKeyServer) -> None:
    server.mode = "refuse"
    with pytest.raises(KeyReleaseRefusedError, match=f"device {DEVICE_ID} is revoked"):
        fetch(device, server)
    assert server.requests == ["/v1/keys/challenge"]


@pytest.mark.swtpm
def test_an_unknown_release_is_refused(device: Device, server: FakeKeyServer) -> None:
    with pytest.raises(KeyReleaseRefusedError) as err:
        fetch_envelope(
            KeyReleaseClient(server.url), device.backend, DEVICE_ID, PROFILE_PCRS, FAMILY, 4
        )
    assert err.value.status == 404 and "no such attested release" in err.value.message


@pytest.mark.swtpm
@pytest.mark.parametrize(("mode", "status"), [("unavailable", 503), ("expired", 409)])
def test_server_trouble_is_retryable(
    device: Device, server: FakeKeyServer, mode: str, status: int
) -> None:
    server.mode = mode
    with pytest.raises(KeyReleaseUnavailableError) as err:
        fetch(device, server)
    assert err.value.status == status
    assert not isinstance(err.value, KeyReleaseRefusedError)


@pytest.mark.swtpm
def test_a_server_that_is_down_is_retryable(device: Device) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(KeyReleaseUnavailableError, match="cannot talk to"):
        fetch_envelope(
            KeyReleaseClient(f"http://127.0.0.1:{port}"),
            device.backend,
            DEVICE_ID,
            PROFILE_PCRS,
            FAMILY,
            3,
        )


@pytest.mark.swtpm
def test_a_stalled_server_times_out(device: Device, server: FakeKeyServer) -> None:
    server.mode = "stall"
    with pytest.raises(KeyReleaseUnavailableError, match=r"did not answer within 0\.5 s"):
        fetch(device, server, timeout=0.5)


@pytest.mark.swtpm
@pytest.mark.parametrize("mode", ["oversize", "oversize-chunked"])
def test_an_oversize_answer_is_refused(device: Device, server: FakeKeyServer, mode: str) -> None:
    server.mode = mode
    with pytest.raises(KeyReleaseInvalidError, match="65536-byte limit"):
        fetch(device, server)


@pytest.mark.swtpm
def test_a_quote_of_other_pcrs_is_refused_before_the_tpm_is_asked(
    device: Device, server: FakeKeyServer
) -> None:
    server.mode = "wrong-pcrs"
    with pytest.raises(KeyReleaseInvalidError) as err:
        fetch(device, server)
    assert err.value.field == "pcrs"
    assert "PCRs 0, 4, 7, 9, 15" in err.value.message and "0, 4, 9, 15 only" in err.value.message
    assert server.requests == ["/v1/keys/challenge"]  # no quote was sent


@pytest.mark.swtpm
@pytest.mark.parametrize(("mode", "match"), [("malformed", "nonce"), ("redirect", "302")])
def test_a_malformed_or_redirected_answer_is_refused(
    device: Device, server: FakeKeyServer, mode: str, match: str
) -> None:
    server.mode = mode
    with pytest.raises(KeyReleaseInvalidError, match=match):
        fetch(device, server)
    assert server.requests == ["/v1/keys/challenge"]


@pytest.mark.swtpm
def test_no_attestation_key_means_not_enrolled(tmp_path: Path, device: Device) -> None:
    with running_key_server() as srv:
        srv.devices[DEVICE_ID] = Enrolled(b"", {}, device.emulated.device_key_public())
        info = seal_model(
            io.BytesIO(b"m" * 10), io.BytesIO(), family=FAMILY, version=3, hardware=["emulated"]
        )
        srv.releases[(FAMILY, 3)] = Published(info.header, info.content_key)
        with pytest.raises(NotEnrolledError, match="no attestation key in the TPM"):
            fetch(device, srv)


def test_an_unusable_server_url_or_profile_is_an_error() -> None:
    for url in ("ftp://x", "http://", "http://u:p@host/", "https://h/?q=1"):
        with pytest.raises(KeyReleaseError, match="server_url"):
            KeyReleaseClient(url)
    with pytest.raises(KeyReleaseError, match="no PCRs"):
        fetch_envelope(KeyReleaseClient("http://127.0.0.1:9"), None, "d", (), FAMILY, 1)  # type: ignore[arg-type]


# --- enrollment.json -------------------------------------------------------------------------


def test_check_enrolled(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolledError) as err:
        check_enrolled(tmp_path, "dev-1")
    assert err.value.message == NOT_ENROLLED == "not enrolled: run edgeseal-agent enroll"
    path = tmp_path / ENROLLMENT_FILE
    for text, match in [
        ("{not json", "unreadable"),
        ('{"enrolled": true, "enrolled": true}', "unreadable"),
        ("[]", "does not record"),
        ('{"enrolled": false, "device_id": "dev-1"}', "does not record"),
        ('{"enrolled": true, "device_id": "dev-2"}', "records device 'dev-2', not 'dev-1'"),
    ]:
        path.write_text(text)
        with pytest.raises(NotEnrolledError, match=match) as err:
            check_enrolled(tmp_path, "dev-1")
        assert NOT_ENROLLED in err.value.message
    path.write_bytes(b" " * (65 * 1024))
    with pytest.raises(NotEnrolledError, match="unreadable"):
        check_enrolled(tmp_path, "dev-1")
    record = {"version": 1, "enrolled": True, "device_id": "dev-1", "pcrs": {}}
    path.write_text(json.dumps(record))
    assert check_enrolled(tmp_path, "dev-1") == record
