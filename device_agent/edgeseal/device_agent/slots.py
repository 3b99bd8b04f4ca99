"""Model slots ``STATE/slots/a`` and ``STATE/slots/b``: RAUC's A/B slots for one model.

A slot holds ``model.esm`` (the sealed model as downloaded and checked
against its TUF hashes), ``key.sealed`` (its content key re-sealed by the TPM
under the device's signed PCR policy, so a restart needs neither network nor
envelope) and ``slot.json``, whose ``status`` follows RAUC's marks:

* ``empty`` - never written;
* ``bad``   - being written, or failed (the first thing an install does is
  mark the target slot bad, so a half-written slot can never look usable);
* ``written`` - written and its contents recorded, not yet proven in a trial;
* ``good``  - passed its trial (load + health check) and was committed.

A ``slot.json`` that does not parse strictly is moved aside
(``slot.json.corrupt-<utc>``) and the slot reads as ``bad``: nothing in it is
trusted until an install rewrites it.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeseal.device_agent.errors import AgentError, WrongHardwareError
from edgeseal.device_agent.state import (
    SLOT_NAMES,
    SLOTS_DIR,
    Quarantine,
    StateError,
    StateFormatError,
    check_version,
    ensure_dir,
    quarantine,
    read_json,
    require_keys,
    text,
    write_json,
)
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.sdk.files import atomic_write, atomic_writer
from edgeseal.sdk.hazmat.format import SealedModelHeader
from edgeseal.sdk.hazmat.stream import key_commitment
from edgeseal.sdk.sealed import ContentKey, inspect_sealed_model, open_sealed_model

log = logging.getLogger(__name__)

SLOT_FILE = "slot.json"
MODEL_FILE = "model.esm"
KEY_FILE = "key.sealed"
STATUSES = ("empty", "bad", "written", "good")
DIGEST_ALGS = ("blake3", "sha256")
#: A sealed key blob is a few hundred bytes.
MAX_KEY_BLOB_BYTES = 64 * 1024
_COPY_CHUNK = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_INFO_KEYS = (
    "family",
    "model_version",
    "target_path",
    "sealed_sha256",
    "plaintext_digest",
    "digest_alg",
    "installed_at",
)


class SlotContentError(AgentError):
    """A slot's files do not hold what its slot.json (and the release) say: the slot is bad."""


def other_slot(name: str) -> str:
    """The other slot of the A/B pair."""
    if name not in SLOT_NAMES:
        raise ValueError(f"no slot {name!r}")
    return SLOT_NAMES[1] if name == SLOT_NAMES[0] else SLOT_NAMES[0]


@dataclass(frozen=True)
class SlotInfo:
    """What ``slot.json`` says. Release fields are None only for an ``empty`` slot."""

    name: str
    status: str = "empty"
    family: str | None = None
    model_version: int | None = None
    target_path: str | None = None
    sealed_sha256: str | None = None
    plaintext_digest: str | None = None
    digest_alg: str | None = None
    installed_at: str | None = None

    @property
    def good(self) -> bool:
        return self.status == "good"

    def with_status(self, status: str) -> SlotInfo:
        if status not in STATUSES:
            raise ValueError(f"unknown slot status {status!r}")
        return replace(self, status=status)

    def describe(self) -> str:
        if self.family is None:
            return f"slot {self.name} ({self.status})"
        return f"slot {self.name} ({self.family} v{self.model_version}, {self.status})"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": 1, "status": self.status}
        doc.update({key: getattr(self, key) for key in _INFO_KEYS})
        return doc

    @classmethod
    def from_json(cls, name: str, doc: Any) -> SlotInfo:
        require_keys(doc, {"version", "status", *_INFO_KEYS}, SLOT_FILE)
        check_version(doc["version"])
        status = doc["status"]
        if status not in STATUSES:
            raise StateFormatError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        if all(doc[key] is None for key in _INFO_KEYS):
            if status in ("written", "good"):
                raise StateFormatError(f"a {status} slot must describe its model")
            return cls(name, status)
        version = doc["model_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise StateFormatError("model_version must be a non-negative integer")
        for key in ("sealed_sha256", "plaintext_digest"):
            if not isinstance(doc[key], str) or not _HEX64.match(doc[key]):
                raise StateFormatError(f"{key} must be 64 lower-case hex digits")
        if doc["digest_alg"] not in DIGEST_ALGS:
            raise StateFormatError(f"digest_alg must be one of {', '.join(DIGEST_ALGS)}")
        return cls(
            name=name,
            status=status,
            family=text(doc["family"], "family"),
            model_version=version,
            target_path=text(doc["target_path"], "target_path"),
            sealed_sha256=doc["sealed_sha256"],
            plaintext_digest=doc["plaintext_digest"],
            digest_alg=doc["digest_alg"],
            installed_at=text(doc["installed_at"], "installed_at"),
        )


class Slot:
    """The files of one slot directory."""

    def __init__(self, state_dir: Path, name: str) -> None:
        if name not in SLOT_NAMES:
            raise ValueError(f"no slot {name!r}: slots are {', '.join(SLOT_NAMES)}")
        self.name = name
        self.dir = Path(state_dir) / SLOTS_DIR / name
        self.model_path = self.dir / MODEL_FILE
        self.key_path = self.dir / KEY_FILE
        self.info_path = self.dir / SLOT_FILE

    def read_info(self, now: dt.datetime) -> tuple[SlotInfo, Quarantine | None]:
        """The slot's info; a corrupt slot.json is quarantined and the slot reads ``bad``."""
        try:
            return SlotInfo.from_json(self.name, read_json(self.info_path, SLOT_FILE)), None
        except FileNotFoundError:
            return SlotInfo(self.name), None
        except StateFormatError as exc:
            report = quarantine(self.info_path, str(exc), now)
            return SlotInfo(self.name, "bad"), report
        except OSError as exc:
            raise StateError(f"cannot read {self.info_path}: {exc}") from exc

    def write_info(self, info: SlotInfo) -> None:
        if info.name != self.name:
            raise ValueError(f"slot {info.name} info written to slot {self.name}")
        ensure_dir(self.dir)
        try:
            write_json(self.info_path, info.to_json())
        except OSError as exc:
            raise StateError(f"cannot write {self.info_path}: {exc}") from exc
        log.info("%s is now %s", info.describe(), info.status)


# -- contents: what install writes and what a restart loads ------------------------------


def _check_header(
    header: SealedModelHeader, info: SlotInfo, hardware_class: str, what: str
) -> None:
    problems = []
    if header.family != info.family:
        problems.append(f"family {header.family!r} is not {info.family!r}")
    if header.version != info.model_version:
        problems.append(f"version {header.version} is not {info.model_version}")
    if header.digest_alg != info.digest_alg:
        problems.append(f"digest algorithm {header.digest_alg} is not {info.digest_alg}")
    if header.plaintext_digest.hex() != info.plaintext_digest:
        problems.append("its plaintext digest is not the one the release names")
    if problems:
        raise SlotContentError(f"{what} of {info.describe()}: " + "; ".join(problems))
    if hardware_class not in header.hardware:
        raise WrongHardwareError(
            f"{info.describe()} is for hardware {', '.join(header.hardware)}, "
            f"not for this device's {hardware_class!r}"
        )


def check_sealed_file(
    path: Path, info: SlotInfo, content_key: ContentKey, hardware_class: str, max_bytes: int
) -> None:
    """Cheap checks before anything is written: size, header (unauthenticated), key commitment.

    The header is not authenticated yet; it is compared with the release so an
    obviously wrong input is refused before a slot is touched. The key
    commitment (HMAC of the key over the header's nonce prefix) proves the
    content key belongs to this file without decrypting it.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise SlotContentError(f"{path} is {size} bytes, more than max_model_bytes {max_bytes}")
    with path.open("rb") as handle:
        header = inspect_sealed_model(handle)
    _check_header(header, info, hardware_class, "the downloaded model")
    if not hmac.compare_digest(
        key_commitment(content_key, header.nonce_prefix), header.key_commitment
    ):
        raise SlotContentError("the content key does not belong to the downloaded model")


def copy_model(src: Path, slot: Slot, expected_sha256: str, max_bytes: int) -> None:
    """Copy the sealed model into the slot atomically, checking its SHA-256 as it goes."""
    ensure_dir(slot.dir)
    digest = hashlib.sha256()
    copied = 0
    with src.open("rb") as source, atomic_writer(slot.model_path, mode=0o600) as out:
        while chunk := source.read(_COPY_CHUNK):
            copied += len(chunk)
            if copied > max_bytes:
                raise SlotContentError(f"{src} is larger than max_model_bytes {max_bytes}")
            digest.update(chunk)
            out.write(chunk)
        if not hmac.compare_digest(digest.hexdigest(), expected_sha256):
            raise SlotContentError(
                f"{src} does not match the SHA-256 its release names (changed since download)"
            )


@dataclass(frozen=True)
class FileIdentity:
    """Which file (device, inode) and which version of it (size, mtime): survives a rename.

    A rename keeps the inode and the mtime; a write changes the mtime (or the
    size). So a file in the agent's own state directory whose identity is the
    one recorded when its hash was verified holds those verified bytes, without
    reading them again. It is a cheap consistency check, not a defence against
    someone who can write the state directory (the mtime has the file system's
    clock granularity and can be reset): that is the AEAD's job at every load.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = path.stat()
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def move_model(src: Path, slot: Slot, expected_sha256: str, max_bytes: int) -> bool:
    """Move (rename) the sealed model into the slot; copy it if ``src`` is on another file system.

    The file's data is fsynced before the rename and both directories after
    it, so a power cut leaves the model either still in ``src`` or complete in
    the slot. Returns True if renamed (the slot file is then ``src``'s inode,
    see :class:`FileIdentity`), False if it had to be copied (and hashed on the
    way, like :func:`copy_model`). Idempotent: a crash after the rename leaves
    the slot ``bad`` (mark-bad came first) and the next attempt fetches and
    moves the file again.
    """
    ensure_dir(slot.dir)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
        os.fsync(fd)  # cheap when the download already synced it; the slot relies on it
    finally:
        os.close(fd)
    try:
        src.replace(slot.model_path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_model(src, slot, expected_sha256, max_bytes)
        src.unlink(missing_ok=True)
        return False
    _fsync_dir(slot.dir)
    _fsync_dir(src.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_key(
    slot: Slot, content_key: ContentKey, backend: KeyBackend, approved: SignedPCRPolicy
) -> None:
    """Re-seal the content key under the device's signed PCR policy into key.sealed.

    Bound to the policy *authority* (TPM2_PolicyAuthorize), not to literal PCR
    values, so an approved OS update (a newly signed policy) keeps it usable.
    """
    blob = backend.seal(content_key.secret_bytes(), authority=approved.authority)
    ensure_dir(slot.dir)
    atomic_write(slot.key_path, blob, mode=0o600)


def sha256_file(path: Path, max_bytes: int) -> str:
    digest = hashlib.sha256()
    read = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK):
            read += len(chunk)
            if read > max_bytes:
                raise SlotContentError(f"{path} is larger than max_model_bytes {max_bytes}")
            digest.update(chunk)
    return digest.hexdigest()


def unseal_key(slot: Slot, backend: KeyBackend, approved: SignedPCRPolicy) -> ContentKey:
    """The content key from key.sealed, unsealed by the TPM under ``approved``."""
    with slot.key_path.open("rb") as handle:
        blob = handle.read(MAX_KEY_BLOB_BYTES + 1)
    if len(blob) > MAX_KEY_BLOB_BYTES:
        raise SlotContentError(f"{slot.key_path} is larger than any sealed key")
    return ContentKey(backend.unseal(blob, approved=approved))


def verify_written(
    slot: Slot,
    info: SlotInfo,
    *,
    backend: KeyBackend,
    approved: SignedPCRPolicy,
    hardware_class: str,
    max_bytes: int,
    verified: FileIdentity | None = None,
) -> None:
    """Check what was written: model bytes, key unseals and commits to the model's header.

    The model's SHA-256 is read back and compared with the release, unless
    ``verified`` is given and the slot's file still has that identity: then
    it is the very file (renamed, never rewritten) whose hash the caller
    verified against the same release just before (the updater: TUF's
    ``verify_length_and_hashes`` on the downloaded file), and re-hashing it
    would re-read the page cache, not the disk, proving nothing more. Either
    way every load authenticates every chunk (AEAD) and the plaintext digest,
    so a model that rots afterwards is still never used.
    """
    renamed = verified is not None and FileIdentity.of(slot.model_path) == verified
    if not renamed and sha256_file(slot.model_path, max_bytes) != info.sealed_sha256:
        raise SlotContentError(f"{slot.model_path} does not read back as written")
    key = unseal_key(slot, backend, approved)
    with slot.model_path.open("rb") as handle:
        header = inspect_sealed_model(handle)
    _check_header(header, info, hardware_class, "the written model")
    if not hmac.compare_digest(key_commitment(key, header.nonce_prefix), header.key_commitment):
        raise SlotContentError(f"{slot.key_path} does not unseal to this model's content key")


def open_slot(
    slot: Slot,
    info: SlotInfo,
    *,
    backend: KeyBackend,
    approved: SignedPCRPolicy,
    hardware_class: str,
    max_bytes: int,
) -> bytes:
    """Unseal the key, authenticate and decrypt the model in memory, check it is this slot's.

    This is the path every load takes (trial and restart alike). The
    plaintext is returned as bytes and never written anywhere.
    """
    if info.status not in ("written", "good"):
        raise SlotContentError(f"{info.describe()} holds no usable model")
    size = slot.model_path.stat().st_size
    if size > max_bytes:
        raise SlotContentError(f"{slot.model_path} is larger than max_model_bytes {max_bytes}")
    key = unseal_key(slot, backend, approved)
    with slot.model_path.open("rb") as handle:
        opened = open_sealed_model(handle, content_key=key)
    _check_header(opened.header, info, hardware_class, "the model")
    return opened.plaintext
