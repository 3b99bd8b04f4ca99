"""Crash injection for tests: ``fault_point(step)`` SIGKILLs the agent at a named step.

TEST HOOK. The install transaction (:mod:`edgeseal.device_agent.install`)
calls :func:`fault_point` at the start of each of its named steps
(``mark-bad``, ``write``, ``verify-written``, ``switch``, ``trial``,
``mark-good``, and its sub-steps ``mark-good.slot-good`` and
``mark-good.floor``). When the environment variable ``EDGESEAL_FAULT_AT``
equals the step's name, the process kills itself with SIGKILL: no ``finally``
block, no ``atexit`` handler and no buffered write runs, which is what a power
cut or the OOM killer does to the agent. The crash-injection tests set it in a
child process and check that the next start serves the old or the new good
model, never anything else (Mender crosses every update state with a kill).

It is inert unless the variable is set, and setting it on a production device
does nothing but crash the agent at that step. This is the one place library
code reads the environment, because a test must reach inside a running agent
without a code path the production agent could take by accident.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

#: The environment variable naming the step at which the agent SIGKILLs itself.
FAULT_ENV = "EDGESEAL_FAULT_AT"


def fault_point(step: str) -> None:
    """SIGKILL this process if ``EDGESEAL_FAULT_AT`` names ``step`` (a test hook)."""
    if os.environ.get(FAULT_ENV) != step:
        return
    log.critical("fault injection: SIGKILL at step %s (%s=%s)", step, FAULT_ENV, step)
    os.kill(os.getpid(), signal.SIGKILL)
