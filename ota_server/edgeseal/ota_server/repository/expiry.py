"""Lifetimes of the TUF roles, and when an online role must be re-signed.

Time is always injected (``now=``, STYLE.md 9): tests travel in time instead
of sleeping. Expiry timestamps are whole seconds in UTC, as TUF serializes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed.

    Offline roles (root, targets, families) are signed by people, so they live
    long; online roles are re-signed by the server (``refresh_online``) once
    less than ``refresh_fraction`` of their lifetime remains.
    """

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    family: timedelta = timedelta(days=90)
    envelopes: timedelta = timedelta(days=30)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    refresh_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("root", "targets", "family", "envelopes", "snapshot", "timestamp"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"expiry.{name} must be positive")
        if not 0.0 < self.refresh_fraction < 1.0:
            raise ValueError("expiry.refresh_fraction must be between 0 and 1")

    def lifetime(self, role: str) -> timedelta:
        """Lifetime of ``role``; hashed bins share the lifetime of ``envelopes``."""
        if role in ("root", "targets", "snapshot", "timestamp", "envelopes"):
            value: timedelta = getattr(self, role)
            return value
        if role.startswith("envelopes-"):
            return self.envelopes
        return self.family


def utc_now(now: datetime | None = None) -> datetime:
    """``now`` (or the wall clock) as an aware UTC datetime truncated to seconds."""
    current = datetime.now(UTC) if now is None else now
    if current.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return current.astimezone(UTC).replace(microsecond=0)


def expires_at(now: datetime, lifetime: timedelta) -> datetime:
    """The expiry of metadata signed at ``now``."""
    return utc_now(now) + lifetime


def needs_refresh(expires: datetime, now: datetime, lifetime: timedelta, fraction: float) -> bool:
    """True when less than ``fraction`` of ``lifetime`` remains before ``expires``."""
    return expires - utc_now(now) < lifetime * fraction
