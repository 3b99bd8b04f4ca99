"""``edgeseal attest`` end to end over a real serial line: a socat pty pair.

The technician's command runs for real (its ``main`` in-process, and once the
installed console script); on the other end of the pty pair a responder thread
plays the agent with :class:`~attest_fixtures.SimulatedDevice`, honest or
forging one thing. socat is required: missing, it fails the test under CI.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from attest_fixtures import SimulatedDevice, bundle_payload, pcr_value, public_pem
from cryptography.hazmat.primitives.asymmetric import ec

from components import require_executable, require_module
from edgeseal.hardware.serial_link import SerialLink
from edgeseal.sdk.cli import main
from edgeseal.sdk.console_wire import (
    ATTEST_REQUEST,
    ATTEST_RESPONSE,
    FrameDecoder,
    canonical_json,
    encode_error,
    encode_frame,
    parse_attest_request,
)
from edgeseal.sdk.trust_bundle import sign_trust_bundle

pytestmark = pytest.mark.serial

#: What the simulated agent writes for a nonce (None: stay silent).
Behaviour = Callable[[bytes], bytes | None]


class Responder:
    """The device end of the line: answers ATTEST_REQUEST frames on a thread."""

    def __init__(self, port: Path, behaviour: Behaviour) -> None:
        import serial

        self.requests = 0
        self._behaviour = behaviour
        self._stop = threading.Event()
        self._port = serial.Serial(str(port), 115200, timeout=0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = FrameDecoder()
        while not self._stop.is_set():
            for frame in decoder.feed(self._port.read(4096)):
                if frame.type != ATTEST_REQUEST:
                    continue
                self.requests += 1
                answer = self._behaviour(parse_attest_request(frame.payload))
                if answer is not None:
                    self._port.write(answer)
                    self._port.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._port.close()


@pytest.fixture
def link(tmp_path: Path) -> Iterator[SerialLink]:
    require_executable("socat", "socat")
    require_module("serial", "pyserial")
    with SerialLink.start(tmp_path / "serial") as pair:
        yield pair


@pytest.fixture
def device() -> SimulatedDevice:
    return SimulatedDevice()


@pytest.fixture
def bundle_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class Technician:
    """Writes the bundle and key files, starts the responder, runs ``edgeseal attest``."""

    def __init__(
        self,
        tmp_path: Path,
        link: SerialLink,
        bundle_key: ec.EllipticCurvePrivateKey,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.tmp_path = tmp_path
        self.link = link
        self.bundle_key = bundle_key
        self.capsys = capsys
        self.key_path = tmp_path / "bundle-key.pem"
        self.key_path.write_bytes(public_pem(bundle_key))
        self.bundle_path = tmp_path / "trust.json"
        self.responder: Responder | None = None

    def bundle(
        self,
        devices: list[dict[str, Any]],
        *,
        expires_in: dt.timedelta = dt.timedelta(days=30),
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        payload = bundle_payload(
            devices, issued=now - dt.timedelta(days=40), expires=now + expires_in
        )
        self.bundle_path.write_bytes(sign_trust_bundle(payload, key or self.bundle_key))

    def answer(self, behaviour: Behaviour) -> Responder:
        self.responder = Responder(self.link.device_path, behaviour)
        return self.responder

    def argv(self, *extra: str, timeout: float = 10) -> list[str]:
        return [
            "attest",
            "--port",
            str(self.link.technician_path),
            "--bundle",
            str(self.bundle_path),
            "--bundle-key",
            str(self.key_path),
            "--timeout",
            str(timeout),
            *extra,
        ]

    def run(self, *extra: str, timeout: float = 10) -> tuple[int, str, str]:
        code = main(self.argv(*extra, timeout=timeout))
        out, err = self.capsys.readouterr()
        return code, out, err

    def close(self) -> None:
        if self.responder is not None:
            self.responder.close()


@pytest.fixture
def technician(
    tmp_path: Path,
    link: SerialLink,
    bundle_key: ec.EllipticCurvePrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Technician]:
    tech = Technician(tmp_path, link, bundle_key, capsys)
    try:
        yield tech
    finally:
        tech.close()


def honest(device: SimulatedDevice) -> Behaviour:
    return lambda nonce: encode_frame(ATTEST_RESPONSE, canonical_json(device.respond(nonce)))


def test_an_honest_device_passes(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()])
    technician.answer(honest(device))
    code, out, err = technician.run()
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "PASS  bundle",
        "PASS  response",
        "PASS  device",
        "PASS  signature",
        "PASS  nonce",
        "PASS  pcrs",
        "PASS  boot-state",
        "PASS  model",
    ]
    assert lines[-1] == "PASS: device cam-0042 is attested (8 checks passed)"


def test_a_tampered_pcr_fails_naming_it(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()])
    device.pcrs[4] = pcr_value(4, "tampered")
    technician.answer(honest(device))
    code, out, _ = technician.run()
    assert code == 1
    assert "FAIL  boot-state: PCR 4 differs from the enrollment baseline" in out
    assert out.splitlines()[-1].startswith("FAIL: device cam-0042 is NOT attested")


def test_an_approved_update_passes_and_an_unapproved_one_says_why(
    technician: Technician, device: SimulatedDevice
) -> None:
    device.policy_authority = ec.generate_private_key(ec.SECP256R1())
    technician.bundle([device.bundle_entry()])
    device.pcrs[4] = pcr_value(4, "updated")
    device.approve_boot()
    technician.answer(honest(device))
    code, out, err = technician.run()
    assert code == 0, out + err
    assert "PASS  boot-state: PCRs 4 changed since enrollment to a state approved by policy " in (
        out
    )
    technician.close()
    device.pcrs[7] = pcr_value(7, "updated")  # not in the signed policy's values
    technician.answer(honest(device))
    code, out, _ = technician.run()
    assert code == 1
    assert "FAIL  boot-state: PCRs 4, 7 differ from the enrollment baseline" in out
    assert "signed PCR policy does not approve these values" in out


def test_a_model_the_device_cannot_open_fails_saying_why(
    technician: Technician, device: SimulatedDevice
) -> None:
    technician.bundle([device.bundle_entry()])
    device.model = None
    device.model_error = "PCR policy check failed: PCR 9 changed since the policy was signed"
    technician.answer(honest(device))
    code, out, _ = technician.run()
    assert code == 1
    assert (
        "FAIL  model: no model served: PCR policy check failed: PCR 9 changed since the "
        "policy was signed"
    ) in out.splitlines()
    assert out.splitlines()[-1].endswith("(1 of 8 checks failed: model)")


def test_a_wrong_nonce_binding_fails(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()])
    replay = device.respond(bytes(32))  # recorded earlier, for another nonce
    technician.answer(lambda _nonce: encode_frame(ATTEST_RESPONSE, canonical_json(replay)))
    code, out, _ = technician.run()
    assert code == 1
    assert "FAIL  nonce: the quote's qualifying data" in out


def test_an_unknown_device_fails(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([SimulatedDevice(device_id="cam-0001").bundle_entry()])
    technician.answer(honest(device))
    code, out, _ = technician.run()
    assert code == 1
    assert "FAIL  device: device cam-0042 is not in the trust bundle" in out


def test_a_revoked_device_fails(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry(revoked=True)])
    technician.answer(honest(device))
    code, out, _ = technician.run()
    assert code == 1
    assert "FAIL  device: device cam-0042 is revoked" in out


def test_an_expired_bundle_fails(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()], expires_in=-dt.timedelta(days=1))
    technician.answer(honest(device))
    code, out, _ = technician.run()
    assert code == 1
    assert "FAIL  bundle: the trust bundle expired at" in out
    assert "PASS  boot-state" in out


def test_a_bundle_signed_by_another_key_is_refused_before_the_port_is_opened(
    technician: Technician, device: SimulatedDevice
) -> None:
    technician.bundle([device.bundle_entry()], key=ec.generate_private_key(ec.SECP256R1()))
    responder = technician.answer(honest(device))
    code, out, err = technician.run()
    assert code == 2
    assert out == ""
    assert "the trust bundle" in err and "not by the pinned bundle key" in err
    time.sleep(0.2)
    assert responder.requests == 0


def test_no_answer_is_exit_2_after_the_timeout(
    technician: Technician, device: SimulatedDevice
) -> None:
    technician.bundle([device.bundle_entry()])
    responder = technician.answer(lambda _nonce: None)
    started = time.monotonic()
    code, _, err = technician.run(timeout=1)
    assert code == 2
    assert time.monotonic() - started >= 1
    assert f"no answer from {technician.link.technician_path} within 1 s" in err
    assert responder.requests == 1


def test_garbage_before_the_answer_is_skipped(
    technician: Technician, device: SimulatedDevice
) -> None:
    technician.bundle([device.bundle_entry()])
    noise = (
        b"[  12.345] systemd[1]: Started edgeseal agent.\r\nlogin: YES\r\n"
        + b"ES\x01\x02\x00\x00\xff\xff"  # a bogus header announcing 64 KiB
        + b"\x00\xff" * 40
        + encode_frame(ATTEST_RESPONSE, b"{}")[:-1]  # a frame with its CRC cut
    )
    technician.answer(lambda nonce: noise + honest(device)(nonce))
    code, out, err = technician.run()
    assert code == 0, out + err
    assert out.splitlines()[-1].startswith("PASS")


def test_an_error_frame_is_exit_2(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()])
    technician.answer(lambda _nonce: encode_error("no attestation key in the TPM"))
    code, _, err = technician.run()
    assert code == 2
    assert "the device refused: no attestation key in the TPM" in err


def test_json_report(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()])
    device.pcrs[7] = pcr_value(7, "tampered")
    technician.answer(honest(device))
    code, out, _ = technician.run("--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["verdict"] == "FAIL" and doc["device_id"] == "cam-0042"
    assert doc["port"] == str(technician.link.technician_path)
    failed = {c["name"]: c["detail"] for c in doc["checks"] if not c["passed"]}
    assert list(failed) == ["boot-state"] and "PCR 7" in failed["boot-state"]


def test_the_console_script(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()])
    technician.answer(honest(device))
    script = Path(sys.executable).with_name("edgeseal")
    if not script.exists():
        pytest.skip("the edgeseal console script is not installed next to this python")
    result = subprocess.run(
        [str(script), *technician.argv("--json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["verdict"] == "PASS"


def test_an_unopenable_port_is_exit_2(technician: Technician, device: SimulatedDevice) -> None:
    technician.bundle([device.bundle_entry()])
    code = main(
        [
            *technician.argv()[:1],
            "--port",
            str(technician.tmp_path / "ttyNONE"),
            *technician.argv()[3:],
        ]
    )
    _, err = technician.capsys.readouterr()
    assert code == 2
    assert "cannot open the serial port" in err


def test_missing_pyserial_names_the_extra(
    technician: Technician, device: SimulatedDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    technician.bundle([device.bundle_entry()])
    monkeypatch.setitem(sys.modules, "serial", None)
    code, _, err = technician.run()
    assert code == 2
    assert "pip install 'edgeseal[technician]'" in err


def test_an_unreadable_bundle_key_is_exit_2(
    technician: Technician, device: SimulatedDevice
) -> None:
    technician.bundle([device.bundle_entry()])
    technician.key_path.write_text("not a key")
    code, _, err = technician.run()
    assert code == 2
    assert "is not a PEM public key" in err
