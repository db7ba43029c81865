"""The encrypted, authenticated channel used by both sides of the trust boundary."""

from __future__ import annotations

import collections
import ctypes
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from cryptography.exceptions import InvalidTag

from taoism.boundary import crypto, fastpath, frame
from taoism.boundary.frame import HEADER_SIZE
from taoism.boundary.messages import (
    ChannelConfig,
    ChannelStats,
    ChannelStatsSnapshot,
    Message,
    _new_message,
)
from taoism.boundary.transport import _CONSUMED, CTL_BYTES, ShmTransport
from taoism.errors import (
    BoundaryError,
    BoundaryTimeout,
    ConfigError,
    EnclaveCrashed,
    FrameError,
    ReplyMismatchError,
    TaoismError,
)

_TAG = crypto.TAG_SIZE
_OVERHEAD = HEADER_SIZE + _TAG
_perf = time.perf_counter
_Tensor = torch.Tensor
_HEADER_PACK = frame.HEADER.pack
_HEADER_UNPACK = frame.HEADER.unpack
_MAGIC, _VERSION, _MAX_TENSORS, _DESC = (
    frame.MAGIC,
    frame.VERSION,
    frame.MAX_TENSORS,
    frame.DESC_FIXED_SIZE,
)
_stage_body = frame.stage_body
_decode_body = frame.decode_body_parts
_views_of = frame.views_of
_np_empty = np.empty
_NONCE_PACK = crypto.NONCE.pack
_uint8 = np.uint8
_memset = ctypes.memset
_OPEN_BAD_HEADER, _OPEN_BAD_SEQ, _OPEN_BAD_TAG = 1, 2, 3  # statuses of the compiled opener


def _address_of(buf: bytearray) -> int:
    """Address of a bytearray's storage (stable: the channel never resizes its buffers in place)."""
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


class _Closed(Exception):
    """Marker: the channel was closed by its owner."""


def _as_blob(blob: object) -> bytes:
    if isinstance(blob, (bytearray, memoryview)):
        return bytes(blob)
    raise FrameError(
        f"blob must be bytes (e.g. json.dumps(...).encode()), got {type(blob).__name__}"
    )


class Channel:
    """One end of an open boundary session.

    Thread-safe: ``send`` and ``recv`` each admit one thread at a time (sequence
    numbers, hence GCM nonces, are taken under the send lock), and ``request``
    pairs each host request with its reply, so concurrent callers take turns.

    Create with :func:`open_host_channel` / :func:`open_enclave_channel`.
    After an integrity, frame or peer-death error the channel is unusable.
    """

    def __init__(
        self,
        transport: ShmTransport,
        sealer: crypto.Sealer,
        opener: crypto.Opener,
        config: ChannelConfig,
        stats: ChannelStats,
        peer_closed_error: type[Exception],
        is_host: bool = True,
        fast: tuple[Any, Any] | None = None,
    ) -> None:
        self._tr = transport
        self._sealer = sealer
        self._opener = opener
        # The compiled sealer and opener (fastpath.py), or None: the pure-Python path.
        self._fast_sealer, self._fast_opener = fast if fast is not None else (None, None)
        self._config = config
        self.stats = stats
        self._peer_closed_error = peer_closed_error
        self._max_body = config.max_frame_bytes - _OVERHEAD
        self._stream_threshold = config.stream_threshold_bytes
        self._timeout = config.timeout_s
        self._snapshot = config.snapshot_ciphertext
        self._is_host = is_host
        self._staging = bytearray(64 << 10)
        self._staging_len = len(self._staging)
        self._staging_mv = memoryview(self._staging)
        self._staging_addr = _address_of(self._staging)
        # None while usable; else the error that made the channel unusable (or a closed marker).
        self._unusable: BaseException | None = None
        # Locks: one sender and one receiver at a time (sequence numbers and the shared slot are
        # read-modify-write), and request() pairs a request with its reply.
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._next_rid = 1  # host: id of the next request
        self._pending: collections.deque[int] = (
            collections.deque()
        )  # host: ids sent, not yet answered
        self._last_rid = 0  # enclave: id of the last request received

    # ------------------------------------------------------------------ public API

    def send(
        self,
        kind: int,
        tag: int,
        tensors: Sequence[torch.Tensor] = (),
        blob: bytes = b"",
        *,
        secret: bool = False,
        reply_to: int | None = None,
    ) -> int:
        """Encrypt and send one message; returns its request id. Thread-safe (one sender at a time).

        Tensors may be non-contiguous or on an accelerator (copied to contiguous
        CPU memory first; counted in ``stats.copy_s``). ``kind`` is a u16,
        ``tag`` a u32 chosen by the caller; ``blob`` small opaque bytes.
        ``secret=True`` (e.g. weights): tensor bytes are encrypted straight from
        the tensors into shared memory, never copied into a staging buffer.
        On the host every message is a request with a fresh id that the reply
        must echo; on the enclave a message answers ``reply_to`` (default: the
        id of the last message received).
        """
        with self._send_lock:
            return self._send(kind, tag, tensors, blob, secret, reply_to)

    def recv(self, timeout: float | None = None, *, expect: int | None = None) -> Message:
        """Wait for, authenticate and decode the next message. Thread-safe (one receiver at a time).

        ``timeout`` in seconds; None uses ``ChannelConfig.timeout_s`` (None there
        = wait forever). On the host a reply must carry the id of the oldest
        unanswered request (and ``expect``, if given), else ReplyMismatchError.
        Raises BoundaryTimeout (the channel stays usable), IntegrityError,
        FrameError, ReplyMismatchError, or the peer-closed error.
        """
        if timeout is None:
            timeout = self._timeout
        lock = self._recv_lock
        if not lock.acquire(False):  # uncontended: the common case, without the timed wait
            if not lock.acquire(True, -1 if timeout is None else timeout):
                raise BoundaryTimeout(
                    f"another thread held the channel's receiver for {timeout:g} s"
                )
        try:
            if self._fast_opener is not None:
                return self._recv_compiled(timeout, expect)
            return self._recv(timeout, expect)
        finally:
            lock.release()

    def request(
        self,
        kind: int,
        tag: int,
        tensors: Sequence[torch.Tensor] = (),
        blob: bytes = b"",
        *,
        timeout: float | None = None,
        secret: bool = False,
    ) -> Message:
        """Send a request and return its reply (host side); thread-safe: concurrent callers take turns.

        Any failure between the send and the reply (time-out, interrupt,
        mismatched reply) leaves the channel unusable rather than out of step.
        """
        with self._request_lock:
            with self._send_lock:  # send(), without its call: every crossing comes through here
                rid = self._send(kind, tag, tensors, blob, secret, None)
            try:
                return self.recv(timeout, expect=rid)
            except BaseException as exc:
                if self._unusable is None:
                    self._unusable = (
                        exc
                        if isinstance(exc, TaoismError)
                        else BoundaryError(
                            f"interrupted ({type(exc).__name__}) while waiting for the reply to request {rid}"
                        )
                    )
                raise

    def nudge(self) -> bool:
        """Wake the peer if it sleeps waiting for our next message, so that it is polling when the
        message comes (one doorbell; nothing is sent when it is awake or another thread is
        sending). For a host about to send a request after some work of its own."""
        if self._unusable is not None or not self._send_lock.acquire(False):
            return False
        try:
            return self._tr.nudge()
        except (TaoismError, OSError):
            return False  # a closed peer shows up on the next send, with its proper error
        finally:
            self._send_lock.release()

    @property
    def compiled(self) -> bool:
        """Whether this channel runs the compiled hot path (``fastpath``) for common messages."""
        return self._fast_sealer is not None

    @property
    def staging_bytes(self) -> int:
        """Bytes of this end's private staging buffer (for memory accounting)."""
        return self._staging_len

    @property
    def failure(self) -> BaseException | None:
        """None while the channel is usable, else why it is not (closed, tampered frame, ...)."""
        return self._unusable

    # ------------------------------------------------------------------ the data path

    def _send(
        self,
        kind: int,
        tag: int,
        tensors: Sequence[torch.Tensor],
        blob: bytes,
        secret: bool,
        reply_to: int | None,
    ) -> int:
        if self._unusable is not None:
            self._raise_unusable()
        if self._fast_sealer is not None and not secret:
            rid = self._send_compiled(kind, tag, tensors, blob, reply_to)
            if rid >= 0:
                return rid
        t_start = _perf()
        if type(blob) is not bytes:
            blob = _as_blob(blob)
        if type(tensors) is not list and type(tensors) is not tuple:
            tensors = list(tensors)
        for t in tensors:
            if type(t) is not _Tensor or not t.is_cpu or not t.is_contiguous():
                tensors = [frame.prepare_tensor(t, i) for i, t in enumerate(tensors)]
                break
        blob_len = len(blob)
        tr = self._tr
        region = None
        plain = 0  # bytes of plaintext body in the shared slot, until they are encrypted in place
        staged = 0  # bytes of plaintext in the staging buffer (streamed head), wiped in the finally below
        try:
            if (
                secret and tensors
            ):  # never copy the tensor bytes anywhere: encrypt straight from them
                body_len = frame.plan_body(tensors, blob_len).body_len
                streamed = True
            else:
                # The body is laid out in the shared slot itself and encrypted there in place.
                region = tr.outbound
                if region is None or region.ctl[_CONSUMED] != tr._out_pub:  # not free yet: wait
                    region = self._writable()
                body_len = _stage_body(
                    tensors,
                    blob,
                    region.data,
                    HEADER_SIZE,
                    region.data_addr,
                    region.capacity - _OVERHEAD,
                )
                streamed = False
                if body_len < 0:  # does not fit the slot
                    body_len = -body_len
                    region = None
                    streamed = body_len >= self._stream_threshold and bool(tensors)
                else:
                    plain = body_len
            t_copied = _perf()
            frame_len = body_len + _OVERHEAD
            if body_len > self._max_body:
                raise FrameError(
                    f"message of {frame_len} bytes exceeds max_frame_bytes="
                    f"{self._config.max_frame_bytes}; raise ChannelConfig.max_frame_bytes (both "
                    "sides) or split the tensors"
                )
            if region is None:  # streamed, or the slot must grow first
                try:
                    tr.reserve(frame_len, self._timeout)
                except BoundaryTimeout:
                    raise
                except TaoismError as exc:
                    self._unusable = exc
                    raise
                region = tr.outbound
                if not streamed:
                    _stage_body(tensors, blob, region.data, HEADER_SIZE, region.data_addr, body_len)
                    plain = body_len
                t_copied = _perf()
            sealer = self._sealer
            rid = (
                self._next_rid
                if self._is_host
                else (self._last_rid if reply_to is None else reply_to)
            )
            try:
                header = _HEADER_PACK(
                    _MAGIC,
                    _VERSION,
                    kind,
                    tag,
                    len(tensors),
                    sealer.next_seq,
                    blob_len,
                    body_len,
                    rid,
                )
            except struct.error:
                header = frame.pack_header(
                    kind, tag, len(tensors), sealer.next_seq, blob_len, body_len, rid
                )  # raises
            seq = sealer.next_seq
            sealer.next_seq = (
                seq + 1
            )  # taken before encrypting (under the send lock): a nonce is never reused
            if self._is_host:
                self._next_rid = rid + 1
            data = region.data
            data[:HEADER_SIZE] = header
            t_crypto = _perf()
            if streamed:
                staged = self._seal_streamed(
                    seq, header, tensors, blob, body_len, data[HEADER_SIZE:frame_len]
                )
            else:
                sealer.aead.encrypt_into(
                    _NONCE_PACK(sealer.prefix, seq),
                    data[HEADER_SIZE : HEADER_SIZE + body_len],
                    header,
                    data[HEADER_SIZE:frame_len],
                )
                plain = 0
            t_end = _perf()
        finally:
            if plain:  # failed between staging and encryption: no plaintext stays in shared memory
                _memset(region.data_addr + HEADER_SIZE, 0, plain)
            if staged:  # no plaintext stays behind in the staging buffer
                _memset(self._staging_addr, 0, staged)
        self._publish(rid, frame_len, t_end - t_crypto)
        self.stats.copy_s += t_copied - t_start
        return rid

    def _publish(self, rid: int, frame_len: int, crypto_s: float) -> None:
        """Publish the sealed frame in the slot and count it (a failure makes the channel unusable)."""
        try:
            self._tr.publish(frame_len)
        except TaoismError as exc:
            self._unusable = exc
            raise
        if self._is_host:
            self._pending.append(rid)
        stats = self.stats
        stats.frames_sent += 1
        stats.bytes_sent += frame_len
        stats.crypto_s += crypto_s

    def _send_compiled(
        self,
        kind: int,
        tag: int,
        tensors: Sequence[torch.Tensor],
        blob: bytes,
        reply_to: int | None,
    ) -> int:
        """``_send`` in one C call: returns the request id, or -1 if the message is not the common case.

        The common case: exact CPU contiguous tensors of wire dtypes, ``blob`` bytes, the body
        fitting the slot (bodies over ``ChannelConfig.compiled_max_body`` bytes are encrypted
        with the session's ``AESGCM``, called from C). Otherwise nothing
        was written and no sequence number consumed: the caller's Python path sends (or refuses)
        the message.
        """
        tr = self._tr
        region = tr.outbound
        if region is None or region.ctl[_CONSUMED] != tr._out_pub:  # not free yet: wait
            region = self._writable()
        sealer = self._sealer
        rid = (
            self._next_rid if self._is_host else (self._last_rid if reply_to is None else reply_to)
        )
        seq = sealer.next_seq
        sealer.next_seq = seq + 1  # taken before encrypting (under the send lock)
        t0 = _perf()
        frame_len = self._fast_sealer.seal(region.data, kind, tag, seq, rid, tensors, blob)
        if frame_len < 0:
            sealer.next_seq = seq  # never used as a nonce: the Python path takes it
            return -1
        t1 = _perf()
        if self._is_host:
            self._next_rid = rid + 1
        self._publish(rid, frame_len, t1 - t0)  # crypto_s here: layout, copies and encryption
        return rid

    def _recv_compiled(self, timeout: float | None, expect: int | None) -> Message:
        """``_recv`` with the header checks, decryption and descriptor checks in one C call.

        A refused frame raises the same typed error as the pure path, from the same code.
        """
        frame_len = self._wait_frame(timeout)
        tr = self._tr
        seq = -1
        try:
            opener = self._opener
            t0 = _perf()
            status, kind, tag, seq, request_id, n, blob_len, body_len, body, blob, specs = (
                self._fast_opener.open(
                    tr.inbound.data, frame_len, self._max_body, opener.next_seq, self._snapshot
                )
            )
            t1 = _perf()
            if status:
                if status == _OPEN_BAD_HEADER:
                    self._bad_header(body, frame_len)  # raises
                if status == _OPEN_BAD_SEQ:
                    opener.check_seq(seq)  # raises
                if status == _OPEN_BAD_TAG:
                    raise crypto.auth_failure(seq)
            self._accept(seq, request_id, expect, kind, tag)
            if status:  # malformed descriptors: the pure decoder says why, from the same body
                _decode_body(n, blob_len, body_len, body)
                raise FrameError(
                    f"frame seq={seq}: the compiled decoder refused a body the Python decoder "
                    "accepts (a bug; set TAOISM_PURE_BOUNDARY=1 to work around it)"
                )
            tensors = _views_of(body, specs)
        except TaoismError as exc:
            self._unusable = exc
            raise
        except Exception as exc:  # a decoder bug must still fail closed and typed, never untyped
            raise self._decoder_bug(seq, exc) from exc
        stats = self.stats
        stats.frames_recv += 1
        stats.bytes_recv += frame_len
        stats.crypto_s += t1 - t0  # on this path: header and descriptor checks too
        return _new_message(kind, tag, tensors, blob, request_id)

    def _writable(self):
        """The outbound region once its slot is free (BoundaryTimeout keeps the channel usable)."""
        try:
            return self._tr.writable(self._timeout)
        except BoundaryTimeout:
            raise
        except TaoismError as exc:
            self._unusable = exc
            raise

    def _recv(self, timeout: float | None, expect: int | None) -> Message:
        return self._recv_frame(self._wait_frame(timeout), expect)

    def _wait_frame(self, timeout: float | None) -> int:
        """The length of the next frame once it is in the inbound slot (a timeout keeps the channel
        usable; any other failure does not)."""
        if self._unusable is not None:
            self._raise_unusable()
        try:
            return self._tr.wait_frame(timeout)
        except BoundaryTimeout:
            raise
        except TaoismError as exc:
            self._unusable = exc
            raise

    def _recv_frame(self, frame_len: int, expect: int | None) -> Message:
        """Authenticate and decode the frame of ``frame_len`` bytes waiting in the inbound slot."""
        tr = self._tr
        region = tr.inbound
        seq = -1
        try:
            hb = region.mm[CTL_BYTES : CTL_BYTES + HEADER_SIZE]
            magic, version, kind, tag, n, seq, blob_len, body_len, request_id = _HEADER_UNPACK(hb)
            if (
                magic != _MAGIC
                or version != _VERSION
                or body_len > self._max_body
                or n > _MAX_TENSORS
                or n * _DESC + blob_len > body_len
                or body_len + _OVERHEAD != frame_len
            ):
                self._bad_header(hb, frame_len)
            opener = self._opener
            if seq != opener.next_seq:
                opener.check_seq(seq)  # raises IntegrityError
            body = _np_empty(body_len, _uint8)
            t0 = _perf()
            ciphertext = region.data[HEADER_SIZE:frame_len]
            if self._snapshot:
                ciphertext = bytes(ciphertext)
            try:
                opener.aead.decrypt_into(_NONCE_PACK(opener.prefix, seq), ciphertext, hb, body)
            except InvalidTag:
                raise crypto.auth_failure(seq) from None
            t1 = _perf()
            self._accept(seq, request_id, expect, kind, tag)
            tensors, blob = _decode_body(n, blob_len, body_len, body)
        except TaoismError as exc:
            self._unusable = exc
            raise
        except Exception as exc:  # a decoder bug must still fail closed and typed, never untyped
            raise self._decoder_bug(seq, exc) from exc
        stats = self.stats
        stats.frames_recv += 1
        stats.bytes_recv += frame_len
        stats.crypto_s += t1 - t0
        return _new_message(kind, tag, tensors, blob, request_id)

    def _accept(self, seq: int, request_id: int, expect: int | None, kind: int, tag: int) -> None:
        """Take an authenticated frame: advance the sequence, free the slot, pair the reply."""
        self._opener.next_seq = seq + 1
        self._tr.release()
        if self._is_host:
            self._check_reply(request_id, expect, kind, tag)
        else:
            self._last_rid = request_id

    def _decoder_bug(self, seq: int, exc: Exception) -> FrameError:
        """Make the channel unusable after an untyped decoder failure; the typed error to raise."""
        err = FrameError(
            f"malformed frame seq={seq} rejected by the decoder ({type(exc).__name__}: {exc})"
        )
        self._unusable = err
        return err

    def _check_reply(self, request_id: int, expect: int | None, kind: int, tag: int) -> None:
        pending = self._pending
        if pending and pending[0] == request_id and (expect is None or expect == request_id):
            pending.popleft()  # the common case: the reply to the oldest request
            return
        want = pending[0] if pending else None
        if request_id != want or (expect is not None and expect != want):
            if want is None:
                what = "no request is waiting for a reply"
            elif request_id != want:
                what = f"the oldest unanswered request is {want}"
            else:
                what = (
                    f"the caller waits for request {expect}, but request {want} is answered first"
                )
            raise ReplyMismatchError(
                f"reply (kind={kind}, tag={tag}) carries request id {request_id} but {what}: "
                "refused, the session is out of step; restart it (call requests through "
                "Channel.request, which pairs each request with its reply)"
            )
        pending.popleft()

    def close(self) -> None:
        """Close the session: unmap shared memory and close the socket (the peer sees EOF)."""
        if not isinstance(self._unusable, _Closed):
            self._unusable = _Closed("the channel is closed; open a new session")
            self._tr.close()
            if self._fast_sealer is not None:  # frees both AES contexts (the keys are wiped)
                self._fast_sealer.close()
                self._fast_opener.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _raise_unusable(self) -> None:
        reason = self._unusable
        if isinstance(reason, _Closed):
            raise BoundaryError(str(reason))
        if isinstance(reason, self._peer_closed_error):
            raise self._peer_closed_error(f"the channel is unusable: {reason}")
        raise BoundaryError(
            f"the channel is unusable after an earlier failure ({type(reason).__name__}: "
            f"{reason}); close it and open a new session"
        )

    def _bad_header(self, hb: bytes, frame_len: int) -> None:
        if frame_len < _OVERHEAD:
            raise FrameError(
                f"truncated frame: {frame_len} bytes, shorter than the {HEADER_SIZE}-byte header "
                f"plus the {_TAG}-byte tag"
            )
        header = frame.decode_header(hb, self._max_body)  # raises for a bad field
        raise FrameError(
            f"frame is {frame_len} bytes but its header announces {header.body_len + _OVERHEAD} "
            f"({HEADER_SIZE} header + body_len={header.body_len} + {_TAG} tag): truncated or padded"
        )

    def _seal_streamed(
        self,
        seq: int,
        header: bytes,
        tensors: Sequence[torch.Tensor],
        blob: bytes,
        body_len: int,
        out: memoryview,
    ) -> int:
        """Encrypt a body part by part straight from the tensors into shared memory; returns bytes staged.

        Only the descriptors and the blob pass through the staging buffer (the caller wipes them).
        """
        plan = frame.plan_body(tensors, len(blob))
        head_len = plan.desc_len + len(blob)
        if head_len > self._staging_len:
            self._grow_staging(head_len)
        frame.write_head(plan, blob, self._staging)
        parts = [(0, self._staging_mv[:head_len])]
        parts += [(e[4], frame.tensor_bytes(e[0])) for e in plan.entries]
        self._sealer.seal_parts_into(seq, header, parts, body_len, out)
        return head_len

    def _grow_staging(self, n: int) -> None:
        """Replace the staging buffer by a bigger one (the old one is wiped before it is freed)."""
        _memset(self._staging_addr, 0, self._staging_len)
        self._staging_mv.release()
        self._staging = bytearray(1 << (n - 1).bit_length())
        self._staging_len = len(self._staging)
        self._staging_mv = memoryview(self._staging)
        self._staging_addr = _address_of(self._staging)

    # ------------------------------------------------------------------ test-only hooks (attacker's view)

    def _seal_body(
        self, kind: int, tag: int, body: bytes, n_tensors: int, blob_len: int, request_id: int = 0
    ) -> bytes:
        """Encrypt an arbitrary body under this session's keys; returns raw frame bytes (consumes a seq)."""
        seq = self._sealer.take_seq()
        header = frame.HEADER.pack(
            frame.MAGIC, frame.VERSION, kind, tag, n_tensors, seq, blob_len, len(body), request_id
        )
        out = bytearray(HEADER_SIZE + len(body) + _TAG)
        out[:HEADER_SIZE] = header
        self._sealer.seal_into(seq, header, body, memoryview(out)[HEADER_SIZE:])
        return bytes(out)

    def _seal_frame(
        self,
        kind: int,
        tag: int,
        tensors: Sequence[torch.Tensor] = (),
        blob: bytes = b"",
        request_id: int = 0,
    ) -> bytes:
        """Encrypt a well-formed message without sending it; returns raw frame bytes (consumes a seq)."""
        plain = frame.encode_frame(kind, tag, 0, tensors, blob)
        n_tensors = frame.HEADER.unpack_from(plain)[4]
        return self._seal_body(
            kind, tag, bytes(plain[HEADER_SIZE:]), n_tensors, len(blob), request_id
        )

    def _send_raw(self, raw: bytes) -> None:
        """Write raw bytes into the outbound slot and publish them as a frame."""
        out = self._tr.reserve(len(raw), self._timeout)
        out[:] = raw
        del out
        self._tr.publish(len(raw))


def _open(
    sock: socket.socket, launch_token: bytes, config: ChannelConfig, is_host: bool
) -> Channel:
    if not isinstance(config, ChannelConfig):
        raise ConfigError(f"config must be a ChannelConfig, got {type(config).__name__}")
    if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX:
        raise ConfigError("sock must be an AF_UNIX socket (one end of socket.socketpair())")
    crypto.check_launch_token(launch_token)
    stats = ChannelStats()
    transport = None
    try:
        if is_host:
            keys = crypto.host_handshake(sock, launch_token, config.handshake_timeout_s)
            out_key, out_prefix = keys.host_to_enclave, crypto.PREFIX_HOST_TO_ENCLAVE
            in_key, in_prefix = keys.enclave_to_host, crypto.PREFIX_ENCLAVE_TO_HOST
            peer_closed: type[Exception] = EnclaveCrashed
        else:
            keys = crypto.enclave_handshake(sock, launch_token, config.handshake_timeout_s)
            out_key, out_prefix = keys.enclave_to_host, crypto.PREFIX_ENCLAVE_TO_HOST
            in_key, in_prefix = keys.host_to_enclave, crypto.PREFIX_HOST_TO_ENCLAVE
            peer_closed = BoundaryError
        sealer, opener = crypto.Sealer(out_key, out_prefix), crypto.Opener(in_key, in_prefix)
        mod = fastpath.select(config.compiled)
        fast = None
        if mod is not None:  # the same keys and prefixes, in OpenSSL contexts of their own
            fast = (
                fastpath.new_sealer(
                    mod, out_key, out_prefix, config.compiled_max_body, sealer.aead
                ),
                fastpath.new_opener(mod, in_key, in_prefix, config.compiled_max_body, opener.aead),
            )
        transport = ShmTransport(
            sock,
            initial_capacity=config.initial_capacity,
            max_frame_bytes=config.max_frame_bytes,
            spin_s=config.spin_us * 1e-6,
            block_slice_s=config.block_slice_s,
            peer_closed_error=peer_closed,
            stats=stats,
        )
        transport.establish(_perf() + config.handshake_timeout_s)
    except BaseException:
        # A failed session is useless: release everything, the socket included (the peer sees EOF).
        if transport is not None:
            transport.close()
        else:
            sock.close()
        raise
    return Channel(transport, sealer, opener, config, stats, peer_closed, is_host, fast)


def open_host_channel(
    sock: socket.socket, launch_token: bytes, *, config: ChannelConfig = ChannelConfig()
) -> Channel:
    """Open the host end over ``sock`` (handshake + shared memory); the channel then owns ``sock``.

    The host created ``launch_token`` (``new_launch_token()``) and handed it to
    the enclave process out of band. Close the enclave's end of the socket pair
    in the host after spawning, or a crash of the enclave cannot be detected.
    Peer death raises ``EnclaveCrashed``. On failure (HandshakeError, timeout)
    ``sock`` is closed.
    """
    return _open(sock, launch_token, config, is_host=True)


def open_enclave_channel(
    sock: socket.socket, launch_token: bytes, *, config: ChannelConfig = ChannelConfig()
) -> Channel:
    """Open the enclave end over ``sock`` (which the channel then owns); host death raises ``BoundaryError``."""
    return _open(sock, launch_token, config, is_host=False)


__all__ = [
    "Channel",
    "ChannelConfig",
    "ChannelStats",
    "ChannelStatsSnapshot",
    "Message",
    "open_enclave_channel",
    "open_host_channel",
]
