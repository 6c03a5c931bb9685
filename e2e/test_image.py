"""The image, run as the chart runs it: a numeric non-root user, a read-only root filesystem.

Every subcommand of ``exo-gpu`` (each component, and the tools) must start there: a module that
writes next to itself, imports a test-only package or needs a user name would fail here before it
fails in a cluster. The real components run from this image on a real node in
``test_installed.py``.
"""

from __future__ import annotations

import pytest

from exo.gpu.cli import SUBCOMMANDS
from exo.gpu.devcluster.images import BuiltImage, podman

pytestmark = pytest.mark.cluster

RUN_AS = "65532:65532"
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def run(image: BuiltImage, *args: str) -> str:
    result = podman("run", "--rm", "--read-only", "--user", RUN_AS, "--network", "none",
                    "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *LIMITS,
                    image.reference, *args, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_subcommand_starts_as_non_root_on_a_read_only_root(product_image: BuiltImage
                                                                  ) -> None:
    names = sorted(SUBCOMMANDS)
    script = "; ".join(f"exo-gpu {name} --help > /dev/null && echo started {name}"
                       for name in names)
    out = run(product_image, "--help")  # the entrypoint itself, as the chart calls it
    assert "Commands:" in out and all(name in out for name in names)
    started = podman("run", "--rm", "--read-only", "--user", RUN_AS, "--network", "none",
                     "--cap-drop", "ALL", *LIMITS, "--entrypoint", "sh", product_image.reference,
                     "-c", f"set -e; {script}", check=False, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.split("\n")[:-1] == [f"started {name}" for name in names]


def test_runs_as_the_chart_user_with_a_name(product_image: BuiltImage) -> None:
    out = run(product_image, "--version")
    assert "exo-gpu" in out
    identity = podman("run", "--rm", "--read-only", "--user", RUN_AS, "--network", "none",
                      *LIMITS, "--entrypoint", "python", product_image.reference, "-c",
                      "import getpass, os; print(os.getuid(), os.getgid(), getpass.getuser())",
                      check=False, timeout=120)
    assert identity.stdout.split() == ["65532", "65532", "exo-gpu"], identity.stderr


def test_image_keeps_no_ca_bundle_and_no_installer(product_image: BuiltImage) -> None:
    """The build's CA secret is mounted for one step only; pip is not shipped."""
    listing = podman("run", "--rm", "--read-only", "--user", RUN_AS, "--network", "none",
                     *LIMITS, "--entrypoint", "sh", product_image.reference, "-c",
                     "find / -xdev -name 'ca-bundle*' 2>/dev/null; echo --; ls /opt/exo-gpu/bin",
                     check=False, timeout=120)
    found, _, binaries = listing.stdout.partition("--\n")
    assert found.strip() == ""
    assert "exo-gpu" in binaries.split() and "pip" not in binaries.split()
