"""The serial console responder: answers a field technician's attestation requests.

A technician plugs a laptop into the device's serial console and runs
``edgeseal attest --port ...`` (docs/dev/attestation-contracts.md). A fresh
nonce comes down the wire in an ``ATTEST_REQUEST`` frame
(:mod:`edgeseal.sdk.console_wire`); the agent answers with an
``ATTEST_RESPONSE``: its status (device id, agent version, time, the model it
serves or why it serves none, the anti-rollback floor, the signed PCR policy
it runs under, the board profile's PCRs) and a TPM quote with the attestation
key (AK) over those PCRs whose qualifying data is ``attest_binding(nonce,
status)``, so the answer is fresh and the status cannot be swapped under the
quote.

Whoever holds the cable is untrusted, so:

* frames are decoded by the bounded :class:`~edgeseal.sdk.console_wire.FrameDecoder`
  (garbage is skipped, bad CRCs dropped); a request is at most
  :data:`MAX_REQUEST_BYTES` of JSON ``{"nonce": <64 lowercase hex>}`` and nothing
  else (:func:`~edgeseal.sdk.console_wire.parse_attest_request`);
* a malformed request gets an ``ERROR`` frame saying what is wrong, a frame
  that is not a request is answered ``ERROR`` or (an ``ERROR`` or a response,
  to avoid two ends answering each other forever) dropped;
* requests are rate-limited (:class:`RateLimiter`, default 2 per second);
  the excess is answered ``ERROR "busy"`` without touching the TPM;
* a TPM refusal is an ``ERROR`` frame; nothing a technician sends raises out
  of the thread, and a port that disappears (USB adapter unplugged) is
  reopened with backoff until the agent stops.

The pieces: :func:`parse_request` and :class:`RateLimiter` are pure;
:class:`AttestResponder` turns one frame into the answer frame (TPM through a
:class:`~edgeseal.hardware.backend.KeyBackend`, status through an injected
callable); :class:`SerialConsole` is the thread that owns the port.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.locked_backend import exclusive
from edgeseal.device_agent.state import timestamp, utc_now
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import HardwareError, KeyNotFoundError
from edgeseal.sdk import console_wire
from edgeseal.sdk.console_wire import (
    FrameDecoder,
    attest_binding,
    canonical_json,
    encode_error,
    encode_frame,
    encode_pcr_policy,
    model_error_text,
    parse_attest_request,
)
from edgeseal.sdk.errors import FormatError

log = logging.getLogger(__name__)

#: A request is ``{"nonce": "<64 hex>"}``: 77 bytes; anything far larger is not one.
MAX_REQUEST_BYTES = 1024
PCR_BANK = "sha256"
#: Seconds one read waits for bytes (also how soon the thread notices a stop).
READ_TIMEOUT_S = 0.2
#: A technician who stops reading must not block the agent's console thread.
WRITE_TIMEOUT_S = 2.0
READ_CHUNK = 4096
#: Reopen backoff when the port is missing or fails (seconds, doubling).
REOPEN_MIN_S = 0.5
REOPEN_MAX_S = 30.0
MAX_ERROR_TEXT = 200

#: The agent's part of the status: ``device_id``, ``agent_version``, ``model`` (None or
#: ``{family, version, digest_alg, plaintext_digest, slot}``), ``model_error`` (None, or why
#: no model is served although one is installed: made printable and bounded here),
#: ``floor`` (int or None), ``pcr_policy`` (None, or the ``SignedPCRPolicy.to_bytes()`` the
#: agent runs under: sent base64, so a boot state its authority approved after enrollment
#: passes the technician's check; a provider without the key reports null).
StatusProvider = Callable[[], Mapping[str, Any]]


class ConsoleRequestError(AgentError):
    """A console request is malformed; the message is what the ERROR frame says."""


def parse_request(payload: bytes) -> bytes:
    """The 32-byte nonce of an ATTEST_REQUEST payload; ConsoleRequestError otherwise."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ConsoleRequestError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        return parse_attest_request(payload)
    except FormatError as exc:
        raise ConsoleRequestError(exc.message, field=exc.field) from None


class RateLimiter:
    """Token bucket: ``rate`` requests per second, bursts of ``burst``. Clock injected."""

    def __init__(
        self, rate: float = 2.0, burst: int = 2, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("need rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def error_frame(message: str) -> bytes:
    return encode_error(message[:MAX_ERROR_TEXT])


class AttestResponder:
    """One frame in, the frame to answer (or None) out. Used by one thread at a time."""

    def __init__(
        self,
        backend: KeyBackend,
        pcrs: Sequence[int],
        status: StatusProvider,
        *,
        limiter: RateLimiter | None = None,
        now: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        if not pcrs:
            raise ValueError("the console needs the board profile's PCRs to quote")
        self._backend = backend
        self._pcrs = sorted(set(pcrs))
        self._status = status
        self._limiter = limiter or RateLimiter()
        self._now = now
        self.answered = 0
        self.refused = 0

    def handle(self, frame_type: int, payload: bytes) -> bytes | None:
        """The encoded answer to one decoded frame; never raises."""
        if frame_type in (console_wire.ERROR, console_wire.ATTEST_RESPONSE):
            log.debug("console: ignored a 0x%02x frame (%d bytes)", frame_type, len(payload))
            return None
        if frame_type != console_wire.ATTEST_REQUEST:
            return self._refuse(f"unsupported frame type 0x{frame_type:02x}")
        if not self._limiter.allow():
            self.refused += 1
            log.debug("console: request over the rate limit, answered busy")
            return error_frame("busy")
        try:
            nonce = parse_request(payload)
        except ConsoleRequestError as exc:
            return self._refuse(exc.message)
        try:
            response = self.respond(nonce)
        except HardwareError as exc:
            log.warning("console: the TPM refused the quote: %s", exc.diagnostics())
            if isinstance(exc, KeyNotFoundError):
                return self._refuse("no attestation key in the TPM (run edgeseal-agent enroll)")
            return self._refuse(f"the TPM refused the quote: {exc.message}")
        except Exception:  # the console answers; it never takes the agent down
            log.exception("console: cannot answer an attestation request")
            return self._refuse("internal error")
        self.answered += 1
        log.info("console: answered an attestation request (nonce %s...)", nonce.hex()[:8])
        return encode_frame(console_wire.ATTEST_RESPONSE, canonical_json(response))

    def respond(self, nonce: bytes) -> dict[str, Any]:
        """The ATTEST_RESPONSE document for ``nonce`` (raises HardwareError from the TPM)."""
        base = self._status()
        model = base.get("model")
        model_error = base.get("model_error")
        pcr_policy = base.get("pcr_policy")
        with exclusive(self._backend) as backend:
            values = backend.pcr_read(self._pcrs)
            status: dict[str, Any] = {
                "device_id": base["device_id"],
                "agent_version": base["agent_version"],
                "time": timestamp(self._now()),
                "model": None if model is None else dict(model),
                "model_error": None if model_error is None else model_error_text(model_error),
                "floor": base.get("floor"),
                "pcr_policy": encode_pcr_policy(pcr_policy),
                "pcr_bank": PCR_BANK,
                "pcrs": {str(i): values.digests[i].hex() for i in self._pcrs},
            }
            attest, signature = backend.quote(attest_binding(nonce, status), self._pcrs)
        return {**status, "quote": {"attest": _b64(attest), "signature": _b64(signature)}}

    def _refuse(self, message: str) -> bytes:
        self.refused += 1
        log.info("console: refused a request: %s", message)
        return error_frame(message)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class SerialConsole:
    """The thread that owns ``port`` and answers on it. ``start()`` once, ``stop()`` once."""

    def __init__(
        self,
        port: str,
        responder: AttestResponder,
        *,
        baud: int = 115200,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.port = port
        self.baud = baud
        self._responder = responder
        self._read_timeout = read_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self.decoder = FrameDecoder()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the serial console is already started")
        self._thread = threading.Thread(target=self._run, name="edgeseal-console", daemon=True)
        self._thread.start()
        log.info("serial console on %s (%d baud) started", self.port, self.baud)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the serial console thread did not stop within %g s", timeout)
            else:
                log.info("serial console stopped")

    def wait_open(self, timeout: float) -> bool:
        """True once the port is open (for tests and diagnostics)."""
        return self._opened.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        delay = REOPEN_MIN_S
        last_problem = ""
        while not self._stop.is_set():
            try:
                self._serve_once()
            except Exception as exc:  # noqa: BLE001 - the port comes back, the thread stays
                if self._opened.is_set():  # it worked until now: retry soon, say it again
                    delay, last_problem = REOPEN_MIN_S, ""
                problem = _describe(exc)
                if problem != last_problem:  # say it once, not every retry
                    log.warning(
                        "serial console %s: %s (retrying every %g..%g s)",
                        self.port,
                        problem,
                        REOPEN_MIN_S,
                        REOPEN_MAX_S,
                    )
                    last_problem = problem
            self._opened.clear()
            if self._stop.wait(delay):
                break
            delay = min(REOPEN_MAX_S, delay * 2)

    def _serve_once(self) -> None:
        import serial

        with serial.Serial(
            self.port,
            self.baud,
            timeout=self._read_timeout,
            write_timeout=WRITE_TIMEOUT_S,
            exclusive=True,
        ) as line:
            self.decoder = FrameDecoder()  # a reopened line starts a fresh stream
            self._opened.set()
            log.info("serial console %s open", self.port)
            while not self._stop.is_set():
                data = line.read(READ_CHUNK)
                if not data:
                    continue
                for frame in self.decoder.feed(data):
                    answer = self._responder.handle(frame.type, frame.payload)
                    if answer is None:
                        continue
                    try:
                        line.write(answer)
                        line.flush()
                    except serial.SerialTimeoutException:
                        log.warning("serial console %s: answer not read, dropped", self.port)


def _describe(exc: BaseException) -> str:
    errno = getattr(exc, "errno", None)
    if errno == 13:  # EACCES
        return "permission denied (the agent's user needs the dialout group)"
    if errno == 2:  # ENOENT
        return "no such device (is the cable or adapter connected?)"
    return str(exc) or type(exc).__name__


__all__ = [
    "MAX_REQUEST_BYTES",
    "AttestResponder",
    "ConsoleRequestError",
    "RateLimiter",
    "SerialConsole",
    "StatusProvider",
    "error_frame",
    "parse_request",
]
