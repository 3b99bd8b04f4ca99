"""One exception root for what the device agent refuses."""

from __future__ import annotations

from edgeseal.sdk.errors import EdgesealError


class AgentError(EdgesealError):
    """Root of every error raised by :mod:`edgeseal.device_agent`."""


class WrongHardwareError(AgentError):
    """An authentic model that was built for another hardware class."""
