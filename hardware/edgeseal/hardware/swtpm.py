"""Start and stop a swtpm TPM 2.0 emulator on loopback.

swtpm listens on two TCP ports: ``port`` for TPM commands and ``port + 1`` for
its control channel, which is the layout the ``swtpm`` TCTI of tpm2-tss
expects (``swtpm:host=127.0.0.1,port=N``). State persists in ``state_dir``,
also through SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edgeseal.hardware.errors import TPMUnavailableError

log = logging.getLogger(__name__)

_START_ATTEMPTS = 5
_READY_TIMEOUT_S = 10.0


def swtpm_binary() -> str:
    """Path of the swtpm executable, or raise a clear error."""
    path = shutil.which("swtpm")
    if path is None:
        raise TPMUnavailableError(
            "swtpm is not installed: install the Debian packages swtpm and swtpm-tools"
        )
    return path


def _free_port_pair() -> int:
    """A port N such that N and N + 1 are both free on 127.0.0.1 right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise TPMUnavailableError("no free pair of TCP ports on 127.0.0.1 for swtpm")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class SwtpmProcess:
    """One swtpm instance with persistent state in ``state_dir``.

    ``start(detach=True)`` leaves swtpm running after this Python process
    exits (the emulated device uses this); ``stop()`` finds it again through
    the pid file.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.pid_file = self.state_dir / "swtpm.pid"
        self.port_file = self.state_dir / "swtpm.port"
        self.log_file = self.state_dir / "swtpm.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise TPMUnavailableError(f"swtpm in {self.state_dir} is not running") from exc

    @property
    def tcti(self) -> str:
        """The TCTI string that reaches this emulator."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def pid(self) -> int | None:
        """The pid of the running swtpm, or None when it is not running."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, *, detach: bool = False) -> str:
        """Start swtpm and return its TCTI string; a no-op when already running."""
        if self.running():
            return self.tcti
        binary = swtpm_binary()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            port = _free_port_pair()
            self.pid_file.unlink(missing_ok=True)
            cmd = [
                binary,
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state_dir},mode=0600",
                "--server",
                f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
                "--pid",
                f"file={self.pid_file}",
                "--log",
                f"file={self.log_file},level=1",
            ]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=detach,
            )
            deadline = time.monotonic() + _READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    last_error = stderr.strip() or f"exited with status {proc.returncode}"
                    break
                if _port_open(port) and _port_open(port + 1) and self.pid_file.exists():
                    if proc.stderr is not None:
                        proc.stderr.close()
                    self._proc = proc
                    self.port_file.write_text(f"{port}\n")
                    log.debug(
                        "swtpm started: pid %d port %d state %s", proc.pid, port, self.state_dir
                    )
                    return self.tcti
                time.sleep(0.01)
            else:
                proc.kill()
                proc.wait()
                last_error = "did not open its ports in time"
        raise TPMUnavailableError(f"swtpm could not start in {self.state_dir}: {last_error}")

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop swtpm (SIGTERM, then SIGKILL); its state stays in ``state_dir``."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._alive(pid):
                time.sleep(0.01)
            if self._alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=timeout)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        self.port_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL swtpm, as a power cut would."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop(timeout=2.0)

    def _alive(self, pid: int) -> bool:
        """Whether ``pid`` runs. A zombie counts as dead: swtpm started by another
        process is reaped by init, which may take its time."""
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True  # no procfs: trust kill(0)
        # The state follows the parenthesised command name: "pid (comm) S ...".
        return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]
