"""Map tpm2-pytss's TSS2_Exception onto the HardwareError hierarchy.

Every TPM call of the TPM backend runs inside :func:`tpm_call`, the same
template python-tuf's ``fetch()`` uses: whatever the TSS raises, the caller
sees a :class:`HardwareError` subclass carrying the response code ``rc`` and a
sentence a person can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

from tpm2_pytss import TSS2_Exception

from edgeseal.hardware.errors import (
    HardwareError,
    KeyNotFoundError,
    NVCounterError,
    PolicyCheckError,
    TPMCommandError,
    TPMUnavailableError,
)

log = logging.getLogger(__name__)

# TSS2_RC layers (TSS 2.0 Overview and Common Structures, 3.2): bits 16..23.
_LAYER_SHIFT = 16
_LAYER_TPM = 0
_LAYER_TCTI = 10
_LAYER_RESMGR = 11

# TPM_RC values with handle/parameter/session numbers stripped (Part 2, 6.6.3).
RC_ATTRIBUTES = 0x082
RC_VALUE = 0x084
RC_HANDLE = 0x08B
RC_AUTH_FAIL = 0x08E
RC_SIZE = 0x095
RC_SIGNATURE = 0x09B
RC_POLICY_FAIL = 0x09D
RC_INTEGRITY = 0x09F
RC_TICKET = 0x0A0
RC_BAD_AUTH = 0x0A2
RC_POLICY = 0x126
RC_PCR = 0x127
RC_PCR_CHANGED = 0x128
RC_NV_RANGE = 0x146
RC_NV_LOCKED = 0x148
RC_NV_AUTHORIZATION = 0x149
RC_NV_UNINITIALIZED = 0x14A
RC_NV_SPACE = 0x14B
RC_NV_DEFINED = 0x14C
RC_OBJECT_MEMORY = 0x902
RC_SESSION_MEMORY = 0x903
RC_LOCKOUT = 0x921
RC_RETRY = 0x922

# Codes that, during a policy session or the command it authorizes, mean the policy failed.
_POLICY_CODES = frozenset({RC_VALUE, RC_POLICY_FAIL, RC_SIGNATURE, RC_TICKET, RC_PCR_CHANGED})

_HINTS = {
    RC_OBJECT_MEMORY: "the TPM has no free object slot (transient objects leaked?)",
    RC_SESSION_MEMORY: "the TPM has no free session slot (sessions leaked?)",
    RC_LOCKOUT: "the TPM is in dictionary-attack lockout",
    RC_RETRY: "the TPM asked to retry the command",
    RC_AUTH_FAIL: "authorization failed",
    RC_BAD_AUTH: "authorization failed",
    RC_INTEGRITY: "integrity check failed (blob from another TPM, or SRK changed?)",
    RC_NV_SPACE: "no NV space left",
    RC_NV_DEFINED: "the NV index is already defined",
    RC_NV_UNINITIALIZED: "the NV index was never written",
}


class Context(Enum):
    """What a failing call was about; decides which error class a TPM code maps to."""

    GENERAL = "general"
    POLICY = "policy"  # a policy session or the object it authorizes
    KEY = "key"  # looking up a persistent key
    NV = "nv"  # NV counters and NV reads


def tpm_layer(rc: int) -> int:
    return (rc >> _LAYER_SHIFT) & 0xFF


def tpm_error_code(exc: TSS2_Exception) -> int:
    """The TPM error code without handle/parameter/session numbers (0 if not from the TPM)."""
    rc = int(exc.rc)
    if tpm_layer(rc) != _LAYER_TPM:
        return 0
    return int(exc.error)


def translate(exc: TSS2_Exception, operation: str, context: Context) -> HardwareError:
    """The HardwareError a TSS2_Exception during ``operation`` stands for."""
    rc = int(exc.rc)
    layer = tpm_layer(rc)
    detail = str(exc)
    if layer in (_LAYER_TCTI, _LAYER_RESMGR):
        return TPMUnavailableError(f"{operation}: the TPM cannot be reached ({detail})", rc=rc)
    code = tpm_error_code(exc)
    hint = _HINTS.get(code)
    message = f"{operation}: {hint} ({detail})" if hint else f"{operation}: {detail}"
    if context is Context.POLICY and code in _POLICY_CODES:
        return PolicyCheckError(f"{operation}: the TPM refused the policy ({detail})", rc=rc)
    if context is Context.KEY and code == RC_HANDLE:
        return KeyNotFoundError(f"{operation}: no such key in the TPM ({detail})", rc=rc)
    if context is Context.NV:
        if code == RC_HANDLE:
            return KeyNotFoundError(f"{operation}: no such NV index ({detail})", rc=rc)
        return NVCounterError(message, rc=rc)
    return TPMCommandError(message, rc=rc)


@contextmanager
def tpm_call(operation: str, context: Context = Context.GENERAL) -> Iterator[None]:
    """Run TPM calls; re-raise any TSS2_Exception as the matching HardwareError."""
    try:
        yield
    except TSS2_Exception as exc:
        error = translate(exc, operation, context)
        log.debug("%s failed with rc 0x%x: %s", operation, int(exc.rc), exc)
        raise error from exc
