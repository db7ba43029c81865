"""Benchmark the encrypted host/enclave boundary in two real processes.

Measures, after warm-up, over ``--repeats`` repeats:

* round trip (host send -> enclave recv -> enclave send -> host recv) of a 1 KiB
  tensor with spin-then-block waits (default spin) and with pure blocking (spin 0);
* round trips of a 256 KiB and a 4 MiB tensor (default spin);
* AES-256-GCM seal and open throughput of a 1 MiB tensor body (the channel's own
  Sealer/Opener, in one process);
* the CPU cost of one send and one recv of a 1 KiB tensor (both ends in one
  process, no waiting): the per-message Python overhead.

Latency needs two otherwise idle cores: on an oversubscribed machine spinning
cannot help and the spin figures approach the blocking ones.

Usage: python benchmarks/bench_boundary.py [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from taoism.boundary import ChannelConfig, new_launch_token, open_enclave_channel, open_host_channel
from taoism.boundary import crypto, frame

KIND_ECHO, KIND_STOP = 1, 2


def _peer(fd: int, spin_us: float) -> None:
    """Enclave side: echo every message back until STOP."""
    token = bytes.fromhex(sys.stdin.readline().strip())
    sock = socket.socket(fileno=fd)
    chan = open_enclave_channel(sock, token, config=ChannelConfig(spin_us=spin_us))
    with chan:
        while True:
            msg = chan.recv()
            if msg.kind == KIND_STOP:
                break
            chan.send(msg.kind, msg.tag, msg.tensors, msg.blob)


class _Session:
    """A host channel connected to a freshly spawned echo peer."""

    def __init__(self, spin_us: float) -> None:
        host_sock, peer_sock = socket.socketpair()
        token = new_launch_token()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--peer-fd", str(peer_sock.fileno()),
             "--spin-us", str(spin_us)],
            pass_fds=[peer_sock.fileno()], stdin=subprocess.PIPE, text=True)
        peer_sock.close()
        self.proc.stdin.write(token.hex() + "\n")
        self.proc.stdin.flush()
        self.chan = open_host_channel(host_sock, token, config=ChannelConfig(spin_us=spin_us))

    def round_trips(self, tensor: torch.Tensor, n: int) -> list[float]:
        chan, send, recv, perf = self.chan, self.chan.send, self.chan.recv, time.perf_counter
        out = []
        for i in range(n):
            t0 = perf()
            send(KIND_ECHO, i, (tensor,))
            recv()
            out.append(perf() - t0)
        return out

    def close(self) -> None:
        self.chan.send(KIND_STOP, 0)
        self.chan.close()
        self.proc.wait(timeout=30)


def _summary(samples: list[float], repeat_medians: list[float]) -> dict[str, float]:
    q = np.percentile(np.asarray(samples), [10, 50, 90])
    return {"p10_us": q[0] * 1e6, "median_us": q[1] * 1e6, "p90_us": q[2] * 1e6,
            "repeat_median_min_us": min(repeat_medians) * 1e6, "repeat_median_max_us": max(repeat_medians) * 1e6,
            "samples": len(samples)}


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


def _crypto_throughput(nbytes: int, iters: int, repeats: int) -> dict[str, float]:
    keys = crypto.derive_session_keys(os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32),
                                      os.urandom(32))
    sealer = crypto.Sealer(keys.host_to_enclave, crypto.PREFIX_HOST_TO_ENCLAVE)
    opener = crypto.Opener(keys.host_to_enclave, crypto.PREFIX_HOST_TO_ENCLAVE)
    body = bytearray(frame.encode_frame(1, 0, 0, [torch.randn(nbytes // 4)])[frame.HEADER_SIZE:])
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
    return {"bytes": len(body), "seal_GB_per_s": len(body) / seal / 1e9, "open_GB_per_s": len(body) / opn / 1e9,
            "seal_plus_open_GB_per_s": len(body) / (seal + opn) / 1e9, "seal_us": seal * 1e6, "open_us": opn * 1e6}


def _per_op_cost(nbytes: int, iters: int, repeats: int) -> dict[str, float]:
    """CPU cost of send and of recv for one message, both ends in this process (no waiting)."""
    import threading

    a, b = socket.socketpair()
    token = new_launch_token()
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("e", open_enclave_channel(b, token)))
    thread.start()
    host = open_host_channel(a, token)
    thread.join()
    enclave = box["e"]
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
    return {"bytes": nbytes, "send_cpu_us": send, "recv_cpu_us": both - send, "send_plus_recv_cpu_us": both}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (default 5)")
    parser.add_argument("--iters", type=int, default=2000, help="small-tensor round trips per repeat")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--spin-us", type=float, default=ChannelConfig().spin_us, help=argparse.SUPPRESS)
    parser.add_argument("--peer-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_fd is not None:
        _peer(args.peer_fd, args.spin_us)
        return {}
    if args.repeats < 1 or args.iters < 1:
        parser.error("--repeats and --iters must be >= 1")
    torch.set_num_threads(1)
    results: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                 "cpus": os.cpu_count()}}
    spin = _Session(ChannelConfig().spin_us)
    try:
        results["rtt_1KiB_spin"] = _rtt(spin, 1024, args.iters, args.repeats, warmup=500)
        results["rtt_256KiB_spin"] = _rtt(spin, 256 << 10, max(20, args.iters // 10), args.repeats, warmup=50)
        results["rtt_4MiB_spin"] = _rtt(spin, 4 << 20, max(10, args.iters // 100), args.repeats, warmup=10)
        results["host_stats_spin"] = spin.chan.stats.snapshot().__dict__
    finally:
        spin.close()
    block = _Session(0.0)
    try:
        results["rtt_1KiB_block"] = _rtt(block, 1024, max(50, args.iters // 4), args.repeats, warmup=100)
    finally:
        block.close()
    results["aesgcm_1MiB"] = _crypto_throughput(1 << 20, 200, args.repeats)
    results["cpu_per_op_1KiB"] = _per_op_cost(1024, max(200, args.iters), args.repeats)

    print(f"{'measurement':<28}{'median':>12}{'p10':>12}{'p90':>12}{'GB/s':>10}")
    for key, label in (("rtt_1KiB_spin", "round trip 1 KiB, spin"), ("rtt_1KiB_block", "round trip 1 KiB, spin 0"),
                       ("rtt_256KiB_spin", "round trip 256 KiB, spin"), ("rtt_4MiB_spin", "round trip 4 MiB, spin")):
        r = results[key]
        print(f"{label:<28}{r['median_us']:>10.1f}us{r['p10_us']:>10.1f}us{r['p90_us']:>10.1f}us"
              f"{r['GB_per_s_each_way']:>10.2f}")
    c = results["aesgcm_1MiB"]
    print(f"{'AES-256-GCM seal 1 MiB':<28}{c['seal_us']:>10.1f}us{'':>24}{c['seal_GB_per_s']:>10.2f}")
    print(f"{'AES-256-GCM open 1 MiB':<28}{c['open_us']:>10.1f}us{'':>24}{c['open_GB_per_s']:>10.2f}")
    print(f"{'AES-256-GCM seal+open 1 MiB':<28}{c['seal_us'] + c['open_us']:>10.1f}us{'':>24}"
          f"{c['seal_plus_open_GB_per_s']:>10.2f}")
    o = results["cpu_per_op_1KiB"]
    print(f"{'CPU per send, 1 KiB':<28}{o['send_cpu_us']:>10.1f}us   (min over repeats, one process)")
    print(f"{'CPU per recv, 1 KiB':<28}{o['recv_cpu_us']:>10.1f}us")
    print("(round-trip GB/s counts the tensor bytes moved both ways)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
