"""The TSDP strategy benchmark: every strategy and the baselines, measured in one run.

>>> from taoism.bench.strategies import run_strategy_bench, write_outputs, format_table
>>> result = run_strategy_bench("resnet18", "cifar", 1, "all", repeats=5)
>>> print(format_table(result))
>>> write_outputs(result, "out/")        # strategies.json, strategies.csv and the PNG plots

Rows: ``plain-device`` (plain PyTorch on the device: CUDA when present, else the CPU),
``plain-cpu`` (plain PyTorch on the CPU), then ``none`` (the whole model on the device through
taoism), ``all`` (the whole model in the enclave) and each strategy asked for. For a strategy
row: end-to-end latency (median, p10, p90 of ``sm.profile``), throughput, the breakdown
(device compute, enclave compute, crypto, copy, wait: ``Profile.totals()``), params/FLOPs in the
TEE (:func:`taoism.strategies.strategy_report`), crossings and bytes per inference, and
``ratio`` = end-to-end / sum of the parts (flagged above 1.15: time the breakdown does not
explain). ``teeslice`` on a plain zoo model runs the matching ``teeslice_<model>`` (the row's
``model`` says so; its ``victim_*_pct`` columns are relative to the plain model, as the paper
reports). A strategy that fails is recorded with its ``error`` and the run goes on.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taoism.bench.timing import time_plain
from taoism.config import EnclaveConfig
from taoism.errors import ConfigError, TaoismError

RATIO_FLAG = 1.15

CSV_COLUMNS = (
    "name",
    "model",
    "strategy",
    "error",
    "batch",
    "e2e_ms",
    "p10_ms",
    "p90_ms",
    "throughput_per_s",
    "device_ms",
    "enclave_ms",
    "crypto_ms",
    "copy_ms",
    "wait_ms",
    "sum_parts_ms",
    "ratio",
    "ratio_flag",
    "params_tee",
    "params_tee_pct",
    "flops_tee_pct",
    "flops_enclave_executed_pct",
    "victim_params_pct",
    "victim_flops_pct",
    "crossings",
    "bytes",
    "segments",
    "max_abs_err",
)


def _teeslice_variant(model_name: str, dataset_shape: str) -> str | None:
    from taoism import zoo

    norm = {m.replace("_", ""): m for m in zoo.list_models()}
    key = norm.get(model_name.strip().lower().replace("-", "").replace("_", ""))
    if key is None:
        return None
    if key.startswith("teeslice_"):
        return key
    cand = f"teeslice_{key}"
    if cand in zoo.list_models() and dataset_shape in zoo.supported_shapes(cand):
        return cand
    return None


def _ms(s: float) -> float:
    return s * 1e3


def _plain_row(name: str, model_name: str, stat: Any, batch: int, device: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": model_name,
        "strategy": None,
        "error": None,
        "batch": batch,
        "device": device,
        "e2e_ms": _ms(stat.median),
        "p10_ms": _ms(stat.p10),
        "p90_ms": _ms(stat.p90),
        "throughput_per_s": batch / stat.median if stat.median else 0.0,
        "device_ms": _ms(stat.median),
        "enclave_ms": 0.0,
        "crypto_ms": 0.0,
        "copy_ms": 0.0,
        "wait_ms": 0.0,
        "sum_parts_ms": _ms(stat.median),
        "ratio": 1.0,
        "ratio_flag": False,
        "params_tee": 0,
        "params_tee_pct": 0.0,
        "flops_tee_pct": 0.0,
        "flops_enclave_executed_pct": 0.0,
        "crossings": 0,
        "bytes": 0,
        "segments": 1,
        "max_abs_err": 0.0,
    }


def _strategy_row(
    spec: str,
    model_name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    enclave: EnclaveConfig,
    repeats: int,
    warmup: int,
    victim: dict[str, int] | None,
) -> dict[str, Any]:
    from taoism.runtime import shield
    from taoism.strategies import strategy_report

    row: dict[str, Any] = {
        "name": spec,
        "model": model_name,
        "strategy": spec,
        "error": None,
        "batch": int(x.shape[0]),
        "device": str(device),
    }
    with shield(model, x, strategy=spec, device=device, enclave=enclave) as sm:
        with torch.inference_mode():
            ref = model(x)
        y = sm(x)
        row["max_abs_err"] = float((y.cpu() - ref).abs().max())
        prof = sm.profile(x, repeats=repeats, warmup=warmup)
        rep = strategy_report(sm, model, spec)
    t = prof.totals()
    parts = (
        t["device_compute_s"] + t["enclave_compute_s"] + t["crypto_s"] + t["copy_s"] + t["wait_s"]
    )
    ratio = t["end_to_end_s"] / parts if parts > 0 else float("nan")
    row.update(
        {
            "e2e_ms": _ms(prof.end_to_end.median),
            "p10_ms": _ms(prof.end_to_end.p10),
            "p90_ms": _ms(prof.end_to_end.p90),
            "throughput_per_s": t["throughput_per_s"],
            "device_ms": _ms(t["device_compute_s"]),
            "enclave_ms": _ms(t["enclave_compute_s"]),
            "crypto_ms": _ms(t["crypto_s"]),
            "copy_ms": _ms(t["copy_s"]),
            "wait_ms": _ms(t["wait_s"]),
            "sum_parts_ms": _ms(parts),
            "ratio": ratio,
            "ratio_flag": bool(ratio > RATIO_FLAG),
            "params_tee": rep["params_tee"],
            "params_tee_pct": rep["params_tee_pct"],
            "flops_tee_pct": rep["flops_tee_pct"],
            "flops_enclave_executed_pct": rep["flops_enclave_executed_pct"],
            "crossings": rep["crossings"],
            "bytes": int(t["bytes"]),
            "segments": rep["segments"],
            "report": {k: v for k, v in rep.items() if k != "per_param"},
            "profile": prof.to_json(),
        }
    )
    if victim is not None:
        row["victim_params_pct"] = (
            100.0 * rep["params_tee"] / victim["params"] if victim["params"] else 0.0
        )
        row["victim_flops_pct"] = (
            100.0 * rep["flops_tee"] / victim["flops"] if victim["flops"] else 0.0
        )
    return row


def run_strategy_bench(
    model_name: str,
    dataset_shape: str,
    batch: int,
    strategies: str | Sequence[str],
    *,
    repeats: int = 10,
    warmup: int = 2,
    threads: int = 1,
    progress: bool = True,
    device: str | None = None,
    backend: str | None = None,
    retain_heap: bool = True,
) -> dict[str, Any]:
    """Measure the baselines and every strategy on zoo model ``model_name``, in one run.

    ``strategies``: a list of strategy strings, a comma-separated string, or ``"all"`` (the six
    reference configurations plus ``none`` and ``all``). ``none`` and ``all`` are always
    measured. ``threads``: torch threads on the host and in the enclave. ``retain_heap``: the
    enclave's heap policy (``EnclaveConfig.retain_heap``); the calling process's own is left as
    it is (``taoism bench`` sets it). Returns a JSON-able dict: ``meta`` and ``rows`` (see the
    module docstring).
    """
    from taoism import zoo
    from taoism.runtime import default_device
    from taoism.strategies import BASELINE_STRATEGIES, expand_strategies
    from taoism.strategies.layerwise import is_sliced

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an int >= 1, got {threads!r}")
    specs = expand_strategies(strategies)
    specs = [*BASELINE_STRATEGIES, *(s for s in specs if s not in BASELINE_STRATEGIES)]
    model = zoo.get_model(model_name, dataset_shape=dataset_shape)
    x = zoo.example_input(model_name, dataset_shape, batch)
    dev = torch.device(device) if device is not None else default_device()
    enclave = EnclaveConfig(threads=threads, backend=backend or "sim", retain_heap=retain_heap)
    steps = ["plain-device", "plain-cpu", *specs]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc=f"{model_name}/{dataset_shape} b{batch}", unit="cfg")
    rows: list[dict[str, Any]] = []
    started = time.time()
    victim: dict[str, int] | None = None
    try:
        for step in steps:
            if bar is not None:
                bar.set_postfix_str(step)
            try:
                if step == "plain-device":
                    st = time_plain(model, x, device=dev, repeats=repeats, warmup=warmup)
                    rows.append(_plain_row(step, model_name, st, batch, str(dev)))
                elif step == "plain-cpu":
                    st = time_plain(model, x, device="cpu", repeats=repeats, warmup=warmup)
                    rows.append(_plain_row(step, model_name, st, batch, "cpu"))
                else:
                    target, target_name, vict = model, model_name, None
                    if step == "teeslice" and not is_sliced(model):
                        variant = _teeslice_variant(model_name, dataset_shape)
                        if variant is None:
                            raise ConfigError(
                                f"'teeslice' needs a sliced model and the zoo has no TEESlice "
                                f"variant of {model_name!r} (available: teeslice_resnet18/34/50, teeslice_small_cnn)"
                            )
                        target_name = variant
                        target = zoo.get_model(variant, dataset_shape=dataset_shape)
                        vict = victim
                    row = _strategy_row(
                        step,
                        target_name,
                        target,
                        x,
                        device=dev,
                        enclave=enclave,
                        repeats=repeats,
                        warmup=warmup,
                        victim=vict,
                    )
                    if step == "all":
                        rep = row["report"]
                        victim = {"params": rep["params_total"], "flops": rep["flops_total"]}
                    rows.append(row)
            except TaoismError as exc:
                rows.append(
                    {
                        "name": step,
                        "model": model_name,
                        "strategy": step,
                        "error": f"{type(exc).__name__}: {exc}",
                        "batch": batch,
                    }
                )
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(old_threads)
    for row in rows:  # every strategy row is also relative to the victim (the plain model)
        if row.get("error") is None and "victim_params_pct" not in row:
            row["victim_params_pct"] = row.get("params_tee_pct", 0.0)
            row["victim_flops_pct"] = row.get("flops_tee_pct", 0.0)
    meta = {
        "format": "taoism-strategy-bench/1",
        "model": model_name,
        "dataset_shape": dataset_shape,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "device": str(dev),
        "backend": enclave.backend,
        "enclave_heap": "retained" if retain_heap else "system",
        "strategies": specs,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": time.time() - started,
        "ratio_flag_above": RATIO_FLAG,
    }
    return {"meta": meta, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the rows (milliseconds; % of the victim model)."""
    head = (
        f"{'config':<18} {'model':<18} {'e2e ms':>9} {'p10':>8} {'p90':>8} {'img/s':>8} "
        f"{'device':>8} {'enclave':>8} {'crypto':>7} {'copy':>7} {'wait':>7} {'ratio':>6} "
        f"{'%par':>7} {'%FLOP':>7} {'cross':>5} {'KiB':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        if r.get("error"):
            lines.append(f"{r['name']:<18} {r['model']:<18} error: {r['error'][:90]}")
            continue
        flag = "!" if r.get("ratio_flag") else " "
        lines.append(
            f"{r['name']:<18} {r['model'][:18]:<18} {r['e2e_ms']:>9.3f} {r['p10_ms']:>8.3f} "
            f"{r['p90_ms']:>8.3f} {r['throughput_per_s']:>8.1f} {r['device_ms']:>8.3f} "
            f"{r['enclave_ms']:>8.3f} {r['crypto_ms']:>7.3f} {r['copy_ms']:>7.3f} {r['wait_ms']:>7.3f} "
            f"{r['ratio']:>5.2f}{flag} {r.get('victim_params_pct', 0.0):>7.3f} "
            f"{r.get('victim_flops_pct', 0.0):>7.3f} {r['crossings']:>5} {r['bytes'] / 1024:>8.1f}"
        )
    m = result["meta"]
    lines.append(
        f"{m['model']} {m['dataset_shape']} batch {m['batch']}, {m['repeats']} repeats "
        f"(+{m['warmup']} warm-up), {m['threads']} thread(s), device {m['device']}, "
        f"backend {m['backend']}, torch {m['torch']}, heap kept: enclave "
        f"{m.get('enclave_heap') == 'retained'}, host {m.get('host_heap') == 'retained'}; "
        "ratio = end-to-end / sum of parts "
        f"('!' above {m['ratio_flag_above']}); %par/%FLOP in the TEE, of the plain model"
    )
    return "\n".join(lines)


def write_outputs(
    result: dict[str, Any], out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``strategies.json``, ``strategies.csv`` and (with matplotlib) the PNG plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "strategies.json", "csv": out / "strategies.csv"}
    paths["json"].write_text(
        json.dumps(finite_floats(result), indent=2, default=str, allow_nan=False)
    )
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow({k: r.get(k) for k in CSV_COLUMNS})
    if plots:
        from taoism.bench.plots import plot_strategy_bench

        paths.update(plot_strategy_bench(result, out))
    return paths


def finite_floats(o: Any) -> Any:
    """``o`` with NaN/inf floats replaced by None (strict JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_floats(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_floats(v) for v in o]
    return o


__all__ = [
    "CSV_COLUMNS",
    "RATIO_FLAG",
    "finite_floats",
    "format_table",
    "run_strategy_bench",
    "write_outputs",
]
