"""Run every benchmark once, writing JSON (and the strategy plots) under --out.

Usage: python benchmarks/run_all.py [--out results/bench] [--repeats 20] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="results/bench")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="few repeats, small batches (a smoke run)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    reps = "3" if args.quick else str(args.repeats)
    runs = [
        [
            sys.executable,
            str(HERE / "bench_boundary.py"),
            "--repeats",
            reps,
            "--json",
            str(out / "boundary.json"),
        ],
        [
            sys.executable,
            str(HERE / "bench_core.py"),
            "--repeats",
            reps,
            "--batches",
            "1" if args.quick else "1,64",
            "--json",
            str(out / "core.json"),
        ],
        [
            sys.executable,
            "-m",
            "taoism.cli",
            "bench",
            "--model",
            "resnet18",
            "--batch",
            "1",
            "--repeats",
            reps,
            "--out",
            str(out / "strategies-resnet18-cifar-b1"),
        ],
    ]
    if (HERE / "bench_memory.py").exists():
        runs.append(
            [
                sys.executable,
                str(HERE / "bench_memory.py"),
                "--repeats",
                "2" if args.quick else "3",
                "--json",
                str(out / "memory.json"),
            ]
        )
    failed = 0
    for cmd in runs:
        print("$", " ".join(cmd), flush=True)
        failed += subprocess.call(cmd) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
