"""A worker process a test reads acknowledgements from, then kills with a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def worker_process(
    *module_and_args: str, watchdog_seconds: float = 60, stdin: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m module args...` run from the project's root with stdout and stderr piped
    (and stdin, when told); killed by a watchdog after `watchdog_seconds` (a test never hangs
    on it) and, if still alive, on leaving; its pipes closed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *module_and_args],
        cwd=ROOT,
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(watchdog_seconds, proc.kill)
    watchdog.start()
    try:
        yield proc
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL, then reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
