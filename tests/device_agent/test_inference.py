"""The local inference service over a real Unix socket with real TFLite models."""

from __future__ import annotations

import json
import logging
import socket
import stat
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components import require_module
from edgeseal.device_agent.inference import (
    InferenceServer,
    InferenceServiceError,
    ModelHolder,
    ModelInfo,
)
from edgeseal.sdk import modelgen
from edgeseal.sdk.inference import InferenceClient, InferenceError
from edgeseal.sdk.inference_wire import decode_frame, encode_frame
from edgeseal.sdk.runtime import TFLiteModel, load_model

pytestmark = pytest.mark.tflite

SIZES = [8, 16, 4]
BATCH = 2
OLD, NEW = 1, 2


@pytest.fixture(autouse=True)
def _runtime() -> None:
    require_module("ai_edge_litert", "ai-edge-litert")


def layers_for(version: int) -> list[modelgen.Layer]:
    return modelgen.random_layers(SIZES, seed=100 + version)


def model_for(version: int) -> TFLiteModel:
    return load_model(modelgen.mlp_model(layers_for(version), batch=BATCH))


def reference(version: int, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return modelgen.reference_mlp(x, layers_for(version))


def inputs(seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((BATCH, SIZES[0])).astype(np.float32)


@pytest.fixture
def holder() -> ModelHolder:
    holder = ModelHolder()
    holder.swap(model_for(OLD), ModelInfo("detector", OLD))
    return holder


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "inference.sock"


@pytest.fixture
def server(sock_path: Path, holder: ModelHolder) -> Iterator[InferenceServer]:
    with InferenceServer(sock_path, holder, max_request_bytes=1 << 20, read_timeout=10) as srv:
        yield srv


def raw_connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(path))
    return conn


def read_answer(conn: socket.socket) -> dict[str, Any]:
    """One answer frame read off a raw socket (error answers carry no tensors)."""
    prefix = recv_exact(conn, 4)
    (length,) = struct.unpack(">I", prefix)
    header = recv_exact(conn, length)
    frame = decode_frame(prefix + header, max_body_bytes=0)
    return dict(frame.fields)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def header_frame(header: object) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw


# -- behaviour --------------------------------------------------------------------------------


def test_run_matches_numpy_reference(server: InferenceServer) -> None:
    with InferenceClient(server.socket_path) as client:
        for seed in range(3):
            x = inputs(seed)
            (y,) = client.run([x])
            np.testing.assert_allclose(y, reference(OLD, x), rtol=1e-5, atol=1e-5)
        result = client.run_detailed([inputs(9)])
        assert (result.family, result.version) == ("detector", OLD)


def test_info_describes_the_model_not_its_bytes(server: InferenceServer) -> None:
    with InferenceClient(server.socket_path) as client:
        info = client.info()
    assert info["family"] == "detector"
    assert info["version"] == OLD
    assert info["runtime"].startswith("ai-edge-litert")
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": [BATCH, SIZES[0]]}]
    assert info["outputs"] == [{"name": "output", "dtype": "float32", "shape": [BATCH, SIZES[-1]]}]


def test_no_model_loaded(sock_path: Path) -> None:
    with (
        InferenceServer(sock_path, ModelHolder()) as srv,
        InferenceClient(srv.socket_path) as client,
    ):
        for call in (client.info, lambda: client.run([inputs(0)])):
            with pytest.raises(InferenceError, match="no model loaded") as info:
                call()
            assert info.value.code == "no-model"


def test_socket_and_directory_modes(server: InferenceServer, sock_path: Path) -> None:
    st = sock_path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o750


def test_wrong_shape_and_dtype_keep_the_connection_usable(server: InferenceServer) -> None:
    with InferenceClient(server.socket_path) as client:
        with pytest.raises(InferenceError, match=r"input mismatch: .*got float32\[2, 7\]") as info:
            client.run([np.zeros((BATCH, 7), np.float32)])
        assert info.value.code == "input-mismatch"
        with pytest.raises(InferenceError, match=r"got int32\[2, 8\]"):
            client.run([np.zeros((BATCH, SIZES[0]), np.int32)])
        with pytest.raises(InferenceError, match="takes 1 input"):
            client.run([inputs(0), inputs(1)])
        x = inputs(5)
        np.testing.assert_allclose(client.run([x])[0], reference(OLD, x), rtol=1e-5, atol=1e-5)


def test_oversized_request_is_refused_from_its_header(server: InferenceServer) -> None:
    """A header claiming a 1 GiB body is answered before any of the body is sent."""
    claim = {
        "op": "run",
        "tensors": [{"dtype": "float32", "shape": [1 << 28], "nbytes": 1 << 30}],
    }
    tracemalloc.start()
    try:
        with raw_connect(server.socket_path) as conn:
            conn.sendall(header_frame(claim))  # and never a byte of the body
            answer = read_answer(conn)
            assert conn.recv(1) == b""  # then the server closes: it cannot resync
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer["error"]["code"] == "request-too-large"
    assert "request too large" in answer["error"]["message"]
    assert peak < 16 << 20  # nothing near the claimed size was allocated


def test_client_sees_the_refusal_of_an_oversized_request(server: InferenceServer) -> None:
    with InferenceClient(server.socket_path) as client, pytest.raises(InferenceError) as info:
        client.run([np.zeros((1024, 1024), np.float32)])  # 4 MiB > 1 MiB limit
    assert info.value.code == "request-too-large"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (struct.pack(">I", 1 << 20), "request-too-large"),  # header over 64 KiB
        (struct.pack(">I", 0), "bad-frame"),
        (struct.pack(">I", 5) + b"{nope", "bad-frame"),
        (header_frame([1, 2]), "bad-frame"),
        (
            header_frame(
                {"op": "run", "tensors": [{"dtype": "float64", "shape": [1], "nbytes": 8}]}
            ),
            "bad-frame",
        ),
        (
            header_frame(
                {"op": "run", "tensors": [{"dtype": "float32", "shape": [3], "nbytes": 4}]}
            ),
            "bad-frame",
        ),
    ],
)
def test_malformed_frames_are_answered_then_closed(
    server: InferenceServer, frame: bytes, code: str
) -> None:
    with raw_connect(server.socket_path) as conn:
        conn.sendall(frame)
        assert read_answer(conn)["error"]["code"] == code
        assert conn.recv(1) == b""


def test_bad_body_unknown_op_and_version_keep_the_connection(server: InferenceServer) -> None:
    bad_bool = (
        header_frame({"op": "run", "tensors": [{"dtype": "bool", "shape": [1], "nbytes": 1}]})
        + b"\x07"
    )
    with raw_connect(server.socket_path) as conn:
        conn.sendall(bad_bool)
        assert read_answer(conn)["error"]["code"] == "bad-frame"
        conn.sendall(encode_frame({"op": "train"}))
        assert read_answer(conn)["error"]["code"] == "unknown-op"
        conn.sendall(encode_frame({"op": "info", "v": 2}))
        assert read_answer(conn)["error"]["code"] == "unsupported-version"
        conn.sendall(encode_frame({"op": "info"}))
        assert read_answer(conn)["info"]["version"] == OLD


def test_slow_sender_is_disconnected(sock_path: Path, holder: ModelHolder) -> None:
    with (
        InferenceServer(sock_path, holder, read_timeout=0.2) as srv,
        raw_connect(srv.socket_path) as conn,
    ):
        conn.sendall(b"\x00\x00")  # half a prefix, then nothing
        assert conn.recv(1) == b""  # closed by the server, no answer


def test_connection_limit(sock_path: Path, holder: ModelHolder) -> None:
    with InferenceServer(sock_path, holder, max_connections=1) as srv:
        with raw_connect(srv.socket_path) as first:
            first.sendall(encode_frame({"op": "info"}))
            assert "info" in read_answer(first)  # the first connection is being served
            with raw_connect(srv.socket_path) as second:
                assert read_answer(second)["error"]["code"] == "busy"
        # The slot frees once the handler has seen the first connection close.
        for _ in range(500):
            try:
                with InferenceClient(srv.socket_path) as client:
                    assert client.info()["version"] == OLD
                break
            except InferenceError as exc:
                assert exc.code == "busy"
                time.sleep(0.01)
        else:
            pytest.fail("the connection slot was never released")


def test_tensor_contents_are_never_logged(
    server: InferenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    x = np.full((BATCH, SIZES[0]), 4242.125, np.float32)
    with InferenceClient(server.socket_path) as client:
        client.run([x])
        with pytest.raises(InferenceError):
            client.run([np.full((BATCH, 3), 4242.125, np.float32)])
    assert "4242" not in caplog.text


# -- socket file life cycle -------------------------------------------------------------------


def test_stale_socket_is_replaced_and_removed_at_shutdown(
    sock_path: Path, holder: ModelHolder
) -> None:
    sock_path.parent.mkdir(mode=0o750)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # a socket file nobody listens on, as after a crash
    srv = InferenceServer(sock_path, holder)
    srv.start()
    with InferenceClient(sock_path) as client:
        assert client.info()["version"] == OLD
    srv.shutdown()
    assert not sock_path.exists()


def test_refuses_to_remove_a_file_that_is_not_a_socket(
    sock_path: Path, holder: ModelHolder
) -> None:
    sock_path.parent.mkdir(mode=0o750)
    sock_path.write_text("not a socket")
    with pytest.raises(InferenceServiceError, match="not a socket"):
        InferenceServer(sock_path, holder).start()
    assert sock_path.read_text() == "not a socket"


def test_refuses_a_socket_another_server_listens_on(server: InferenceServer) -> None:
    with pytest.raises(InferenceServiceError, match="already serving"):
        InferenceServer(server.socket_path, server.holder).start()
    with InferenceClient(server.socket_path) as client:  # the first one is untouched
        assert client.info()["version"] == OLD


def test_refuses_a_shared_directory(tmp_path: Path, holder: ModelHolder) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(InferenceServiceError, match="shared"):
        InferenceServer(shared / "s.sock", holder).start()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_shutdown_closes_idle_connections(sock_path: Path, holder: ModelHolder) -> None:
    srv = InferenceServer(sock_path, holder, read_timeout=600)
    srv.start()
    with raw_connect(sock_path) as idle:
        idle.sendall(encode_frame({"op": "info"}))
        read_answer(idle)
        stopper = threading.Thread(target=srv.shutdown)
        stopper.start()
        stopper.join(timeout=30)  # a hang guard, not a timing assertion
        assert not stopper.is_alive()
        assert idle.recv(1) == b""
    assert not sock_path.exists()


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_clients_get_their_own_answers(server: InferenceServer) -> None:
    errors: list[str] = []

    def worker(thread: int) -> None:
        with InferenceClient(server.socket_path) as client:
            for i in range(20):
                x = inputs(1000 * thread + i)
                (y,) = client.run([x])
                if not np.allclose(y, reference(OLD, x), rtol=1e-5, atol=1e-5):
                    errors.append(f"thread {thread} request {i}: wrong answer")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_swap_during_traffic_never_mixes_models(
    server: InferenceServer, holder: ModelHolder
) -> None:
    models = {OLD: model_for(OLD), NEW: model_for(NEW)}
    stop = threading.Event()
    seen: dict[int, int] = {OLD: 0, NEW: 0}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(thread: int) -> None:
        with InferenceClient(server.socket_path) as client:
            i = 0
            while not stop.is_set() or i < 10:
                x = inputs(10_000 * thread + i)
                result = client.run_detailed([x])
                (y,) = result.outputs
                matches = [
                    v for v in (OLD, NEW) if np.allclose(y, reference(v, x), rtol=1e-5, atol=1e-5)
                ]
                with lock:
                    if matches != [result.version]:
                        errors.append(f"v{result.version} answered, output matches {matches}")
                    seen[result.version] += 1
                i += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for n in range(40):
        version = NEW if n % 2 == 0 else OLD
        holder.swap(models[version], ModelInfo("detector", version))
        with InferenceClient(server.socket_path) as probe:
            probe.info()  # let some traffic through between swaps
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert seen[OLD] > 0 and seen[NEW] > 0
