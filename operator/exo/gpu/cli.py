"""The one command line of the project: ``exo-gpu <subcommand>``.

Subcommands live next to the component they start and are imported only when invoked, so that
``exo-gpu --help`` never imports kopf, NVML or the Kubernetes client, and a component's missing
optional dependency breaks only that component's subcommand.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

# name -> "module:attribute" of a click command.
SUBCOMMANDS: dict[str, str] = {
    "exporter": "exo.gpu.exporter.cli:command",
    "controller": "exo.gpu.app:controller_command",
    "extender": "exo.gpu.extender.cli:command",
    "crds": "exo.gpu.k8s.cli:command",
    "cluster": "exo.gpu.devcluster.cli:command",
    "up": "exo.gpu.devcluster.cli:up_command",
    "plan": "exo.gpu.controller.cli:plan_command",
    "top": "exo.gpu.controller.cli:top_command",
    "cleanup": "exo.gpu.uninstall:command",
}


def _available(target: str) -> bool:
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in SUBCOMMANDS.items() if _available(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None or not _available(target):
            return None
        module_name, attribute = target.split(":", 1)
        command = getattr(importlib.import_module(module_name), attribute, None)
        return command if isinstance(command, click.Command) else None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="exo-gpu")
def main() -> None:
    """exo-gpu: place GPU work on the device that is really free, cool and fit for it."""


if __name__ == "__main__":  # pragma: no cover
    main()
