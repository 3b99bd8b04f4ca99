"""The agent's local inference service: a threaded Unix-socket server over a ModelHolder.

Applications never hold the weights: the plaintext model lives only in this
process, inside the interpreter the :class:`ModelHolder` owns, and the socket
carries input and output tensors only (framing in
:mod:`edgeseal.sdk.inference_wire`). Any process of the socket's group may
connect, so the peer is untrusted: every frame is bounded before it is read
(header ≤ 64 KiB, body ≤ ``max_request_bytes``, checked from the header before
one byte of the body is read), each frame must arrive within ``read_timeout``
(a slow sender cannot pin a thread), and at most ``max_connections`` are
served at once.

Requests (header fields): ``{"op": "info"}`` and ``{"op": "run", "tensors":
[...]}``. Answers: ``{"info": {...}}``, ``{"model": {"family", "version"},
"tensors": [...]}`` with the outputs, or ``{"error": {"code", "message"}}``.
After an error the connection stays usable when the request was read whole;
when it could not be (malformed header, body over the limit) the server
answers and closes it, since it can no longer find the next frame.

Tensor contents are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy.typing as npt

from edgeseal.device_agent.errors import AgentError
from edgeseal.sdk.inference_wire import (
    PREFIX_SIZE,
    TOO_LARGE,
    WireError,
    decode_tensors,
    encode_frame_parts,
    parse_header,
    parse_prefix,
)
from edgeseal.sdk.runtime import InputMismatchError, RuntimeAdapterError, TFLiteModel

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "InferenceServer",
    "InferenceServiceError",
    "LoadedModel",
    "ModelHolder",
    "ModelInfo",
    "NoModelError",
]

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
PROTOCOL_VERSION = 1


class InferenceServiceError(AgentError):
    """The inference service cannot start or serve (socket path, permissions)."""


class NoModelError(AgentError):
    """No model is loaded yet (or it was unloaded)."""

    def __init__(self) -> None:
        super().__init__("no model loaded")


@dataclass(frozen=True)
class ModelInfo:
    """What the agent says about the model it serves (never its bytes)."""

    family: str
    version: int


@dataclass(frozen=True)
class LoadedModel:
    """A model and its identity, swapped as one object so a request sees one or the other."""

    model: TFLiteModel
    info: ModelInfo

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.info.family,
            "version": self.info.version,
            "runtime": self.model.runtime_name,
            "inputs": [_tensor_json(d) for d in self.model.input_details],
            "outputs": [_tensor_json(d) for d in self.model.output_details],
        }


class ModelHolder:
    """The model currently served, replaced atomically at commit.

    A request takes a reference to the current :class:`LoadedModel` and runs
    on it; a concurrent :meth:`swap` only affects later requests, so an answer
    always comes wholly from one model. The previous interpreter (and the
    plaintext it references) is freed when its last request finishes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None

    def swap(self, model: TFLiteModel, info: ModelInfo) -> None:
        loaded = LoadedModel(model, info)
        with self._lock:
            self._current = loaded
        logger.info("now serving %s v%d on %s", info.family, info.version, model.runtime_name)

    def clear(self) -> None:
        with self._lock:
            self._current = None

    def current(self) -> LoadedModel:
        """The model to use for one request; raises :class:`NoModelError`."""
        with self._lock:
            loaded = self._current
        if loaded is None:
            raise NoModelError
        return loaded

    def run(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        return self.current().model.run(inputs)

    def info(self) -> dict[str, Any]:
        """``family``, ``version``, ``runtime``, ``inputs``, ``outputs`` of the current model."""
        return self.current().describe()


class InferenceServer:
    """Serves a :class:`ModelHolder` on a Unix stream socket; see the module docstring.

    :meth:`start` binds and serves in a background thread; :meth:`shutdown`
    stops accepting, lets requests in progress finish and answer, closes idle
    connections and removes the socket file.
    """

    def __init__(
        self,
        socket_path: str | Path,
        holder: ModelHolder,
        *,
        mode: int = 0o660,
        dir_mode: int = 0o750,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_connections: int = 32,
        read_timeout: float = 30.0,
    ) -> None:
        if max_connections < 1 or max_request_bytes < 0 or read_timeout <= 0:
            raise ValueError("max_connections >= 1, max_request_bytes >= 0, read_timeout > 0")
        self.socket_path = Path(socket_path)
        self.holder = holder
        self.mode = mode
        self.dir_mode = dir_mode
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._inode: int | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (mode and directory mode set) and serve in a daemon thread."""
        if self._server is not None:
            raise InferenceServiceError("the inference server is already started")
        self._prepare_directory()
        self._remove_stale_socket()
        server = _Server(str(self.socket_path), self)
        try:
            self.socket_path.chmod(self.mode)
            self._inode = self.socket_path.stat().st_ino
        except OSError:
            server.server_close()
            raise
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="edgeseal-inference",
            daemon=True,
        )
        self._thread.start()
        logger.info("inference service listening on %s", self.socket_path)

    def shutdown(self) -> None:
        """Stop accepting, finish requests in progress, close connections, remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # serve_forever returns: no new connections
        with self._connections_lock:
            for conn in self._connections:
                # Wakes a handler blocked in recv (it sees end of stream); a handler
                # busy running a model still sends its answer.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
        self._remove_own_socket()
        logger.info("inference service on %s stopped", self.socket_path)

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def _prepare_directory(self) -> None:
        directory = self.socket_path.parent
        if not directory.exists():
            directory.mkdir(mode=self.dir_mode, parents=True)
        st = directory.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise InferenceServiceError(f"{directory} is not a directory")
        if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
            # Never chmod a shared directory such as /tmp.
            raise InferenceServiceError(
                f"socket directory {directory} is shared (world-writable or sticky); "
                "use a dedicated directory such as /run/edgeseal"
            )
        try:
            directory.chmod(self.dir_mode)
        except OSError as exc:
            raise InferenceServiceError(
                f"cannot set mode {self.dir_mode:o} on {directory}: {exc}"
            ) from exc

    def _remove_stale_socket(self) -> None:
        try:
            st = self.socket_path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise InferenceServiceError(
                f"{self.socket_path} exists and is not a socket; refusing to remove it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.socket_path))
        except OSError:
            logger.info("removing stale socket %s", self.socket_path)
            self.socket_path.unlink()
            return
        finally:
            probe.close()
        raise InferenceServiceError(f"another process is already serving on {self.socket_path}")

    def _remove_own_socket(self) -> None:
        with contextlib.suppress(OSError):
            st = self.socket_path.lstat()
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
                self.socket_path.unlink()

    # -- one connection -----------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)
        try:
            if self._stopping.is_set():
                return
            while self._serve_one(conn):
                pass
        except (TimeoutError, _PeerClosedError) as exc:
            logger.debug("inference connection closed: %s", exc)
        except OSError as exc:
            logger.debug("inference connection failed: %s", exc)
        finally:
            with self._connections_lock:
                self._connections.discard(conn)

    def _serve_one(self, conn: socket.socket) -> bool:
        """Read one request and answer it; False when the connection must close."""
        conn.settimeout(self.read_timeout)  # an idle connection is closed after this too
        first = conn.recv(PREFIX_SIZE)
        if not first:
            return False  # the client closed between requests
        deadline = time.monotonic() + self.read_timeout
        try:
            prefix = first + _recv_exact(conn, PREFIX_SIZE - len(first), deadline)
            header = parse_header(
                bytes(_recv_exact(conn, parse_prefix(prefix), deadline)),
                max_body_bytes=self.max_request_bytes,
            )
        except WireError as exc:
            # The rest of the frame cannot be located: answer, then close.
            code = "request-too-large" if exc.code == TOO_LARGE else "bad-frame"
            logger.info("refused an inference request: %s", exc.message)
            self._send_error(conn, code, exc.message)
            return False
        body = _recv_exact(conn, header.body_nbytes, deadline)
        try:
            tensors = decode_tensors(header, body)
        except WireError as exc:
            self._send_error(conn, "bad-frame", exc.message)
            return True
        self._answer(conn, header.fields, tensors)
        return not self._stopping.is_set()

    def _answer(
        self, conn: socket.socket, fields: Mapping[str, Any], tensors: list[npt.NDArray[Any]]
    ) -> None:
        version = fields.get("v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            self._send_error(
                conn, "unsupported-version", f"protocol version {version!r} is not supported"
            )
            return
        op = fields.get("op")
        try:
            loaded = self.holder.current()
            if op == "info":
                self._send(conn, {"info": loaded.describe()})
            elif op == "run":
                outputs = loaded.model.run(tensors)
                model = {"family": loaded.info.family, "version": loaded.info.version}
                self._send(conn, {"model": model}, outputs)
            else:
                self._send_error(conn, "unknown-op", f"unknown op {str(op)[:40]!r}; use info, run")
        except NoModelError as exc:
            self._send_error(conn, "no-model", exc.message)
        except InputMismatchError as exc:
            self._send_error(conn, "input-mismatch", f"input mismatch: {exc.message}")
        except RuntimeAdapterError as exc:
            logger.warning("inference failed: %s", exc.message)
            self._send_error(conn, "inference-failed", exc.message)
        except WireError as exc:  # an output the wire cannot carry
            self._send_error(conn, "internal", exc.message)

    def _send(
        self, conn: socket.socket, fields: dict[str, Any], tensors: Sequence[Any] = ()
    ) -> None:
        conn.settimeout(self.read_timeout)
        for part in encode_frame_parts(fields, tensors):
            conn.sendall(part)

    def _send_error(self, conn: socket.socket, code: str, message: str) -> None:
        with contextlib.suppress(OSError):
            self._send(conn, {"error": {"code": code, "message": message}})

    def _refuse_busy(self, conn: socket.socket) -> None:
        logger.warning("inference service busy: refusing a connection")
        self._send_error(conn, "busy", "too many connections; retry later")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = False  # server_close() joins the handlers: a graceful stop
    block_on_close = True

    def __init__(self, path: str, owner: InferenceServer) -> None:
        self.owner = owner
        super().__init__(path, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.owner._slots.acquire(blocking=False):
            self.owner._refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.owner._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints to stderr by default; a library logs (no tensor data here).
        # It calls this from inside its ``except`` block, so the exception is current.
        logger.exception("inference connection failed unexpectedly")  # noqa: LOG004

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._slots.release()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.owner._handle(self.request)


class _PeerClosedError(Exception):
    """The client closed the connection in the middle of a frame."""


def _recv_exact(conn: socket.socket, n: int, deadline: float) -> bytearray:
    """Exactly ``n`` bytes, all of them before ``deadline`` (a slow sender times out)."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("frame not received within the read timeout")
        conn.settimeout(remaining)
        count = conn.recv_into(view[got:])
        if count == 0:
            raise _PeerClosedError(f"peer closed after {got} of {n} bytes")
        got += count
    return buffer


def _tensor_json(details: Any) -> dict[str, Any]:
    return {"name": details.name, "dtype": str(details.dtype), "shape": list(details.shape)}
