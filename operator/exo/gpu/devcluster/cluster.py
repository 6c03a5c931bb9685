"""A real Kubernetes control plane on loopback, started from binaries (as envtest does).

Tests and the demo talk to the same programs users run: etcd, kube-apiserver (its own CA, an
admin client certificate in ``system:masters``, RBAC on), kube-controller-manager (garbage
collection, namespaces, service-account tokens; node lifecycle off because fake nodes have no
kubelet) and kube-scheduler (optionally configured with scheduler extenders). A small pod runner
plays the kubelet's part that scheduling tests need: bound pods become Running, and pods being
deleted on a fake node are finalised.

Every child is started in its own process group and, when the cluster is not detached, with a
parent-death signal, so neither a failing test nor a killed test runner leaves orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .binaries import Binaries, Progress, _stderr_progress, ensure_binaries
from .pki import ExtenderPki, Pki, make_extender_pki, make_pki

STATE_FILE = "cluster.json"
# How long each component may take to report healthy. kube-apiserver on a loaded 2-core machine
# takes 5-15 s to install its default objects; a minute leaves room for a concurrent build.
READY_TIMEOUT_S = 90.0

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str,
             interval: float = 0.1) -> None:
    """Poll ``condition`` until it is true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as error:  # the condition's own failure is the reason to keep polling
            last_error = error
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


#: The name of this cluster's kube-scheduler (its one profile): an extender serving it binds the
#: pods of this scheduler (``--scheduler-name``), as one extending a user's own kube-scheduler does.
SCHEDULER_NAME = "default-scheduler"


def extender_entry(url: str, tls: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``extenders:`` entry of manifests/scheduler-config.yaml, pointed at ``url``.

    ``tls`` is the entry's ``tlsConfig`` (:func:`scheduler_tls_config`: the CA that signed the
    extender's certificate, kube-scheduler's client certificate and key); None only for an
    extender started with ``--plain-http``. Tests and the demo configure kube-scheduler exactly
    as users do (a test compares the two).
    """
    entry: dict[str, Any] = {
        "urlPrefix": url, "filterVerb": "filter", "prioritizeVerb": "prioritize",
        "preemptVerb": "preempt", "bindVerb": "bind", "weight": 1, "nodeCacheCapable": True,
        "managedResources": [{"name": "gpu.exo.dev/gpu", "ignoredByScheduler": True}],
        "httpTimeout": "5s", "ignorable": False}
    if tls is not None:
        entry["enableHTTPS"] = True
        entry["tlsConfig"] = dict(tls)
    return entry


def scheduler_tls_config(pki: ExtenderPki) -> dict[str, str]:
    """kube-scheduler's ``tlsConfig`` for an extender served with ``pki``'s certificates."""
    return {"caFile": str(pki.ca_cert), "certFile": str(pki.client_cert),
            "keyFile": str(pki.client_key)}


@dataclass
class Component:
    name: str
    args: list[str]
    log: Path
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


@dataclass
class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + pod runner.

    ``extenders`` is the ``extenders:`` list of the KubeSchedulerConfiguration (camelCase keys, as
    in ../notes/extender-api.md); ``restart_scheduler`` swaps it on a running cluster.

    The defaults suit fake nodes: the API server on loopback, no Service endpoints for itself,
    and the admission plugins that only real nodes need off. A cluster with a real node
    (``realnode.NodeCluster``) serves on the node's address with those plugins on.
    """

    workdir: Path
    extenders: Sequence[Mapping[str, Any]] = ()
    detach: bool = False
    progress: Progress = _stderr_progress
    binaries: Binaries | None = None
    address: str = "127.0.0.1"
    disabled_admission_plugins: Sequence[str] = ("ServiceAccount", "TaintNodesByCondition")
    endpoint_reconciler: str = "none"
    controllers: str = "*,-node-lifecycle-controller"  # fake nodes send no heartbeats
    apiserver_extra_args: Sequence[str] = ()
    components: dict[str, Component] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    pki: Pki | None = None
    started_in_s: float | None = None

    # ----------------------------------------------------------------- addresses
    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> str:
        return str(self.workdir / "kubeconfig")

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> LocalCluster:
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.binaries is None:
            self.binaries = ensure_binaries(self.progress)
        began = time.monotonic()  # the start itself, not a first build
        self.progress(f"starting the local control plane in {self.workdir}")
        self.pki = make_pki(self.workdir / "pki", extra_ips=[self.address])
        for name in ("etcd_client", "etcd_peer", "apiserver", "scheduler", "controller_manager"):
            self.ports[name] = free_port()
        self._write_kubeconfig()
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
            self._start_pod_runner()
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began
        self.progress(f"control plane ready in {self.started_in_s:.1f} s; "
                      f"KUBECONFIG={self.kubeconfig}")
        return self

    def stop(self) -> None:
        """Stop every component (reverse start order); safe to call twice."""
        for component in reversed(list(self.components.values())):
            _terminate(component.process)
        self.components.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pids(self) -> dict[str, int]:
        return {name: c.pid for name, c in self.components.items() if c.pid is not None}

    # ----------------------------------------------------------------- clients
    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        return client.ApiClient(configuration)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        assert self.binaries is not None
        return subprocess.run([str(self.binaries.kubectl), "--kubeconfig", self.kubeconfig,
                               *args], check=check, capture_output=True, text=True,
                              input=input, timeout=timeout)

    def extender_pki(self) -> ExtenderPki:
        """The extender's CA and certificates for this cluster (made on first use): serve the
        extender with ``server_*`` and ``ca_cert``, configure kube-scheduler with
        :func:`scheduler_tls_config`."""
        folder = self.workdir / "pki" / "extender"
        pki = ExtenderPki.in_folder(folder)
        return pki if pki.client_key.exists() else make_extender_pki(folder)

    def restart_scheduler(self, extenders: Sequence[Mapping[str, Any]] = ()) -> None:
        """Restart kube-scheduler with another ``extenders`` list."""
        self.extenders = list(extenders)
        _terminate(self.components.pop("kube-scheduler").process)
        self._start_scheduler()
        self._write_state()

    # ----------------------------------------------------------------- components
    def _spawn(self, component: Component) -> None:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        with component.log.open("ab") as log:
            component.process = subprocess.Popen(
                component.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.workdir,
                preexec_fn=None if self.detach else _die_with_parent,
                start_new_session=self.detach,
            )
        self.components[component.name] = component
        if component.health_url:
            self._wait_healthy(component)

    def _wait_healthy(self, component: Component) -> None:
        assert component.health_url is not None and component.process is not None
        process = component.process

        def healthy() -> bool:
            if process.poll() is not None:
                tail = component.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{component.name} exited with {process.returncode}:\n{tail}")
            return self._get(component.health_url or "") == 200

        try:
            wait_for(healthy, timeout=READY_TIMEOUT_S, what=f"{component.name} to be healthy",
                     interval=0.2)
        except TimeoutError as error:
            tail = component.log.read_text(errors="replace")[-3000:]
            raise TimeoutError(f"{error}\n--- {component.log} ---\n{tail}") from None

    def _get(self, url: str) -> int:
        assert self.pki is not None
        context = ssl.create_default_context()
        if url.startswith(self.server):
            context.load_verify_locations(str(self.pki.ca_cert))
            context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        else:  # scheduler and controller-manager serve self-signed certificates on /healthz
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def _start_etcd(self) -> None:
        assert self.binaries is not None
        client = f"http://127.0.0.1:{self.ports['etcd_client']}"
        self._spawn(Component(
            name="etcd",
            args=[str(self.binaries.etcd), "--data-dir", str(self.workdir / "etcd"),
                  "--listen-client-urls", client, "--advertise-client-urls", client,
                  "--listen-peer-urls", f"http://127.0.0.1:{self.ports['etcd_peer']}",
                  "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 1024**3)],
            log=self.workdir / "etcd.log", health_url=f"{client}/health"))

    def _start_apiserver(self) -> None:
        assert self.binaries is not None and self.pki is not None
        port = self.ports["apiserver"]
        self._spawn(Component(
            name="kube-apiserver",
            args=[str(self.binaries.kube_apiserver),
                  f"--etcd-servers=http://127.0.0.1:{self.ports['etcd_client']}",
                  f"--bind-address={self.address}", f"--advertise-address={self.address}",
                  f"--secure-port={port}",
                  f"--tls-cert-file={self.pki.server_cert}",
                  f"--tls-private-key-file={self.pki.server_key}",
                  f"--client-ca-file={self.pki.ca_cert}",
                  f"--service-account-issuer=https://{self.address}:{port}/",
                  f"--service-account-key-file={self.pki.sa_public}",
                  f"--service-account-signing-key-file={self.pki.sa_private}",
                  "--service-cluster-ip-range=10.0.0.0/24",
                  "--authorization-mode=Node,RBAC", "--allow-privileged=true",
                  *([f"--disable-admission-plugins={','.join(self.disabled_admission_plugins)}"]
                    if self.disabled_admission_plugins else []),
                  "--profiling=false", "--enable-priority-and-fairness=false",
                  f"--endpoint-reconciler-type={self.endpoint_reconciler}",
                  *self.apiserver_extra_args],
            log=self.workdir / "kube-apiserver.log", health_url=f"{self.server}/readyz"))

    def _start_controller_manager(self) -> None:
        assert self.binaries is not None and self.pki is not None
        self._spawn(Component(
            name="kube-controller-manager",
            args=[str(self.binaries.kube_controller_manager),
                  f"--kubeconfig={self.kubeconfig}",
                  f"--authentication-kubeconfig={self.kubeconfig}",
                  f"--authorization-kubeconfig={self.kubeconfig}",
                  "--leader-elect=false", "--bind-address=127.0.0.1",
                  f"--secure-port={self.ports['controller_manager']}",
                  f"--controllers={self.controllers}",
                  f"--service-account-private-key-file={self.pki.sa_private}",
                  f"--root-ca-file={self.pki.ca_cert}", "--profiling=false"],
            log=self.workdir / "kube-controller-manager.log",
            health_url=f"https://127.0.0.1:{self.ports['controller_manager']}/healthz"))

    def _start_scheduler(self) -> None:
        assert self.binaries is not None
        config_path = self.workdir / "kube-scheduler.yaml"
        config_path.write_text(yaml.safe_dump(self.scheduler_config(), sort_keys=False))
        self._spawn(Component(
            name="kube-scheduler",
            args=[str(self.binaries.kube_scheduler), f"--config={config_path}",
                  f"--authentication-kubeconfig={self.kubeconfig}",
                  f"--authorization-kubeconfig={self.kubeconfig}",
                  "--bind-address=127.0.0.1", f"--secure-port={self.ports['scheduler']}"],
            log=self.workdir / "kube-scheduler.log",
            health_url=f"https://127.0.0.1:{self.ports['scheduler']}/healthz"))

    def scheduler_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": self.kubeconfig, "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
        }
        if self.extenders:
            config["extenders"] = [dict(extender) for extender in self.extenders]
        return config

    def _start_pod_runner(self) -> None:
        self._spawn(Component(
            name="pod-runner",
            args=[sys.executable, "-m", "exo.gpu.devcluster.podrunner",
                  "--kubeconfig", self.kubeconfig],
            log=self.workdir / "pod-runner.log"))

    # ----------------------------------------------------------------- files
    def _write_kubeconfig(self) -> None:
        assert self.pki is not None
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "exo-gpu-local",
            "clusters": [{"name": "exo-gpu-local", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": "exo-gpu-admin", "user": {
                "client-certificate": str(self.pki.admin_cert),
                "client-key": str(self.pki.admin_key)}}],
            "contexts": [{"name": "exo-gpu-local", "context": {
                "cluster": "exo-gpu-local", "user": "exo-gpu-admin"}}],
        }
        path = Path(self.kubeconfig)
        path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
        path.chmod(0o600)

    def _write_state(self) -> None:
        state = {"kubeconfig": self.kubeconfig, "server": self.server, "pids": self.pids(),
                 "ports": self.ports}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))


def _terminate(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def stop_detached(workdir: Path, grace: float = 10.0) -> list[int]:
    """Stop a cluster that ``exo-gpu cluster up`` left running; returns the pids it stopped."""
    state_path = workdir / STATE_FILE
    if not state_path.is_file():
        return []
    pids = [int(pid) for pid in json.loads(state_path.read_text())["pids"].values()]
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    state_path.unlink()
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def apply_crds(cluster: LocalCluster, folder: Path) -> list[str]:
    """Apply every CRD YAML of ``folder`` and wait until each is Established."""
    files = sorted(folder.glob("*.yaml"))
    if not files:
        return []
    cluster.kubectl("apply", "--server-side", "--force-conflicts",
                    *[arg for f in files for arg in ("-f", str(f))])
    names = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    for name in names:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", name)
    return names


@contextlib.contextmanager
def running_cluster(workdir: Path, **options: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir=workdir, **options)
    with cluster:
        yield cluster
