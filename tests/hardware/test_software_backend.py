"""What only the software backend does: say it is insecure, keep its files private.

Its policy behaviour is tested with the TPM's in test_tpm_backend.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.errors import HardwareError, PolicyCheckError
from edgeseal.hardware.policy import sign_pcr_policy
from edgeseal.hardware.software import MARKER, SoftwareBackend


def test_every_log_line_says_insecure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edgeseal.hardware.software")
    with open_backend(f"software:{tmp_path / 'state'}") as backend:
        assert backend.insecure is True
        assert backend.kind == "software"
        backend.create_device_key(None)
        backend.unseal(backend.seal(b"k"))
        backend.nv_counter_define(0x01500000)
        assert isinstance(backend, SoftwareBackend)
        backend.simulate_reboot()
    records = [r for r in caplog.records if r.name == "edgeseal.hardware.software"]
    assert len(records) >= 4
    assert all(r.getMessage().startswith(MARKER) for r in records)
    assert any(r.levelno == logging.WARNING for r in records)


def test_state_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with SoftwareBackend(state) as backend:
        backend.create_device_key(None)
        backend.pcr_extend(9, bytes(32))
        backend.nv_counter_define(0x01500000)
    files = list(state.iterdir())
    assert {f.name for f in files} >= {"storage.key", "device_key.json", "pcrs.json", "nv.json"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_tampered_blob_header_does_not_authenticate(tmp_path: Path) -> None:
    """Rewriting the recorded PCR values of a blob must not bypass the PCR check."""
    with SoftwareBackend(tmp_path / "state") as backend:
        backend.pcr_extend(9, hashlib.sha256(b"v1").digest())
        blob = backend.seal(b"content key", pcrs=[9])
        backend.pcr_extend(9, hashlib.sha256(b"evil").digest())
        with pytest.raises(PolicyCheckError, match="PCR 9 changed since sealing"):
            backend.unseal(blob)
        doc = json.loads(blob)
        doc["pcrs"]["9"] = backend.pcr_read([9]).digests[9].hex()
        with pytest.raises(HardwareError, match="does not authenticate"):
            backend.unseal(json.dumps(doc).encode())


def test_blob_of_another_state_dir_is_refused(tmp_path: Path) -> None:
    with SoftwareBackend(tmp_path / "a") as a:
        blob = a.seal(b"k")
    with SoftwareBackend(tmp_path / "b") as b, pytest.raises(HardwareError, match="another state"):
        b.unseal(blob)


def test_rewritten_authority_does_not_help(tmp_path: Path) -> None:
    authority = ec.generate_private_key(ec.SECP256R1())
    attacker = ec.generate_private_key(ec.SECP256R1())
    with SoftwareBackend(tmp_path / "state") as backend:
        blob = backend.seal(b"k", authority=authority.public_key())
        doc = json.loads(blob)
        doc["authority"] = json.loads(sign_pcr_policy(attacker, backend.pcr_read([9])).to_bytes())[
            "authority"
        ]
        forged = sign_pcr_policy(attacker, backend.pcr_read([9]))
        with pytest.raises(HardwareError, match="does not authenticate"):
            backend.unseal(json.dumps(doc).encode(), approved=forged)


def test_corrupt_state_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with SoftwareBackend(state) as backend:
        backend.pcr_extend(9, bytes(32))
    (state / "pcrs.json").write_text("{not json")
    with SoftwareBackend(state) as backend, pytest.raises(HardwareError, match="corrupt"):
        backend.pcr_read([9])
    (state / "storage.key").write_bytes(base64.b64encode(b"short"))
    with pytest.raises(HardwareError, match=r"storage\.key is corrupt"):
        SoftwareBackend(state)


def test_closed_backend_refuses_work(tmp_path: Path) -> None:
    backend = SoftwareBackend(tmp_path / "state")
    backend.close()
    with pytest.raises(HardwareError, match="closed"):
        backend.pcr_read([0])
    assert backend.ek_certificates() == []
