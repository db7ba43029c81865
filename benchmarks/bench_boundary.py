"""Benchmark the encrypted host/enclave boundary in two real processes.

Measures, after warm-up, over ``--repeats`` repeats:

* round trip (host send -> enclave recv -> enclave send -> host recv) of a 1 KiB
  tensor with spin-then-block waits (default spin) and with pure blocking (spin 0);
* round trips of a 256 KiB and a 4 MiB tensor (default spin);
* 256 KiB round trips with the host busy for 1 ms before each (as between the enclave segments of
  an every-ReLU placement), both sides spinning 5 ms (the enclave spin rule), against the same
  gapped reference; and the same small work (decrypt + ReLU + encrypt) hot and after a 1 ms gap
  in one process: the machine's own penalty for waiting;
* a 256 KiB round trip after 15 ms of host work (longer than the peer's 5 ms spin: it has
  blocked), plain and with ``Channel.nudge`` 0.4 ms before, next to the hot figure;
* AES-256-GCM seal and open throughput of a 1 MiB tensor body (the channel's own
  Sealer/Opener, in one process);
* the CPU cost of one send and one recv of a 1 KiB tensor (both ends in one
  process, no waiting): the per-message Python overhead.

Channels use the compiled hot path where it is built (``taoism.boundary._fastpath``); the 1 KiB and
256 KiB round trips, the per-message CPU cost and the step breakdown also measure the pure-Python
path (``ChannelConfig(compiled=False)``) in the same run.

Latency needs two otherwise idle cores: on an oversubscribed machine spinning
cannot help and the spin figures approach the blocking ones.

Beside each round trip the same run measures the bare reference, interleaved repeat by
repeat: two processes spinning on a shared-memory counter (``ref_spin``), and the same plus
one AES-256-GCM encrypt into shared memory and one decrypt into private memory per direction
(``ref_full``, the least any design on this stack must do); taoism figures are printed as a
ratio to ``ref_full`` (median over repeats, and the range).

Usage: python benchmarks/bench_boundary.py [--repeats 5] [--iters 2000] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taoism.boundary import (
    ChannelConfig,
    crypto,
    fastpath,
    frame,
    new_launch_token,
    open_enclave_channel,
    open_host_channel,
)

KIND_ECHO, KIND_STOP = 1, 2


def _peer(fd: int, spin_us: float, compiled: bool) -> None:
    """Enclave side: echo every message back until STOP."""
    token = bytes.fromhex(sys.stdin.readline().strip())
    sock = socket.socket(fileno=fd)
    config = ChannelConfig(spin_us=spin_us, compiled=compiled)
    chan = open_enclave_channel(sock, token, config=config)
    with chan:
        while True:
            msg = chan.recv()
            if msg.kind == KIND_STOP:
                break
            chan.send(msg.kind, msg.tag, msg.tensors, msg.blob)


class _Session:
    """A host channel connected to a freshly spawned echo peer."""

    def __init__(self, spin_us: float, compiled: bool = True) -> None:
        host_sock, peer_sock = socket.socketpair()
        token = new_launch_token()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--peer-fd",
                str(peer_sock.fileno()),
                "--spin-us",
                str(spin_us),
                *(() if compiled else ("--peer-pure",)),
            ],
            pass_fds=[peer_sock.fileno()],
            stdin=subprocess.PIPE,
            text=True,
        )
        peer_sock.close()
        self.proc.stdin.write(token.hex() + "\n")
        self.proc.stdin.flush()
        config = ChannelConfig(spin_us=spin_us, compiled=compiled)
        self.chan = open_host_channel(host_sock, token, config=config)

    def round_trips(self, tensor: torch.Tensor, n: int, gap_s: float = 0.0) -> list[float]:
        send, recv, perf = self.chan.send, self.chan.recv, time.perf_counter
        out = []
        for i in range(n):
            if gap_s:
                _host_busy(gap_s)
            t0 = perf()
            send(KIND_ECHO, i, (tensor,))
            recv()
            out.append(perf() - t0)
        return out

    def close(self) -> None:
        self.chan.send(KIND_STOP, 0)
        self.chan.close()
        self.proc.wait(timeout=30)


def _host_busy(seconds: float) -> None:
    """The host computing between two crossings (a device segment): busy, not timed."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ----------------------------------------------------------------------------- the bare reference


_REF_CTL = (
    4096  # control block: u64[0] host->peer counter, u64[8] peer->host counter, u64[16] length
)
_REF_STOP = (1 << 64) - 1


def _ref_spin(ctl: memoryview, index: int, seen: int, idle_s: float | None = None) -> int:
    """Spin until ``ctl[index] != seen`` (sched_yield every 128 polls, as the transport does).

    With ``idle_s``, after that long without a change poll every 1 ms instead (the idle peer must
    not take a core from whatever is measured next, as the taoism peer blocks after its spin).
    """
    spins = 0
    perf = time.perf_counter
    end = None if idle_s is None else perf() + idle_s
    while True:
        v = ctl[index]
        if v != seen:
            return v
        spins += 1
        if not spins & 127:
            os.sched_yield()
            if end is not None and perf() > end:
                time.sleep(0.001)


def _ref_peer(fd: int, size: int, idle_us: float) -> None:
    """Reference peer: wait on the counter, (decrypt the request, encrypt the reply), bump its counter."""
    key = bytes.fromhex(sys.stdin.readline().strip())
    mm = mmap.mmap(fd, size)
    view = memoryview(mm)
    ctl = view[:_REF_CTL].cast("Q")
    half = (size - _REF_CTL) // 2
    inbox, outbox = view[_REF_CTL : _REF_CTL + half], view[_REF_CTL + half :]
    aead = AESGCM(key)
    private = bytearray(half)
    seen = 0
    while True:
        seen = _ref_spin(ctl, 0, seen, idle_us * 1e-6)
        n = ctl[16]
        if n == _REF_STOP:
            break
        if (
            n
        ):  # + AES-GCM + copies: decrypt into private memory, encrypt the reply into shared memory
            aead.decrypt_into(
                seen.to_bytes(12, "big"), inbox[: n + 16], b"", memoryview(private)[:n]
            )
            aead.encrypt_into(
                seen.to_bytes(12, "little"), memoryview(private)[:n], b"", outbox[: n + 16]
            )
        ctl[8] = seen


class _Reference:
    """The machine's own limit for a crossing: two processes, shared memory, spin (+ AES-GCM + copies).

    No framing, no validation, no Python objects beyond the calls themselves: what any Python
    design on this stack must pay at least.
    """

    def __init__(self, max_bytes: int, idle_us: float = ChannelConfig().spin_us) -> None:
        half = max_bytes + 4096
        self.size = _REF_CTL + 2 * half
        fd = os.memfd_create("taoism-bench-ref")
        os.ftruncate(fd, self.size)
        key = os.urandom(32)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--ref-peer-fd",
                str(fd),
                "--ref-size",
                str(self.size),
                "--spin-us",
                str(idle_us),
            ],
            pass_fds=[fd],
            stdin=subprocess.PIPE,
            text=True,
        )
        self.proc.stdin.write(key.hex() + "\n")
        self.proc.stdin.flush()
        self.mm = mmap.mmap(fd, self.size)
        os.close(fd)
        view = memoryview(self.mm)
        self.ctl = view[:_REF_CTL].cast("Q")
        self.outbox, self.inbox = view[_REF_CTL : _REF_CTL + half], view[_REF_CTL + half :]
        self.aead = AESGCM(key)
        self.count = 0

    def round_trips(self, tensor: torch.Tensor | None, n: int, gap_s: float = 0.0) -> list[float]:
        ctl, perf, aead, out = self.ctl, time.perf_counter, self.aead, []
        if tensor is None:
            nbytes, src, private = 0, None, None
        else:
            nbytes = tensor.numel() * tensor.element_size()
            src = tensor.numpy().view(np.uint8)
            private = np.empty(nbytes, np.uint8)
        for _ in range(n):
            if gap_s:
                _host_busy(gap_s)
            t0 = perf()
            c = self.count = self.count + 1
            if nbytes:
                aead.encrypt_into(c.to_bytes(12, "big"), src, b"", self.outbox[: nbytes + 16])
            ctl[16] = nbytes
            ctl[0] = c
            _ref_spin(ctl, 8, c - 1)
            if nbytes:
                aead.decrypt_into(c.to_bytes(12, "little"), self.inbox[: nbytes + 16], b"", private)
            out.append(perf() - t0)
        if nbytes and not np.array_equal(private, src):
            raise RuntimeError("reference round trip corrupted the data")
        return out

    def close(self) -> None:
        self.ctl[16] = _REF_STOP
        self.ctl[0] = self.count + 1
        self.proc.wait(timeout=30)
        del self.ctl, self.outbox, self.inbox
        self.mm.close()


def _summary(samples: list[float], repeat_medians: list[float]) -> dict[str, float]:
    q = np.percentile(np.asarray(samples), [10, 50, 90])
    return {
        "p10_us": q[0] * 1e6,
        "median_us": q[1] * 1e6,
        "p90_us": q[2] * 1e6,
        "repeat_median_min_us": min(repeat_medians) * 1e6,
        "repeat_median_max_us": max(repeat_medians) * 1e6,
        "samples": len(samples),
    }


def _rtt(session: _Session, nbytes: int, iters: int, repeats: int, warmup: int) -> dict[str, float]:
    tensor = torch.randn(nbytes // 4)
    session.round_trips(tensor, warmup)
    samples: list[float] = []
    medians = []
    for _ in range(repeats):
        s = session.round_trips(tensor, iters)
        medians.append(statistics.median(s))
        samples += s
    res = _summary(samples, medians)
    res["bytes"] = nbytes
    res["GB_per_s_each_way"] = 2 * nbytes / (res["median_us"] * 1e-6) / 1e9
    return res


def _paired(
    contenders: dict[str, tuple[object, torch.Tensor | None]],
    iters: int,
    repeats: int,
    warmup: int,
    gap_s: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Round trips of every contender, interleaved repeat by repeat; ratios to ``ref_full`` per repeat.

    With ``gap_s`` the host is busy that long before each round trip (not timed), as between two
    enclave segments: the waiting peer then spins through it.
    """
    for obj, tensor in contenders.values():
        obj.round_trips(tensor, warmup, gap_s)
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    medians: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, (obj, tensor) in contenders.items():
            s = obj.round_trips(tensor, iters, gap_s)
            samples[name] += s
            medians[name].append(statistics.median(s))
    out = {name: _summary(samples[name], medians[name]) for name in contenders}
    for name in contenders:
        ratios = [a / b for a, b in zip(medians[name], medians["ref_full"])]
        out[name]["ratio_to_ref_full"] = statistics.median(ratios)
        out[name]["ratio_min"], out[name]["ratio_max"] = min(ratios), max(ratios)
    return out


def _crypto_throughput(nbytes: int, iters: int, repeats: int) -> dict[str, float]:
    keys = crypto.derive_session_keys(
        os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32)
    )
    sealer = crypto.Sealer(keys.host_to_enclave, crypto.PREFIX_HOST_TO_ENCLAVE)
    opener = crypto.Opener(keys.host_to_enclave, crypto.PREFIX_HOST_TO_ENCLAVE)
    body = bytearray(frame.encode_frame(1, 0, 0, [torch.randn(nbytes // 4)])[frame.HEADER_SIZE :])
    sealed = bytearray(len(body) + crypto.TAG_SIZE)
    plain = np.empty(len(body), np.uint8)
    header = bytes(frame.HEADER_SIZE)
    seal_s, open_s = [], []
    for r in range(repeats + 1):  # first repeat is warm-up
        t_seal = t_open = 0.0
        for _ in range(iters):
            seq = sealer.take_seq()
            t0 = time.perf_counter()
            sealer.seal_into(seq, header, body, sealed)
            t1 = time.perf_counter()
            opener.open_into(seq, header, sealed, plain)
            t2 = time.perf_counter()
            t_seal += t1 - t0
            t_open += t2 - t1
        if r:
            seal_s.append(t_seal / iters)
            open_s.append(t_open / iters)
    if not np.array_equal(plain, np.frombuffer(body, np.uint8)):
        raise RuntimeError("AES-GCM round trip corrupted the data")
    seal, opn = statistics.median(seal_s), statistics.median(open_s)
    return {
        "bytes": len(body),
        "seal_GB_per_s": len(body) / seal / 1e9,
        "open_GB_per_s": len(body) / opn / 1e9,
        "seal_plus_open_GB_per_s": len(body) / (seal + opn) / 1e9,
        "seal_us": seal * 1e6,
        "open_us": opn * 1e6,
    }


def _in_process_pair(compiled: bool = True):
    """Host and enclave channel ends in this process (the enclave handshake runs in a thread)."""
    import threading

    a, b = socket.socketpair()
    token = new_launch_token()
    box: dict = {}
    config = ChannelConfig(compiled=compiled)
    thread = threading.Thread(
        target=lambda: box.setdefault("e", open_enclave_channel(b, token, config=config))
    )
    thread.start()
    host = open_host_channel(a, token, config=config)
    thread.join()
    enclave = box["e"]
    return host, enclave


def _per_op_cost(nbytes: int, iters: int, repeats: int, compiled: bool) -> dict[str, float]:
    """CPU cost of send and of recv for one message, both ends in this process (no waiting)."""
    host, enclave = _in_process_pair(compiled)
    x = torch.randn(nbytes // 4)
    clock = time.thread_time
    send_us, pair_us = [], []
    try:
        for r in range(repeats + 1):
            t0 = clock()
            for _ in range(iters):
                host.send(1, 0, (x,))
                enclave._tr.wait_frame(None)  # consume without decoding
                enclave._tr.release()
                enclave._opener.next_seq += 1
            t1 = clock()
            for _ in range(iters):
                host.send(1, 0, (x,))
                enclave.recv()
            t2 = clock()
            if r:  # the first repeat is warm-up
                send_us.append((t1 - t0) / iters * 1e6)
                pair_us.append((t2 - t1) / iters * 1e6)
    finally:
        host.close()
        enclave.close()
    send, both = min(send_us), min(pair_us)
    return {
        "bytes": nbytes,
        "compiled": host.compiled,
        "send_cpu_us": send,
        "recv_cpu_us": both - send,
        "send_plus_recv_cpu_us": both,
    }


def _breakdown(nbytes: int, iters: int) -> dict[str, float]:
    """Per-message CPU cost of each step of the data path, timed in isolation (one process, us)."""
    import threading

    from taoism.boundary.channel import _NONCE_PACK
    from taoism.boundary.frame import HEADER, HEADER_SIZE, decode_body_parts, stage_body

    host, enclave = _in_process_pair()
    pure_host, pure_enclave = _in_process_pair(compiled=False)
    x = torch.randn(nbytes // 4)
    region = host._tr.outbound
    data, addr, aead = region.data, region.data_addr, host._sealer.aead
    body_len = stage_body((x,), b"", data, HEADER_SIZE, addr, region.capacity)
    header = HEADER.pack(b"TAO1", 2, 1, 0, 1, 0, 0, body_len, 1)
    nonce = _NONCE_PACK(b"TH2E", 0)
    plain = np.frombuffer(bytes(data[HEADER_SIZE : HEADER_SIZE + body_len]), np.uint8).copy()
    ct = bytearray(body_len + 16)
    aead.encrypt_into(nonce, plain, header, ct)
    lock = threading.Lock()
    steps = {
        "lock acquire+release": lambda: (lock.acquire(), lock.release()),
        "header pack": lambda: HEADER.pack(b"TAO1", 2, 1, 0, 1, 7, 0, body_len, 1),
        "lay out body in the slot (descriptor + memmove)": lambda: stage_body(
            (x,), b"", data, HEADER_SIZE, addr, region.capacity
        ),
        "AES-GCM encrypt in place": lambda: aead.encrypt_into(
            nonce,
            data[HEADER_SIZE : HEADER_SIZE + body_len],
            header,
            data[HEADER_SIZE : HEADER_SIZE + body_len + 16],
        ),
        "private buffer (np.empty)": lambda: np.empty(body_len, np.uint8),
        "AES-GCM decrypt into private": lambda: aead.decrypt_into(nonce, ct, header, plain),
        "decode descriptors + tensor view": lambda: decode_body_parts(1, 0, body_len, plain),
    }
    if host.compiled:
        steps.update(_compiled_steps(host, enclave, x))
    out = {}
    try:
        for name, fn in steps.items():
            for _ in range(iters // 10):
                fn()
            t0 = time.thread_time()
            for _ in range(iters):
                fn()
            out[name] = (time.thread_time() - t0) / iters * 1e6
        clock = time.thread_time
        pairs = {"compiled": (host, enclave), "pure": (pure_host, pure_enclave)}
        for label, (h, e) in pairs.items():
            if label == "compiled" and not h.compiled:
                continue
            for _ in range(iters // 10 + 1):
                h.send(1, 0, (x,))
                e.recv()
                e.send(1, 0, (x,))
                h.recv()
            t0 = clock()
            for _ in range(iters):
                h.send(1, 0, (x,))
                e.recv()
                e.send(1, 0, (x,))
                h.recv()
            out[f"whole round trip in one process (2 send + 2 recv), {label} path"] = (
                (clock() - t0) / iters * 1e6
            )
    finally:
        for chan in (host, enclave, pure_host, pure_enclave):
            chan.close()
    return out


def _compiled_steps(host, enclave, x: torch.Tensor) -> dict:
    """The compiled path's two calls, timed alone (the slot is rewritten in place, never published)."""
    from taoism.boundary.frame import views_of

    seal, data = host._fast_sealer.seal, host._tr.outbound.data
    frame_len = seal(data, 1, 0, 0, 1, (x,), b"")
    if frame_len < 0:  # not the common case (or the slot is too small): the pure path sends it
        return {}
    opener, inbox = enclave._fast_opener, bytearray(data[:frame_len]) + bytearray(4096)
    inbox_mv, max_body = memoryview(inbox), enclave._max_body
    res = opener.open(inbox_mv, frame_len, max_body, 0, False)
    body, specs = res[8], res[10]
    return {
        "compiled: lay out + encrypt in the slot (one C call)": lambda: seal(
            data, 1, 0, 0, 1, (x,), b""
        ),
        "compiled: header checks + decrypt + descriptors (one C call)": lambda: opener.open(
            inbox_mv, frame_len, max_body, 0, False
        ),
        "compiled: tensor views of the private buffer": lambda: views_of(body, specs),
    }


def _compiled_vs_pure(iters: int, repeats: int) -> dict[str, dict[str, float]]:
    """One-process round trips (2 send + 2 recv, CPU us), compiled and pure, by tensor size.

    Beyond ``ChannelConfig.compiled_max_body`` the compiled channel keeps its C layout and
    checks but encrypts with the session's ``AESGCM``; the sizes around it show both ciphers.
    """
    pairs = {"compiled": _in_process_pair(True), "pure": _in_process_pair(False)}
    clock = time.thread_time
    out: dict[str, dict[str, float]] = {}
    try:
        for kib in (1, 4, 8, 16, 64, 256):
            x = torch.randn(kib * 256)
            n = max(50, iters // kib)
            row = {}
            for label, (h, e) in pairs.items():
                best = float("inf")
                for _ in range(repeats + 1):
                    t0 = clock()
                    for _ in range(n):
                        h.send(1, 0, (x,))
                        e.recv()
                        e.send(1, 0, (x,))
                        h.recv()
                    best = min(best, (clock() - t0) / n * 1e6)
                row[f"{label}_us"] = best
            row["ratio"] = row["compiled_us"] / row["pure_us"]
            out[f"{kib}KiB"] = row
    finally:
        for h, e in pairs.values():
            h.close()
            e.close()
    out["compiled_built"] = {"value": float(pairs["compiled"][0].compiled)}
    return out


SIZES = (("1KiB", 1 << 10, 1), ("256KiB", 256 << 10, 10), ("4MiB", 4 << 20, 100))
GAP_BYTES, GAP_S = 256 << 10, 1e-3


def _cold_after_gap(nbytes: int, iters: int) -> dict[str, float]:
    """The machine's own penalty for waiting: the same small work hot, and after a 1 ms busy gap.

    The work is what a waiting enclave does for an every-ReLU crossing: AES-GCM decrypt of
    ``nbytes`` into private memory, a ReLU over it, AES-GCM encrypt of the result (one process,
    no boundary). On a VM whose cores are time-shared, the gap alone makes it slower.
    """
    aead = AESGCM(os.urandom(32))
    x = torch.randn(nbytes // 4)
    nonce = os.urandom(12)
    ct = bytearray(nbytes + 16)
    aead.encrypt_into(nonce, x.numpy().view(np.uint8), b"", ct)
    private = np.empty(nbytes, np.uint8)
    out_ct = bytearray(nbytes + 16)

    def work() -> float:
        t0 = time.perf_counter()
        aead.decrypt_into(nonce, ct, b"", private)
        y = torch.relu(torch.from_numpy(private).view(torch.float32))
        aead.encrypt_into(nonce, y.numpy().view(np.uint8), b"", out_ct)
        return time.perf_counter() - t0

    res = {}
    for label, gap in (("hot_us", 0.0), ("after_gap_us", GAP_S)):
        for _ in range(10):
            work()
        samples = []
        for _ in range(iters):
            if gap:
                _host_busy(gap)
            samples.append(work())
        res[label] = statistics.median(samples) * 1e6
    res["gap_us"] = GAP_S * 1e6
    res["ratio"] = res["after_gap_us"] / res["hot_us"]
    return res


IDLE_S, NUDGE_LEAD_S = 0.015, 0.0004


def _after_idle(nbytes: int, iters: int) -> dict[str, float]:
    """A round trip after the host computed longer than the peer spins (15 ms > 5 ms: the peer
    has blocked), plain and with ``Channel.nudge`` 0.4 ms before the request, alternated.

    The first crossing of an inference that follows a pause pays this; the nudge is what
    ``ShieldedModel`` sends when an inference starts on the device.
    """
    sess = _Session(5000.0)
    x = torch.randn(nbytes // 4)
    send, recv, perf = sess.chan.send, sess.chan.recv, time.perf_counter
    out: dict[str, list[float]] = {"plain": [], "nudged": []}
    try:
        for i in range(4 + 2 * iters):
            mode = "nudged" if i % 2 else "plain"
            _host_busy(IDLE_S - NUDGE_LEAD_S)
            if mode == "nudged":
                sess.chan.nudge()
            _host_busy(NUDGE_LEAD_S)
            t0 = perf()
            send(KIND_ECHO, i, (x,))
            recv()
            if i >= 4:
                out[mode].append(perf() - t0)
        hot = sess.round_trips(x, iters)
    finally:
        sess.close()
    res = {f"{k}_us": statistics.median(v) * 1e6 for k, v in out.items()}
    res["hot_us"] = statistics.median(hot) * 1e6
    res["idle_us"] = IDLE_S * 1e6
    res["lead_us"] = NUDGE_LEAD_S * 1e6
    return res


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="repeats per measurement (default 5)"
    )
    parser.add_argument(
        "--iters", type=int, default=2000, help="small-tensor round trips per repeat"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 3 repeats of 300 round trips, no 4 MiB"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument(
        "--spin-us", type=float, default=ChannelConfig().spin_us, help=argparse.SUPPRESS
    )
    parser.add_argument("--peer-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer-pure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ref-peer-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ref-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_fd is not None:
        _peer(args.peer_fd, args.spin_us, not args.peer_pure)
        return {}
    if args.ref_peer_fd is not None:
        _ref_peer(args.ref_peer_fd, args.ref_size, args.spin_us)
        return {}
    if args.quick:
        args.repeats, args.iters = min(args.repeats, 3), min(args.iters, 300)
    if args.repeats < 1 or args.iters < 1:
        parser.error("--repeats and --iters must be >= 1")
    torch.set_num_threads(1)
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            # the compiled path's AES-GCM, and the pure path's (the cryptography wheel's own)
            "libcrypto_compiled": getattr(fastpath.built(), "OPENSSL_VERSION", None),
            "libcrypto_pure": openssl_backend.openssl_version_text(),
        },
        "args": {"repeats": args.repeats, "iters": args.iters, "quick": args.quick},
    }
    sizes = SIZES[:2] if args.quick else SIZES
    spin = _Session(ChannelConfig().spin_us)
    pure = _Session(ChannelConfig().spin_us, compiled=False)
    results["compiled"] = spin.chan.compiled
    ref = _Reference(max(n for _, n, _ in sizes))
    try:
        for label, nbytes, div in sizes:
            x = torch.randn(nbytes // 4)
            contenders = {"taoism": (spin, x), "ref_full": (ref, x), "ref_spin": (ref, None)}
            if nbytes <= 256 << 10:  # the pure-Python path beside it, in the same run
                contenders["taoism_pure"] = (pure, x)
            iters = max(10, args.iters // div)
            results[f"rtt_{label}"] = _paired(
                contenders, iters, args.repeats, warmup=max(5, iters // 4)
            )
        results["host_stats_spin"] = spin.chan.stats.snapshot().__dict__
    finally:
        spin.close()
        pure.close()
        ref.close()
    # Between crossings the host computes (every-ReLU ResNet-18: ~1 ms per device segment); the
    # waiting side spins through it (the enclave spin rule's 5 ms, both here and in the reference).
    gap_spin_us = 5000.0
    spin_g, ref_g = _Session(gap_spin_us), _Reference(GAP_BYTES, idle_us=gap_spin_us)
    try:
        x = torch.randn(GAP_BYTES // 4)
        iters = max(10, args.iters // 20)
        results["rtt_256KiB_gap"] = _paired(
            {"taoism": (spin_g, x), "ref_full": (ref_g, x), "ref_spin": (ref_g, None)},
            iters,
            args.repeats,
            warmup=5,
            gap_s=GAP_S,
        )
        results["rtt_256KiB_gap"]["gap_us"] = GAP_S * 1e6
    finally:
        spin_g.close()
        ref_g.close()
    results["cold_after_gap"] = _cold_after_gap(GAP_BYTES, max(50, args.iters // 10))
    results["rtt_256KiB_after_idle"] = _after_idle(GAP_BYTES, max(20, args.iters // 50))
    block = _Session(0.0)
    try:
        results["rtt_1KiB_block"] = _rtt(
            block, 1024, max(50, args.iters // 4), args.repeats, warmup=100
        )
    finally:
        block.close()
    results["aesgcm_1MiB"] = _crypto_throughput(1 << 20, 50 if args.quick else 200, args.repeats)
    results["cpu_per_op_1KiB"] = _per_op_cost(1024, max(200, args.iters), args.repeats, True)
    results["cpu_per_op_1KiB_pure"] = _per_op_cost(1024, max(200, args.iters), args.repeats, False)
    results["compiled_vs_pure"] = _compiled_vs_pure(max(500, args.iters), args.repeats)
    results["breakdown_1KiB"] = _breakdown(1024, max(500, args.iters))
    results["breakdown_256KiB"] = _breakdown(256 << 10, max(50, args.iters // 10))
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    _print(results, sizes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def _print(results: dict, sizes) -> None:
    print(
        f"load average at start/end: {results['machine']['loadavg_at_start'][0]:.1f} / "
        f"{results['machine']['loadavg_at_end'][0]:.1f} on {results['machine']['cpus']} CPUs"
    )
    m = results["machine"]
    print(
        f"taoism: the {'compiled' if results['compiled'] else 'pure-Python'} path (compiled: "
        f"AES-GCM of {m['libcrypto_compiled']} for bodies up to "
        f"{ChannelConfig().compiled_max_body} bytes, of {m['libcrypto_pure']} beyond; pure: "
        f"{m['libcrypto_pure']})"
    )
    print(
        f"{'round trip, spin':<22}{'taoism':>11}{'ref: spin':>12}{'ref: +AES+copies':>18}"
        f"{'taoism/ref (range)':>24}"
    )
    for label, _, _ in sizes:
        r = results[f"rtt_{label}"]
        t = r["taoism"]
        print(
            f"{label:<22}{t['median_us']:>9.1f}us{r['ref_spin']['median_us']:>10.1f}us"
            f"{r['ref_full']['median_us']:>16.1f}us{t['ratio_to_ref_full']:>11.2f}x "
            f"({t['ratio_min']:.2f}-{t['ratio_max']:.2f})"
        )
        if "taoism_pure" in r:
            p = r["taoism_pure"]
            print(
                f"{'  pure-Python path':<22}{p['median_us']:>9.1f}us{'':>28}"
                f"{p['ratio_to_ref_full']:>11.2f}x ({p['ratio_min']:.2f}-{p['ratio_max']:.2f})"
            )
    g = results["rtt_256KiB_gap"]
    t = g["taoism"]
    print(
        f"{'256KiB, 1 ms gap':<22}{t['median_us']:>9.1f}us{g['ref_spin']['median_us']:>10.1f}us"
        f"{g['ref_full']['median_us']:>16.1f}us{t['ratio_to_ref_full']:>11.2f}x "
        f"({t['ratio_min']:.2f}-{t['ratio_max']:.2f})"
    )
    c = results["cold_after_gap"]
    print(
        f"decrypt + ReLU + encrypt of 256 KiB in one process: hot {c['hot_us']:.1f} us, after a "
        f"{c['gap_us']:.0f} us busy gap {c['after_gap_us']:.1f} us ({c['ratio']:.2f}x)"
    )
    a = results["rtt_256KiB_after_idle"]
    print(
        f"256 KiB after {a['idle_us'] / 1000:.0f} ms of host work (the peer blocked): "
        f"{a['plain_us']:.1f} us; nudged {a['lead_us']:.0f} us before: {a['nudged_us']:.1f} us; "
        f"hot: {a['hot_us']:.1f} us"
    )
    b = results["rtt_1KiB_block"]
    print(f"{'1KiB, spin 0 (block)':<22}{b['median_us']:>9.1f}us")
    c = results["aesgcm_1MiB"]
    print(
        f"AES-256-GCM 1 MiB, one process: seal {c['seal_GB_per_s']:.2f} GB/s, open {c['open_GB_per_s']:.2f} GB/s"
    )
    for key, label in (("cpu_per_op_1KiB", "compiled"), ("cpu_per_op_1KiB_pure", "pure")):
        o = results[key]
        label = label if o["compiled"] or label == "pure" else "pure (not built)"
        print(
            f"CPU per message, 1 KiB, one process, {label}: send {o['send_cpu_us']:.1f} us, "
            f"recv {o['recv_cpu_us']:.1f} us"
        )
    cvp = results["compiled_vs_pure"]
    built = cvp["compiled_built"]["value"]
    print(
        "round trip in one process (2 send + 2 recv, CPU), compiled vs pure"
        + ("" if built else " (NOT BUILT: both pure)")
        + f"; compiled with its own libcrypto up to {ChannelConfig().compiled_max_body}-byte "
        "bodies, with AESGCM beyond:"
    )
    for size, row in cvp.items():
        if size != "compiled_built":
            print(
                f"  {size:<8}compiled {row['compiled_us']:>7.2f} us   pure {row['pure_us']:>7.2f} us"
                f"   {row['ratio']:.2f}x"
            )
    for key in ("breakdown_1KiB", "breakdown_256KiB"):
        print(f"where the CPU goes, {key.split('_')[1]} (per call, one process):")
        for step, us in results[key].items():
            print(f"  {step:<62}{us:>8.2f} us")


if __name__ == "__main__":
    main()
