"""``taoism demo``: a zoo model (ResNet-18 CIFAR) in the baseline modes and one split placement."""

from __future__ import annotations

from typing import Any

import click

from taoism.cli._common import default_split, set_host_threads
from taoism.cli._options import Output, output_options, repeats_options


@click.command()
@click.option("--model", default="resnet18", help="Zoo model name (see `taoism models`).")
@click.option(
    "--dataset-shape", default="cifar", help="Input shape family: cifar, imagenet, mnist, digits."
)
@click.option("--batch", type=click.IntRange(min=1), default=1, help="Batch size.")
@repeats_options(repeats=20, warmup=3)
@output_options()
def demo(
    model: str, dataset_shape: str, batch: int, repeats: int, warmup: int, threads: int, out: Output
) -> None:
    """A zoo model (ResNet-18 CIFAR): the three baseline modes and one split, side by side.

    Every mode's output is checked against the plain model (rtol 1e-4, atol 1e-5).
    """
    import torch

    from taoism.bench import time_plain
    from taoism.runtime import default_device, shield
    from taoism.zoo import example_input, get_model

    set_host_threads(threads)
    net = get_model(model, dataset_shape=dataset_shape)
    x = example_input(model, dataset_shape, batch=batch)
    ref = net(x)
    dev = default_device()
    plain = time_plain(net, x, device="cpu", repeats=repeats, warmup=warmup)
    rows = [("plain PyTorch, CPU", plain, 0.0, 0.0, 0)]
    runs: list[tuple[str, dict[str, Any]]] = [
        (f"whole model on the device ({dev})", {}),
        ("whole model on the CPU via taoism", {"device": "cpu"}),
        ("whole model in the enclave", {"placement": {"_default": "ENCLAVE"}}),
        ("first half in the enclave", {"placement": default_split(net)}),
    ]
    for i, (label, kw) in enumerate(runs, 1):
        out.note(f"[{i}/{len(runs)}] {label} ...")
        with shield(net, x, **kw) as sm:
            torch.testing.assert_close(sm(x), ref, rtol=1e-4, atol=1e-5)
            prof = sm.profile(x, repeats=repeats, warmup=warmup)
            t = sm.plan.totals()
            rows.append(
                (
                    label,
                    prof.end_to_end,
                    t["flops_enclave_pct"],
                    t["params_enclave_pct"],
                    t["crossings"],
                )
            )
    click.echo(
        f"\n{model} {dataset_shape}, batch {batch}, {threads} host thread(s), 1 enclave thread; "
        "outputs of every mode equal the plain model (rtol 1e-4, atol 1e-5)\n"
    )
    click.echo(
        f"{'mode':<36} {'median ms':>10} {'p10':>8} {'p90':>8} {'x plain':>8} "
        f"{'%FLOPs TEE':>10} {'%params TEE':>11} {'crossings':>9}"
    )
    for label, st, fl, pa, cr in rows:
        click.echo(
            f"{label:<36} {st.median * 1e3:>10.2f} {st.p10 * 1e3:>8.2f} "
            f"{st.p90 * 1e3:>8.2f} {st.median / plain.median:>8.2f} {fl:>10.1f} "
            f"{pa:>11.1f} {cr:>9}"
        )
    out.emit(
        {
            "model": model,
            "dataset_shape": dataset_shape,
            "batch": batch,
            "threads": threads,
            "rows": [
                {
                    "mode": label,
                    "latency": st.to_json(),
                    "flops_enclave_pct": fl,
                    "params_enclave_pct": pa,
                    "crossings": cr,
                }
                for label, st, fl, pa, cr in rows
            ],
        },
        "demo",
    )


def register(app: click.Group) -> None:
    """Add ``demo`` to ``app``."""
    app.add_command(demo)
