"""HTTP for the agent's TUF client: timeouts, Range requests, retries with backoff.

A python-tuf ``FetcherInterface`` (so ``Updater`` uses it for metadata) built
on urllib3 with urllib3's own retries *off*: retry decisions are made here,
with an injected ``sleep`` and ``rng`` so tests travel in time instead of
sleeping (house style 9). Every failure leaves this module as a python-tuf
``DownloadError`` subclass, which :func:`~edgeseal.device_agent.tuf_errors.normalise`
then maps to the agent's errors.

What is transient (retried): connection failures, timeouts, a body cut short,
HTTP 408/425/429/5xx. What is not: any other HTTP status (404 is how a TUF
repository says "no newer root"), a body longer than its bound.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from edgeseal.device_agent.tuf_config import TRANSIENT_HTTP_STATUS, TUFClientConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_transient(err: tuf_exc.DownloadError) -> bool:
    """Whether trying the same request again later may succeed."""
    if isinstance(err, tuf_exc.DownloadLengthMismatchError):
        return False
    if isinstance(err, tuf_exc.DownloadHTTPError):
        return err.status_code in TRANSIENT_HTTP_STATUS
    return True


class AgentFetcher(FetcherInterface):
    """urllib3 fetcher with separate connect/read timeouts, Range and bounded retries."""

    def __init__(
        self,
        config: TUFClientConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._rng = rng if rng is not None else random.SystemRandom()
        self._pool = pool if pool is not None else urllib3.PoolManager()
        self._timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        self._headers = {"User-Agent": config.user_agent}

    # -- single requests ---------------------------------------------------

    def open(self, url: str, *, offset: int = 0) -> urllib3.BaseHTTPResponse:
        """Send GET (with ``Range: bytes=offset-`` when ``offset`` > 0), return the response.

        The body is not read. Raises ``DownloadHTTPError`` for a status >= 300
        (redirects are not followed: a TUF mirror serves files, it does not
        bounce), ``SlowRetrievalError`` on a timeout, ``DownloadError`` otherwise.
        """
        headers = dict(self._headers)
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                timeout=self._timeout,
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_exc.SlowRetrievalError(f"timeout connecting to {url}") from e
        except urllib3.exceptions.MaxRetryError as e:
            if isinstance(e.reason, urllib3.exceptions.TimeoutError):
                raise tuf_exc.SlowRetrievalError(f"timeout connecting to {url}") from e
            raise tuf_exc.DownloadError(f"cannot connect to {url}: {e.reason}") from e
        except urllib3.exceptions.HTTPError as e:
            raise tuf_exc.DownloadError(f"cannot fetch {url}: {e}") from e
        if response.status >= 300:
            response.close()
            raise tuf_exc.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        return response

    def chunks(self, response: urllib3.BaseHTTPResponse) -> Generator[bytes, None, None]:
        """Yield the body in chunks, mapping read errors to python-tuf errors.

        A connection is returned to the pool only when its body was read to
        the end; one abandoned mid-body (too long, caller stopped) is closed.
        """
        complete = False
        try:
            yield from response.stream(self._config.chunk_size)
            complete = True
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_exc.SlowRetrievalError("read timeout") from e
        except urllib3.exceptions.HTTPError as e:
            # ProtocolError covers a connection reset and a body shorter than
            # its Content-Length (IncompleteRead): both transient.
            raise tuf_exc.DownloadError(f"download interrupted: {e}") from e
        finally:
            if complete:
                response.release_conn()
            else:
                response.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.chunks(self.open(url))

    # -- retries -----------------------------------------------------------

    def backoff(self, retry: int, what: str, err: BaseException) -> None:
        """Wait before retry number ``retry`` (1-based) of ``what``."""
        delay = self._config.backoff_delay(retry, self._rng)
        logger.info(
            "transient failure fetching %s (%s); retry %d/%d in %.2f s",
            what,
            err,
            retry,
            self._config.max_attempts - 1,
            delay,
        )
        self._sleep(delay)

    def with_retries(self, what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, fails for good, or attempts run out."""
        retry = 0
        while True:
            try:
                return attempt()
            except tuf_exc.DownloadError as e:
                retry += 1
                if not is_transient(e) or retry >= self._config.max_attempts:
                    raise
                self.backoff(retry, what, e)

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """Metadata download (used by ``Updater``), bounded and retried when transient."""
        return self.with_retries(
            url, lambda: super(AgentFetcher, self).download_bytes(url, max_length)
        )
