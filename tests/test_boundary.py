"""Tests of the encrypted trust boundary (taoism.boundary).

Real processes (tests/_boundary_peer.py) for round trips, growth, peer death and
wrong tokens; in-process channel pairs (handshake in a thread) for attacks on
frames, where the test plays the malicious host writing raw bytes to shared memory.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from taoism.boundary import (
    ChannelConfig,
    ChannelStatsSnapshot,
    Message,
    crypto,
    decode_frame,
    encode_frame,
    frame,
    new_launch_token,
    open_enclave_channel,
    open_host_channel,
    transport,
)
from taoism.errors import (
    BoundaryError,
    BoundaryTimeout,
    ConfigError,
    EnclaveCrashed,
    FrameError,
    HandshakeError,
    IntegrityError,
)

_PEER_PATH = Path(__file__).with_name("_boundary_peer.py")
_spec = importlib.util.spec_from_file_location("_boundary_peer", _PEER_PATH)
peer_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer_mod)

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
]
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (2, 3, 4), (1, 2, 1, 2, 1, 2, 1, 2)]
HDR = frame.HEADER_SIZE


def _sample(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(dtype)


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, i
        assert g.shape == w.shape, i
        assert torch.equal(g, w.cpu()), i


# ----------------------------------------------------------------------------- helpers


class Peer:
    """A host channel to a real enclave-side process running tests/_boundary_peer.py."""

    def __init__(
        self,
        *,
        peer_token: bytes | None = None,
        host_token: bytes | None = None,
        max_frame_bytes: int = 1 << 30,
        spin_us: float = 200.0,
        open_host: bool = True,
    ) -> None:
        host_sock, peer_sock = socket.socketpair()
        token = host_token or new_launch_token()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(_PEER_PATH),
                str(peer_sock.fileno()),
                str(max_frame_bytes),
                str(spin_us),
            ],
            pass_fds=[peer_sock.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        peer_sock.close()  # or the host would never see the peer's EOF
        self.proc.stdin.write((peer_token or token).hex() + "\n")
        self.proc.stdin.close()
        self.sock = host_sock
        self.chan = None
        if open_host:
            self.chan = open_host_channel(
                host_sock,
                token,
                config=ChannelConfig(
                    max_frame_bytes=max_frame_bytes,
                    spin_us=spin_us,
                    timeout_s=30.0,
                    handshake_timeout_s=60.0,
                ),
            )  # a loaded machine can take >10 s to start python + torch

    def echo(self, tensors, blob: bytes = b"", tag: int = 5) -> Message:
        self.chan.send(peer_mod.ECHO, tag, tensors, blob)
        return self.chan.recv()

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return rc, self.proc.stdout.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def echo_peer():
    peer = Peer()
    yield peer
    # Closing the host end must make the enclave side fail with a BoundaryError, not hang.
    peer.chan.close()
    try:
        rc, out = peer.finish()
    finally:
        peer.kill()
    assert rc == peer_mod.EXIT_HOST_CLOSED, out
    assert "HOST_CLOSED BoundaryError" in out


def _pair(
    host_config: ChannelConfig | None = None,
    enclave_config: ChannelConfig | None = None,
    host_token: bytes | None = None,
    enclave_token: bytes | None = None,
):
    """Open host and enclave channels in this process (the enclave handshake runs in a thread)."""
    a, b = socket.socketpair()
    token = new_launch_token()
    result: dict[str, object] = {}

    def enclave() -> None:
        try:
            result["enclave"] = open_enclave_channel(
                b, enclave_token or token, config=enclave_config or ChannelConfig(timeout_s=5.0)
            )
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            result["enclave_error"] = exc

    thread = threading.Thread(target=enclave)
    thread.start()
    try:
        host = open_host_channel(
            a, host_token or token, config=host_config or ChannelConfig(timeout_s=5.0)
        )
    except Exception as exc:  # noqa: BLE001
        result["host_error"] = exc
        host = None
    thread.join(timeout=20)
    assert not thread.is_alive()
    return host, result.get("enclave"), result


@pytest.fixture
def pair():
    host, enclave, result = _pair()
    assert host is not None and enclave is not None, result
    yield host, enclave
    host.close()
    enclave.close()


# ----------------------------------------------------------------------------- real-process round trips


def test_round_trip_every_dtype_and_shape(echo_peer):
    gen = torch.Generator().manual_seed(0)
    tensors = [_sample(d, s, gen) for d in DTYPES for s in SHAPES]
    blob = b'{"segment": 3, "note": "\xc3\xa9"}'
    msg = echo_peer.echo(tensors, blob, tag=0xFFFFFFFF)
    assert msg.kind == peer_mod.ECHO and msg.tag == 0xFFFFFFFF
    assert msg.blob == blob
    _assert_same(msg.tensors, tensors)


def test_round_trip_non_contiguous_inputs(echo_peer):
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    tensors = [
        base.t(),
        base[:, ::3],
        torch.randn(3, 1).expand(3, 4),
        torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        base[2],
    ]
    assert not all(t.is_contiguous() for t in tensors)
    msg = echo_peer.echo(tensors)
    _assert_same(msg.tensors, tensors)
    assert all(t.is_contiguous() for t in msg.tensors)


def test_received_tensors_are_private_and_writable(echo_peer):
    first = echo_peer.echo([torch.ones(1000)])
    second = echo_peer.echo([torch.zeros(1000)])  # reuses the same shared-memory slot
    assert torch.equal(first.tensors[0], torch.ones(1000))
    first.tensors[0].add_(1)  # a private, writable buffer
    assert torch.equal(first.tensors[0], torch.full((1000,), 2.0))
    assert torch.equal(second.tensors[0], torch.zeros(1000))


def test_no_tensors_blob_only_and_empty(echo_peer):
    assert echo_peer.echo([], b"hello").blob == b"hello"
    empty = echo_peer.echo([])
    assert empty.tensors == [] and empty.blob == b""


def test_large_frame_grows_shared_region(echo_peer):
    before = echo_peer.chan.stats.snapshot()
    big = torch.randn(3 << 20)  # 12 MiB > 4 MiB initial slot, on both directions
    msg = echo_peer.echo([big, torch.arange(10)], b"big")
    _assert_same(msg.tensors, [big, torch.arange(10)])
    assert echo_peer.chan._tr.outbound.capacity >= big.nbytes
    huge = torch.randn(5 << 20)  # grows again (20 MiB)
    _assert_same(echo_peer.echo([huge]).tensors, [huge])
    small = torch.randn(4)
    _assert_same(echo_peer.echo([small]).tensors, [small])
    after = echo_peer.chan.stats.snapshot()
    assert after.bytes_sent - before.bytes_sent > big.nbytes + huge.nbytes
    assert after.frames_recv - before.frames_recv == 3


def test_stats_count_frames_bytes_and_time(echo_peer):
    stats = echo_peer.chan.stats
    stats.reset()
    assert stats.snapshot() == ChannelStatsSnapshot(0, 0, 0, 0, 0.0, 0.0, 0.0)
    t = torch.randn(64, 64)
    for _ in range(3):
        echo_peer.echo([t])
    snap = stats.snapshot()
    expected_frame = HDR + frame.plan_body([t], 0).body_len + crypto.TAG_SIZE
    assert (snap.frames_sent, snap.frames_recv) == (3, 3)
    assert snap.bytes_sent == snap.bytes_recv == 3 * expected_frame
    assert snap.crypto_s > 0
    with pytest.raises(AttributeError):
        snap.frames_sent = 0  # frozen
    echo_peer.echo([t.t()])  # non-contiguous: a copy is counted
    assert stats.snapshot().copy_s > snap.copy_s


def test_recv_timeout_keeps_channel_usable(echo_peer):
    waited = echo_peer.chan.stats.wait_s
    t0 = time.perf_counter()
    with pytest.raises(BoundaryTimeout, match="timed out"):
        echo_peer.chan.recv(timeout=0.05)
    assert time.perf_counter() - t0 < 1.0
    assert echo_peer.chan.stats.wait_s - waited >= 0.045  # the wait is metered
    _assert_same(echo_peer.echo([torch.arange(3)]).tensors, [torch.arange(3)])


def test_peer_death_while_waiting_raises_enclave_crashed():
    peer = Peer()
    try:
        peer.chan.send(peer_mod.DIE, 0)
        t0 = time.perf_counter()
        with pytest.raises(EnclaveCrashed, match="closed the boundary socket"):
            peer.chan.recv(timeout=20.0)
        assert time.perf_counter() - t0 < 10.0
        with pytest.raises(EnclaveCrashed):
            peer.chan.send(peer_mod.ECHO, 0)
        assert peer.finish()[0] == 17
    finally:
        peer.kill()
        peer.chan.close()


def test_peer_death_while_writer_waits_for_slot():
    peer = Peer()
    try:
        chan = peer.chan
        chan.send(peer_mod.DIE_LATER, 0)
        chan.send(peer_mod.ECHO, 1, [torch.randn(10)])  # fills the slot; the peer never consumes it
        t0 = time.perf_counter()
        with pytest.raises(EnclaveCrashed):
            chan.send(
                peer_mod.ECHO, 2, [torch.randn(10)]
            )  # waits for the slot, then sees the death
        assert time.perf_counter() - t0 < 10.0
    finally:
        peer.kill()
        peer.chan.close()


def test_wrong_launch_token_fails_on_both_sides():
    peer = Peer(peer_token=new_launch_token(), open_host=False)
    try:
        with pytest.raises(HandshakeError, match="token"):
            open_host_channel(
                peer.sock, new_launch_token(), config=ChannelConfig(handshake_timeout_s=60.0)
            )
        rc, out = peer.finish()
        assert rc == peer_mod.EXIT_HANDSHAKE, out
        assert "HANDSHAKE_ERROR" in out and "token" in out
    finally:
        peer.kill()
        peer.sock.close()


# ----------------------------------------------------------------------------- in-process: attacks on frames


def _expect_failure(host, enclave, raw: bytes, error: type[Exception], match: str) -> None:
    host._send_raw(raw)
    with pytest.raises(error, match=match):
        enclave.recv(timeout=5)
    with pytest.raises(BoundaryError, match="unusable"):  # fail closed: no further use
        enclave.recv(timeout=0.01)


def test_tampered_ciphertext_byte_is_rejected(pair):
    host, enclave = pair
    raw = bytearray(host._seal_frame(1, 2, [torch.randn(16)], b"blob"))
    raw[HDR + 70] ^= 0x01
    _expect_failure(host, enclave, bytes(raw), IntegrityError, "authentication")


def test_tampered_gcm_tag_is_rejected(pair):
    host, enclave = pair
    raw = bytearray(host._seal_frame(1, 2, [torch.randn(16)]))
    raw[-1] ^= 0x80
    _expect_failure(host, enclave, bytes(raw), IntegrityError, "authentication")


@pytest.mark.parametrize("offset", [6, 8, 12, 24])  # kind, tag, n_tensors, blob_len
def test_tampered_header_byte_is_rejected(pair, offset):
    host, enclave = pair
    raw = bytearray(host._seal_frame(1, 2, [torch.randn(16)], b"x"))
    raw[offset] ^= 0x01
    _expect_failure(
        host,
        enclave,
        bytes(raw),
        (IntegrityError, FrameError),
        "authentication|inconsistent|length",
    )


def test_tampered_magic_is_a_frame_error(pair):
    host, enclave = pair
    raw = bytearray(host._seal_frame(1, 2, [torch.randn(4)]))
    raw[0:4] = b"EVIL"
    _expect_failure(host, enclave, bytes(raw), FrameError, "bad magic")


def test_truncated_frame_is_rejected(pair):
    host, enclave = pair
    raw = host._seal_frame(1, 2, [torch.randn(16)])
    _expect_failure(host, enclave, raw[:-3], FrameError, "truncated")


def test_frame_shorter_than_header_is_rejected(pair):
    host, enclave = pair
    _expect_failure(host, enclave, b"TAO1\x01\x00", FrameError, "truncated|body_len|bad magic")


def test_oversized_header_length_rejected_before_allocation(pair):
    host, enclave = pair
    raw = bytearray(host._seal_frame(1, 2, [torch.randn(4)]))
    struct.pack_into("<Q", raw, 32, 1 << 50)  # body_len = 1 PiB
    _expect_failure(
        host, enclave, bytes(raw), FrameError, "body_len=1125899906842624.*exceeds the maximum"
    )


def _descriptor(code: int, ndim: int, nbytes: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack("<BBHIQ", code, ndim, 0, 0, nbytes) + struct.pack(f"<{len(shape)}Q", *shape)


def _body(desc: bytes, data: bytes) -> bytes:
    return desc + bytes(frame.align_up(len(desc)) - len(desc)) + data


def test_unknown_dtype_code_is_rejected(pair):
    host, enclave = pair
    raw = host._seal_body(1, 0, _body(_descriptor(99, 1, 8, (2,)), bytes(8)), 1, 0)
    _expect_failure(host, enclave, raw, FrameError, "unknown dtype code 99")


def test_ndim_above_8_is_rejected(pair):
    host, enclave = pair
    raw = host._seal_body(1, 0, _body(_descriptor(1, 9, 4, (1,) * 9), bytes(4)), 1, 0)
    _expect_failure(host, enclave, raw, FrameError, "ndim=9 exceeds")


def test_shape_nbytes_mismatch_is_rejected(pair):
    host, enclave = pair
    raw = host._seal_body(1, 0, _body(_descriptor(1, 2, 16, (2, 3)), bytes(16)), 1, 0)
    _expect_failure(host, enclave, raw, FrameError, "nbytes=16")


def test_parts_not_summing_to_body_length_is_rejected(pair):
    host, enclave = pair
    raw = host._seal_body(
        1, 0, _body(_descriptor(1, 1, 8, (2,)), bytes(8 + 64)), 1, 0
    )  # trailing junk
    _expect_failure(host, enclave, raw, FrameError, "body length mismatch")


def test_reserved_descriptor_bytes_must_be_zero(pair):
    host, enclave = pair
    desc = struct.pack("<BBHIQ", 1, 1, 7, 0, 8) + struct.pack("<Q", 2)
    raw = host._seal_body(1, 0, _body(desc, bytes(8)), 1, 0)
    _expect_failure(host, enclave, raw, FrameError, "reserved")


def test_replayed_frame_is_rejected(pair):
    host, enclave = pair
    raw = host._seal_frame(1, 2, [torch.arange(4)])
    host._send_raw(raw)
    _assert_same(enclave.recv(timeout=5).tensors, [torch.arange(4)])
    _expect_failure(host, enclave, raw, IntegrityError, "replayed")


def test_reordered_frames_are_rejected(pair):
    host, enclave = pair
    first = host._seal_frame(1, 0, [torch.arange(4)])
    second = host._seal_frame(1, 1, [torch.arange(5)])
    assert first != second
    _expect_failure(host, enclave, second, IntegrityError, "reordered")


def test_frame_from_another_session_is_rejected(pair):
    host, enclave = pair
    other_host, other_enclave, _ = _pair()
    try:
        raw = other_host._seal_frame(1, 0, [torch.arange(4)])  # seq 0, like the expected one
        _expect_failure(host, enclave, raw, IntegrityError, "authentication")
    finally:
        other_host.close()
        other_enclave.close()


def test_attacks_on_the_host_side_too(pair):
    host, enclave = pair
    raw = bytearray(enclave._seal_frame(1, 2, [torch.randn(8)]))
    raw[-5] ^= 0x10
    _expect_failure(enclave, host, bytes(raw), IntegrityError, "authentication")


def test_valid_raw_frame_is_accepted(pair):
    """Control for the attack tests: the raw-injection hook itself produces acceptable frames."""
    host, enclave = pair
    t = torch.randn(3, 5)
    host._send_raw(host._seal_frame(9, 77, [t], b"ok"))
    msg = enclave.recv(timeout=5)
    assert (msg.kind, msg.tag, msg.blob) == (9, 77, b"ok")
    _assert_same(msg.tensors, [t])


# ----------------------------------------------------------------------------- in-process: channel behaviour


def test_snapshot_ciphertext_option_round_trips_and_still_authenticates():
    cfg = ChannelConfig(snapshot_ciphertext=True, timeout_s=5.0)
    host, enclave, result = _pair(cfg, cfg)
    assert host is not None and enclave is not None, result
    try:
        t = torch.randn(5, 7)
        host.send(2, 3, [t], b"s")
        _assert_same(enclave.recv().tensors, [t])
        raw = bytearray(host._seal_frame(1, 2, [torch.randn(16)]))
        raw[HDR + 3] ^= 0x04
        _expect_failure(host, enclave, bytes(raw), IntegrityError, "authentication")
    finally:
        host.close()
        enclave.close()


def test_blocking_waits_with_spin_zero_in_both_directions():
    cfg = ChannelConfig(spin_us=0, timeout_s=10.0, initial_capacity=4096, block_slice_s=0.002)
    host, enclave, result = _pair(cfg, cfg)
    assert host is not None and enclave is not None, result
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            for _ in range(100):
                m = enclave.recv()
                enclave.send(m.kind, m.tag + 1, m.tensors, m.blob)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        for i in range(100):
            t = torch.full(
                (i * 97,), float(i)
            )  # crosses the 4 KiB slot: grows under blocking waits
            host.send(1, i, [t])
            msg = host.recv()
            assert msg.tag == i + 1
            _assert_same(msg.tensors, [t])
    finally:
        thread.join(timeout=20)
        host.close()
        enclave.close()
    assert not errors, errors


def test_doorbell_wakes_a_blocked_reader_at_once():
    cfg = ChannelConfig(
        spin_us=0, timeout_s=10.0, block_slice_s=2.0
    )  # a missed doorbell would cost 2 s
    host, enclave, result = _pair(cfg, cfg)
    assert host is not None and enclave is not None, result
    got: list[float] = []

    def serve() -> None:
        enclave.recv()
        got.append(time.perf_counter())

    thread = threading.Thread(target=serve)
    try:
        thread.start()
        time.sleep(0.1)  # the enclave is now blocked in poll()
        t0 = time.perf_counter()
        host.send(1, 3, [torch.arange(3)])
        thread.join(timeout=10)
        assert got and got[0] - t0 < 0.5
    finally:
        host.close()
        enclave.close()


def test_nudge_wakes_a_blocked_reader_which_spins_again_then_sleeps():
    """``nudge`` rings only for a peer that is blocked; the woken peer polls (flag cleared) for
    its spin time, blocks again, and still takes the next frame."""
    from taoism.boundary.transport import _RSLEEP  # the peer's reader_sleeping flag

    host_cfg = ChannelConfig(spin_us=0, timeout_s=10.0)
    enc_cfg = ChannelConfig(spin_us=100_000, timeout_s=10.0, block_slice_s=5.0)
    host, enclave, result = _pair(host_cfg, enc_cfg)
    assert host is not None and enclave is not None, result
    sleeping = lambda: host._tr.outbound.ctl[_RSLEEP] == 1  # noqa: E731

    def until(cond, limit: float) -> bool:
        end = time.perf_counter() + limit
        while not cond():
            if time.perf_counter() > end:
                return False
            time.sleep(0.001)
        return True

    got: list[Message] = []
    thread = threading.Thread(target=lambda: got.append(enclave.recv()))
    try:
        assert host.nudge() is False  # nobody waits yet
        thread.start()
        assert until(sleeping, 5.0), "the enclave never blocked"
        assert host.nudge() is True
        assert until(lambda: not sleeping(), 2.0), "the nudge did not wake the enclave"
        assert host.nudge() is False  # awake and spinning: no doorbell
        assert until(sleeping, 5.0), "the woken enclave never blocked again"
        assert not got  # woken without a frame: it kept waiting
        host.send(1, 7, [torch.arange(5)])
        thread.join(timeout=10)
        assert got and got[0].tag == 7
        _assert_same(got[0].tensors, [torch.arange(5)])
    finally:
        host.close()
        enclave.close()


def test_missed_doorbell_costs_one_slice_and_never_hangs():
    cfg = ChannelConfig(spin_us=0, timeout_s=5.0, block_slice_s=0.01)
    host, enclave, result = _pair(cfg, cfg)
    assert host is not None and enclave is not None, result
    host._tr._ring = lambda: None  # the host "forgets" every doorbell
    got: list[Message] = []
    thread = threading.Thread(target=lambda: got.append(enclave.recv()))
    try:
        thread.start()
        time.sleep(0.05)  # the enclave is now blocked in poll()
        t0 = time.perf_counter()
        host.send(1, 3, [torch.arange(3)])
        thread.join(timeout=5)
        assert got and got[0].tag == 3
        assert time.perf_counter() - t0 < 1.0
    finally:
        host.close()
        enclave.close()


def test_wrong_token_in_process_fails_on_both_sides():
    host, enclave, result = _pair(host_token=new_launch_token(), enclave_token=new_launch_token())
    assert host is None and enclave is None
    assert isinstance(result["host_error"], HandshakeError)
    assert "enclave failed peer authentication" in str(result["host_error"])  # the host's own check
    assert isinstance(result["enclave_error"], HandshakeError)
    assert "token" in str(result["enclave_error"])


def test_enclave_rejects_a_host_without_the_token():
    """A rogue host that skips its own checks and answers with a forged proof."""
    a, b = socket.socketpair()
    token = new_launch_token()
    result: dict[str, BaseException] = {}

    def enclave() -> None:
        try:
            open_enclave_channel(b, token, config=ChannelConfig(handshake_timeout_s=5.0))
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=enclave)
    thread.start()
    try:
        a.sendall(
            crypto._HS.pack(crypto._HS_MAGIC, crypto._HS_VERSION, crypto._HELLO, 64)
            + bytes(range(64))
        )
        crypto._recv_msg(a, crypto._REPLY, 128, time.monotonic() + 5)
        a.sendall(
            crypto._HS.pack(crypto._HS_MAGIC, crypto._HS_VERSION, crypto._FINISH, 64) + bytes(64)
        )
        thread.join(timeout=10)
        assert isinstance(result.get("error"), HandshakeError)
        assert "host failed peer authentication" in str(result["error"])
        with pytest.raises(HandshakeError, match="peer aborted"):
            crypto._recv_msg(a, crypto._ACK, 0, time.monotonic() + 5)
    finally:
        a.close()
        b.close()


def test_handshake_times_out_when_peer_is_silent():
    a, b = socket.socketpair()
    try:
        t0 = time.perf_counter()
        with pytest.raises(HandshakeError, match="timed out"):
            open_host_channel(a, new_launch_token(), config=ChannelConfig(handshake_timeout_s=0.2))
        assert time.perf_counter() - t0 < 2.0
    finally:
        a.close()
        b.close()


def test_handshake_fails_fast_when_peer_closes():
    a, b = socket.socketpair()
    b.close()
    t0 = time.perf_counter()
    with pytest.raises(HandshakeError, match="closed"):
        open_host_channel(a, new_launch_token(), config=ChannelConfig(handshake_timeout_s=10.0))
    assert time.perf_counter() - t0 < 2.0
    assert a.fileno() == -1  # a failed open closes the socket


def test_sessions_have_fresh_keys():
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    token = new_launch_token()
    out = {}
    threads = [
        threading.Thread(
            target=lambda s=s, k=k: out.__setitem__(k, crypto.enclave_handshake(s, token, 5))
        )
        for s, k in ((b1, 1), (b2, 2))
    ]
    for t in threads:
        t.start()
    h1 = crypto.host_handshake(a1, token, 5)
    h2 = crypto.host_handshake(a2, token, 5)
    for t in threads:
        t.join()
    assert h1 == out[1] and h2 == out[2]  # both sides derived the same keys
    assert h1.host_to_enclave != h2.host_to_enclave and h1.enclave_to_host != h2.enclave_to_host
    assert h1.host_to_enclave != h1.enclave_to_host
    assert "host_to_enclave" not in repr(h1) and "confirm" not in repr(h1)  # keys never printed
    for s in (a1, b1, a2, b2):
        s.close()


def test_region_larger_than_reader_maximum_is_refused():
    host, enclave, result = _pair(
        ChannelConfig(max_frame_bytes=64 << 20, initial_capacity=1 << 20, timeout_s=5.0),
        ChannelConfig(max_frame_bytes=8 << 20, initial_capacity=1 << 20, timeout_s=5.0),
    )
    assert host is not None and enclave is not None, result
    try:
        host.send(
            1, 0, [torch.zeros(4 << 20, dtype=torch.uint8)]
        )  # 4 MiB: fits the enclave's maximum
        assert enclave.recv().tensors[0].numel() == 4 << 20
        host.send(1, 0, [torch.zeros(16 << 20, dtype=torch.uint8)])
        with pytest.raises(FrameError, match="announced a 33558528-byte shared-memory region"):
            enclave.recv()  # refused before mapping it
    finally:
        host.close()
        enclave.close()


def _can_seal() -> bool:
    fd, sealed = transport._create_fd(8192)
    os.close(fd)
    return sealed


@pytest.mark.skipif(not _can_seal(), reason="this kernel cannot seal memfds")
def test_unsealed_region_from_peer_is_refused(pair):
    host, enclave = pair
    fd = os.memfd_create("unsealed")  # a peer that could shrink the file under our mapping
    try:
        size = transport.CTL_BYTES + (1 << 16)
        os.ftruncate(fd, size)
        socket.send_fds(host._tr._sock, [struct.pack("<IIQ", transport.REC_REGION, 1, size)], [fd])
    finally:
        os.close(fd)
    tr = host._tr
    tr.outbound.ctl[1] = transport.MOVED  # "moved to the region I just sent"
    tr._out_pub += 1
    tr.outbound.ctl[0] = tr._out_pub
    with pytest.raises(BoundaryError, match="not sealed"):
        enclave.recv(timeout=5)


def test_send_rejects_bad_input_without_breaking_the_channel(pair):
    host, enclave = pair
    with pytest.raises(FrameError, match="complex64"):
        host.send(1, 0, [torch.zeros(2, dtype=torch.complex64)])
    with pytest.raises(FrameError, match="expected a torch.Tensor"):
        host.send(1, 0, [[1.0, 2.0]])
    with pytest.raises(FrameError, match="kind"):
        host.send(1 << 16, 0)
    with pytest.raises(FrameError, match="tag"):
        host.send(1, -1)
    with pytest.raises(FrameError, match="dimensions"):
        host.send(1, 0, [torch.zeros((1,) * 9)])
    with pytest.raises(FrameError, match="layout"):
        host.send(1, 0, [torch.eye(3).to_sparse()])
    with pytest.raises(FrameError, match="blob must be bytes"):
        host.send(1, 0, blob="text")
    host.send(1, 0, blob=bytearray(b"ba"))  # bytes-like blobs are fine
    assert enclave.recv(timeout=5).blob == b"ba"
    small = ChannelConfig(max_frame_bytes=1 << 16)
    h2, e2, _ = _pair(small, small)
    try:
        with pytest.raises(FrameError, match="max_frame_bytes"):
            h2.send(1, 0, [torch.zeros(1 << 16, dtype=torch.uint8)])
        h2.send(1, 0, [torch.ones(10)])
        _assert_same(e2.recv(timeout=5).tensors, [torch.ones(10)])
    finally:
        h2.close()
        e2.close()
    host.send(1, 0, [torch.ones(2)])
    _assert_same(enclave.recv(timeout=5).tensors, [torch.ones(2)])


def test_closed_channel_refuses_use(pair):
    host, enclave = pair
    host.close()
    host.close()  # idempotent
    with pytest.raises(BoundaryError, match="closed"):
        host.send(1, 0)
    with pytest.raises(BoundaryError, match="closed the boundary socket"):
        enclave.recv(timeout=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spin_us=-1),
        dict(max_frame_bytes=0),
        dict(block_slice_s=0),
        dict(max_frame_bytes=1024),
        dict(initial_capacity=0),
        dict(timeout_s=-2.0),
    ],
)
def test_channel_config_validation(kwargs):
    with pytest.raises(ConfigError):
        ChannelConfig(**kwargs)


def test_launch_token_validation():
    a, b = socket.socketpair()
    try:
        with pytest.raises(ConfigError, match="launch_token"):
            open_host_channel(a, b"short")
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- frame format (plaintext)


def test_plain_frame_round_trip_and_layout():
    gen = torch.Generator().manual_seed(1)
    tensors = [_sample(d, (2, 3), gen) for d in DTYPES]
    raw = encode_frame(7, 8, 9, tensors, b"meta")
    header, decoded, blob = decode_frame(raw, 1 << 20)
    assert (header.kind, header.tag, header.seq, header.n_tensors, blob) == (
        7,
        8,
        9,
        len(DTYPES),
        b"meta",
    )
    _assert_same(decoded, tensors)
    plan = frame.plan_body(tensors, 4)
    assert all(off % frame.ALIGN == 0 for *_, off in plan.entries)
    assert len(raw) == HDR + plan.body_len


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r.__setitem__(slice(0, 4), b"XXXX"), "bad magic"),
        (lambda r: struct.pack_into("<H", r, 4, 1), "unsupported frame version 1"),
        (lambda r: struct.pack_into("<I", r, 12, 70000), "n_tensors=70000"),
        (lambda r: struct.pack_into("<Q", r, 24, 10**6), "blob_len"),
        (lambda r: struct.pack_into("<Q", r, 32, 10**9), "exceeds the maximum"),
        (lambda r: r.extend(b"\0"), "truncated or padded"),
        (lambda r: r.__delitem__(slice(-1, None)), "truncated or padded"),
    ],
)
def test_plain_frame_header_validation(mutate, match):
    raw = encode_frame(1, 2, 3, [torch.randn(4)], b"b")
    mutate(raw)
    with pytest.raises(FrameError, match=match):
        decode_frame(raw, 1 << 20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_copied_to_host_and_metered(pair):
    host, enclave = pair
    t = torch.randn(64, 33, device="cuda")
    tensors = [
        t,
        t.t(),
        torch.arange(5, device="cuda"),
        torch.ones(3, device="cuda", dtype=torch.bfloat16),
    ]
    host.stats.reset()
    host.send(1, 0, tensors)
    msg = enclave.recv(timeout=10)
    _assert_same(msg.tensors, tensors)
    assert all(x.device.type == "cpu" for x in msg.tensors)
    assert host.stats.copy_s > 0


# ----------------------------------------------------------------------------- request ids and threads


def test_reply_with_a_wrong_request_id_is_refused(pair):
    from taoism.errors import ReplyMismatchError

    host, enclave = pair
    rid = host.send(1, 0, [torch.arange(3)])
    assert enclave.recv(timeout=5).request_id == rid
    enclave.send(11, 0, [torch.arange(3)], reply_to=rid + 1)
    with pytest.raises(
        ReplyMismatchError, match=f"request id {rid + 1}.*oldest unanswered request is {rid}"
    ):
        host.recv(timeout=5)
    with pytest.raises(BoundaryError, match="unusable.*ReplyMismatchError"):
        host.send(1, 0)


def test_unsolicited_reply_is_refused(pair):
    from taoism.errors import ReplyMismatchError

    host, enclave = pair
    enclave.send(11, 0, [torch.ones(2)])
    with pytest.raises(ReplyMismatchError, match="no request is waiting"):
        host.recv(timeout=5)


def test_reply_echoes_the_request_id_by_default(pair):
    host, enclave = pair
    for i in range(3):
        rid = host.send(1, i, [torch.full((2,), float(i))])
        msg = enclave.recv(timeout=5)
        assert msg.request_id == rid == i + 1
        assert enclave.send(11, msg.tag, msg.tensors) == rid
        reply = host.recv(timeout=5, expect=rid)
        assert reply.request_id == rid and reply.tag == i


def test_request_from_many_threads_pairs_every_reply_with_its_request(echo_peer):
    n_threads, n_calls = 8, 40
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(n_calls):
                x = torch.full((64 + k,), float(1000 * k + i))
                reply = echo_peer.chan.request(peer_mod.ECHO, k, [x], timeout=30)
                assert reply.tag == k and torch.equal(reply.tensors[0], x), (k, i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)


def test_concurrent_senders_never_repeat_a_sequence_number(pair):
    host, enclave = pair
    n_threads, n_each = 4, 50
    got: list[int] = []

    def reader() -> None:
        for _ in range(n_threads * n_each):
            got.append(
                int(enclave.recv(timeout=20).tensors[0])
            )  # raises on any repeated or skipped seq

    r = threading.Thread(target=reader)
    r.start()
    senders = [
        threading.Thread(
            target=lambda k=k: [
                host.send(1, 0, [torch.tensor(k * 1000 + i)]) for i in range(n_each)
            ]
        )
        for k in range(n_threads)
    ]
    for t in senders:
        t.start()
    for t in senders + [r]:
        t.join(timeout=60)
    assert sorted(got) == sorted(k * 1000 + i for k in range(n_threads) for i in range(n_each))
    assert host._sealer.next_seq == enclave._opener.next_seq == n_threads * n_each


def test_request_timeout_leaves_the_channel_unusable_not_out_of_step(pair):
    host, enclave = pair
    with pytest.raises(BoundaryTimeout):
        host.request(1, 0, [torch.ones(2)], timeout=0.05)
    enclave.recv(timeout=5)
    enclave.send(11, 0, [torch.ones(2)])  # the late reply must never reach a later request
    with pytest.raises(BoundaryError, match="unusable.*BoundaryTimeout"):
        host.request(1, 0, [torch.ones(2)], timeout=5)


# ----------------------------------------------------------------------------- memory hygiene


def _runs_found(secret: torch.Tensor, buffers) -> int:
    """How many 64-byte runs of ``secret``'s bytes occur in any of ``buffers``."""
    data = secret.numpy().tobytes()
    runs = [data[i : i + 64] for i in range(0, len(data) - 63, 64)]
    blobs = [bytes(b) for b in buffers]
    return sum(any(r in b for b in blobs) for r in runs)


def _host_buffers(chan) -> list:
    return [chan._staging, chan._tr.outbound.data, chan._tr.inbound.data]


@pytest.mark.parametrize("secret", [False, True])
def test_no_plaintext_run_of_a_sent_tensor_stays_in_host_buffers(pair, secret):
    host, enclave = pair
    weights = torch.randn(5120)  # 20 KiB, e.g. ResNet-18's fc: below the streaming threshold
    host.send(1, 0, [weights], b'{"tensors": ["fc.weight"]}', secret=secret)
    msg = enclave.recv(timeout=5)
    assert (
        _runs_found(weights, [msg.tensors[0].numpy()]) == 320
    )  # positive control: the scan finds them
    assert _runs_found(weights, _host_buffers(host)) == 0
    assert not any(host._staging)  # the staging buffer is wiped after use


class _FailingAead:
    """Stands in for AESGCM to make the send fail after the body was laid out in shared memory."""

    def encrypt_into(self, *args: object) -> None:
        raise RuntimeError("encryption failed (test)")


@pytest.mark.parametrize("wipe", [True, False])
def test_a_send_failing_before_encryption_leaves_no_plaintext(monkeypatch, wipe):
    """With the wipe: no run found; without it (control): the scan finds every run, so it can fail.

    The pure-Python path (whose AEAD ``_FailingAead`` replaces); the compiled one lays out and
    encrypts in one C call, which wipes the body itself if OpenSSL fails.
    """
    from taoism.boundary import channel as channel_mod

    if not wipe:
        monkeypatch.setattr(channel_mod, "_memset", lambda *a: None)
    pure = ChannelConfig(timeout_s=5.0, compiled=False)
    host, enclave, _ = _pair(pure, pure)
    try:
        host._sealer.aead = _FailingAead()
        weights = torch.randn(5120)
        with pytest.raises(RuntimeError, match="encryption failed"):
            host.send(1, 0, [weights])
        assert _runs_found(weights, _host_buffers(host)) == (0 if wipe else 320)
    finally:
        host.close()
        enclave.close()


def test_staging_is_wiped_before_it_is_grown(pair):
    host, enclave = pair
    old = host._staging  # keep the old buffer alive to look at it after the growth
    blob = os.urandom(
        100_000
    )  # a streamed frame's descriptors + blob pass through staging: grows 64 KiB
    host.send(1, 0, [torch.randn(4096)], blob, secret=True)
    assert enclave.recv(timeout=5).blob == blob
    assert host._staging is not old and host.staging_bytes > len(old)
    assert not any(old) and not any(host._staging)


def test_spin_rules_spin_long_only_where_a_core_is_free():
    from taoism.config import EnclaveConfig

    cfg = EnclaveConfig()
    # the enclave: 1 host thread + 1 enclave thread on 2 CPUs leaves a core for it
    assert cfg.enclave_spin(host_threads=1, cpus=2) == 5000
    assert cfg.enclave_spin(host_threads=2, cpus=2) == cfg.spin_us
    # the host's one waiting thread + the enclave's threads x sessions
    assert cfg.host_spin(cpus=2) == 2000
    assert EnclaveConfig(threads=2).host_spin(cpus=2) == cfg.spin_us
    assert EnclaveConfig(sessions=2).host_spin(cpus=2) == cfg.spin_us
    assert EnclaveConfig(sessions=2).host_spin(cpus=4) == 2000
    # spin_us=0 (block at once) and explicit values win over the rules
    assert EnclaveConfig(spin_us=0).host_spin(cpus=16) == 0
    assert EnclaveConfig(spin_us=0).enclave_spin(host_threads=1, cpus=16) == 0
    assert EnclaveConfig(host_spin_us=7, enclave_spin_us=9).host_spin(cpus=2) == 7
    assert EnclaveConfig(host_spin_us=7, enclave_spin_us=9).enclave_spin(1, 2) == 9
    for bad in (dict(host_spin_us=-1), dict(enclave_spin_us=-1)):
        with pytest.raises(ConfigError, match="spin_us must be >= 0"):
            EnclaveConfig(**bad)
