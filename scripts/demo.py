"""`make demo`: the edgeseal story on one machine, through the real commands.

1. An embedded team manufactures an emulated device: swtpm with an EK
   certificate from a local CA, measured boot, a decryption key in the TPM
   bound to a signed PCR policy.
2. A release manager builds a small TFLite model and seals it to the device.
3. The device opens it (key unwrapped in the TPM, model decrypted in memory
   only) and runs inference; the output matches numpy's.
4. Someone swaps the device's kernel: after the reboot the TPM refuses to
   unwrap the key, and the agent says exactly why.
5. The embedded team approves the new kernel (a newly signed PCR policy): the
   same sealed model opens again, with no re-sealing.
6. A sealed model with one flipped bit is refused, and nothing is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeseal.sdk import modelgen

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
BIN = Path(sys.executable).parent
DEVICE = OUT / "device-1"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(*argv: str, expect_fail: bool = False) -> subprocess.CompletedProcess[str]:
    shown = " ".join(str(a).replace(str(ROOT) + "/", "") for a in argv)
    print(f"$ {shown}", flush=True)
    proc = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], text=True, capture_output=True, check=False
    )
    for line in (proc.stdout + proc.stderr).splitlines():
        if "XNNPACK delegate" not in line:
            print(f"  {line}")
    if expect_fail and proc.returncode == 0:
        raise SystemExit(f"demo: expected `{shown}` to be refused, but it succeeded")
    if not expect_fail and proc.returncode != 0:
        raise SystemExit(f"demo: `{shown}` failed with exit code {proc.returncode}")
    return proc


def main() -> int:
    os.environ.setdefault("TSS2_LOG", "all+none")
    if OUT.exists():
        if (DEVICE / "device.json").exists():
            run("edgeseal-agent", "emulate", "stop", "--dir", str(DEVICE))
        shutil.rmtree(OUT)
    OUT.mkdir()
    try:
        story()
    finally:
        if (DEVICE / "device.json").exists():
            subprocess.run(
                [str(BIN / "edgeseal-agent"), "emulate", "stop", "--dir", str(DEVICE)],
                capture_output=True,
                check=False,
            )
    print("\n\033[1mdemo complete\033[0m: every step above ran against a real swtpm and a")
    print("real TFLite interpreter; outputs in demo-out/")
    return 0


def story() -> None:
    step("1. Embedded team: manufacture an emulated device (swtpm, EK cert, measured boot)")
    run("edgeseal-agent", "emulate", "create", "--dir", str(DEVICE), "--id", "demo-device-1")
    run("edgeseal-agent", "emulate", "start", "--dir", str(DEVICE))

    step("2. Release manager: build a TFLite model and seal it to the device's TPM key")
    layers = modelgen.random_layers([8, 16, 4], seed=7)
    model_path = OUT / "classifier.tflite"
    model_path.write_bytes(modelgen.mlp_model(layers))
    x = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(1, 8)
    np.save(OUT / "input.npy", x)
    expected = modelgen.reference_mlp(x, layers)
    print(f"  built {model_path.name}: {model_path.stat().st_size} bytes, an 8-16-4 MLP")
    sealed = OUT / "classifier-v1.esm"
    envelope = OUT / "classifier-v1.demo-device-1.env"
    run(
        "edgeseal", "seal", str(model_path), "--family", "classifier", "--version", "1",
        "--hardware", "emulated", "--to", str(DEVICE / "device-key.pub.pem"),
        "-o", str(sealed), "--envelope", str(envelope),
    )  # fmt: skip
    run("edgeseal", "inspect", str(sealed))

    step("3. Device: unwrap the key in the TPM, decrypt in memory, run inference")
    opened = run(
        "edgeseal-agent", "open", str(sealed), "--envelope", str(envelope),
        "--device", str(DEVICE), "--input", str(OUT / "input.npy"), "--json",
    )  # fmt: skip
    got = np.array(json.loads(opened.stdout)["outputs"][0], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    print(f"  numpy reference {np.array2string(expected, precision=5)}: outputs match")

    step("4. Attacker: swap the kernel; after the reboot the TPM refuses the key")
    run("edgeseal-agent", "emulate", "tamper", "--dir", str(DEVICE), "kernel")
    run("edgeseal-agent", "emulate", "stop", "--dir", str(DEVICE))
    run("edgeseal-agent", "emulate", "start", "--dir", str(DEVICE))
    run("edgeseal-agent", "emulate", "status", "--dir", str(DEVICE))
    run(
        "edgeseal-agent", "open", str(sealed), "--envelope", str(envelope),
        "--device", str(DEVICE), "--input", str(OUT / "input.npy"), expect_fail=True,
    )  # fmt: skip

    step("5. Embedded team: approve the new kernel (signed PCR policy); the model opens again")
    run("edgeseal-agent", "emulate", "approve", "--dir", str(DEVICE))
    run(
        "edgeseal-agent", "open", str(sealed), "--envelope", str(envelope),
        "--device", str(DEVICE), "--input", str(OUT / "input.npy"),
    )  # fmt: skip

    step("6. A sealed model with one flipped bit is refused")
    corrupt = OUT / "classifier-v1.corrupt.esm"
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x01
    corrupt.write_bytes(bytes(data))
    run(
        "edgeseal-agent", "open", str(corrupt), "--envelope", str(envelope),
        "--device", str(DEVICE), expect_fail=True,
    )  # fmt: skip
    run("edgeseal-agent", "emulate", "stop", "--dir", str(DEVICE))


if __name__ == "__main__":
    sys.exit(main())
