"""Check a device's answer to a technician's attestation request, offline.

:func:`check_attestation` takes the ATTEST_RESPONSE the agent sent over the
serial console (docs/dev/attestation-contracts.md), the nonce the laptop sent
and a verified :class:`~edgeseal.sdk.trust_bundle.TrustBundle`, and runs every
check, in this order, collecting each result (keylime's ``Failure``, STYLE 8)
so the report says all that is wrong, not just the first thing:

``bundle``      the trust bundle has not expired;
``response``    the response is well-formed (exact keys, types, bounds);
``device``      the device is enrolled in the bundle and not revoked;
``signature``   the quote is signed by the AK enrolled for this device;
``nonce``       the quote's qualifying data is ``attest_binding(nonce, status)``:
                fresh (this nonce) and bound to the status the device reported;
``pcrs``        the quote covers exactly the reported SHA-256 PCRs and its digest
                matches their values;
``boot-state``  the reported PCR values equal the baseline recorded at enrollment,
                or the device's signed PCR policy (``pcr_policy``), signed by the
                policy authority enrolled for it, approves them (a boot state
                approved after enrollment, e.g. an approved OS update); otherwise it
                names every PCR that differs and why the policy did not count;
``model``       the served model is a published, not yanked release with the
                published plaintext digest; no model passes only when the agent
                reports no ``model_error`` (a device that has a model it cannot
                open, e.g. its TPM keeps the key locked on a changed boot chain,
                fails, saying why).

A check whose inputs are missing (an unknown device has no AK to verify with)
fails with ``not checked: <why>``. Nothing here raises on a malformed response:
it becomes a failed ``response`` check. The module is pure: the caller
supplies the time (``now``) and the nonce.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeseal.sdk.console_wire import (
    MAX_MODEL_ERROR_CHARS,
    NONCE_SIZE,
    attest_binding,
    decode_pcr_policy,
    is_model_error,
    parse_json_payload,
)
from edgeseal.sdk.errors import AttestationError, FormatError
from edgeseal.sdk.hazmat.format import DIGEST_SIZES, MAX_MODEL_VERSION, NAME_RULE, is_valid_name
from edgeseal.sdk.pcr_policy import PCRPolicyError, approved_state
from edgeseal.sdk.quote import pcr_digest, verify_quote
from edgeseal.sdk.releases import DEVICE_ID_RULE, is_valid_device_id
from edgeseal.sdk.tpm_wire import QuoteAttest, hash_alg_name, parse_attest
from edgeseal.sdk.trust_bundle import (
    PCR_BANK,
    BundleDevice,
    TrustBundle,
    format_time,
    parse_hex,
    parse_pcr_values,
)

__all__ = [
    "CHECK_NAMES",
    "AttestReport",
    "Check",
    "check_attestation",
    "check_attestation_payload",
]

CHECK_NAMES = (
    "bundle",
    "response",
    "device",
    "signature",
    "nonce",
    "pcrs",
    "boot-state",
    "model",
)
#: How many hex characters of a digest a report shows.
PREFIX_CHARS = 12
MAX_ATTEST_B64_CHARS = 2048
MAX_SIGNATURE_B64_CHARS = 256
MAX_TIME_CHARS = 40

_RESPONSE_KEYS = frozenset(
    {
        "device_id",
        "agent_version",
        "time",
        "model",
        "model_error",
        "floor",
        "pcr_bank",
        "pcrs",
        "pcr_policy",
        "quote",
    }
)
# An agent before model_error (or pcr_policy) sends none; it is then null (and not part of
# what was quoted).
_OPTIONAL_RESPONSE_KEYS = frozenset({"model_error", "pcr_policy"})
_MODEL_KEYS = frozenset({"family", "version", "digest_alg", "plaintext_digest", "slot"})
_QUOTE_KEYS = frozenset({"attest", "signature"})
_AGENT_VERSION_RE = re.compile(r"[0-9A-Za-z.+-]{1,32}", re.ASCII)
_SLOT_RE = re.compile(r"[A-Za-z0-9_-]{1,16}", re.ASCII)
# Which check a verify_quote refusal belongs to, by the field it names (anything else,
# including a malformed AK or quote, is a failed signature check).
_NONCE_FIELDS = frozenset({"extraData"})
_PCR_FIELDS = frozenset({"pcrSelect", "pcrDigest", "pcrs"})


@dataclass(frozen=True)
class Check:
    """One check of a report: its name, whether it passed, and what exactly was seen."""

    name: str
    passed: bool
    detail: str

    def render(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclass
class AttestReport:
    """Every check of one attestation, in order; ``passed`` only when all of them passed."""

    checks: list[Check] = field(default_factory=list)
    device_id: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def check(self, name: str) -> Check:
        """The check called ``name`` (KeyError when the report has none)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def verdict(self) -> str:
        who = f"device {self.device_id}" if self.device_id else "the device"
        if self.passed:
            return f"PASS: {who} is attested ({len(self.checks)} checks passed)"
        names = ", ".join(check.name for check in self.failed)
        count = f"{len(self.failed)} of {len(self.checks)} checks failed"
        return f"FAIL: {who} is NOT attested ({count}: {names})"

    def render(self) -> str:
        """One line per check (``PASS  name: detail`` / ``FAIL  ...``), then the verdict."""
        return "\n".join([*(check.render() for check in self.checks), self.verdict()])

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "PASS" if self.passed else "FAIL",
            "passed": self.passed,
            "device_id": self.device_id,
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
        }


@dataclass(frozen=True)
class _Response:
    device_id: str
    agent_version: str
    time: str
    model: Mapping[str, Any] | None
    model_error: str | None
    floor: int | None
    pcrs: Mapping[int, bytes]
    pcr_policy: bytes | None
    attest: bytes
    signature: bytes
    status: dict[str, Any]


# --- entry points ----------------------------------------------------------------------------


def check_attestation_payload(
    payload: bytes, nonce: bytes, bundle: TrustBundle, *, now: dt.datetime
) -> AttestReport:
    """:func:`check_attestation` of an ATTEST_RESPONSE frame's payload bytes (parsed strictly)."""
    try:
        response: object = parse_json_payload(payload, "response")
    except FormatError as exc:
        response = _Unparsable(exc.message)
    return check_attestation(response, nonce, bundle, now=now)


def check_attestation(
    response: object, nonce: bytes, bundle: TrustBundle, *, now: dt.datetime
) -> AttestReport:
    """Run every check on ``response`` (the parsed ATTEST_RESPONSE JSON object).

    ``nonce`` is the :data:`~edgeseal.sdk.console_wire.NONCE_SIZE` bytes the
    laptop sent; ``now`` (timezone-aware) judges the bundle's expiry.
    """
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise ValueError(f"the nonce is {NONCE_SIZE} bytes")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    report = AttestReport()
    add = report.checks.append
    add(_bundle_check(bundle, now))

    try:
        parsed: _Response | None = _parse_response(response)
    except AttestationError as exc:
        parsed = None
        add(Check("response", False, f"malformed response: {exc.message}"))
    if parsed is None:
        for name in CHECK_NAMES[2:]:
            add(Check(name, False, "not checked: the response is malformed"))
        return report
    report.device_id = parsed.device_id
    add(
        Check(
            "response",
            True,
            f"device {parsed.device_id}, agent {parsed.agent_version}, device time {parsed.time}",
        )
    )

    device = bundle.device(parsed.device_id)
    add(_device_check(parsed.device_id, device, bundle))
    if device is None:
        why = "not checked: the device is not in the trust bundle"
        for name in ("signature", "nonce", "pcrs", "boot-state"):
            add(Check(name, False, why))
        add(_model_check(parsed, bundle, bound=False))
        return report

    binding = attest_binding(nonce, parsed.status)
    signature, fresh, quoted = _quote_checks(parsed, device, binding, nonce)
    report.checks.extend((signature, fresh, quoted))
    add(_boot_state_check(parsed.pcrs, parsed.pcr_policy, device, proven=quoted.passed))
    add(_model_check(parsed, bundle, bound=signature.passed and fresh.passed))
    return report


# --- the checks ------------------------------------------------------------------------------


def _bundle_check(bundle: TrustBundle, now: dt.datetime) -> Check:
    issued = format_time(bundle.issued)
    expires = format_time(bundle.expires)
    if bundle.expired(now):
        return Check(
            "bundle",
            False,
            f"the trust bundle expired at {expires} (now {format_time(now)}): ask the fleet "
            "operator for a fresh one",
        )
    note = (
        " (issued in the future by this laptop's clock: check the clock)"
        if (now < bundle.issued)
        else ""
    )
    return Check("bundle", True, f"issued {issued} by {bundle.issuer}, valid until {expires}{note}")


def _device_check(device_id: str, device: BundleDevice | None, bundle: TrustBundle) -> Check:
    if device is None:
        return Check(
            "device",
            False,
            f"device {device_id} is not in the trust bundle ({len(bundle.devices)} devices): "
            "it was never enrolled, or the bundle predates its enrollment",
        )
    if device.revoked:
        return Check(
            "device",
            False,
            f"device {device_id} is revoked in the trust bundle: do not return it to service",
        )
    return Check(
        "device",
        True,
        f"{device_id} is enrolled (hardware class {device.hardware_class}, EK certificate "
        f"sha256 {_prefix(device.ek_certificate_sha256)})",
    )


def _quote_checks(
    response: _Response, device: BundleDevice, binding: bytes, nonce: bytes
) -> tuple[Check, Check, Check]:
    pcr_list = _indices(response.pcrs)
    try:
        quote = verify_quote(
            response.attest,
            response.signature,
            device.ak_public,
            qualifying_data=binding,
            pcrs=response.pcrs,
        )
    except AttestationError as exc:
        if exc.field in _NONCE_FIELDS:
            return (
                _signed(_parse_signed(response.attest), device),
                _nonce_failure(response, binding, nonce),
                _pcrs_of_stale_quote(response, device, pcr_list),
            )
        if exc.field in _PCR_FIELDS:
            signed = _parse_signed(response.attest)
            return (
                _signed(signed, device),
                _nonce_ok(nonce),
                Check("pcrs", False, exc.message + _digests(signed, response.pcrs)),
            )
        why = "not checked: the quote is not signed by the enrolled attestation key"
        return (
            Check("signature", False, f"{exc.message} (device {device.device_id})"),
            Check("nonce", False, why),
            Check("pcrs", False, why),
        )
    return (
        _signed(quote, device),
        _nonce_ok(nonce),
        Check(
            "pcrs",
            True,
            f"the quote covers {PCR_BANK} PCRs {pcr_list} and its digest "
            f"{_prefix(quote.pcr_digest.hex())} matches the reported values",
        ),
    )


def _signed(quote: QuoteAttest | None, device: BundleDevice) -> Check:
    clock = (
        f" (TPM resetCount {quote.reset_count}, restartCount {quote.restart_count})"
        if quote is not None
        else ""
    )
    return Check(
        "signature",
        True,
        f"signed by the attestation key enrolled for {device.device_id}{clock}",
    )


def _nonce_ok(nonce: bytes) -> Check:
    return Check(
        "nonce",
        True,
        f"the quote is bound to this request's nonce {_prefix(nonce.hex())} and to the "
        "reported status",
    )


def _nonce_failure(response: _Response, binding: bytes, nonce: bytes) -> Check:
    quote = _parse_signed(response.attest)
    quoted = quote.extra_data.hex() if quote is not None else "?"
    return Check(
        "nonce",
        False,
        f"the quote's qualifying data {_prefix(quoted)} is not the binding "
        f"{_prefix(binding.hex())} of this request's nonce {_prefix(nonce.hex())} and the "
        "reported status: a replayed answer, or the status was changed after it was quoted",
    )


def _pcrs_of_stale_quote(response: _Response, device: BundleDevice, pcr_list: str) -> Check:
    """The PCR part of a signed quote whose qualifying data is not ours, checked on its own."""
    quote = _parse_signed(response.attest)
    if quote is None or not 0 < len(quote.extra_data) <= 32:
        return Check("pcrs", False, "not checked: the quote's qualifying data is unusable")
    try:
        verify_quote(
            response.attest,
            response.signature,
            device.ak_public,
            qualifying_data=quote.extra_data,
            pcrs=response.pcrs,
        )
    except AttestationError as exc:
        return Check("pcrs", False, exc.message + _digests(quote, response.pcrs))
    return Check(
        "pcrs",
        True,
        f"the quote covers {PCR_BANK} PCRs {pcr_list} and its digest matches the reported "
        "values (but the quote is not fresh)",
    )


def _boot_state_check(
    reported: Mapping[int, bytes],
    pcr_policy: bytes | None,
    device: BundleDevice,
    *,
    proven: bool,
) -> Check:
    baseline = device.pcrs
    problems = []
    for index, expected in baseline.items():
        value = reported.get(index)
        if value is None:
            problems.append(f"PCR {index} not reported (baseline {_prefix(expected.hex())})")
        elif not hmac.compare_digest(value, expected):
            problems.append(
                f"PCR {index} baseline {_prefix(expected.hex())}, reported {_prefix(value.hex())}"
            )
    unproven = "" if proven else ", but the quote does not prove them"
    if problems:
        differing = [i for i in baseline if reported.get(i) != baseline[i]]
        head = (
            f"PCR {differing[0]} differs"
            if len(differing) == 1
            else f"PCRs {_indices(differing)} differ"
        )
        failure = (
            f"{head} from the enrollment baseline ({'; '.join(problems)}): the firmware, "
            "bootloader, kernel or boot configuration changed"
        )
        missing = [i for i in baseline if i not in reported]
        if missing:
            # A signed policy approves values; it cannot stand in for a PCR not reported.
            return Check(
                "boot-state",
                False,
                f"{failure}, and a signed PCR policy cannot approve a PCR that is not reported",
            )
        try:
            approved = approved_state(pcr_policy, device.pcr_policy_authority, reported)
        except PCRPolicyError as exc:
            return Check("boot-state", False, f"{failure}, {_policy_refusal(exc)}")
        changed = f"PCRs {_indices(differing)}"
        return Check(
            "boot-state",
            proven,
            f"{changed} changed since enrollment to a state approved by policy authority "
            f"{approved.fingerprint}{unproven}",
        )
    if not proven:
        return Check(
            "boot-state",
            False,
            f"the reported PCRs {_indices(baseline)} equal the baseline{unproven}",
        )
    extra = sorted(set(reported) - set(baseline))
    note = f" (PCRs {_indices(extra)} are reported too, not in the baseline)" if extra else ""
    return Check(
        "boot-state",
        True,
        f"PCRs {_indices(baseline)} equal the baseline recorded at enrollment{note}",
    )


def _policy_refusal(exc: PCRPolicyError) -> str:
    """Why the device's signed PCR policy did not make its boot state an approved one."""
    if exc.reason == "missing" and exc.field == "pcr_policy_authority":
        return (
            "and no signed PCR policy counts: the trust bundle names no PCR policy authority "
            "for this device"
        )
    if exc.reason == "missing":
        return "and the device sent no signed PCR policy approving the new state"
    what = {
        "malformed": "is malformed",
        "digest": "was tampered with",
        "signature": "has a bad signature",
        "authority": "is signed by another authority",
        "values": "does not approve these values",
    }[exc.reason]
    return f"and the device's signed PCR policy {what}: {exc.message}"


def _model_check(response: _Response, bundle: TrustBundle, *, bound: bool) -> Check:
    note = "" if bound else " (not bound by a valid quote)"
    model, error = response.model, response.model_error
    if model is None:
        if error is not None:  # it has a model it cannot serve: not a healthy device
            return Check("model", False, f"no model served: {error}{note}")
        return Check("model", True, f"no model installed{note}")
    if error is not None:  # this version's agent never sends both; shown, not judged
        note = f" (the agent also reports: {error}){note}"
    family, version = model["family"], model["version"]
    what = f"{family} version {version} (slot {model['slot']})"
    release = bundle.release(family, version)
    if release is None:
        return Check(
            "model",
            False,
            f"{what} is not a published release in the trust bundle{note}",
        )
    if release.yanked:
        return Check("model", False, f"{what} was yanked: update or roll back the device{note}")
    if model["digest_alg"] != release.digest_alg or not hmac.compare_digest(
        model["plaintext_digest"], release.plaintext_digest
    ):
        return Check(
            "model",
            False,
            f"{what} reports plaintext {model['digest_alg']} "
            f"{_prefix(model['plaintext_digest'].hex())}, the release published "
            f"{release.digest_alg} {_prefix(release.plaintext_digest.hex())}{note}",
        )
    if response.floor is not None and version < response.floor:
        return Check(
            "model",
            False,
            f"{what} is below the device's rollback floor {response.floor}{note}",
        )
    floor = f", rollback floor {response.floor}" if response.floor is not None else ""
    return Check(
        "model",
        True,
        f"{what} is a published release, plaintext {release.digest_alg} "
        f"{_prefix(release.plaintext_digest.hex())}{floor}{note}",
    )


# --- the response ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unparsable:
    """A response payload that is not even JSON (kept to report why)."""

    reason: str


def _parse_response(value: object) -> _Response:
    if isinstance(value, _Unparsable):
        raise AttestationError(value.reason)
    body = _object(value, _RESPONSE_KEYS, "response", optional=_OPTIONAL_RESPONSE_KEYS)
    device_id = body["device_id"]
    if not is_valid_device_id(device_id):
        raise AttestationError(f"device_id is not a valid device id ({DEVICE_ID_RULE})")
    agent_version = body["agent_version"]
    if not isinstance(agent_version, str) or _AGENT_VERSION_RE.fullmatch(agent_version) is None:
        raise AttestationError("agent_version must be 1-32 characters of A-Z, a-z, 0-9, . + -")
    when = body["time"]
    if not isinstance(when, str) or len(when) > MAX_TIME_CHARS or not _is_time(when):
        raise AttestationError("time must be an RFC 3339 time with a time zone")
    model_error = body.get("model_error")
    if model_error is not None and not is_model_error(model_error):
        raise AttestationError(
            f"model_error must be null or 1-{MAX_MODEL_ERROR_CHARS} printable characters"
        )
    floor = body["floor"]
    if floor is not None and (type(floor) is not int or not 0 <= floor <= MAX_MODEL_VERSION):
        raise AttestationError(f"floor must be null or an integer from 0 to {MAX_MODEL_VERSION}")
    if body["pcr_bank"] != PCR_BANK:
        raise AttestationError(f"pcr_bank must be {PCR_BANK!r}")
    pcrs = parse_pcr_values(body["pcrs"], "pcrs")
    if not pcrs:
        raise AttestationError("pcrs must not be empty")
    try:
        pcr_policy = decode_pcr_policy(body.get("pcr_policy"))
    except FormatError as exc:
        raise AttestationError(exc.message) from None
    quote = _object(body["quote"], _QUOTE_KEYS, "quote")
    attest = _b64(quote["attest"], "quote.attest", MAX_ATTEST_B64_CHARS)
    signature = _b64(quote["signature"], "quote.signature", MAX_SIGNATURE_B64_CHARS)
    status = {key: item for key, item in body.items() if key != "quote"}
    return _Response(
        device_id=device_id,
        agent_version=agent_version,
        time=when,
        model=None if body["model"] is None else _model(body["model"]),
        model_error=model_error,
        floor=floor,
        pcrs=pcrs,
        pcr_policy=pcr_policy,
        attest=attest,
        signature=signature,
        status=status,
    )


def _model(value: object) -> Mapping[str, Any]:
    body = _object(value, _MODEL_KEYS, "model")
    if not is_valid_name(body["family"]):
        raise AttestationError(f"model.family is invalid: use {NAME_RULE}")
    version = body["version"]
    if type(version) is not int or not 0 <= version <= MAX_MODEL_VERSION:
        raise AttestationError(f"model.version must be an integer from 0 to {MAX_MODEL_VERSION}")
    digest_alg = body["digest_alg"]
    if not isinstance(digest_alg, str) or digest_alg not in DIGEST_SIZES:
        raise AttestationError(f"model.digest_alg must be one of {', '.join(DIGEST_SIZES)}")
    digest = parse_hex(body["plaintext_digest"], DIGEST_SIZES[digest_alg], "model.plaintext_digest")
    slot = body["slot"]
    if not isinstance(slot, str) or _SLOT_RE.fullmatch(slot) is None:
        raise AttestationError("model.slot must be 1-16 characters of A-Z, a-z, 0-9, _ -")
    return {
        "family": body["family"],
        "version": version,
        "digest_alg": digest_alg,
        "plaintext_digest": digest,
        "slot": slot,
    }


def _object(
    value: object, keys: frozenset[str], where: str, *, optional: frozenset[str] = frozenset()
) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise AttestationError(f"the {where} must be a JSON object")
    missing = sorted(keys - optional - value.keys())
    unknown = sorted(str(k)[:40] for k in value.keys() - keys)
    if missing or unknown:
        maybe = f" (optional: {', '.join(sorted(optional))})" if optional else ""
        raise AttestationError(
            f"the {where} needs exactly the keys {', '.join(sorted(keys - optional))}{maybe} "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})"
        )
    return value


def _b64(value: object, where: str, max_chars: int) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise AttestationError(f"{where} must be base64 of at most {max_chars} characters")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AttestationError(f"{where} is not valid base64") from None


def _is_time(text: str) -> bool:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return parsed.tzinfo is not None and text[:4].isdigit() and "T" in text


def _digests(quote: QuoteAttest | None, reported: Mapping[int, bytes]) -> str:
    if quote is None:
        return ""
    quoted = ", ".join(f"{hash_alg_name(alg)} {_indices(sel)}" for alg, sel in quote.pcr_selection)
    return (
        f" (quoted: PCRs {quoted or 'none'}, digest {_prefix(quote.pcr_digest.hex())}; "
        f"reported: {PCR_BANK} PCRs {_indices(reported)}, digest "
        f"{_prefix(pcr_digest(reported).hex())})"
    )


def _parse_signed(attest: bytes) -> QuoteAttest | None:
    try:
        return parse_attest(attest)
    except FormatError:
        return None


def _indices(indices: Iterable[int]) -> str:
    items = sorted(indices)
    return ", ".join(str(i) for i in items) if items else "none"


def _prefix(hex_text: str) -> str:
    return hex_text[:PREFIX_CHARS] + "..." if len(hex_text) > PREFIX_CHARS else hex_text
