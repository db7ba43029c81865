"""PNG plots of the strategy benchmark (matplotlib, Agg backend: no display needed).

* ``breakdown.png``: one stacked bar per configuration: device compute, enclave compute,
  crypto, copy, wait, and "unexplained" (end-to-end minus the sum of the parts, when positive).
* ``latency_vs_flops.png``: end-to-end latency (median, p10-p90 error bars) against the % of
  the plain model's FLOPs computed in the TEE; plain PyTorch baselines as horizontal lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_PARTS = (
    ("device_ms", "device compute", "#4C72B0"),
    ("enclave_ms", "enclave compute", "#DD8452"),
    ("crypto_ms", "crypto", "#C44E52"),
    ("copy_ms", "copy", "#8172B3"),
    ("wait_ms", "wait", "#937860"),
)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the plot/test extras
        from taoism.errors import ConfigError

        raise ConfigError("plots need matplotlib: pip install 'taoism[plot]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ok_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result["rows"] if not r.get("error") and r.get("e2e_ms") is not None]


def _title(result: dict[str, Any], what: str) -> str:
    m = result["meta"]
    return (
        f"{what}: {m['model']} ({m['dataset_shape']}), batch {m['batch']}, "
        f"{m['threads']} thread(s), {m['device']}, backend {m['backend']}"
    )


def plot_breakdown(result: dict[str, Any], path: str | Path) -> Path:
    """Stacked latency breakdown per configuration."""
    plt = _pyplot()
    rows = _ok_rows(result)
    names = [
        r["name"] if r["model"] == result["meta"]["model"] else f"{r['name']}\n({r['model']})"
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.8))
    bottom = [0.0] * len(rows)
    for key, label, color in _PARTS:
        vals = [float(r.get(key) or 0.0) for r in rows]
        ax.bar(names, vals, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    extra = [max(0.0, float(r["e2e_ms"]) - b) for r, b in zip(rows, bottom)]
    ax.bar(
        names,
        extra,
        bottom=bottom,
        label="unexplained (e2e - parts)",
        color="#CCCCCC",
        hatch="//",
        edgecolor="#888888",
    )
    for i, r in enumerate(rows):
        top = max(bottom[i] + extra[i], float(r["e2e_ms"]))
        mark = " !" if r.get("ratio_flag") else ""
        ax.annotate(f"{r['e2e_ms']:.2f}{mark}", (i, top), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("latency per batch (ms, medians)")
    ax.set_title(_title(result, "Latency breakdown"), fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.tick_params(axis="x", labelsize=8, rotation=30)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_latency_vs_flops(result: dict[str, Any], path: str | Path) -> Path:
    """End-to-end latency against % of the plain model's FLOPs in the TEE."""
    plt = _pyplot()
    rows = _ok_rows(result)
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    styles = ("--", ":")
    for i, r in enumerate(x for x in rows if x.get("strategy") is None):
        ax.axhline(
            r["e2e_ms"],
            linestyle=styles[i % 2],
            color="#555555",
            linewidth=1,
            label=f"{r['name']} ({r['e2e_ms']:.2f} ms)",
        )
    pts = [r for r in rows if r.get("strategy") is not None]
    xs = [float(r.get("victim_flops_pct", r.get("flops_tee_pct", 0.0))) for r in pts]
    ys = [float(r["e2e_ms"]) for r in pts]
    lo = [max(0.0, y - float(r["p10_ms"])) for y, r in zip(ys, pts)]
    hi = [max(0.0, float(r["p90_ms"]) - y) for y, r in zip(ys, pts)]
    ax.errorbar(
        xs, ys, yerr=[lo, hi], fmt="o", color="#C44E52", capsize=3, label="strategy (p10-p90)"
    )
    for x, y, r in zip(xs, ys, pts):
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("% of the plain model's FLOPs computed in the TEE")
    ax.set_ylabel("end-to-end latency per batch (ms, median)")
    ax.set_xlim(-5, 105)
    ax.set_title(_title(result, "Latency vs FLOPs in the TEE"), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_strategy_bench(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Both plots into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "breakdown_png": plot_breakdown(result, out / "breakdown.png"),
        "latency_vs_flops_png": plot_latency_vs_flops(result, out / "latency_vs_flops.png"),
    }


__all__ = ["plot_breakdown", "plot_latency_vs_flops", "plot_strategy_bench"]
