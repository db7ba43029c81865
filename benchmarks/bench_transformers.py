"""Zoo transformers: capture time of both paths, and whole-enclave vs plain latency.

One run measures, on the same machine and thread counts, for ``vit_tiny`` (CIFAR shape) and
``bert_tiny`` (16 tokens with a mask):
* capture time of torch.fx and of torch.export (one warm-up capture each, then repeats; the
  first torch.export of a process also pays dynamo's start-up, reported apart);
* plain PyTorch latency and whole-enclave latency (1 enclave thread, 1 host thread) at each
  batch, with the model captured by torch.fx and by torch.export (the enclave runs both);
* the ATen ops each exported graph uses (what the enclave needs to run it).

Usage: python benchmarks/bench_transformers.py [--repeats 10] [--batches 1,8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import taoism
from taoism.bench import time_callable
from taoism.bench.stats import Stat
from taoism.capture import capture
from taoism.zoo import example_inputs, get_model


def _capture_times(
    model: torch.nn.Module, xs: tuple, kind: str, repeats: int
) -> tuple[float, Stat]:
    t0 = time.perf_counter()
    capture(model, xs, capture=kind)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        capture(model, xs, capture=kind)
        times.append(time.perf_counter() - t0)
    return first, Stat.of(times)


def run(batches: list[int], repeats: int, warmup: int, capture_repeats: int) -> dict:
    torch.set_num_threads(1)
    res: dict = {
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "host_threads": 1,
        "enclave_threads": 1,
        "repeats": repeats,
        "warmup": warmup,
        "models": {},
    }
    for name in ("vit_tiny", "bert_tiny"):
        model = get_model(name)
        xs = example_inputs(name, batch=1)
        row: dict = {"capture": {}, "latency": []}
        for kind in ("fx", "export"):
            first, stat = _capture_times(model, xs, kind, capture_repeats)
            row["capture"][kind] = {"first_s": first, **stat.to_json()}
            print(f"{name}: capture {kind:<6} first {first:.3f} s, then {stat.ms()}", flush=True)
        cg = capture(model, xs, capture="export")
        row["aten_ops"] = sorted(
            {i.target for i in cg.nodes.values() if i.target.startswith("aten.")}
        )
        print(f"{name}: ATen ops {row['aten_ops']}", flush=True)
        for batch in batches:
            xb = example_inputs(name, batch=batch)
            plain = time_callable(lambda: model(*xb), repeats=repeats, warmup=warmup)
            entry = {"batch": batch, "plain": plain.to_json()}
            for kind in ("fx", "export"):
                try:
                    with taoism.shield(
                        model, xb, {"_default": "ENCLAVE"}, device="cpu", threads=1, capture=kind
                    ) as sm:
                        torch.testing.assert_close(sm(*xb), model(*xb), rtol=1e-4, atol=1e-5)
                        enc = time_callable(lambda: sm(*xb), repeats=repeats, warmup=warmup)
                    entry[kind] = {"enclave": enc.to_json(), "ratio": enc.median / plain.median}
                    print(
                        f"{name} batch {batch} {kind}: plain {plain.ms()}  enclave {enc.ms()}  "
                        f"x{enc.median / plain.median:.2f}",
                        flush=True,
                    )
                except taoism.PlacementError as exc:  # an op the enclave does not run
                    entry[kind] = f"refused: {str(exc)[:160]}"
                    print(f"{name} batch {batch} {kind}: enclave refused: {str(exc)[:100]}")
            row["latency"].append(entry)
        res["models"][name] = row
    return res


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--capture-repeats", type=int, default=3)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    started = time.time()
    res = run(
        [int(b) for b in args.batches.split(",")], args.repeats, args.warmup, args.capture_repeats
    )
    res["wall_s"] = time.time() - started
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
