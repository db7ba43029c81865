"""Security evaluation: measure what each TSDP strategy leaks (S&P'24 protocol).

The attacker starts from what a deployment exposes (``taoism.strategies.attacker_view`` on
``taoism.shield(victim, x, strategy=...)``), replaces what is shielded with a public model's
weights (de-obfuscating morphed and obfuscated layers as the published attacks do), fine-tunes a
surrogate on labels queried from the deployment, and then measures

* model stealing: surrogate test accuracy, fidelity to the victim, transfer adversarial success;
* membership inference: a confidence-threshold attack calibrated on a shadow model, run on the
  surrogate (plus the generalisation and confidence gaps).

>>> from taoism.security import run_attack_table, sweep
>>> table = run_attack_table("small_cnn", "digits", queries=[50], seeds=[0], smoke=True,
...                          out_dir="results/")
>>> print(format_table(table))

Modules: ``experiment`` (configuration, one job: deploy, attack, result), ``models`` (public
model, victim, shadow model, splits, linear probe), ``starts`` (the attacker's starting points,
TEESlice's three), ``tuning`` (the held-out lr x epochs grid), ``attacks`` / ``views`` (the
attacks and the de-obfuscation), ``runner`` (in process, processes, Ray), ``report``
(aggregation and outputs), ``table`` / ``sweep`` (the two entry points), ``entry`` (what the CLI
calls), ``cache``. See :mod:`taoism.security.experiment` for the data setting.
"""

from taoism.security.attacks import (
    build_surrogate,
    confidence_scores,
    membership_inference,
    pgd,
    threshold_attack,
    transfer_attack,
)
from taoism.security.cache import Cache, config_hash, default_cache_dir, resolve_cache_dir
from taoism.security.experiment import AttackConfig, JobSpec, prepare_models, run_job
from taoism.security.report import METRICS, RATIO_METRICS, format_table
from taoism.security.sweep import sweep
from taoism.security.table import run_attack_table
from taoism.security.tuning import AttackGrid, fit_surrogate, grid_edges
from taoism.security.views import (
    Reconstruction,
    black_box_view,
    reconstruct_state,
    view_summary,
    white_box_view,
)

__all__ = [
    "AttackConfig",
    "AttackGrid",
    "Cache",
    "JobSpec",
    "METRICS",
    "RATIO_METRICS",
    "Reconstruction",
    "black_box_view",
    "build_surrogate",
    "confidence_scores",
    "config_hash",
    "default_cache_dir",
    "fit_surrogate",
    "format_table",
    "grid_edges",
    "membership_inference",
    "pgd",
    "prepare_models",
    "reconstruct_state",
    "resolve_cache_dir",
    "run_attack_table",
    "run_job",
    "sweep",
    "threshold_attack",
    "transfer_attack",
    "view_summary",
    "white_box_view",
]
