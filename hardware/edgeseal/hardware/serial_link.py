"""A serial cable for the emulated device: a socat pseudo-terminal pair.

A real board's console is a UART the technician reaches with a USB serial
adapter. The emulated device gets the same thing from socat::

    socat -d -d pty,raw,echo=0,link=<dir>/device.pty pty,raw,echo=0,link=<dir>/technician.pty

The agent opens :attr:`SerialLink.device_path` (its ``console_port``), the
technician's ``edgeseal attest --port`` opens :attr:`SerialLink.technician_path`;
bytes written to one end come out of the other, raw (no echo, no line
discipline). Either end may be opened and closed many times; socat keeps the
pair until :meth:`SerialLink.stop`. socat's log goes to ``<dir>/socat.log``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from edgeseal.hardware.errors import HardwareError

log = logging.getLogger(__name__)

DEVICE_LINK = "device.pty"
TECHNICIAN_LINK = "technician.pty"
LOG_FILE = "socat.log"
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


def socat_binary() -> str:
    """Path of the socat executable, or raise a clear error."""
    path = shutil.which("socat")
    if path is None:
        raise HardwareError(
            "socat is not installed (it provides the emulated serial console): "
            "install the Debian package socat"
        )
    return path


class SerialLink:
    """A running socat pty pair; use :meth:`start`, then :meth:`stop` or ``with``."""

    def __init__(self, directory: Path, process: subprocess.Popen[bytes]) -> None:
        self.directory = Path(directory)
        self.device_path = self.directory / DEVICE_LINK
        self.technician_path = self.directory / TECHNICIAN_LINK
        self.log_file = self.directory / LOG_FILE
        self._process: subprocess.Popen[bytes] | None = process

    @classmethod
    def start(cls, directory: Path, *, timeout: float = _READY_TIMEOUT_S) -> SerialLink:
        """Start socat and wait until both pty links exist in ``directory``."""
        binary = socat_binary()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        device, technician = directory / DEVICE_LINK, directory / TECHNICIAN_LINK
        for stale in (device, technician):
            stale.unlink(missing_ok=True)  # left by a killed socat
        cmd = [
            binary,
            "-d",
            "-d",
            f"pty,raw,echo=0,link={device}",
            f"pty,raw,echo=0,link={technician}",
        ]
        with (directory / LOG_FILE).open("ab") as log_handle:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_handle
            )
        pair = cls(directory, process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise HardwareError(
                    f"socat exited with status {process.returncode} before creating the pty "
                    f"pair in {directory}: {pair._log_tail()}"
                )
            if device.exists() and technician.exists():
                log.debug(
                    "serial link up: pid %d, device %s, technician %s",
                    process.pid,
                    device.resolve(),
                    technician.resolve(),
                )
                return pair
            time.sleep(0.01)
        pair.stop()
        raise HardwareError(f"socat did not create the pty pair in {directory} within {timeout} s")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        """Stop socat (SIGTERM, then SIGKILL) and remove the links; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.debug("serial link stopped: socat exited with %s", process.returncode)
        for link in (self.device_path, self.technician_path):
            with contextlib.suppress(OSError):
                link.unlink(missing_ok=True)

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _log_tail(self) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "(empty log)"
