"""``taoism package``: seal a zoo model into an owner-signed package (run by the model owner)."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._common import ModelArgs, default_split, model_options
from taoism.cli._options import Output, output_options


@click.command()
@model_options
@click.option(
    "--owner-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The owner's Ed25519 private key (owner.key from `taoism keygen`).",
)
@click.option(
    "--package",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("model.taoism"),
    help="The package to write; its model key goes to PACKAGE.key (0600).",
)
@click.option(
    "--overwrite", is_flag=True, default=False, help="Replace an existing package and model key."
)
@output_options(out_help="Write package.json (paths and counts) into DIR.")
def package(spec: ModelArgs, owner_key: Path, out_path: Path, overwrite: bool, out: Output) -> None:
    """Capture, plan and seal a model: device weights in plaintext, shielded weights AES-GCM sealed.

    Without --placement/--plan/--strategy the first half of the model's blocks is shielded.
    """
    from taoism.runtime.package import package as seal

    model, x = spec.build()
    kw = (
        {"strategy": spec.strategy}
        if spec.strategy
        else {"placement": spec.placement_spec() or default_split(model)}
    )
    done = seal(
        model,
        x,
        out=out_path,
        owner_key=str(owner_key),
        tee=spec.tee or "unlimited",
        overwrite=overwrite,
        **kw,
    )
    click.echo(
        f"package {done.path} ({done.shielded_tensors} shielded, {done.device_tensors} device tensors)\n"
        f"model key {done.key_path} (mode 0600: give it to the key service only)"
    )
    out.emit(
        {
            "package": str(done.path),
            "model_key": str(done.key_path),
            "shielded_tensors": done.shielded_tensors,
            "device_tensors": done.device_tensors,
        },
        "package",
    )


def register(app: click.Group) -> None:
    """Add ``package`` to ``app``."""
    app.add_command(package)
