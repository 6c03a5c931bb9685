"""Debian packages the image build and the real node need, installed when missing.

podman, buildah, mmdebstrap, containerd, runc, the CNI plugins and iptables come from the
machine's Debian archive (bookworm). Installing needs root, as CI has; without root a missing
package is an error that names the packages and the command to install them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .binaries import Progress, _stderr_progress

# What each package brings that the harness calls.
IMAGE_PACKAGES = ("podman", "buildah", "runc", "mmdebstrap")
NODE_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables")

_APT_LISTS = Path("/var/lib/apt/lists")


class MissingPackages(RuntimeError):
    """Packages are missing and cannot be installed from here (not root, no apt)."""


def installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                            capture_output=True, text=True, check=False)
    return result.returncode == 0 and result.stdout.strip().endswith(" installed")


def _apt_lists_present() -> bool:
    return _APT_LISTS.is_dir() and any(_APT_LISTS.glob("*_Packages*"))


def ensure_packages(packages: Iterable[str], progress: Progress | None = None) -> None:
    """Install the Debian ``packages`` that are missing (apt lists are refreshed first when
    absent). An empty list only makes sure apt can download."""
    progress = progress or _stderr_progress
    wanted = list(dict.fromkeys(packages))
    if shutil.which("dpkg-query") is None or shutil.which("apt-get") is None:
        raise MissingPackages("this machine has no apt/dpkg: install "
                              f"{' '.join(wanted) or 'the packages'} with its package manager")
    missing = [p for p in wanted if not installed(p)]
    if not missing and (wanted or _apt_lists_present()):
        return
    if os.geteuid() != 0:
        raise MissingPackages(f"missing Debian packages {' '.join(missing)}: run "
                              f"'sudo apt-get install {' '.join(missing)}' (installing needs root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    progress(f"installing Debian packages: {' '.join(missing) or '(apt lists only)'}")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)
