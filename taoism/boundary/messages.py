"""The plain value types of the boundary channel: its config, its counters and a received message."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from taoism.errors import ConfigError


@dataclass(frozen=True)
class ChannelConfig:
    """Tunables of a channel (both sides should use the same ``max_frame_bytes``).

    ``initial_capacity``: bytes of the first shared slot per direction (clamped
    to ``max_frame_bytes``); bigger frames grow it to the next power of two.

    ``spin_us``: how long a waiting side busy-polls shared memory before it
    blocks (0 = block at once; spinning costs a CPU core but gives ~µs latency).
    ``block_slice_s``: longest single block before the counter is re-checked.
    ``timeout_s``: default timeout of ``recv`` and of ``send`` waiting for a free
    slot (None = wait forever). ``handshake_timeout_s``: bound on key agreement
    and region setup in ``open_*``. ``stream_threshold_bytes``: bodies at least
    this large are encrypted part by part straight from the tensors into shared
    memory instead of being gathered into a private staging buffer first.
    ``snapshot_ciphertext``: copy each incoming frame out of shared memory
    before decrypting it. By default the frame is authenticated and decrypted
    straight from shared memory; a writer that rewrites the slot *during* the
    decryption can at worst make it fail, unless the AES-GCM implementation reads
    a ciphertext block twice (once for GHASH, once for CTR) - the snapshot
    (one extra memcpy) closes that window for deployments that need it.
    ``compiled``: use the compiled hot path where the install built it (the
    environment variable ``TAOISM_PURE_BOUNDARY=1`` forces the pure-Python path
    regardless); both produce the same bytes (docs/boundary.md).
    ``compiled_max_body``: the longest body the compiled path encrypts with the
    system libcrypto it links; longer bodies are still laid out, checked and
    decoded in C, but encrypted with the session's ``AESGCM`` (the
    ``cryptography`` package's own OpenSSL, the pure path's very object),
    which can be faster per byte (OpenSSL 3.0 on the project's machines: about
    4.6 GB/s against 17 GB/s, so libcrypto wins below about 12 KiB).
    """

    initial_capacity: int = 4 << 20
    max_frame_bytes: int = 1 << 30
    spin_us: float = 200.0
    block_slice_s: float = 0.005
    timeout_s: float | None = None
    handshake_timeout_s: float = 10.0
    stream_threshold_bytes: int = 512 << 10
    snapshot_ciphertext: bool = False
    compiled: bool = True
    compiled_max_body: int = 12 << 10

    def __post_init__(self) -> None:
        def positive(name: str, value: object, allow_zero: bool = False) -> None:
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (value >= 0 if allow_zero else value > 0)
            )
            if not ok:
                need = "a non-negative" if allow_zero else "a positive"
                raise ConfigError(f"ChannelConfig.{name}={value!r} must be {need} number")

        positive("initial_capacity", self.initial_capacity)
        positive("max_frame_bytes", self.max_frame_bytes)
        positive("spin_us", self.spin_us, allow_zero=True)
        positive("block_slice_s", self.block_slice_s)
        positive("handshake_timeout_s", self.handshake_timeout_s)
        positive("stream_threshold_bytes", self.stream_threshold_bytes, allow_zero=True)
        positive("compiled_max_body", self.compiled_max_body, allow_zero=True)
        if self.timeout_s is not None:
            positive("timeout_s", self.timeout_s)
        if not isinstance(self.compiled, bool):
            raise ConfigError(f"ChannelConfig.compiled={self.compiled!r} must be True or False")
        if self.max_frame_bytes < 4096:
            raise ConfigError(
                f"ChannelConfig.max_frame_bytes={self.max_frame_bytes} is below the 4096-byte minimum"
            )


@dataclass(frozen=True)
class ChannelStatsSnapshot:
    """Immutable copy of a channel's counters."""

    frames_sent: int
    frames_recv: int
    bytes_sent: int
    bytes_recv: int
    crypto_s: float
    copy_s: float
    wait_s: float


@dataclass(slots=True)
class ChannelStats:
    """Mutable boundary counters of one channel end.

    Bytes are frame bytes on the wire (header + ciphertext + tag). ``crypto_s``
    is encrypt + decrypt time, ``copy_s`` device->host, contiguity and staging
    copies, ``wait_s`` time spent waiting for the peer (spinning or blocked).
    """

    frames_sent: int = 0
    frames_recv: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    crypto_s: float = 0.0
    copy_s: float = 0.0
    wait_s: float = 0.0

    def snapshot(self) -> ChannelStatsSnapshot:
        """Frozen copy of the current values."""
        return ChannelStatsSnapshot(*(getattr(self, f.name) for f in fields(self)))

    def reset(self) -> None:
        """Zero every counter."""
        for f in fields(self):
            setattr(self, f.name, type(getattr(self, f.name))())


@dataclass(frozen=True, slots=True)
class Message:
    """A received message; ``tensors`` live in a private buffer owned by this message."""

    kind: int
    tag: int
    tensors: list[torch.Tensor]
    blob: bytes
    request_id: int = 0


_object_new = object.__new__
_set_kind, _set_tag = Message.kind.__set__, Message.tag.__set__  # type: ignore[attr-defined]
_set_tensors, _set_blob = Message.tensors.__set__, Message.blob.__set__  # type: ignore[attr-defined]
_set_rid = Message.request_id.__set__  # type: ignore[attr-defined]


def _new_message(
    kind: int, tag: int, tensors: list[torch.Tensor], blob: bytes, request_id: int
) -> Message:
    """``Message(kind, tag, tensors, blob, request_id)`` at half the cost (sets the slots as __init__ does)."""
    msg = _object_new(Message)
    _set_kind(msg, kind)
    _set_tag(msg, tag)
    _set_tensors(msg, tensors)
    _set_blob(msg, blob)
    _set_rid(msg, request_id)
    return msg


__all__ = ["ChannelConfig", "ChannelStats", "ChannelStatsSnapshot", "Message"]
