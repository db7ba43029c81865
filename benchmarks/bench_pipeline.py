"""Pipelined inference (``ShieldedModel.map``) against the slowest stage's own rate.

For ResNet-18 CIFAR under ``teeslice`` (teeslice_resnet18: backbone on the device, slices in
the enclave) and under the first-half split (``taoism.cli.default_split``), in one run:
- each stage's own time: the micro-batches run one at a time (nothing overlaps), the time of
  every device segment and every enclave segment (host-observed, crypto and copies included)
  summed per side; the slowest stage's rate = micro-batches / its summed seconds;
- with ``sessions``: a pool of enclave sessions (``EnclaveConfig(sessions=2)``), micro-batches
  spread over them, so one micro-batch's enclave span no longer blocks the next;
- pipelined: ``map`` over one batch of ``--batch`` rows in micro-batches of ``--micro-batch``
  (fill and drain included), and a stream of ``--stream`` such batches in one ``map`` call
  (steady state);
- ratio = pipelined rate / slowest stage's rate (1.0 = the slow stage never waits).
Warm-up, ``--repeats`` repeats interleaved, median and spread. Every pipelined output is
compared with the plain model (max abs error printed). Host and enclave each get
``--threads``/``--enclave-threads`` torch threads; on a 2-core box both stages share the cores.

Usage: python benchmarks/bench_pipeline.py [--batch 16] [--micro-batch 4] [--stream 4]
       [--repeats 5] [--warmup 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

import taoism
from taoism.bench.stats import Stat
from taoism.cli import default_split
from taoism.runtime.pipeline import PipelineRun, run_pipelined
from taoism.zoo import get_model, input_shape


def _configs() -> list[tuple[str, torch.nn.Module, dict]]:
    torch.manual_seed(0)
    tee = get_model("teeslice_resnet18", dataset_shape="cifar").eval()
    plain = get_model("resnet18", dataset_shape="cifar").eval()
    return [
        ("teeslice", tee, {"strategy": "teeslice"}),
        ("teeslice, 2 sessions", tee, {"strategy": "teeslice", "sessions": 2}),
        ("first-half split", plain, {"placement": default_split(plain)}),
    ]


def measure(name: str, model: torch.nn.Module, kw: dict, args: argparse.Namespace) -> dict:
    """Stage times, pipelined rates and their ratio for one placement."""
    shape = input_shape("resnet18", "cifar")
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(7))
    mb = args.micro_batch
    micro = list(torch.split(x, mb))
    with torch.no_grad():
        ref = model(x)
    kw = dict(kw)
    enclave = taoism.EnclaveConfig(threads=args.enclave_threads, sessions=kw.pop("sessions", 1))
    with taoism.shield(model, x[:mb], enclave=enclave, **kw) as sm:
        err = (sm.map(x, micro_batch=mb) - ref).abs().max().item()
        stream = [x] * args.stream
        err = max(err, max((y - ref).abs().max().item() for y in sm.map(stream, micro_batch=mb)))
        dev, enc, seq, one, steady = [], [], [], [], []
        for r in range(args.warmup + args.repeats):
            busy = {"GPU": 0.0, "ENCLAVE": 0.0}
            wall = 0.0
            for m in micro:  # one micro-batch at a time: each stage's own time
                rec = PipelineRun()
                run_pipelined(sm, [m], None, rec)
                wall += rec.wall_s
                for k in busy:
                    busy[k] += rec.busy[k]
            p1, ps = PipelineRun(), PipelineRun()
            run_pipelined(sm, x, mb, p1)
            run_pipelined(sm, stream, mb, ps)
            if r >= args.warmup:
                dev.append(busy["GPU"])
                enc.append(busy["ENCLAVE"])
                seq.append(wall)
                one.append(p1.wall_s)
                steady.append(ps.wall_s / args.stream)
    n = len(micro)
    d, e, s, o, st = map(Stat.of, (dev, enc, seq, one, steady))
    slow = max(d.median, e.median)
    return {
        "placement": name,
        "segments": len(sm.plan.segments),
        "enclave_keeps_values": any(sg.keep for sg in sm.plan.enclave_segments),
        "device_stage_s": d.to_json(),
        "enclave_stage_s": e.to_json(),
        "sequential_s": s.to_json(),
        "pipelined_one_batch_s": o.to_json(),
        "pipelined_steady_per_batch_s": st.to_json(),
        "slowest_stage_rate_mb_per_s": n / slow,
        "ratio_one_batch": slow / o.median,
        "ratio_steady": slow / st.median,
        "speedup_vs_sequential": s.median / st.median,
        "max_abs_error": err,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument(
        "--stream", type=int, default=4, help="batches per map() call for the steady state"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="host torch threads")
    p.add_argument("--enclave-threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    rows = [measure(name, m, kw, args) for name, m, kw in _configs()]
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": load0,
        "load_after": os.getloadavg(),
        "threads": args.threads,
        "enclave_threads": args.enclave_threads,
        "batch": args.batch,
        "micro_batch": args.micro_batch,
        "stream": args.stream,
        "repeats": args.repeats,
    }
    print(
        f"machine {meta['machine']}, {meta['cpus']} CPUs, load {load0[0]:.1f} -> "
        f"{meta['load_after'][0]:.1f}; batch {args.batch} in micro-batches of {args.micro_batch}, "
        f"{args.threads} host + {args.enclave_threads} enclave thread(s)"
    )
    print(
        f"{'placement':<22} {'device s':>9} {'enclave s':>9} {'seq s':>8} {'pipe s':>8} "
        f"{'steady s':>8} {'ratio1':>7} {'ratio_ss':>8} {'speedup':>7} {'max err':>8}"
    )
    for r in rows:
        med = lambda k: r[k]["median"]  # noqa: E731
        print(
            f"{r['placement']:<22} {med('device_stage_s'):>9.4f} {med('enclave_stage_s'):>9.4f} "
            f"{med('sequential_s'):>8.4f} {med('pipelined_one_batch_s'):>8.4f} "
            f"{med('pipelined_steady_per_batch_s'):>8.4f} {r['ratio_one_batch']:>7.3f} "
            f"{r['ratio_steady']:>8.3f} {r['speedup_vs_sequential']:>7.3f} {r['max_abs_error']:>8.2g}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
