"""Serving the published TUF repository: ``/tuf/metadata/<file>`` and ``/tuf/targets/<path>``.

These files are public (TUF metadata is signed; sealed models are encrypted;
envelopes open only in one device's TPM), so there is no authentication, but
the path rules are strict: every segment is ``[A-Za-z0-9._+-]`` and may not
start with a dot (no ``..``, no hidden temporary files of an atomic write in
progress), no empty segments, no directory listings, and the resolved path
must stay inside the served root even through symlinks. Anything else is a
plain 404 that says nothing about the file system.

HTTP Range (RFC 9110 section 14) comes from Starlette's ``FileResponse``:
one range answers 206 with ``Content-Range``, an unsatisfiable one 416 with
``Content-Range: bytes */size``; devices resume interrupted downloads with it.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.responses import FileResponse

from edgeseal.ota_server.service_errors import NotFoundError

_SEGMENT = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}$")
MAX_PATH_LENGTH = 1024
MAX_SEGMENTS = 8


def resolve_static_path(root: Path, relative: str) -> Path:
    """The file under ``root`` that ``relative`` names, or :class:`NotFoundError`. Pure path logic
    plus ``resolve``/``is_file``; never lists a directory."""
    if len(relative) > MAX_PATH_LENGTH:
        raise NotFoundError("no such file")
    segments = relative.split("/")
    if not 1 <= len(segments) <= MAX_SEGMENTS or not all(_SEGMENT.match(s) for s in segments):
        raise NotFoundError("no such file")
    base = root.resolve()
    candidate = base.joinpath(*segments)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotFoundError("no such file") from None
    if not resolved.is_relative_to(base) or not resolved.is_file():
        raise NotFoundError("no such file")
    return resolved


def static_response(root: Path, relative: str, *, mutable: bool) -> FileResponse:
    """A (range-capable) response for one published file.

    ``mutable`` files (``timestamp.json``, unversioned names) must be revalidated
    on every request; consistent-snapshot files never change once written.
    """
    path = resolve_static_path(root, relative)
    media_type = "application/json" if path.suffix == ".json" else "application/octet-stream"
    cache = "no-cache" if mutable else "public, max-age=31536000, immutable"
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"},
    )


def metadata_is_mutable(name: str) -> bool:
    """``N.role.json`` is immutable under consistent snapshots; other names are not."""
    prefix = name.split(".", 1)[0]
    return not prefix.isdigit()
