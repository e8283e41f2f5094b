"""Child processes that a test interrupts with a real SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys


def ctrl_c_as_at_a_terminal() -> None:
    """For ``subprocess``'s ``preexec_fn``: SIGINT does what it does at a terminal.

    A shell script that runs a command in the background (or under ``nohup``)
    starts it with SIGINT ignored, children inherit that, and Python then
    installs no ``KeyboardInterrupt`` handler: a test's SIGINT would do
    nothing, and every Ctrl-C test would fail.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_python(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child interpreter that a SIGINT interrupts; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
