"""NV indices: monotonic counters (the version floor) and EK certificates.

Functions over an open ESAPI context; :class:`~edgeseal.hardware.tpm.TPMBackend`
exposes them through the KeyBackend interface.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_CAP, TPM2_PT_NV, TPMA_NV

from edgeseal.hardware import tpm_objects as obj
from edgeseal.hardware.errors import HardwareError, KeyNotFoundError, NVCounterError
from edgeseal.hardware.tpm_errors import Context, tpm_call

log = logging.getLogger(__name__)

_DEFAULT_NV_BUFFER = 512


@contextlib.contextmanager
def _nv_index(esapi: ESAPI, index: int, operation: str) -> Iterator[ESYS_TR]:
    """An ESYS_TR for an NV index, closed afterwards; every TSS error mapped (NV context)."""
    with tpm_call(f"{operation} NV index 0x{index:08x}", Context.NV):
        tr = esapi.tr_from_tpmpublic(index)
        try:
            yield tr
        finally:
            with contextlib.suppress(TSS2_Exception):
                esapi.tr_close(tr)


def counter_define(esapi: ESAPI, index: int) -> None:
    """Define an NV counter if it is not there (idempotent) and make sure it was written.

    The first increment of a counter sets it to the highest value any counter of
    this TPM ever held, plus one (Part 1, 37.7.5): it is done at once so that a
    redefined counter never reads below the floor it replaced.
    """
    try:
        with _nv_index(esapi, index, "inspect") as tr:
            public, _ = esapi.nv_read_public(tr)
    except KeyNotFoundError:
        public = None
    if public is None:
        with tpm_call(f"define NV counter 0x{index:08x}", Context.NV):
            tr = esapi.nv_define_space(None, obj.nv_counter_public(index), ESYS_TR.OWNER)
            esapi.tr_close(tr)
        log.info("defined NV counter 0x%08x", index)
    elif not obj.is_nv_counter(public):
        raise NVCounterError(f"NV index 0x{index:08x} exists and is not a counter")
    elif public.nvPublic.attributes & TPMA_NV.WRITTEN:
        return
    counter_increment(esapi, index)


def counter_increment(esapi: ESAPI, index: int) -> int:
    """Increment by one (TPM2_NV_Increment) and return the new value."""
    with _nv_index(esapi, index, "increment") as tr:
        esapi.nv_increment(tr)
    return counter_read(esapi, index)


def counter_read(esapi: ESAPI, index: int) -> int:
    with _nv_index(esapi, index, "read") as tr:
        data = esapi.nv_read(tr, 8, 0)
    return int.from_bytes(bytes(data), "big")


def _nv_buffer_max(esapi: ESAPI) -> int:
    with tpm_call("read the NV buffer size"):
        _, caps = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1)
    for prop in caps.data.tpmProperties:
        if prop.property == TPM2_PT_NV.BUFFER_MAX:
            return int(prop.value)
    return _DEFAULT_NV_BUFFER


def read_nv(esapi: ESAPI, index: int, chunk: int) -> bytes:
    """The whole data of an NV index, in chunks the TPM accepts (TPM2_NV_Read)."""
    with _nv_index(esapi, index, "read") as tr:
        public, _ = esapi.nv_read_public(tr)
        size = int(public.nvPublic.dataSize)
        attrs = public.nvPublic.attributes
        # EK certificate indices have an empty auth and AUTHREAD; OWNERREAD is the fallback.
        auth = tr if attrs & TPMA_NV.AUTHREAD else ESYS_TR.OWNER
        out = b""
        while len(out) < size:
            part = esapi.nv_read(tr, min(chunk, size - len(out)), len(out), auth)
            if not bytes(part):
                break
            out += bytes(part)
    return out


def read_ek_certificates(esapi: ESAPI) -> list[bytes]:
    """DER EK certificates from the standard NV indices; indices that are absent are skipped."""
    chunk = _nv_buffer_max(esapi)
    certs: list[bytes] = []
    for index, name in obj.EK_CERT_INDICES.items():
        try:
            data = read_nv(esapi, index, chunk)
        except KeyNotFoundError:
            continue
        except HardwareError as exc:
            log.warning("could not read the %s EK certificate: %s", name, exc.diagnostics())
            continue
        length = obj.der_length(data)
        if length == 0 or length > len(data):
            log.warning("NV index 0x%08x (%s EK) does not hold a DER certificate", index, name)
            continue
        certs.append(data[:length])
    return certs
