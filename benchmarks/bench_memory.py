"""Benchmark whole models in the enclave under TEE memory budgets.

For ResNet-18 and ResNet-50 (ImageNet, 224x224, random weights), batch 1 and 16, the whole
model runs in the enclave (a real enclave process behind the encrypted boundary) under the
``unlimited``, ``sgx1-client`` (93.5 MiB) and ``trustzone`` (16 MiB) profiles, in one run.
For each configuration, after one warm-up inference (timed inferences interleave the profiles,
so that load drift on a shared machine hits them alike):

* MEASURED: end-to-end latency over ``--repeats`` inferences (median, p10, p90), the latency
  ratio to ``unlimited``, the enclave's accounted peak working set (by category), bytes sealed
  and unsealed per inference, chunked layers, the enclave process's RSS (runtime included,
  reported separately), and the host plan's expected peak;
* MODEL (cost projection, labelled as such): what a real TEE of that profile would add
  (transitions, EPC paging of the bytes moved beyond the budget), from :mod:`taoism.tee`.

Outputs are checked against the plain model (rtol 1e-4, atol 1e-5 x max|output|: chunked
convolutions round differently, and 50 float32 layers add that up) and the error is reported.

Usage: python benchmarks/bench_memory.py [--repeats 3] [--models resnet18,resnet50]
       [--batches 1,16] [--tees unlimited,sgx1-client,trustzone] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from types import SimpleNamespace
from typing import Any

import torch

import taoism
from taoism import zoo
from taoism.bench.stats import Stat
from taoism.tee import format_bytes, get_profile, project


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:9.1f}"


def bench_group(
    name: str, batch: int, tees: list[str], repeats: int, threads: int
) -> list[dict[str, Any]]:
    """One model and batch under every profile; timed inferences interleave the profiles so that
    load drift on a shared machine hits them alike."""
    torch.manual_seed(0)
    model = zoo.get_model(name, dataset_shape="imagenet")
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
    scale = ref.abs().max().item()
    sms, info = {}, {}
    try:
        for tee in tees:
            t0 = time.perf_counter()
            sms[tee] = taoism.shield(
                model,
                x,
                placement={"_default": "ENCLAVE"},
                device="cpu",
                tee=tee,
                threads=threads,
                enclave=taoism.EnclaveConfig(timeout_s=1800.0),
            )
            shield_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            y = sms[tee](x)  # warm-up: the first run is accounted node by node (and checked)
            err = (y - ref).abs().max().item()
            info[tee] = {
                "shield_s": shield_s,
                "first_run_s": time.perf_counter() - t0,
                "max_abs_error": err,
                "max_abs_error_rel_to_max_output": err / scale,
            }
            # Layer by layer, chunked equals unchunked at rtol 1e-4 / atol 1e-5 (tests/test_memory.py);
            # through 50 float32 layers with differently blocked convolutions the rounding adds up,
            # so the whole model is held to an absolute tolerance scaled to its output.
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5 * max(1.0, scale))
        times: dict[str, list[float]] = {t: [] for t in tees}
        for _ in range(repeats):
            for tee in tees:
                t0 = time.perf_counter()
                sms[tee](x)
                times[tee].append(time.perf_counter() - t0)
        rows = []
        for tee in tees:
            sm = sms[tee]
            stat = Stat.of(times[tee])
            mem = sm.stats()["enclave"]["memory"]
            inf = mem["last_inference"]
            chunked = [n for n in mem["nodes"] if n["chunks"] > 1 and not n["name"].startswith("<")]
            mp = sm.memory_plan
            prof = SimpleNamespace(
                end_to_end=stat,
                segments=[
                    SimpleNamespace(
                        side="ENCLAVE", crossings=sm.plan.crossings(), enclave_compute=stat.median
                    )
                ],
            )
            projections = {
                t: project(prof, mem, t).to_json()
                for t in ("sgx1-client", "trustzone")
                if t == tee or tee == "unlimited"
            }
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "tee": tee,
                    "budget_bytes": mem["budget_bytes"],
                    "measured": {
                        "latency": stat.to_json(),
                        **info[tee],
                        "peak_bytes": inf["peak_bytes"],
                        "peak_breakdown": inf["peak_breakdown"],
                        "within_budget": mem["within_budget"],
                        "sealed_bytes_per_inference": inf["sealed_bytes"],
                        "unsealed_bytes_per_inference": inf["unsealed_bytes"],
                        "weights_resident_bytes": mem["weights"]["resident_bytes"],
                        "weights_sealed_bytes": mem["weights"]["sealed_bytes"],
                        "chunked_layers": len(chunked),
                        "max_chunks": max((n["chunks"] for n in chunked), default=1),
                        "fast_runs": mem["fast_runs"],
                        "runs": mem["runs"],
                        "enclave_runtime_rss_not_counted": mem["runtime_not_counted"],
                        "seal_s_total": mem["seal"]["seal_s"],
                        "unseal_s_total": mem["seal"]["unseal_s"],
                    },
                    "host_plan": None
                    if mp is None
                    else {
                        "expected_peak_bytes": mp.peak_bytes,
                        "chunked_layers": len(mp.chunked_nodes),
                        "sealed_bytes_per_inference": mp.sealed_bytes,
                        "unsealed_bytes_per_inference": mp.unsealed_bytes,
                    },
                    "model_projection": projections,
                }
            )
        return rows
    finally:
        for sm in sms.values():
            sm.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--tees", default="unlimited,sgx1-client,trustzone")
    ap.add_argument("--threads", type=int, default=1, help="torch threads inside the enclave")
    ap.add_argument("--json", default=None, help="write all results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tees = args.tees.split(",")
    for t in tees:
        get_profile(t)
    rows = []
    print(
        f"{'model':<9} {'b':>3} {'tee':<12} {'median ms':>10} {'x unl.':>7} {'peak':>11} "
        f"{'budget':>11} {'sealed/inf':>11} {'unsealed/inf':>12} {'chunked':>7} {'rss':>10}"
    )
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            group = bench_group(name, batch, tees, args.repeats, args.threads)
            base = next(
                (r["measured"]["latency"]["median"] for r in group if r["tee"] == "unlimited"), None
            )
            for r in group:
                m = r["measured"]
                med = m["latency"]["median"]
                m["latency_ratio_to_unlimited"] = med / base if base else None
                rows.append(r)
                ratio = f"{med / base:6.2f}x" if base else "    -  "
                print(
                    f"{name:<9} {batch:>3} {r['tee']:<12} {_fmt_ms(med):>10} {ratio:>7} "
                    f"{format_bytes(m['peak_bytes']):>11} {format_bytes(r['budget_bytes']):>11} "
                    f"{format_bytes(m['sealed_bytes_per_inference']):>11} "
                    f"{format_bytes(m['unsealed_bytes_per_inference']):>12} {m['chunked_layers']:>7} "
                    f"{format_bytes(m['enclave_runtime_rss_not_counted']['max_rss_bytes']):>10}",
                    flush=True,
                )
    print("\nMODEL (cost projection onto a real TEE, not measured): projected end-to-end, ms")
    for r in rows:
        for t, p in r["model_projection"].items():
            lo, hi = p["model"]["projected_end_to_end_s"]
            print(
                f"  {r['model']:<9} b{r['batch']:<3} run under {r['tee']:<12} -> {t:<12} "
                f"measured {r['measured']['latency']['median'] * 1e3:9.1f}  projected "
                f"{lo * 1e3:9.1f}-{hi * 1e3:9.1f}  (paging {p['model']['paging_s'] * 1e3:8.1f}, "
                f"transitions {p['model']['transition_s'][1] * 1e3:.3f})"
            )
    out = {
        "format": "taoism-bench-memory/1",
        "repeats": args.repeats,
        "threads": args.threads,
        "host": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "results": rows,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
