"""``edgeseal-agent open`` on the insecure software key backend: it works, and
says loudly that it is insecure, in the log stream and in the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from components import require_module
from edgeseal.hardware.policy import sign_pcr_policy
from edgeseal.hardware.software import SoftwareBackend
from edgeseal.sdk import modelgen

BIN = Path(sys.executable).parent


def test_open_with_software_backend_is_marked_insecure(tmp_path: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    authority = ec.generate_private_key(ec.SECP256R1())
    with SoftwareBackend(tmp_path / "keys") as backend:
        public = backend.create_device_key(authority.public_key())
        policy = sign_pcr_policy(authority, backend.pcr_read([0, 4, 7, 9, 15]))
    (tmp_path / "policy.json").write_bytes(policy.to_bytes())
    (tmp_path / "pub.pem").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    layers = modelgen.random_layers([3, 2], seed=5)
    (tmp_path / "m.tflite").write_bytes(modelgen.mlp_model(layers))
    x = np.ones((1, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
            env={**os.environ, "TSS2_LOG": "all+none"},
        )

    sealed = run(
        "edgeseal", "seal", "m.tflite", "--family", "f", "--version", "1",
        "--hardware", "x86_64", "--to", "pub.pem", "-o", "m.esm", "--envelope", "m.env",
    )  # fmt: skip
    assert sealed.returncode == 0, sealed.stderr
    done = run(
        "edgeseal-agent", "open", "m.esm", "--envelope", "m.env",
        "--tcti", f"software:{tmp_path / 'keys'}", "--policy", "policy.json",
        "--profile", "x86-dtpm", "--input", "x.npy", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "INSECURE software key backend" in done.stderr
    report = json.loads(done.stdout)
    assert report["insecure_key_backend"] is True and report["key_backend"] == "software"
    np.testing.assert_allclose(
        report["outputs"][0], modelgen.reference_mlp(x, layers), rtol=1e-5, atol=1e-6
    )
