"""Benchmark: seal and open sealed models of 1, 10 and 100 MB against raw AES-GCM.

Usage: .venv/bin/python bench/open_sealed.py [--sizes 1,10,100] [--repeat 3]

For each size, one subprocess seals a random model (the "release" side), and a
*fresh* subprocess opens it the way a device does - envelope unwrap with a
SoftwareRecipient, chunked decrypt, SHA-256 check - so ``ru_maxrss`` is the
peak of that open alone (plus the interpreter). The same open process then
times raw AES-256-GCM of the same library on the same plaintext, one-shot and
in 1 MiB chunks, and a plain SHA-256 of it, after the peak was recorded. Targets: open >= 50% of raw
AEAD throughput (the faster raw figure), peak RSS <= 2 x model + 64 MB.
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
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeseal.sdk.envelope import SoftwareRecipient, open_envelope, seal_envelope
from edgeseal.sdk.sealed import inspect_sealed_model, open_sealed_model, seal_model

MB = 1_000_000
MiB = 1024 * 1024


def _seal_child(size_mb: int, workdir: Path) -> dict[str, float]:
    model = os.urandom(size_mb * MB)
    best = float("inf")
    info = None
    for _ in range(2):
        with (workdir / "model.esm").open("wb") as dst:
            start = time.perf_counter()
            info = seal_model(
                io.BytesIO(model), dst, family="bench", version=1, hardware=["x86-64"]
            )
            best = min(best, time.perf_counter() - start)
    assert info is not None
    device = ec.generate_private_key(ec.SECP256R1())
    (workdir / "device.pem").write_bytes(
        device.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    envelope = seal_envelope(info.content_key, device.public_key(), info.header)
    (workdir / "envelope.bin").write_bytes(envelope)
    return {"seal_mbps": size_mb / best}


def _open_child(size_mb: int, workdir: Path, repeat: int) -> dict[str, float]:
    device = serialization.load_pem_private_key((workdir / "device.pem").read_bytes(), None)
    assert isinstance(device, ec.EllipticCurvePrivateKey)
    recipient = SoftwareRecipient(device)
    envelope = (workdir / "envelope.bin").read_bytes()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    best = float("inf")
    plaintext = b""
    for _ in range(repeat):
        plaintext = b""  # drop the previous result before the next open
        start = time.perf_counter()
        with (workdir / "model.esm").open("rb") as src:
            header = inspect_sealed_model(src)
            key = open_envelope(envelope, recipient, header)
            src.seek(0)
            plaintext = open_sealed_model(src, content_key=key).plaintext
        best = min(best, time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    aead = AESGCM(AESGCM.generate_key(256))
    nonce = os.urandom(12)
    aad = os.urandom(32)
    ciphertext = aead.encrypt(nonce, plaintext, aad)
    oneshot = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        aead.decrypt(nonce, ciphertext, aad)
        oneshot = min(oneshot, time.perf_counter() - start)
    del ciphertext
    chunks = [
        aead.encrypt(nonce, plaintext[i : i + MiB], aad) for i in range(0, len(plaintext), MiB)
    ]
    chunked = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for chunk in chunks:
            aead.decrypt(nonce, chunk, aad)
        chunked = min(chunked, time.perf_counter() - start)
    sha = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        hashlib.sha256(plaintext).digest()
        sha = min(sha, time.perf_counter() - start)
    return {
        "sha256_mbps": size_mb / sha,
        "open_mbps": size_mb / best,
        "raw_oneshot_mbps": size_mb / oneshot,
        "raw_chunked_mbps": size_mb / chunked,
        "baseline_rss_mb": baseline_rss,
        "peak_rss_mb": peak_rss,
    }


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
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "seal":
        print(json.dumps(_seal_child(args.size, args.dir)))
        return
    if args.child == "open":
        print(json.dumps(_open_child(args.size, args.dir, args.repeat)))
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; AES-256-GCM, 1 MiB chunks")
    header = (
        f"{'size':>6} {'seal MB/s':>10} {'open MB/s':>10} {'raw 1shot':>10} {'raw chunk':>10} "
        f"{'sha256':>7} {'open/raw':>9} {'peak RSS':>9} {'RSS limit':>10} {'base RSS':>9}  targets"
    )
    print(header)
    print("-" * len(header))
    all_met = True
    for size_mb in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="edgeseal-bench-") as tmp:
            sealed = _run_child("--child", "seal", "--size", str(size_mb), "--dir", tmp)
            opened = _run_child(
                "--child", "open", "--size", str(size_mb), "--dir", tmp,
                "--repeat", str(args.repeat),
            )  # fmt: skip
        raw = max(opened["raw_oneshot_mbps"], opened["raw_chunked_mbps"])
        ratio = opened["open_mbps"] / raw
        limit = 2 * size_mb * MB / MiB + 64
        speed_ok = ratio >= 0.5
        rss_ok = opened["peak_rss_mb"] <= limit
        all_met &= speed_ok and rss_ok
        print(
            f"{size_mb:>4}MB {sealed['seal_mbps']:>10.0f} {opened['open_mbps']:>10.0f} "
            f"{opened['raw_oneshot_mbps']:>10.0f} {opened['raw_chunked_mbps']:>10.0f} "
            f"{opened['sha256_mbps']:>7.0f} "
            f"{ratio:>9.2f} {opened['peak_rss_mb']:>7.0f}MB {limit:>8.0f}MB "
            f"{opened['baseline_rss_mb']:>7.0f}MB  "
            f"speed {'MET' if speed_ok else 'MISSED'}, RSS {'MET' if rss_ok else 'MISSED'}"
        )
    print("open/raw uses the faster raw figure; RSS in MiB; limit = 2 x model + 64 MiB")
    print(
        "sha256 = hashlib SHA-256 of the same plaintext, one thread: the open verifies the "
        "plaintext digest, so its throughput cannot exceed this"
    )
    print("all targets met" if all_met else "SOME TARGETS MISSED")


if __name__ == "__main__":
    main()
