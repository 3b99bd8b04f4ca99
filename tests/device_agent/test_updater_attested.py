"""The update cycle with an ``attested`` release: the key comes from the server on a fresh quote.

A real emulated device (swtpm), a real sealed TFLite model and its health check,
the real installer; the TUF layer is a simulator with the production client's
interface (the TUF path itself is covered by the tuf_client tests and
tests/integration), and the key release goes to the fake server of
key_server.py, which verifies the quote and seals a real envelope. The full
flow against the real OTA server is the integration tests' job.

Covered, in the order a device meets them: not enrolled (refused before any
download, not asked again by this process); a server that is down (failed,
retried next cycle); a refusal (refused with the server's message, not asked
again until a restart); after a restart, the release is installed.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from key_server import PROFILE_PCRS, Enrolled, FakeKeyServer, Published, running_key_server
from tuf.api.metadata import TargetFile

from components import require_module
from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.enroll import EnrollmentRecord, write_enrollment
from edgeseal.device_agent.install import Installer
from edgeseal.device_agent.update_outcome import PHASES
from edgeseal.device_agent.updater import Updater
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.emulated import EmulatedDevice
from edgeseal.sdk import modelgen
from edgeseal.sdk.golden import GoldenTensor, HealthCheck
from edgeseal.sdk.releases import PlaintextDigest, ReleaseMetadata
from edgeseal.sdk.runtime import load_model
from edgeseal.sdk.sealed import seal_model

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]

FAMILY = "demo"
DEVICE_ID = "att-1"


class FakeTUFClient:
    """The part of AgentTUFClient the updater uses, over targets held in memory."""

    def __init__(self, downloads: Path) -> None:
        self.downloads = downloads
        self.targets: dict[str, tuple[TargetFile, bytes]] = {}
        self.fetched: list[str] = []

    def publish(self, meta: ReleaseMetadata, sealed: bytes) -> None:
        info = TargetFile(
            len(sealed),
            {"sha256": hashlib.sha256(sealed).hexdigest()},
            meta.target_path,
            unrecognized_fields={"custom": meta.to_custom()},
        )
        self.targets[meta.target_path] = (info, sealed)

    def refresh(self) -> None:
        pass

    def iter_family_targets(self, family: str) -> list[tuple[str, TargetFile]]:
        return [(p, info) for p, (info, _) in self.targets.items() if p.startswith(family + "/")]

    def get_targetinfo(self, path: str) -> TargetFile:
        raise AssertionError(f"an attested release has no envelope target ({path})")

    def download_target(self, info: TargetFile) -> Path:
        self.fetched.append(info.path)
        self.downloads.mkdir(parents=True, exist_ok=True)
        local = self.downloads / Path(info.path).name
        local.write_bytes(self.targets[info.path][1])
        return local


def attested_release(version: int) -> tuple[ReleaseMetadata, bytes, Published]:
    """A real TFLite model, sealed, with golden outputs from the real runtime."""
    weights, bias = modelgen.random_layers([4, 3], seed=version)[0]
    model = modelgen.dense_model(weights, bias)
    x = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)
    (y,) = load_model(model).run([x])
    out = io.BytesIO()
    info = seal_model(io.BytesIO(model), out, family=FAMILY, version=version, hardware=["emulated"])
    header = info.header
    meta = ReleaseMetadata(
        family=FAMILY,
        version=version,
        hardware=("emulated",),
        channel="stable",
        rollout_percent=100,
        plaintext=PlaintextDigest(
            header.digest_alg, header.plaintext_digest, header.plaintext_size
        ),
        min_agent_version="0.1.0",
        health_check=HealthCheck(
            inputs=(GoldenTensor.from_numpy(x),),
            outputs=(GoldenTensor.from_numpy(y),),
            tolerance=1e-4,
            latency_budget_ms=5000,
        ),
        key_release="attested",
    )
    return meta, out.getvalue(), Published(header, info.content_key)


class Rig:
    def __init__(
        self, tmp: Path, device: EmulatedDevice, backend: KeyBackend, server: FakeKeyServer
    ) -> None:
        self.device = device
        self.backend = backend
        self.server = server
        self.state_dir = tmp / "state"
        self.tuf = FakeTUFClient(tmp / "downloads")
        self.config = AgentConfig(
            device_id=DEVICE_ID,
            state_dir=self.state_dir,
            key_backend=f"emulated:{device.state_dir}",
            profile="emulated",
            family=FAMILY,
            server_url=server.url,
        )
        self.installer = Installer(
            self.state_dir, backend, device.signed_policy(), device.profile.hardware_class
        )

    def updater(self) -> Updater:
        """A new Updater: what an agent (re)start makes."""
        return Updater(
            self.config,
            self.backend,
            self.device.signed_policy(),
            self.installer,
            tuf_client_factory=lambda: self.tuf,  # type: ignore[arg-type,return-value]
            attestation_pcrs=self.device.profile.policy_pcrs,
        )

    def last_error(self) -> dict[str, Any]:
        error = self.installer.read_state().last_error
        assert error is not None
        return error


@pytest.fixture
def rig(tmp_path: Path, swtpm_ca: Path) -> Iterator[Rig]:
    require_module("ai_edge_litert", "ai-edge-litert")
    device = EmulatedDevice.create(
        tmp_path / "dev", device_id=DEVICE_ID, ca_dir=swtpm_ca, running=True
    )
    try:
        with device.backend() as backend, running_key_server() as server:
            ak_public = backend.create_attestation_key()
            values = backend.pcr_read(PROFILE_PCRS)
            server.devices[DEVICE_ID] = Enrolled(
                ak_public,
                {i: values.digests[i] for i in PROFILE_PCRS},
                device.device_key_public(),
            )
            yield Rig(tmp_path, device, backend, server)
    finally:
        device.stop()
        shutil.rmtree(tmp_path / "downloads", ignore_errors=True)


def enroll(rig: Rig) -> None:
    """What ``edgeseal-agent enroll`` leaves behind (the handshake is test_enroll_cmd's)."""
    record = EnrollmentRecord(
        device_id=DEVICE_ID,
        server=rig.server.url,
        ak_name="00",
        ak_fingerprint="00",
        ek_certificate_sha256="00",
        pcrs={},
        enrolled_at="2025-01-01T00:00:00Z",
        ak_created=True,
    )
    write_enrollment(rig.state_dir, record)


def test_attested_release_from_not_enrolled_to_installed(rig: Rig) -> None:
    meta, sealed, published = attested_release(1)
    rig.tuf.publish(meta, sealed)
    rig.server.releases[(FAMILY, 1)] = published

    # not enrolled: refused before the model is downloaded or the server asked
    updater = rig.updater()
    result = updater.check_now()
    assert (result.outcome, result.version) == ("refused", 1), result
    assert "not enrolled: run edgeseal-agent enroll" in (result.reason or "")
    assert rig.tuf.fetched == [] and rig.server.requests == []
    error = rig.last_error()
    assert (error["step"], error["code"]) == ("envelope", "not-enrolled")
    again = updater.check_now()
    assert again.outcome == "no-update" and "not asking again" in (again.reason or "")

    # enrolled (enroll needs the agent stopped: a restart); the server is down: retried
    enroll(rig)
    updater = rig.updater()
    rig.server.mode = "unavailable"
    result = updater.check_now()
    assert result.outcome == "failed", result
    assert "503" in (result.reason or "") and "database is down" in (result.reason or "")
    assert rig.last_error()["code"] == "key-release-failed"
    assert rig.server.requests == ["/v1/keys/challenge"]
    assert rig.tuf.fetched == [meta.target_path]

    # the server refuses (revoked): refused with its message, and not asked again ...
    rig.server.mode = "refuse"
    result = updater.check_now()
    assert result.outcome == "refused", result
    assert f"device {DEVICE_ID} is revoked" in (result.reason or "")
    error = rig.last_error()
    assert (error["step"], error["code"]) == ("envelope", "key-release-refused")
    assert f"device {DEVICE_ID} is revoked" in error["message"]
    asked = len(rig.server.requests)
    again = updater.check_now()
    assert again.outcome == "no-update" and "restart" in (again.reason or "")
    assert len(rig.server.requests) == asked
    assert rig.installer.read_state().active is None

    # ... until the agent restarts: then the key is released and the model installed
    rig.server.mode = "ok"
    result = rig.updater().check_now()
    assert (result.outcome, result.version) == ("installed", 1), result
    assert set(result.phases) == set(PHASES)
    assert rig.server.problems == [] and rig.server.released == 1
    # every release request carried the signed PCR policy the updater opens the key with
    assert set(rig.server.policies) == {rig.device.signed_policy().to_bytes()}
    state = rig.installer.read_state()
    assert state.active is not None
    assert rig.installer.slot_info(state.active).model_version == 1


def test_a_server_asking_for_other_pcrs_is_refused_and_asked_again(rig: Rig) -> None:
    meta, sealed, published = attested_release(2)
    rig.tuf.publish(meta, sealed)
    rig.server.releases[(FAMILY, 2)] = published
    enroll(rig)
    rig.server.mode = "wrong-pcrs"
    updater = rig.updater()
    result = updater.check_now()
    assert result.outcome == "refused", result
    assert "0, 4, 9, 15 only" in (result.reason or "")
    assert rig.last_error()["code"] == "key-release-invalid"
    assert rig.server.requests == ["/v1/keys/challenge"]
    # a misconfigured server may be fixed: the next cycle asks again
    rig.server.mode = "ok"
    assert updater.check_now().outcome == "installed"
