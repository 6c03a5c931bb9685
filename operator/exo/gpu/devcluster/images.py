"""Container images without a Docker engine: the product image, and the node's own images.

``make image`` (``exo-gpu cluster image``) builds the repository's Dockerfile with podman, which
installs from Debian when missing. The base is the Dockerfile's public ``python:3.11-slim``
where a registry can be reached; otherwise a Debian bookworm root filesystem with Python 3.11
is built from Debian packages with mmdebstrap (cached as a tarball) and imported as the base.
An extra CA bundle for TLS-intercepting proxies goes to the build as a *secret*: the build's
``pip install`` trusts it, and no layer of the image keeps it.

The real node of the local cluster also needs images no registry can provide here: the pod
sandbox (``pause``), kube-scheduler and CoreDNS from the cached binaries, and a stand-in for the
``busybox`` image the examples use. Those are single-layer images written directly as
docker-archive tarballs (``scratch_archive``), which containerd imports.

Images are tagged by a digest of what goes into them, so an unchanged tree is never rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .binaries import Progress, _stderr_progress, cache_root
from .hostpkgs import ensure_packages

REPOSITORY = "localhost/exo-gpu"
PUBLIC_BASE = "docker.io/library/python:3.11-slim-bookworm"
DEBIAN_BASE = "localhost/exo-gpu-base:bookworm-python3.11"
# What the Debian base holds: Python 3.11 with venv and pip's wheel, `python` on PATH, CAs.
DEBIAN_BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
DEBIAN_BASE_RECIPE = "1"  # bump when the mmdebstrap command below changes
PULL_TIMEOUT_S = 60.0
BUILD_UID = 65532

# Two limits the container runtime must not raise: the machines that run the tests withhold
# CAP_SYS_RESOURCE, and podman's defaults are above the hard limits there.
_ULIMITS = ("--ulimit", "nofile=8192:8192", "--ulimit", "nproc=8192:8192")
# Hybrid cgroups (v1 controllers plus a unified hierarchy) are refused by crun; runc runs.
_PODMAN_GLOBAL = ("--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file")


def repository_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "Dockerfile").is_file() and (parent / "pyproject.toml").is_file():
            return parent
    raise FileNotFoundError("the Dockerfile is not found: run from a source checkout of exo-gpu")


def podman(*args: str, check: bool = True, capture: bool = True,
           timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run podman with the settings this kind of machine needs (runc, cgroupfs, no journald)."""
    return subprocess.run(["podman", *_PODMAN_GLOBAL, *args], check=check, text=True,
                          capture_output=capture, timeout=timeout)


def image_exists(reference: str) -> bool:
    return podman("image", "exists", reference, check=False).returncode == 0


def image_size(reference: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", reference).stdout.strip())


# ----------------------------------------------------------------------------- CA bundle
def extra_ca_bundle() -> Path | None:
    """The CA bundle a TLS-intercepting proxy needs, if this machine is configured with one.

    ``$EXO_GPU_CA_BUNDLE`` wins; otherwise the bundle pip itself uses here (``$PIP_CERT`` or
    pip's ``global.cert``), since the image's ``pip install`` meets the same proxy.
    """
    for candidate in (os.environ.get("EXO_GPU_CA_BUNDLE"), os.environ.get("PIP_CERT")):
        if candidate:
            return Path(candidate)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        configured = subprocess.run(["pip", "config", "get", "global.cert"], text=True,
                                    capture_output=True, timeout=30)
        if configured.returncode == 0 and configured.stdout.strip():
            return Path(configured.stdout.strip())
    return None


# ----------------------------------------------------------------------------- base image
def _try_pull(reference: str, progress: Progress) -> bool:
    progress(f"pulling {reference}")
    try:
        pulled = podman("pull", "--quiet", reference, check=False, timeout=PULL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        progress(f"no registry answered within {PULL_TIMEOUT_S:.0f} s")
        return False
    if pulled.returncode != 0:
        progress(f"cannot pull {reference}: {pulled.stderr.strip().splitlines()[-1:]}")
    return pulled.returncode == 0


def debian_base_tarball(progress: Progress) -> Path:
    """A Debian bookworm root filesystem with Python 3.11, built once with mmdebstrap."""
    out = cache_root() / "images" / f"debian-bookworm-python3.11-r{DEBIAN_BASE_RECIPE}.tar"
    if out.is_file():
        return out
    ensure_packages(["mmdebstrap"], progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.tar")
    progress("building a Debian bookworm base with Python 3.11 from Debian packages "
             "(mmdebstrap, about a minute)")
    # No documentation, manuals or translations: they only make the image larger.
    excludes = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                "/usr/share/locale/*", "/usr/share/lintian/*"]
    subprocess.run(["nice", "-n", "10", "mmdebstrap", "--variant=essential", "--quiet",
                    "--include=" + ",".join(DEBIAN_BASE_PACKAGES),
                    *[f"--dpkgopt=path-exclude={path}" for path in excludes],
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "bookworm", str(partial)], check=True)
    partial.rename(out)
    return out


def ensure_base(progress: Progress | None = None, *, base: str | None = None) -> str:
    """The base image for the Dockerfile: ``base`` if given, the public one if it can be
    pulled, else the Debian base built from packages."""
    progress = progress or _stderr_progress
    if base:
        return base
    for reference in (PUBLIC_BASE, DEBIAN_BASE):
        if image_exists(reference):
            return reference
    if os.environ.get("EXO_GPU_PULL_BASE", "1") != "0" and _try_pull(PUBLIC_BASE, progress):
        return PUBLIC_BASE
    tarball = debian_base_tarball(progress)
    progress(f"importing {tarball.name} as {DEBIAN_BASE}")
    podman("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
           "/sbin:/bin", "--change", 'CMD ["python3"]', str(tarball), DEBIAN_BASE)
    return DEBIAN_BASE


# ----------------------------------------------------------------------------- product image
def _context_files(root: Path) -> Iterable[Path]:
    """The files the Dockerfile copies (the build context after .dockerignore)."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        yield root / name
    for path in sorted((root / "operator").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path) \
                and path.suffix != ".pyc":
            yield path


def source_digest(root: Path, extra: Sequence[str] = ()) -> str:
    """A digest of the build inputs: the same tree and arguments give the same tag."""
    digest = hashlib.sha256()
    for path in _context_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:12]


def project_version(root: Path) -> str:
    import tomllib

    return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


@dataclass(frozen=True)
class BuiltImage:
    reference: str  # repository:<version>-<digest>, unique to the inputs
    tags: tuple[str, ...]  # every tag it carries
    size_bytes: int
    base: str
    built: bool  # False when an image of the same inputs was reused


def build_image(progress: Progress | None = None, *, base: str | None = None,
                extras: str | None = None, ca_bundle: Path | None = None,
                repository: str = REPOSITORY, force: bool = False) -> BuiltImage:
    """Build the Dockerfile's image with podman (reused when its inputs did not change)."""
    progress = progress or _stderr_progress
    ensure_packages(["podman", "buildah", "runc"], progress)
    root = repository_root()
    base_image = ensure_base(progress, base=base)
    build_args = {"PYTHON_IMAGE": base_image}
    if extras:
        build_args["EXTRAS"] = extras
    base_id = podman("image", "inspect", "--format", "{{.Id}}", base_image).stdout.strip()
    version = project_version(root)
    digest = source_digest(root, [base_id, *(f"{k}={v}" for k, v in sorted(build_args.items()))])
    reference = f"{repository}:{version}-{digest}"
    tags = (reference, f"{repository}:{version}")
    if not force and image_exists(reference):
        podman("tag", reference, tags[1])
        return BuiltImage(reference, tags, image_size(reference), base_image, built=False)
    bundle = ca_bundle if ca_bundle is not None else extra_ca_bundle()
    command = ["build", "--network", "host", *_ULIMITS, "--file", str(root / "Dockerfile")]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    if bundle is not None:
        if not bundle.is_file():
            raise FileNotFoundError(f"CA bundle {bundle} does not exist (EXO_GPU_CA_BUNDLE)")
        progress(f"the build trusts the extra CA bundle {bundle} (a build secret, not kept)")
        command += ["--secret", f"id=ca-bundle,src={bundle}"]
    for tag in tags:
        command += ["--tag", tag]
    progress(f"building {reference} from {base_image}")
    subprocess.run(["nice", "-n", "10", "podman", *_PODMAN_GLOBAL, *command, str(root)],
                   check=True)
    _drop_older_builds(repository, version, keep=reference)
    return BuiltImage(reference, tags, image_size(reference), base_image, built=True)


def _drop_older_builds(repository: str, version: str, keep: str) -> None:
    """Keep one ``<version>-<digest>`` build per repository: each holds a few hundred MB."""
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                    f"reference={repository}", check=False).stdout.split()
    older = [r for r in listed if r != keep and r.startswith(f"{repository}:{version}-")]
    if older:
        podman("rmi", *older, check=False)
        podman("image", "prune", "--force", check=False)


def save_archive(reference: str, path: Path) -> Path:
    """Write ``reference`` as a docker-archive tarball (what ``ctr images import`` reads)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        podman("save", "--format", "docker-archive", "--output", str(partial), reference)
        partial.rename(path)
    return path


# ----------------------------------------------------------------------------- scratch images
@dataclass(frozen=True)
class ScratchFile:
    """A file of a single-layer image: from ``source`` on this machine, or a symlink."""

    path: str  # absolute path inside the image
    source: Path | None = None
    mode: int = 0o755
    link: str | None = None


def scratch_archive(out: Path, reference: str, files: Sequence[ScratchFile], *,
                    entrypoint: Sequence[str] | None = None, cmd: Sequence[str] | None = None,
                    env: Mapping[str, str] | None = None, user: str = "") -> Path:
    """Write a one-layer image (no base) as a docker-archive tarball, deterministically."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for item in files:
            parts = item.path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(item.path.strip("/"))
            info.mode = item.mode
            if item.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, item.link
                tar.addfile(info)
            else:
                assert item.source is not None
                data = item.source.read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config: dict[str, object] = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": [f"{k}={v}" for k, v in (env or {"PATH": "/usr/local/bin:/bin"})
                           .items()],
                   **({"Entrypoint": list(entrypoint)} if entrypoint else {}),
                   **({"Cmd": list(cmd)} if cmd else {}),
                   **({"User": user} if user else {})},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "exo-gpu devcluster scratch_archive"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [reference],
                 "Layers": [f"{diff_id}/layer.tar"]}]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, mode="w") as archive:
        for name, data in ((config_name, config_bytes), (f"{diff_id}/layer.tar", layer_bytes),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    partial.rename(out)
    return out


def debian_binary(package: str, member: str, progress: Progress) -> Path:
    """One file of a Debian package, fetched with apt (cached), e.g. busybox-static's busybox."""
    out = cache_root() / "debian" / package / member.strip("/")
    if out.is_file():
        return out
    ensure_packages([], progress)  # apt's lists are fresh enough to download from
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(["apt-get", "download", "--quiet", package], cwd=scratch, check=True,
                       capture_output=True)
        (deb,) = Path(scratch).glob("*.deb")
        subprocess.run(["dpkg-deb", "--extract", str(deb), f"{scratch}/root"], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(scratch) / "root" / member.strip("/"), out)
    return out
