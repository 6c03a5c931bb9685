"""A real node for the local cluster: containerd, runc, kubelet, kube-proxy, CNI and cluster DNS.

``NodeCluster`` is the local control plane (``LocalCluster``) plus one node that runs real
containers, so that the product can be installed as users install it (Helm, images, probes,
Services, ServiceAccount tokens) and checked end to end. What differs from the fake-node cluster:

- the API server serves on the machine's address (pods reach it through the ``kubernetes``
  Service, whose endpoints it now reconciles), with the ServiceAccount and
  TaintNodesByCondition admission plugins on, and a client certificate for the kubelet's API
  (logs, exec);
- containerd (Debian's, with runc) serves the CRI on a socket in the node's folder; the pod
  sandbox image and every other image are loaded from local archives (there is no registry).
  Its image store persists in the cache (``<cache>/node/containerd``), so an image is imported
  once, not on every start; images of ``localhost/exo-gpu`` no longer asked for are removed;
- the kubelet v1.37.2 and kube-proxy (iptables mode) come from the same Go module as the
  control plane; pods get addresses from the CNI bridge plugin (``cni0``, 10.244.0.0/24);
- CoreDNS, built with the plugins it needs, serves ``cluster.local`` at 10.0.0.10.

Settings this kind of machine needs (see docs/local-cluster.md): cgroups v1 accepted
(``failCgroupV1: false``), the cgroupfs driver, ``restrict_oom_score_adj`` in containerd (the
machine withholds CAP_SYS_RESOURCE), kube-proxy leaving conntrack and ``route_localnet`` alone.

One real node runs per machine at a time (a host-wide lock; a second waits). Its host changes
are recorded before it starts and undone when it stops, also after a killed run (see
``hostclean``). The node is named ``exo-gpu-node`` and is not labelled as a GPU node: that is
the user's step (``kubectl label node exo-gpu-node gpu.exo.dev/gpu-node=true``).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .binaries import KUBERNETES_VERSION, Progress, _stderr_progress, cache_root, ensure_binaries
from .cluster import LocalCluster, _die_with_parent, _terminate, free_port, wait_for
from .hostclean import HostSnapshot, clean_host, leftovers
from .hostpkgs import NODE_PACKAGES, ensure_packages
from .images import REPOSITORY as PRODUCT_REPOSITORY
from .images import ScratchFile, debian_binary, save_archive, scratch_archive
from .nodebinaries import COREDNS_VERSION, PAUSE_VERSION, NodeBinaries, ensure_node_binaries

NODE_NAME = "exo-gpu-node"
POD_SUBNET = "10.244.0.0/24"
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIR = Path("/usr/lib/cni")
IMAGE_PREFIX = "localhost/exo-gpu-node"
PAUSE_IMAGE = f"{IMAGE_PREFIX}/pause:{PAUSE_VERSION}"
SCHEDULER_IMAGE = f"{IMAGE_PREFIX}/kube-scheduler:{KUBERNETES_VERSION}"
COREDNS_IMAGE = f"{IMAGE_PREFIX}/coredns:{COREDNS_VERSION}"
# The examples run `busybox:1.36`; with no registry here, a stand-in with the same applets is
# built from Debian's busybox-static and loaded under that name.
BUSYBOX_IMAGE = "docker.io/library/busybox:1.36"
STOPPING_TAINT = "devcluster.exo.dev/stopping"
LOCK_PATH = Path("/run/lock/exo-gpu-node.lock")
LOCK_WAIT_S = 1800.0
NODE_READY_TIMEOUT_S = 120.0


def containerd_root() -> Path:
    """The node's image store, kept between runs (one node per machine at a time: HostLock)."""
    return cache_root() / "node" / "containerd"


def node_address() -> str:
    """This machine's address on its default route (what pods and the API server use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, \
            contextlib.suppress(OSError):
        probe.connect(("198.51.100.1", 9))  # no packet is sent: only the route is looked up
        address = str(probe.getsockname()[0])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for address in addresses:
        if ipaddress.ip_address(address).version == 4:
            return address
    raise RuntimeError("this machine has no IPv4 address besides loopback: a node needs one")


# ----------------------------------------------------------------------------- certificates
def issue_certificate(ca_cert: Path, ca_key: Path, out: Path, *, common_name: str,
                      organization: str | None = None, client: bool = False,
                      server: bool = False, dns: Sequence[str] = (),
                      ips: Sequence[str] = ()) -> tuple[Path, Path]:
    """A certificate and key signed by the cluster CA; writes ``out``.crt and ``out``.key."""
    authority = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    authority_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(authority_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    now = datetime.datetime.now(datetime.UTC)
    usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + \
        ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    builder = (x509.CertificateBuilder().subject_name(x509.Name(attributes))
               .issuer_name(authority.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(authority_key, hashes.SHA256())
    crt, pem = out.with_suffix(".crt"), out.with_suffix(".key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


# ----------------------------------------------------------------------------- images
def node_image_archives(binaries: NodeBinaries, kube_scheduler: Path, progress: Progress
                        ) -> dict[str, Path]:
    """docker-archive tarballs of the pause, kube-scheduler, CoreDNS and busybox images."""
    folder = cache_root() / "images" / "node"
    archives: dict[str, Path] = {}

    def single(name: str, reference: str, files: list[ScratchFile], **config: Any) -> None:
        path = folder / f"{name}.tar"
        if not path.is_file():
            scratch_archive(path, reference, files, **config)
        archives[reference] = path

    single(f"pause-{PAUSE_VERSION}", PAUSE_IMAGE, [ScratchFile("/pause", binaries.pause)],
           entrypoint=["/pause"], user="65535:65535")
    single(f"kube-scheduler-{KUBERNETES_VERSION}", SCHEDULER_IMAGE,
           [ScratchFile("/usr/local/bin/kube-scheduler", kube_scheduler)],
           entrypoint=["/usr/local/bin/kube-scheduler"])
    single(f"coredns-{COREDNS_VERSION}", COREDNS_IMAGE,
           [ScratchFile("/coredns", binaries.coredns)], entrypoint=["/coredns"])
    busybox_path = folder / "busybox-standin.tar"
    if not busybox_path.is_file():
        busybox = debian_binary("busybox-static", "/bin/busybox", progress)
        applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        files = [ScratchFile("/bin/busybox", busybox)]
        files += [ScratchFile(f"/bin/{a}", link="busybox") for a in applets if a != "busybox"]
        scratch_archive(busybox_path, BUSYBOX_IMAGE, files, cmd=["sh"],
                        env={"PATH": "/bin"})
    archives[BUSYBOX_IMAGE] = busybox_path
    return archives


# ----------------------------------------------------------------------------- processes
@dataclass
class _Daemon:
    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None


class HostLock:
    """One real node per machine: its iptables chains, cni0 and cgroups are host-wide."""

    def __init__(self, progress: Progress, wait: float = LOCK_WAIT_S) -> None:
        self.progress, self.wait = progress, wait
        self.handle: IO[str] | None = None

    def acquire(self) -> None:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        handle = LOCK_PATH.open("a+")
        deadline = time.monotonic() + self.wait
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    self.progress(f"another real node runs on this machine ({LOCK_PATH}); "
                                  "waiting for it to stop")
                    told = True
                if time.monotonic() > deadline:
                    handle.close()
                    raise TimeoutError(f"{LOCK_PATH} stayed locked for {self.wait:.0f} s") \
                        from None
                time.sleep(1.0)
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


@dataclass
class RealNode:
    """containerd + kubelet + kube-proxy for ``cluster``, in ``workdir`` (see the module)."""

    cluster: LocalCluster
    workdir: Path
    binaries: NodeBinaries
    archives: Mapping[str, Path] = field(default_factory=dict)  # reference -> docker archive
    podman_images: Sequence[str] = ()  # references in podman's store, saved when missing
    name: str = NODE_NAME
    progress: Progress = _stderr_progress
    daemons: dict[str, _Daemon] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    snapshot: HostSnapshot | None = None
    lock: HostLock | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def address(self) -> str:
        return self.cluster.address

    # ------------------------------------------------------------------- lifecycle
    def start(self) -> RealNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lock = HostLock(self.progress)
        self.lock.acquire()
        try:
            self._clean_previous_run()
            self.snapshot = HostSnapshot.take(
                self.workdir, self.socket,
                [self.binaries.kubelet, self.binaries.kube_proxy])
            self.snapshot.save()
            began = time.monotonic()
            self._write_files()
            self._start_containerd()
            self._remove_containers()  # of a previous run that was killed
            self.load_images()
            self._start_kubelet()
            self._start_kube_proxy()
            self._deploy_dns()
            self.progress(f"node {self.name} ready in {time.monotonic() - began:.1f} s "
                          "(containerd, images, kubelet, kube-proxy, CoreDNS)")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> list[str]:
        """Stop the node and undo its host changes; return what could not be undone."""
        left: list[str] = []
        try:
            if "kubelet" in self.daemons:
                self._drain()
            for name in ("kube-proxy", "kubelet"):
                daemon = self.daemons.pop(name, None)
                if daemon is not None:
                    _terminate(daemon.process)
            if "containerd" in self.daemons:
                self._remove_containers()
                _terminate(self.daemons.pop("containerd").process)
            if self.snapshot is not None:
                left = clean_host(self.snapshot)
                if left:
                    self.progress("left on the host after the node stopped:\n  "
                                  + "\n  ".join(left))
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
        return left

    def leftovers(self) -> list[str]:
        return leftovers(self.snapshot) if self.snapshot else []

    def _clean_previous_run(self) -> None:
        previous = HostSnapshot.load()
        if previous is None:
            return
        self.progress(f"cleaning up after a node that did not stop ({previous.workdir})")
        left = clean_host(previous)
        if left:
            raise RuntimeError("a previous node's host changes could not be undone:\n  "
                               + "\n  ".join(left))

    # ------------------------------------------------------------------- files
    def _write_files(self) -> None:
        pki = self.cluster.pki
        assert pki is not None
        certs = self.workdir / "pki"
        certs.mkdir(exist_ok=True)
        self.ports.update(kubelet=free_port(), kubelet_healthz=free_port(),
                          proxy_healthz=free_port(), proxy_metrics=free_port())
        kubelet_client = issue_certificate(pki.ca_cert, pki.ca_key, certs / "kubelet-client",
                                           common_name=f"system:node:{self.name}",
                                           organization="system:nodes", client=True)
        kubelet_serving = issue_certificate(pki.ca_cert, pki.ca_key, certs / "kubelet-serving",
                                            common_name=self.name, server=True,
                                            dns=[self.name, "localhost"],
                                            ips=[self.address, "127.0.0.1"])
        proxy_client = issue_certificate(pki.ca_cert, pki.ca_key, certs / "kube-proxy",
                                         common_name="system:kube-proxy", client=True)
        self._kubeconfig("kubelet.kubeconfig", *kubelet_client)
        self._kubeconfig("kube-proxy.kubeconfig", *proxy_client)

        (self.workdir / "net.d").mkdir(exist_ok=True)
        (self.workdir / "net.d" / "10-exo-gpu-node.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "exo-gpu-node",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": str(self.workdir / "cni-ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=2))

        root = self.workdir
        (root / "containerd.toml").write_text(f"""\
version = 2
root = "{containerd_root()}"
state = "{root}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Lowering a process's OOM score needs CAP_SYS_RESOURCE, which these machines withhold:
  # without this every sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{root}/net.d"
""")
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # Hybrid cgroups (v1 controllers): accepted only when said so since 1.35.
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "address": self.address, "port": self.ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.ports["kubelet_healthz"],
            "tlsCertFile": str(kubelet_serving[0]), "tlsPrivateKeyFile": str(kubelet_serving[1]),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki.ca_cert)}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [DNS_SERVICE_IP], "clusterDomain": CLUSTER_DOMAIN,
            "podLogsDir": str(root / "pod-logs"),
            "rotateCertificates": False, "serverTLSBootstrap": False,
            "serializeImagePulls": False, "maxPods": 110,
            # The machine's disk is shared: never evict or collect images for disk use here.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "registerNode": True, "syncFrequency": "10s",
            "fileCheckFrequency": "10s", "nodeStatusReportFrequency": "30s",
        }
        (root / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config, sort_keys=False))
        proxy_config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(root / "kube-proxy.kubeconfig")},
            "mode": "iptables", "hostnameOverride": self.name, "clusterCIDR": POD_SUBNET,
            "bindAddress": self.address,
            "healthzBindAddress": f"127.0.0.1:{self.ports['proxy_healthz']}",
            "metricsBindAddress": f"127.0.0.1:{self.ports['proxy_metrics']}",
            # Leave the kernel's conntrack table and route_localnet as they are.
            "iptables": {"localhostNodePorts": False},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }
        (root / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy_config, sort_keys=False))

    def _kubeconfig(self, name: str, cert: Path, key: Path) -> Path:
        assert self.cluster.pki is not None
        path = self.workdir / name
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "node",
            "clusters": [{"name": "local", "cluster": {
                "server": self.cluster.server,
                "certificate-authority": str(self.cluster.pki.ca_cert)}}],
            "users": [{"name": "node", "user": {"client-certificate": str(cert),
                                                "client-key": str(key)}}],
            "contexts": [{"name": "node", "context": {"cluster": "local", "user": "node"}}],
        }, sort_keys=False))
        path.chmod(0o600)
        return path

    # ------------------------------------------------------------------- daemons
    def _spawn(self, name: str, args: list[str]) -> _Daemon:
        daemon = _Daemon(name=name, args=args, log=self.workdir / f"{name}.log")
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        with daemon.log.open("ab") as log:
            daemon.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env,
                                              cwd=self.workdir, preexec_fn=_die_with_parent)
        self.daemons[name] = daemon
        return daemon

    def _wait(self, daemon: _Daemon, condition: Any, what: str, timeout: float) -> None:
        def ready() -> bool:
            assert daemon.process is not None
            if daemon.process.poll() is not None:
                tail = daemon.log.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"{daemon.name} exited with {daemon.process.returncode}:\n"
                                   f"{tail}")
            return bool(condition())

        try:
            wait_for(ready, timeout=timeout, what=what, interval=0.2)
        except TimeoutError as error:
            tail = daemon.log.read_text(errors="replace")[-4000:]
            raise TimeoutError(f"{error}\n--- {daemon.log} ---\n{tail}") from None

    def ctr(self, *args: str, check: bool = True, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io",
                               *args], check=check, capture_output=True, text=True,
                              timeout=timeout)

    def _start_containerd(self) -> None:
        daemon = self._spawn("containerd", ["containerd", "--config",
                                            str(self.workdir / "containerd.toml")])
        self._wait(daemon, lambda: self.ctr("version", check=False, timeout=5).returncode == 0,
                   "containerd to serve its socket", 60)

    def images(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").stdout.split())

    def load_images(self) -> None:
        """Import what the store lacks; drop product images no longer asked for."""
        present = self.images()
        for reference, archive in self.archives.items():
            if reference not in present:
                self._import(reference, archive)
        for reference in self.podman_images:
            if reference not in present:
                archive = save_archive(reference, self.workdir / "image.tar")
                self._import(reference, archive)
                archive.unlink()
        stale = [name for name in present if name.startswith(f"{PRODUCT_REPOSITORY}:")
                 and name not in self.podman_images]
        if stale:
            self.ctr("images", "remove", *stale)

    def _import(self, reference: str, archive: Path) -> None:
        began = time.monotonic()
        self.ctr("images", "import", str(archive))
        self.progress(f"loaded {reference} into containerd in {time.monotonic() - began:.1f} s")

    def _start_kubelet(self) -> None:
        root = self.workdir
        daemon = self._spawn("kubelet", [
            str(self.binaries.kubelet), f"--config={root / 'kubelet.yaml'}",
            f"--kubeconfig={root / 'kubelet.kubeconfig'}", f"--root-dir={root / 'kubelet'}",
            f"--hostname-override={self.name}", f"--node-ip={self.address}", "--v=1"])
        self._wait(daemon, lambda: _http_ok(
            f"http://127.0.0.1:{self.ports['kubelet_healthz']}/healthz"),
            "the kubelet's /healthz", NODE_READY_TIMEOUT_S)
        self._wait(daemon, self._node_ready, f"node {self.name} to be Ready",
                   NODE_READY_TIMEOUT_S)

    def _node_ready(self) -> bool:
        result = self.cluster.kubectl(
            "get", "node", self.name, "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        return result.returncode == 0 and result.stdout.strip() == "True"

    def _start_kube_proxy(self) -> None:
        daemon = self._spawn("kube-proxy", [str(self.binaries.kube_proxy),
                                            f"--config={self.workdir / 'kube-proxy.yaml'}"])
        self._wait(daemon, lambda: _http_ok(
            f"http://127.0.0.1:{self.ports['proxy_healthz']}/livez"),
            "kube-proxy's /livez", 60)

    def _deploy_dns(self) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=coredns_manifest())
        self.cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                             "--timeout=120s", timeout=150)

    # ------------------------------------------------------------------- teardown
    def _drain(self) -> None:
        """Evict every pod and let the kubelet stop them (sandboxes, CNI, mounts).

        A NoExecute taint keeps the pods of Deployments and DaemonSets from coming back."""
        self.cluster.kubectl("taint", "node", self.name, f"{STOPPING_TAINT}=true:NoExecute",
                             "--overwrite", check=False)
        self.cluster.kubectl("delete", "pods", "--all", "--all-namespaces", "--wait=false",
                             f"--field-selector=spec.nodeName={self.name}", "--grace-period=1",
                             check=False)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not self._running_containers(), timeout=60,
                     what="the kubelet to stop every container", interval=0.5)

    def _running_containers(self) -> list[str]:
        result = self.ctr("tasks", "list", "--quiet", check=False, timeout=30)
        return result.stdout.split() if result.returncode == 0 else []

    def _remove_containers(self) -> None:
        for task in self._running_containers():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        for task in self._running_containers():
            self.ctr("tasks", "delete", "--force", task, check=False)
        containers = self.ctr("containers", "list", "--quiet", check=False).stdout.split()
        for container in containers:
            self.ctr("containers", "delete", container, check=False)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def coredns_manifest() -> str:
    """CoreDNS for ``cluster.local`` at 10.0.0.10 (non-root, on port 1053 behind port 53)."""
    labels = {"k8s-app": "kube-dns"}
    corefile = f""".:1053 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""
    documents: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods",
                                                     "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns",
                       "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "coredns", "namespace": "kube-system"},
         "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "coredns", "dnsPolicy": "Default",
                      "priorityClassName": "system-cluster-critical",
                      "tolerations": [{"key": "node.kubernetes.io/not-ready",
                                       "operator": "Exists"}],
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                          "runAsGroup": 65532,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [{
                          "name": "coredns", "image": COREDNS_IMAGE,
                          "imagePullPolicy": "IfNotPresent",
                          "args": ["-conf", "/etc/coredns/Corefile"],
                          "ports": [{"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 1053,
                                     "protocol": "TCP"}],
                          "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                             "periodSeconds": 2},
                          "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                            "periodSeconds": 10},
                          "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                        "limits": {"memory": "128Mi"}},
                          "securityContext": {"allowPrivilegeEscalation": False,
                                              "readOnlyRootFilesystem": True,
                                              "capabilities": {"drop": ["ALL"]}},
                          "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns",
                                            "readOnly": True}]}],
                      "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
         "spec": {"selector": labels, "clusterIP": DNS_SERVICE_IP,
                  "ports": [{"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "targetPort": 1053,
                             "protocol": "TCP"}]}},
    ]
    return yaml.safe_dump_all(documents, sort_keys=False)


@dataclass
class NodeCluster(LocalCluster):
    """The local control plane plus one real node (see the module docstring).

    ``images`` are references in podman's store (the product image, from
    ``images.build_image``) loaded into the node's containerd besides its own images.
    """

    images: Sequence[str] = ()
    node_name: str = NODE_NAME
    node: RealNode | None = None
    node_binaries: NodeBinaries | None = None
    left_on_host: list[str] = field(default_factory=list)  # what the last stop could not undo

    def start(self) -> NodeCluster:
        ensure_packages(NODE_PACKAGES, self.progress)
        if os.geteuid() != 0:
            raise PermissionError("a real node needs root (kubelet, containerd, iptables)")
        if self.binaries is None:
            self.binaries = ensure_binaries(self.progress)
        self.node_binaries = self.node_binaries or ensure_node_binaries(progress=self.progress)
        node_archives = node_image_archives(self.node_binaries, self.binaries.kube_scheduler,
                                            self.progress)
        self.address = node_address()
        self.disabled_admission_plugins = ()
        self.endpoint_reconciler = "lease"
        self.controllers = "*"  # the node lifecycle controller lifts the not-ready taint
        pki = self.workdir.resolve() / "pki"
        self.apiserver_extra_args = (
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
        )
        super().start()
        self.node = RealNode(cluster=self, workdir=self.workdir / "node",
                             binaries=self.node_binaries,
                             archives=node_archives, podman_images=self.images,
                             name=self.node_name,
                             progress=self.progress)
        try:
            self.node.start()
        except BaseException:
            self.node = None
            super().stop()
            raise
        return self

    def _start_apiserver(self) -> None:
        assert self.pki is not None
        issue_certificate(self.pki.ca_cert, self.pki.ca_key,
                          self.pki.ca_cert.parent / "apiserver-kubelet-client",
                          common_name="kube-apiserver-kubelet-client",
                          organization="system:masters", client=True)
        super()._start_apiserver()

    def stop(self) -> None:
        node, self.node = self.node, None
        try:
            if node is not None:
                self.left_on_host = node.stop()
        finally:
            super().stop()


def main() -> None:  # pragma: no cover - by hand: python -m exo.gpu.devcluster.realnode DIR
    """Start a cluster with a real node and the current image loaded, until Ctrl-C."""
    from .images import build_image

    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else ".node-cluster")
    image = build_image()
    cluster = NodeCluster(workdir=workdir, images=[image.reference])
    cluster.start()
    print(f"export KUBECONFIG={cluster.kubeconfig}; image {image.reference}; Ctrl-C stops")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        print("left on the host:", cluster.left_on_host or "nothing")


if __name__ == "__main__":  # pragma: no cover
    main()

