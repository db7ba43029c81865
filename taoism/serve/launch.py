"""Run the server as a child process on a free loopback port (for tests, benchmarks, scripts)."""

from __future__ import annotations

import collections
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from taoism.errors import ServiceUnavailable


class ServerProcess:
    """``python -m taoism.serve ARGS --port 0``; :attr:`url` once it listens; SIGTERM on stop."""

    def __init__(
        self, args: Sequence[str], start_timeout_s: float = 180.0, *, prefix: Sequence[str] = ()
    ) -> None:
        # ``prefix``: another command line to start (e.g. ``taoism serve``); default the module
        prefix = tuple(prefix) or (sys.executable, "-m", "taoism.serve")
        cmd = [*prefix, "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self._err: collections.deque[str] = collections.deque(maxlen=200)  # drained, or it blocks
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.stop()
                    raise ServiceUnavailable(
                        f"the server did not start within {start_timeout_s:g} s "
                        f"(exit {err}): {self.stderr()[-2000:]}"
                    ) from None
                continue
            if "listening on" in line:
                self.url = line.split("listening on ", 1)[1].strip()
                return

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    def output(self, wait_s: float = 2.0) -> str:
        """What the server printed to stdout since it started listening."""
        out = []
        while True:
            try:
                out.append(self.lines.get(timeout=wait_s))
            except queue.Empty:
                return "".join(out)

    def stderr(self) -> str:
        """The last lines the server wrote to stderr."""
        return "".join(self._err)

    def enclave_pids(self) -> list[int]:
        """Process ids of the server's enclave children."""
        import psutil

        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for p in kids:
            try:
                if "taoism.enclave.server" in " ".join(p.cmdline()):
                    out.append(p.pid)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return out

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout_s``); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its parent counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_process(pid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL ``pid`` and wait until it is gone (the crash tests' enclave kill)."""
    import os

    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while not process_gone(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not die within {timeout_s:g} s of SIGKILL")
        time.sleep(0.01)
