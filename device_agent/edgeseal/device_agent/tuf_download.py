"""Resumable, bounded, verified download of one TUF target file.

A sealed model can be hundreds of megabytes on a flaky uplink, so a download
continues where it stopped: the bytes received so far live in
``<name>%part`` in the download directory and the next attempt (a retry now,
or the next update cycle after a power cut) asks for the rest with
``Range: bytes=<size>-``. Nothing is trusted until the whole file matches the
trusted length and hashes from TUF metadata; only then is it renamed to its
final name.

The rules, and why:

* the trusted length bounds every read: a server that sends more (endless
  data) is cut off, the partial file deleted, the download refused;
* a server that ignores Range (200) restarts the file; a 416 or a
  Content-Range that does not start at our offset discards the partial file;
* a complete file that fails verification is deleted. If part of it came from
  an earlier attempt, that part may be what is corrupt (a torn write), so the
  file is fetched once more from scratch before the repository is blamed.
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from pathlib import Path

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile

from edgeseal.device_agent.tuf_errors import TargetVerificationError, normalise
from edgeseal.device_agent.tuf_fetch import AgentFetcher, is_transient

logger = logging.getLogger(__name__)

#: ``urllib.parse.quote`` only ever writes ``%`` followed by two hex digits, so
#: no quoted target name ends in "%part": a partial file never collides with a
#: final one (say, of a target that is itself named "x.part").
PARTIAL_SUFFIX = "%part"


def partial_path(final: Path) -> Path:
    """Where the bytes received so far for ``final`` are kept."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def download_resumable(
    fetcher: AgentFetcher, url: str, info: TargetFile, final: Path, *, max_attempts: int
) -> Path:
    """Fetch ``url`` into ``final`` (resuming its partial file), verified against ``info``.

    Raises :class:`TargetVerificationError` when the bytes do not match the
    trusted metadata, another :class:`TUFClientError` when the network or the
    disk fails for good (the partial file is then kept, to resume later).
    """
    part = partial_path(final)
    reused = _discard_if_oversized(part, info.length)
    while True:
        _fill(fetcher, url, part, info, max_attempts=max_attempts)
        try:
            with part.open("rb") as handle:
                info.verify_length_and_hashes(handle)
        except tuf_exc.LengthOrHashMismatchError as e:
            part.unlink(missing_ok=True)
            if reused:
                logger.warning(
                    "%s: resumed download failed verification; fetching it again from scratch",
                    info.path,
                )
                reused = False
                continue
            raise TargetVerificationError(
                "downloaded target does not match its trusted length and hashes",
                target=info.path,
                url=url,
                cause=str(e),
            ) from e
        except OSError as e:
            raise normalise(e, target=info.path) from e
        part.replace(final)
        _fsync_dir(final.parent)
        logger.info("downloaded and verified target %s (%d bytes)", info.path, info.length)
        return final


def _discard_if_oversized(part: Path, length: int) -> bool:
    """Drop a partial file longer than the target; say whether a prefix is reused."""
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return False
    if size > length:
        logger.info("partial %s is longer than the target; discarding it", part.name)
        part.unlink()
        return False
    return size > 0


def _fill(
    fetcher: AgentFetcher, url: str, part: Path, info: TargetFile, *, max_attempts: int
) -> None:
    """Make ``part`` hold ``info.length`` bytes from ``url``, retrying transient failures."""
    retry = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if offset >= info.length:
            return
        try:
            _fetch_rest(fetcher, url, part, info, offset)
        except tuf_exc.DownloadError as e:
            retry += 1
            if not is_transient(e) or retry >= max_attempts:
                raise normalise(e, target=info.path) from e
            fetcher.backoff(retry, info.path, e)
        except OSError as e:
            raise normalise(e, target=info.path) from e


def _fetch_rest(fetcher: AgentFetcher, url: str, part: Path, info: TargetFile, offset: int) -> None:
    """One request: append what the server sends after ``offset`` to ``part``."""
    try:
        response = fetcher.open(url, offset=offset)
    except tuf_exc.DownloadHTTPError as e:
        if e.status_code == 416 and offset > 0:
            # Our partial file is not a prefix of what the server has.
            part.unlink(missing_ok=True)
            raise tuf_exc.DownloadError("range not satisfiable; restarting") from e
        raise
    if offset > 0 and response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {offset}-"):
            response.close()
            part.unlink(missing_ok=True)
            raise tuf_exc.DownloadError(f"unexpected Content-Range {content_range!r}; restarting")
        logger.info("resuming %s at byte %d of %d", info.path, offset, info.length)
    elif offset > 0:
        logger.info("server ignored Range for %s; restarting", info.path)
        offset = 0
    remaining = info.length - offset
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > remaining:
        response.close()
        _refuse_too_long(part, info, url, f"Content-Length {declared} > {remaining} expected")
    received = 0
    with part.open("ab" if offset else "wb") as out, closing(fetcher.chunks(response)) as body:
        for chunk in body:
            received += len(chunk)
            if received > remaining:
                out.close()
                _refuse_too_long(part, info, url, f"more than {remaining} bytes sent")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if received < remaining:
        # The server closed early without an error we could see: resume.
        raise tuf_exc.DownloadError(f"got {received} of {remaining} bytes")


def _refuse_too_long(part: Path, info: TargetFile, url: str, why: str) -> None:
    part.unlink(missing_ok=True)
    raise TargetVerificationError(
        f"the server sent more than the trusted length of {info.length} bytes (endless data)",
        target=info.path,
        url=url,
        cause=why,
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
