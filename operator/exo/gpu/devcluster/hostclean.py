"""Undo what a real node changes on its machine, and prove nothing is left.

A kubelet, containerd, kube-proxy and the CNI plugins change the host beyond their work folder:

- kernel settings (the kubelet sets ``kernel.panic``, ``kernel.panic_on_oops`` and
  ``vm.overcommit_memory`` with no option to skip; the bridge plugin turns on ``ip_forward``);
- iptables chains ``KUBE-*`` (kube-proxy, kubelet) and ``CNI-*`` (bridge, portmap) and the rules
  that jump to them, in every table, IPv4 and IPv6;
- the ``cni0`` bridge and the pods' veth pairs, network namespaces under ``/run/netns``;
- ``kubepods`` cgroups in every hierarchy;
- mounts: the kubelet bind-mounts its root folder, containerd mounts each container's root
  filesystem and each sandbox's ``/dev/shm``, the kubelet mounts every pod volume;
- processes that outlive their parents by design (containerd's shims, the containers);
- files outside its folder: the kubelet's ``/var/lib/kubelet/device-plugins`` and
  ``/var/log/containers`` links, containerd's shim sockets under ``/run/containerd``, the CNI
  result cache under ``/var/lib/cni``.

``HostSnapshot`` records the state before the node starts (kernel settings, namespaces) in a
host-wide file, so that ``clean_host`` can restore it even after a run that was killed; each step
is best effort and ``leftovers`` then lists what is still there (an empty list means clean).
Only what this node made is touched: chains by their prefixes, namespaces that appeared after
the snapshot, mounts under the node's folder, processes whose command line names its socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The settings a node changes (kubelet, CNI bridge, kube-proxy), restored on teardown.
SYSCTLS = (
    "kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet", "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
)
CHAIN_PREFIXES = ("KUBE-", "CNI-")
TABLES = ("filter", "nat", "mangle", "raw")
BRIDGE = "cni0"
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
POD_CGROUP = "kubepods"
HOST_STATE_DIR = Path("/run/exo-gpu-node")
CNI_NETWORK = "exo-gpu-node"  # the name of the node's CNI network (its cache files start so)
CONTAINER_LOGS = Path("/var/log/containers")
CNI_CACHE = Path("/var/lib/cni")
# Folders the node's programs create at fixed places; removed when they did not exist before.
HOST_FOLDERS = (Path("/var/lib/kubelet"), Path("/run/containerd"), NETNS_DIR, CNI_CACHE,
                CONTAINER_LOGS)


@dataclass
class HostSnapshot:
    """What the host looked like before the node started (kept in ``HOST_STATE_DIR``)."""

    workdir: str
    socket: str
    sysctls: dict[str, str] = field(default_factory=dict)
    netns: list[str] = field(default_factory=list)
    binaries: list[str] = field(default_factory=list)
    folders: dict[str, bool] = field(default_factory=dict)  # HOST_FOLDERS: existed before?

    @classmethod
    def take(cls, workdir: Path, socket: Path, binaries: Iterable[Path]) -> HostSnapshot:
        values = {}
        for name in SYSCTLS:
            with contextlib.suppress(OSError):
                values[name] = (Path("/proc/sys") / name).read_text().strip()
        netns = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
        return cls(workdir=str(workdir), socket=str(socket), sysctls=values, netns=netns,
                   binaries=[str(b) for b in binaries],
                   folders={str(f): f.exists() for f in HOST_FOLDERS})

    @staticmethod
    def path() -> Path:
        return HOST_STATE_DIR / "state.json"

    def save(self) -> None:
        HOST_STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.path().write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls) -> HostSnapshot | None:
        try:
            return cls(**json.loads(cls.path().read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def forget(cls) -> None:
        cls.path().unlink(missing_ok=True)


# ----------------------------------------------------------------------------- processes
def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _in_pod_cgroup(pid: int) -> bool:
    try:
        text = (Path("/proc") / str(pid) / "cgroup").read_text()
    except OSError:
        return False
    return any(f"/{POD_CGROUP}" in line.split(":", 2)[-1] for line in text.splitlines())


def node_processes(snapshot: HostSnapshot) -> list[tuple[int, str]]:
    """Processes this node started: its daemons, containerd's shims, the containers."""
    found = []
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        command = _cmdline(pid)
        if not command:
            continue
        ours = (snapshot.socket in command or snapshot.workdir.rstrip("/") + "/" in command
                or any(command.startswith(binary) for binary in snapshot.binaries)
                or _in_pod_cgroup(pid))
        if ours:
            found.append((pid, command[:200]))
    return found


def kill_processes(snapshot: HostSnapshot, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets = [pid for pid, _ in node_processes(snapshot)]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in targets):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ----------------------------------------------------------------------------- mounts
def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def node_mounts(snapshot: HostSnapshot) -> list[str]:
    workdir = snapshot.workdir.rstrip("/") + "/"
    new_netns = {str(NETNS_DIR / name) for name in _new_netns(snapshot)}
    return [p for p in _mount_points()
            if (p + "/").startswith(workdir) or p == snapshot.workdir.rstrip("/")
            or p in new_netns]


def unmount_all(snapshot: HostSnapshot) -> None:
    for _ in range(5):  # a mount may hide another at the same point
        points = sorted(set(node_mounts(snapshot)), key=lambda p: p.count("/"), reverse=True)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)


# ----------------------------------------------------------------------------- network
def _new_netns(snapshot: HostSnapshot) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir()
                  if p.name.startswith("cni-") and p.name not in snapshot.netns)


def remove_netns(snapshot: HostSnapshot) -> None:
    for name in _new_netns(snapshot):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        with contextlib.suppress(OSError):
            (NETNS_DIR / name).unlink()


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def remove_bridge() -> None:
    if not _link_exists(BRIDGE):
        return
    ports = subprocess.run(["ip", "-o", "link", "show", "master", BRIDGE], capture_output=True,
                           text=True).stdout
    for line in ports.splitlines():
        port = line.split(":")[1].strip().split("@")[0]
        subprocess.run(["ip", "link", "delete", port], capture_output=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


def _save(binary: str, table: str) -> list[str]:
    result = subprocess.run([f"{binary}-save", "-t", table], capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else []


def node_chains(binary: str = "iptables") -> dict[str, list[str]]:
    """Chains with the node's prefixes, per table."""
    chains: dict[str, list[str]] = {}
    for table in TABLES:
        names = [line[1:].split()[0] for line in _save(binary, table) if line.startswith(":")]
        ours = [name for name in names if name.startswith(CHAIN_PREFIXES)]
        if ours:
            chains[table] = ours
    return chains


def remove_chains() -> None:
    for binary in ("iptables", "ip6tables"):
        for table in TABLES:
            lines = _save(binary, table)
            ours = [line[1:].split()[0] for line in lines
                    if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)]
            if not ours:
                continue
            # Rules of other chains that jump to ours go first, then our chains' own rules.
            for line in lines:
                if not line.startswith("-A "):
                    continue
                words = shlex.split(line)
                chain = words[1]
                if chain in ours:
                    continue
                if re.search(r"-[jg] (KUBE-|CNI-)", line):
                    subprocess.run([binary, "-w", "-t", table, "-D", chain, *words[2:]],
                                   capture_output=True)
            for chain in ours:
                subprocess.run([binary, "-w", "-t", table, "-F", chain], capture_output=True)
            for chain in ours:
                subprocess.run([binary, "-w", "-t", table, "-X", chain], capture_output=True)


# ----------------------------------------------------------------------------- cgroups
def _hierarchies() -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    roots = [CGROUP_ROOT]
    roots += [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
    return roots


def node_cgroups() -> list[Path]:
    return [root / POD_CGROUP for root in _hierarchies() if (root / POD_CGROUP).is_dir()]


def _remove_empty_tree(top: Path) -> None:
    """Remove ``top`` and the folders below it, deepest first, leaving any that hold a file
    (or, for a cgroup, a process)."""
    for directory in sorted((p for p in top.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def remove_cgroups() -> None:
    for top in node_cgroups():
        _remove_empty_tree(top)  # a cgroup can be removed only once it has no children


# ----------------------------------------------------------------------------- sysctls
def changed_sysctls(snapshot: HostSnapshot) -> dict[str, tuple[str, str]]:
    changed = {}
    for name, before in snapshot.sysctls.items():
        with contextlib.suppress(OSError):
            now = (Path("/proc/sys") / name).read_text().strip()
            if now != before:
                changed[name] = (before, now)
    return changed


def restore_sysctls(snapshot: HostSnapshot) -> None:
    for name, (before, _now) in changed_sysctls(snapshot).items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / name).write_text(before)


# ----------------------------------------------------------------------------- files
def node_files(snapshot: HostSnapshot) -> list[Path]:
    """Files of the node outside its folder, in folders that other programs share."""
    workdir = snapshot.workdir.rstrip("/") + "/"
    found = []
    if CONTAINER_LOGS.is_dir():
        found += [link for link in CONTAINER_LOGS.iterdir()
                  if link.is_symlink() and os.readlink(link).startswith(workdir)]
    results = CNI_CACHE / "results"
    if results.is_dir():
        ours = [f for f in results.iterdir() if f.name.startswith(f"{CNI_NETWORK}-")]
        ids = {f.name[len(CNI_NETWORK) + 1:].rsplit("-", 1)[0] for f in ours}
        found += ours + [f for f in results.iterdir() if f.name.startswith("cni-loopback-")
                         and f.name[len("cni-loopback-"):].rsplit("-", 1)[0] in ids]
    return found


def new_folders(snapshot: HostSnapshot) -> list[Path]:
    return [Path(path) for path, existed in snapshot.folders.items()
            if not existed and Path(path).exists()]


def remove_files(snapshot: HostSnapshot) -> None:
    for path in node_files(snapshot):
        with contextlib.suppress(OSError):
            path.unlink()
    for folder in new_folders(snapshot):
        if folder in (NETNS_DIR, CNI_CACHE, CONTAINER_LOGS):
            # Shared with other container tools: removed only when nothing else is inside.
            _remove_empty_tree(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- all together
def clean_host(snapshot: HostSnapshot) -> list[str]:
    """Undo every change of the node; return what is still left (empty when clean)."""
    kill_processes(snapshot)
    unmount_all(snapshot)
    remove_netns(snapshot)
    remove_bridge()
    remove_chains()
    remove_cgroups()
    restore_sysctls(snapshot)
    remove_files(snapshot)
    left = leftovers(snapshot)
    if not left:
        HostSnapshot.forget()
    return left


def leftovers(snapshot: HostSnapshot) -> list[str]:
    """Every trace of the node still on the host, one line each."""
    left = [f"process {pid}: {command}" for pid, command in node_processes(snapshot)]
    left += [f"mount {point}" for point in node_mounts(snapshot)]
    left += [f"network namespace {name}" for name in _new_netns(snapshot)]
    if _link_exists(BRIDGE):
        left.append(f"link {BRIDGE}")
    for binary in ("iptables", "ip6tables"):
        for table, chains in node_chains(binary).items():
            left.append(f"{binary} -t {table}: chains {' '.join(chains)}")
    left += [f"cgroup {path}" for path in node_cgroups()]
    left += [f"sysctl {name}: {now} (was {before})"
             for name, (before, now) in changed_sysctls(snapshot).items()]
    left += [f"file {path}" for path in node_files(snapshot)]
    left += [f"folder {path} (did not exist before)" for path in new_folders(snapshot)]
    return left
