"""Measurement helpers: repeated timing with warm-up, median and spread, same-run baselines."""

from taoism.bench.stats import Stat

__all__ = ["Stat"]
