"""``exo-gpu crds``: write the generated CustomResourceDefinitions (``make crds`` calls it)."""

from __future__ import annotations

from pathlib import Path

import click

from .crdgen import generate, write


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
