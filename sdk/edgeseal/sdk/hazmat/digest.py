"""Plaintext digests of sealed models: BLAKE3 by default, SHA-256 on request.

Why BLAKE3: opening a model is decrypt + digest, and the digest was the
bottleneck. On the x86-64 development machine hashlib SHA-256 (SHA-NI) runs
at about 1.4 GB/s while AES-256-GCM runs at several GB/s; BLAKE3 runs at
about 4-5 GB/s on one core with AVX2/AVX-512 and uses NEON on the
Raspberry Pi 4, whose Cortex-A72 has no SHA-2 instructions at all.
``bench/open_sealed.py`` prints the figures side by side. SHA-256 stays
available through hazmat for callers bound to FIPS-approved algorithms.

The header names the algorithm (``digest_alg``) and is authenticated, so an
attacker cannot downgrade it without failing every chunk.

No I/O here; the hashers only see bytes they are handed.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Protocol, TypeAlias

from blake3 import blake3

from edgeseal.sdk.hazmat.format import DIGEST_SIZES

__all__ = ["DEFAULT_DIGEST_ALG", "DIGEST_ALGS", "Hasher", "PipelinedHasher", "new_hasher"]

#: What the safe recipe :func:`edgeseal.sdk.sealed.seal_model` always uses.
DEFAULT_DIGEST_ALG = "blake3"
DIGEST_ALGS = tuple(DIGEST_SIZES)

#: Hashing of chunk ``i`` waits on a worker thread while chunk ``i + 1`` is read
#: and decrypted; at most this many chunks wait, so memory stays a few chunks.
_MAX_PENDING = 4

_Bytes: TypeAlias = bytes | bytearray | memoryview


class Hasher(Protocol):
    """The part of the hashlib interface both algorithms share."""

    def update(self, data: _Bytes, /) -> object: ...

    def digest(self) -> bytes: ...


def new_hasher(alg: str, *, all_cores: bool = False) -> Hasher:
    """A fresh incremental hasher for ``alg`` (one of :data:`DIGEST_ALGS`).

    BLAKE3 hashes on one thread unless ``all_cores`` (``max_threads=AUTO``;
    SHA-256 cannot). Use all cores only when nothing else is running: beside
    a decrypting thread AUTO just competes for the same cores (measured on
    the 2-core development machine, 10-30 MB models: one BLAKE3 thread beside
    the decrypting one beat AUTO on that thread). Hashing inline between
    decryptions, as small models do, AUTO is about 15% faster at 2-4 chunks.
    """
    if alg == "blake3":
        return blake3(max_threads=blake3.AUTO) if all_cores else blake3()
    if alg == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {alg!r}; choose one of {', '.join(DIGEST_ALGS)}")


class PipelinedHasher:
    """The digest of a chunk sequence, hashed on a worker thread while the caller decrypts.

    Both hashlib and blake3 release the GIL on large buffers, so hashing
    chunk ``i`` overlaps with reading and decrypting chunk ``i + 1``; the open
    then costs about max(decrypt, hash) instead of their sum. With
    ``threaded=False`` (small models, where a thread costs more than it saves)
    it hashes inline, BLAKE3 on all cores. ``bench/open_sealed.py`` holds the figures.

    One plain thread fed by a :class:`queue.SimpleQueue` (not a thread pool:
    no future per chunk; measured about 5% faster opening 10-30 MB models).
    A semaphore keeps at most ``max_pending`` chunks waiting, which bounds the
    memory when chunks are fresh objects; buffers handed over must not change
    until :meth:`digest` returns.
    """

    def __init__(self, alg: str, *, threaded: bool, max_pending: int = _MAX_PENDING) -> None:
        self._hasher = new_hasher(alg, all_cores=not threaded)
        self._queue: queue.SimpleQueue[_Bytes | None] = queue.SimpleQueue()
        self._slots = threading.Semaphore(max_pending)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"edgeseal-{alg}", daemon=True)
            self._thread.start()

    def __enter__(self) -> PipelinedHasher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def update(self, data: _Bytes) -> None:
        if self._thread is None:
            self._hasher.update(data)
            return
        self._slots.acquire()
        self._queue.put(data)

    def digest(self) -> bytes:
        self._stop()
        if self._error is not None:
            raise self._error
        return self._hasher.digest()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._hasher.update(data)
            except BaseException as exc:  # noqa: BLE001 - re-raised by digest()
                self._error = exc
            finally:
                del data  # drop the buffer before the caller may reuse or release it
                self._slots.release()

    def _stop(self) -> None:
        """End the worker; afterwards it holds no reference to any buffer handed over."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
