"""Typed, frozen configuration objects."""

from __future__ import annotations

from dataclasses import dataclass

from taoism.errors import ConfigError


@dataclass(frozen=True)
class EnclaveConfig:
    """How the enclave is started and talked to.

    ``threads``: torch threads inside the enclave process. ``spin_us``: how long a waiting side
    busy-polls shared memory before blocking (0 = block at once). ``enclave_spin_us``: the same for
    the enclave waiting for the host's next request; None (default) = :meth:`enclave_spin`'s rule.
    ``host_spin_us``: the same for the host waiting for the enclave's reply; None (default) =
    :meth:`host_spin`'s rule.
    ``timeout_s``: the longest a
    request may take before the enclave is declared hung and stopped. ``start_timeout_s``: the
    longest the enclave may take to start and finish the key exchange. ``tee``: the TEE profile
    (:data:`taoism.tee.PROFILES`: ``sgx1-client``, ``sgx2-server``, ``trustzone``, ``unlimited``)
    whose memory budget the enclave keeps to, by chunking layers and sealing what does not fit;
    ``memory_budget``: that budget in bytes (None = the profile's). ``sessions``: how many
    enclave sessions a ShieldedModel starts (a pool; each holds the whole program).
    ``retain_heap``: the enclave process keeps the memory it frees for reuse instead of returning
    it to the kernel (:mod:`taoism.enclave.heap`; as an SGX enclave's committed heap, and without
    a page fault per 4 KiB of every large activation each inference); its resident size then
    stays at its peak.
    """

    backend: str = "sim"
    threads: int = 1
    spin_us: int = 200
    enclave_spin_us: int | None = None
    host_spin_us: int | None = None
    timeout_s: float = 120.0
    start_timeout_s: float = 60.0
    max_frame_bytes: int = 1 << 30
    gramine_manifest: str | None = None  # backend "gramine": the signed .manifest.sgx to run
    tee: str = "unlimited"
    memory_budget: int | None = None
    sessions: int = 1  # enclave sessions per ShieldedModel (a pool: N inferences at once)
    retain_heap: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"EnclaveConfig.threads must be an int >= 1, got {self.threads!r}")
        if not isinstance(self.sessions, int) or self.sessions < 1:
            raise ConfigError(f"EnclaveConfig.sessions must be an int >= 1, got {self.sessions!r}")
        if not isinstance(self.retain_heap, bool):
            raise ConfigError(
                f"EnclaveConfig.retain_heap must be True or False, got {self.retain_heap!r}"
            )
        if self.spin_us < 0:
            raise ConfigError(f"EnclaveConfig.spin_us must be >= 0, got {self.spin_us!r}")
        for name in ("enclave_spin_us", "host_spin_us"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"EnclaveConfig.{name} must be >= 0 or None, got {value!r}")
        if self.timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ConfigError("EnclaveConfig timeouts must be > 0 seconds")
        if self.max_frame_bytes < 1 << 16:
            raise ConfigError("EnclaveConfig.max_frame_bytes must be at least 64 KiB")
        from taoism.tee import resolve_budget

        resolve_budget(self.tee, self.memory_budget)  # raises ConfigError on a bad tee or budget

    @property
    def budget_bytes(self) -> int | None:
        """The enclave memory budget in bytes (None = unlimited)."""
        from taoism.tee import resolve_budget

        return resolve_budget(self.tee, self.memory_budget)

    def enclave_spin(self, host_threads: int, cpus: int) -> int:
        """Microseconds the enclave busy-polls for the next request before it blocks.

        While the host computes a device segment the enclave waits; a blocked process on an idle
        vCPU takes ~25-50 us to wake, and with every crossing paying it, per-layer placements
        slow down (ResNet-18, every ReLU in the enclave: 1.77x plain at 200 us, 1.19x at 3 ms,
        1 host thread, 2 vCPUs). So the enclave spins for up to 5 ms when a core is free for it
        (``host_threads`` + the enclave's threads x sessions <= ``cpus``), and for ``spin_us``
        otherwise, where spinning would take a core from the host's compute.
        """
        if self.enclave_spin_us is not None:
            return self.enclave_spin_us
        free_core = host_threads + self.threads * self.sessions <= cpus
        return max(self.spin_us, 5000) if free_core and self.spin_us > 0 else self.spin_us

    def host_spin(self, cpus: int) -> int:
        """Microseconds the host busy-polls for the enclave's reply before it blocks.

        A reply to a per-layer segment takes 0.1-0.5 ms on a 2-vCPU VM (decrypt, compute,
        encrypt, all of it slower after a wait), so a 200 us spin often ends just before it and the
        host pays a parked process's wake-up (~100-250 us there) on top. While it waits the host
        computes nothing, so when its waiting thread and the enclave's threads x sessions fit the
        CPUs it spins up to 2 ms; otherwise ``spin_us``, which leaves the enclave its cores.
        """
        if self.host_spin_us is not None:
            return self.host_spin_us
        free_core = 1 + self.threads * self.sessions <= cpus
        return max(self.spin_us, 2000) if free_core and self.spin_us > 0 else self.spin_us
