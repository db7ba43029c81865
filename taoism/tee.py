"""TEE profiles (memory budgets) and a cost model that projects what a real TEE would add.

Everything taoism *measures* runs in an ordinary OS process. This module holds the published
figures of real TEEs so that runs can be held to a real enclave's memory budget (see
:mod:`taoism.enclave.memory`) and so that measured profiles can be *projected* onto a real TEE.
A projection is a model, never a measurement: :class:`CostProjection` keeps the two apart.

Source of every published number: the project's platform reference, ``platform.md`` ("Real TEE
cost constants (published)"), quoted as ``[platform]`` below. Numbers that the reference does not give
are marked ``assumed`` and are meant to be overridden (``TeeCostModel.replace(...)``).

========================  ============================  ==========================================
parameter                 default                       source
========================  ============================  ==========================================
SGX1 client budget        93.5 MiB                      [platform]: 128 MB EPC reserved, ~93.5 MiB
                                                        usable; beyond it pages are evicted
SGX2 server budget        64 GiB                        [platform]: up to 512 GB EPC per socket;
                                                        64 GiB is an assumed per-socket figure
TrustZone budget          16 MiB                        [platform]: 16 MiB secure memory at most
                                                        (Raspberry Pi 3 class; DarkneTZ used 10 MB
                                                        data + 1 MB stack)
ECALL/OCALL transition    8,200 - 17,000 cycles         [platform] (a syscall is ~150 cycles)
EPC page swap             40,000 cycles per 4 KiB page  [platform]
CPU clock                 3.0 / 2.5 / 1.2 GHz           assumed (client Core / server Xeon /
                                                        Raspberry Pi 3 class Cortex-A53)
memory-encryption factor  1.0 (no slowdown)             assumed: [platform] gives no figure; set
                                                        it from your own measurement
TrustZone transition,     SGX figures                   assumed: [platform] gives no TrustZone
TrustZone page cost                                     world-switch or software-paging figure
========================  ============================  ==========================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from taoism.errors import ConfigError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

PLATFORM_SOURCE = "taoism platform reference (platform.md), 'Real TEE cost constants (published)'"


@dataclass(frozen=True)
class TeeCostModel:
    """Parameters of the projection of a measured profile onto a real TEE (a model).

    ``transition_cycles_low/high``: cycles per ECALL or OCALL (the projection reports both ends).
    ``page_swap_cycles`` per ``page_bytes`` moved beyond the memory budget. ``cpu_ghz`` turns
    cycles into seconds. ``mem_encryption_slowdown`` multiplies in-enclave compute time (1.0 =
    none). ``sources`` documents where each number comes from. Override with :meth:`replace`.
    """

    cpu_ghz: float
    transition_cycles_low: int = 8_200
    transition_cycles_high: int = 17_000
    page_swap_cycles: int = 40_000
    page_bytes: int = 4 * KiB
    mem_encryption_slowdown: float = 1.0
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.cpu_ghz, (int, float)) and self.cpu_ghz > 0):
            raise ConfigError(f"TeeCostModel.cpu_ghz must be > 0, got {self.cpu_ghz!r}")
        if not 0 <= self.transition_cycles_low <= self.transition_cycles_high:
            raise ConfigError(
                "TeeCostModel needs 0 <= transition_cycles_low <= transition_cycles_high, "
                f"got {self.transition_cycles_low}..{self.transition_cycles_high}"
            )
        if self.page_swap_cycles < 0 or self.page_bytes < 1:
            raise ConfigError("TeeCostModel.page_swap_cycles must be >= 0 and page_bytes >= 1")
        if not self.mem_encryption_slowdown >= 1.0:
            raise ConfigError(
                "TeeCostModel.mem_encryption_slowdown is a factor >= 1.0 "
                f"(1.0 = no slowdown), got {self.mem_encryption_slowdown!r}"
            )
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def replace(self, **changes: Any) -> TeeCostModel:
        """A copy with some parameters changed (marked ``user`` in ``sources``)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"TeeCostModel has no parameter(s) {sorted(unknown)}; it has "
                f"{[f.name for f in dataclasses.fields(self) if f.name != 'sources']}"
            )
        src = dict(self.sources)
        src.update({k: "user override" for k in changes if k != "sources"})
        return dataclasses.replace(self, **{**changes, "sources": changes.get("sources", src)})

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: (dict(getattr(self, f.name)) if f.name == "sources" else getattr(self, f.name))
            for f in dataclasses.fields(self)
        }


_SGX_SOURCES = {
    "transition_cycles_low": f"[platform] ECALL/OCALL 8,200-17,000 cycles ({PLATFORM_SOURCE})",
    "transition_cycles_high": f"[platform] ECALL/OCALL 8,200-17,000 cycles ({PLATFORM_SOURCE})",
    "page_swap_cycles": f"[platform] EPC page swap ~40,000 cycles per 4 KiB page ({PLATFORM_SOURCE})",
    "page_bytes": "[platform] 4 KiB EPC pages",
    "mem_encryption_slowdown": "assumed 1.0: the reference gives no memory-encryption figure; "
    "override with a measured factor",
}


@dataclass(frozen=True)
class TeeProfile:
    """A TEE class: its enclave memory budget and its cost model.

    ``memory_budget`` bytes of enclave data working set (None = unlimited). ``hardware_paging``:
    whether the TEE pages transparently beyond the budget (SGX EPC paging) or has a fixed secure
    carve-out (TrustZone); taoism itself always stays within the budget by chunking and sealed
    paging, whichever it is.
    """

    name: str
    memory_budget: int | None
    description: str
    source: str
    hardware_paging: bool
    cost: TeeCostModel

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "memory_budget": self.memory_budget,
            "description": self.description,
            "source": self.source,
            "hardware_paging": self.hardware_paging,
            "cost": self.cost.to_json(),
        }


PROFILES: Mapping[str, TeeProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            TeeProfile(
                "sgx1-client",
                int(93.5 * MiB),
                "Intel SGX1 on a client Core CPU (pre-Ice Lake): 128 MB EPC, ~93.5 MiB usable",
                f"[platform] ({PLATFORM_SOURCE})",
                True,
                TeeCostModel(
                    cpu_ghz=3.0, sources={**_SGX_SOURCES, "cpu_ghz": "assumed: 3.0 GHz client Core"}
                ),
            ),
            TeeProfile(
                "sgx2-server",
                64 * GiB,
                "Intel SGX2 on Xeon Ice Lake or later: large EPC (up to 512 GB per socket); 64 GiB assumed",
                f"[platform] up to 512 GB per socket ({PLATFORM_SOURCE}); 64 GiB is an assumed per-socket figure",
                True,
                TeeCostModel(
                    cpu_ghz=2.5, sources={**_SGX_SOURCES, "cpu_ghz": "assumed: 2.5 GHz server Xeon"}
                ),
            ),
            TeeProfile(
                "trustzone",
                16 * MiB,
                "Arm TrustZone secure world, Raspberry Pi 3 class: 16 MiB secure memory at most",
                f"[platform] ({PLATFORM_SOURCE}); DarkneTZ's TA used 10 MB data + 1 MB stack",
                False,
                TeeCostModel(
                    cpu_ghz=1.2,
                    sources={
                        **_SGX_SOURCES,
                        "cpu_ghz": "assumed: 1.2 GHz Raspberry Pi 3 class Cortex-A53",
                        "transition_cycles_low": "assumed equal to the SGX ECALL figure: the reference gives no "
                        "TrustZone world-switch cost",
                        "transition_cycles_high": "assumed equal to the SGX ECALL figure",
                        "page_swap_cycles": "assumed equal to the SGX EPC swap figure: TrustZone has no hardware "
                        "paging, the trusted application seals pages in software",
                    },
                ),
            ),
            TeeProfile(
                "unlimited",
                None,
                "No memory limit (accounting only); transitions costed as SGX",
                f"transition figures from [platform] ({PLATFORM_SOURCE})",
                True,
                TeeCostModel(cpu_ghz=3.0, sources={**_SGX_SOURCES, "cpu_ghz": "assumed: 3.0 GHz"}),
            ),
        )
    }
)


def get_profile(tee: str | TeeProfile) -> TeeProfile:
    """The profile named ``tee`` (or ``tee`` itself); ConfigError lists the known names."""
    if isinstance(tee, TeeProfile):
        return tee
    prof = PROFILES.get(tee) if isinstance(tee, str) else None
    if prof is None:
        raise ConfigError(f"unknown TEE profile {tee!r}; choose one of {sorted(PROFILES)}")
    return prof


def resolve_budget(tee: str | TeeProfile, memory_budget: int | None = None) -> int | None:
    """The enclave memory budget in bytes: ``memory_budget`` if given, else the profile's."""
    prof = get_profile(tee)
    if memory_budget is None:
        return prof.memory_budget
    if (
        isinstance(memory_budget, bool)
        or not isinstance(memory_budget, int)
        or memory_budget < 64 * KiB
    ):
        raise ConfigError(
            f"memory_budget must be an int of at least 65536 bytes (or None for the "
            f"profile's), got {memory_budget!r}"
        )
    return memory_budget


def format_bytes(n: float | None) -> str:
    if n is None:
        return "unlimited"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def cost_table() -> str:
    """The projection parameters of every profile, with their sources (one row per number)."""
    rows = [
        f"{'profile':<12} {'budget':>11} {'GHz':>5} {'ECALL cycles':>15} {'swap cyc/page':>14} "
        f"{'enc x':>6}"
    ]
    for p in PROFILES.values():
        c = p.cost
        rows.append(
            f"{p.name:<12} {format_bytes(p.memory_budget):>11} {c.cpu_ghz:>5.2f} "
            f"{c.transition_cycles_low:>7,}-{c.transition_cycles_high:<7,} "
            f"{c.page_swap_cycles:>8,}/{c.page_bytes // KiB}K {c.mem_encryption_slowdown:>6.2f}"
        )
    rows.append("sources:")
    for p in PROFILES.values():
        rows.append(f"  {p.name}: budget: {p.source}")
        for k, v in p.cost.sources.items():
            rows.append(f"    {k}: {v}")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Projection (a model)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostProjection:
    """What a real TEE of ``tee`` would add to a measured run, per inference. A MODEL.

    ``measured_*`` fields are copied from the measured profile and never altered; every
    ``projected_*``/``model_*`` field is computed from the cost model. Seconds throughout.
    """

    tee: str
    cost: TeeCostModel
    measured_end_to_end_s: float
    measured_enclave_compute_s: float
    transitions: int  # ECALLs + OCALLs per inference
    paged_bytes: int  # bytes moved beyond the budget per inference (sealed + unsealed + overflow)
    pages: int
    model_transition_s_low: float
    model_transition_s_high: float
    model_paging_s: float
    model_encryption_s: float

    @property
    def projected_end_to_end_s_low(self) -> float:
        return (
            self.measured_end_to_end_s
            + self.model_transition_s_low
            + self.model_paging_s
            + self.model_encryption_s
        )

    @property
    def projected_end_to_end_s_high(self) -> float:
        return (
            self.measured_end_to_end_s
            + self.model_transition_s_high
            + self.model_paging_s
            + self.model_encryption_s
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "projection (cost model, NOT measured)",
            "tee": self.tee,
            "cost_model": self.cost.to_json(),
            "measured": {
                "end_to_end_s": self.measured_end_to_end_s,
                "enclave_compute_s": self.measured_enclave_compute_s,
            },
            "model": {
                "transitions": self.transitions,
                "paged_bytes": self.paged_bytes,
                "pages": self.pages,
                "transition_s": [self.model_transition_s_low, self.model_transition_s_high],
                "paging_s": self.model_paging_s,
                "encryption_s": self.model_encryption_s,
                "projected_end_to_end_s": [
                    self.projected_end_to_end_s_low,
                    self.projected_end_to_end_s_high,
                ],
            },
        }

    def table(self) -> str:
        ms = 1e3
        return "\n".join(
            [
                f"PROJECTION onto {self.tee} (a cost model, not a measurement)",
                f"  measured end-to-end           {self.measured_end_to_end_s * ms:10.3f} ms",
                f"  + transitions  {self.transitions:>6} x {self.cost.transition_cycles_low:,}-"
                f"{self.cost.transition_cycles_high:,} cyc @ {self.cost.cpu_ghz:g} GHz "
                f"{self.model_transition_s_low * ms:8.3f}-{self.model_transition_s_high * ms:.3f} ms",
                f"  + paging  {format_bytes(self.paged_bytes):>11} = {self.pages:,} pages x "
                f"{self.cost.page_swap_cycles:,} cyc  {self.model_paging_s * ms:10.3f} ms",
                f"  + memory encryption x{self.cost.mem_encryption_slowdown:g} on enclave compute "
                f"{self.model_encryption_s * ms:10.3f} ms",
                f"  = projected end-to-end {self.projected_end_to_end_s_low * ms:.3f}-"
                f"{self.projected_end_to_end_s_high * ms:.3f} ms (model)",
            ]
        )

    def __str__(self) -> str:
        return self.table()


def _memory_numbers(memory: Any) -> tuple[int, int]:
    """(bytes sealed+unsealed per inference, peak bytes) from an enclave memory report."""
    if memory is None:
        return 0, 0
    if hasattr(memory, "to_json"):
        memory = memory.to_json()
    if "enclave" in memory and isinstance(memory["enclave"], dict):  # ShieldedModel.stats()
        memory = memory["enclave"].get("memory", {})
    inf = memory.get("last_inference", memory)
    moved = int(inf.get("sealed_bytes", 0)) + int(inf.get("unsealed_bytes", 0))
    peak = int(inf.get("peak_bytes", memory.get("peak_bytes", 0)) or 0)
    return moved, peak


def project(
    profile: Any,
    memory: Any = None,
    tee: str | TeeProfile = "sgx1-client",
    cost: TeeCostModel | None = None,
) -> CostProjection:
    """Project what a real ``tee`` would add to a measured :class:`taoism.runtime.Profile`.

    ``memory``: the enclave's memory accounting (``ShieldedModel.stats()``, its
    ``["enclave"]["memory"]`` part, or a report with ``to_json``). Transitions: one ECALL per
    enclave segment run plus one per tensor crossing beyond the first (OCALL-free design), i.e.
    ``max(1, crossings)`` per enclave segment. Paging: the bytes the run sealed and unsealed
    (taoism's software paging stands in for EPC paging), plus ``2 x (peak - budget)`` when the run
    was accounted without a budget but its peak exceeds ``tee``'s (evict + reload once each).
    Memory encryption: ``(factor - 1) x measured enclave compute``.
    """
    prof = get_profile(tee)
    c = cost or prof.cost
    segs = [
        s
        for s in profile.segments
        if getattr(s, "side", "") != "GPU" and (s.crossings or s.enclave_compute)
    ]
    transitions = sum(max(1, s.crossings) for s in segs)
    moved, peak = _memory_numbers(memory)
    overflow = 0
    mem_json = memory.to_json() if hasattr(memory, "to_json") else memory
    ran_unbudgeted = not isinstance(mem_json, dict) or _budget_of(mem_json) is None
    if prof.memory_budget is not None and ran_unbudgeted and peak > prof.memory_budget:
        overflow = 2 * (peak - prof.memory_budget)
    paged = moved + overflow
    pages = math.ceil(paged / c.page_bytes)
    hz = c.cpu_ghz * 1e9
    enclave_compute = sum(s.enclave_compute for s in profile.segments)
    return CostProjection(
        tee=prof.name,
        cost=c,
        measured_end_to_end_s=profile.end_to_end.median,
        measured_enclave_compute_s=enclave_compute,
        transitions=transitions,
        paged_bytes=paged,
        pages=pages,
        model_transition_s_low=transitions * c.transition_cycles_low / hz,
        model_transition_s_high=transitions * c.transition_cycles_high / hz,
        model_paging_s=pages * c.page_swap_cycles / hz,
        model_encryption_s=(c.mem_encryption_slowdown - 1.0) * enclave_compute,
    )


def _budget_of(mem: dict[str, Any]) -> int | None:
    if "enclave" in mem and isinstance(mem["enclave"], dict):
        mem = mem["enclave"].get("memory", {})
    return mem.get("budget_bytes")


__all__ = [
    "CostProjection",
    "PROFILES",
    "TeeCostModel",
    "TeeProfile",
    "cost_table",
    "format_bytes",
    "get_profile",
    "project",
    "resolve_budget",
]
