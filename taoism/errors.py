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


class ProgramError(TaoismError, ValueError):
    """An enclave program description or run request does not match the protocol's schema."""


class IntegrityError(BoundaryError):
    """A frame failed authentication: tampered, replayed, reordered or from the wrong session."""


class HandshakeError(BoundaryError):
    """Key agreement or peer authentication failed while opening a session."""


class BoundaryTimeout(BoundaryError, TimeoutError):
    """The peer did not answer within the configured timeout."""


class ReplyMismatchError(BoundaryError):
    """A reply carries another request's id: the session is out of step and was closed."""


class EnclaveError(TaoismError):
    """The enclave failed."""


class EnclaveCrashed(EnclaveError):
    """The enclave process died or closed the boundary unexpectedly."""


class EnclaveRemoteError(EnclaveError):
    """The enclave reported an error while running a request."""


class SessionFailed(EnclaveCrashed):
    """An inference was cut off between a request and its reply (interrupt, time-out, bad reply).

    The enclave session cannot be trusted to be in step any more, so it was stopped; call
    ``ShieldedModel.reload(model)`` to start a fresh one.
    """


class BackendUnavailable(TaoismError):
    """The requested enclave backend cannot run on this platform."""


class MemoryBudgetError(TaoismError):
    """A layer cannot run inside the enclave's memory budget, even in chunks."""


class TrustError(TaoismError):
    """Owner-sealed packages, attestation or key release failed."""


class PackageError(TrustError):
    """A model package file is malformed, truncated, oversized or was tampered with."""


class SignatureError(PackageError):
    """A package's owner signature does not verify (re-signed, tampered, or the wrong owner key)."""


class KeyFileError(TrustError):
    """A key file is missing, unreadable, of the wrong type, or too open."""


class AttestationError(TrustError):
    """An attestation report was refused; ``reason`` names the check that failed."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class KeyReleaseError(TrustError):
    """The key service is down, timed out or answered badly, or a wrapped key does not open."""


class RequestError(TaoismError, ValueError):
    """A request to the inference server is malformed, too large or does not fit the model.

    ``status`` is the HTTP status the server answers with (400, 413 or 415).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServiceUnavailable(TaoismError):
    """The inference server cannot answer now (enclave restarting, queue full, shutting down)."""


class UnsupportedBackbone(ConfigError):
    """TEESlice cannot place proxy blocks on this backbone (unknown block structure, or a block
    whose output is not a 4-D feature map)."""
