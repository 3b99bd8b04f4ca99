"""``edgeseal attest``: a field technician attests a device offline over its serial console.

The bundle and its key are read and verified first, so a wrong or tampered
bundle is refused before the port is touched. Then a fresh 32-byte nonce goes
down the line in an ATTEST_REQUEST frame, frames are read until the
ATTEST_RESPONSE (or an ERROR frame, or the timeout), and
:func:`~edgeseal.sdk.attest_check.check_attestation` judges it offline.

Exit codes: 0 every check passed, 1 a check failed, 2 the device could not be
asked (unreadable bundle or key, port, pyserial missing, no answer, ERROR).
pyserial is imported only here (the ``[technician]`` extra).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseal.sdk.cli.common import CLIError

if TYPE_CHECKING:
    from edgeseal.sdk.attest_check import AttestReport
    from edgeseal.sdk.trust_bundle import TrustBundle

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_COULD_NOT_ASK = 2
#: A PEM public key is a few hundred bytes; anything larger is not one.
MAX_KEY_FILE = 64 * 1024
_READ_CHUNK = 4096
_POLL_S = 0.1


class CouldNotAskError(CLIError):
    """The device could not be asked (exit 2): bundle, key, port, pyserial, silence."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "attest",
        help="attest a device offline over its serial console (field technician)",
        description=(
            "Send a fresh nonce to the device's agent over the serial console and check its "
            "TPM quote, boot state and model against the trust bundle the fleet operator "
            "exported, without any network. Exit 0 PASS, 1 FAIL, 2 could not ask."
        ),
    )
    p.add_argument(
        "--port",
        default=os.environ.get("EDGESEAL_SERIAL_PORT"),
        required="EDGESEAL_SERIAL_PORT" not in os.environ,
        help="the serial port, e.g. /dev/ttyUSB0 (env EDGESEAL_SERIAL_PORT)",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=os.environ.get("EDGESEAL_TRUST_BUNDLE"),
        required="EDGESEAL_TRUST_BUNDLE" not in os.environ,
        help="the trust bundle from the fleet operator (env EDGESEAL_TRUST_BUNDLE)",
    )
    p.add_argument(
        "--bundle-key",
        type=Path,
        default=os.environ.get("EDGESEAL_BUNDLE_KEY"),
        required="EDGESEAL_BUNDLE_KEY" not in os.environ,
        help="PEM public key that signs trust bundles (env EDGESEAL_BUNDLE_KEY)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        help="seconds to wait for the answer (default 10)",
    )
    p.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = _load_bundle(args.bundle, args.bundle_key)
        nonce = secrets.token_bytes(32)
        payload = _ask(args.port, args.baud, float(args.timeout), nonce)
    except CouldNotAskError as exc:
        if args.json:
            print(json.dumps({"verdict": "ERROR", "passed": False, "error": exc.message}))
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_COULD_NOT_ASK
    from edgeseal.sdk.attest_check import check_attestation_payload

    report = check_attestation_payload(payload, nonce, bundle, now=dt.datetime.now(dt.UTC))
    _print_report(report, args.port, as_json=bool(args.json))
    return EXIT_PASS if report.passed else EXIT_FAIL


def _print_report(report: AttestReport, port: str, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**report.to_json(), "port": port}, indent=2))
    else:
        print(report.render())


def _load_bundle(bundle_path: Path, key_path: Path) -> TrustBundle:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgeseal.sdk.errors import AttestationError
    from edgeseal.sdk.trust_bundle import MAX_BUNDLE_BYTES, load_trust_bundle

    pem = _read(key_path, MAX_KEY_FILE, "the bundle key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CouldNotAskError(f"{key_path} is not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CouldNotAskError(f"{key_path} is not an ECDSA P-256 public key (a bundle key is)")
    data = _read(bundle_path, MAX_BUNDLE_BYTES, "the trust bundle")
    try:
        return load_trust_bundle(data, key)
    except AttestationError as exc:
        raise CouldNotAskError(
            f"the trust bundle {bundle_path} is refused: {exc.message}"
        ) from None


def _ask(port: str, baud: int, timeout: float, nonce: bytes) -> bytes:
    """Send the request; the payload of the device's ATTEST_RESPONSE frame."""
    from edgeseal.sdk.console_wire import (
        ATTEST_RESPONSE,
        ERROR,
        FrameDecoder,
        encode_attest_request,
        parse_error,
    )

    try:
        import serial
    except ImportError:
        raise CouldNotAskError(
            "pyserial is not installed: pip install 'edgeseal[technician]'"
        ) from None
    try:
        link = serial.Serial(port, baudrate=baud, timeout=_POLL_S, write_timeout=timeout)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise CouldNotAskError(f"cannot open the serial port {port}: {exc}") from None
    decoder = FrameDecoder()
    try:
        with link:
            link.reset_input_buffer()
            link.write(encode_attest_request(nonce))
            link.flush()
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                link.timeout = min(_POLL_S, remaining)
                waiting = int(link.in_waiting)
                chunk = link.read(min(max(1, waiting), _READ_CHUNK))
                for frame in decoder.feed(chunk):
                    if frame.type == ATTEST_RESPONSE:
                        return frame.payload
                    if frame.type == ERROR:
                        raise CouldNotAskError(f"the device refused: {parse_error(frame.payload)}")
    except (serial.SerialException, OSError) as exc:
        raise CouldNotAskError(f"the serial port {port} failed: {exc}") from None
    seen = ""
    if decoder.skipped or decoder.dropped:
        seen = (
            f" ({decoder.skipped} other bytes and {decoder.dropped} damaged frames were seen: "
            "is the edgeseal agent's console on this port, at this baud rate?)"
        )
    raise CouldNotAskError(f"no answer from {port} within {timeout:g} s{seen}")


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise CouldNotAskError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise CouldNotAskError(f"{what} {path} is over the limit of {limit} bytes")
    return data


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("the timeout is more than 0 and at most 3600 seconds")
    return value
