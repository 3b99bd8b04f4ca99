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
7. A fleet operator starts the OTA server: a TUF repository whose root and
   targets keys are held 2-of-3 by security officers, the model family
   delegated to three release managers, 2 of whom must sign.
8. The device is registered; a release manager creates release 1 (sealed on
   their machine, content key sealed to the server's key-encryption key); one
   signature publishes nothing, the second publishes it, and the server
   makes the device's envelope.
9. The device fetches the release through TUF (the agent's own TUF client),
   opens it in its TPM and runs it; the audit log verifies.
10. The embedded team provisions the agent; its daemon installs release 1
    into slot A (verify, unwrap in the TPM, health check, commit) and serves
    it to applications on a local socket: they never see the weights.
11. Release 2 is published and installed while the agent serves.
12. Release 3 is a bad model: it fails its golden health check in the trial,
    the agent returns to release 2 and says why.
13. Release 4 is installing when the power is cut during its trial: the next
    start reverts to release 2, the last committed model.
14. Release 5 is "attested": no envelope is published, the agent gets its
    key from the server after a fresh TPM quote of its enrolled boot state.
    Then a field technician plugs into the device's serial console: with the trust
    bundle the operator exported (and its pinned key), `edgeseal attest` checks
    the device's TPM quote offline - enrolled AK, fresh nonce, boot PCRs equal
    to the enrollment baseline, a published model: PASS.
15. The kernel is swapped again: after the reboot the agent keeps the model
    key locked but still answers, and the technician's check fails, naming
    the PCR that changed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from edgeseal.hardware.serial_link import DEVICE_LINK, TECHNICIAN_LINK, SerialLink
from edgeseal.sdk import modelgen

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
BIN = Path(sys.executable).parent
DEVICE = OUT / "device-1"
SERVER_DATA = OUT / "server"
FAMILY = "classifier"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(
    *argv: str, expect_fail: bool = False, env: dict[str, str] | None = None, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    shown = " ".join(str(a).replace(str(ROOT) + "/", "") for a in argv)
    print(f"$ {shown}", flush=True)
    proc = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        text=True,
        capture_output=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    for line in (proc.stdout + proc.stderr).splitlines():
        if "XNNPACK delegate" not in line and not quiet:
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
    server: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    try:
        story()
        server = start_server()
        ota_story()
        with SerialLink.start(SERIAL):
            cable = f"{SERIAL / DEVICE_LINK} <-> {SERIAL / TECHNICIAN_LINK}"
            print(f"(the emulated serial cable, a socat pty pair: {cable})")
            agent = agent_story()
            agent = technician_story(agent)
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(timeout=30)
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if (DEVICE / "device.json").exists():
            subprocess.run(
                [str(BIN / "edgeseal-agent"), "emulate", "stop", "--dir", str(DEVICE)],
                capture_output=True,
                check=False,
            )
    print("\n\033[1mdemo complete\033[0m: every step above ran against a real swtpm, a real")
    print("OTA server, real TUF metadata and a real TFLite interpreter;")
    print("outputs in demo-out/")
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> subprocess.Popen[bytes]:
    step("7. Fleet operator: an OTA server with an offline 2-of-3 TUF root")
    passphrase = OUT / "officers.passphrase"
    passphrase.write_text("demo passphrase: use a real secret\n")
    passphrase.chmod(0o600)
    init = run(
        "edgeseal-server", "--data", str(SERVER_DATA), "init", "--officer-keys",
        str(OUT / "officers"), "--officers", "3", "--threshold", "2",
        "--passphrase-file", str(passphrase), "--json",
    )  # fmt: skip
    (OUT / "admin.token").write_text(json.loads(init.stdout)["admin_token"])
    (OUT / "admin.token").chmod(0o600)
    port = free_port()
    print(f"$ edgeseal-server --data demo-out/server run --port {port} &", flush=True)
    server = subprocess.Popen(
        [str(BIN / "edgeseal-server"), "--data", str(SERVER_DATA), "run", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as answer:  # noqa: S310
                print(f"  {answer.read().decode()}")
                break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        raise SystemExit("demo: the OTA server did not start")
    os.environ["EDGESEAL_SERVER"] = url
    return server


def ota_story() -> None:
    passphrase = OUT / "officers.passphrase"
    rm_env = {"EDGESEAL_KEY_PASSPHRASE": "release manager demo passphrase"}
    keys = []
    for n in (1, 2, 3):
        key = OUT / f"release-manager-{n}.key"
        run("edgeseal", "keygen", str(key), env=rm_env)
        keys.append(key)
    run(
        "edgeseal-server", "--data", str(SERVER_DATA), "family", "add", FAMILY,
        *[arg for key in keys for arg in ("--key", f"{key}.pub.pem")], "--threshold", "2",
        "--targets-key", str(OUT / "officers" / "officer-1-targets.pem"),
        "--targets-key", str(OUT / "officers" / "officer-2-targets.pem"),
        "--passphrase-file", str(passphrase),
    )  # fmt: skip
    tokens = []
    for n in (1, 2):
        made = run(
            "edgeseal-server", "--data", str(SERVER_DATA), "token", "create",
            "--name", f"release-manager-{n}", "--role", "release-manager", "--family", FAMILY,
            "--json", quiet=True,
        )  # fmt: skip
        token_file = OUT / f"release-manager-{n}.token"
        token_file.write_text(json.loads(made.stdout)["token"])
        token_file.chmod(0o600)
        tokens.append(token_file)
        print(f"  token for release-manager-{n} -> {token_file.name} (shown once)")

    step("8. Release: register the device, create release 1, sign it 2-of-3")
    run(
        "edgeseal-server", "--data", str(SERVER_DATA), "device", "add", "--id", "demo-device-1",
        "--pubkey", str(DEVICE / "device-key.pub.pem"), "--hardware-class", "emulated",
    )  # fmt: skip
    np.savez(OUT / "golden.npz", input_0=np.load(OUT / "input.npy"))
    created = run(
        "edgeseal", "release", "create", str(OUT / "classifier.tflite"), "--family", FAMILY,
        "--version", "1", "--hardware", "emulated", "--channel", "stable",
        "--golden", str(OUT / "golden.npz"), "--token-file", str(tokens[0]),
    )  # fmt: skip
    release_id = created.stdout.split()[-1]
    root = SERVER_DATA / "repository" / "metadata" / "1.root.json"
    for n, token in ((0, tokens[0]), (1, tokens[1])):
        run(
            "edgeseal", "release", "sign", release_id, "--key", str(keys[n]), "--yes",
            "--root", str(root), "--token-file", str(token), env=rm_env,
        )  # fmt: skip

    step("9. Device: fetch through TUF, open in the TPM, run; the audit log verifies")
    run("edgeseal-agent", "emulate", "start", "--dir", str(DEVICE))
    tuf_dir, got = OUT / "device-1-tuf", OUT / "device-1-download"
    got.mkdir()
    url = os.environ["EDGESEAL_SERVER"]
    run("edgeseal-tuf-conformance", "--metadata-dir", str(tuf_dir), "init", str(root))
    model_target = f"{FAMILY}/1/{FAMILY}-1.esm"
    envelope_target = f"envelopes/demo-device-1/{FAMILY}-1.env"
    run(
        "edgeseal-tuf-conformance", "--metadata-dir", str(tuf_dir), "--metadata-url",
        f"{url}/tuf/metadata", "--target-name", model_target, "--target-name", envelope_target,
        "--target-base-url", f"{url}/tuf/targets", "--target-dir", str(got), "download",
    )  # fmt: skip
    quoted = {name: got / name.replace("/", "%2F") for name in (model_target, envelope_target)}
    run(
        "edgeseal-agent", "open", str(quoted[model_target]), "--envelope",
        str(quoted[envelope_target]), "--device", str(DEVICE),
        "--input", str(OUT / "input.npy"),
    )  # fmt: skip
    run("edgeseal-server", "--data", str(SERVER_DATA), "audit", "verify")


AGENT_CONFIG = OUT / "device-1-agent.toml"
CA_DIR = OUT / "swtpm-ca"
#: The device's serial console and the technician's end of the cable (a socat pty pair).
SERIAL = OUT / "serial"
AGENT_STATE = OUT / "device-1-agent-state"
SOCKET = OUT / "run" / "inference.sock"


def start_agent() -> subprocess.Popen[bytes]:
    print(f"$ edgeseal-agent run --config {AGENT_CONFIG.relative_to(ROOT)} &", flush=True)
    log = (OUT / "agent.log").open("ab")
    agent = subprocess.Popen(
        [str(BIN / "edgeseal-agent"), "run", "--config", str(AGENT_CONFIG)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(600):
        if (AGENT_STATE / "daemon.json").exists() and SOCKET.exists():
            return agent
        if agent.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("demo: the agent did not start; see demo-out/agent.log")


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    print("$ kill -TERM <agent>", flush=True)
    agent.terminate()
    agent.wait(timeout=30)
    (AGENT_STATE / "daemon.json").unlink(missing_ok=True)


def serve_once(expected: np.ndarray) -> None:
    """An application asks the agent for one inference over the local socket."""
    from edgeseal.sdk.inference import InferenceClient

    with InferenceClient(SOCKET) as client:
        result = client.run_detailed([np.load(OUT / "input.npy")])
    print(
        f"  application: {result.family} v{result.version} answered "
        f"{np.array2string(result.outputs[0], precision=5)}"
    )
    np.testing.assert_allclose(result.outputs[0], expected, rtol=1e-5, atol=1e-6)


def publish(
    version: int,
    model: bytes,
    golden: Path,
    tokens: list[Path],
    keys: list[Path],
    *,
    key_release: str = "envelope",
) -> None:
    path = OUT / f"classifier-v{version}.tflite"
    path.write_bytes(model)
    created = run(
        "edgeseal", "release", "create", str(path), "--family", FAMILY,
        "--version", str(version), "--hardware", "emulated", "--channel", "stable",
        "--golden", str(golden), "--token-file", str(tokens[0]),
        "--key-release", key_release, quiet=True,
    )  # fmt: skip
    release_id = created.stdout.split()[0]
    root = SERVER_DATA / "repository" / "metadata" / "1.root.json"
    rm_env = {"EDGESEAL_KEY_PASSPHRASE": "release manager demo passphrase"}
    for n in (0, 1):
        run(
            "edgeseal", "release", "sign", release_id, "--key", str(keys[n]), "--yes",
            "--root", str(root), "--token-file", str(tokens[n]), env=rm_env, quiet=True,
        )  # fmt: skip
    print(f"  release {release_id} created and signed 2 of 3: published")


def agent_story() -> subprocess.Popen[bytes]:
    step("10. Embedded team: provision the agent; it installs release 1 and serves it")
    url = os.environ["EDGESEAL_SERVER"]
    root = SERVER_DATA / "repository" / "metadata" / "1.root.json"
    run(
        "edgeseal-agent", "provision", "--config", str(AGENT_CONFIG),
        "--device-id", "demo-device-1", "--family", FAMILY, "--server", url,
        "--root", str(root), "--state-dir", str(AGENT_STATE), "--socket", str(SOCKET),
        "--backend", f"emulated:{DEVICE}", "--poll-interval", "3600",
        "--console-port", str(SERIAL / DEVICE_LINK),
    )  # fmt: skip
    os.environ["EDGESEAL_AGENT_CONFIG"] = str(AGENT_CONFIG)
    print("  enrollment: the operator trusts the TPM vendor's EK CA (here: the local swtpm CA),")
    print("  the agent proves its attestation key lives in the certified TPM")
    for cert in ("swtpm-localca-rootca-cert.pem", "issuercert.pem"):
        run("edgeseal-server", "--data", str(SERVER_DATA), "ek-ca", "add", str(CA_DIR / cert))
    run("edgeseal-agent", "enroll", "--config", str(AGENT_CONFIG),
        "--token-file", str(OUT / "admin.token"))  # fmt: skip
    x = np.load(OUT / "input.npy")
    layers_v1 = modelgen.random_layers([8, 16, 4], seed=7)
    agent = start_agent()
    run("edgeseal-agent", "check-now")
    serve_once(modelgen.reference_mlp(x, layers_v1))

    step("11. Release 2: published, verified, health-checked and committed while serving")
    tokens = [OUT / f"release-manager-{n}.token" for n in (1, 2)]
    keys = [OUT / f"release-manager-{n}.key" for n in (1, 2, 3)]
    layers_v2 = modelgen.random_layers([8, 16, 4], seed=8)
    publish(2, modelgen.mlp_model(layers_v2), OUT / "golden.npz", tokens, keys)
    run("edgeseal-agent", "check-now")
    serve_once(modelgen.reference_mlp(x, layers_v2))

    step("12. Release 3 is a bad model: its trial fails the golden health check")
    np.savez(OUT / "golden-v3.npz", input_0=x, output_0=modelgen.reference_mlp(x, layers_v2))
    broken = modelgen.mlp_model(modelgen.random_layers([8, 16, 4], seed=666))
    publish(3, broken, OUT / "golden-v3.npz", tokens, keys)
    run("edgeseal-agent", "check-now", expect_fail=True)
    serve_once(modelgen.reference_mlp(x, layers_v2))

    step("13. Release 4: the power is cut during its trial; the next start reverts")
    layers_v4 = modelgen.random_layers([8, 16, 4], seed=9)
    publish(4, modelgen.mlp_model(layers_v4), OUT / "golden.npz", tokens, keys)
    stop_agent(agent)
    print("  (EDGESEAL_FAULT_AT=trial: a test hook that SIGKILLs the agent in its trial)")
    run("edgeseal-agent", "check-now", env={"EDGESEAL_FAULT_AT": "trial"}, expect_fail=True)
    agent = start_agent()
    run("edgeseal-agent", "status")
    serve_once(modelgen.reference_mlp(x, layers_v2))
    return agent


def technician_story(agent: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    step("14. An attested release; then a field technician attests the device over serial")
    tokens = [OUT / f"release-manager-{n}.token" for n in (1, 2)]
    keys = [OUT / f"release-manager-{n}.key" for n in (1, 2, 3)]
    x = np.load(OUT / "input.npy")
    layers_v5 = modelgen.random_layers([8, 16, 4], seed=10)
    model_v5 = modelgen.mlp_model(layers_v5)
    publish(5, model_v5, OUT / "golden.npz", tokens, keys, key_release="attested")
    print("  release 5 is 'attested': no envelope is published; the server releases its key")
    print("  to the device only after a fresh TPM quote matching the enrolled boot state")
    run("edgeseal-agent", "check-now")
    serve_once(modelgen.reference_mlp(x, layers_v5))
    bundle, key = OUT / "trust-bundle.json", OUT / "bundle-key.pem"
    run("edgeseal-server", "--data", str(SERVER_DATA), "attest", "bundle", "--out", str(bundle))
    run("edgeseal-server", "--data", str(SERVER_DATA), "attest", "bundle-key", "--out", str(key))
    print("  (the laptop is offline from here: it has the bundle, its key and a serial cable)")
    port = SERIAL / TECHNICIAN_LINK
    attest = ("edgeseal", "attest", "--port", str(port), "--bundle", str(bundle),
              "--bundle-key", str(key))  # fmt: skip
    run(*attest)

    step("15. The kernel is swapped again: the key stays locked, the technician's check fails")
    stop_agent(agent)
    run("edgeseal-agent", "emulate", "tamper", "--dir", str(DEVICE), "kernel")
    run("edgeseal-agent", "emulate", "stop", "--dir", str(DEVICE))
    run("edgeseal-agent", "emulate", "start", "--dir", str(DEVICE))
    agent = start_agent()
    run(*attest, expect_fail=True)
    return agent


if __name__ == "__main__":
    sys.exit(main())
