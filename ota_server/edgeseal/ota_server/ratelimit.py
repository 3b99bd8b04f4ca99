"""In-process rate limiting: a token bucket per key (a client address, a device id).

Pure logic with an injected clock (seconds, any epoch): no I/O, no sleeping,
so a test travels in time. :class:`RateLimiter` holds one bucket per key; a
bucket holds up to ``rate.requests`` tokens and refills continuously at
``rate.requests`` per ``rate.period`` seconds, so a client may burst the whole
allowance and then gets one request per ``period / requests`` seconds. A
request that finds less than one token is refused with the seconds until one
is there (the ``Retry-After`` of a 429).

Memory is bounded: at most ``max_keys`` buckets, least recently used evicted
first, so a flood of distinct keys (forged device ids, many addresses) cannot
grow it. Evicting a bucket forgets that key's history - an attacker who can
cycle more than ``max_keys`` keys gets fresh buckets - which is why the routes
limit by client address *before* the key the client chooses (the device id).

Refusals are *reported* (audited by the caller) at most once per key and
``period``: :attr:`RateDecision.report` is true for the first refusal of a key
and then again only when ``period`` has passed since the last reported one;
:attr:`RateDecision.suppressed` counts the refusals not reported in between,
so the next report says how many there were. A flood therefore costs at most
one audit entry per key and period, however fast it comes.

Thread-safe: one lock around every decision (the routes decide on the event
loop, but the limiter makes no assumption about its callers).
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edgeseal.ota_server.service_errors import ServiceError

#: Buckets a limiter keeps by default (a bucket is a few dozen bytes).
DEFAULT_MAX_KEYS = 10_000
#: IPv6 clients are limited per /64: a single host usually owns a whole /64.
IPV6_PREFIX = 64

Clock = Callable[[], float]


class RateLimitedError(ServiceError):
    """Too many requests from this client or for this device: retry after ``retry_after`` s."""

    status = 429
    code = "rate-limited"

    def __init__(self, message: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Rate:
    """``requests`` per ``period`` seconds (also the burst: a full bucket)."""

    requests: int
    period: float = 60.0

    def __post_init__(self) -> None:
        if type(self.requests) is not int or self.requests < 1:
            raise ValueError("a rate allows at least one request")
        if not self.period > 0:
            raise ValueError("a rate's period must be positive")

    @property
    def interval(self) -> float:
        """Seconds to refill one token."""
        return self.period / self.requests


@dataclass(frozen=True)
class RateDecision:
    """What :meth:`RateLimiter.check` decided for one request."""

    allowed: bool
    #: Seconds until the next request of this key would be allowed (0.0 when allowed).
    retry_after: float = 0.0
    #: A refusal the caller should report (audit): the first of its key in ``period``.
    report: bool = False
    #: Refusals of this key not reported since the last reported one (with ``report``).
    suppressed: int = 0

    @property
    def retry_after_seconds(self) -> int:
        """``retry_after`` as a ``Retry-After`` header value: whole seconds, at least 1."""
        return max(1, math.ceil(self.retry_after))


@dataclass
class _Bucket:
    tokens: float
    updated: float
    reported: float | None = None
    suppressed: int = 0


class RateLimiter:
    """Token buckets by key, at most ``max_keys`` of them (LRU), under one lock."""

    def __init__(self, rate: Rate, *, clock: Clock, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("a rate limiter keeps at least one key")
        self.rate = rate
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def check(self, key: str) -> RateDecision:
        """Take one token from ``key``'s bucket, or refuse: the decision for one request."""
        rate = self.rate
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=float(rate.requests), updated=now)
                self._buckets[key] = bucket
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                # A clock that steps back refills nothing (and never drains the bucket).
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(rate.requests), bucket.tokens + elapsed / rate.interval)
                bucket.updated = max(bucket.updated, now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return RateDecision(allowed=True)
            retry_after = (1.0 - bucket.tokens) * rate.interval
            if (
                bucket.reported is None
                or now - bucket.reported >= rate.period
                or now < bucket.reported
            ):
                suppressed, bucket.suppressed = bucket.suppressed, 0
                bucket.reported = now
                return RateDecision(False, retry_after, report=True, suppressed=suppressed)
            bucket.suppressed += 1
            return RateDecision(False, retry_after)


def address_key(host: str | None) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its /64 network.

    ``None`` (no peer address, e.g. a Unix socket) and anything that is not an IP
    address (a test client's name) are keys of their own, as given.
    """
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:256]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)
