"""The full security evaluation on glyphs: the 3-seed table and sweep, written to docs/attack/.

    .venv/bin/python benchmarks/attack_glyphs.py [--model small_cnn] [--seeds 0,1,2] [--jobs 2]
        [--sweep] [--out DIR] [--cache-dir DIR]

Queries: 5 and 20 per class (310 and 1,240 with 62 classes). 20, not 50: one surrogate start
at 50 per class (3,100 queries) cost ~545 s on one loaded core (~170 s quiet), 27 of them per
table, which alone exceeds the 30-minute target on 2 cores (BENCHMARKS.md, security section).
Prints the table and the wall time (record it, with the machine's load, in BENCHMARKS.md). Not
part of `make test`; the tests run the smoke version.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from taoism.security.entry import main_attack


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default="small_cnn", help="victim architecture (default: %(default)s)"
    )
    p.add_argument(
        "--strategies", default="all", help="comma-separated (default: the six references)"
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    p.add_argument(
        "--per-class", default="5,20", help="query budgets per class (default: %(default)s)"
    )
    p.add_argument(
        "--jobs", type=int, default=2, help="local worker processes (default: %(default)s)"
    )
    p.add_argument("--sweep", action="store_true", help="also run the sweet-spot sweep")
    p.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent.parent / "docs" / "attack"),
        help="output directory (default: docs/attack of this checkout)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="training cache (default: $TAOISM_CACHE_DIR or ~/.cache/taoism)",
    )
    a = p.parse_args()
    t0 = time.perf_counter()
    load = os.getloadavg()
    main_attack(
        a.model,
        "glyphs",
        a.strategies.split(","),
        (),
        [int(s) for s in a.seeds.split(",")],
        queries_per_class=[int(q) for q in a.per_class.split(",")],
        jobs=a.jobs,
        do_sweep=a.sweep,
        out_dir=a.out,
        cache_dir=a.cache_dir,
    )
    print(
        f"wall {time.perf_counter() - t0:.0f} s; load average at start {load[0]:.1f}, "
        f"at end {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
