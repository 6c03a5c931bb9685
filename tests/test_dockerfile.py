"""The Dockerfile's promises, checked without a container engine.

No engine runs where the tests run, so the image is never built here; these checks keep the
Dockerfile honest instead: pinned base images (no ``latest``, no untagged ``FROM``), a numeric
non-root user in the final stage, an exec-form entrypoint that is the project's console script,
extras that exist in pyproject.toml, a build context (``.dockerignore``) that still holds every
file a ``COPY`` needs, and nothing fetched from the network by hand.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def resolve(reference: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), reference)


ARGS, STAGES = parse(DOCKERFILE.read_text())
FINAL = STAGES[-1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_multi_stage_with_pinned_bases() -> None:
    assert len(STAGES) >= 2
    names = {s.name for s in STAGES if s.name}
    for stage in STAGES:
        base = resolve(stage.base, ARGS)
        if base in names:
            continue
        assert "$" not in base, f"unresolved base image {stage.base}"
        assert ":" in base.rsplit("/", 1)[-1], f"{base}: no tag"
        tag = base.rsplit(":", 1)[1]
        assert tag != "latest" and not tag.startswith("latest"), base
        assert base.startswith("python:3.11-slim"), base


def test_base_python_satisfies_requires_python() -> None:
    base = resolve(STAGES[0].base, ARGS)
    version = re.match(r"python:(\d+)\.(\d+)", base)
    assert version is not None
    required = re.match(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert required is not None
    assert tuple(map(int, version.groups())) >= tuple(map(int, required.groups()))


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [rest for keyword, rest in FINAL.instructions if keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert gid == "" or (gid.isdigit() and int(gid) != 0), users[-1]
    # Kubernetes can only enforce runAsNonRoot against a numeric USER.
    assert int(uid) == 65532


def test_entrypoint_is_the_console_script_in_exec_form() -> None:
    (entrypoint,) = [rest for keyword, rest in FINAL.instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == '["exo-gpu"]'
    assert "exo-gpu" in PYPROJECT["project"]["scripts"]


def test_final_stage_copies_only_the_environment() -> None:
    copies = [rest for keyword, rest in FINAL.instructions if keyword in ("COPY", "ADD")]
    assert copies and all(c.startswith("--from=") for c in copies), copies
    assert not [r for k, r in FINAL.instructions if k == "RUN" and "pip" in r], \
        "no package installation in the runtime stage"


def test_install_uses_extras_that_exist() -> None:
    build = next(s for s in STAGES if s.name == "build")
    extras_default = next(r.partition("=")[2] for k, r in build.instructions
                          if k == "ARG" and r.startswith("EXTRAS="))
    assert "nvidia" in extras_default.split(",")
    for extra in extras_default.split(","):
        assert extra in PYPROJECT["project"]["optional-dependencies"], extra
    install = [r for k, r in build.instructions if k == "RUN" and "pip install" in r]
    assert install and '".[${EXTRAS}]"' in install[0]
    assert "-e " not in install[0], "an editable install would need the sources at run time"


def test_no_network_fetches_by_hand() -> None:
    for stage in STAGES:
        for keyword, rest in stage.instructions:
            assert keyword != "ADD", "ADD fetches and unpacks implicitly: use COPY"
            if keyword == "RUN":
                assert not re.search(r"\b(curl|wget)\b", rest), rest


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if fnmatch.fnmatch(path, body) or fnmatch.fnmatch(path, body + "/*") \
                or path.startswith(body + "/"):
            ignored = not negate
    return ignored


def _context_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md",
                                  "operator/exo/gpu/cli.py",
                                  "operator/exo/gpu/data/fleet-demo.yaml",
                                  "operator/exo/gpu/py.typed"])
def test_build_context_keeps_what_the_build_needs(path: str) -> None:
    assert (ROOT / path).exists(), path
    assert not _ignored(path, _context_patterns()), f"{path} is excluded by .dockerignore"


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "tests/test_chart.py",
                                  ".cluster/kubeconfig",
                                  "operator/exo/gpu/__pycache__/cli.cpython-311.pyc"])
def test_build_context_leaves_out_local_state(path: str) -> None:
    assert _ignored(path, _context_patterns()), f"{path} would be sent to the engine"


def test_every_copied_source_exists() -> None:
    build = next(s for s in STAGES if s.name == "build")
    for keyword, rest in build.instructions:
        if keyword != "COPY" or rest.startswith("--from="):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not _ignored(source, _context_patterns()), source


def test_exposed_ports_are_the_chart_defaults() -> None:
    import yaml

    values = yaml.safe_load((ROOT / "charts/exo-gpu/values.yaml").read_text())
    (exposed,) = [rest for keyword, rest in FINAL.instructions if keyword == "EXPOSE"]
    assert {int(p) for p in exposed.split()} == {
        values["exporter"]["metricsPort"], values["controller"]["extender"]["port"],
        values["controller"]["metricsPort"], values["controller"]["healthPort"]}
