"""Latency breakdown of a shielded model: per segment, per layer, and end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taoism.runtime.stats import Stat


@dataclass(frozen=True)
class SegmentTiming:
    """Where one segment's time goes (medians over the repeats, seconds)."""

    index: int
    side: str
    nodes: int
    total: Stat  # host-observed time of the segment (a round trip for enclave segments)
    device_compute: float = 0.0
    enclave_compute: float = 0.0
    crypto: float = 0.0  # encryption + decryption, both sides
    copy: float = 0.0  # host copies into and out of shared memory (and device<->host)
    wait: float = 0.0  # the rest of the round trip: wake-ups, queueing, framing
    crossings: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object."""
        return {
            "index": self.index,
            "side": self.side,
            "nodes": self.nodes,
            "total": self.total.to_json(),
            "device_compute_s": self.device_compute,
            "enclave_compute_s": self.enclave_compute,
            "crypto_s": self.crypto,
            "copy_s": self.copy,
            "wait_s": self.wait,
            "crossings": self.crossings,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class LayerTiming:
    """One node's compute time on its side (median over the repeats, seconds)."""

    name: str
    kind: str
    placement: str
    segment: int
    time: Stat

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object."""
        return {
            "name": self.name,
            "kind": self.kind,
            "placement": self.placement,
            "segment": self.segment,
            "time": self.time.to_json(),
        }


@dataclass(frozen=True)
class Profile:
    """Measured end-to-end latency and its breakdown for one input batch."""

    batch: int
    repeats: int
    warmup: int
    device: str
    end_to_end: Stat
    segments: tuple[SegmentTiming, ...]
    layers: tuple[LayerTiming, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, float]:
        """Sums over the segments of their medians: compute per side, crypto, copy, wait, bytes."""
        s = self.segments
        return {
            "end_to_end_s": self.end_to_end.median,
            "device_compute_s": sum(x.device_compute for x in s),
            "enclave_compute_s": sum(x.enclave_compute for x in s),
            "crypto_s": sum(x.crypto for x in s),
            "copy_s": sum(x.copy for x in s),
            "wait_s": sum(x.wait for x in s),
            "sum_of_segments_s": sum(x.total.median for x in s),
            "crossings": float(sum(x.crossings for x in s)),
            "bytes": float(sum(x.bytes for x in s)),
            "throughput_per_s": self.batch / self.end_to_end.median
            if self.end_to_end.median
            else 0.0,
        }

    def to_json(self) -> dict[str, Any]:
        """The profile as a JSON object."""
        return {
            "batch": self.batch,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "device": self.device,
            "end_to_end": self.end_to_end.to_json(),
            "totals": self.totals(),
            "segments": [x.to_json() for x in self.segments],
            "layers": [x.to_json() for x in self.layers],
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    def table(self) -> str:
        """The profile as a text table."""
        rows = [
            f"{'layer':<28} {'type':<16} {'place':<7} {'seg':>3} {'median ms':>10} {'p10':>8} {'p90':>8}"
        ]
        for l in self.layers:
            rows.append(
                f"{l.name[:28]:<28} {l.kind[:16]:<16} {l.placement:<7} {l.segment:>3} "
                f"{l.time.median * 1e3:>10.3f} {l.time.p10 * 1e3:>8.3f} {l.time.p90 * 1e3:>8.3f}"
            )
        rows.append("")
        rows.append(
            f"{'seg':>3} {'side':<7} {'nodes':>5} {'total ms':>9} {'device':>8} {'enclave':>8} "
            f"{'crypto':>8} {'copy':>8} {'wait':>8} {'cross':>5} {'KiB':>9}"
        )
        for s in self.segments:
            rows.append(
                f"{s.index:>3} {s.side:<7} {s.nodes:>5} {s.total.median * 1e3:>9.3f} "
                f"{s.device_compute * 1e3:>8.3f} {s.enclave_compute * 1e3:>8.3f} "
                f"{s.crypto * 1e3:>8.3f} {s.copy * 1e3:>8.3f} {s.wait * 1e3:>8.3f} "
                f"{s.crossings:>5} {s.bytes / 1024:>9.1f}"
            )
        t = self.totals()
        rows.append("")
        rows.append(
            f"end-to-end {self.end_to_end.ms()} at batch {self.batch} on {self.device} "
            f"({t['throughput_per_s']:.1f} samples/s); sum of segments "
            f"{t['sum_of_segments_s'] * 1e3:.3f} ms: device {t['device_compute_s'] * 1e3:.3f}, "
            f"enclave {t['enclave_compute_s'] * 1e3:.3f}, crypto {t['crypto_s'] * 1e3:.3f}, "
            f"copy {t['copy_s'] * 1e3:.3f}, wait {t['wait_s'] * 1e3:.3f} ms; "
            f"{int(t['crossings'])} crossings, {t['bytes'] / 1024:.1f} KiB"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()
