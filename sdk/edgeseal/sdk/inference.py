"""Client of the device agent's local inference socket.

An application runs the protected model through the agent without ever
holding its weights: it sends input tensors over a Unix socket and receives
output tensors (framing in :mod:`edgeseal.sdk.inference_wire`). The client
keeps one connection open and serializes calls on it; use one client per
thread for parallel requests. Inference is a pure function of its inputs, so
a request that fails because the agent closed an idle connection is retried
once on a fresh connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy.typing as npt

from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.inference_wire import Frame, encode_frame_parts, read_frame

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "InferenceClient", "InferenceError", "RunResult"]

DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
PROTOCOL_VERSION = 1


class InferenceError(EdgesealError):
    """The agent refused or failed a request, or could not be reached.

    ``code`` is the server's error code (``"no-model"``, ``"input-mismatch"``,
    ``"request-too-large"``, ...) or ``"unreachable"`` / ``"protocol"`` when
    the failure happened on this side.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def diagnostics(self) -> str:
        return f"inference service: {self.message} ({self.code})"


@dataclass(frozen=True)
class RunResult:
    """The outputs of one run and which model produced them."""

    outputs: list[npt.NDArray[Any]]
    family: str
    version: int


class InferenceClient:
    """Talks to the agent's inference socket; see the module docstring."""

    def __init__(
        self,
        socket_path: str | Path,
        *,
        timeout: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._path = str(socket_path)
        self._timeout = timeout
        self._max_response = max_response_bytes
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def info(self) -> dict[str, Any]:
        """The loaded model: ``family``, ``version``, ``runtime``, ``inputs``, ``outputs``."""
        frame = self._request({"op": "info"}, ())
        info = frame.fields.get("info")
        if not isinstance(info, dict):
            raise InferenceError("protocol", "the agent's answer to 'info' has no info object")
        return info

    def run(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Run the model on ``inputs`` (in the model's input order); returns its outputs."""
        return self.run_detailed(inputs).outputs

    def run_detailed(self, inputs: Sequence[npt.NDArray[Any]]) -> RunResult:
        """Like :meth:`run`, also saying which model family and version answered."""
        frame = self._request({"op": "run"}, inputs)
        model = frame.fields.get("model")
        if not (
            isinstance(model, dict)
            and isinstance(model.get("family"), str)
            and type(model.get("version")) is int
        ):
            raise InferenceError("protocol", "the agent's answer to 'run' names no model")
        return RunResult(outputs=frame.tensors, family=model["family"], version=model["version"])

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _request(self, fields: Mapping[str, Any], tensors: Sequence[npt.NDArray[Any]]) -> Frame:
        parts = encode_frame_parts({**fields, "v": PROTOCOL_VERSION}, tensors)
        with self._lock:
            reused = self._sock is not None
            try:
                frame = self._exchange(parts)
            except (ConnectionError, _ClosedError) as exc:
                self._close()
                if not reused:
                    raise InferenceError(
                        "unreachable", f"connection to {self._path} lost: {exc}"
                    ) from exc
                logger.debug("idle connection to %s was closed; reconnecting", self._path)
                try:
                    frame = self._exchange(parts)
                except (ConnectionError, _ClosedError) as exc2:
                    self._close()
                    raise InferenceError(
                        "unreachable", f"connection to {self._path} lost: {exc2}"
                    ) from exc2
            except TimeoutError:
                self._close()
                raise InferenceError(
                    "timeout", f"no answer from {self._path} within {self._timeout} s"
                ) from None
            except OSError as exc:
                self._close()
                raise InferenceError("unreachable", f"cannot reach {self._path}: {exc}") from exc
            except EdgesealError as exc:  # a malformed answer
                self._close()
                raise InferenceError("protocol", f"bad answer from the agent: {exc}") from exc
        error = frame.fields.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise InferenceError("protocol", "malformed error answer")
            raise InferenceError(str(error.get("code", "error")), str(error.get("message", "")))
        return frame

    def _exchange(self, parts: list[bytes | memoryview]) -> Frame:
        sock = self._connect()
        sock.settimeout(self._timeout)
        try:
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The agent may have refused the request (e.g. too large) from its
            # header and closed before reading the rest: its answer says why.
            sent_error: BaseException | None = exc
        else:
            sent_error = None
        deadline = time.monotonic() + self._timeout

        def read_exact(n: int) -> bytearray:
            buffer = bytearray(n)
            view = memoryview(buffer)
            got = 0
            while got < n:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                count = sock.recv_into(view[got:])
                if count == 0:
                    raise _ClosedError("the agent closed the connection")
                got += count
            return buffer

        try:
            return read_frame(read_exact, max_body_bytes=self._max_response)
        except (OSError, _ClosedError):
            if sent_error is not None:
                raise sent_error from None
            raise

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            try:
                sock.connect(self._path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class _ClosedError(Exception):
    """The peer closed the connection before a whole frame arrived."""
