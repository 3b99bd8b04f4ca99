"""The fleet database: tokens, releases, devices, attestation, reports, audit (SQLAlchemy 2 ORM).

SQLite by default (``DIR/server.db``); the same models run on PostgreSQL.
Times are stored as ISO-8601 UTC text: the audit chain hashes them, so their
exact spelling must survive a round trip through any database.

Every transaction is ``BEGIN IMMEDIATE`` on SQLite: the server process and a
CLI command (``edgeseal-server device add``) may write at once, and the audit
chain needs "read the last entry, append the next" to be atomic across
processes. At fleet-database scale writes are rare; reads are cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Engine, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

#: Release states (docs/dev/ota-contracts.md).
AWAITING_UPLOAD = "awaiting-upload"
AWAITING_SIGNATURES = "awaiting-signatures"
PUBLISHED = "published"
YANK_AWAITING_SIGNATURES = "yank-awaiting-signatures"
YANKED = "yanked"
#: A published release whose new ``rollout_percent`` awaits its signatures (still published).
ROLLOUT_AWAITING_SIGNATURES = "rollout-awaiting-signatures"
PENDING_STATES = (AWAITING_SIGNATURES, YANK_AWAITING_SIGNATURES, ROLLOUT_AWAITING_SIGNATURES)
#: States of a release whose target is in the published TUF metadata (a pending yank
#: or rollout change leaves it published until it is signed).
LIVE_STATES = (PUBLISHED, YANK_AWAITING_SIGNATURES, ROLLOUT_AWAITING_SIGNATURES)
#: ``device_attestation.enrolled`` of a device revoked before it ever enrolled (no AK).
NOT_ENROLLED = ""


def isotime(when: datetime) -> str:
    """The one spelling of a time in the database: UTC, seconds, ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Base(DeclarativeBase):
    pass


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    family: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: SHA-256 (hex) of the token's secret part; the secret itself is never stored.
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[str] = mapped_column(String(32))


class ReleaseRow(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("family", "version"),)

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    family: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[list[str]] = mapped_column(JSON)
    #: The release custom metadata (the object under ``"edgeseal"``).
    custom: Mapped[dict[str, Any]] = mapped_column(JSON)
    target_path: Mapped[str] = mapped_column(String(256))
    #: The content key at rest: an HPKE envelope to the server's KEK, never the raw key.
    kek_envelope: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_size: Mapped[int] = mapped_column(Integer)
    sealed_sha256: Mapped[str] = mapped_column(String(64))
    #: The sealed model's authenticated header bytes, once uploaded and checked.
    header: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: Canonical JSON of the pending unsigned family metadata.
    proposal: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    proposal_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: keyid -> signature hex, for the pending proposal.
    signatures: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    threshold: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(128))
    published: Mapped[str | None] = mapped_column(String(32), nullable=True)


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    hardware_class: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    created: Mapped[str] = mapped_column(String(32))


class DeviceAttestationRow(Base):
    """A device's enrolled attestation key and its boot-state baseline (one per device).

    A table of its own rather than columns of ``devices``: there are no schema
    migrations, and ``create_all`` adds a new table to an existing database.
    It also holds the revocation of a device that never enrolled: ``revoked``
    true, no AK, ``enrolled`` = :data:`NOT_ENROLLED` (:mod:`edgeseal.ota_server.revocation`).
    """

    __tablename__ = "device_attestation"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    #: The AK's marshaled TPMT_PUBLIC (docs/dev/attestation-contracts.md).
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_certificate_sha256: Mapped[str] = mapped_column(String(64))
    pcr_bank: Mapped[str] = mapped_column(String(16))
    #: PCR index (decimal string) -> value (hex), as quoted at enrollment.
    pcrs: Mapped[dict[str, str]] = mapped_column(JSON)
    enrolled: Mapped[str] = mapped_column(String(32))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The DER SubjectPublicKeyInfo of the device's PCR policy authority (the key whose
    #: signed PCR policies approve boot states other than the baseline), as sent at its
    #: last enrollment; None when it has none.
    pcr_policy_authority: Mapped[bytes | None] = mapped_column(
        LargeBinary, nullable=True, default=None
    )


class EnrollmentChallengeRow(Base):
    """An open enrollment handshake: what ``finish`` must prove (single use, short-lived)."""

    __tablename__ = "enrollment_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_certificate_sha256: Mapped[str] = mapped_column(String(64))
    #: SHA-256 (hex) of the credential secret; the secret itself is never stored.
    secret_sha256: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    pcrs: Mapped[list[int]] = mapped_column(JSON)
    created: Mapped[str] = mapped_column(String(32))
    expires: Mapped[str] = mapped_column(String(32))


class KeyReleaseChallengeRow(Base):
    """An open attested key release (:mod:`edgeseal.ota_server.key_release`): single use,
    two minutes, at most one per device. Only what the release step checks is kept:
    which device asked for which release, the nonce its quote must be bound to, the
    PCRs it must quote, and when the challenge expires."""

    __tablename__ = "key_release_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), unique=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id"))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    pcrs: Mapped[list[int]] = mapped_column(JSON)
    expires: Mapped[str] = mapped_column(String(32))


class DeviceReportRow(Base):
    """The latest telemetry a device published (:mod:`edgeseal.ota_server.telemetry`).

    A table of its own (no column of ``devices`` changes; ``create_all`` adds it to an
    existing database), one row per device, overwritten by each report. What a device
    *says* about itself: shown to people, never used for a trust decision.
    """

    __tablename__ = "device_reports"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    family: Mapped[str] = mapped_column(String(64), index=True)
    #: The version the device serves after the cycle (None: none yet).
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempted_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(32))
    #: At most ``mqtt_messages.MAX_REASON_CHARS`` printable characters.
    reason: Mapped[str | None] = mapped_column(String(512), nullable=True)
    #: The device's own clock (the payload's ``at``).
    reported_at: Mapped[str] = mapped_column(String(32))
    #: The server's clock when the message arrived.
    received_at: Mapped[str] = mapped_column(String(32))


class AuditRow(Base):
    __tablename__ = "audit"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16))
    #: Canonical JSON text of the details object.
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Database:
    """An engine plus transactional sessions. ``Database.open(path)`` for SQLite files."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, path: Path) -> Database:
        engine = create_engine(
            f"sqlite:///{path}",
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        _immediate_transactions(engine)
        return cls(engine)

    def create_all(self) -> None:
        Base.metadata.create_all(self.engine)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed if the block completes, rolled back otherwise."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def _immediate_transactions(engine: Engine) -> None:
    # SQLAlchemy's documented recipe for pysqlite: take transaction control
    # from the driver, then open every transaction with BEGIN IMMEDIATE.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
