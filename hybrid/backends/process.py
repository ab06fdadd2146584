"""A managed child server process: started, health-checked, restarted when it dies, stopped with the router.

The child runs in its own session (so the whole process group is signalled) and, on Linux, is told by the
kernel to exit if the router dies first (``PR_SET_PDEATHSIG``): no orphan GPU processes.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

log = logging.getLogger("hybrid.process")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class ManagedServer:
    def __init__(self, name: str, argv: Sequence[str], log_path: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        log.info("%s: starting %s", self.name, " ".join(self.argv))
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]

    async def stop(self, grace_s: float = 20.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        log.info("%s: stopping pid %d", self.name, proc.pid)
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), grace_s)
        except TimeoutError:
            log.warning("%s: pid %d ignored SIGTERM for %.0fs; killing", self.name, proc.pid, grace_s)
            self._signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
