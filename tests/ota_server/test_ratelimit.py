"""The token bucket of :mod:`edgeseal.ota_server.ratelimit`: pure, on a fake clock."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from edgeseal.ota_server.ratelimit import Rate, RateLimitedError, RateLimiter, address_key
from edgeseal.ota_server.service_errors import http_status


@dataclass
class FakeClock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


def allowed(limiter: RateLimiter, key: str, times: int) -> list[bool]:
    return [limiter.check(key).allowed for _ in range(times)]


def test_a_full_bucket_allows_the_burst_then_one_request_per_interval() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(10, 60.0), clock=clock)
    assert allowed(limiter, "dev-1", 10) == [True] * 10
    refused = limiter.check("dev-1")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(6.0)
    assert refused.retry_after_seconds == 6
    clock.now += 5.9
    assert not limiter.check("dev-1").allowed
    clock.now += 0.1  # one interval (60 s / 10) since the bucket emptied: one token
    assert allowed(limiter, "dev-1", 2) == [True, False]


def test_the_bucket_refills_to_its_capacity_and_no_further() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(3, 30.0), clock=clock)
    assert allowed(limiter, "a", 4) == [True, True, True, False]
    clock.now += 3600
    assert allowed(limiter, "a", 4) == [True, True, True, False]


def test_keys_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(Rate(2), clock=FakeClock())
    assert allowed(limiter, "dev-1", 3) == [True, True, False]
    assert allowed(limiter, "dev-2", 2) == [True, True]


def test_a_clock_that_steps_back_neither_refills_nor_drains() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(2, 60.0), clock=clock)
    assert allowed(limiter, "a", 1) == [True]
    clock.now -= 3600
    assert allowed(limiter, "a", 2) == [True, False]
    clock.now += 3600  # back to where it was: only the time since then counts
    assert allowed(limiter, "a", 1) == [False]
    clock.now += 30
    assert allowed(limiter, "a", 2) == [True, False]


def test_a_refusal_is_reported_once_a_period_with_the_suppressed_count() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(1, 60.0), clock=clock)
    assert limiter.check("a").allowed
    first = limiter.check("a")
    assert (first.allowed, first.report, first.suppressed) == (False, True, 0)
    # A flood: refused (and allowed once a minute) but not reported again within the period.
    decisions = []
    for _ in range(50):
        clock.now += 1
        decisions.append(limiter.check("a"))
    reported = [d for d in decisions if d.report]
    assert len(reported) == 0
    clock.now += 10  # 60 s since the first report
    again = limiter.check("a")
    assert again.allowed  # the bucket refilled meanwhile
    later = limiter.check("a")
    assert later.report and later.suppressed == sum(1 for d in decisions if not d.allowed)


def test_memory_is_bounded_least_recently_used_first() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(1), clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.check(key).allowed
    assert not limiter.check("a").allowed  # "a" is now the most recently used
    for i in range(1000):  # a flood of distinct keys
        limiter.check(f"forged-{i}")
        assert len(limiter) <= 3
    assert len(limiter) == 3
    # the evicted keys start over with a full bucket
    assert limiter.check("a").allowed


def test_used_keys_survive_eviction_of_older_ones() -> None:
    limiter = RateLimiter(Rate(1), clock=FakeClock(), max_keys=2)
    assert limiter.check("a").allowed
    assert limiter.check("b").allowed
    assert not limiter.check("a").allowed  # touches "a": "b" is the oldest now
    assert limiter.check("c").allowed  # evicts "b"
    assert not limiter.check("a").allowed  # still limited
    assert limiter.check("b").allowed  # forgotten: a fresh bucket


def test_concurrent_requests_never_get_more_than_the_bucket() -> None:
    limiter = RateLimiter(Rate(100), clock=FakeClock())
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = [limiter.check("shared").allowed for _ in range(50)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 400
    assert results.count(True) == 100


def test_rates_and_limiters_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        Rate(0)
    with pytest.raises(ValueError, match="period"):
        Rate(1, 0.0)
    with pytest.raises(ValueError, match="at least one key"):
        RateLimiter(Rate(1), clock=FakeClock(), max_keys=0)


def test_the_refusal_is_a_429_with_its_retry_after() -> None:
    error = RateLimitedError("slow down", retry_after=7)
    assert http_status(error) == (429, "rate-limited")
    assert error.retry_after == 7


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("testclient", "testclient"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_address_keys(host: str | None, key: str) -> None:
    assert address_key(host) == key
