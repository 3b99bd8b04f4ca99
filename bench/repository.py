"""Benchmark: the TUF repository at fleet scale.

For 100, 1,000 and 10,000 registered devices, in one run:

- publish: the time to publish one release: seal its content key to every
  device (HPKE), upload the sealed model, propose the family's new targets,
  sign it 2-of-3, publish it, and publish the envelopes into the hashed bins;
- metadata: the bytes of the current metadata set (the latest version of
  every role) on the server;
- refresh (no change): the bytes one device downloads for a refresh that
  finds nothing new;
- refresh (new release): the bytes one device downloads for a refresh that
  finds the new release, including the metadata to resolve the model target
  and its own envelope (target files themselves excluded).

Targets: publish for 10,000 devices under 30 s; a no-change refresh under
2 KB; a new-release refresh under 64 KB per device.

Run: ``.venv/bin/python bench/repository.py [--sizes 100,1000,10000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import io
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner
from tuf.ngclient import Updater, Urllib3Fetcher

from edgeseal.ota_server.repository import Repository
from edgeseal.sdk.envelope import seal_envelope
from edgeseal.sdk.sealed import seal_model

FAMILY = "bench"
PUBLISH_TARGET_S = 30.0
NO_CHANGE_TARGET = 2 * 1024
NEW_RELEASE_TARGET = 64 * 1024


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class CountingFetcher(Urllib3Fetcher):
    def __init__(self) -> None:
        super().__init__(socket_timeout=10)
        self.bytes = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        for chunk in super()._fetch(url):
            self.bytes += len(chunk)
            yield chunk


def refresh_bytes(client_dir: Path, base: str, root: bytes, lookups: list[str]) -> int:
    """Bytes one device downloads for refresh() plus the target lookups."""
    fetcher = CountingFetcher()
    updater = Updater(
        str(client_dir),
        f"{base}/metadata/",
        f"{base}/targets/",
        str(client_dir / "dl"),
        fetcher=fetcher,
        bootstrap=root,
    )
    updater.refresh()
    for path in lookups:
        if updater.get_targetinfo(path) is None:
            raise SystemExit(f"bench: {path} not found by the client")
    return fetcher.bytes


def publish_release(
    repo: Repository,
    managers: list[CryptoSigner],
    devices: list[tuple[str, ec.EllipticCurvePublicKey]],
    version: int,
    work: Path,
) -> float:
    """Publish one release for every device; return the seconds it took."""
    started = time.perf_counter()
    sealed = io.BytesIO()
    info = seal_model(
        io.BytesIO(os.urandom(256 * 1024)),
        sealed,
        family=FAMILY,
        version=version,
        hardware=["emulated"],
    )
    src = work / f"{FAMILY}-{version}.esm"
    src.write_bytes(sealed.getvalue())
    path = f"{FAMILY}/{version}/{FAMILY}-{version}.esm"
    target = repo.add_target_file(path, src, custom={"edgeseal": {"version": version}})
    proposal = repo.propose_family(FAMILY, add={path: target})
    for signer in managers[:2]:
        proposal.sign(signer, append=True)
    repo.publish_family(FAMILY, proposal)
    envelopes = {
        f"envelopes/{device_id}/{FAMILY}-{version}.env": seal_envelope(
            info.content_key, public, info.header
        )
        for device_id, public in devices
    }
    previous = (
        [f"envelopes/{d}/{FAMILY}-{version - 1}.env" for d, _ in devices] if version > 1 else []
    )
    repo.publish_envelopes(envelopes, remove=previous)
    return time.perf_counter() - started


def current_metadata_bytes(metadata_dir: Path) -> int:
    """Bytes of the newest version of every role (what a fresh client could need)."""
    newest: dict[str, tuple[int, int]] = {}
    for entry in metadata_dir.iterdir():
        version, _, role = entry.name.partition(".")
        if not version.isdigit():
            newest[entry.name] = (1 << 62, entry.stat().st_size)
            continue
        if role not in newest or newest[role][0] < int(version):
            newest[role] = (int(version), entry.stat().st_size)
    return sum(size for _, size in newest.values())


def run_size(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        officers = [CryptoSigner.generate_ecdsa() for _ in range(3)]
        managers = [CryptoSigner.generate_ecdsa() for _ in range(3)]
        repo = Repository.create(
            work / "repository",
            work / "keys",
            root_keys=[s.public_key for s in officers],
            root_threshold=2,
            root_signers=officers[:2],
            targets_keys=[s.public_key for s in officers],
            targets_threshold=2,
            targets_signers=officers[:2],
        )
        repo.set_family(FAMILY, [s.public_key for s in managers], 2, officers[:2])
        devices = [
            (f"dev-{i:05d}", ec.generate_private_key(ec.SECP256R1()).public_key())
            for i in range(count)
        ]
        publish_release(repo, managers, devices, 1, work)
        root = repo.root_bytes()
        me = devices[count // 2][0]
        client = work / "client"
        client.mkdir()
        with serve(repo.metadata_dir.parent) as base:
            refresh_bytes(client, base, root, [f"{FAMILY}/1/{FAMILY}-1.esm"])  # warm cache
            no_change = refresh_bytes(client, base, root, [])
            seconds = publish_release(repo, managers, devices, 2, work)
            lookups = [f"{FAMILY}/2/{FAMILY}-2.esm", f"envelopes/{me}/{FAMILY}-2.env"]
            new_release = refresh_bytes(client, base, root, lookups)
        return {
            "devices": count,
            "publish_s": seconds,
            "metadata": current_metadata_bytes(repo.metadata_dir),
            "no_change": no_change,
            "new_release": new_release,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    rows = [run_size(int(n)) for n in args.sizes.split(",")]
    print(f"{os.cpu_count()} CPUs; 256 envelope bins; release managers sign 2-of-3")
    head = f"{'devices':>8} {'publish s':>10} {'metadata':>10} {'refresh idle':>13} "
    head += f"{'refresh new':>12}  targets"
    print(head)
    print("-" * len(head + "  targets MET MET MET"))
    all_met = True
    for row in rows:
        verdicts = [
            "publish " + ("MET" if row["publish_s"] < PUBLISH_TARGET_S else "MISSED"),
            "idle " + ("MET" if row["no_change"] < NO_CHANGE_TARGET else "MISSED"),
            "new " + ("MET" if row["new_release"] < NEW_RELEASE_TARGET else "MISSED"),
        ]
        all_met &= all(v.endswith("MET") for v in verdicts)
        print(
            f"{row['devices']:>8} {row['publish_s']:>10.2f} {row['metadata'] / 1024:>8.0f}KB "
            f"{row['no_change']:>12}B {row['new_release'] / 1024:>10.1f}KB  {', '.join(verdicts)}"
        )
    print(
        "targets: publish for 10,000 devices < 30 s; no-change refresh < 2 KB; "
        "new-release refresh < 64 KB"
    )
    print("ALL TARGETS MET" if all_met else "SOME TARGETS MISSED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
