"""``exo-gpu crds``: write the generated CustomResourceDefinitions (``make crds`` calls it); and
the command-line options every component that reads node labels shares (:func:`domain_options`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from exo.gpu.topology import BLOCK_LABEL, RACK_LABEL, DomainKeys

from .crdgen import generate, write

F = TypeVar("F", bound=Callable[..., Any])


def domain_options(command: F) -> F:
    """``--rack-label`` and ``--block-label``: the node labels that name racks and blocks."""
    command = click.option(
        "--block-label", default=BLOCK_LABEL, show_default=True,
        help="Node label naming a node's block (a group of racks) for topology packing.")(command)
    return click.option(
        "--rack-label", default=RACK_LABEL, show_default=True,
        help="Node label naming a node's rack for topology packing (the zone is "
             "topology.kubernetes.io/zone).")(command)


def domain_keys(rack_label: str, block_label: str) -> DomainKeys:
    """The domain keys of the two options (a bad key is a usage error naming the option)."""
    try:
        return DomainKeys(rack=rack_label, block=block_label)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--rack-label/--block-label") from None


@click.command(name="crds")
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("crds"),
    show_default=True,
    help="Directory the CRD YAML files are written to.",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a file in OUTPUT differs.")
def command(output: Path, check: bool) -> None:
    """Generate the gpu.exo.dev CustomResourceDefinitions from the API models."""
    if check:
        stale = [
            name
            for name, text in generate().items()
            if not (output / name).is_file() or (output / name).read_text(encoding="utf-8") != text
        ]
        if stale:
            raise click.ClickException(
                f"out of date in {output}: {', '.join(stale)} (run: exo-gpu crds --output {output})"
            )
        click.echo(f"{output}: up to date")
        return
    for path in write(output):
        click.echo(f"wrote {path}")
