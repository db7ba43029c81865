"""Message kinds exchanged over the boundary channel between the host and the enclave."""

from __future__ import annotations

import enum


class Kind(enum.IntEnum):
    """Request and reply kinds (the channel's ``kind`` field)."""

    LOAD = 1  # blob: program description (JSON); tensors: weights in description order
    RUN = 2  # tag: segment index; tensors: the segment's send_in values
    RUN_PROFILE = 3  # as RUN, and the reply carries per-node times
    STATS = 4  # reply blob: JSON statistics of the enclave
    CLOSE = 5  # reply OK, then the enclave exits
    ATTEST = 6  # package mode: blob = the verifier's 32-byte nonce; reply OK, blob = attestation envelope
    PROVISION = (
        7  # package mode: blob = the wrapped model key; the enclave loads the signed program
    )
    OK = 10  # reply: blob may hold JSON
    RESULT = (
        11  # reply to RUN: tensors = returns; blob = ReplyMeta (16-byte timings, or JSON profiled)
    )
    ERROR = 12  # reply: blob = JSON {"type": ..., "message": ...}


__all__ = ["Kind"]
