"""Shared fixtures.

Tests that need a real component (swtpm, mosquitto, socat, a TFLite runtime)
ask for it through ``require_*``: on a developer machine a missing component
skips the test with a reason; with ``CI`` set it fails the test, so CI can
never pass by silently skipping the hardware, broker or serial tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeseal.hardware.swtpm import SwtpmProcess

os.environ.setdefault("TSS2_LOG", "all+none")


def _missing(what: str, how: str) -> None:
    message = f"{what} is not available ({how})"
    if os.environ.get("CI"):
        pytest.fail(f"CI requires it: {message}", pytrace=False)
    pytest.skip(message)


def require_executable(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(name, f"apt-get install {package}")
        raise AssertionError("unreachable")
    return path


def require_module(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        _missing(f"Python module {module}", f"pip install {package}")


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
