"""One update cycle (DESIGN "Flows" 3): refresh, select, download, unwrap, install, swap.

:meth:`Updater.check_now` runs the cycle once and returns an
:class:`UpdateResult` whose ``outcome`` is one of

* ``no-update`` - nothing newer for this device (family, hardware class,
  channel, rollout cohort, agent version), or the newest one already failed;
* ``installed`` - the new model passed its trial, was committed, and (when a
  :class:`~edgeseal.device_agent.inference.ModelHolder` is given) is served;
* ``refused`` - the release or its bytes are not acceptable: TUF verification,
  a header that disagrees with the signed metadata, a downgrade, a model that
  failed its health check, an ``attested`` release whose key the server
  refused (or a device not enrolled);
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
a new version or new bytes retry (:mod:`~edgeseal.device_agent.update_records`).
The checks against the signed metadata are in
:mod:`~edgeseal.device_agent.release_checks`.

Attested releases (``key_release = "attested"``) have no envelope target: after
the model is downloaded (so a slow download cannot outlive the server's
2-minute challenge), the envelope is released by the server on a fresh quote
(:mod:`~edgeseal.device_agent.key_release`; its time counts as ``download``),
with the signed PCR policy this updater opens the device key with, so a boot
state the policy authority approved after enrollment gets the key too.
The enrollment is checked *before* the download, so a device that is not
enrolled does not fetch a model it cannot open. A refused key release is
remembered in memory only, as the contract says ("not retried until the next
release or a restart"): re-enrolling a device, which is what fixes most
refusals, restarts the agent. A network failure is retried at the next cycle.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.health import load_and_check
from edgeseal.device_agent.inference import ModelHolder, ModelInfo
from edgeseal.device_agent.install import Installer, Release, TrialFailedError
from edgeseal.device_agent.key_release import (
    KeyReleaseClient,
    KeyReleaseError,
    KeyReleaseInvalidError,
    KeyReleaseRefusedError,
    NotEnrolledError,
    check_enrolled,
    fetch_envelope,
)
from edgeseal.device_agent.recipient import TPMRecipient
from edgeseal.device_agent.release_checks import (
    HeaderMismatchError,
    check_decrypted,
    check_envelope_target,
    check_header,
)
from edgeseal.device_agent.rollback_floor import VersionFloorError
from edgeseal.device_agent.slot_state import InstallError, StateBusyError, describe_error
from edgeseal.device_agent.slots import SlotInfo
from edgeseal.device_agent.state import DOWNLOADS_DIR, TUF_DIR, timestamp, utc_now
from edgeseal.device_agent.update_outcome import (
    PHASES,
    EndOfCycleError,
    OutcomeRecorder,
    PhaseTimer,
    UpdateResult,
)
from edgeseal.device_agent.update_records import ReleaseKey, UpdateRecords
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import HardwareError
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.sdk.envelope import open_envelope
from edgeseal.sdk.errors import EdgesealError, EnvelopeError, FormatError
from edgeseal.sdk.releases import ReleaseMetadata, envelope_target_path, select_release
from edgeseal.sdk.runtime import TFLiteModel
from edgeseal.sdk.sealed import inspect_sealed_model

if TYPE_CHECKING:
    from edgeseal.device_agent.tuf_client import AgentTUFClient

log = logging.getLogger(__name__)

TUFClientFactory = Callable[[], "AgentTUFClient"]


class UpdateCancelledError(AgentError):
    """The agent is shutting down; the cycle stopped between two steps (nothing changed)."""


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
        attestation_pcrs: Sequence[int] = (),
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
        self.records = UpdateRecords(self.state_dir)
        self._outcomes = OutcomeRecorder(installer, self.records)
        #: The board profile's PCRs: what an attested key release quotes (and nothing else).
        self._attestation_pcrs = tuple(attestation_pcrs)
        #: Releases whose key release was refused, not asked for again by this process.
        self._refused_keys: set[ReleaseKey] = set()

    # -- the cycle --------------------------------------------------------------------------

    def check_now(self, cancelled: Callable[[], bool] = lambda: False) -> UpdateResult:
        """Run one update cycle; never raises for a refused or failed update (see outcome).

        ``cancelled`` is polled between steps: when it returns True the cycle
        stops before the next step (a partial download stays resumable).
        """
        phases = PhaseTimer(self._clock)
        family = self.config.family
        version: int | None = None
        try:
            outcome, version, reason = self._cycle(phases, cancelled)
        except EndOfCycleError as refusal:
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
        self.records.write_last_check(result.to_json())
        level = logging.INFO if outcome in ("no-update", "installed") else logging.ERROR
        log.log(level, "update check: %s %s v%s: %s", outcome, family, version, reason or "")
        return result

    def _cycle(
        self, phases: PhaseTimer, cancelled: Callable[[], bool]
    ) -> tuple[str, int | None, str | None]:
        from edgeseal.device_agent.tuf_errors import (
            TargetNotFoundError,
            TUFClientError,
            UnknownFamilyError,
        )

        family = self.config.family
        self.records.remember_rollback(self.installer.read_state().last_update)
        with phases("refresh"):
            client = self._factory()
            try:
                client.refresh()
                targets = client.iter_family_targets(family)
            except UnknownFamilyError:
                return "no-update", None, f"the repository has no family {family!r}"
            except TUFClientError as exc:
                raise self._outcomes.fail(exc, "refresh", family, None) from exc
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
        if key in self.records.remembered():
            return (
                "no-update",
                meta.version,
                f"{family} v{meta.version} was refused or failed before; not retrying it",
            )
        if key in self._refused_keys:
            return (
                "no-update",
                meta.version,
                f"the key release of {family} v{meta.version} was refused; not asking again "
                "until a new release or a restart of the agent",
            )
        attested = meta.key_release == "attested"
        if attested:
            self._check_attested(meta, path, key)
        if cancelled():
            raise UpdateCancelledError("shutting down")
        with phases("download"):
            try:
                model_path = client.download_target(info)
                if cancelled():
                    raise UpdateCancelledError("shutting down")
                if attested:
                    envelope = self._released_envelope(meta, path, key)
                else:
                    envelope = self._envelope(client, meta)
            except TargetNotFoundError as exc:
                raise self._outcomes.fail(
                    exc, "envelope", family, meta, code="no-envelope"
                ) from exc
            except TUFClientError as exc:
                raise self._outcomes.fail(exc, "download", family, meta, remember=key) from exc
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
        phases: PhaseTimer,
        model_path: Path,
        envelope: bytes,
        meta: ReleaseMetadata,
        path: str,
        sealed_sha256: str,
        key: ReleaseKey,
    ) -> tuple[str, int | None, str | None]:
        with model_path.open("rb") as handle:
            try:
                header = inspect_sealed_model(handle)
                check_header(header, meta, self.installer.hardware_class)
            except (FormatError, HeaderMismatchError) as exc:
                raise self._outcomes.refuse(
                    "header", "header-mismatch", describe_error(exc), meta, path, key
                ) from exc
        with phases("unwrap"):
            try:
                content_key = open_envelope(
                    envelope, TPMRecipient(self._backend, self._approved), header
                )
            except EnvelopeError as exc:
                raise self._outcomes.refuse(
                    "unwrap", "envelope", describe_error(exc), meta, path, key
                ) from exc
            except HardwareError as exc:
                raise self._outcomes.fail(exc, "unwrap", meta.family, meta) from exc
        release = Release(
            family=meta.family,
            version=meta.version,
            target_path=path,
            sealed_sha256=sealed_sha256,
            plaintext_digest=meta.plaintext.digest.hex(),
            digest_alg=meta.plaintext.digest_alg,
        )
        self.records.save_release_metadata(meta)
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
            self.records.remember(key)
            raise EndOfCycleError(
                "refused", "trial", "trial-failed", describe_error(exc), meta.version
            ) from exc
        except VersionFloorError as exc:
            self.records.remember(key)
            raise EndOfCycleError(
                "refused", "check", "downgrade", describe_error(exc), meta.version
            ) from exc
        except (InstallError, StateBusyError) as exc:
            raise EndOfCycleError(
                "failed", "install", "install-failed", describe_error(exc), meta.version
            ) from exc
        except (AgentError, EdgesealError, HardwareError, OSError) as exc:
            # Refused by the installer's own pre-check (already recorded by it).
            self.records.remember(key)
            raise EndOfCycleError(
                "refused", "check", "install-refused", describe_error(exc), meta.version
            ) from exc
        finally:
            phases.seconds["commit"] = phases.seconds.get("commit", 0.0) + max(
                0.0, self._clock() - start - trial_time
            )
        if self.holder is not None and kept:
            self.holder.swap(kept[0], ModelInfo(meta.family, meta.version))
        return "installed", meta.version, None

    def _trial(
        self, phases: PhaseTimer, meta: ReleaseMetadata, kept: list[TFLiteModel]
    ) -> Callable[[SlotInfo], None]:
        """Load the slot as a restart would, check the digest, run the release's health check."""

        def trial(slot: SlotInfo) -> None:
            with phases("decrypt"):
                # The one decryption of the update (see check_decrypted).
                loaded = self.installer.load_slot(slot.name)
                check_decrypted(loaded, meta)
            with phases("health_check"):
                model, report = load_and_check(loaded.plaintext, meta.health_check)
                report.raise_if_failed()
            assert model is not None
            kept.append(model)

        return trial

    # -- pieces -----------------------------------------------------------------------------

    def _envelope(self, client: AgentTUFClient, meta: ReleaseMetadata) -> bytes:
        path = envelope_target_path(self.config.device_id, meta.family, meta.version)
        info = client.get_targetinfo(path)
        check_envelope_target(path, info.custom, info.length, self.config.device_id, meta)
        local = client.download_target(info)
        try:
            return local.read_bytes()
        finally:
            local.unlink(missing_ok=True)

    def _check_attested(self, meta: ReleaseMetadata, path: str, key: ReleaseKey) -> None:
        """Before downloading an attested release: enrolled, and a server to ask."""
        code, problem = "not-enrolled", None
        if not self.config.server_url:
            code, problem = "no-server", "the configuration names no server_url to ask for the key"
        else:
            try:
                check_enrolled(self.state_dir, self.config.device_id)
            except NotEnrolledError as exc:
                problem = exc.message
        if problem is not None:
            self._refused_keys.add(key)
            raise self._outcomes.refuse(
                "envelope",
                code,
                f"{meta.family} v{meta.version} is an attested release: {problem}",
                meta,
                path,
            )

    def _released_envelope(self, meta: ReleaseMetadata, path: str, key: ReleaseKey) -> bytes:
        """The envelope of an attested release, released by the server on a fresh quote."""
        what = f"{meta.family} v{meta.version}"
        try:
            return fetch_envelope(
                KeyReleaseClient(self.config.server_url),
                self._backend,
                self.config.device_id,
                self._attestation_pcrs,
                meta.family,
                meta.version,
                pcr_policy=self._approved.to_bytes(),
            )
        except (KeyReleaseRefusedError, NotEnrolledError) as exc:
            self._refused_keys.add(key)
            code = "not-enrolled" if isinstance(exc, NotEnrolledError) else "key-release-refused"
            raise self._outcomes.refuse(
                "envelope", code, f"{what}: {describe_error(exc)}", meta, path
            ) from exc
        except KeyReleaseInvalidError as exc:
            # The server may be fixed: refused now, asked again next cycle.
            raise self._outcomes.refuse(
                "envelope", "key-release-invalid", f"{what}: {describe_error(exc)}", meta, path
            ) from exc
        except (KeyReleaseError, HardwareError) as exc:
            raise self._outcomes.fail(
                exc, "envelope", meta.family, meta, code="key-release-failed"
            ) from exc

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
        if key in self.records.remembered():
            return "no-update", floor, f"v{floor} is active; v{meta.version} is a refused downgrade"
        raise self._outcomes.refuse(
            "select",
            "downgrade",
            f"the newest published {meta.family} v{meta.version} is older than the active "
            f"v{floor}: refusing a downgrade",
            meta,
            path,
            key,
        )


__all__ = [
    "UpdateCancelledError",
    "Updater",
    "default_tuf_client_factory",
]
