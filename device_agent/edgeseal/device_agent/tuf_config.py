"""Bounds, timeouts and retry policy of the agent's TUF client.

Every input is bounded before it is read (house style 3): each metadata role
has a maximum length (python-tuf's ``UpdaterConfig`` defaults), and a target
whose *trusted* length is over ``target_max_length`` is refused before a byte
is fetched. Downloads are retried with exponential backoff and jitter so that
a fleet does not hammer a recovering server in lock step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tuf.ngclient.config import UpdaterConfig

from edgeseal.device_agent.tuf_errors import TUFClientError

#: HTTP statuses worth retrying: the server or a proxy says "not now", not "no".
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class TUFClientConfig:
    """Configuration of :class:`~edgeseal.device_agent.tuf_client.AgentTUFClient`.

    Lengths are in bytes, times in seconds. ``max_attempts`` counts the first
    try: 4 means one try and up to three retries.
    """

    root_max_length: int = 512_000
    timestamp_max_length: int = 16_384
    snapshot_max_length: int = 2_000_000
    targets_max_length: int = 5_000_000
    target_max_length: int = 2 * 1024**3
    max_root_rotations: int = 32
    max_delegations: int = 32
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_attempts: int = 4
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    chunk_size: int = 64 * 1024
    user_agent: str = "edgeseal-agent"
    prefix_targets_with_hash: bool = True

    def __post_init__(self) -> None:
        positive = {
            "root_max_length": self.root_max_length,
            "timestamp_max_length": self.timestamp_max_length,
            "snapshot_max_length": self.snapshot_max_length,
            "targets_max_length": self.targets_max_length,
            "target_max_length": self.target_max_length,
            "max_root_rotations": self.max_root_rotations,
            "max_delegations": self.max_delegations,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "max_attempts": self.max_attempts,
            "chunk_size": self.chunk_size,
        }
        for name, value in positive.items():
            if value <= 0:
                raise TUFClientError(f"TUF client config: {name} must be > 0, got {value!r}")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise TUFClientError(
                "TUF client config: need 0 <= backoff_initial <= backoff_max, got "
                f"{self.backoff_initial!r} and {self.backoff_max!r}"
            )

    def updater_config(self) -> UpdaterConfig:
        """The python-tuf configuration carrying the same metadata bounds."""
        return UpdaterConfig(
            max_root_rotations=self.max_root_rotations,
            max_delegations=self.max_delegations,
            root_max_length=self.root_max_length,
            timestamp_max_length=self.timestamp_max_length,
            snapshot_max_length=self.snapshot_max_length,
            targets_max_length=self.targets_max_length,
            prefix_targets_with_hash=self.prefix_targets_with_hash,
            app_user_agent=self.user_agent,
        )

    def backoff_delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based).

        Exponential with "equal jitter": half the capped exponential delay is
        fixed, the other half is random, so retries never come sooner than
        half the schedule yet devices spread out.
        """
        capped = min(self.backoff_max, self.backoff_initial * (2.0 ** (retry - 1)))
        return capped / 2 + rng.random() * capped / 2
