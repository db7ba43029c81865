"""Enclave backends: one contract, found by name in a registry.

``sim`` (default) runs the enclave as a separate process; ``gramine`` runs the same server in
real SGX and refuses clearly where the platform is missing.
"""

from taoism.backends.base import EnclaveBackend, RunReply
from taoism.backends.registry import available_backends, get_backend

__all__ = ["EnclaveBackend", "RunReply", "available_backends", "get_backend"]
