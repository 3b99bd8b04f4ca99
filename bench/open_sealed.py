"""Benchmark: seal and open sealed models of 1, 10 and 100 MB against raw AES-GCM.

Usage: .venv/bin/python bench/open_sealed.py [--sizes 1,10,100] [--repeat 5]

For each size, one subprocess seals a random model twice (the "release"
side): with the recipe, whose plaintext digest is BLAKE3, and with hazmat and
a SHA-256 digest. Then a *fresh* subprocess per model opens it the way a
device does - envelope unwrap with a SoftwareRecipient, chunked decrypt,
digest check - so ``ru_maxrss`` is the peak of that open alone (plus the
interpreter). The BLAKE3 open process then, after the peak was recorded,
times the envelope unwrap alone, raw AES-256-GCM of the same library on the
same plaintext (one-shot and in 1 MiB chunks), and plain SHA-256 and BLAKE3
of it. Targets, per size: open (default, BLAKE3) >= 50% of the raw AEAD
figure, which is the one-shot AES-256-GCM decrypt of the whole model (the
same job: the plaintext model in fresh memory); open/raw against the chunked
figure (a hot reused buffer) is printed beside it for information; peak RSS
<= 2 x model + 64 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from blake3 import blake3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeseal.sdk.envelope import SoftwareRecipient, open_envelope, seal_envelope
from edgeseal.sdk.hazmat.container import seal_stream
from edgeseal.sdk.sealed import (
    DEFAULT_CHUNK_SIZE,
    ContentKey,
    SealedModelInfo,
    inspect_sealed_model,
    open_sealed_model,
    seal_model,
)

MB = 1_000_000
MiB = 1024 * 1024


def _write_envelope(workdir: Path, name: str, info: SealedModelInfo) -> None:
    device = ec.generate_private_key(ec.SECP256R1())
    (workdir / f"{name}.pem").write_bytes(
        device.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    envelope = seal_envelope(info.content_key, device.public_key(), info.header)
    (workdir / f"{name}.envelope").write_bytes(envelope)


def _seal_child(size_mb: int, workdir: Path) -> dict[str, float]:
    """Seal the same model twice: with the recipe (BLAKE3) and with hazmat (SHA-256)."""
    model = os.urandom(size_mb * MB)
    best = float("inf")
    info = None
    for _ in range(2):
        with (workdir / "blake3.esm").open("wb") as dst:
            start = time.perf_counter()
            info = seal_model(
                io.BytesIO(model), dst, family="bench", version=1, hardware=["x86-64"]
            )
            best = min(best, time.perf_counter() - start)
    assert info is not None
    _write_envelope(workdir, "blake3", info)
    key = ContentKey.generate()
    with (workdir / "sha256.esm").open("wb") as dst:
        header = seal_stream(
            io.BytesIO(model),
            dst,
            key=key,
            cipher="aes-256-gcm",
            family="bench",
            version=1,
            hardware=["x86-64"],
            chunk_size=DEFAULT_CHUNK_SIZE,
            digest_alg="sha256",
        )
    _write_envelope(workdir, "sha256", SealedModelInfo(header=header, content_key=key))
    return {"seal_mbps": size_mb / best}


def _best(repeat: int, func: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def _open_child(size_mb: int, workdir: Path, repeat: int, alg: str) -> dict[str, float]:
    """Open ``alg``.esm as a device does; then, with the peak recorded, time the raw parts."""
    device = serialization.load_pem_private_key((workdir / f"{alg}.pem").read_bytes(), None)
    assert isinstance(device, ec.EllipticCurvePrivateKey)
    recipient = SoftwareRecipient(device)
    envelope = (workdir / f"{alg}.envelope").read_bytes()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    best = float("inf")
    plaintext = b""
    for _ in range(repeat):
        plaintext = b""  # drop the previous result before the next open
        start = time.perf_counter()
        with (workdir / f"{alg}.esm").open("rb") as src:
            header = inspect_sealed_model(src)
            key = open_envelope(envelope, recipient, header)
            src.seek(0)
            opened = open_sealed_model(src, content_key=key)
        best = min(best, time.perf_counter() - start)
        assert opened.header.digest_alg == alg
        plaintext = opened.plaintext
        del opened
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"open_mbps": size_mb / best, "peak_rss_mb": peak_rss, "baseline_rss_mb": baseline_rss}
    if alg != "blake3":
        return result

    unwrap = _best(repeat, lambda: open_envelope(envelope, recipient, header))
    aead = AESGCM(AESGCM.generate_key(256))
    nonce = os.urandom(12)
    aad = os.urandom(32)
    ciphertext = aead.encrypt(nonce, plaintext, aad)
    oneshot = _best(repeat, lambda: aead.decrypt(nonce, ciphertext, aad))
    ciphertext = b""  # free it before the chunked copy
    chunks = [
        aead.encrypt(nonce, plaintext[i : i + MiB], aad) for i in range(0, len(plaintext), MiB)
    ]

    def chunked() -> None:
        for chunk in chunks:
            aead.decrypt(nonce, chunk, aad)

    chunked_time = _best(repeat, chunked)
    sha = _best(repeat, lambda: hashlib.sha256(plaintext).digest())
    b3 = _best(repeat, lambda: blake3(plaintext).digest())
    result.update(
        unwrap_ms=unwrap * 1000,
        raw_oneshot_mbps=size_mb / oneshot,
        raw_chunked_mbps=size_mb / chunked_time,
        sha256_mbps=size_mb / sha,
        blake3_mbps=size_mb / b3,
    )
    return result


def _run_child(*args: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="model sizes in MB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", choices=["seal", "open"], help=argparse.SUPPRESS)
    parser.add_argument("--alg", choices=["blake3", "sha256"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "seal":
        print(json.dumps(_seal_child(args.size, args.dir)))
        return
    if args.child == "open":
        print(json.dumps(_open_child(args.size, args.dir, args.repeat, args.alg)))
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; AES-256-GCM, 1 MiB chunks")
    header = (
        f"{'size':>6} {'seal':>6} {'open b3':>8} {'open sha':>8} {'raw 1shot':>9} "
        f"{'raw chunk':>9} {'sha256':>7} {'blake3':>7} {'/1shot':>6} {'/chunk':>6} "
        f"{'RSS b3':>7} {'RSS sha':>7} {'limit':>6} {'unwrap':>7}  targets"
    )
    print(header)
    print("-" * len(header))
    all_met = True
    for size_mb in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="edgeseal-bench-") as tmp:
            common = ["--size", str(size_mb), "--dir", tmp, "--repeat", str(args.repeat)]
            sealed = _run_child("--child", "seal", "--size", str(size_mb), "--dir", tmp)
            opened = _run_child("--child", "open", "--alg", "blake3", *common)
            opened_sha = _run_child("--child", "open", "--alg", "sha256", *common)
        vs_oneshot = opened["open_mbps"] / opened["raw_oneshot_mbps"]
        vs_chunked = opened["open_mbps"] / opened["raw_chunked_mbps"]
        limit = 2 * size_mb * MB / MiB + 64
        speed_ok = vs_oneshot >= 0.5
        rss_ok = max(opened["peak_rss_mb"], opened_sha["peak_rss_mb"]) <= limit
        all_met &= speed_ok and rss_ok
        print(
            f"{size_mb:>4}MB {sealed['seal_mbps']:>6.0f} {opened['open_mbps']:>8.0f} "
            f"{opened_sha['open_mbps']:>8.0f} {opened['raw_oneshot_mbps']:>9.0f} "
            f"{opened['raw_chunked_mbps']:>9.0f} {opened['sha256_mbps']:>7.0f} "
            f"{opened['blake3_mbps']:>7.0f} {vs_oneshot:>6.2f} {vs_chunked:>6.2f} "
            f"{opened['peak_rss_mb']:>5.0f}MB {opened_sha['peak_rss_mb']:>5.0f}MB "
            f"{limit:>4.0f}MB {opened['unwrap_ms']:>5.2f}ms  "
            f"speed {'MET' if speed_ok else 'MISSED'}, RSS {'MET' if rss_ok else 'MISSED'}"
        )
    print(
        "MB/s throughout. seal and open b3 = the recipes (BLAKE3 plaintext digest, the default); "
        "open sha = a hazmat SHA-256 model opened by the same recipe."
    )
    print(
        "open = envelope unwrap + chunked decrypt + digest check. The unwrap (P-256 ECDH + "
        "HKDF) is a fixed cost per open, timed alone in column 'unwrap'; with the other fixed "
        "costs (file open, header parse, buffers) it weighs most in the 1 MB row."
    )
    print(
        "raw 1shot = AES-256-GCM decrypt of the whole plaintext in one call (a fresh output "
        "buffer, the same job as an open: this is THE raw AEAD figure of the target); raw chunk "
        "= the same in 1 MiB chunks whose outputs are discarded (a hot, reused buffer: no page "
        "faults, which an open that must hold the whole model cannot avoid). sha256/blake3 = "
        "one-thread hash of the plaintext."
    )
    print(
        "target 1 (speed): /1shot = open b3 / raw 1shot >= 0.50; /chunk = open b3 / raw chunk, "
        "for information only. target 2 (RSS): peak RSS of both opens (MiB, own process each) "
        "<= 2 x model + 64 MiB."
    )
    print("all targets met" if all_met else "SOME TARGETS MISSED")


if __name__ == "__main__":
    main()
