"""LockedBackend: every KeyBackend call runs under one lock (the TPM serves one caller)."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeseal.device_agent.locked_backend import LockedBackend
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.software import SoftwareBackend

#: The protocol's members, as the hardware layer declares them (not a copy of a list).
PROTOCOL_MEMBERS = sorted(
    name
    for name, value in vars(KeyBackend).items()
    if (not name.startswith("_") or name in ("__enter__", "__exit__"))
    and (callable(value) or isinstance(value, property))
)


class OverlapRecorder:
    """A fake inner backend: every method records how many callers are inside at once."""

    def __init__(self, hold_s: float = 0.002) -> None:
        self.hold_s = hold_s
        self.inside = 0
        self.max_inside = 0
        self.calls: list[tuple[str, str]] = []
        self._count_lock = threading.Lock()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)

        def method(*_args: Any, **_kwargs: Any) -> Any:
            with self._count_lock:
                self.inside += 1
                self.max_inside = max(self.max_inside, self.inside)
                self.calls.append((threading.current_thread().name, name))
            time.sleep(self.hold_s)
            with self._count_lock:
                self.inside -= 1
            return (b"attest", b"sig") if name == "quote" else b"x"

        return method


def hammer(target: Any, rounds: int = 25) -> OverlapRecorder:
    """Two threads calling a mix of methods on ``target`` at once."""
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        for _ in range(rounds):
            target.quote(b"n" * 32, [0, 4])
            target.pcr_read([0])
            target.nv_counter_read(0x01500010)
            target.ecdh_zgen(None)

    threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return target.inner if isinstance(target, LockedBackend) else target


def test_calls_from_two_threads_never_overlap() -> None:
    recorder = OverlapRecorder()
    hammer(LockedBackend(recorder))  # type: ignore[arg-type]
    assert len(recorder.calls) == 2 * 25 * 4
    assert recorder.max_inside == 1


def test_the_overlap_check_can_fail_without_the_lock() -> None:
    recorder = hammer(OverlapRecorder(hold_s=0.005))
    assert recorder.max_inside == 2  # the same load on the bare backend does overlap


def test_exclusive_holds_the_lock_across_calls() -> None:
    recorder = OverlapRecorder(hold_s=0.01)
    locked = LockedBackend(recorder)  # type: ignore[arg-type]
    inside = threading.Event()
    done = threading.Event()

    def other() -> None:
        inside.wait(5)
        locked.nv_counter_read(1)
        done.set()

    t = threading.Thread(target=other, name="other")
    t.start()
    with locked.exclusive() as backend:
        backend.pcr_read([0])
        inside.set()
        assert not done.wait(0.1)  # the other thread waits for us
        backend.quote(b"n", [0])
    t.join(5)
    assert [c[1] for c in recorder.calls] == ["pcr_read", "quote", "nv_counter_read"]


@pytest.mark.parametrize("name", PROTOCOL_MEMBERS)
def test_every_protocol_member_is_wrapped_with_the_same_signature(name: str) -> None:
    assert name in vars(LockedBackend), f"LockedBackend does not wrap {name}"
    ours, theirs = vars(LockedBackend)[name], vars(KeyBackend)[name]
    if isinstance(theirs, property):
        assert isinstance(ours, property)
        return
    assert inspect.signature(ours).parameters.keys() == inspect.signature(theirs).parameters.keys()
    for param, expected in zip(
        inspect.signature(ours).parameters.values(),
        inspect.signature(theirs).parameters.values(),
        strict=True,
    ):
        assert (param.kind, param.default) == (expected.kind, expected.default), (name, param)


def test_protocol_includes_the_attestation_methods() -> None:
    for name in (
        "create_attestation_key",
        "attestation_key_public",
        "quote",
        "activate_credential",
    ):
        assert name in PROTOCOL_MEMBERS


def test_wraps_a_real_backend(tmp_path: Path) -> None:
    inner = SoftwareBackend(tmp_path / "keys")
    with LockedBackend(inner) as backend:
        assert isinstance(backend, KeyBackend)
        assert backend.kind == inner.kind and backend.insecure is True
        public = backend.create_device_key(None)
        assert backend.device_key_public().public_numbers() == public.public_numbers()
        backend.nv_counter_define(0x01500010)
        assert backend.nv_counter_increment(0x01500010) == backend.nv_counter_read(0x01500010)
        assert backend.pcr_read([0, 4]).indices == [0, 4]
