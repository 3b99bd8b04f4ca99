"""Real components the tests need, and what happens when one is missing.

On a developer machine a missing component skips the test with a reason; with
``CI`` set it fails the test, so CI can never pass by silently skipping the
hardware, broker or serial tests. (A module of its own, not ``conftest``: test
folders have conftests of their own, and ``from components import`` would pick
whichever was imported first.)
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


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
