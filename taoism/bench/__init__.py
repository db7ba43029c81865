"""Measurement helpers: repeated timing with warm-up, median and spread, same-run baselines."""

from taoism.bench.stats import Stat
from taoism.bench.timing import time_callable, time_plain

__all__ = ["Stat", "time_callable", "time_plain"]
