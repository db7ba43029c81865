"""The enclave process: decrypt requests, run shielded segments, encrypt replies.

Started by the host as ``python -m taoism.enclave.server --sock-fd N``; makes itself
non-dumpable, reads its one-time launch token from stdin, opens the session, then serves until
the host closes it. With ``--package P --owner-public K`` (package mode, measured) it refuses
host-described programs (``LOAD``) and runs only the owner-signed program of ``P`` once
``ATTEST``/``PROVISION`` have released its key (:mod:`taoism.enclave.provision`).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import resource
import signal
import socket
import sys
import time
from typing import Any

import torch

from taoism.boundary import ChannelConfig, open_enclave_channel
from taoism.enclave.budget import EnclaveMemory
from taoism.enclave.heap import retain_heap
from taoism.enclave.program import SegmentProgram, build_modules, build_program
from taoism.enclave.provision import Provisioner, quote_source
from taoism.errors import BoundaryError, EnclaveCrashed, FrameError, ProgramError, TaoismError
from taoism.protocol.kinds import Kind
from taoism.protocol.schema import ReplyMeta, parse_program

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
# Plain ints for the per-crossing tests (an IntEnum member's lookup costs more than the compare).
_RUN, _RUN_PROFILE, _RESULT = int(Kind.RUN), int(Kind.RUN_PROFILE), int(Kind.RESULT)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process if the host dies (belt and braces)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _not_dumpable() -> bool:
    """Linux: no core dumps, and same-uid processes (the host) get EPERM on /proc/PID/mem and ptrace."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class EnclaveServer:
    """State of one enclave session: the loaded program and its memory manager (values between segments)."""

    def __init__(self) -> None:
        self.programs: dict[int, SegmentProgram] = {}
        self.params = 0
        self.runs = 0
        # memory budget, accounting, chunking and sealed paging: every segment runs through it
        # (without a budget it only accounts, and replays compiled segments once they are known
        # to fit whole)
        self.memory: EnclaveMemory | None = None
        self.heap_retained = False  # whether the process keeps its heap (taoism.enclave.heap)

    def load(self, blob: bytes, tensors: list[torch.Tensor]) -> dict[str, Any]:
        """Rebuild the program a LOAD request describes; returns what was loaded (JSON-ready)."""
        if self.programs:
            raise ProgramError(
                "a program is already loaded in this enclave session; the program is "
                "fixed at load time (start a new session to change it)"
            )
        desc = parse_program(blob, len(tensors))
        named = dict(zip(desc.get("tensors", []), tensors))
        root = build_modules(desc, named)
        programs = build_program(desc, root)
        self.programs = {p.index: p for p in programs}
        self.params = sum(t.numel() for t in tensors)
        self.memory = EnclaveMemory(
            root, self.programs, desc.get("memory"), desc.get("constants", [])
        )
        return {"segments": len(programs), "tensors": len(tensors), "elements": self.params}

    def run(
        self, seg: int, tensors: list[torch.Tensor], profile: bool
    ) -> tuple[list[torch.Tensor], list[float]]:
        """Run segment ``seg``; returns (outputs, [compute seconds, *per-node seconds if profiled])."""
        prog = self.programs.get(seg)
        if prog is None or self.memory is None:
            raise ProgramError(f"no enclave segment {seg} is loaded (have {sorted(self.programs)})")
        if len(tensors) != len(prog.send_in):
            raise ProgramError(
                f"segment {seg} expects {len(prog.send_in)} input tensor(s), got {len(tensors)}"
            )
        t0 = time.perf_counter()
        if torch.is_inference_mode_enabled():  # serve() runs the whole session in inference mode
            outs, node_times = self.memory.run(prog, tensors, profile)
        else:
            with torch.inference_mode():
                outs, node_times = self.memory.run(prog, tensors, profile)
        self.runs += 1
        return outs, [time.perf_counter() - t0, *node_times]


def serve(
    sock: socket.socket,
    token: bytes,
    config: ChannelConfig,
    provisioner: Provisioner | None = None,
    *,
    heap_retained: bool = False,
) -> int:
    """Open the session on ``sock`` and answer requests until CLOSE; returns the exit status.

    ``heap_retained``: whether this process applied :func:`~taoism.enclave.heap.retain_heap`
    (reported by STATS)."""
    chan = open_enclave_channel(sock, token, config=config)
    server = EnclaveServer()
    server.heap_retained = heap_retained
    with torch.inference_mode():  # nothing in the enclave needs autograd; entered once, not per run
        return _serve_loop(chan, server, provisioner)


def _serve_loop(chan: Any, server: EnclaveServer, provisioner: Provisioner | None) -> int:
    """Answer requests on ``chan`` until CLOSE; returns the exit status."""
    while True:
        try:
            msg = chan.recv(timeout=None)
        except EnclaveCrashed:
            return 0  # the host went away: nothing left to serve
        except BoundaryError as exc:
            # A tampered, replayed or malformed frame: the session cannot be trusted any more.
            print(
                f"taoism enclave: closing the session: {type(exc).__name__}: {exc}", file=sys.stderr
            )
            return 3
        try:
            kind = msg.kind
            if kind == _RUN or kind == _RUN_PROFILE:
                stats = chan.stats
                c0 = stats.crypto_s
                memory = server.memory
                if memory is not None:
                    memory.set_boundary_bytes(chan.staging_bytes)  # a no-op unless it grew
                profile = kind == _RUN_PROFILE
                outs, times = server.run(msg.tag, msg.tensors, profile)
                report = memory.last_report if profile and memory is not None else None
                crypto_s = stats.crypto_s - c0
                if profile:
                    meta = ReplyMeta(
                        compute_s=times[0],
                        crypto_s=crypto_s,
                        node_times=tuple(times[1:]),
                        memory=report.to_json() if report is not None else None,
                    ).encode()
                else:  # the per-crossing hot path: the 17-byte binary form, no object
                    meta = ReplyMeta.pack_times(times[0], crypto_s)
                chan.send(_RESULT, msg.tag, outs, meta)
            elif msg.kind == Kind.LOAD:
                if provisioner is not None:
                    raise ProgramError(
                        "this enclave runs only the owner-signed program of its package; it "
                        "refuses a program described by the host (use ATTEST/PROVISION)"
                    )
                info = server.load(msg.blob, msg.tensors)
                chan.send(Kind.OK, 0, (), json.dumps(info).encode())
            elif msg.kind in (Kind.ATTEST, Kind.PROVISION):
                if provisioner is None:
                    raise ProgramError(
                        "this enclave was not started in package mode (--package); "
                        "it cannot attest or be provisioned"
                    )
                if msg.kind == Kind.ATTEST:
                    chan.send(Kind.OK, 0, (), provisioner.attest(bytes(msg.blob)))
                else:
                    try:
                        blob, tensors = provisioner.provision(bytes(msg.blob))
                        info = server.load(blob, tensors)
                        del blob, tensors
                    except BaseException:
                        # refused (wrong key, tampered tensor, bad program): keep no partial state
                        server.programs, server.memory = {}, None
                        raise
                    chan.send(Kind.OK, 0, (), json.dumps(info).encode())
            elif msg.kind == Kind.STATS:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                info = {
                    "max_rss_bytes": usage.ru_maxrss * 1024,
                    "runs": server.runs,
                    "segments": len(server.programs),
                    "weight_elements": server.params,
                    "threads": torch.get_num_threads(),
                    "heap_retained": server.heap_retained,
                    "channel": dataclasses.asdict(chan.stats.snapshot()),
                }
                if server.memory is not None:
                    info["memory"] = server.memory.stats()
                chan.send(Kind.OK, 0, (), json.dumps(info).encode())
            elif msg.kind == Kind.CLOSE:
                chan.send(Kind.OK, 0)
                return 0
            else:
                raise FrameError(f"unknown request kind {msg.kind}")
        except TaoismError as exc:
            chan.send(
                Kind.ERROR,
                msg.tag,
                (),
                json.dumps({"type": type(exc).__name__, "message": str(exc)}).encode(),
            )
        except Exception as exc:  # a torch error in a segment: report it, keep serving
            chan.send(
                Kind.ERROR,
                msg.tag,
                (),
                json.dumps(
                    {"type": "EnclaveRemoteError", "message": f"{type(exc).__name__}: {exc}"}
                ).encode(),
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the enclave process (``python -m taoism.enclave.server``)."""
    parser = argparse.ArgumentParser(prog="taoism-enclave", description=__doc__)
    parser.add_argument("--sock-fd", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spin-us", type=int, default=200)
    parser.add_argument("--max-frame-bytes", type=int, default=1 << 30)
    parser.add_argument(
        "--retain-heap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed memory in the heap, as an SGX enclave's committed heap (default)",
    )
    parser.add_argument(
        "--package", default=None, help="package mode: the owner-signed model package"
    )
    parser.add_argument(
        "--owner-public",
        default=None,
        help="package mode: the owner public key it must be signed with (measured)",
    )
    parser.add_argument(
        "--quote", choices=("sim", "sgx"), default="sim", help="package mode: quote source"
    )
    parser.add_argument(
        "--platform-key", default=None, help="package mode, sim: simulated platform key"
    )
    args = parser.parse_args(argv)
    # before any secret arrives (launch token, session keys, model key): no dumps, no /proc/PID/mem
    if not _not_dumpable():
        print("taoism enclave: prctl(PR_SET_DUMPABLE, 0) failed; refusing to run", file=sys.stderr)
        return 2
    _die_with_parent()
    heap_retained = retain_heap() if args.retain_heap else False
    provisioner = None
    if args.package is not None or args.owner_public is not None:
        if not (args.package and args.owner_public):
            print(
                "taoism enclave: package mode needs both --package and --owner-public",
                file=sys.stderr,
            )
            return 2
        try:
            provisioner = Provisioner(
                args.package, args.owner_public, quote_source(args.quote, args.platform_key)
            )
        except TaoismError as exc:
            print(f"taoism enclave: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    token = sys.stdin.buffer.read(32)
    if len(token) != 32:
        print("taoism enclave: no launch token on stdin", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=args.sock_fd)
    try:
        return serve(
            sock,
            token,
            ChannelConfig(
                spin_us=args.spin_us, timeout_s=None, max_frame_bytes=args.max_frame_bytes
            ),
            provisioner,
            heap_retained=heap_retained,
        )
    except (
        BoundaryError
    ) as exc:  # handshake, or the channel failed while replying: status 3, no traceback
        print(f"taoism enclave: closing the session: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
