"""Shared builders for the install tests, and a driver the crash-injection test runs as a child.

As a program (``python install_driver.py DEVICE_DIR STATE_DIR [RELEASE_DIR]``) it plays
one start of the agent on an emulated device: ``recover()`` then ``load_active()``,
printing one JSON line with the served model's digest; then, if RELEASE_DIR is
given, it opens that release's envelope in the TPM and installs it (the trial
loads the slot into a real TFLite interpreter and checks one inference against
numpy). With ``EDGESEAL_FAULT_AT`` set, the install SIGKILLs the process at that step.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseal.device_agent.install import Installer, Release
from edgeseal.device_agent.recipient import TPMRecipient
from edgeseal.device_agent.slots import SlotInfo
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.sdk import modelgen
from edgeseal.sdk.envelope import open_envelope, seal_envelope
from edgeseal.sdk.sealed import ContentKey, inspect_sealed_model, seal_model


@dataclass(frozen=True)
class Built:
    """A sealed release on disk, with what the TUF layer would have told the agent."""

    esm: Path
    key: ContentKey
    release: Release
    plaintext: bytes
    seed: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.plaintext).hexdigest()


def build_release(
    directory: Path,
    *,
    version: int,
    seed: int | None = None,
    family: str = "demo",
    hardware: tuple[str, ...] = ("emulated",),
) -> Built:
    """A real TFLite model (one dense layer), sealed; the release info TUF would carry."""
    seed = version if seed is None else seed
    weights, bias = modelgen.random_layers([4, 3], seed=seed)[0]
    plaintext = modelgen.dense_model(weights, bias)
    out = io.BytesIO()
    info = seal_model(
        io.BytesIO(plaintext), out, family=family, version=version, hardware=list(hardware)
    )
    directory.mkdir(parents=True, exist_ok=True)
    esm = directory / f"{family}-{version}.esm"
    esm.write_bytes(out.getvalue())
    release = Release(
        family=family,
        version=version,
        target_path=f"{family}/{version}/{esm.name}",
        sealed_sha256=hashlib.sha256(out.getvalue()).hexdigest(),
        plaintext_digest=info.header.plaintext_digest.hex(),
        digest_alg=info.header.digest_alg,
    )
    return Built(esm, info.content_key, release, plaintext, seed)


def write_release_dir(built: Built, directory: Path, device_public: object) -> None:
    """What the OTA server publishes for one device: the .esm, its envelope, the release."""
    with built.esm.open("rb") as handle:
        header = inspect_sealed_model(handle)
    envelope = seal_envelope(built.key, device_public, header)  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.esm").write_bytes(built.esm.read_bytes())
    (directory / "envelope").write_bytes(envelope)
    rel = built.release
    doc = {
        "family": rel.family,
        "version": rel.version,
        "target_path": rel.target_path,
        "sealed_sha256": rel.sealed_sha256,
        "plaintext_digest": rel.plaintext_digest,
        "digest_alg": rel.digest_alg,
        "seed": built.seed,
    }
    (directory / "release.json").write_text(json.dumps(doc))


def content_key_from_envelope(
    esm: Path, envelope: bytes, backend: KeyBackend, approved: SignedPCRPolicy
) -> ContentKey:
    """Unwrap the envelope in the TPM (TPM2_ECDH_ZGen under the signed PCR policy)."""
    with esm.open("rb") as handle:
        header = inspect_sealed_model(handle)
    return open_envelope(envelope, TPMRecipient(backend, approved), header)


def tflite_trial(installer: Installer, seed: int) -> object:
    """The health check: load the slot (restart path) into TFLite, compare with numpy."""

    def trial(slot: SlotInfo) -> None:
        from edgeseal.sdk.runtime import load_model

        loaded = installer.load_slot(slot.name)
        model = load_model(loaded.plaintext)
        weights, bias = modelgen.random_layers([4, 3], seed=seed)[0]
        x = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)
        (got,) = model.run([x])
        want = modelgen.reference_dense(x, weights, bias, activation="relu")
        if not np.allclose(got, want, atol=1e-5):
            raise AssertionError(f"model output {got} is not {want}")

    return trial


def main(argv: list[str]) -> int:
    from edgeseal.hardware.emulated import EmulatedDevice

    device = EmulatedDevice(Path(argv[0]))
    state_dir = Path(argv[1])
    approved = device.signed_policy()
    with device.backend() as backend:
        installer = Installer(state_dir, backend, approved, device.profile.hardware_class)
        report = installer.recover()
        served = None
        if installer.read_state().active is not None:
            loaded = installer.load_active()
            served = {
                "slot": loaded.slot.name,
                "version": loaded.slot.model_version,
                "digest": hashlib.sha256(loaded.plaintext).hexdigest(),
            }
        state = installer.read_state()
        print(
            json.dumps(
                {
                    "served": served,
                    "actions": list(report.actions),
                    "last_update": state.last_update,
                    "floor": installer.floor.floor(),
                }
            ),
            flush=True,
        )
        if len(argv) > 2:
            rel_dir = Path(argv[2])
            doc = json.loads((rel_dir / "release.json").read_text())
            seed = doc.pop("seed")
            esm = rel_dir / "model.esm"
            key = content_key_from_envelope(
                esm, (rel_dir / "envelope").read_bytes(), backend, approved
            )
            installer.install(esm, key, Release(**doc), tflite_trial(installer, seed))  # type: ignore[arg-type]
            print(json.dumps({"installed": doc["version"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
