"""Core benchmark: whole model in the enclave vs plain PyTorch, split placements vs their parts.

One run measures, side by side, on the same machine and thread counts:
* ResNet-18 CIFAR whole model in the enclave (1 enclave thread) vs plain PyTorch on the CPU
  (1 host thread), batch 1 and 64;
* each placement also timed interleaved with plain PyTorch, pair by pair (3 x repeats pairs):
  the median per-pair ratio is the figure to compare on a shared machine;
* split placements (first half of the blocks in the enclave; every ReLU in the enclave):
  end-to-end latency vs the sum of the parts measured alone (device segments, enclave compute)
  plus their encryption time, and the per-crossing overhead.

``--enclave-spin-us N`` overrides the enclave's spin (EnclaveConfig.enclave_spin_us): with N
longer than a plain run (e.g. 40000), the enclave never blocks between two shielded runs, which
separates the per-crossing cost from the cold start after a pause.

Both this process and the enclave keep the memory they free (``taoism.enclave.heap``), so that
plain PyTorch and the shielded runs are timed under the same allocator: with glibc's default a
run's page faults depend on what ran before it (ResNet-18 batch 64: plain 510 ms back to back,
390 ms interleaved with shielded runs). ``--system-heap`` leaves malloc as glibc sets it.

Usage: python benchmarks/bench_core.py [--repeats 20] [--batches 1,64] [--device cpu]
       [--enclave-spin-us N] [--system-heap] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time

import torch

import taoism
from taoism.bench import time_plain
from taoism.cli import default_split
from taoism.enclave.heap import retain_heap
from taoism.zoo import example_input, get_model


def _interleaved(sm, model, x, device: str, repeats: int, warmup: int) -> dict:
    """Shielded and plain (on ``device``) timed in alternation, pair by pair: ratios robust to drift.

    On a shared machine the speed drifts between two blocks of repeats (minutes apart) by more
    than the overhead measured; alternating the two, in alternating order, and taking the median
    of the per-pair ratios compares them under the same conditions.
    """
    plain = model if device == "cpu" else copy.deepcopy(model).to(device)  # sm's copy stays put
    xd = x.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    pairs = []
    with torch.inference_mode():
        for i in range(warmup + 3 * repeats):
            first_plain = i % 2 == 0
            times = {}
            for who in ("plain", "shield") if first_plain else ("shield", "plain"):
                t0 = time.perf_counter()
                plain(xd) if who == "plain" else sm(x)
                sync()
                times[who] = time.perf_counter() - t0
            if i >= warmup:
                pairs.append((times["shield"], times["plain"]))
    ratios = sorted(a / b for a, b in pairs)
    q = lambda f: ratios[min(len(ratios) - 1, int(f * len(ratios)))]  # noqa: E731
    return {
        "pairs": len(pairs),
        "shield_median_s": statistics.median(a for a, _ in pairs),
        "plain_median_s": statistics.median(b for _, b in pairs),
        "ratio_median": statistics.median(ratios),
        "ratio_p10": q(0.1),
        "ratio_p90": q(0.9),
    }


def run(
    batches: list[int],
    repeats: int,
    warmup: int,
    device: str,
    threads: int,
    enclave_spin_us: int | None = None,
    system_heap: bool = False,
) -> dict:
    torch.set_num_threads(threads)
    host_heap = "system" if system_heap or not retain_heap() else "retained"
    enclave = taoism.EnclaveConfig(
        threads=1, enclave_spin_us=enclave_spin_us, retain_heap=not system_heap
    )
    model = get_model("resnet18", dataset_shape="cifar")
    results: dict = {
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": device,
        "host_threads": threads,
        "enclave_threads": 1,
        "enclave_spin_us": enclave_spin_us,
        "host_heap": host_heap,
        "enclave_heap": "system" if system_heap else "retained",
        "repeats": repeats,
        "warmup": warmup,
        "rows": [],
    }
    placements = {
        "enclave (whole model)": {"_default": "ENCLAVE"},
        "split: first half in enclave": default_split(model),
        "split: every ReLU in enclave": {"re:.*relu.*": "ENCLAVE", "_default": "GPU"},
    }
    for batch in batches:
        x = example_input("resnet18", "cifar", batch=batch)
        plain_cpu = time_plain(model, x, device="cpu", repeats=repeats, warmup=warmup)
        row_base = {"batch": batch, "plain_cpu": plain_cpu.to_json()}
        if device != "cpu":
            row_base["plain_device"] = time_plain(
                model, x, device=device, repeats=repeats, warmup=warmup
            ).to_json()
        print(f"batch {batch}: plain PyTorch CPU {plain_cpu.ms()}", flush=True)
        for label, placement in placements.items():
            with taoism.shield(model, x, placement, device=device, enclave=enclave) as sm:
                torch.testing.assert_close(sm(x), model(x).to(sm(x).device), rtol=1e-4, atol=1e-5)
                paired = _interleaved(sm, model, x, device, repeats, warmup)
                prof = sm.profile(x, repeats=repeats, warmup=warmup)
            t = prof.totals()
            parts = t["device_compute_s"] + t["enclave_compute_s"] + t["crypto_s"]
            crossings = int(t["crossings"])
            overhead = (prof.end_to_end.median - parts) / crossings if crossings else 0.0
            row = {
                **row_base,
                "placement": label,
                "end_to_end": prof.end_to_end.to_json(),
                "totals": t,
                "sum_of_parts_s": parts,
                "ratio_to_parts": prof.end_to_end.median / parts if parts else None,
                "ratio_to_plain_cpu": prof.end_to_end.median / plain_cpu.median,
                "interleaved": paired,
                "overhead_per_crossing_s": overhead,
            }
            results["rows"].append(row)
            print(
                f"  {label:<32} {prof.end_to_end.ms()}  x plain CPU "
                f"{row['ratio_to_plain_cpu']:.3f} (interleaved: {paired['ratio_median']:.3f}, "
                f"{paired['ratio_p10']:.3f}-{paired['ratio_p90']:.3f})  "
                f"x parts {row['ratio_to_parts']:.3f}  "
                f"crossings {crossings}  overhead/crossing {overhead * 1e6:.1f} us",
                flush=True,
            )
    return results


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--enclave-spin-us", type=int, default=None)
    p.add_argument(
        "--system-heap",
        action="store_true",
        help="leave malloc as glibc sets it, here and in the enclave (default: both keep their "
        "heap, taoism.enclave.heap)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    t0 = time.time()
    res = run(
        [int(b) for b in args.batches.split(",")],
        args.repeats,
        args.warmup,
        args.device,
        args.threads,
        args.enclave_spin_us,
        args.system_heap,
    )
    res["wall_s"] = time.time() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
