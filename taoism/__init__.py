"""taoism: TEE-shielded partitioned deployment of PyTorch models.

Put chosen layers of any ``nn.Module`` inside an enclave (a separate process behind an
authenticated, encrypted boundary) and the rest on the untrusted device, get the same outputs,
and measure what each split costs and leaks.

    import taoism
    with taoism.shield(model, x, placement={"layer1": "ENCLAVE", "_default": "GPU"}) as sm:
        y = sm(x)
        print(sm.plan)
        print(sm.profile(x, repeats=20))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taoism._lazy import lazy_exports
from taoism.config import EnclaveConfig
from taoism.errors import (
    AttestationError,
    BackendUnavailable,
    BoundaryError,
    BoundaryTimeout,
    CaptureError,
    ConfigError,
    EnclaveCrashed,
    EnclaveError,
    EnclaveRemoteError,
    FrameError,
    HandshakeError,
    InputError,
    IntegrityError,
    KeyFileError,
    KeyReleaseError,
    MemoryBudgetError,
    PackageError,
    PlacementError,
    ProgramError,
    ReplyMismatchError,
    RequestError,
    ServiceUnavailable,
    SessionFailed,
    SignatureError,
    TaoismError,
    TrustError,
)

if TYPE_CHECKING:
    from taoism.backends import EnclaveBackend, available_backends, get_backend
    from taoism.placement import EnclaveMode, PlacementRules, Plan
    from taoism.runtime import Profile, ShieldedModel, shield
    from taoism.runtime.deploy import deploy
    from taoism.runtime.package import Packaged, package

# The host's API is imported on first use (PEP 562): the enclave process imports this package
# too (``python -m taoism.enclave.server``) and must not load the host's runtime, backends or
# placement code with it (tests/test_imports.py checks what it loads).
_LAZY = {
    "EnclaveBackend": "taoism.backends",
    "available_backends": "taoism.backends",
    "get_backend": "taoism.backends",
    "EnclaveMode": "taoism.placement",
    "PlacementRules": "taoism.placement",
    "Plan": "taoism.placement",
    "Profile": "taoism.runtime",
    "ShieldedModel": "taoism.runtime",
    "shield": "taoism.runtime",
    "deploy": "taoism.runtime.deploy",
    "Packaged": "taoism.runtime.package",
    "package": "taoism.runtime.package",
}


__getattr__, __dir__ = lazy_exports("taoism", globals(), _LAZY)


__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BoundaryError",
    "BoundaryTimeout",
    "CaptureError",
    "ConfigError",
    "EnclaveBackend",
    "EnclaveConfig",
    "EnclaveCrashed",
    "EnclaveError",
    "EnclaveMode",
    "EnclaveRemoteError",
    "FrameError",
    "HandshakeError",
    "InputError",
    "IntegrityError",
    "MemoryBudgetError",
    "PlacementError",
    "PlacementRules",
    "Plan",
    "Profile",
    "ProgramError",
    "ReplyMismatchError",
    "RequestError",
    "ServiceUnavailable",
    "ShieldedModel",
    "SessionFailed",
    "TaoismError",
    "available_backends",
    "get_backend",
    "shield",
    "__version__",
    "AttestationError",
    "KeyFileError",
    "KeyReleaseError",
    "PackageError",
    "SignatureError",
    "TrustError",
    "Packaged",
    "deploy",
    "package",
]
