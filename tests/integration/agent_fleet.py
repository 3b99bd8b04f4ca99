"""Shared pieces of the agent's end-to-end tests: a real OTA server, emulated devices, releases.

* :func:`fleet` - the real OTA server on loopback (tests/ota_server/server_fixture.py),
  a family ``demo`` delegated to three release managers (threshold 2), a
  release-manager and an operator token.
* :meth:`Fleet.publish` - build a real TFLite model, golden outputs computed with
  the real runtime (or deliberately wrong ones for a "broken" release), seal it,
  and release it through the sdk's management client: create, upload, two of the
  three release managers sign the proposal, the server publishes.
* :meth:`Fleet.add_device` - an emulated device on swtpm, provisioned with
  ``edgeseal-agent provision`` and enrolled on the server.
* :class:`AgentDevice` - run ``.venv/bin/edgeseal-agent`` subcommands and the daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ota_server"))

from server_fixture import RunningServer, running_server

from edgeseal.ota_server.config import ServerConfig
from edgeseal.sdk import modelgen
from edgeseal.sdk.client import ManagementClient
from edgeseal.sdk.envelope import seal_envelope
from edgeseal.sdk.golden import GoldenTensor, HealthCheck
from edgeseal.sdk.releases import PlaintextDigest, ReleaseMetadata
from edgeseal.sdk.runtime import load_model
from edgeseal.sdk.sealed import seal_model
from edgeseal.sdk.signing import sign_proposal

FAMILY = "demo"
BIN = Path(sys.executable).parent
AGENT = str(BIN / "edgeseal-agent")
GOLDEN_INPUT = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESEAL_")}
    env["TSS2_LOG"] = "all+none"
    env.update(extra)
    return env


def served(device: AgentDevice) -> np.ndarray:
    """What the device's agent answers an application for the golden input."""
    from edgeseal.sdk.inference import InferenceClient

    with InferenceClient(device.socket) as client:
        (out,) = client.run([GOLDEN_INPUT])
    return out


@dataclass
class Published:
    version: int
    plaintext: bytes
    sealed: bytes
    meta: ReleaseMetadata

    @property
    def digest(self) -> str:
        """SHA-256 of the plaintext model (what the tests compare served models by)."""
        return hashlib.sha256(self.plaintext).hexdigest()

    def expected(self, x: np.ndarray = GOLDEN_INPUT) -> np.ndarray:
        return load_model(self.plaintext).run([x])[0]


def build_model(version: int, *, seed: int | None = None, size: int | None = None) -> bytes:
    if size is not None:
        return modelgen.padded_model(size, seed=seed if seed is not None else version)
    weights, bias = modelgen.random_layers([4, 3], seed=seed if seed is not None else version)[0]
    return modelgen.dense_model(weights, bias)


@dataclass
class Fleet:
    server: RunningServer
    tmp: Path
    rm: ManagementClient
    operator: ManagementClient
    root: Path
    published: dict[int, Published] = field(default_factory=dict)

    def publish(
        self,
        version: int,
        *,
        broken: bool = False,
        hardware: tuple[str, ...] = ("emulated",),
        key_release: str = "envelope",
        size: int | None = None,
        plaintext: bytes | None = None,
    ) -> Published:
        """Create, upload and sign (2 of 3) a release of a real model; return it."""
        model = plaintext if plaintext is not None else build_model(version, size=size)
        loaded = load_model(model)
        x = np.zeros(loaded.input_details[0].shape, np.float32)
        if size is None:
            x = GOLDEN_INPUT
        (y,) = loaded.run([x])
        if broken:
            y = y + np.float32(1.0)  # golden outputs this model cannot give
        out = io.BytesIO()
        info = seal_model(
            io.BytesIO(model), out, family=FAMILY, version=version, hardware=list(hardware)
        )
        sealed = out.getvalue()
        header = info.header
        meta = ReleaseMetadata(
            family=FAMILY,
            version=version,
            hardware=hardware,
            channel="stable",
            rollout_percent=100,
            plaintext=PlaintextDigest(
                header.digest_alg, header.plaintext_digest, header.plaintext_size
            ),
            min_agent_version="0.1.0",
            health_check=HealthCheck(
                inputs=(GoldenTensor.from_numpy(x),),
                outputs=(GoldenTensor.from_numpy(y),),
                tolerance=1e-4,
                latency_budget_ms=5000,
            ),
            key_release=key_release,
        )
        esm = self.tmp / f"{FAMILY}-{version}.esm"
        esm.write_bytes(sealed)
        record = self.rm.create_release(
            family=FAMILY,
            version=version,
            custom=meta.to_custom(),
            kek_envelope=seal_envelope(info.content_key, self.rm.kek_public_key(), header),
            sealed_size=len(sealed),
            sealed_sha256=hashlib.sha256(sealed).hexdigest(),
        )
        self.rm.upload_sealed_model(record.id, esm)
        esm.unlink()
        self._sign(record.id, "published")
        published = Published(version, model, sealed, meta)
        self.published[version] = published
        return published

    def yank(self, version: int) -> None:
        self.rm.yank(f"{FAMILY}-{version}")
        self._sign(f"{FAMILY}-{version}", "yanked")

    def _sign(self, release_id: str, final: str) -> None:
        state = ""
        for signer in self.server.release_managers[FAMILY][:2]:
            keyid, sig = sign_proposal(self.rm.proposal(release_id), signer)
            state = self.rm.add_signature(release_id, keyid, sig).state
        assert state == final, f"{release_id}: {state}"

    def target_file(self, version: int) -> Path:
        """The published sealed model on the server's disk (``<sha256>.<name>``)."""
        sha = hashlib.sha256(self.published[version].sealed).hexdigest()
        path = (
            self.server.data_dir
            / "repository"
            / "targets"
            / FAMILY
            / str(version)
            / f"{sha}.{FAMILY}-{version}.esm"
        )
        assert path.exists(), path
        return path

    def add_device(self, name: str, ca_dir: Path, *, server_url: str | None = None) -> AgentDevice:
        """An emulated device (running), provisioned with the agent CLI and enrolled.

        ``server_url`` (default: the server's own) is where the agent fetches
        from, e.g. a bandwidth-limiting proxy in ``bench/``.
        """
        from edgeseal.device_agent.cli import main as agent_main
        from edgeseal.hardware.emulated import EmulatedDevice

        device = EmulatedDevice.create(
            self.tmp / name / "device", device_id=name, ca_dir=ca_dir, running=True
        )
        base = self.tmp / name
        config = base / "agent.toml"
        code = agent_main(
            [
                "provision",
                "--config",
                str(config),
                "--device-id",
                name,
                "--family",
                FAMILY,
                "--server",
                server_url or self.server.base_url,
                "--root",
                str(self.root),
                "--state-dir",
                str(base / "state"),
                "--socket",
                str(base / "run" / "inference.sock"),
                "--backend",
                f"emulated:{device.state_dir}",
                "--poll-interval",
                "3600",
                "--poll-jitter",
                "0",
            ]
        )
        assert code == 0
        pem = (device.state_dir / "device-key.pub.pem").read_text()
        self.operator.add_device(name, pem, device.profile.hardware_class, "stable")
        return AgentDevice(name, device, config, base / "state", base / "run" / "inference.sock")


@dataclass
class AgentDevice:
    name: str
    device: Any  # EmulatedDevice
    config: Path
    state_dir: Path
    socket: Path

    def cli(
        self, *argv: str, fault: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = agent_env(EDGESEAL_AGENT_CONFIG=str(self.config))
        if fault is not None:
            env["EDGESEAL_FAULT_AT"] = fault
        return subprocess.run(
            [AGENT, *argv], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def check_now(self, fault: str | None = None) -> dict[str, Any]:
        done = self.cli("check-now", "--json", fault=fault)
        assert done.stdout, done.stderr[-3000:]
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    def status(self) -> dict[str, Any]:
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    @contextlib.contextmanager
    def daemon(self, *, network: bool = True) -> Iterator[subprocess.Popen[str]]:
        """``edgeseal-agent run`` as a subprocess; yields once it serves; SIGTERM at exit."""
        log = (self.state_dir.parent / "agent.log").open("a")
        proc = subprocess.Popen(
            [AGENT, "run", "--config", str(self.config)],
            env=agent_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not (self.state_dir / "daemon.json").exists() or not self.socket.exists():
                if proc.poll() is not None:
                    raise AssertionError(f"agent exited {proc.returncode}: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"agent did not start: {self.log_tail()}")
                time.sleep(0.05)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()

    def log_tail(self) -> str:
        path = self.state_dir.parent / "agent.log"
        return path.read_text()[-3000:] if path.exists() else ""


@contextlib.contextmanager
def fleet(
    tmp: Path, *, max_upload: int = 8 * 1024 * 1024, hint_settings: Any = None
) -> Iterator[Fleet]:
    """A real server with family ``demo`` (3 release managers, threshold 2)."""
    config = ServerConfig(bin_bits=4, max_upload=max_upload, refresh_interval=3600)
    with running_server(tmp / "server", config=config, hint_settings=hint_settings) as server:
        server.add_family(FAMILY, managers=3, threshold=2)
        rm = ManagementClient(server.base_url, server.token("release-manager", FAMILY))
        operator = ManagementClient(server.base_url, server.token("operator"))
        root = tmp / "root.json"
        root.write_bytes((server.data_dir / "repository" / "metadata" / "1.root.json").read_bytes())
        yield Fleet(server, tmp, rm, operator, root)


# -- a pre-imported agent process that forks one agent per crash trial ------------------------
#
# ``python agent_fleet.py zygote CONFIG`` imports the agent once, then per stdin line forks a
# child that is one agent process: ``update [STEP]`` runs ``edgeseal-agent check-now`` in the
# child (with EDGESEAL_FAULT_AT=STEP if given) and answers ``pid N`` at once and ``exit S``
# when the child is gone (killed or not); ``verify`` runs the agent's start-up path
# (recover, load, check) in a child that answers one JSON line with the served model. The
# crash test SIGKILLs the ``update`` children at random moments; forking from a warm
# process keeps 200 trials well inside the time budget (a cold start is about 1 s of imports).


def _zygote(config: str) -> int:
    import edgeseal.device_agent.cli.check_now
    import edgeseal.device_agent.daemon
    import edgeseal.device_agent.updater  # noqa: F401
    from edgeseal.device_agent.cli import main as agent_main
    from edgeseal.device_agent.cli.run_cmd import config_from_args
    from edgeseal.sdk.runtime import load_model

    load_model(build_model(1))  # warm the runtime import too
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if words[0] == "update":
                    if len(words) > 1:
                        os.environ["EDGESEAL_FAULT_AT"] = words[1]
                    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
                    code = agent_main(["check-now", "--json", "--config", config])
                else:
                    code = _verify(config_from_args)
            finally:
                sys.stdout.flush()
                os._exit(code)
        if words[0] == "update":
            print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


def _verify(config_from_args: Any) -> int:
    import argparse

    from edgeseal.device_agent.daemon import make_installer, open_key_setup, start_serving

    config = config_from_args(argparse.Namespace(config=Path(os.environ["ZYGOTE_CONFIG"])))
    keys = open_key_setup(config)
    with keys.backend:
        installer = make_installer(config, keys)
        started = start_serving(installer, Path(config.state_dir))
        if started is None:
            print(json.dumps({"served": None}), flush=True)
            return 0
        loaded, _model = started
        print(
            json.dumps(
                {
                    "served": hashlib.sha256(loaded.plaintext).hexdigest(),
                    "version": loaded.slot.model_version,
                }
            ),
            flush=True,
        )
    return 0


class Zygote:
    """The test's side of the zygote (see above)."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "zygote", str(config)],
            env=agent_env(ZYGOTE_CONFIG=str(config)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"zygote exited ({self.proc.poll()})")
        return line.strip()

    def update(self, *, fault: str | None = None, kill_after: float | None = None) -> int:
        """One ``check-now`` agent process; SIGKILLed after ``kill_after`` s. Its exit code."""
        self._send("update" if fault is None else f"update {fault}")
        pid = int(self._read().split()[1])
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return int(self._read().split()[1])

    def verify(self) -> dict[str, Any]:
        """A fresh agent start (recover, load, check): what it serves."""
        self._send("verify")
        answer = self._read()
        code = int(self._read().split()[1])
        doc: dict[str, Any] = json.loads(answer) if answer.startswith("{") else {"error": answer}
        doc["exit"] = code
        return doc

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "zygote":
    sys.exit(_zygote(sys.argv[2]))
