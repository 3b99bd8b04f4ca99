"""The device agent's one TUF code path: refresh, look up, list a family, download.

Used by the agent's updater and by the tuf-conformance CLI
(:mod:`edgeseal.device_agent.conformance`), so the conformance suite tests the
code that runs on devices. Built on python-tuf's ``ngclient.Updater`` with:

* the delegation fix (:mod:`~edgeseal.device_agent.tuf_updater`);
* bounded metadata and target sizes, connect/read timeouts and retries with
  backoff (:mod:`~edgeseal.device_agent.tuf_config`,
  :mod:`~edgeseal.device_agent.tuf_fetch`);
* resumable target downloads (:mod:`~edgeseal.device_agent.tuf_download`);
* every failure normalised to a :class:`TUFClientError`.

One *update cycle* = one :meth:`AgentTUFClient.refresh` (a fresh ``Updater``,
since ngclient refreshes once per instance, bootstrapped from the trusted
``root.json`` in the metadata directory) followed by lookups and downloads
against that consistent repository state. Metadata is stored under
non-versioned names (``root.json``, ``timestamp.json``, ``<role>.json``;
ngclient 7 keeps ``root.json`` as a link into ``root_history/``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib import parse

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile, Targets

from edgeseal.device_agent.tuf_config import TUFClientConfig
from edgeseal.device_agent.tuf_download import download_resumable
from edgeseal.device_agent.tuf_errors import (
    TargetNotFoundError,
    TargetVerificationError,
    TUFClientError,
    TUFStorageError,
    UnknownFamilyError,
    normalise,
)
from edgeseal.device_agent.tuf_fetch import AgentFetcher
from edgeseal.device_agent.tuf_updater import DelegationCheckingUpdater

logger = logging.getLogger(__name__)

ROOT_FILE = "root.json"


@contextmanager
def _normalised(target: str | None = None) -> Iterator[None]:
    """Let only :class:`TUFClientError` out of the block."""
    try:
        yield
    except TUFClientError:
        raise
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError, OSError) as e:
        raise normalise(e, target=target) from e


class AgentTUFClient:
    """TUF client of the device agent (see the module docstring).

    ``metadata_dir`` must hold the trusted ``root.json`` (pinned at
    provisioning). ``download_dir`` holds verified target files (named by
    their URL-quoted target path) and ``%part`` files of unfinished downloads.
    ``sleep`` and ``rng`` drive the retry backoff; tests inject them.
    """

    def __init__(
        self,
        metadata_dir: Path,
        metadata_base_url: str,
        target_base_url: str,
        download_dir: Path,
        *,
        config: TUFClientConfig,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.download_dir = Path(download_dir)
        self._metadata_base_url = metadata_base_url
        self._target_base_url = (
            target_base_url if target_base_url.endswith("/") else (f"{target_base_url}/")
        )
        self._config = config
        self._fetcher = AgentFetcher(config, sleep=sleep, rng=rng, pool=pool)
        self._updater: DelegationCheckingUpdater | None = None

    # -- metadata -----------------------------------------------------------

    def refresh(self) -> None:
        """Start an update cycle: update root, timestamp, snapshot and top-level targets.

        Raises :class:`TUFRepositoryError` (verification), :class:`TUFDownloadError`
        (network, after retries) or :class:`TUFStorageError` (local disk).
        """
        with _normalised():
            updater = DelegationCheckingUpdater(
                str(self.metadata_dir),
                self._metadata_base_url,
                str(self.download_dir),
                self._target_base_url,
                self._fetcher,
                self._config.updater_config(),
                bootstrap=self._trusted_root_bytes(),
            )
            updater.refresh()
        self._updater = updater
        logger.debug("TUF refresh done (root v%d)", updater.trusted_root().version)

    def get_targetinfo(self, path: str) -> TargetFile:
        """Trusted metadata of target ``path``, found by the TUF delegation walk.

        Refreshes first if this cycle has not. Raises :class:`TargetNotFoundError`
        if no trusted role lists it (never returns None).
        """
        updater = self._current()
        with _normalised(path):
            info = updater.get_targetinfo(path)
        if info is None:
            raise TargetNotFoundError("no trusted TUF metadata lists this target", target=path)
        return info

    def iter_family_targets(self, family: str) -> list[tuple[str, TargetFile]]:
        """All targets of the model family ``family``, sorted by path, each verified.

        TUF has no "list" operation, so this is built from verified pieces:
        the top-level targets role must delegate a role named ``family``; that
        role is loaded through the (fixed) delegation walk as delegated by
        top-level targets, so its signatures are checked against the family's
        release-manager keys; then every path it lists is looked up again with
        the ordinary :meth:`get_targetinfo` walk and kept only if the walk
        resolves it to this very entry. A path outside the role's delegated
        patterns, or shadowed by an earlier delegation, is thus left out exactly
        as it would be when downloading.
        """
        updater = self._current()
        with _normalised():
            delegations = updater.top_level_targets().delegations
            if delegations is None or delegations.roles is None or family not in delegations.roles:
                raise UnknownFamilyError(
                    f"top-level targets does not delegate to family {family!r}", target=family
                )
            role = updater.load_delegated(family, Targets.type)
            result: list[tuple[str, TargetFile]] = []
            for path in sorted(role.targets):
                resolved = updater.get_targetinfo(path)
                if resolved != role.targets[path]:
                    logger.warning(
                        "family %s lists %s but the delegation walk does not resolve it there;"
                        " ignoring it",
                        family,
                        path,
                    )
                    continue
                result.append((path, role.targets[path]))
        return result

    # -- targets ------------------------------------------------------------

    def local_path(self, info: TargetFile) -> Path:
        """Where the verified file of ``info`` lives in ``download_dir`` (flat, URL-quoted name)."""
        return self.download_dir / parse.quote(info.path, "")

    def find_cached_target(self, info: TargetFile, path: Path | None = None) -> Path | None:
        """``path`` (default :meth:`local_path`) if it already matches ``info``, else None."""
        candidate = self.local_path(info) if path is None else path
        try:
            with candidate.open("rb") as handle:
                info.verify_length_and_hashes(handle)
        except (OSError, tuf_exc.LengthOrHashMismatchError):
            return None
        return candidate

    def download_target(self, info: TargetFile) -> Path:
        """Download target ``info`` into ``download_dir``, verified, and return its path.

        Resumes a partial (``%part``) file with an HTTP Range request. A cached verified
        file is returned without any request. Raises
        :class:`TargetVerificationError` when the bytes do not match (the
        partial file is deleted) or the trusted length is over
        ``target_max_length``; :class:`TUFDownloadError` after the retries.
        """
        if info.length > self._config.target_max_length:
            raise TargetVerificationError(
                f"trusted length {info.length} is over the configured maximum "
                f"{self._config.target_max_length}",
                target=info.path,
            )
        cached = self.find_cached_target(info)
        if cached is not None:
            logger.debug("target %s already downloaded and verified", info.path)
            return cached
        updater = self._current()
        url = self._target_url(updater, info)
        with _normalised(info.path):
            self.download_dir.mkdir(parents=True, exist_ok=True)
            return download_resumable(
                self._fetcher,
                url,
                info,
                self.local_path(info),
                max_attempts=self._config.max_attempts,
            )

    # -- helpers --------------------------------------------------------------

    def _current(self) -> DelegationCheckingUpdater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def _trusted_root_bytes(self) -> bytes:
        path = self.metadata_dir / ROOT_FILE
        try:
            size = path.stat().st_size
            if size > self._config.root_max_length:
                raise TUFStorageError(
                    f"trusted {ROOT_FILE} is {size} bytes, over the {self._config.root_max_length}"
                    " bytes allowed",
                    target=str(path),
                )
            return path.read_bytes()
        except FileNotFoundError as e:
            raise TUFStorageError(
                f"no trusted {ROOT_FILE} in {self.metadata_dir}: the device is not provisioned",
                target=str(path),
            ) from e

    def _target_url(self, updater: DelegationCheckingUpdater, info: TargetFile) -> str:
        """The download URL, hash-prefixed as TUF 5.7.3 says under consistent snapshots."""
        target_path = info.path
        if updater.trusted_root().consistent_snapshot and self._config.prefix_targets_with_hash:
            digest = next(iter(info.hashes.values()))
            dirname, sep, basename = target_path.rpartition("/")
            target_path = f"{dirname}{sep}{digest}.{basename}"
        return f"{self._target_base_url}{target_path}"
