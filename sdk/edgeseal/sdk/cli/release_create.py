"""``edgeseal release create``: seal a model locally and upload it as a new release.

Steps: read the golden tensors (computing missing outputs with the local TFLite
runtime), seal the model to a temporary ``.esm`` (mode 0600, always removed),
hash it, seal the content key to the server's key-encryption key, create the
release and stream the upload. The plaintext model and the content key never
leave this machine unencrypted.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from edgeseal.sdk.cli.common import CLIError, open_input
from edgeseal.sdk.envelope import seal_envelope
from edgeseal.sdk.files import atomic_writer
from edgeseal.sdk.golden import MAX_GOLDEN_BYTES, MAX_TENSORS, GoldenTensor, HealthCheck
from edgeseal.sdk.releases import KEY_RELEASE_POLICIES, PlaintextDigest, ReleaseMetadata
from edgeseal.sdk.sealed import CIPHERS, seal_model

logger = logging.getLogger(__name__)

#: A golden .npz is at most this large on disk and when decompressed (with npy headers).
MAX_GOLDEN_FILE = 2 * MAX_GOLDEN_BYTES
_MEMBER_RE = re.compile(r"(input|output)_(\d{1,2})\.npy")


def register(actions: Any, common: argparse.ArgumentParser) -> None:
    p: argparse.ArgumentParser = actions.add_parser(
        "create",
        parents=[common],
        allow_abbrev=False,
        help="seal a model and upload it as a new release",
        description=(
            "Seal MODEL locally, seal its content key to the server's key-encryption key, "
            "and upload both with the release metadata. Prints the release id; the release "
            "is published once enough release managers ran 'edgeseal release sign' on it."
        ),
    )
    p.add_argument("model", type=Path, help="the plaintext model (.tflite)")
    p.add_argument("--family", required=True, help="model family, e.g. 'detector'")
    p.add_argument("--version", required=True, type=int, help="release version (integer)")
    p.add_argument(
        "--hardware", required=True, action="append", help="hardware class (repeat for several)"
    )
    p.add_argument("--channel", required=True, help="release channel, e.g. 'stable'")
    p.add_argument(
        "--rollout", type=int, default=100, metavar="PCT", help="rollout percentage (default 100)"
    )
    p.add_argument(
        "--golden",
        required=True,
        type=Path,
        metavar="FILE.npz",
        help="golden tensors: arrays input_0.. and (optionally) output_0..",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest absolute difference allowed per output element (default 1e-4)",
    )
    p.add_argument(
        "--latency-budget-ms", type=int, default=1000, help="one inference's budget (default 1000)"
    )
    p.add_argument("--min-agent-version", default="0.1.0", help="oldest agent that may install it")
    p.add_argument(
        "--key-release",
        choices=KEY_RELEASE_POLICIES,
        default="envelope",
        help="envelope: each device's key is published as a TUF target (default); "
        "attested: the server releases it only after a fresh quote of an enrolled, "
        "unrevoked device in an approved boot state",
    )
    p.add_argument(
        "--cipher",
        choices=CIPHERS,
        default=os.environ.get("EDGESEAL_CIPHER", "aes-256-gcm"),
        help="chacha20-poly1305 for CPUs without AES instructions (Raspberry Pi 4)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="also keep the sealed model here (for 'release sign --sealed-model')",
    )
    p.set_defaults(func=run)


def load_golden(path: Path) -> tuple[list[Any], list[Any]]:
    """Read ``input_0..``/``output_0..`` arrays from an .npz, bounded before decompressing."""
    try:
        import numpy as np
    except ImportError as exc:
        raise CLIError("reading golden tensors needs numpy: pip install numpy") from exc
    try:
        if path.stat().st_size > MAX_GOLDEN_FILE:
            raise CLIError(f"{path} is larger than {MAX_GOLDEN_FILE} bytes")
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except OSError as exc:
        raise CLIError(f"cannot read the golden file {path}: {exc.strerror}") from exc
    except zipfile.BadZipFile as exc:
        raise CLIError(f"{path} is not an .npz file") from exc
    if sum(m.file_size for m in members) > MAX_GOLDEN_FILE:
        raise CLIError(f"{path} decompresses to more than {MAX_GOLDEN_FILE} bytes")
    sides: dict[str, dict[int, str]] = {"input": {}, "output": {}}
    for member in members:
        match = _MEMBER_RE.fullmatch(member.filename)
        if match is None:
            raise CLIError(
                f"{path} holds {member.filename[:60]!r}; only input_N and output_N arrays belong"
            )
        sides[match[1]][int(match[2])] = member.filename[: -len(".npy")]
    for side, found in sides.items():
        if sorted(found) != list(range(len(found))) or len(found) > MAX_TENSORS:
            raise CLIError(f"{path}: {side} arrays must be numbered 0..N-1 (N <= {MAX_TENSORS})")
    if not sides["input"]:
        raise CLIError(f"{path} has no input_0 array")
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = [data[sides["input"][i]] for i in range(len(sides["input"]))]
            outputs = [data[sides["output"][i]] for i in range(len(sides["output"]))]
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot load the arrays in {path}: {exc}") from exc
    return inputs, outputs


def compute_outputs(model: Path, inputs: list[Any]) -> tuple[list[Any], str]:
    """Run the model on the golden inputs with the local TFLite runtime."""
    from edgeseal.sdk.runtime import RuntimeUnavailableError, load_model

    with open_input(model, "the model") as handle:
        data = handle.read()
    try:
        loaded = load_model(data)
    except RuntimeUnavailableError as exc:
        raise CLIError(
            "the golden file has no output_N arrays and no TFLite runtime is installed to "
            "compute them: add them, or pip install 'edgeseal[agent]'"
        ) from exc
    return loaded.run(inputs), loaded.runtime_name


def sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def run(args: argparse.Namespace) -> int:
    from edgeseal.sdk.cli.release_cmd import make_client, print_json

    inputs, outputs = load_golden(args.golden)
    if not outputs:
        outputs, runtime = compute_outputs(args.model, inputs)
        print(f"computed {len(outputs)} golden output(s) with {runtime}", file=sys.stderr)
    health = HealthCheck(
        inputs=tuple(GoldenTensor.from_numpy(a) for a in inputs),
        outputs=tuple(GoldenTensor.from_numpy(a) for a in outputs),
        tolerance=args.tolerance,
        latency_budget_ms=args.latency_budget_ms,
    )
    client = make_client(args)
    kek = client.kek_public_key()
    with tempfile.TemporaryDirectory(prefix="edgeseal-release-") as tmp:
        sealed = Path(tmp) / f"{args.family}-{args.version}.esm"
        with open_input(args.model, "the model") as src, atomic_writer(sealed, mode=0o600) as dst:
            info = seal_model(
                src,
                dst,
                family=args.family,
                version=args.version,
                hardware=args.hardware,
                cipher=args.cipher,
            )
        header = info.header
        metadata = ReleaseMetadata(
            family=header.family,
            version=header.version,
            hardware=tuple(header.hardware),
            channel=args.channel,
            rollout_percent=args.rollout,
            plaintext=PlaintextDigest(
                header.digest_alg, header.plaintext_digest, header.plaintext_size
            ),
            min_agent_version=args.min_agent_version,
            health_check=health,
            key_release=args.key_release,
        )
        size, sha256 = sha256_file(sealed)
        envelope = seal_envelope(info.content_key, kek, header)
        if args.output is not None:
            with sealed.open("rb") as src, atomic_writer(args.output) as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
        created = client.create_release(
            family=header.family,
            version=header.version,
            custom=metadata.to_custom(),
            kek_envelope=envelope,
            sealed_size=size,
            sealed_sha256=sha256,
        )
        logger.info("created release %s; uploading %d bytes", created.id, size)
        try:
            uploaded = client.upload_sealed_model(created.id, sealed)
        except Exception:
            print(f"release {created.id} was created but its upload failed", file=sys.stderr)
            raise
    result = {
        "id": uploaded.id,
        "state": uploaded.state,
        "proposal_version": uploaded.proposal_version,
        "family": header.family,
        "version": header.version,
        "target_path": metadata.target_path,
        "sealed_size": size,
        "sealed_sha256": sha256,
    }
    if args.json:
        print_json(result)
    else:
        print(uploaded.id)
        print(
            f"{header.family} {header.version}: {uploaded.state}; sealed model {size} bytes, "
            f"sha256 {sha256}",
            file=sys.stderr,
        )
        print(f"next: edgeseal release sign {uploaded.id} --key YOUR_KEY", file=sys.stderr)
    return 0
