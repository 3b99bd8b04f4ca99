"""Enrollment and the technician's offline attestation, end to end through the real commands.

An emulated device on swtpm (EK certificate from the test fleet's local CA)
is enrolled with ``edgeseal-agent enroll`` against the real OTA server on
loopback (credential activation in the TPM, a quote of its boot PCRs); the
operator exports a signed trust bundle with ``edgeseal-server attest``; the
running agent answers on one end of a real socat pty pair and the
technician's ``edgeseal attest`` on the other end checks it offline.

Enrollment also registers the device's PCR policy authority (the embedded
team's key), so a boot state it approves later (``EmulatedDevice.approve()``,
an OS update) passes the technician's check and gets attested keys, while a
state nobody approved still fails.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from agent_fleet import AGENT, BIN, AgentDevice, Fleet, agent_env, fleet

from components import require_executable
from edgeseal.hardware.localca import LocalCA
from edgeseal.hardware.policy import authority_fingerprint
from edgeseal.hardware.serial_link import SerialLink

SERVER = str(BIN / "edgeseal-server")
TECHNICIAN = str(BIN / "edgeseal")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), env=env or agent_env(), capture_output=True, text=True, timeout=120, check=False
    )


def server_cli(f: Fleet, *argv: str) -> subprocess.CompletedProcess[str]:
    done = run(SERVER, "--data", str(f.server.data_dir), *argv)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def trust_ek_ca(f: Fleet, ca_dir: Path) -> None:
    ca = LocalCA(ca_dir)
    for cert in (ca.root_cert_path, ca.issuer_cert_path):
        server_cli(f, "ek-ca", "add", str(cert))


def enroll(f: Fleet, dev: AgentDevice, tmp: Path) -> subprocess.CompletedProcess[str]:
    token = tmp / f"{dev.name}-operator.token"
    token.write_text(f.server.token("operator"))
    return run(AGENT, "enroll", "--config", str(dev.config), "--token-file", str(token))


def export_bundle(f: Fleet, tmp: Path) -> tuple[Path, Path]:
    bundle, key = tmp / "trust.json", tmp / "bundle-key.pem"
    server_cli(f, "attest", "bundle", "--out", str(bundle))
    server_cli(f, "attest", "bundle-key", "--out", str(key))
    return bundle, key


def attest(link: SerialLink, bundle: Path, key: Path) -> tuple[int, dict[str, Any]]:
    done = run(
        TECHNICIAN, "attest", "--port", str(link.technician_path), "--bundle", str(bundle),
        "--bundle-key", str(key), "--timeout", "20", "--json",
    )  # fmt: skip
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def failed(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}


def with_console(dev: AgentDevice, link: SerialLink) -> None:
    drop_in = dev.config.parent / f"{dev.config.name}.d"
    drop_in.mkdir(exist_ok=True)
    (drop_in / "20-console.toml").write_text(f'version = 1\nconsole_port = "{link.device_path}"\n')


def test_enrolled_device_passes_then_fails_after_tamper_and_revocation(
    tmp_path: Path, swtpm_ca: Path
) -> None:
    require_executable("socat", "socat")
    with fleet(tmp_path) as f, SerialLink.start(tmp_path / "serial") as link:
        dev = f.add_device("attest-1", swtpm_ca)
        try:
            f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            trust_ek_ca(f, swtpm_ca)
            done = enroll(f, dev, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
            bundle, key = export_bundle(f, tmp_path)
            with_console(dev, link)

            with dev.daemon():
                code, report = attest(link, bundle, key)
            assert code == 0, report
            assert report["passed"] is True
            assert report["device_id"] == "attest-1"

            # Someone swaps the kernel: the boot PCRs no longer match the enrolled
            # baseline, and the technician's check names the PCR; the TPM keeps the
            # model key locked, and the model check says the device has a model it
            # cannot open, and why.
            dev.device.tamper("kernel")
            dev.device.restart()  # the reboot measures the new kernel
            with dev.daemon():
                code, report = attest(link, bundle, key)
            state = json.loads((dev.state_dir / "state.json").read_text())
            assert state["boot_attempts"] == 0, state  # a locked key is not the model's fault
            assert code == 1
            assert set(failed(report)) == {"boot-state", "model"}, report
            assert failed(report)["boot-state"].startswith("PCR 9 differs"), report
            model = failed(report)["model"]
            assert model.startswith("no model served: PCR policy check failed: PCR 9 "), report
            assert "not bound" not in model, report  # the quote covers the reason

            # The operator revokes the device: a fresh bundle fails it whatever it answers.
            server_cli(f, "device", "revoke", "--id", "attest-1")
            bundle, key = export_bundle(f, tmp_path)
            with dev.daemon():
                code, report = attest(link, bundle, key)
            assert code == 1
            assert any("revoked" in d for d in failed(report).values()), report
        finally:
            dev.device.stop()


def test_enrollment_refused_for_an_ek_from_an_untrusted_ca(tmp_path: Path, swtpm_ca: Path) -> None:
    with fleet(tmp_path) as f:
        dev = f.add_device("attest-2", swtpm_ca)
        try:
            done = enroll(f, dev, tmp_path)  # no ek-ca added: the server trusts no EK vendor
            assert done.returncode == 1
            assert "EK" in done.stdout + done.stderr
            assert not (dev.state_dir / "enrollment.json").exists()
        finally:
            dev.device.stop()


def test_a_device_missing_from_the_bundle_fails(tmp_path: Path, swtpm_ca: Path) -> None:
    require_executable("socat", "socat")
    with fleet(tmp_path) as f, SerialLink.start(tmp_path / "serial") as link:
        dev = f.add_device("attest-3", swtpm_ca)
        try:
            f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            with dev.device.backend() as backend:
                backend.create_attestation_key()
            bundle, key = export_bundle(f, tmp_path)
            with_console(dev, link)
            with dev.daemon():
                code, report = attest(link, bundle, key)
            assert code == 1
            assert any("enrolled" in d for d in failed(report).values()), report
        finally:
            dev.device.stop()


def test_an_approved_os_update_passes_attestation_and_an_unapproved_one_fails(
    tmp_path: Path, swtpm_ca: Path
) -> None:
    """The embedded team approves a new kernel (signs the PCR policy for it with the
    authority the device enrolled): after the reboot the agent opens its model with
    that policy and reports it, and the technician's check passes, saying the state
    was approved. Another kernel that nobody approved fails, saying why the policy
    does not count."""
    require_executable("socat", "socat")
    with fleet(tmp_path) as f, SerialLink.start(tmp_path / "serial") as link:
        dev = f.add_device("attest-5", swtpm_ca)
        try:
            f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            trust_ek_ca(f, swtpm_ca)
            done = enroll(f, dev, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
            fingerprint = authority_fingerprint(dev.device.signed_policy().authority)
            assert f"PCR policy authority: {fingerprint}" in done.stdout
            record = json.loads((dev.state_dir / "enrollment.json").read_text())
            assert record["pcr_policy_authority_fingerprint"] == fingerprint
            bundle, key = export_bundle(f, tmp_path)
            with_console(dev, link)

            dev.device.tamper("kernel")
            dev.device.approve()  # an approved OS update, signed before its reboot
            dev.device.restart()
            with dev.daemon():
                code, report = attest(link, bundle, key)
            assert code == 0, report
            assert report["passed"] is True
            boot = {c["name"]: c["detail"] for c in report["checks"]}["boot-state"]
            assert "9 changed since enrollment" in boot, report
            assert boot.endswith(f"a state approved by policy authority {fingerprint}"), report

            dev.device.tamper("kernel")  # and then one nobody approved
            dev.device.restart()
            with dev.daemon():
                code, report = attest(link, bundle, key)
            assert code == 1
            boot = failed(report)["boot-state"]
            assert boot.startswith("PCR 9 differs from the enrollment baseline"), report
            assert "signed PCR policy does not approve these values" in boot, report
        finally:
            dev.device.stop()


def test_attested_release_needs_the_enrolled_boot_state_and_an_unrevoked_device(
    tmp_path: Path, swtpm_ca: Path
) -> None:
    """An ``attested`` release's key comes from the server only after a fresh quote.

    The boot state must equal the enrollment baseline or a state the device's
    enrolled policy authority approved: after an approved kernel update the
    agent sends the new signed policy and attested releases install like
    envelope ones; a revoked device gets neither envelopes nor released keys.
    """
    with fleet(tmp_path) as f:
        dev = f.add_device("attest-4", swtpm_ca)
        try:
            f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            trust_ek_ca(f, swtpm_ca)
            done = enroll(f, dev, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr

            f.publish(2, key_release="attested")
            result = dev.check_now()
            assert (result["outcome"], result["version"]) == ("installed", 2), result

            dev.device.tamper("kernel")
            dev.device.approve()  # an approved OS update: the device key keeps working,
            dev.device.restart()  # and the server accepts the state its authority signed
            f.publish(3, key_release="attested")
            result = dev.check_now()
            assert (result["outcome"], result["version"]) == ("installed", 3), result
            f.publish(4)
            result = dev.check_now()
            assert (result["outcome"], result["version"]) == ("installed", 4), result

            server_cli(f, "device", "revoke", "--id", "attest-4")
            f.publish(5, key_release="attested")
            result = dev.check_now()
            assert result["outcome"] == "refused", result
            assert "revoked" in result["reason"], result
            f.publish(6)
            result = dev.check_now()
            assert result["outcome"] != "installed", result  # no envelope for a revoked device
            assert dev.status()["active_version"] == 4
        finally:
            dev.device.stop()
