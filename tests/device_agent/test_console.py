"""The serial console responder: pure request rules, then the real thing on a socat pty pair
answering with quotes from a real swtpm that the technician's verifier accepts."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from components import require_executable, require_module
from edgeseal.device_agent.console import (
    MAX_REQUEST_BYTES,
    AttestResponder,
    ConsoleRequestError,
    RateLimiter,
    SerialConsole,
    parse_request,
)
from edgeseal.device_agent.locked_backend import LockedBackend
from edgeseal.device_agent.slot_state import LoadedModel
from edgeseal.device_agent.slots import SlotInfo
from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.errors import KeyNotFoundError, PolicyCheckError, TPMCommandError
from edgeseal.hardware.policy import PCRValues, sign_pcr_policy
from edgeseal.hardware.profiles import load_profile
from edgeseal.hardware.swtpm import SwtpmProcess
from edgeseal.sdk import console_wire
from edgeseal.sdk.console_wire import (
    ATTEST_REQUEST,
    ATTEST_RESPONSE,
    ERROR,
    Frame,
    FrameDecoder,
    attest_binding,
    encode_attest_request,
    encode_frame,
)
from edgeseal.sdk.quote import verify_quote

PCRS = load_profile("emulated").policy_pcrs
#: The signed PCR policy the agent runs under (the bytes SignedPCRPolicy.to_bytes() writes).
POLICY = sign_pcr_policy(
    ec.generate_private_key(ec.SECP256R1()),
    PCRValues("sha256", {i: bytes([i]) * 32 for i in PCRS}),
).to_bytes()
STATUS: dict[str, Any] = {
    "device_id": "console-1",
    "agent_version": "9.9.9",
    "model": {
        "family": "demo",
        "version": 3,
        "digest_alg": "sha256",
        "plaintext_digest": "ab" * 32,
        "slot": "b",
    },
    "floor": 2,
    "pcr_policy": POLICY,
}
RESPONSE_KEYS = {
    "device_id",
    "agent_version",
    "time",
    "model",
    "model_error",
    "floor",
    "pcr_policy",
    "pcr_bank",
    "pcrs",
    "quote",
}
#: What the TPM says when the boot is outside the signed PCR policy (the daemon's start error).
LOCKED = "PCR policy check failed: PCR 9 changed since the policy was signed"


def request_payload(nonce: bytes) -> bytes:
    return json.dumps({"nonce": nonce.hex()}).encode()


def error_text(frame: Frame) -> str:
    assert frame.type == ERROR, frame
    text: str = json.loads(frame.payload)["error"]
    return text


# --- pure rules -------------------------------------------------------------------------------


def test_parse_request_accepts_exactly_a_nonce() -> None:
    nonce = secrets.token_bytes(32)
    assert parse_request(request_payload(nonce)) == nonce


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not json", "JSON"),
        (b"\xff\xfe", "JSON"),
        (b"[1, 2]", "nonce"),
        (json.dumps({"nonce": "ab" * 31}).encode(), "64"),
        (json.dumps({"nonce": "ab" * 33}).encode(), "64"),
        (json.dumps({"nonce": "zz" * 32}).encode(), "64"),
        (json.dumps({"nonce": 7}).encode(), "64"),
        (json.dumps({"nonce": "ab" * 32, "extra": 1}).encode(), "nonce"),
        (b'{"nonce": "' + b"a" * 2000 + b'"}', f"{MAX_REQUEST_BYTES}"),
    ],
)
def test_parse_request_refusals(payload: bytes, match: str) -> None:
    with pytest.raises(ConsoleRequestError, match=match):
        parse_request(payload)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=2, clock=clock)
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    clock.now += 0.5  # one token back
    assert [limiter.allow() for _ in range(2)] == [True, False]
    clock.now += 60  # never more than the burst
    assert [limiter.allow() for _ in range(3)] == [True, True, False]


@dataclass
class FakeTPM:
    """Just what the responder uses: pcr_read and quote (optionally refusing)."""

    refuse: Exception | None = None
    quotes: int = 0

    def pcr_read(self, indices: Sequence[int]) -> PCRValues:
        return PCRValues("sha256", {i: bytes([i]) * 32 for i in indices})

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        if self.refuse is not None:
            raise self.refuse
        self.quotes += 1
        return b"attest:" + qualifying_data, b"sig"


def responder(tpm: FakeTPM, *, status: Any = None, burst: int = 100) -> AttestResponder:
    return AttestResponder(
        tpm,  # type: ignore[arg-type]
        PCRS,
        status or (lambda: STATUS),
        limiter=RateLimiter(rate=1000.0, burst=burst),
    )


def decode_one(data: bytes | None) -> Frame:
    assert data is not None
    (frame,) = FrameDecoder().feed(data)
    return frame


def test_responder_binds_the_status_to_the_nonce() -> None:
    tpm = FakeTPM()
    nonce = secrets.token_bytes(32)
    frame = decode_one(responder(tpm).handle(ATTEST_REQUEST, request_payload(nonce)))
    assert frame.type == ATTEST_RESPONSE
    doc = json.loads(frame.payload)
    assert set(doc) == RESPONSE_KEYS
    status = {k: v for k, v in doc.items() if k != "quote"}
    assert base64.b64decode(doc["quote"]["attest"]) == b"attest:" + attest_binding(nonce, status)
    assert doc["pcr_bank"] == "sha256"
    assert doc["pcrs"] == {str(i): (bytes([i]) * 32).hex() for i in PCRS}
    assert doc["model"] == STATUS["model"] and doc["floor"] == 2
    assert doc["model_error"] is None  # a provider without the key: no error
    assert doc["time"].endswith("Z")
    assert base64.b64decode(doc["pcr_policy"]) == POLICY


def test_responder_binds_the_signed_policy_it_reports() -> None:
    """``pcr_policy`` is part of the quoted status: another policy is another binding, and
    a policy swapped into an answer no longer matches its quote."""
    nonce = secrets.token_bytes(32)
    other = sign_pcr_policy(
        ec.generate_private_key(ec.SECP256R1()),
        PCRValues("sha256", {i: bytes([i + 1]) * 32 for i in PCRS}),
    ).to_bytes()

    def answer(status: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        r = AttestResponder(
            FakeTPM(),  # type: ignore[arg-type]
            PCRS,
            lambda: status,
            now=lambda: dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        )
        doc = json.loads(decode_one(r.handle(ATTEST_REQUEST, request_payload(nonce))).payload)
        quoted = base64.b64decode(doc.pop("quote")["attest"])
        return doc, quoted

    ours, quoted = answer(STATUS)
    theirs, quoted_other = answer({**STATUS, "pcr_policy": other})
    none, quoted_none = answer({**STATUS, "pcr_policy": None})
    # the same nonce, time and PCRs: only the policy differs, and so does the quote
    assert len({quoted, quoted_other, quoted_none}) == 3
    assert quoted == b"attest:" + attest_binding(nonce, ours)
    assert none["pcr_policy"] is None and quoted_none == b"attest:" + attest_binding(nonce, none)
    swapped = {**ours, "pcr_policy": theirs["pcr_policy"]}
    assert quoted != b"attest:" + attest_binding(nonce, swapped)
    # a provider that does not know the key reports null (bound like every field)
    legacy, quoted_legacy = answer({k: v for k, v in STATUS.items() if k != "pcr_policy"})
    assert legacy["pcr_policy"] is None
    assert quoted_legacy == b"attest:" + attest_binding(nonce, legacy)


def test_responder_reports_why_no_model_is_served_bound_to_the_quote() -> None:
    """The daemon's start error goes into the answer, printable, bounded and quoted."""
    status = {**STATUS, "model": None, "model_error": LOCKED + "\n\x1b[31m" + "x" * 2000}
    nonce = secrets.token_bytes(32)
    frame = decode_one(
        responder(FakeTPM(), status=lambda: status).handle(ATTEST_REQUEST, request_payload(nonce))
    )
    doc = json.loads(frame.payload)
    assert set(doc) == RESPONSE_KEYS and doc["model"] is None
    assert doc["model_error"].startswith(LOCKED + " [31mxxx")  # one line, no ESC
    assert len(doc["model_error"]) == console_wire.MAX_MODEL_ERROR_CHARS
    assert console_wire.is_model_error(doc["model_error"])
    quoted = {k: v for k, v in doc.items() if k != "quote"}
    assert base64.b64decode(doc["quote"]["attest"]) == b"attest:" + attest_binding(nonce, quoted)


def test_responder_refusals_never_raise() -> None:
    def broken_status() -> dict[str, Any]:
        raise RuntimeError("state directory unreadable")

    good = request_payload(secrets.token_bytes(32))
    cases = [
        (responder(FakeTPM(refuse=TPMCommandError("TPM_RC_LOCKOUT", rc=0x921))), "TPM refused"),
        (responder(FakeTPM(refuse=KeyNotFoundError("no AK"))), "no attestation key"),
        (responder(FakeTPM(), status=broken_status), "internal error"),
    ]
    for r, match in cases:
        assert match in error_text(decode_one(r.handle(ATTEST_REQUEST, good)))
    r = responder(FakeTPM())
    assert "unsupported frame type 0x7f" in error_text(decode_one(r.handle(0x7F, b"{}")))
    assert r.handle(ERROR, b'{"error": "x"}') is None  # never answer an answer
    assert r.handle(ATTEST_RESPONSE, b"{}") is None


def test_responder_rate_limit_answers_busy_without_the_tpm() -> None:
    tpm = FakeTPM()
    r = responder(tpm, burst=2)
    answers = [decode_one(r.handle(ATTEST_REQUEST, request_payload(b"\1" * 32))) for _ in range(4)]
    assert [a.type for a in answers] == [ATTEST_RESPONSE, ATTEST_RESPONSE, ERROR, ERROR]
    assert error_text(answers[2]) == "busy"
    assert tpm.quotes == 2


# --- the real console: socat pty pair, swtpm --------------------------------------------------


@dataclass
class Bench:
    backend: LockedBackend
    ak_public: bytes
    device_path: Path
    technician_path: Path


@pytest.fixture
def bench(tmp_path: Path, swtpm: SwtpmProcess) -> Iterator[Bench]:
    require_executable("socat", "socat")
    require_module("serial", "pyserial")
    from edgeseal.hardware.serial_link import SerialLink

    backend = LockedBackend(open_backend(swtpm.tcti))
    try:
        ak_public = backend.create_attestation_key()
        for index in PCRS:  # a "measured boot", so the PCRs are not all zero
            backend.pcr_extend(index, bytes([index + 1]) * 32)
        with SerialLink.start(tmp_path / "serial") as link:
            yield Bench(backend, ak_public, Path(link.device_path), Path(link.technician_path))
    finally:
        backend.close()


@pytest.fixture
def console(bench: Bench) -> Iterator[SerialConsole]:
    c = SerialConsole(
        str(bench.device_path),
        AttestResponder(
            bench.backend, PCRS, lambda: STATUS, limiter=RateLimiter(rate=100.0, burst=100)
        ),
    )
    c.start()
    assert c.wait_open(10), "the console did not open its port"
    try:
        yield c
    finally:
        c.stop()


class Technician:
    """The laptop's end of the cable."""

    def __init__(self, path: Path) -> None:
        import serial

        self.line = serial.Serial(str(path), 115200, timeout=0.1)
        self.decoder = FrameDecoder()
        self.pending: list[Frame] = []

    def send(self, data: bytes) -> None:
        self.line.write(data)
        self.line.flush()

    def frames(self, count: int, timeout: float = 15.0) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while len(self.pending) < count and time.monotonic() < deadline:
            self.pending += self.decoder.feed(self.line.read(4096))
        got, self.pending = self.pending[:count], self.pending[count:]
        assert len(got) == count, f"expected {count} frames, got {got}"
        return got

    def silent_for(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.decoder.feed(self.line.read(4096)):
                return False
        return True

    def close(self) -> None:
        self.line.close()


@pytest.fixture
def technician(bench: Bench) -> Iterator[Technician]:
    t = Technician(bench.technician_path)
    try:
        yield t
    finally:
        t.close()


def check_response(ak_public: bytes, frame: Frame, nonce: bytes) -> dict[str, Any]:
    """What the technician's verifier does: the quote must verify against the status."""
    assert frame.type == ATTEST_RESPONSE, frame
    doc: dict[str, Any] = json.loads(frame.payload)
    assert set(doc) == RESPONSE_KEYS
    status = {k: v for k, v in doc.items() if k != "quote"}
    pcrs = {int(i): bytes.fromhex(v) for i, v in doc["pcrs"].items()}
    verify_quote(
        base64.b64decode(doc["quote"]["attest"]),
        base64.b64decode(doc["quote"]["signature"]),
        ak_public,
        qualifying_data=attest_binding(nonce, status),
        pcrs=pcrs,
    )
    return doc


@pytest.mark.serial
@pytest.mark.swtpm
def test_a_request_gets_a_quote_that_verifies(
    bench: Bench, console: SerialConsole, technician: Technician
) -> None:
    nonce = secrets.token_bytes(32)
    technician.send(encode_attest_request(nonce))
    doc = check_response(bench.ak_public, technician.frames(1)[0], nonce)
    assert doc["device_id"] == "console-1" and doc["model"] == STATUS["model"]
    expected = bench.backend.pcr_read(PCRS)
    assert doc["pcrs"] == {str(i): expected.digests[i].hex() for i in PCRS}
    assert doc["pcrs"]["0"] != "00" * 32
    assert base64.b64decode(doc["pcr_policy"]) == POLICY

    # the same answer with another nonce does not verify: it is bound to the nonce asked
    from edgeseal.sdk.errors import AttestationError

    with pytest.raises(AttestationError, match="qualifying data"):
        check_response(bench.ak_public, technician_frame_again(doc), secrets.token_bytes(32))
    # nor with another signed policy slipped into it: the policy is bound too
    forged = {**doc, "pcr_policy": base64.b64encode(POLICY + b" ").decode()}
    with pytest.raises(AttestationError, match="qualifying data"):
        check_response(bench.ak_public, technician_frame_again(forged), nonce)


def technician_frame_again(doc: dict[str, Any]) -> Frame:
    return Frame(ATTEST_RESPONSE, json.dumps(doc).encode())


@pytest.mark.serial
@pytest.mark.swtpm
def test_hostile_input_is_refused_and_the_next_request_still_works(
    bench: Bench, console: SerialConsole, technician: Technician
) -> None:
    header = struct.Struct(">2sBBI")
    # line noise and a login prompt: skipped, no answer
    technician.send(os.urandom(3000).replace(b"ES", b"xx") + b"\r\nlogin: ")
    # a frame announcing more than 64 KiB: dropped by the decoder, no answer
    technician.send(header.pack(b"ES", 1, ATTEST_REQUEST, 10_000_000) + b"{}")
    # a frame with a bad CRC: dropped
    good = bytearray(encode_attest_request(secrets.token_bytes(32)))
    good[-1] ^= 0xFF
    technician.send(bytes(good))
    # a frame with an unknown version: dropped
    body = header.pack(b"ES", 9, ATTEST_REQUEST, 2) + b"{}"
    technician.send(body + struct.pack(">I", zlib.crc32(body)))
    assert technician.silent_for(1.0)

    refusals = {
        "bad JSON": encode_frame(ATTEST_REQUEST, b"{nonce: 1"),
        "short nonce": encode_frame(ATTEST_REQUEST, request_payload(b"\1" * 31)),
        "long nonce": encode_frame(ATTEST_REQUEST, request_payload(b"\1" * 33)),
        "oversize request": encode_frame(ATTEST_REQUEST, b" " * (MAX_REQUEST_BYTES + 1)),
        "largest frame": encode_frame(ATTEST_REQUEST, b"x" * console_wire.MAX_PAYLOAD_BYTES),
        "unknown type": encode_frame(0x42, b"{}"),
    }
    for what, frame in refusals.items():
        technician.send(frame)
        (answer,) = technician.frames(1)
        assert answer.type == ERROR, what
        assert error_text(answer), what

    # a header announcing 60 000 bytes that never come: the next real request is still found
    technician.send(header.pack(b"ES", 1, ATTEST_REQUEST, 60_000) + b'{"nonce":')
    nonce = secrets.token_bytes(32)
    technician.send(encode_attest_request(nonce))
    check_response(bench.ak_public, technician.frames(1)[0], nonce)
    assert console.running


@pytest.mark.serial
@pytest.mark.swtpm
def test_rate_limit_answers_busy(bench: Bench, technician: Technician) -> None:
    clock = FakeClock()  # the default limit (2 per second) on a clock the test moves
    limiter = RateLimiter(clock=clock)
    console = SerialConsole(
        str(bench.device_path),
        AttestResponder(bench.backend, PCRS, lambda: STATUS, limiter=limiter),
    )
    console.start()
    try:
        assert console.wait_open(10)
        nonces = [secrets.token_bytes(32) for _ in range(5)]
        technician.send(b"".join(encode_attest_request(n) for n in nonces))
        answers = technician.frames(5)
        assert [a.type for a in answers] == [ATTEST_RESPONSE] * 2 + [ERROR] * 3
        assert {error_text(a) for a in answers[2:]} == {"busy"}
        check_response(bench.ak_public, answers[0], nonces[0])
        clock.now += 1.0  # the bucket refills: a technician who waits is answered
        technician.send(encode_attest_request(nonces[4]))
        check_response(bench.ak_public, technician.frames(1)[0], nonces[4])
    finally:
        console.stop()


@pytest.mark.serial
@pytest.mark.swtpm
def test_stop_is_clean_and_releases_the_port(
    bench: Bench, console: SerialConsole, technician: Technician
) -> None:
    started = time.monotonic()
    console.stop()
    assert time.monotonic() - started < 2.0
    assert not console.running
    technician.send(encode_attest_request(secrets.token_bytes(32)))
    assert technician.silent_for(0.5)  # nobody answers a stopped agent's line
    # the port is free again: a new console (the agent restarted) opens it and answers
    again = SerialConsole(
        str(bench.device_path), AttestResponder(bench.backend, PCRS, lambda: STATUS)
    )
    again.start()
    try:
        assert again.wait_open(10)
        nonce = secrets.token_bytes(32)
        technician.send(encode_attest_request(nonce))
        # the request sent while stopped may still be in the line's buffers: skip its answer
        answers = technician.frames(1)
        if json.loads(answers[0].payload).get("quote") and not _verifies(bench, answers[0], nonce):
            answers = technician.frames(1)
        check_response(bench.ak_public, answers[0], nonce)
    finally:
        again.stop()


def _verifies(bench: Bench, frame: Frame, nonce: bytes) -> bool:
    from edgeseal.sdk.errors import AttestationError

    try:
        check_response(bench.ak_public, frame, nonce)
    except AttestationError:
        return False
    return True


def test_a_missing_port_is_retried_and_stop_still_works(tmp_path: Path) -> None:
    fake: Any = FakeTPM()
    console = SerialConsole(
        str(tmp_path / "no-such-tty"), AttestResponder(fake, PCRS, lambda: STATUS)
    )
    console.start()
    assert not console.wait_open(0.3)
    assert console.running  # waiting for the adapter, not dead
    started = time.monotonic()
    console.stop()
    assert not console.running
    assert time.monotonic() - started < 2.0


@pytest.mark.serial
@pytest.mark.swtpm
def test_the_console_opens_its_port_when_it_appears(tmp_path: Path, bench: Bench) -> None:
    late = tmp_path / "ttyUSB-late"
    console = SerialConsole(str(late), AttestResponder(bench.backend, PCRS, lambda: STATUS))
    console.start()
    try:
        assert not console.wait_open(0.3)
        late.symlink_to(bench.device_path)  # the adapter is plugged in
        assert console.wait_open(10)
        technician = Technician(bench.technician_path)
        try:
            nonce = secrets.token_bytes(32)
            technician.send(encode_attest_request(nonce))
            check_response(bench.ak_public, technician.frames(1)[0], nonce)
        finally:
            technician.close()
    finally:
        console.stop()


def test_quote_and_update_cycle_share_the_tpm_without_interleaving() -> None:
    """The console's PCR read and quote run back to back even while another thread
    hammers the same LockedBackend (what the update cycle does)."""
    calls: list[str] = []
    lock = threading.Lock()

    class Recording(FakeTPM):
        def pcr_read(self, indices: Sequence[int]) -> PCRValues:
            with lock:
                calls.append("pcr_read")
            time.sleep(0.01)
            return super().pcr_read(indices)

        def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
            with lock:
                calls.append("quote")
            return super().quote(qualifying_data, pcrs)

        def nv_counter_read(self, index: int) -> int:
            with lock:
                calls.append("nv")
            time.sleep(0.001)
            return 1

    shared = LockedBackend(Recording())  # type: ignore[arg-type]
    r = AttestResponder(shared, PCRS, lambda: STATUS, limiter=RateLimiter(1000.0, 100))
    stop = threading.Event()

    def update_cycle() -> None:
        while not stop.is_set():
            shared.nv_counter_read(1)

    t = threading.Thread(target=update_cycle)
    t.start()
    try:
        for _ in range(10):
            frame = decode_one(r.handle(ATTEST_REQUEST, request_payload(secrets.token_bytes(32))))
            assert frame.type == ATTEST_RESPONSE
    finally:
        stop.set()
        t.join(5)
    for i, call in enumerate(calls):
        if call == "pcr_read":
            assert calls[i + 1] == "quote"


# --- configuration and the daemon -------------------------------------------------------------


def test_console_config_keys(tmp_path: Path) -> None:
    from edgeseal.device_agent.config import ConfigError, load_config

    assert load_config().console_port == "" and load_config().console_baud == 115200
    cfg = load_config(
        None,
        env={"EDGESEAL_AGENT_CONSOLE_PORT": "/dev/ttyS1", "EDGESEAL_AGENT_CONSOLE_BAUD": "9600"},
    )
    assert (cfg.console_port, cfg.console_baud) == ("/dev/ttyS1", 9600)
    for bad in ('console_port = "ttyS0"', "console_baud = 12345", 'console_baud = "fast"'):
        path = tmp_path / "agent.toml"
        path.write_text(f"version = 1\n{bad}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.field in ("console_port", "console_baud"), caught.value


class FakeModel:
    runtime_name = "fake"


SLOT_B = SlotInfo("b", "good", "demo", 3, digest_alg="sha256", plaintext_digest="ab" * 32)


class LockedInstaller:
    """The installer calls a locked start makes (no disk, no TPM): the key stays locked."""

    floor = SimpleNamespace(floor=lambda: 2)

    def start(self, check: Any) -> None:
        raise PolicyCheckError(LOCKED, rc=0x99D)

    def read_state(self) -> Any:
        return SimpleNamespace(active="b")

    def slot_info(self, name: str) -> SlotInfo:
        assert name == "b"
        return SLOT_B


def locked_daemon(tmp_path: Path) -> tuple[Any, LockedInstaller]:
    from edgeseal.device_agent.config import AgentConfig
    from edgeseal.device_agent.daemon import Daemon

    (tmp_path / "state").mkdir()
    daemon = Daemon(AgentConfig(device_id="console-l", state_dir=tmp_path / "state"))
    installer = LockedInstaller()
    assert daemon._start_serving(installer) is None  # type: ignore[arg-type]
    daemon._write_status(installer)  # type: ignore[arg-type]
    return daemon, installer


def test_the_daemon_reports_a_locked_key_until_a_reload_serves_a_model(tmp_path: Path) -> None:
    daemon, installer = locked_daemon(tmp_path)
    expected = f"{LOCKED} (TPM response code 0x99d)"
    status = daemon.attest_status()
    assert (status["model"], status["model_error"]) == (None, expected)
    assert json.loads((tmp_path / "state" / "daemon.json").read_text())["start_error"] == expected
    r = responder(FakeTPM(), status=daemon.attest_status)
    doc = json.loads(decode_one(r.handle(ATTEST_REQUEST, request_payload(bytes(32)))).payload)
    assert (doc["model"], doc["model_error"]) == (None, expected)

    daemon._swap(LoadedModel(SLOT_B, b""), FakeModel())  # what a reload does (SIGHUP)
    daemon._write_status(installer)
    status = daemon.attest_status()
    assert status["model_error"] is None and status["model"]["slot"] == "b"
    assert json.loads((tmp_path / "state" / "daemon.json").read_text())["start_error"] is None


def test_the_daemon_clears_the_model_error_when_an_update_installs(tmp_path: Path) -> None:
    from edgeseal.device_agent.inference import ModelInfo
    from edgeseal.device_agent.update_outcome import UpdateResult

    daemon, installer = locked_daemon(tmp_path)

    class InstallingUpdater:
        def check_now(self, cancelled: Any) -> UpdateResult:
            daemon.holder.swap(FakeModel(), ModelInfo("demo", 3))  # type: ignore[arg-type]
            return UpdateResult("installed", "demo", 3)

    daemon._cycle(installer, InstallingUpdater())  # type: ignore[arg-type]
    status = daemon.attest_status()
    assert status["model_error"] is None
    assert status["model"] == {
        "family": "demo",
        "version": 3,
        "digest_alg": "sha256",
        "plaintext_digest": "ab" * 32,
        "slot": "b",
    }
    assert json.loads((tmp_path / "state" / "daemon.json").read_text())["start_error"] is None


@pytest.mark.serial
@pytest.mark.swtpm
def test_the_daemon_answers_on_its_console_and_stops_it(tmp_path: Path, swtpm_ca: Path) -> None:
    """``console_port`` set: the running agent answers with what it serves (nothing yet),
    its floor and a quote from the device's TPM; shutdown stops the console."""
    require_executable("socat", "socat")
    from edgeseal.device_agent.config import AgentConfig
    from edgeseal.device_agent.daemon import Daemon
    from edgeseal.hardware.emulated import EmulatedDevice
    from edgeseal.hardware.serial_link import SerialLink

    device = EmulatedDevice.create(
        tmp_path / "dev", device_id="console-d", ca_dir=swtpm_ca, running=True
    )
    try:
        with device.backend() as backend:
            ak_public = backend.create_attestation_key()
        with SerialLink.start(tmp_path / "serial") as link:
            config = AgentConfig(
                device_id="console-d",
                state_dir=tmp_path / "state",
                key_backend=f"emulated:{device.state_dir}",
                profile="emulated",
                socket_path=tmp_path / "run" / "inference.sock",
                console_port=str(link.device_path),
            )
            daemon = Daemon(config)
            runner = threading.Thread(target=daemon.run)
            runner.start()
            technician = Technician(Path(link.technician_path))
            try:
                nonce = secrets.token_bytes(32)
                deadline = time.monotonic() + 20
                answers: list[Frame] = []
                while not answers and time.monotonic() < deadline:
                    technician.send(encode_attest_request(nonce))
                    answers = technician.decoder.feed(technician.line.read(4096))
                    time.sleep(0.2)
                assert answers, "the agent did not answer on its console"
                doc = check_response(ak_public, answers[0], nonce)
                assert doc["device_id"] == "console-d" and doc["model"] is None
                assert doc["model_error"] is None  # nothing installed is not an error
                # the signed PCR policy the agent started with, as the device holds it
                policy = base64.b64decode(doc["pcr_policy"])
                assert policy == device.signed_policy().to_bytes()
                assert isinstance(doc["floor"], int)
            finally:
                daemon.request_stop()
                runner.join(30)
                technician.close()
            assert not runner.is_alive()
            assert daemon._console is not None and not daemon._console.running
    finally:
        device.stop()
