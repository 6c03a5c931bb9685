"""Every subcommand starts with the runtime dependencies alone (what the image installs).

The image installs ``.[nvidia]``, not the test extra: a module that imports pytest or hypothesis
on the way to a subcommand breaks that subcommand in the image (and ``exo-gpu --help``, which
lists them all). The image build runs ``exo-gpu --help`` too; this finds it without a build.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from exo.gpu.cli import SUBCOMMANDS

TEST_ONLY = ("pytest", "hypothesis", "_pytest")

PROBE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it raises ImportError
from exo.gpu.cli import main
main({argv!r})
"""


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in sorted(SUBCOMMANDS)],
                         ids=lambda argv: " ".join(argv))
def test_subcommand_help_needs_no_test_dependency(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE.format(blocked=TEST_ONLY, argv=argv)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage:" in result.stdout
