"""Fixtures of the install tier: the product image, built here without a Docker engine.

The image is built once per session with podman (``make image``'s code path), reused when its
inputs did not change. Building and running containers needs root on this kind of machine (CI
runs as root); elsewhere these tests are skipped with that reason.
"""

from __future__ import annotations

import os

import pytest

from exo.gpu.devcluster.images import BuiltImage, build_image


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("building images and running a real node need root (CI runs as root)")


@pytest.fixture(scope="session")
def product_image() -> BuiltImage:
    needs_root()
    return build_image()
