"""TPM-only behaviour: crash recovery, unreachable TPMs, error mapping, EK certificates."""

from __future__ import annotations

import pytest
from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_CAP, TPM2_HT, TPM2_SE

from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.errors import (
    HardwareError,
    KeyNotFoundError,
    NVCounterError,
    PolicyCheckError,
    TPMCommandError,
    TPMUnavailableError,
)
from edgeseal.hardware.swtpm import SwtpmProcess
from edgeseal.hardware.tpm import TPMBackend
from edgeseal.hardware.tpm_errors import Context, translate
from edgeseal.hardware.tpm_objects import srk_template

pytestmark = pytest.mark.swtpm


def _handles(backend: TPMBackend) -> list[int]:
    found: list[int] = []
    for kind in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION, TPM2_HT.SAVED_SESSION):
        _, data = backend.esapi.get_capability(TPM2_CAP.HANDLES, int(kind) << 24, 64)
        found.extend(int(h) for h in data.data.handles)
    return found


def test_flush_transients_after_a_crash(swtpm: SwtpmProcess) -> None:
    crashed = TPMBackend(swtpm.start())
    esapi = crashed.esapi
    # Fill swtpm's 3 object slots and leave sessions, as a process killed mid-command would.
    srk = crashed._srk()
    esapi.start_auth_session(srk, srk, TPM2_SE.HMAC, None, "sha256")
    esapi.start_auth_session(srk, srk, TPM2_SE.POLICY, None, "sha256")
    for _ in range(3):
        esapi.create_primary(None, srk_template())
    assert len(_handles(crashed)) == 5
    with pytest.raises(TPMCommandError, match="no free object slot"):
        crashed.seal(b"k")  # the loaded primaries starve the TPM ...
    esapi.close()  # ... and the process dies without flushing anything

    with TPMBackend(swtpm.start()) as reopened:
        assert _handles(reopened) == []
        assert reopened.unseal(reopened.seal(b"k")) == b"k"
        assert _handles(reopened) == [], "the backend flushes what it loads"


def test_unreachable_tpm_is_unavailable(swtpm: SwtpmProcess) -> None:
    tcti = swtpm.start()
    swtpm.stop()
    with pytest.raises(TPMUnavailableError, match="cannot connect") as err:
        open_backend(tcti)
    assert err.value.rc is not None
    assert "TPM response code" in err.value.diagnostics()


def test_unknown_spec_is_refused() -> None:
    with pytest.raises(HardwareError, match="unknown key backend"):
        open_backend("bogus:/dev/null")
    with pytest.raises(HardwareError, match="state directory"):
        open_backend("software:")


def test_ek_certificates_empty_without_swtpm_setup(swtpm: SwtpmProcess) -> None:
    with TPMBackend(swtpm.start()) as backend:
        assert backend.ek_certificates() == []


def test_persistent_handles_survive_and_are_reused(swtpm: SwtpmProcess) -> None:
    with TPMBackend(swtpm.start()) as backend:
        public = backend.create_device_key(None)
    swtpm.stop()
    with TPMBackend(swtpm.start()) as backend:
        assert backend.device_key_public() == public


@pytest.mark.parametrize(
    ("rc", "context", "expected", "text"),
    [
        (0x1C4, Context.POLICY, PolicyCheckError, "refused the policy"),
        (0x99D, Context.POLICY, PolicyCheckError, "refused the policy"),
        (0x1C4, Context.GENERAL, TPMCommandError, "value"),
        (0x18B, Context.KEY, KeyNotFoundError, "no such key"),
        (0x18B, Context.NV, KeyNotFoundError, "no such NV index"),
        (0x14B, Context.NV, NVCounterError, "no NV space"),
        (0x902, Context.GENERAL, TPMCommandError, "no free object slot"),
        (0xA000A, Context.POLICY, TPMUnavailableError, "cannot be reached"),
    ],
)
def test_tss2_errors_map_to_the_hardware_hierarchy(
    rc: int, context: Context, expected: type[HardwareError], text: str
) -> None:
    error = translate(TSS2_Exception(rc), "unseal", context)
    assert type(error) is expected
    assert error.rc == rc
    assert text in error.message
    assert error.message.startswith("unseal: ")
