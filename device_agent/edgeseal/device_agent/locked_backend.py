"""One key backend shared by the agent's threads: every call under one lock.

A TPM serves one command at a time, and swtpm one connection: the agent
opens the backend once and its threads (the update cycle, the serial
console's attestation responder) share it. tpm2-pytss's ESAPI context is not
thread-safe and a TPM command sequence (start a policy session, satisfy it,
use a key, flush) must not interleave with another thread's. So
:class:`LockedBackend` wraps a :class:`~edgeseal.hardware.backend.KeyBackend`
and runs each method under one re-entrant lock; :meth:`LockedBackend.exclusive`
holds it across several calls (read the PCRs, then quote them, with no extend
in between).

The lock is re-entrant so a caller already inside :meth:`exclusive` can call
the methods; it is held for one TPM command sequence at a time, never across
network I/O, so the console waits at most one TPM operation for the update
cycle and the other way round.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Self

from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.policy import PCRValues, SignedPCRPolicy


class LockedBackend:
    """A :class:`KeyBackend` that serializes every call to ``inner`` (see the module docstring)."""

    def __init__(self, inner: KeyBackend) -> None:
        self._inner = inner
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LockedBackend({self._inner!r})"

    @property
    def inner(self) -> KeyBackend:
        """The wrapped backend (callers must not use it directly while others share it)."""
        return self._inner

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Self]:
        """Hold the lock across several calls: ``with locked.exclusive() as backend: ...``."""
        with self._lock:
            yield self

    # -- KeyBackend ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._inner.kind

    @property
    def insecure(self) -> bool:
        return self._inner.insecure

    def close(self) -> None:
        with self._lock:
            self._inner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create_device_key(
        self, authority: ec.EllipticCurvePublicKey | None, *, replace: bool = False
    ) -> ec.EllipticCurvePublicKey:
        with self._lock:
            return self._inner.create_device_key(authority, replace=replace)

    def device_key_public(self) -> ec.EllipticCurvePublicKey:
        with self._lock:
            return self._inner.device_key_public()

    def ecdh_zgen(
        self, peer: ec.EllipticCurvePublicKey, *, approved: SignedPCRPolicy | None = None
    ) -> bytes:
        with self._lock:
            return self._inner.ecdh_zgen(peer, approved=approved)

    def seal(
        self,
        secret: bytes,
        *,
        pcrs: Sequence[int] = (),
        authority: ec.EllipticCurvePublicKey | None = None,
    ) -> bytes:
        with self._lock:
            return self._inner.seal(secret, pcrs=pcrs, authority=authority)

    def unseal(self, blob: bytes, *, approved: SignedPCRPolicy | None = None) -> bytes:
        with self._lock:
            return self._inner.unseal(blob, approved=approved)

    def pcr_read(self, indices: Sequence[int]) -> PCRValues:
        with self._lock:
            return self._inner.pcr_read(indices)

    def pcr_extend(self, index: int, digest: bytes) -> None:
        with self._lock:
            self._inner.pcr_extend(index, digest)

    def nv_counter_define(self, index: int) -> None:
        with self._lock:
            self._inner.nv_counter_define(index)

    def nv_counter_increment(self, index: int) -> int:
        with self._lock:
            return self._inner.nv_counter_increment(index)

    def nv_counter_read(self, index: int) -> int:
        with self._lock:
            return self._inner.nv_counter_read(index)

    def ek_certificates(self) -> list[bytes]:
        with self._lock:
            return self._inner.ek_certificates()

    def flush_transients(self) -> None:
        with self._lock:
            self._inner.flush_transients()

    # -- attestation (TCG: AK, quote, credential activation) ------------------------------------

    def create_attestation_key(self, *, replace: bool = False) -> bytes:
        with self._lock:
            return self._inner.create_attestation_key(replace=replace)

    def attestation_key_public(self) -> bytes:
        with self._lock:
            return self._inner.attestation_key_public()

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        with self._lock:
            return self._inner.quote(qualifying_data, pcrs)

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        with self._lock:
            return self._inner.activate_credential(credential_blob, encrypted_secret)


__all__ = ["LockedBackend"]


@contextlib.contextmanager
def exclusive(backend: KeyBackend) -> Iterator[KeyBackend]:
    """``backend`` with no other thread's TPM call in between (read PCRs, then quote them).

    Holds the lock of a :class:`LockedBackend`; any other backend is not
    shared between threads, so it is yielded as is.
    """
    if isinstance(backend, LockedBackend):
        with backend.exclusive() as held:
            yield held
    else:
        yield backend
