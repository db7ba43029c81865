"""Shared-memory transport between exactly two processes joined by an AF_UNIX socket pair.

Each direction has one shared-memory region (``memfd_create``; fallback an
unlinked file in ``/dev/shm``) created by its *writer* and passed to the reader
with SCM_RIGHTS. A region is a 4 KiB control block followed by one frame slot::

    u64[0]  published   events published by the writer (frames and "moved" notices)
    u64[1]  frame_len   length of the published frame, or MOVED
    u64[8]  consumed    events the reader has finished with (flow control)
    u64[16] reader_sleeping   u64[24] writer_sleeping
    u64[32] region magic      u64[33] data capacity

(fields written by different sides sit on different cache lines). Regions are
sealed memfds (F_SEAL_SHRINK|GROW|SEAL) where the kernel allows, and a reader
that can seal refuses unsealed regions, so a peer cannot truncate a region
under the other's mapping.

Waiting is spin-then-block: spin on the counter for ``spin_s`` (calling
``sched_yield`` every ~128 polls, so a peer sharing an oversubscribed CPU still
gets to run), then set the sleeping flag, re-check, and block in ``poll()`` on
the socket (``select`` semantics, without its fd-number limit) for a doorbell
record the other side sends only when it sees the flag (a doorbell that brings no
frame, from ``nudge``, clears the flag and starts a new spin). Blocks last at most
``block_slice_s`` and re-check the counter, so a doorbell lost to store/load
reordering costs one slice and never hangs. The protocol relies on x86-64 total
store order (stores become visible in program order); a port to a weaker memory
model needs fences. Only one frame per direction is in flight: the writer waits
(same spin-then-block) until the reader has consumed the previous one.

Socket records after the handshake are 16 bytes, typed: DOORBELL, or REGION
(generation, size; carries the region's fd). A frame larger than the slot makes
the writer create a bigger region (next power of two, capped by
``max_frame_bytes``), send its REGION record, and publish a MOVED notice in the
old region; the reader validates the announced size against its own maximum
before mapping it.
"""

from __future__ import annotations

import array
import collections
import ctypes
import errno
import fcntl
import mmap
import os
import select
import socket
import stat
import struct
import tempfile
import time
from typing import Any

from taoism.errors import BoundaryError, BoundaryTimeout, FrameError

CTL_BYTES = 4096
_PUB, _LEN, _CONSUMED, _RSLEEP, _WSLEEP, _MAGIC, _CAP = 0, 1, 8, 16, 24, 32, 33
_REGION_MAGIC = int.from_bytes(b"TAOREGN1", "little")
MOVED = (1 << 64) - 1
_REC = struct.Struct("<IIQ")  # type, generation, size
REC_SIZE = _REC.size
REC_DOORBELL = 0x4C4C4244  # "DBLL"
REC_REGION = 0x4E474552  # "REGN"
_DOORBELL = _REC.pack(REC_DOORBELL, 0, 0)
_MIN_CAPACITY = 4096
_YIELD_EVERY = 127  # spin iterations (~10-20 us) between sched_yield() calls
_ANC_SPACE = socket.CMSG_SPACE(16 * 4)
_RECV_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class _Region:
    """One mapped shared-memory region."""

    __slots__ = ("mm", "view", "ctl", "data", "data_addr", "capacity", "gen")

    def __init__(self, fd: int, size: int, gen: int) -> None:
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mm)
        self.ctl = self.view[:CTL_BYTES].cast("Q")
        self.data = self.view[CTL_BYTES:]
        probe = ctypes.c_char.from_buffer(self.mm)  # only to learn the address; released at once
        self.data_addr = (
            ctypes.addressof(probe) + CTL_BYTES
        )  # address of data[0] (valid while mapped)
        del probe
        self.capacity = size - CTL_BYTES
        self.gen = gen

    def close(self) -> None:
        for mv in (self.ctl, self.data, self.view):
            mv.release()
        try:
            self.mm.close()
        except BufferError:  # a slice is still referenced somewhere; the GC unmaps it later
            pass


_SEALS = (
    getattr(fcntl, "F_SEAL_SHRINK", 0)
    | getattr(fcntl, "F_SEAL_GROW", 0)
    | getattr(fcntl, "F_SEAL_SEAL", 0)
)


def _create_fd(size: int) -> tuple[int, bool]:
    """A shared-memory fd of ``size`` bytes, and whether its size is sealed.

    A memfd is sealed against shrinking/growing, so the peer cannot truncate it
    under our mapping (which would crash us with SIGBUS); the fallback is an
    unlinked file in /dev/shm.
    """
    sealed = False
    try:
        fd = os.memfd_create(
            "taoism-boundary", os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0)
        )
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(prefix="taoism-boundary-", dir="/dev/shm")
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
        if _SEALS and hasattr(fcntl, "F_ADD_SEALS"):
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
                sealed = True
            except OSError:
                pass
    except OSError:
        os.close(fd)
        raise
    return fd, sealed


def _is_size_sealed(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except (AttributeError, OSError):
        return False


def region_size_for(frame_len: int, max_frame_bytes: int) -> int:
    """Total region size (control block + slot) to hold ``frame_len`` bytes: next power of two."""
    cap = max(_MIN_CAPACITY, 1 << (frame_len - 1).bit_length())
    return CTL_BYTES + min(cap, max_frame_bytes)


class ShmTransport:
    """One end of the two-region shared-memory transport (not thread-safe).

    ``peer_closed_error`` is the exception class raised when the peer closes
    the socket (e.g. ``EnclaveCrashed`` on the host side).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        initial_capacity: int,
        max_frame_bytes: int,
        spin_s: float,
        block_slice_s: float,
        peer_closed_error: type[Exception],
        stats: Any = None,
    ) -> None:
        self._sock = sock
        self._fileno = sock.fileno()
        self._max = max_frame_bytes
        self._initial = min(initial_capacity, max_frame_bytes)
        self.spin_s = spin_s
        self._slice = block_slice_s
        self._peer_closed_error = peer_closed_error
        self._stats = stats
        self._poll = select.poll()
        self._poll.register(self._fileno, select.POLLIN)
        self._inbox = bytearray()
        self._fds: collections.deque[int] = collections.deque()
        self._regions: collections.deque[tuple[int, int, int]] = (
            collections.deque()
        )  # gen, size, fd
        self._eof = False
        self.outbound: _Region | None = None
        self.inbound: _Region | None = None
        self._out_pub = 0
        self._in_seen = 0
        self._closed = False
        self._require_seals = False

    # ------------------------------------------------------------------ setup

    def establish(self, deadline: float) -> None:
        """Create our outbound region, send it, and map the peer's (``deadline`` on perf_counter)."""
        self.outbound = self._new_out_region(CTL_BYTES + max(_MIN_CAPACITY, self._initial), 0)
        self.inbound = self._map_next_region(0, deadline)

    def _new_out_region(self, size: int, gen: int) -> _Region:
        fd, sealed = _create_fd(size)
        self._require_seals = (
            self._require_seals or sealed
        )  # this kernel can seal: demand it of the peer
        try:
            region = _Region(fd, size, gen)
            region.ctl[_MAGIC] = _REGION_MAGIC
            region.ctl[_CAP] = region.capacity
            try:
                socket.send_fds(self._sock, [_REC.pack(REC_REGION, gen, size)], [fd])
            except OSError as exc:
                region.close()
                raise self._closed_error("sending a shared-memory region") from exc
            return region
        finally:
            os.close(fd)

    def _map_next_region(self, gen: int, deadline: float | None) -> _Region:
        while not self._regions:
            if self._eof:
                raise self._closed_error("waiting for a shared-memory region")
            self._pump(self._remaining(deadline, "a shared-memory region from the peer"))
        rgen, size, fd = self._regions.popleft()
        try:
            if rgen != gen:
                raise BoundaryError(
                    f"peer announced shared-memory region generation {rgen}, expected {gen}"
                )
            limit = region_size_for(self._max, self._max)
            if size > limit or size < CTL_BYTES + _MIN_CAPACITY:
                raise FrameError(
                    f"peer announced a {size}-byte shared-memory region; this side accepts "
                    f"{CTL_BYTES + _MIN_CAPACITY}..{limit} bytes (max_frame_bytes={self._max}). "
                    "Use the same ChannelConfig.max_frame_bytes on both sides."
                )
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                raise BoundaryError(
                    f"shared-memory region fd is {st.st_size} bytes, announced {size}"
                )
            if self._require_seals and not _is_size_sealed(fd):
                raise BoundaryError(
                    "the peer's shared-memory region is not sealed against shrinking "
                    "(F_SEAL_SHRINK): it could be truncated under our mapping"
                )
            region = _Region(fd, size, gen)
        finally:
            os.close(fd)
        if region.ctl[_MAGIC] != _REGION_MAGIC or region.ctl[_CAP] != region.capacity:
            region.close()
            raise BoundaryError("shared-memory region from the peer has a bad control block")
        return region

    # ------------------------------------------------------------------ socket records

    def _closed_error(self, while_doing: str) -> Exception:
        return self._peer_closed_error(
            f"the peer closed the boundary socket while {while_doing} "
            "(the other process exited or crashed)"
        )

    def _remaining(self, deadline: float | None, what: str) -> float:
        if deadline is None:
            return self._slice
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise BoundaryTimeout(
                f"timed out waiting for {what}; the peer may be busy or stuck "
                "(raise the timeout, or check the other process)"
            )
        return min(self._slice, remaining)

    def _pump(self, wait_s: float) -> bool:
        """Block up to ``wait_s`` for socket records and process all that arrived; whether any did."""
        if self._eof:
            time.sleep(wait_s)
            return False
        if not self._poll.poll(wait_s * 1000.0):
            return False
        while True:
            try:
                data, fds = self._recv_records()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                self._eof = True
                break
            self._fds.extend(fds)
            if not data:
                self._eof = True
                break
            self._inbox += data
        inbox = self._inbox
        n = len(inbox) - len(inbox) % REC_SIZE
        for pos in range(0, n, REC_SIZE):
            rtype, gen, size = _REC.unpack_from(inbox, pos)
            if rtype == REC_DOORBELL:
                continue
            if rtype == REC_REGION:
                if not self._fds:
                    raise BoundaryError("peer sent a REGION record without a file descriptor")
                self._regions.append((gen, size, self._fds.popleft()))
                continue
            raise BoundaryError(
                f"unknown socket record type {rtype:#x} from the peer: protocol violation"
            )
        del inbox[:n]
        return True

    def _recv_records(self) -> tuple[bytes, list[int]]:
        """One non-blocking recvmsg; returns data and any received fds (close-on-exec)."""
        data, ancdata, msg_flags, _addr = self._sock.recvmsg(4096, _ANC_SPACE, _RECV_FLAGS)
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if msg_flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise BoundaryError(
                "too many file descriptors from the peer in one message: protocol violation"
            )
        return data, list(fds)

    def _ring(self) -> None:
        """Send a doorbell (non-blocking; skipped when the socket buffer is full of unread ones)."""
        try:
            n = self._sock.send(_DOORBELL, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                raise self._closed_error("ringing the doorbell") from exc
            raise
        if n != REC_SIZE:
            self._sock.sendall(_DOORBELL[n:])

    def _block_until(
        self, ctl: memoryview, index: int, value: int, flag: int, deadline: float | None, what: str
    ) -> None:
        """Spin then block until ``ctl[index] != value``; a doorbell without a change (a
        :meth:`nudge`) starts a new spin, so a woken peer is polling when the frame comes."""
        perf = time.perf_counter
        t0 = perf()
        try:
            while True:
                spin_end = perf() + self.spin_s
                spins = 0
                while ctl[index] == value:
                    if perf() >= spin_end:
                        break
                    spins += 1
                    if not spins & _YIELD_EVERY:
                        # Let a peer sharing this CPU run (matters when cores are oversubscribed).
                        os.sched_yield()
                else:
                    return
                ctl[flag] = 1  # set only here, so the hot path above never writes the line
                try:
                    while ctl[index] == value:
                        if self._eof:
                            raise self._closed_error(f"waiting for {what}")
                        woke = self._pump(self._remaining(deadline, what))
                        if woke and ctl[index] == value and not self._eof:
                            break  # woken without a change: clear the flag, spin again
                    else:
                        return
                finally:
                    ctl[flag] = 0
        finally:
            if self._stats is not None:
                self._stats.wait_s += perf() - t0

    def nudge(self) -> bool:
        """Wake the peer if it is blocked waiting for our next frame (it then spins for a while);
        whether a doorbell was sent. For a writer that knows a frame will follow soon."""
        out = self.outbound
        if out is None or not out.ctl[_RSLEEP]:
            return False
        self._ring()
        return True

    # ------------------------------------------------------------------ writer

    def reserve(self, frame_len: int, timeout: float | None) -> memoryview:
        """Wait until the slot is free (reader consumed the last frame) and return ``frame_len`` bytes of it."""
        out = self.outbound
        if out is not None and out.ctl[_CONSUMED] == self._out_pub and frame_len <= out.capacity:
            return out.data[:frame_len]  # fast path: free and big enough
        return self._reserve_slow(
            frame_len, None if timeout is None else time.perf_counter() + timeout
        )

    def writable(self, timeout: float | None) -> _Region:
        """Wait until the outbound slot is free (the reader consumed the last frame) and return its region.

        Write at most ``region.capacity`` bytes into ``region.data``, then ``publish``.
        """
        out = self.outbound
        if out is not None and out.ctl[_CONSUMED] == self._out_pub:
            return out
        if out is None:
            raise BoundaryError("transport is closed")
        self._wait_consumed(None if timeout is None else time.perf_counter() + timeout)
        return self.outbound

    def _reserve_slow(self, frame_len: int, deadline: float | None) -> memoryview:
        if frame_len > self._max:
            raise FrameError(
                f"frame of {frame_len} bytes exceeds max_frame_bytes={self._max}; raise "
                "ChannelConfig.max_frame_bytes (both sides) or send fewer/smaller tensors"
            )
        out = self.outbound
        if out is None:
            raise BoundaryError("transport is closed")
        if out.ctl[_CONSUMED] != self._out_pub:
            self._wait_consumed(deadline)
            out = self.outbound
        if frame_len > out.capacity:
            out = self._grow(frame_len)
        return out.data[:frame_len]

    def _wait_consumed(self, deadline: float | None) -> None:
        ctl = self.outbound.ctl
        while True:
            consumed = ctl[_CONSUMED]
            if consumed == self._out_pub:
                return
            if consumed > self._out_pub:
                raise BoundaryError(
                    f"peer acknowledged {consumed} frames but only {self._out_pub} were sent"
                )
            self._block_until(
                ctl, _CONSUMED, consumed, _WSLEEP, deadline, "the peer to consume the last frame"
            )

    def _grow(self, frame_len: int) -> _Region:
        old = self.outbound
        new = self._new_out_region(region_size_for(frame_len, self._max), old.gen + 1)
        old.ctl[_LEN] = MOVED
        self._out_pub += 1
        old.ctl[_PUB] = self._out_pub
        self.outbound = new
        self._out_pub = 0
        try:
            if old.ctl[_RSLEEP]:
                self._ring()
        finally:
            old.close()
        return new

    def publish(self, frame_len: int) -> None:
        """Publish the frame written into the slot returned by ``reserve``."""
        ctl = self.outbound.ctl
        ctl[_LEN] = frame_len
        self._out_pub += 1
        ctl[_PUB] = self._out_pub
        if ctl[_RSLEEP]:
            self._ring()

    # ------------------------------------------------------------------ reader

    def wait_frame(self, timeout: float | None) -> int:
        """Wait for the next frame; returns its length. It lies at ``inbound.data[:len]`` until ``release``."""
        region = self.inbound
        if region is not None:
            ctl = region.ctl
            pub = ctl[_PUB]
            if pub == self._in_seen + 1:
                frame_len = ctl[_LEN]
                if (
                    frame_len <= region.capacity
                ):  # fast path: a frame is there (MOVED fails this test)
                    self._in_seen = pub
                    return frame_len
        return self._wait_frame_slow(None if timeout is None else time.perf_counter() + timeout)

    def _wait_frame_slow(self, deadline: float | None) -> int:
        region = self.inbound
        if region is None:
            raise BoundaryError("transport is closed")
        while True:
            ctl = region.ctl
            seen = self._in_seen
            pub = ctl[_PUB]
            if pub == seen:
                self._block_until(ctl, _PUB, seen, _RSLEEP, deadline, "a frame from the peer")
                pub = ctl[_PUB]
            if pub != seen + 1:
                raise BoundaryError(
                    f"shared-memory publish counter jumped from {seen} to {pub}: protocol "
                    "violation by the peer"
                )
            frame_len = ctl[_LEN]
            if frame_len != MOVED:
                break
            # The writer moved to a bigger region: its REGION record is already in the socket.
            new = self._map_next_region(region.gen + 1, deadline)
            region.close()
            self.inbound = region = new
            self._in_seen = 0
        self._in_seen = pub
        if frame_len > region.capacity:
            raise FrameError(
                f"published frame length {frame_len} exceeds the {region.capacity}-byte "
                "shared slot: protocol violation by the peer"
            )
        return frame_len

    def release(self) -> None:
        """Tell the writer the current frame is consumed and the slot may be reused."""
        ctl = self.inbound.ctl
        ctl[_CONSUMED] = self._in_seen
        if ctl[_WSLEEP]:
            self._ring()

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Unmap both regions, close queued fds and the socket (the peer then sees EOF)."""
        if self._closed:
            return
        self._closed = True
        for region in (self.outbound, self.inbound):
            if region is not None:
                region.close()
        self.outbound = self.inbound = None
        while self._fds:
            os.close(self._fds.popleft())
        while self._regions:
            os.close(self._regions.popleft()[2])
        try:
            self._poll.unregister(self._fileno)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self._sock.close()
        except OSError:
            pass


__all__ = ["CTL_BYTES", "MOVED", "ShmTransport", "region_size_for"]
