"""``taoism teeslice train``: train TEESlice slices (distillation, gated proxies, pruning)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from taoism.cli._options import DIRECTORY, Output, output_options

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _config_fields() -> dict[str, Any]:
    from taoism.teeslice import TeeSliceConfig

    return {f.name: f.default for f in dataclasses.fields(TeeSliceConfig)}


def _parse_value(field: str, default: Any, text: str) -> Any:
    """``text`` as the type of ``default`` (bool, int, float, str, or a tuple of numbers given
    as ``a,b``); a usage error otherwise."""
    t = text.strip().lower()
    if isinstance(default, str):
        return t
    if isinstance(default, tuple):
        try:
            return tuple(float(v) for v in t.split(","))
        except ValueError:
            raise click.BadParameter(
                f"{field} takes comma-separated numbers, got {text!r}", param_hint="--set"
            ) from None
    if isinstance(default, bool):
        if t in _TRUE or t in _FALSE:
            return t in _TRUE
        raise click.BadParameter(f"{field} takes true or false, got {text!r}", param_hint="--set")
    try:
        return int(t) if isinstance(default, int) else float(t)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise click.BadParameter(
            f"{field} takes {kind}, got {text!r}", param_hint="--set"
        ) from None


def parse_sets(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Any]:
    """Click callback: ``("lr=0.01", "prune=false")`` -> typed TeeSliceConfig overrides."""
    fields = _config_fields()
    out: dict[str, Any] = {}
    for item in values:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name:
            raise click.BadParameter(f"expected FIELD=VALUE, got {item!r}", param_hint="--set")
        if name not in fields:
            raise click.BadParameter(
                f"unknown TeeSliceConfig field {name!r}; known: {', '.join(fields)}",
                param_hint="--set",
            )
        out[name] = _parse_value(name, fields[name], text)
    return out


def _set_help() -> str:
    listed = ", ".join(f"{n}={v}" for n, v in _config_fields().items() if n != "seed")
    return (
        f"Override a TeeSliceConfig field (repeatable); fields and their defaults: {listed}. "
        "Its seed is --seed unless set here."
    )


@click.group()
def teeslice() -> None:
    """TEESlice as published: partition-before-training with distillation and pruning."""


@teeslice.command()
@click.option(
    "--model",
    default="small_cnn",
    help="Zoo backbone (resnet18/34/50, gap_resnet20, vgg16_bn, alexnet, small_cnn).",
)
@click.option(
    "--dataset",
    default="digits",
    help="Offline data set: digits, fashion-mnist, glyphs, cifar10 or cifar100.",
)
@click.option(
    "--data-root", type=DIRECTORY, default=None, help="Data set directory  [default: the system's]"
)
@click.option(
    "--seed",
    type=int,
    default=0,
    help="Seeds the public/private split, both models and the TEESlice training.",
)
@click.option(
    "--train-size",
    type=click.IntRange(min=4),
    default=None,
    help="Use only this many training samples (half public, half private)  [default: all]",
)
@click.option(
    "--public-epochs",
    type=click.IntRange(min=0),
    default=10,
    help="Epochs training the public model.",
)
@click.option(
    "--public-task",
    type=click.Choice(("rotation", "supervised")),
    default="rotation",
    help="How the public model is trained on the public half: rotation prediction "
    "(no labels, as the security evaluation) or supervised.",
)
@click.option(
    "--victim-epochs",
    type=click.IntRange(min=0),
    default=10,
    help="Epochs training the victim on the private half.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=0.05,
    help="SGD learning rate of the public model and the victim.",
)
@click.option(
    "--set", "sets", metavar="FIELD=VALUE", multiple=True, callback=parse_sets, help=_set_help()
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch threads while training  [default: torch's]",
)
@click.option(
    "--cache-dir",
    type=DIRECTORY,
    default=None,
    envvar="TAOISM_CACHE_DIR",
    show_envvar=True,
    help="Cache of trained models (a rerun with the same inputs trains nothing)  "
    "[default: ~/.cache/taoism]",
)
@output_options(out_help="Write teeslice_<model>_<dataset>.json into DIR.")
def train(
    model: str,
    dataset: str,
    data_root: Path | None,
    seed: int,
    train_size: int | None,
    public_epochs: int,
    public_task: str,
    victim_epochs: int,
    lr: float,
    sets: dict[str, Any],
    threads: int | None,
    cache_dir: Path | None,
    out: Output,
) -> None:
    """Train a public model and a victim, then TEESlice slices of the victim over the public one.

    Prints the victim's and the sliced model's test accuracy and the share of parameters and
    FLOPs in the TEE before and after pruning; --json writes every figure.
    """
    from taoism.teeslice import TeeSliceConfig
    from taoism.teeslice.command import run_teeslice

    config = TeeSliceConfig(**{"seed": seed, **sets})
    out.note(f"taoism teeslice train: {model} on {dataset}, seed {seed}")
    out.detail(f"config: {dataclasses.asdict(config)}")
    _, _, result = run_teeslice(
        model,
        dataset,
        data_root=data_root,
        seed=seed,
        train_size=train_size,
        public_epochs=public_epochs,
        victim_epochs=victim_epochs,
        lr=lr,
        public_task=public_task,
        config=config,
        threads=threads,
        cache_dir=cache_dir,
        progress=out.progress,
    )
    click.echo(format_result(result))
    stem = f"teeslice_{model}_{result['dataset']}"
    out.emit(result, stem)


def format_result(r: dict[str, Any]) -> str:
    """The figures of one TEESlice training as a few lines of text."""
    before, after = r["before_prune"], r["after_prune"]
    lines = [
        f"victim test accuracy   {r['victim_test_accuracy']:.4f}",
        f"teacher test accuracy  {r['teacher_test_accuracy']:.4f}",
        f"{'':22} {'accuracy':>9} {'proxies':>8} {'%params TEE':>12} {'%FLOPs TEE':>11}",
    ]
    for name, m in (("sliced, before pruning", before), ("sliced, after pruning", after)):
        lines.append(
            f"{name:22} {m['test_accuracy']:9.4f} {m['proxies']:8d} "
            f"{m['params_tee_pct']:12.2f} {m['flops_tee_pct']:11.2f}"
        )
    lines.append(
        f"accuracy vs victim     {after['test_accuracy'] - r['victim_test_accuracy']:+.4f}; "
        f"TEESlice training {r['teeslice_wall_s']:.1f} s"
        f"{' (from the cache)' if r.get('cached') else ''}"
    )
    return "\n".join(lines)


def register(app: click.Group) -> None:
    """Add ``teeslice`` to ``app``."""
    app.add_command(teeslice)
