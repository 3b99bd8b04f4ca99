"""Enrollment: prove to the OTA server that this device's attestation key lives in its TPM.

DESIGN.md flow 1, the device's side of the handshake in
docs/dev/attestation-contracts.md:

1. create (or reuse) the attestation key (AK, a restricted ECC P-256 signing
   key in the endorsement hierarchy) and read the TPM's RSA 2048 EK
   certificate (TCG EK Credential Profile, NV index 0x01C00002);
2. ``POST /v1/enroll/start`` with the device id, the EK certificate and the
   AK public area; the server checks the EK chain and answers a credential
   (TPM2_MakeCredential to the EK, bound to the AK's name), a nonce and the
   PCRs to quote;
3. TPM2_ActivateCredential (TPM 2.0 Part 1 §24) recovers the secret only if
   AK and EK are in this TPM; quote the PCRs with the AK over the nonce;
4. ``POST /v1/enroll/finish`` with the secret, the PCR values, the quote and
   the *policy authority* of the device's signed PCR policy (the embedded
   team's key, DER SubjectPublicKeyInfo; null when the device has no policy);
   the server records the AK and the PCRs as the device's baseline, and the
   authority, so that boot states it approves later (an OS update) pass
   attestation and attested key release too; when it runs an MQTT broker, it
   answers the device's broker login (:class:`MQTTCredentials`: URL, user
   name = device id, password).

:func:`install_mqtt_credentials` puts that login where ``edgeseal-agent run``
looks: the password in the configuration's ``mqtt_password_file`` (0600,
atomically; given to the state directory's owner - the agent's user - when
enroll runs as root), and a drop-in ``FILE.d/50-mqtt.toml`` naming
``mqtt_url`` and ``mqtt_password_file``, rewritten at every enrollment (a
drop-in sorting after it, or the environment, still overrides it). The
password goes nowhere else: not to ``enrollment.json``, stdout or a log.

:func:`enroll` runs it against a :class:`~edgeseal.hardware.backend.KeyBackend`
and an :class:`EnrollmentClient`; :func:`select_ek_certificate` and
:meth:`EnrollChallenge.from_json` are pure. Every server answer is bounded and
checked before it reaches the TPM. The operator token is the client's and is
never logged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.state import ensure_dir, timestamp, utc_now, write_json
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import KeyNotFoundError
from edgeseal.hardware.policy import SignedPCRPolicy, authority_fingerprint
from edgeseal.sdk.client import ManagementClient
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.files import atomic_write, atomic_writer
from edgeseal.sdk.mqtt_messages import parse_mqtt_url

log = logging.getLogger(__name__)

ENROLLMENT_FILE = "enrollment.json"
ENROLLMENT_VERSION = 1
START_PATH = "/v1/enroll/start"
FINISH_PATH = "/v1/enroll/finish"
EK_RSA_BITS = 2048
#: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET for an RSA 2048 EK are 70 and 258 bytes.
MAX_CREDENTIAL_BYTES = 4096
#: TPM2B_DATA qualifying data of a quote (Part 2, TPMS_ATTEST.extraData): at most 32 bytes.
MAX_NONCE_BYTES = 32
SECRET_BYTES = 32
PCR_COUNT = 24
_CHALLENGE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: The drop-in enroll writes next to the configuration file (``FILE.d/``).
MQTT_DROP_IN = "50-mqtt.toml"
#: A broker password from the server: printable ASCII without spaces, bounded.
MAX_MQTT_PASSWORD = 256
_MQTT_PASSWORD = re.compile(rf"[\x21-\x7e]{{16,{MAX_MQTT_PASSWORD}}}")
_MQTT_KEYS = frozenset({"url", "username", "password"})


class EnrollmentError(AgentError):
    """Enrollment cannot proceed: no usable EK certificate, a malformed server answer."""


def select_ek_certificate(certificates: Sequence[bytes]) -> bytes:
    """The first DER certificate whose key is RSA 2048 (the EK the contract uses)."""
    seen: list[str] = []
    for der in certificates:
        try:
            key = x509.load_der_x509_certificate(der).public_key()
        except ValueError:
            seen.append("an unparsable certificate")
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size == EK_RSA_BITS:
            return der
        if isinstance(key, rsa.RSAPublicKey):
            seen.append(f"RSA {key.key_size}")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            seen.append(f"ECC {key.curve.name}")
        else:
            seen.append(type(key).__name__)
    if not seen:
        raise EnrollmentError(
            "the TPM holds no EK certificate (NV index 0x01C00002): enrollment needs the "
            "TPM vendor's RSA 2048 EK certificate"
        )
    raise EnrollmentError(
        f"no RSA 2048 EK certificate in the TPM (found: {', '.join(seen)}); "
        "ECC EKs are not supported yet"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(doc: Mapping[str, Any], key: str, limit: int) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) > 2 * limit:
        raise EnrollmentError(f"the server's challenge has no valid {key}", field=key)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnrollmentError(f"the server's {key} is not base64", field=key) from None
    if not 1 <= len(data) <= limit:
        raise EnrollmentError(f"the server's {key} is {len(data)} bytes", field=key)
    return data


@dataclass(frozen=True)
class EnrollChallenge:
    """The server's answer to ``start``, checked."""

    challenge_id: str
    credential_blob: bytes
    encrypted_secret: bytes
    nonce: bytes
    pcrs: tuple[int, ...]

    @classmethod
    def from_json(cls, doc: Any) -> EnrollChallenge:
        if not isinstance(doc, dict):
            raise EnrollmentError("the server's challenge is not a JSON object")
        challenge_id = doc.get("challenge_id")
        if not isinstance(challenge_id, str) or not _CHALLENGE_ID.match(challenge_id):
            raise EnrollmentError("the server's challenge id is malformed", field="challenge_id")
        nonce = doc.get("nonce")
        if not isinstance(nonce, str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2}){1,32}", nonce):
            raise EnrollmentError(
                f"the server's nonce must be 1..{MAX_NONCE_BYTES} bytes of hex", field="nonce"
            )
        pcrs = doc.get("pcrs")
        if (
            not isinstance(pcrs, list)
            or not 1 <= len(pcrs) <= PCR_COUNT
            or not all(type(i) is int and 0 <= i < PCR_COUNT for i in pcrs)
            or len(set(pcrs)) != len(pcrs)
        ):
            raise EnrollmentError(
                "the server's PCR selection must be distinct indices in 0..23", field="pcrs"
            )
        return cls(
            challenge_id=challenge_id,
            credential_blob=_unb64(doc, "credential_blob", MAX_CREDENTIAL_BYTES),
            encrypted_secret=_unb64(doc, "encrypted_secret", MAX_CREDENTIAL_BYTES),
            nonce=bytes.fromhex(nonce),
            pcrs=tuple(sorted(pcrs)),
        )


@dataclass(frozen=True)
class MQTTCredentials:
    """The broker login the server answers at ``finish`` (when it runs a broker), checked."""

    url: str
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_json(cls, doc: Any, device_id: str) -> MQTTCredentials:
        """``{"url", "username", "password"}``; errors never quote the password."""
        if not isinstance(doc, dict) or set(doc) != _MQTT_KEYS:
            raise EnrollmentError(
                "the server's mqtt answer must be an object of url, username, password",
                field="mqtt",
            )
        url = doc["url"]
        try:
            parse_mqtt_url(url)
        except FormatError as exc:
            raise EnrollmentError(
                f"the server's MQTT URL: {exc.message}", field="mqtt.url"
            ) from None
        if doc["username"] != device_id:
            raise EnrollmentError(
                "the server's MQTT user name is not this device's id", field="mqtt.username"
            )
        password = doc["password"]
        if not isinstance(password, str) or not _MQTT_PASSWORD.fullmatch(password):
            raise EnrollmentError(
                f"the server's MQTT password must be 16..{MAX_MQTT_PASSWORD} printable ASCII "
                "characters without spaces",
                field="mqtt.password",
            )
        return cls(url=url, username=device_id, password=password)


class EnrollmentClient(ManagementClient):
    """The OTA server's enrollment routes (operator token), on the sdk's management client:
    same bounds, no redirects, plain HTTP only to loopback, the token never logged."""

    def enroll_start(
        self, device_id: str, ek_certificate: bytes, ak_public: bytes
    ) -> EnrollChallenge:
        body = {
            "device_id": device_id,
            "ek_certificate": _b64(ek_certificate),
            "ak_public": _b64(ak_public),
        }
        return EnrollChallenge.from_json(self._json("POST", START_PATH, body))

    def enroll_finish(
        self,
        challenge_id: str,
        secret: bytes,
        pcrs: Mapping[int, bytes],
        attest: bytes,
        signature: bytes,
        *,
        pcr_policy_authority: ec.EllipticCurvePublicKey | None,
    ) -> dict[str, Any]:
        authority = None
        if pcr_policy_authority is not None:
            authority = _b64(
                pcr_policy_authority.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        body = {
            "challenge_id": challenge_id,
            "secret": _b64(secret),
            "pcrs": {str(i): value.hex() for i, value in sorted(pcrs.items())},
            "quote": {"attest": _b64(attest), "signature": _b64(signature)},
            "pcr_policy_authority": authority,
        }
        answer = self._json("POST", FINISH_PATH, body)
        if not isinstance(answer, dict):
            raise EnrollmentError("the server's answer to finish is not a JSON object")
        return answer


@dataclass(frozen=True)
class EnrollmentRecord:
    """What ``STATE/enrollment.json`` holds (no secret: the AK's public identity only)."""

    device_id: str
    server: str
    ak_name: str
    ak_fingerprint: str
    ek_certificate_sha256: str
    pcrs: dict[str, str]
    enrolled_at: str
    ak_created: bool
    #: ``authority_fingerprint`` of the policy authority sent (None: the device had no
    #: signed PCR policy, so only the baseline counts for attestation).
    pcr_policy_authority_fingerprint: str | None = None
    #: The broker login the server issued (not persisted here: see install_mqtt_credentials).
    mqtt: MQTTCredentials | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": ENROLLMENT_VERSION,
            "enrolled": True,
            "device_id": self.device_id,
            "server": self.server,
            "ak_name": self.ak_name,
            "ak_fingerprint": self.ak_fingerprint,
            "ek_certificate_sha256": self.ek_certificate_sha256,
            "pcr_bank": "sha256",
            "pcrs": self.pcrs,
            "pcr_policy_authority_fingerprint": self.pcr_policy_authority_fingerprint,
            "enrolled_at": self.enrolled_at,
        }


def ak_name(ak_public: bytes) -> bytes:
    """The AK's TPM name: ``u16(nameAlg) || H(TPMT_PUBLIC)`` (Part 1 §16)."""
    from edgeseal.sdk.tpm_wire import tpm_name

    return tpm_name(ak_public)


def enroll(
    backend: KeyBackend,
    client: EnrollmentClient,
    device_id: str,
    *,
    pcr_policy: SignedPCRPolicy | None,
    now: dt.datetime | None = None,
) -> EnrollmentRecord:
    """Run the handshake (module docstring). ``pcr_policy`` is the signed PCR policy the
    agent runs under (its authority goes to the server), or None when the device has
    none. Raises HardwareError (TPM), ClientError (the server refused or was
    unreachable) or EnrollmentError; records nothing."""
    try:
        ak_public = backend.attestation_key_public()
        created = False
        log.info("enroll: reusing the attestation key in the TPM")
    except KeyNotFoundError:
        ak_public = backend.create_attestation_key()
        created = True
        log.info("enroll: created the attestation key")
    ek_certificate = select_ek_certificate(backend.ek_certificates())
    challenge = client.enroll_start(device_id, ek_certificate, ak_public)
    log.info("enroll: challenge %s, quoting PCRs %s", challenge.challenge_id, challenge.pcrs)
    secret = backend.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    if len(secret) != SECRET_BYTES:
        raise EnrollmentError(f"the activated credential is {len(secret)} bytes, not 32")
    values = backend.pcr_read(challenge.pcrs)
    pcrs = {i: values.digests[i] for i in challenge.pcrs}
    attest, signature = backend.quote(challenge.nonce, challenge.pcrs)
    authority = None if pcr_policy is None else pcr_policy.authority
    answer = client.enroll_finish(
        challenge.challenge_id, secret, pcrs, attest, signature, pcr_policy_authority=authority
    )
    if answer.get("enrolled") is not True or answer.get("device_id") != device_id:
        raise EnrollmentError("the server did not confirm the enrollment of this device")
    mqtt = MQTTCredentials.from_json(answer["mqtt"], device_id) if "mqtt" in answer else None
    return EnrollmentRecord(
        device_id=device_id,
        server=client.base_url,
        ak_name=ak_name(ak_public).hex(),
        ak_fingerprint=hashlib.sha256(ak_public).hexdigest(),
        ek_certificate_sha256=hashlib.sha256(ek_certificate).hexdigest(),
        pcrs={str(i): value.hex() for i, value in pcrs.items()},
        enrolled_at=timestamp(now or utc_now()),
        ak_created=created,
        pcr_policy_authority_fingerprint=(
            None if authority is None else authority_fingerprint(authority)
        ),
        mqtt=mqtt,
    )


def write_enrollment(state_dir: Path, record: EnrollmentRecord) -> Path:
    """Record the enrollment atomically in ``STATE/enrollment.json``."""
    path = Path(state_dir) / ENROLLMENT_FILE
    ensure_dir(path.parent)
    write_json(path, record.to_json())
    return path


@dataclass(frozen=True)
class MQTTInstall:
    """Where :func:`install_mqtt_credentials` put the broker login."""

    url: str
    username: str
    password_file: Path
    drop_in: Path


def mqtt_drop_in_text(url: str, password_file: Path) -> str:
    """The TOML of ``FILE.d/50-mqtt.toml`` (JSON string escapes are valid TOML basic strings)."""
    text = (
        "# Written by `edgeseal-agent enroll`: the OTA server's MQTT broker (release hints,\n"
        "# telemetry). Rewritten at every enrollment; to override, use a drop-in that sorts\n"
        "# after this one (e.g. 90-local.toml) or EDGESEAL_AGENT_MQTT_URL.\n"
        "version = 1\n"
        f"mqtt_url = {json.dumps(url)}\n"
        f"mqtt_password_file = {json.dumps(str(password_file))}\n"
    )
    tomllib.loads(text)  # what we write must load
    return text


def install_mqtt_credentials(
    credentials: MQTTCredentials, *, config_file: Path, password_file: Path, state_dir: Path
) -> MQTTInstall:
    """Write the password to ``password_file`` and the drop-in next to ``config_file``.

    The password file is replaced atomically with mode 0600; when this runs as root
    and ``state_dir`` belongs to another user (the agent's, under systemd), that user
    gets the file, so the agent can read it. Raises OSError.
    """
    password_file = Path(password_file).absolute()
    password_file.parent.mkdir(parents=True, exist_ok=True)
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        try:
            st = Path(state_dir).stat()
        except OSError:
            st = None
        if st is not None and st.st_uid != 0:
            owner = (st.st_uid, st.st_gid)
    with atomic_writer(password_file, mode=0o600) as handle:
        if owner is not None:
            os.fchown(handle.fileno(), *owner)
        handle.write(credentials.password.encode("ascii") + b"\n")
    config_file = Path(config_file)
    drop_in = config_file.with_name(config_file.name + ".d") / MQTT_DROP_IN
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(drop_in, mqtt_drop_in_text(credentials.url, password_file).encode(), mode=0o644)
    log.info("enroll: MQTT login for %s installed (%s)", credentials.url, drop_in)
    return MQTTInstall(credentials.url, credentials.username, password_file, drop_in)


__all__ = [
    "ENROLLMENT_FILE",
    "MQTT_DROP_IN",
    "EnrollChallenge",
    "EnrollmentClient",
    "EnrollmentError",
    "EnrollmentRecord",
    "MQTTCredentials",
    "MQTTInstall",
    "enroll",
    "install_mqtt_credentials",
    "mqtt_drop_in_text",
    "select_ek_certificate",
    "write_enrollment",
]
