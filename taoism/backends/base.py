"""The contract every enclave backend implements, and the shapes of its replies."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from taoism.config import EnclaveConfig


@dataclass(frozen=True)
class RunReply:
    """What one enclave segment run returns to the host."""

    tensors: list[torch.Tensor]
    enclave_compute_s: float  # time spent computing inside the enclave
    enclave_crypto_s: (
        float  # time the enclave spent decrypting the request and encrypting the reply
    )
    node_times: tuple[float, ...] | None = None  # per node, when profiling
    memory: dict[str, Any] | None = None  # the enclave's memory accounting, when profiling


class EnclaveBackend(abc.ABC):
    """An enclave the host can start, load a program into, run segments on, and close.

    Implementations own the isolation (a process, a real SGX enclave, ...) and the encrypted
    channel; the executor only sees this interface.
    """

    name: ClassVar[str]

    def __init__(self, config: EnclaveConfig) -> None:
        self.config = config

    @classmethod
    @abc.abstractmethod
    def check_platform(cls, config: EnclaveConfig) -> None:
        """Raise :class:`taoism.errors.BackendUnavailable` if this platform cannot host it."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the enclave and open the authenticated, encrypted session."""

    @abc.abstractmethod
    def load(
        self, description: Mapping[str, Any], tensors: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        """Send the program description and its weights (encrypted, once)."""

    @abc.abstractmethod
    def run(
        self, segment: int, tensors: Sequence[torch.Tensor], *, profile: bool = False
    ) -> RunReply:
        """Run one enclave segment on the given inputs."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters from both sides of the boundary."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the enclave; idempotent."""

    def prepare(self) -> None:
        """A hint that a run request follows soon (an inference starts with host work): a backend
        may wake an idle enclave now. Never raises; the default does nothing."""
        return None

    def abort(self, reason: str) -> None:
        """Stop the enclave at once, without a goodbye (the session is out of step); idempotent."""
        self.close()

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """True while the enclave can take requests."""

    def __enter__(self) -> EnclaveBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
