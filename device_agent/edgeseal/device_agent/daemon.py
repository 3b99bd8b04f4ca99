"""``edgeseal-agent run``: the agent's long-running process.

Start-up needs no network: open the key backend, settle whatever an earlier
run left (:meth:`Installer.start`: a pending trial reverts, a boot loop falls
back), load the active slot's model from its sealed file and locally
re-sealed key, check it, serve it on the inference socket. Only then does the
poll loop begin: an update cycle (:class:`~edgeseal.device_agent.updater.Updater`)
every ``poll_interval_s`` plus a random ``0..poll_jitter_s`` (so a fleet does
not poll in lock step; the first one too, one interval after start), and at
once on SIGUSR1 (``edgeseal-agent check-now``).

Signals (handlers only set flags; the main thread acts between steps):

* SIGTERM, SIGINT - graceful shutdown: stop accepting inference requests, let
  the update cycle stop at its next step boundary (a partial download is
  kept and resumed next time; an install transaction in progress finishes its
  current step, and a kill at any point is safe anyway), close the TPM.
* SIGUSR1 - run an update cycle now.
* SIGHUP - reload the active slot (after ``edgeseal-agent rollback``).

A boot outside the signed PCR policy (the TPM refuses the device key: the boot
chain changed and no new policy was approved) does not stop the agent: it
serves no model, says why in the log, ``daemon.json`` (``start_error``) and
attestation answers (``model_error``), so a technician sees that the device
has a model it cannot open and which PCRs changed. Both are cleared once a
model is served again (an update installed, or a reload).

With ``console_port`` set, a thread answers a field technician's attestation
requests on that serial line (:mod:`~edgeseal.device_agent.console`); it shares
the TPM with the update cycle through :class:`LockedBackend`.

The signed PCR policy is read once, at start (:func:`open_key_setup`), and
this process keeps it: the installer and the updater open the device key with
it, attested key releases send it, attestation answers report it
(``pcr_policy``). When the embedded team approves a new boot state (an OS
update; ``EmulatedDevice.approve()`` for an emulated device) the new policy
counts from the agent's next start, normally the reboot into that OS that
measures the new PCR values. Until then the agent holds, and reports, the
policy it started with.

Files: ``STATE/agent.pid`` (for check-now/rollback to signal us) and
``STATE/daemon.json`` (what is served, the floor, the last cycle: read by
``status``, which must not open the TPM while we hold it - swtpm serves one
connection at a time).

The start-up check re-runs the release's golden inputs (saved at install in
``STATE/releases/``) and compares outputs; the latency budget is judged in the
trial only, since a device under load at boot must not drop a good model.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.health import HealthCheckSpec, run_health_check
from edgeseal.device_agent.inference import InferenceServer, ModelHolder, ModelInfo
from edgeseal.device_agent.install import Installer, installer_options
from edgeseal.device_agent.locked_backend import LockedBackend
from edgeseal.device_agent.slot_state import LoadedModel
from edgeseal.device_agent.slots import SlotInfo
from edgeseal.device_agent.state import timestamp, utc_now, write_json
from edgeseal.device_agent.update_outcome import UpdateResult
from edgeseal.device_agent.update_records import load_release_metadata
from edgeseal.device_agent.updater import TUFClientFactory, UpdateCancelledError, Updater
from edgeseal.hardware.backend import KeyBackend, open_backend
from edgeseal.hardware.errors import EmulatorError, PolicyCheckError
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.hardware.profiles import load_profile
from edgeseal.sdk.runtime import TFLiteModel, load_model

if TYPE_CHECKING:  # imported at run time only when MQTT / the console is configured
    from edgeseal.device_agent.console import SerialConsole
    from edgeseal.device_agent.mqtt_link import HintScheduler, MQTTLink, MQTTLinkSettings
    from edgeseal.sdk.mqtt_messages import ReleaseHint

log = logging.getLogger(__name__)

PID_FILE = "agent.pid"
DAEMON_FILE = "daemon.json"
ROLLBACK_REQUEST = "rollback.request"
MAX_POLICY_BYTES = 64 * 1024
#: Start-up health check: outputs only (see the module docstring).
_NO_LATENCY_BUDGET_MS = 1e9


class DaemonError(AgentError):
    """The agent cannot start (key backend, policy, state directory)."""


@dataclass(frozen=True)
class KeySetup:
    """The opened key backend, the signed PCR policy it needs, and the hardware class.

    ``backend`` is a :class:`LockedBackend`: the update cycle and the serial console
    share one TPM connection, one call at a time. ``pcrs`` are the board profile's
    policy PCRs (what an attestation quotes).
    """

    backend: KeyBackend
    approved: SignedPCRPolicy
    hardware_class: str
    pcrs: tuple[int, ...] = ()


class NoSignedPolicyError(DaemonError):
    """The device has no signed PCR policy at all (the file is missing)."""


def read_signed_policy(config: AgentConfig) -> SignedPCRPolicy:
    """The signed PCR policy the agent runs under, read as :func:`open_key_setup` does.

    ``emulated:DIR`` -> that device's approved policy; else ``pcr_policy_path``
    (at most :data:`MAX_POLICY_BYTES`). Parsed, not verified (the TPM checks the
    signature when the key is used). Raises :class:`NoSignedPolicyError` when there
    is no policy file, DaemonError when it cannot be read, PolicyFormatError when it
    is malformed.
    """
    device_dir = config.emulated_device_dir
    if device_dir is not None:
        from edgeseal.hardware.emulated import EmulatedDevice

        try:
            return EmulatedDevice(device_dir).signed_policy()
        except EmulatorError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise NoSignedPolicyError(
                    f"the emulated device {device_dir} has no signed PCR policy"
                ) from exc
            raise
    path = config.pcr_policy_path
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError as exc:
        raise NoSignedPolicyError(f"no signed PCR policy at {path}") from exc
    except OSError as exc:
        raise DaemonError(f"cannot read the signed PCR policy {path}: {exc.strerror}") from exc
    if len(data) > MAX_POLICY_BYTES:
        raise DaemonError(f"{path} is larger than any PCR policy")
    return SignedPCRPolicy.from_bytes(data)


def open_key_setup(config: AgentConfig) -> KeySetup:
    """``emulated:DIR`` -> that device's TPM and signed policy; else a TCTI + policy file.

    The policy is read once, here: an agent process runs under the policy it
    started with (a newly approved one counts from the next start, i.e. the
    reboot into the approved OS that measures the new PCR values).
    """
    approved = read_signed_policy(config)
    device_dir = config.emulated_device_dir
    if device_dir is not None:
        from edgeseal.hardware.emulated import EmulatedDevice

        device = EmulatedDevice(device_dir)
        profile = device.profile
        return KeySetup(
            LockedBackend(device.backend()), approved, profile.hardware_class, profile.policy_pcrs
        )
    profile = load_profile(config.profile)
    backend = LockedBackend(open_backend(config.key_backend))
    return KeySetup(backend, approved, profile.hardware_class, profile.policy_pcrs)


def open_config_backend(config: AgentConfig) -> KeyBackend:
    """Just the key backend the config names (no PCR policy), shared through a lock."""
    device_dir = config.emulated_device_dir
    if device_dir is not None:
        from edgeseal.hardware.emulated import EmulatedDevice

        return LockedBackend(EmulatedDevice(device_dir).backend())
    return LockedBackend(open_backend(config.key_backend))


def make_installer(config: AgentConfig, keys: KeySetup) -> Installer:
    return Installer(
        config.state_dir,
        keys.backend,
        keys.approved,
        keys.hardware_class,
        **installer_options(config),
    )


def start_check(state_dir: Path, models: list[TFLiteModel]) -> Callable[[LoadedModel], None]:
    """The check :meth:`Installer.start` runs on the active slot; keeps the loaded model."""

    def check(loaded: LoadedModel) -> None:
        model = load_model(loaded.plaintext)
        meta = load_release_metadata(state_dir, loaded.slot)
        if meta is not None:
            spec = HealthCheckSpec.from_release(meta.health_check)
            spec = HealthCheckSpec(spec.inputs, spec.outputs, spec.tolerance, _NO_LATENCY_BUDGET_MS)
            run_health_check(model, spec, runs=1).raise_if_failed()
        models.append(model)

    return check


def start_serving(installer: Installer, state_dir: Path) -> tuple[LoadedModel, TFLiteModel] | None:
    """Recover, load and check the active model: the start of every agent process."""
    models: list[TFLiteModel] = []
    loaded = installer.start(check=start_check(state_dir, models))
    if loaded is None:
        return None
    return loaded, models[-1]


class Daemon:
    """The run loop; see the module docstring. ``rng`` draws the poll jitter."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        rng: random.Random | None = None,
        tuf_client_factory: TUFClientFactory | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        mqtt: MQTTLinkSettings | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self._rng = rng or random.Random()  # noqa: S311 - poll jitter, not a secret
        self._factory = tuf_client_factory
        self._monotonic = monotonic
        self._wake = threading.Event()
        self._stop = False
        self._check = False
        self._reload = False
        self.holder = ModelHolder()
        self._serving: dict[str, Any] | None = None
        #: What an attestation reports: the served model's claim and why none is served
        #: (replaced whole, so the console thread never reads one without the other).
        self._attested: tuple[dict[str, Any] | None, str | None] = (None, None)
        #: The signed PCR policy this process runs under (``SignedPCRPolicy.to_bytes()``),
        #: read once at start: what attestation answers report as ``pcr_policy``.
        self._pcr_policy: bytes | None = None
        self._installer: Installer | None = None
        self._console: SerialConsole | None = None
        self._last: UpdateResult | None = None
        self._last_rollback: dict[str, Any] | None = None
        self._started = timestamp(utc_now())
        self._start_error: str | None = None
        # MQTT release hints (never trusted: they only bring the next check forward) and
        # telemetry after each cycle; see edgeseal.device_agent.mqtt_link.
        self._mqtt = mqtt
        self._link: MQTTLink | None = None
        self._hints: HintScheduler | None = None
        if mqtt is not None:
            from edgeseal.device_agent.mqtt_link import HintPolicy, HintScheduler

            policy = HintPolicy(config.mqtt_hint_jitter_s, config.mqtt_hint_min_interval_s)
            self._hints = HintScheduler(policy, clock=monotonic, rng=self._rng)

    # -- signals ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGUSR1, lambda *_: self.request_check())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_stop(self) -> None:
        self._stop = True
        self._wake.set()

    def request_check(self) -> None:
        self._check = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    # -- the process ------------------------------------------------------------------------

    def run(self) -> None:
        """Start, serve and poll until asked to stop."""
        keys = open_key_setup(self.config)
        self._pcr_policy = keys.approved.to_bytes()
        server: InferenceServer | None = None
        try:
            installer = make_installer(self.config, keys)
            self._installer = installer
            self._write_pid()
            started = self._start_serving(installer)
            if started is not None:
                self._swap(*started)
            elif self._start_error is None:
                log.warning("no model installed yet: serving nothing until the first update")
            self._write_status(installer)
            server = InferenceServer(
                self.config.socket_path,
                self.holder,
                mode=self.config.socket_mode,
                max_request_bytes=self.config.max_request_bytes,
            )
            server.start()
            log.info("agent %s serving on %s", self.config.device_id, self.config.socket_path)
            updater = Updater(
                self.config,
                keys.backend,
                keys.approved,
                installer,
                self.holder,
                tuf_client_factory=self._factory,
                attestation_pcrs=keys.pcrs,
            )
            if self._mqtt is not None:
                from edgeseal.device_agent.mqtt_link import MQTTLink

                self._link = MQTTLink(self._mqtt, on_hint=self._on_hint, rng=self._rng)
                self._link.start()
            if self.config.console_port:
                self._console = self._start_console(keys)
            self._loop(installer, updater)
        finally:
            if self._console is not None:
                self._console.stop()
            if self._link is not None:
                self._link.stop()
            if server is not None:
                server.shutdown()
            keys.backend.close()
            self._remove_pid()
            (self.state_dir / DAEMON_FILE).unlink(missing_ok=True)
            log.info("agent stopped")

    def _start_serving(self, installer: Installer) -> tuple[LoadedModel, TFLiteModel] | None:
        """:func:`start_serving`, except that a boot outside the signed PCR policy leaves
        the agent up and serving nothing: the key stays locked whatever a restart does,
        and a technician must still be able to attest the device and see why."""
        try:
            return start_serving(installer, self.state_dir)
        except PolicyCheckError as exc:
            log.error(  # noqa: TRY400 - a refusal by the TPM, not a crash
                "the device key is locked (%s): serving no model until the boot state "
                "matches an approved PCR policy; attestation still answers",
                exc.diagnostics(),
            )
            self._start_error = exc.diagnostics()
            self._attested = (None, self._start_error)
            return None

    def _loop(self, installer: Installer, updater: Updater) -> None:
        # The first check too waits a whole interval plus jitter: a fleet powered on at
        # once (after an outage) must not hit the server in lock step. check-now is there
        # for an earlier check.
        next_check = self._next_check()
        while not self._stop:
            self._wake.wait(max(0.0, min(0.5, next_check - self._monotonic())))
            self._wake.clear()
            if self._stop:
                break
            if self._reload:
                self._reload = False
                self._reload_active(installer)
            hinted = self._hints is not None and self._hints.take_due()
            if self._check or hinted or self._monotonic() >= next_check:
                self._check = False
                self._cycle(installer, updater)
                next_check = self._next_check()

    def _next_check(self) -> float:
        interval = self.config.poll_interval_s + self._rng.uniform(0, self.config.poll_jitter_s)
        return self._monotonic() + interval

    def _on_hint(self, hint: ReleaseHint) -> None:
        """MQTT network thread: schedule a jittered, debounced check; nothing else."""
        serving = self._serving
        if self._hints is not None:
            version = None if serving is None else serving["version"]
            self._hints.offer(hint, current_version=version)

    def _cycle(self, installer: Installer, updater: Updater) -> None:
        if self._hints is not None:
            self._hints.note_check()
        try:
            result = updater.check_now(cancelled=lambda: self._stop)
        except UpdateCancelledError:
            log.info("update cycle abandoned: shutting down")
            return
        except Exception:  # the agent keeps serving whatever one cycle did
            log.exception("update cycle crashed; still serving the current model")
            return
        self._last = result
        if result.outcome == "installed":
            current = self.holder.current()
            state = installer.read_state()
            self._serving = {
                "family": current.info.family,
                "version": current.info.version,
                "slot": state.active,
            }
            self._start_error = None
            try:
                active = None if state.active is None else installer.slot_info(state.active)
                claim = None if active is None else _attested_model(active)
            except Exception:  # attestation then reports no model, never a stale one
                log.exception("cannot read the new active slot's slot.json")
                claim = None
            self._attested = (claim, None)
        self._write_status(installer)
        if self._link is not None:
            serving = self._serving
            active = None if serving is None else serving["version"]
            self._link.publish_cycle(result, active_version=active)

    def _reload_active(self, installer: Installer) -> None:
        """SIGHUP: do a requested rollback (``STATE/rollback.request``), serve the active slot."""
        request = self.state_dir / ROLLBACK_REQUEST
        if request.exists():
            try:
                done = installer.rollback()
                self._last_rollback = {
                    "outcome": done.outcome,
                    "slot": done.slot,
                    "version": done.version,
                }
            except Exception as exc:  # noqa: BLE001 - reported to the command via daemon.json
                log.error("rollback refused: %s", exc)  # noqa: TRY400 - expected refusal
                self._last_rollback = {"outcome": "refused", "error": str(exc)}
            finally:
                self._write_status(installer)
                request.unlink(missing_ok=True)
        try:
            loaded = installer.load_active()
            models: list[TFLiteModel] = []
            start_check(self.state_dir, models)(loaded)
        except Exception:
            log.exception("reload failed; still serving the current model")
            return
        self._swap(loaded, models[-1])
        self._write_status(installer)

    def _swap(self, loaded: LoadedModel, model: TFLiteModel) -> None:
        family = loaded.slot.family or ""
        version = loaded.slot.model_version or 0
        self.holder.swap(model, ModelInfo(family, version))
        self._serving = {"family": family, "version": version, "slot": loaded.slot.name}
        self._start_error = None
        self._attested = (_attested_model(loaded.slot), None)

    # -- serial console ---------------------------------------------------------------------

    def _start_console(self, keys: KeySetup) -> SerialConsole:
        from edgeseal.device_agent.console import AttestResponder, SerialConsole

        responder = AttestResponder(keys.backend, keys.pcrs, self.attest_status)
        console = SerialConsole(self.config.console_port, responder, baud=self.config.console_baud)
        console.start()
        return console

    def attest_status(self) -> dict[str, Any]:
        """The agent's part of an attestation answer (console thread): what it serves,
        or why it serves nothing (``model_error``: the start error, e.g. a locked key),
        and the signed PCR policy this process runs under (``pcr_policy``, bytes: the
        one read at start, so a policy approved since counts from the next start)."""
        floor: int | None = None
        if self._installer is not None:
            try:
                floor = self._installer.floor.floor()
            except Exception as exc:  # noqa: BLE001 - reported as unknown, never fatal
                log.warning("cannot read the anti-rollback floor: %s", exc)
        model, model_error = self._attested
        return {
            "device_id": self.config.device_id,
            "agent_version": self.config.agent_version,
            "model": model,
            "model_error": model_error,
            "floor": floor,
            "pcr_policy": self._pcr_policy,
        }

    # -- files ------------------------------------------------------------------------------

    def _write_pid(self) -> None:
        path = self.state_dir / PID_FILE
        other = read_pid(self.state_dir)
        if other is not None and other != os.getpid():
            raise DaemonError(f"another agent (pid {other}) runs on {self.state_dir}")
        path.write_text(f"{os.getpid()}\n")

    def _remove_pid(self) -> None:
        if read_pid(self.state_dir) == os.getpid():
            (self.state_dir / PID_FILE).unlink(missing_ok=True)

    def _write_status(self, installer: Installer) -> None:
        try:
            floor: int | None = installer.floor.floor()
        except Exception as exc:  # noqa: BLE001 - informative; never stop serving for it
            log.warning("cannot read the anti-rollback floor: %s", exc)
            floor = None
        doc = {
            "version": 1,
            "pid": os.getpid(),
            "started_at": self._started,
            "device_id": self.config.device_id,
            "serving": self._serving,
            "floor": floor,
            "last_check": None if self._last is None else self._last.to_json(),
            "last_rollback": self._last_rollback,
            "start_error": self._start_error,
        }
        write_json(self.state_dir / DAEMON_FILE, doc)


def _attested_model(slot: SlotInfo) -> dict[str, Any] | None:
    """The ``model`` of an attestation answer, from the served slot's slot.json."""
    if slot.family is None:
        return None
    return {
        "family": slot.family,
        "version": slot.model_version,
        "digest_alg": slot.digest_alg,
        "plaintext_digest": slot.plaintext_digest,
        "slot": slot.name,
    }


def read_pid(state_dir: Path) -> int | None:
    """The pid of a live agent on ``state_dir``, or None (no file, stale or garbage)."""
    try:
        pid = int((Path(state_dir) / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a zombie or a reused pid of something else is not our agent
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return pid
    if "\nState:\tZ" in status or b"edgeseal" not in cmdline:
        return None
    return pid


def signal_agent(state_dir: Path, signum: int) -> int | None:
    """Send ``signum`` to a running agent; return its pid, or None when none runs."""
    pid = read_pid(state_dir)
    if pid is not None:
        os.kill(pid, signum)
    return pid


__all__ = [
    "DAEMON_FILE",
    "PID_FILE",
    "Daemon",
    "DaemonError",
    "KeySetup",
    "NoSignedPolicyError",
    "make_installer",
    "open_config_backend",
    "open_key_setup",
    "read_pid",
    "read_signed_policy",
    "signal_agent",
    "start_check",
    "start_serving",
]
