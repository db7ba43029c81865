"""An enclave that is a separate OS process, reached over the encrypted shared-memory channel.

The host starts the process, hands it a one-time launch token out of band (its stdin), and
opens the authenticated session over a private socket pair. The process dies with the host:
it exits when the socket closes, and the host kills it when the backend is closed, garbage
collected, or the interpreter exits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from taoism import errors as _errors
from taoism.backends.base import EnclaveBackend, RunReply
from taoism.boundary import Channel, ChannelConfig, open_host_channel
from taoism.config import EnclaveConfig
from taoism.errors import (
    BoundaryError,
    BoundaryTimeout,
    EnclaveCrashed,
    EnclaveError,
    EnclaveRemoteError,
    SessionFailed,
    TaoismError,
)
from taoism.protocol.kinds import Kind
from taoism.protocol.schema import ReplyMeta

# Plain ints: compared on every crossing (an enum's == and hash cost more).
_LOAD, _OK, _RESULT, _ERROR = int(Kind.LOAD), int(Kind.OK), int(Kind.RESULT), int(Kind.ERROR)
_REPLY_KIND = {int(Kind.RUN): _RESULT, int(Kind.RUN_PROFILE): _RESULT}  # else OK
_unpack_times = ReplyMeta.unpack_times


def _stop_process(proc: subprocess.Popen, sock: socket.socket, log: Any) -> None:
    """Finalizer: close the session socket and make sure the enclave process is gone."""
    try:
        sock.close()
    except OSError:
        pass
    if proc.poll() is None:
        try:
            proc.wait(timeout=2.0)  # it exits by itself once the socket closes
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
    try:
        log.close()
    except OSError:
        pass


def _usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ProcessBackend(EnclaveBackend):
    """Base for backends whose enclave runs as a child process speaking the taoism protocol."""

    name = "process"
    quote_kind = "sim"  # the platform quote source a package-mode enclave of this backend uses

    def command(self, sock_fd: int) -> list[str]:
        """The command line that starts the enclave server."""
        return [
            sys.executable,
            "-m",
            "taoism.enclave.server",
            "--sock-fd",
            str(sock_fd),
            "--threads",
            str(self.config.threads),
            "--spin-us",
            str(self.config.enclave_spin(torch.get_num_threads(), _usable_cpus())),
            "--max-frame-bytes",
            str(self.config.max_frame_bytes),
            "--retain-heap" if self.config.retain_heap else "--no-retain-heap",
            *self.launch_args,
        ]

    def package_mode(
        self, package: str, owner_public: str, platform_key: str | None = None
    ) -> None:
        """Before :meth:`start`: launch the enclave pinned to ``owner_public``, to run only ``package``."""
        if self._proc is not None:
            raise EnclaveError("package_mode() must be chosen before start()")
        args = [
            "--package",
            os.path.abspath(package),
            "--owner-public",
            os.path.abspath(owner_public),
            "--quote",
            self.quote_kind,
        ]
        if platform_key is not None:
            args += ["--platform-key", os.path.abspath(platform_key)]
        self.launch_args[:] = args

    def attest(self, nonce: bytes) -> bytes:
        """Package mode: relay the verifier's nonce; returns the enclave's attestation envelope."""
        return bytes(self._request(Kind.ATTEST, 0, (), bytes(nonce), what="attestation").blob)

    def provision(self, wrapped_key: bytes) -> dict[str, Any]:
        """Package mode: relay the wrapped model key; the enclave loads the signed program."""
        reply = self._request(Kind.PROVISION, 0, (), bytes(wrapped_key), what="provisioning")
        return json.loads(reply.blob or b"{}")

    @classmethod
    def check_platform(cls, config: EnclaveConfig) -> None:
        return None

    def __init__(self, config: EnclaveConfig) -> None:
        super().__init__(config)
        self._proc: subprocess.Popen | None = None
        self._chan: Channel | None = None
        self._log: Any = None
        self._finalizer: weakref.finalize | None = None
        self._dead_reason: str | None = None
        self.launch_args: list[str] = []  # extra enclave arguments (package mode)
        self._returns: dict[int, int] = {}  # per enclave segment: how many tensors it returns

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._proc is not None:
            raise EnclaveError("this enclave backend was already started; create a new one")
        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        token = secrets.token_bytes(32)
        self._log = tempfile.TemporaryFile(prefix="taoism-enclave-", suffix=".log")
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.config.threads)
        try:
            self._proc = subprocess.Popen(
                self.command(child_sock.fileno()),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                pass_fds=(child_sock.fileno(),),
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            host_sock.close()
            child_sock.close()
            raise EnclaveError(f"could not start the enclave process: {exc}") from exc
        finally:
            child_sock.close()
        self._finalizer = weakref.finalize(self, _stop_process, self._proc, host_sock, self._log)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(token)
            self._proc.stdin.close()
            self._chan = open_host_channel(
                host_sock,
                token,
                config=ChannelConfig(
                    spin_us=self.config.host_spin(_usable_cpus()),
                    timeout_s=self.config.timeout_s,
                    handshake_timeout_s=self.config.start_timeout_s,
                    max_frame_bytes=self.config.max_frame_bytes,
                ),
            )
        except (BoundaryError, OSError) as exc:
            self._fail(f"the enclave process did not complete the key exchange: {exc}")
            raise self._crash_error("start") from exc

    def close(self) -> None:
        if self._chan is not None and self.alive:
            try:
                self._chan.request(Kind.CLOSE, 0, timeout=5.0)
            except TaoismError:
                pass
        if self._chan is not None:
            try:
                self._chan.close()
            except TaoismError:
                pass
        if self._finalizer is not None:
            self._finalizer()
        self._chan = None
        self._dead_reason = self._dead_reason or "closed"

    def abort(self, reason: str) -> None:
        """Kill the enclave process now (no CLOSE request: the channel may be out of step)."""
        if self._dead_reason is None:
            self._fail(reason)
        self.close()

    @property
    def alive(self) -> bool:
        return (
            self._dead_reason is None
            and self._proc is not None
            and self._chan is not None
            and self._proc.poll() is None
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- requests ----------------------------------------------------------------------------
    def load(
        self, description: Mapping[str, Any], tensors: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        self._returns = {
            int(s["id"]): len(s.get("returns", ()))
            for s in description.get("segments", ())
            if isinstance(s, Mapping) and "id" in s
        }
        reply = self._request(Kind.LOAD, 0, tensors, json.dumps(description).encode(), what="load")
        return json.loads(reply.blob or b"{}")

    def run(
        self, segment: int, tensors: Sequence[torch.Tensor], *, profile: bool = False
    ) -> RunReply:
        kind = Kind.RUN_PROFILE if profile else Kind.RUN
        reply = self._request(kind, segment, tensors, b"")
        times = None if profile else _unpack_times(reply.blob)
        if times is not None:  # the per-crossing hot path
            return RunReply(reply.tensors, times[0], times[1])
        meta = ReplyMeta.decode(reply.blob)
        return RunReply(
            tensors=list(reply.tensors),
            enclave_compute_s=meta.compute_s,
            enclave_crypto_s=meta.crypto_s,
            node_times=meta.node_times,
            memory=dict(meta.memory) if meta.memory is not None else None,
        )

    def prepare(self) -> None:
        chan = self._chan
        if chan is not None and self._dead_reason is None:
            chan.nudge()

    def stats(self) -> dict[str, Any]:
        reply = self._request(Kind.STATS, 0, (), b"", what="stats")
        remote = json.loads(reply.blob or b"{}")
        local = self._chan.stats.snapshot() if self._chan is not None else None
        return {"enclave": remote, "host_channel": _asdict(local), "pid": self.pid}

    def channel_stats(self) -> Any:
        """Host-side channel counters (a frozen snapshot)."""
        if self._chan is None:
            raise EnclaveError("the enclave is not running")
        return self._chan.stats.snapshot()

    def _request(
        self,
        kind: Kind,
        tag: int,
        tensors: Sequence[torch.Tensor],
        blob: bytes,
        *,
        what: str | None = None,
    ) -> Any:
        """Send one request and return its checked reply (``what`` names it in errors; default:
        the segment ``tag``). Every crossing takes this path, so its common case is a few tests."""
        chan = self._chan
        # Not `alive` (a waitpid per request): an enclave that died since the last check shows up
        # on this request's channel (its socket hangs up), and is reported the same way below.
        if self._dead_reason is not None or chan is None or self._proc is None:
            raise self._crash_error(what or f"segment {tag}")
        try:
            # request(): the reply must echo this request's id; LOAD weights are streamed, never staged
            reply = chan.request(
                kind, tag, tensors, blob, timeout=self.config.timeout_s, secret=kind == _LOAD
            )
        except BaseException as exc:
            raise self._request_failed(exc, what or f"segment {tag}") from exc
        want = _REPLY_KIND.get(kind, _OK)
        if reply.kind != want or (
            want == _RESULT
            and (
                reply.tag != tag or len(reply.tensors) != self._returns.get(tag, len(reply.tensors))
            )
        ):
            self._refuse(reply, kind, tag, what or f"segment {tag}")  # an ERROR reply: raises too
        return reply

    def _request_failed(self, exc: BaseException, what: str) -> BaseException:
        """The error to raise for a request that got no usable reply (the enclave is stopped)."""
        if isinstance(exc, BoundaryTimeout):
            self._fail(f"no answer to {what} within {self.config.timeout_s:g} s")
            return BoundaryTimeout(
                f"the enclave did not answer {what} within {self.config.timeout_s:g} s and was "
                "stopped; raise EnclaveConfig(timeout_s=...) for very large models or batches"
            )
        if isinstance(exc, (EnclaveCrashed, BoundaryError, OSError)):
            self._fail(str(exc))
            return self._crash_error(what)
        # an interrupt or a decode error between send and reply: re-raised as it is
        self._fail(f"{type(exc).__name__} while waiting for the reply to {what}")
        return exc

    def _refuse(self, reply: Any, kind: Kind, tag: int, what: str) -> None:
        """Raise for a reply that is not the one asked for: the enclave's own error (typed, the
        session stays in step), or (SessionFailed, enclave stopped) the wrong kind, tag or count."""
        want = _REPLY_KIND.get(kind, _OK)
        if reply.kind not in (want, _ERROR) or (want == _RESULT and reply.tag != tag):
            problem = f"kind {reply.kind} tag {reply.tag}, expected kind {want} tag {tag}"
        elif reply.kind == _ERROR:
            info = json.loads(reply.blob or b"{}")
            cls = getattr(_errors, str(info.get("type", "")), None)
            if not (isinstance(cls, type) and issubclass(cls, TaoismError)):
                cls = EnclaveRemoteError
            raise cls(f"enclave, {what}: {info.get('message', 'unknown error')}")
        else:
            problem = f"{len(reply.tensors)} tensor(s), expected {self._returns[tag]}"
        self._fail(f"a reply that does not match {what}")
        raise SessionFailed(
            f"the enclave's reply to {what} has {problem}: the session is out of "
            "step and was stopped; call ShieldedModel.reload(model)"
        )

    # -- failure reporting -------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        self._dead_reason = reason
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass

    def _log_tail(self, limit: int = 1200) -> str:
        if self._log is None or self._log.closed:
            return ""
        try:
            self._log.flush()
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - limit))
            return self._log.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def _crash_error(self, what: str) -> EnclaveCrashed:
        code = self._proc.poll() if self._proc is not None else None
        tail = self._log_tail()
        status = (
            "was never started"
            if self._proc is None
            else f"exited with code {code}"
            if code is not None
            else "stopped answering"
        )
        msg = (
            f"the enclave process {status} ({self._dead_reason or 'unknown reason'}) during {what}. "
            "Its shielded weights died with it and the host holds no copy by design: call "
            "ShieldedModel.reload(model) with the original model to start a fresh enclave (a model "
            "from taoism.deploy: reload(), which restarts from its package)."
        )
        if tail:
            msg += f"\n--- enclave log (tail) ---\n{tail}"
        return EnclaveCrashed(msg)


def _asdict(snapshot: Any) -> dict[str, Any] | None:
    return None if snapshot is None else dataclasses.asdict(snapshot)


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once process ``pid`` no longer exists (a helper for tests and the CLI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        time.sleep(0.02)
    return False
