"""One exception hierarchy for everything taoism raises on purpose.

Every message says what went wrong, where, and how to fix it.
"""

from __future__ import annotations


class TaoismError(Exception):
    """Base class of every error raised by taoism."""


class ConfigError(TaoismError, ValueError):
    """An option, config object or plan file is invalid."""


class CaptureError(TaoismError):
    """The model could not be captured (traced) into a graph."""


class PlacementError(TaoismError):
    """A placement plan is invalid or asks the enclave for something it cannot run."""


class InputError(TaoismError, ValueError):
    """An input tensor has the wrong type, dtype, rank or shape for the shielded model."""


class BoundaryError(TaoismError):
    """Something went wrong on the encrypted host/enclave boundary."""


class FrameError(BoundaryError):
    """A frame is malformed: bad magic, truncated, oversized, bad dtype or shape."""


class IntegrityError(BoundaryError):
    """A frame failed authentication: tampered, replayed, reordered or from the wrong session."""


class HandshakeError(BoundaryError):
    """Key agreement or peer authentication failed while opening a session."""


class BoundaryTimeout(BoundaryError, TimeoutError):
    """The peer did not answer within the configured timeout."""


class EnclaveError(TaoismError):
    """The enclave failed."""


class EnclaveCrashed(EnclaveError):
    """The enclave process died or closed the boundary unexpectedly."""


class EnclaveRemoteError(EnclaveError):
    """The enclave reported an error while running a request."""


class BackendUnavailable(TaoismError):
    """The requested enclave backend cannot run on this platform."""


class MemoryBudgetError(TaoismError):
    """A layer cannot run inside the enclave's memory budget, even in chunks."""


class UnsupportedBackbone(ConfigError):
    """TEESlice cannot place proxy blocks on this backbone (unknown block structure, or a block
    whose output is not a 4-D feature map)."""
