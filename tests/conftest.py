"""Shared fixtures.

Tests that need a real component (swtpm, mosquitto, socat, a TFLite runtime)
ask for it through ``require_*``: on a developer machine a missing component
skips the test with a reason; with ``CI`` set it fails the test, so CI can
never pass by silently skipping the hardware, broker or serial tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from components import require_executable, require_module
from edgeseal.hardware.swtpm import SwtpmProcess

os.environ.setdefault("TSS2_LOG", "all+none")

# In CI, fuzz with a fixed seed and no per-example deadline: a run must not fail on
# a slow machine or on an example only this run happened to draw (locally, hypothesis
# keeps exploring; add what it finds as an explicit regression test).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[SwtpmProcess]:
    """A fresh swtpm on a free loopback port, stopped after the test."""
    require_executable("swtpm", "swtpm")
    require_module("tpm2_pytss", "tpm2-pytss")
    proc = SwtpmProcess(tmp_path / "swtpm")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def swtpm_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project-local swtpm CA for every emulated device of the session."""
    require_executable("swtpm", "swtpm")
    require_executable("swtpm_setup", "swtpm-tools")
    require_module("tpm2_pytss", "tpm2-pytss")
    from edgeseal.hardware.localca import ensure_local_ca

    return ensure_local_ca(tmp_path_factory.mktemp("swtpm-ca")).ca_dir


@pytest.fixture(scope="session", autouse=True)
def no_leaked_swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if a test leaves a swtpm running in its temp dirs (and stop it)."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    leaked = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"swtpm") and base.encode() in b" ".join(cmdline):
            leaked.append(int(proc.name))
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
    assert not leaked, f"tests left swtpm processes running: {leaked}"
