"""The attack table's aggregation over seeds and its outputs (text, CSV, JSON, PNG)."""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path
from typing import Any

from taoism.errors import ConfigError

__all__ = [
    "timings",
    "METRICS",
    "RATIO_METRICS",
    "aggregate",
    "csv_rows",
    "figure",
    "flops_axes",
    "format_table",
    "out_dir",
    "plot_table",
    "references",
    "write_csv",
    "write_json",
]

#: Metrics aggregated per row (mean and std over seeds).
METRICS = (
    "ms_accuracy",
    "fidelity",
    "adv_success",
    "mia_accuracy",
    "mia_auc",
    "generalization_gap",
    "confidence_gap",
    "surrogate_init_accuracy",
    "victim_accuracy",
    "plain_victim_accuracy",
    "accuracy_vs_victim",
)
#: Metrics also reported relative to the black-box baseline (strategy / "all", per seed).
RATIO_METRICS = ("ms_accuracy", "fidelity", "adv_success", "mia_accuracy", "mia_auc")


def _stats(xs: list[float]) -> dict[str, Any]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "n": len(xs),
    }


def aggregate(
    results: list[dict[str, Any]], strategies: list[str], queries: list[int]
) -> list[dict[str, Any]]:
    by: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in results:
        if "error" in r:
            continue
        j = r["job"]
        by[(j["strategy"], j["queries"], j["seed"])] = r
    rows = []
    for s in strategies:
        for q in queries:
            runs = sorted((k[2], v) for k, v in by.items() if k[0] == s and k[1] == q)
            if not runs:
                continue
            row: dict[str, Any] = {
                "strategy": s,
                "queries": q,
                "seeds": [seed for seed, _ in runs],
                "metrics": {},
                "x_black_box": {},
            }
            for m in METRICS:
                row["metrics"][m] = _stats([r["metrics"].get(m) for _, r in runs])
            for m in RATIO_METRICS:
                ratios = []
                for seed, r in runs:
                    bb = by.get(("all", q, seed))
                    if bb is None:
                        continue
                    a, b = r["metrics"].get(m), bb["metrics"].get(m)
                    if (
                        a is not None
                        and b is not None
                        and b > 0
                        and not math.isnan(a)
                        and not math.isnan(b)
                    ):
                        ratios.append(a / b)
                row["x_black_box"][m] = _stats(ratios)
            rep = runs[0][1]["report"]
            row["params_tee_pct"] = rep.get("params_tee_pct")
            row["flops_tee_pct"] = rep.get("flops_tee_pct")
            row["params_tee"] = rep.get("params_tee")
            row["flops_tee"] = rep.get("flops_tee")
            row["latency_ms"] = _stats([r["latency_ms"]["median"] for _, r in runs])
            row["model"] = runs[0][1]["job"]["model"]
            if "teeslice" in runs[0][1]:
                row["teeslice"] = _teeslice_summary([r["teeslice"] for _, r in runs])
            row["tuning"] = [
                {
                    "seed": seed,
                    "lr": r.get("tuning", {}).get("lr"),
                    "epochs": r.get("tuning", {}).get("epochs"),
                    "at_edge": r.get("tuning", {}).get("at_edge"),
                    "best_start": r.get("best_start"),
                }
                for seed, r in runs
            ]
            rows.append(row)
    return rows


def _teeslice_summary(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """The TEESlice models' figures over seeds: test accuracy vs the victim, proxies and the
    sliced model's own TEE shares before and after pruning."""
    out = {
        k: _stats([i[k] for i in infos])
        for k in ("sliced_test_accuracy", "victim_test_accuracy", "accuracy_vs_victim")
    }
    for when in ("before_prune", "after_prune"):
        out[when] = {
            k: _stats([i[when][k] for i in infos])
            for k in ("proxies", "params_tee_pct", "flops_tee_pct")
        }
    return out


def references(
    results: list[dict[str, Any]], queries: list[int], num_classes: int
) -> dict[str, Any]:
    """What a row is read against: chance, the victim, black-box and the victim / black-box
    ceiling of the MS ratio (per query budget), and the victim's own figures over seeds."""
    ok = [r for r in results if "error" not in r]
    victims = {r["job"]["seed"]: r["victim"] for r in ok if r["job"]["strategy"] == "all"}
    out: dict[str, Any] = {"chance": 1.0 / num_classes, "per_queries": {}, "victim": {}}
    for k in (
        "victim_test_accuracy",
        "victim_train_accuracy",
        "victim_train_test_gap",
        "members_per_class",
        "public_probe_accuracy",
        "random_probe_accuracy",
    ):
        out["victim"][k] = _stats([v.get(k) for v in victims.values()])
    for q in queries:
        bb = [
            r["metrics"] for r in ok if r["job"]["strategy"] == "all" and r["job"]["queries"] == q
        ]
        vic = _stats([m["victim_accuracy"] for m in bb])
        bbs = _stats([m["ms_accuracy"] for m in bb])
        ceiling = (vic["mean"] / bbs["mean"]) if vic["mean"] and bbs["mean"] else None
        out["per_queries"][str(q)] = {
            "victim_accuracy": vic,
            "black_box_ms_accuracy": bbs,
            "ms_ceiling_x_black_box": ceiling,
        }
    return out


def csv_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    cols = [
        "strategy",
        "queries",
        "n_seeds",
        "params_tee_pct",
        "flops_tee_pct",
        "latency_ms_mean",
        "latency_ms_std",
    ]
    for m in METRICS:
        cols += [f"{m}_mean", f"{m}_std"]
        if m in RATIO_METRICS:
            cols += [f"{m}_x_bb_mean", f"{m}_x_bb_std"]
    out = []
    for r in rows:
        d = {
            "strategy": r["strategy"],
            "queries": r["queries"],
            "n_seeds": len(r["seeds"]),
            "params_tee_pct": r["params_tee_pct"],
            "flops_tee_pct": r["flops_tee_pct"],
            "latency_ms_mean": r["latency_ms"]["mean"],
            "latency_ms_std": r["latency_ms"]["std"],
        }
        for m in METRICS:
            d[f"{m}_mean"], d[f"{m}_std"] = r["metrics"][m]["mean"], r["metrics"][m]["std"]
            if m in RATIO_METRICS:
                d[f"{m}_x_bb_mean"] = r["x_black_box"][m]["mean"]
                d[f"{m}_x_bb_std"] = r["x_black_box"][m]["std"]
        out.append(d)
    return cols, out


def timings(models: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a run's time went: each model's wall time and each job's (0 s-ish when cached),
    with the job totals summed per (strategy, queries)."""
    jobs = [
        {
            "strategy": r["job"]["strategy"],
            "queries": r["job"]["queries"],
            "seed": r["job"]["seed"],
            "cache_hit": bool(r.get("cache_hit")),
            **r.get("timing_s", {}),
        }
        for r in results
        if "error" not in r
    ]
    per: dict[str, float] = {}
    for j in jobs:
        if not j["cache_hit"]:
            k = f"{j['strategy']} @ {j['queries']}"
            per[k] = per.get(k, 0.0) + float(j.get("total", 0.0))
    by_kind: dict[str, float] = {}
    for m in models:
        by_kind[m["kind"]] = by_kind.get(m["kind"], 0.0) + float(m["wall_s"])
    return {"models": models, "models_s": by_kind, "jobs": jobs, "jobs_s": per}


def write_csv(path: Path, cols: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def write_json(path: Path, obj: Any) -> None:
    import json

    path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str))


def figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("writing the plot needs matplotlib: pip install 'taoism[plot]'") from exc
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # no pyplot, no global backend switch
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def flops_axes(ax: Any, ylabel: str, title: str) -> None:
    """Label an axis that plots a metric against the % of FLOPs in the TEE (symlog)."""
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(-0.2, 130)
    ax.set_xlabel("% of FLOPs in the TEE")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def plot_table(path: Path, rows: list[dict[str, Any]], queries: list[int], title: str) -> None:
    panels = (
        ("ms_accuracy", "model-stealing accuracy"),
        ("mia_accuracy", "membership-inference accuracy"),
    )
    fig, axes = figure(len(panels), len(queries), (5.0 * len(queries), 4.0 * len(panels)))
    for c, q in enumerate(queries):
        qrows = [r for r in rows if r["queries"] == q]
        for rr, (m, label) in enumerate(panels):
            ax = axes[rr][c]
            for r in qrows:
                st = r["metrics"][m]
                if st["mean"] is None or r["flops_tee_pct"] is None:
                    continue
                ax.errorbar(
                    [r["flops_tee_pct"]],
                    [100 * st["mean"]],
                    yerr=[100 * (st["std"] or 0)],
                    fmt="o",
                    capsize=3,
                    label=r["strategy"],
                )
                ax.annotate(
                    r["strategy"],
                    (r["flops_tee_pct"], 100 * st["mean"]),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
            bb = next((r for r in qrows if r["strategy"] == "all"), None)
            if bb is not None and bb["metrics"][m]["mean"] is not None:
                ax.axhline(
                    100 * bb["metrics"][m]["mean"], ls="--", lw=0.8, color="gray", label="black-box"
                )
            flops_axes(ax, f"{label} (%)", f"{title}, {q} queries")
        axes[0][c].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def out_dir(out_dir: str | os.PathLike | None) -> Path | None:
    if out_dir is None:
        return None
    p = Path(out_dir).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def format_table(result: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`run_attack_table`'s rows."""
    head = (
        f"{'strategy':<18} {'q':>5} {'%par':>6} {'%FLOP':>6} {'lat ms':>7} {'MS acc':>13} {'xBB':>5} "
        f"{'fidelity':>13} {'adv':>13} {'MIA acc':>13} {'xBB':>5} {'gen gap':>7} {'conf gap':>8}"
    )
    lines = []
    ref = result.get("reference")
    if ref:
        v = ref["victim"]

        def f(st: dict[str, Any]) -> str:
            return "-" if st["mean"] is None else f"{100 * st['mean']:.1f}%"

        lines.append(
            f"chance {100 * ref['chance']:.1f}%; victim test {f(v['victim_test_accuracy'])}, "
            f"train/test gap {f(v['victim_train_test_gap'])}; public-model linear probe "
            f"{f(v['public_probe_accuracy'])} vs random init {f(v['random_probe_accuracy'])}"
        )
        for q, d in ref["per_queries"].items():
            c = d["ms_ceiling_x_black_box"]
            lines.append(
                f"q={q}: black-box MS {f(d['black_box_ms_accuracy'])}, ceiling victim/black-box "
                f"{'-' if c is None else f'{c:.2f}x'}"
            )
    lines.append(head)

    def pm(st: dict[str, Any]) -> str:
        return "-" if st["mean"] is None else f"{100 * st['mean']:5.1f}+-{100 * st['std']:4.1f}"

    def x(st: dict[str, Any]) -> str:
        return "-" if st["mean"] is None else f"{st['mean']:.2f}"

    for r in result["rows"]:
        m, xb = r["metrics"], r["x_black_box"]
        lines.append(
            f"{r['strategy']:<18} {r['queries']:>5} {r['params_tee_pct'] or 0:6.2f} {r['flops_tee_pct'] or 0:6.2f} "
            f"{r['latency_ms']['mean'] or 0:7.2f} {pm(m['ms_accuracy']):>13} {x(xb['ms_accuracy']):>5} "
            f"{pm(m['fidelity']):>13} {pm(m['adv_success']):>13} {pm(m['mia_accuracy']):>13} "
            f"{x(xb['mia_accuracy']):>5} {100 * (m['generalization_gap']['mean'] or 0):7.1f} "
            f"{100 * (m['confidence_gap']['mean'] or 0):8.1f}"
        )
    for r in result["rows"]:
        t = r.get("teeslice")
        if t:
            a, b = t["after_prune"], t["before_prune"]
            lines.append(
                f"teeslice q={r['queries']}: sliced model test {pm(t['sliced_test_accuracy'])}% vs victim "
                f"{pm(t['victim_test_accuracy'])}% (difference {pm(t['accuracy_vs_victim'])} points); "
                f"TEE {r['params_tee_pct'] or 0:.2f}% params, {r['flops_tee_pct'] or 0:.2f}% FLOPs of the "
                f"plain model; proxies {b['proxies']['mean']:.0f} -> {a['proxies']['mean']:.1f} after pruning"
            )
    for s, why in result.get("skipped", {}).items():
        lines.append(f"skipped {s}: {why}")
    for e in result.get("errors", []):
        lines.append(
            f"failed {e['job']['strategy']} q={e['job']['queries']} seed={e['job']['seed']}: {e['error']}"
        )
    return "\n".join(lines)
