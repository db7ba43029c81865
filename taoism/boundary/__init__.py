"""The trust boundary between the host process and the enclave process.

This package is the only code that moves bytes across the trust boundary;
everything leaving a process through it is encrypted and authenticated
(X25519 + HKDF-SHA256 session keys, AES-256-GCM per frame with the frame header
and sequence number as associated data). Frames travel through shared memory
(``transport``), use a validated binary format (``frame``, never pickle) and
are sealed by ``crypto``; ``channel`` combines them into :class:`Channel`.
"""

from taoism.boundary.channel import (
    Channel,
    ChannelConfig,
    ChannelStats,
    ChannelStatsSnapshot,
    Message,
    open_enclave_channel,
    open_host_channel,
)
from taoism.boundary.crypto import new_launch_token
from taoism.boundary.frame import CODE_DTYPES, DTYPE_CODES, MAX_NDIM, decode_frame, encode_frame

__all__ = [
    "CODE_DTYPES",
    "DTYPE_CODES",
    "MAX_NDIM",
    "Channel",
    "ChannelConfig",
    "ChannelStats",
    "ChannelStatsSnapshot",
    "Message",
    "decode_frame",
    "encode_frame",
    "new_launch_token",
    "open_enclave_channel",
    "open_host_channel",
]
