"""TEESlice training figures: accuracy vs the victim, TEE share before/after pruning, wall time.

For each ``MODEL:DATASET`` pair: the data set's training images are split in a public and a
private half; a public model and the victim (same architecture) are trained on them, then
TEESlice (teacher distillation, sliced student, iterative pruning; the artifact's coefficients)
on the private half, with ``--threads`` torch threads. Prints one JSON object per pair and
writes them all to ``--json``. Use a fresh ``--cache-dir`` to measure training time (a cache
hit skips training).

Usage: python benchmarks/bench_teeslice.py --runs small_cnn:digits,gap_resnet20:digits
       [--epochs 20] [--lr 0.05] [--train-size N] [--threads 2] [--set FIELD=VALUE ...] [--latency]
       [--cache-dir DIR] [--json OUT]

``--epochs`` sizes the public model's and the victim's training; TEESlice itself runs with the
TeeSliceConfig defaults (teacher 20, student 40, pruning phase 20 epochs) unless ``--set``
overrides a field (e.g. ``--set student_epochs=20 --set prune_epochs=10``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from taoism.teeslice import TeeSliceConfig
from taoism.teeslice.command import run_teeslice


def latency_rows(
    victim: torch.nn.Module, sliced: torch.nn.Module, x: torch.Tensor, *, repeats: int, threads: int
) -> list[dict]:
    """End-to-end latency of the victim under the reference strategies and of the sliced model
    under ``teeslice``, measured in one run (taoism bench's own row function)."""
    from taoism.bench.strategies import _strategy_row
    from taoism.config import EnclaveConfig
    from taoism.strategies import BASELINE_STRATEGIES, REFERENCE_STRATEGIES

    enclave, dev = EnclaveConfig(threads=threads), torch.device("cpu")
    rows = []
    specs = [
        *BASELINE_STRATEGIES,
        *(s for s in REFERENCE_STRATEGIES if s not in BASELINE_STRATEGIES),
    ]
    for spec in specs:
        target = sliced if spec == "teeslice" else victim
        row = _strategy_row(
            spec,
            type(target).__name__,
            target,
            x,
            device=dev,
            enclave=enclave,
            repeats=repeats,
            warmup=2,
            victim=None,
        )
        rows.append(
            {
                k: row[k]
                for k in (
                    "name",
                    "model",
                    "e2e_ms",
                    "p10_ms",
                    "p90_ms",
                    "enclave_ms",
                    "params_tee_pct",
                    "flops_tee_pct",
                    "max_abs_err",
                )
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the TEESlice training benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="small_cnn:digits,resnet18:digits")
    ap.add_argument("--epochs", type=int, default=20, help="public model and victim epochs")
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.05, help="public model and victim learning rate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--latency", action="store_true", help="also time the strategies (batch 64)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a TeeSliceConfig field (repeatable)",
    )
    args = ap.parse_args(argv)
    from taoism.cli.teeslice import parse_sets

    overrides = parse_sets(None, None, tuple(args.sets))  # type: ignore[arg-type]
    out = []
    for run in args.runs.split(","):
        model, dataset = run.split(":")
        cfg = TeeSliceConfig(**{"seed": args.seed, **overrides})
        load_start = os.getloadavg()
        result, victim, res = run_teeslice(
            model,
            dataset,
            seed=args.seed,
            train_size=args.train_size,
            public_epochs=args.epochs,
            victim_epochs=args.epochs,
            lr=args.lr,
            config=cfg,
            threads=args.threads,
            cache_dir=args.cache_dir,
            progress=args.progress,
        )
        if args.latency:
            from taoism.data import load_dataset

            x = load_dataset(dataset).x_test[:64]
            res["latency"] = latency_rows(victim, result.model, x, repeats=args.repeats, threads=1)
        res["machine"] = {
            "cpus": os.cpu_count(),
            "load_avg_start": load_start,
            "load_avg": os.getloadavg(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        }
        print(json.dumps({k: v for k, v in res.items() if k != "config"}), flush=True)
        out.append(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
