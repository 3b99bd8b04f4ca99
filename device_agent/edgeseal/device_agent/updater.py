"""One update cycle (DESIGN "Flows" 3): refresh, select, download, unwrap, install, swap.

:meth:`Updater.check_now` runs the cycle once and returns an
:class:`UpdateResult` whose ``outcome`` is one of

* ``no-update`` - nothing newer for this device (family, hardware class,
  channel, rollout cohort, agent version), or the newest one already failed;
* ``installed`` - the new model passed its trial, was committed, and (when a
  :class:`~edgeseal.device_agent.inference.ModelHolder` is given) is served;
* ``refused`` - the release or its bytes are not acceptable: TUF verification,
  a header that disagrees with the signed metadata, a downgrade, a model that
  failed its health check, an ``attested`` release;
* ``failed`` - the device could not finish (network, disk, TPM).

Order of trust: everything used is first verified by TUF (the release
metadata and both target files); the sealed model's header, which is not
authenticated until decryption, is compared with the *signed* metadata before
the TPM is asked to unwrap anything; the plaintext digest is checked again on
the model actually loaded from the slot in the trial.

Cost: the model is decrypted once per update, in the trial (the header check
and the unwrap read only the header), and written once: the verified download
is renamed into the slot. The TUF client (python-tuf, urllib3,
securesystemslib) is imported at the first cycle, not while the agent only
serves: an idle agent does not need it.

Whatever happens, the model being served keeps being served: the install
transaction (:mod:`~edgeseal.device_agent.install`) only swaps on commit.
Refusals and failures are recorded in state.json (``last_update`` /
``last_error``) and the audit log. A release that was refused or failed its
trial is remembered in ``STATE/failed-releases.json`` by (family, version,
sealed SHA-256) and skipped, so a broken release is not retried at every poll;
a new version or new bytes retry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.health import load_and_check
from edgeseal.device_agent.inference import ModelHolder, ModelInfo
from edgeseal.device_agent.install import (
    Installer,
    InstallError,
    Release,
    StateBusyError,
    TrialFailedError,
)
from edgeseal.device_agent.recipient import TPMRecipient
from edgeseal.device_agent.rollback_floor import VersionFloorError
from edgeseal.device_agent.slots import SlotInfo
from edgeseal.device_agent.state import DOWNLOADS_DIR, TUF_DIR, read_json, timestamp, utc_now
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import HardwareError
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.sdk.envelope import open_envelope
from edgeseal.sdk.errors import EdgesealError, EnvelopeError, FormatError
from edgeseal.sdk.hazmat.format import SealedModelHeader
from edgeseal.sdk.releases import (
    EnvelopeMetadata,
    ReleaseMetadata,
    envelope_target_path,
    select_release,
)
from edgeseal.sdk.runtime import TFLiteModel
from edgeseal.sdk.sealed import inspect_sealed_model

if TYPE_CHECKING:
    from edgeseal.device_agent.tuf_client import AgentTUFClient

log = logging.getLogger(__name__)

OUTCOMES = ("no-update", "installed", "refused", "failed")
PHASES = ("refresh", "download", "unwrap", "decrypt", "health_check", "commit")
FAILED_FILE = "failed-releases.json"
LAST_CHECK_FILE = "last-check.json"
RELEASES_DIR = "releases"
#: How many refused/failed releases are remembered (the oldest are forgotten first).
MAX_REMEMBERED = 32
#: An HPKE envelope is 129 bytes; anything much larger is not one.
MAX_ENVELOPE_BYTES = 4096

TUFClientFactory = Callable[[], "AgentTUFClient"]


class UpdateCancelledError(AgentError):
    """The agent is shutting down; the cycle stopped between two steps (nothing changed)."""


class HeaderMismatchError(AgentError):
    """The downloaded model's header does not say what the signed release metadata says."""


@dataclass(frozen=True)
class UpdateResult:
    """What one cycle did; ``phases`` are seconds per phase (see :data:`PHASES`)."""

    outcome: str
    family: str
    version: int | None = None
    reason: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    at: str = ""
    cycle: str = ""

    @property
    def total_seconds(self) -> float:
        return sum(self.phases.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "family": self.family,
            "version": self.version,
            "reason": self.reason,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "at": self.at,
            "cycle": self.cycle,
        }


class _Phases:
    """Accumulates the wall time of each phase (perf_counter injected for tests)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + self._clock() - start


class _EndOfCycleError(Exception):
    """Internal: end the cycle with ``outcome`` and a recorded reason."""

    def __init__(
        self, outcome: str, step: str, code: str, message: str, version: int | None = None
    ) -> None:
        super().__init__(message)
        self.version = version
        self.outcome = outcome
        self.step = step
        self.code = code
        self.message = message


def default_tuf_client_factory(config: AgentConfig) -> TUFClientFactory:
    """A fresh :class:`AgentTUFClient` per cycle on ``STATE/tuf`` and ``STATE/downloads``."""

    def factory() -> AgentTUFClient:
        # Imported here: python-tuf and urllib3 are needed from the first cycle on only.
        from edgeseal.device_agent.tuf_client import AgentTUFClient
        from edgeseal.device_agent.tuf_config import TUFClientConfig

        return AgentTUFClient(
            config.state_dir / TUF_DIR,
            config.metadata_url,
            config.target_url,
            config.state_dir / DOWNLOADS_DIR,
            config=TUFClientConfig(target_max_length=config.max_model_bytes),
        )

    return factory


def plaintext_digest(alg: str, data: bytes) -> bytes:
    """The digest the sealed header names (``blake3`` or ``sha256``) of the plaintext."""
    if alg == "sha256":
        return hashlib.sha256(data).digest()
    if alg == "blake3":
        import blake3

        return bytes(blake3.blake3(data).digest())
    raise FormatError(f"unknown plaintext digest algorithm {alg!r}", field="digest_alg")


class Updater:
    """The update cycle of one device; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        backend: KeyBackend,
        approved_policy: SignedPCRPolicy,
        installer: Installer,
        holder: ModelHolder | None = None,
        *,
        tuf_client_factory: TUFClientFactory | None = None,
        now: Callable[[], Any] = utc_now,
        clock: Callable[[], float] = time.perf_counter,
        new_cycle: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self.config = config
        self._backend = backend
        self._approved = approved_policy
        self.installer = installer
        self.holder = holder
        self._factory = tuf_client_factory or default_tuf_client_factory(config)
        self._now = now
        self._clock = clock
        self._new_cycle = new_cycle
        self.state_dir = Path(config.state_dir)

    # -- the cycle --------------------------------------------------------------------------

    def check_now(self, cancelled: Callable[[], bool] = lambda: False) -> UpdateResult:
        """Run one update cycle; never raises for a refused or failed update (see outcome).

        ``cancelled`` is polled between steps: when it returns True the cycle
        stops before the next step (a partial download stays resumable).
        """
        phases = _Phases(self._clock)
        family = self.config.family
        version: int | None = None
        try:
            outcome, version, reason = self._cycle(phases, cancelled)
        except _EndOfCycleError as refusal:
            outcome, reason = refusal.outcome, refusal.message
            version = refusal.version if refusal.version is not None else version
        result = UpdateResult(
            outcome,
            family,
            version,
            reason,
            {p: phases.seconds.get(p, 0.0) for p in PHASES},
            timestamp(self._now()),
            self._new_cycle(),
        )
        self._write_last_check(result)
        level = logging.INFO if outcome in ("no-update", "installed") else logging.ERROR
        log.log(level, "update check: %s %s v%s: %s", outcome, family, version, reason or "")
        return result

    def _cycle(
        self, phases: _Phases, cancelled: Callable[[], bool]
    ) -> tuple[str, int | None, str | None]:
        from edgeseal.device_agent.tuf_errors import (
            TargetNotFoundError,
            TUFClientError,
            UnknownFamilyError,
        )

        family = self.config.family
        self._remember_rollback()
        with phases("refresh"):
            client = self._factory()
            try:
                client.refresh()
                targets = client.iter_family_targets(family)
            except UnknownFamilyError:
                return "no-update", None, f"the repository has no family {family!r}"
            except TUFClientError as exc:
                raise self._fail(exc, "refresh", family, None) from exc
        candidates: list[tuple[str, ReleaseMetadata]] = []
        infos = {}
        for path, info in targets:
            try:
                meta = ReleaseMetadata.from_custom(info.custom)
            except FormatError as exc:
                log.warning("ignoring target %s: malformed release metadata: %s", path, exc)
                continue
            candidates.append((path, meta))
            infos[path] = info
        active = self._active_good()
        floor = active.model_version if active is not None else None
        chosen = select_release(
            candidates,
            family=family,
            hardware_class=self.installer.hardware_class,
            channel=self.config.channel,
            device_id=self.config.device_id,
            agent_version=self.config.agent_version,
            floor_version=floor,
        )
        if chosen is None:
            return self._nothing_newer(candidates, infos, floor)
        path, meta = chosen
        info = infos[path]
        sealed_sha256 = str(info.hashes.get("sha256", ""))
        key = (meta.family, meta.version, sealed_sha256)
        if key in self._remembered():
            return (
                "no-update",
                meta.version,
                f"{family} v{meta.version} was refused or failed before; not retrying it",
            )
        if meta.key_release == "attested":
            raise self._refuse(
                "select",
                "attested-unsupported",
                f"{family} v{meta.version}: attested key release needs enrollment, "
                "not supported yet",
                meta,
                path,
                remember=key,
            )
        if cancelled():
            raise UpdateCancelledError("shutting down")
        with phases("download"):
            try:
                model_path = client.download_target(info)
                if cancelled():
                    raise UpdateCancelledError("shutting down")
                envelope = self._envelope(client, meta)
            except TargetNotFoundError as exc:
                raise self._fail(exc, "envelope", family, meta, code="no-envelope") from exc
            except TUFClientError as exc:
                raise self._fail(exc, "download", family, meta, remember=key) from exc
        try:
            return self._open_and_install(
                phases=phases,
                model_path=model_path,
                envelope=envelope,
                meta=meta,
                path=path,
                sealed_sha256=sealed_sha256,
                key=key,
            )
        finally:
            for leftover in (model_path,):
                leftover.unlink(missing_ok=True)

    def _open_and_install(
        self,
        *,
        phases: _Phases,
        model_path: Path,
        envelope: bytes,
        meta: ReleaseMetadata,
        path: str,
        sealed_sha256: str,
        key: tuple[str, int, str],
    ) -> tuple[str, int | None, str | None]:
        with model_path.open("rb") as handle:
            try:
                header = inspect_sealed_model(handle)
                _check_header(header, meta, self.installer.hardware_class)
            except (FormatError, HeaderMismatchError) as exc:
                raise self._refuse(
                    "header", "header-mismatch", _text(exc), meta, path, key
                ) from exc
        with phases("unwrap"):
            try:
                content_key = open_envelope(
                    envelope, TPMRecipient(self._backend, self._approved), header
                )
            except EnvelopeError as exc:
                raise self._refuse("unwrap", "envelope", _text(exc), meta, path, key) from exc
            except HardwareError as exc:
                raise self._fail(exc, "unwrap", meta.family, meta) from exc
        release = Release(
            family=meta.family,
            version=meta.version,
            target_path=path,
            sealed_sha256=sealed_sha256,
            plaintext_digest=meta.plaintext.digest.hex(),
            digest_alg=meta.plaintext.digest_alg,
        )
        self._save_release_metadata(meta)
        kept: list[TFLiteModel] = []
        start = self._clock()
        trial_time = 0.0
        try:
            trial = self._trial(phases, meta, kept)

            def timed_trial(slot: SlotInfo) -> None:
                nonlocal trial_time
                t0 = self._clock()
                try:
                    trial(slot)
                finally:
                    trial_time += self._clock() - t0

            # The download is handed over: renamed into the slot, not copied or re-hashed.
            self.installer.install(model_path, content_key, release, timed_trial, move=True)
        except TrialFailedError as exc:
            self._remember(key)
            raise _EndOfCycleError(
                "refused", "trial", "trial-failed", _text(exc), meta.version
            ) from exc
        except VersionFloorError as exc:
            self._remember(key)
            raise _EndOfCycleError(
                "refused", "check", "downgrade", _text(exc), meta.version
            ) from exc
        except (InstallError, StateBusyError) as exc:
            raise _EndOfCycleError(
                "failed", "install", "install-failed", _text(exc), meta.version
            ) from exc
        except (AgentError, EdgesealError, HardwareError, OSError) as exc:
            # Refused by the installer's own pre-check (already recorded by it).
            self._remember(key)
            raise _EndOfCycleError(
                "refused", "check", "install-refused", _text(exc), meta.version
            ) from exc
        finally:
            phases.seconds["commit"] = phases.seconds.get("commit", 0.0) + max(
                0.0, self._clock() - start - trial_time
            )
        if self.holder is not None and kept:
            self.holder.swap(kept[0], ModelInfo(meta.family, meta.version))
        return "installed", meta.version, None

    def _trial(
        self, phases: _Phases, meta: ReleaseMetadata, kept: list[TFLiteModel]
    ) -> Callable[[SlotInfo], None]:
        """Load the slot as a restart would, check the digest, run the release's health check."""

        def trial(slot: SlotInfo) -> None:
            with phases("decrypt"):
                # The one decryption of the update. load_slot authenticated every chunk,
                # hashed the plaintext and matched it with the now-authenticated header,
                # and matched that header's digest and algorithm with slot.json; so
                # comparing slot.json with the signed release here proves the plaintext
                # digest without hashing the plaintext a second time.
                loaded = self.installer.load_slot(slot.name)
                if (
                    len(loaded.plaintext) != meta.plaintext.size
                    or loaded.slot.digest_alg != meta.plaintext.digest_alg
                    or not hmac.compare_digest(
                        loaded.slot.plaintext_digest or "", meta.plaintext.digest.hex()
                    )
                ):
                    raise HeaderMismatchError(
                        "the decrypted model's digest or size is not the one the release signs"
                    )
            with phases("health_check"):
                model, report = load_and_check(loaded.plaintext, meta.health_check)
                report.raise_if_failed()
            assert model is not None
            kept.append(model)

        return trial

    # -- pieces -----------------------------------------------------------------------------

    def _envelope(self, client: AgentTUFClient, meta: ReleaseMetadata) -> bytes:
        from edgeseal.device_agent.tuf_errors import TargetVerificationError

        path = envelope_target_path(self.config.device_id, meta.family, meta.version)
        info = client.get_targetinfo(path)
        try:
            env_meta = EnvelopeMetadata.from_custom(info.custom)
        except FormatError as exc:
            raise TargetVerificationError(
                f"envelope metadata is malformed: {exc.message}", target=path
            ) from exc
        want = (self.config.device_id, meta.family, meta.version)
        if (env_meta.device, env_meta.family, env_meta.version) != want:
            raise TargetVerificationError("envelope metadata names another release", target=path)
        if info.length > MAX_ENVELOPE_BYTES:
            raise TargetVerificationError(
                f"envelope is {info.length} bytes, over {MAX_ENVELOPE_BYTES}", target=path
            )
        local = client.download_target(info)
        try:
            return local.read_bytes()
        finally:
            local.unlink(missing_ok=True)

    def _active_good(self) -> SlotInfo | None:
        state = self.installer.read_state()
        if state.active is None:
            return None
        info = self.installer.slot_info(state.active)
        return info if info.good else None

    def _nothing_newer(
        self,
        candidates: list[tuple[str, ReleaseMetadata]],
        infos: dict[str, Any],
        floor: int | None,
    ) -> tuple[str, int | None, str | None]:
        """No newer release; a newest eligible release *older* than ours is a downgrade."""
        if floor is None:
            return "no-update", None, "no release for this device"
        eligible = select_release(
            candidates,
            family=self.config.family,
            hardware_class=self.installer.hardware_class,
            channel=self.config.channel,
            device_id=self.config.device_id,
            agent_version=self.config.agent_version,
            floor_version=None,
        )
        if eligible is None or eligible[1].version >= floor:
            return "no-update", floor, f"v{floor} is the newest release for this device"
        path, meta = eligible
        key = (meta.family, meta.version, str(infos[path].hashes.get("sha256", "")))
        if key in self._remembered():
            return "no-update", floor, f"v{floor} is active; v{meta.version} is a refused downgrade"
        raise self._refuse(
            "select",
            "downgrade",
            f"the newest published {meta.family} v{meta.version} is older than the active "
            f"v{floor}: refusing a downgrade",
            meta,
            path,
            key,
        )

    def _refuse(  # noqa: PLR0917 - the refusal's fields, in the order they are read
        self,
        step: str,
        code: str,
        message: str,
        meta: ReleaseMetadata,
        path: str | None,
        remember: tuple[str, int, str] | None = None,
    ) -> _EndOfCycleError:
        if remember is not None:
            self._remember(remember)
        self.installer.record_outcome(
            "refused",
            step=step,
            code=code,
            message=message,
            family=meta.family,
            version=meta.version,
            target_path=path,
        )
        return _EndOfCycleError("refused", step, code, message, meta.version)

    def _fail(
        self,
        exc: BaseException,
        step: str,
        family: str,
        meta: ReleaseMetadata | None,
        *,
        code: str | None = None,
        remember: tuple[str, int, str] | None = None,
    ) -> _EndOfCycleError:
        """TUF verification failures are refusals; network/disk/TPM problems are failures."""
        from edgeseal.device_agent.tuf_errors import TargetVerificationError, TUFRepositoryError

        refused = isinstance(exc, TUFRepositoryError | TargetVerificationError)
        outcome = "refused" if refused else "failed"
        if refused and remember is not None:
            self._remember(remember)
        message = f"{step}: {_text(exc)}"
        self.installer.record_outcome(
            outcome,
            step=step,
            code=code or f"{step}-{outcome}",
            message=message,
            family=family,
            version=None if meta is None else meta.version,
            target_path=None if meta is None else meta.target_path,
        )
        return _EndOfCycleError(
            outcome, step, code or step, message, None if meta is None else meta.version
        )

    # -- small persistent files of the updater ----------------------------------------------

    def _remembered(self) -> set[tuple[str, int, str]]:
        path = self.state_dir / FAILED_FILE
        try:
            doc = read_json(path, FAILED_FILE)
            return {(str(e["family"]), int(e["version"]), str(e["sealed_sha256"])) for e in doc}
        except FileNotFoundError:
            return set()
        except (ValueError, TypeError, KeyError, OSError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return set()

    def _remember_rollback(self) -> None:
        """A release an operator rolled back from is not reinstalled by the next poll.

        ``rollback`` records it in ``last_update``; it is copied here before this
        cycle can record anything else, so it is remembered like a failed trial.
        """
        last = self.installer.read_state().last_update or {}
        gone = last.get("rolled_back_from") if last.get("outcome") == "rolled-back" else None
        if not isinstance(gone, dict) or not gone.get("sealed_sha256"):
            return
        key = (str(gone["family"]), int(gone["model_version"]), str(gone["sealed_sha256"]))
        if key not in self._remembered():
            self._remember(key)

    def _remember(self, key: tuple[str, int, str]) -> None:
        from edgeseal.device_agent.state import write_json

        known = [k for k in sorted(self._remembered()) if k != key][-(MAX_REMEMBERED - 1) :]
        known.append(key)
        doc = [{"family": f, "version": v, "sealed_sha256": s} for f, v, s in known]
        write_json(self.state_dir / FAILED_FILE, doc)  # type: ignore[arg-type]

    def _save_release_metadata(self, meta: ReleaseMetadata) -> None:
        """Keep the signed release metadata: the health check a restart runs again."""
        from edgeseal.device_agent.state import ensure_dir, write_json

        ensure_dir(self.state_dir / RELEASES_DIR)
        write_json(release_metadata_path(self.state_dir, meta.family, meta.version), meta.to_json())

    def _write_last_check(self, result: UpdateResult) -> None:
        from edgeseal.device_agent.state import write_json

        try:
            write_json(self.state_dir / LAST_CHECK_FILE, result.to_json())
        except OSError as exc:
            log.warning("cannot write %s: %s", LAST_CHECK_FILE, exc)


def release_metadata_path(state_dir: Path, family: str, version: int) -> Path:
    return Path(state_dir) / RELEASES_DIR / f"{family}-{version}.json"


def load_release_metadata(state_dir: Path, slot: SlotInfo) -> ReleaseMetadata | None:
    """The saved signed metadata of the slot's release, if it matches the slot; else None."""
    if slot.family is None or slot.model_version is None:
        return None
    path = release_metadata_path(state_dir, slot.family, slot.model_version)
    try:
        meta = ReleaseMetadata.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, FormatError) as exc:
        log.warning("ignoring saved release metadata %s: %s", path, exc)
        return None
    if meta.plaintext.digest.hex() != slot.plaintext_digest:
        return None
    return meta


def _check_header(header: SealedModelHeader, meta: ReleaseMetadata, hardware_class: str) -> None:
    """The (not yet authenticated) header must say what the signed metadata says."""
    problems = []
    if header.family != meta.family:
        problems.append(f"family {header.family!r} is not {meta.family!r}")
    if header.version != meta.version:
        problems.append(f"version {header.version} is not {meta.version}")
    if hardware_class not in header.hardware:
        problems.append(f"it is not for this device's hardware class {hardware_class!r}")
    if header.digest_alg != meta.plaintext.digest_alg:
        problems.append(f"digest algorithm {header.digest_alg} is not {meta.plaintext.digest_alg}")
    if not hmac.compare_digest(header.plaintext_digest, meta.plaintext.digest):
        problems.append("plaintext digest differs from the signed one")
    if header.plaintext_size != meta.plaintext.size:
        problems.append(f"plaintext size {header.plaintext_size} is not {meta.plaintext.size}")
    if problems:
        raise HeaderMismatchError(
            f"the downloaded {meta.target_path} disagrees with its signed metadata: "
            + "; ".join(problems)
        )


def _text(exc: BaseException) -> str:
    diagnostics = getattr(exc, "diagnostics", None)
    if callable(diagnostics):
        return str(diagnostics())
    return f"{type(exc).__name__}: {exc}"


__all__ = [
    "OUTCOMES",
    "PHASES",
    "UpdateCancelledError",
    "UpdateResult",
    "Updater",
    "default_tuf_client_factory",
    "load_release_metadata",
    "plaintext_digest",
]
