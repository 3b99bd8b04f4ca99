"""The project-local swtpm CA: our own directory, refusals, and swtpm_setup failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components import require_executable
from edgeseal.hardware.errors import EmulatorError
from edgeseal.hardware.localca import (
    LOCALCA_CONFIG,
    SETUP_CONFIG,
    TPM2_STATE_FILE,
    LocalCA,
    ensure_local_ca,
    provision_swtpm_state,
)

pytestmark = pytest.mark.swtpm


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    """A CA whose keys exist (made by provisioning one device)."""
    require_executable("swtpm", "swtpm")
    require_executable("swtpm_setup", "swtpm-tools")
    base = tmp_path_factory.mktemp("localca")
    return provision_swtpm_state(base / "first", base / "ca", device_id="first")


def test_config_points_at_our_directory_only(tmp_path: Path) -> None:
    require_executable("swtpm_localca", "swtpm-tools")
    ca = ensure_local_ca(tmp_path / "ca")
    assert ca.ca_dir == (tmp_path / "ca").resolve()
    assert (ca.ca_dir.stat().st_mode & 0o777) == 0o700
    setup = (ca.ca_dir / SETUP_CONFIG).read_text()
    localca = (ca.ca_dir / LOCALCA_CONFIG).read_text()
    assert f"create_certs_tool_config = {ca.ca_dir / LOCALCA_CONFIG}" in setup
    assert f"statedir = {ca.ca_dir}" in localca
    assert "/var/lib" not in setup + localca
    assert not ca.exists()
    with pytest.raises(EmulatorError, match="created when the first emulated device"):
        ca.certificates_pem()
    assert ensure_local_ca(tmp_path / "ca") == ca  # idempotent


def test_provisioned_state_and_ca_certificates(ca: LocalCA) -> None:
    assert ca.exists()
    root, issuer = ca.root_certificate(), ca.issuer_certificate()
    assert issuer.issuer == root.subject
    assert (ca.ca_dir.parent / "first" / TPM2_STATE_FILE).is_file()


def test_refuses_to_overwrite_a_tpm_state(ca: LocalCA) -> None:
    with pytest.raises(EmulatorError, match="already holds a TPM state"):
        provision_swtpm_state(ca.ca_dir.parent / "first", ca.ca_dir, device_id="again")


@pytest.mark.parametrize("device_id", ["", "a b", "../x", "x" * 65, "-lead"])
def test_refuses_bad_device_ids(tmp_path: Path, ca: LocalCA, device_id: str) -> None:
    with pytest.raises(EmulatorError, match="device id"):
        provision_swtpm_state(tmp_path / "state", ca.ca_dir, device_id=device_id)


def test_swtpm_setup_failure_is_summarised(tmp_path: Path, ca: LocalCA) -> None:
    broken = tmp_path / "broken-ca"
    shutil.copytree(ca.ca_dir, broken)
    (broken / "signkey.pem").write_text("not a key\n")
    with pytest.raises(EmulatorError) as info:
        provision_swtpm_state(tmp_path / "state", broken, device_id="dev")
    text = info.value.diagnostics()
    assert text.startswith("swtpm_setup failed for")
    assert "signing key" in text
    assert "Invoking" not in text  # kilobytes of hex command lines are left out
    assert not (tmp_path / "state" / TPM2_STATE_FILE).exists()
