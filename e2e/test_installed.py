"""The product as users install it: the image built here, Helm, a real kubelet running it.

One module-scoped cluster with a real node (``exo.gpu.devcluster.realnode``): containerd, runc,
kubelet and kube-proxy v1.37.2, the CNI bridge and CoreDNS, against the local control plane. The
image from ``make image`` is loaded into the node's containerd; the chart is installed with
``helm install`` and the values in ``e2e/installed/values-local-node.yaml`` (the exporter's
simulated backend stands in for the GPUs, the only mocked part).

The tests run in file order, as a user would go: install (on a node not yet labelled as a GPU
node), label the node, check every component Running and Ready with its own account, ``helm
test``, the devices the exporter pod writes, every numbered example of manifests/examples with
the output its README documents, a GPUWorkload whose pods run a command from the image on their
planned devices, ``helm upgrade``, the bad inputs the issue lists, and ``helm uninstall``, which
must leave no object and no process behind. The module's teardown stops the node and fails if any
host change (iptables chains, cni0, namespaces, cgroups, mounts, processes, kernel settings) is
left.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exo.gpu.devcluster import ensure_helm, wait_for
from exo.gpu.devcluster.images import BuiltImage
from exo.gpu.devcluster.realnode import NODE_NAME, NodeCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "exo-gpu"
VALUES = ROOT / "e2e" / "installed" / "values-local-node.yaml"
EXAMPLES = ROOT / "manifests" / "examples"
RELEASE, NAMESPACE = "exo-gpu", "exo-gpu-system"
GPU_LABEL = "gpu.exo.dev/gpu-node=true"
COMPONENTS = ("exporter", "controller", "scheduler")


@dataclass
class Installed:
    cluster: NodeCluster
    image: BuiltImage
    notes: str = ""
    exporters_before_label: int = -1
    events: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = self.cluster.kubectl(*args, check=False, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}:\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str, check: bool = True, timeout: float = 600
             ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(ensure_helm()), "--kubeconfig", self.cluster.kubeconfig,
                                 *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
        return result

    @property
    def tag(self) -> str:
        return self.image.reference.rsplit(":", 1)[1]

    def install_args(self, release: str, namespace: str, *extra: str) -> list[str]:
        return ["install", release, str(CHART), "--namespace", namespace, "--create-namespace",
                "-f", str(VALUES), "--set", f"image.tag={self.tag}", *extra]


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory, product_image: BuiltImage
                 ) -> Iterator[NodeCluster]:
    cluster = NodeCluster(workdir=tmp_path_factory.mktemp("node-cluster"),
                          images=[product_image.reference])
    cluster.start()
    yield cluster
    cluster.stop()
    assert not cluster.left_on_host, "the node left host changes behind:\n" + "\n".join(
        cluster.left_on_host)


@pytest.fixture(scope="module")
def installed(node_cluster: NodeCluster, product_image: BuiltImage) -> Iterator[Installed]:
    """``helm install --wait`` on a node without the GPU label, then the label, as in the docs."""
    it = Installed(cluster=node_cluster, image=product_image)
    result = it.helm(*it.install_args(RELEASE, NAMESPACE, "--wait", "--timeout", "5m"))
    it.notes = result.stdout
    it.exporters_before_label = it.json(
        "-n", NAMESPACE, "get", "daemonset", f"{RELEASE}-exporter")["status"][
        "desiredNumberScheduled"]
    it.kubectl("label", "node", NODE_NAME, GPU_LABEL)
    it.kubectl("-n", NAMESPACE, "rollout", "status", f"daemonset/{RELEASE}-exporter",
               "--timeout=180s", timeout=200)
    yield it
    it.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)


# ------------------------------------------------------------------------------- helpers
def documented(section: int) -> list[tuple[str, list[str]]]:
    """The ``$ command`` / output pairs of section ``section`` of manifests/examples/README."""
    text = (EXAMPLES / "README.md").read_text()
    body = re.split(r"^## ", text, flags=re.M)
    (part,) = [p for p in body if p.startswith(f"{section}. ")]
    pairs: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", part, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                pairs.append((line[2:], []))
            elif pairs and not _complete(pairs[-1][0]):  # a command spanning lines
                pairs[-1] = (pairs[-1][0] + "\n" + line, [])
            elif pairs:
                pairs[-1][1].append(line)
    return pairs


def _complete(command: str) -> bool:
    try:
        shlex.split(command)
    except ValueError:  # an open quote
        return False
    return True


def columns(line: str) -> list[str]:
    return re.split(r"\s{2,}|\t", line.strip())


def run_documented(it: Installed, command: str) -> list[str]:
    """Run a documented kubectl command (from the repository root) and return its lines."""
    words = shlex.split(command)
    assert words[0] == "kubectl", command
    pipe = None
    if "|" in words:
        pipe = words[words.index("|") + 1:]
        words = words[:words.index("|")]
    result = subprocess.run([str(it.cluster.binaries.kubectl) if it.cluster.binaries else
                             "kubectl", "--kubeconfig", it.cluster.kubeconfig, *words[1:]],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    lines = result.stdout.splitlines()
    if pipe == ["tail", "-4"]:
        lines = lines[-4:]
    return lines


def _rows(lines: list[str], skip: tuple[int, ...]) -> list[tuple[str, ...]]:
    return [tuple(c for i, c in enumerate(columns(line)) if i not in skip) for line in lines]


# Messages whose device order varies between kube-scheduler's retries.
_TOO_SMALL = re.compile(r"exo-gpu-node-\w+-\d: TooSmall \([\d.]+ GiB in all")


def check_documented(it: Installed, command: str, expected: list[str]) -> None:
    """Run a documented read command and compare its output with the documented one.

    Compared: the header, the number of rows and every column, except what varies from run to
    run by nature: ages, pod-name hashes (rows compared as a set), event repeats and order."""
    actual = run_documented(it, command)
    if "-o jsonpath='{.metadata.annotations}'" in command:
        shown = json.loads(actual[0])
        documented_part = expected[0].replace(",...}", "}")
        assert {k: shown[k] for k in json.loads(documented_part)} == json.loads(documented_part)
        return
    if command.endswith("| tail -4"):  # describe's Events; the last column is the message
        assert [columns(line) for line in actual[:3]] == [columns(line) for line in expected[:3]]
        assert _rows(actual[3:], (2,)) == _rows(expected[3:], (2,))
        return
    header = bool(expected) and expected[0] == expected[0].upper()
    if header:
        assert columns(actual[0]) == columns(expected[0]), (actual[0], expected[0])
    names = columns(expected[0]) if header else []
    skip = tuple(i for i, name in enumerate(names) if name in ("AGE", "LAST SEEN"))
    got, want = actual[int(header):], expected[int(header):]
    if " events " in f" {command} ":
        # kube-scheduler retries: the same event may repeat, in any order.
        masked = [_TOO_SMALL.sub("DEVICE: TooSmall (N GiB in all", line) for line in got]
        assert set(_rows(masked, skip)) == {
            row for row in _rows([_TOO_SMALL.sub("DEVICE: TooSmall (N GiB in all", line)
                                  for line in want], skip)}, (got, want)
        return
    if "gpu.exo.dev/workload=" in command:  # pod names carry a random hash
        skip += (0,)
        assert sorted(_rows(got, skip)) == sorted(_rows(want, skip)), (got, want)
        return
    assert _rows(got, skip) == _rows(want, skip), (got, want)


def check_section(it: Installed, section: int) -> None:
    """Every documented read command of the section after its ``kubectl apply``."""
    checked = 0
    for command, expected in documented(section):
        if command.startswith(("kubectl get", "kubectl describe", "kubectl logs")):
            check_documented(it, command, expected)
            checked += 1
    assert checked, f"section {section} documents no output"


def wait_phase(it: Installed, kind: str, name: str, phases: set[str], timeout: float = 120,
               namespace: str = "default") -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(it.json("-n", namespace, "get", kind, name))
        return seen.get("status", {}).get("phase") in phases

    wait_for(reached, timeout=timeout, what=f"{kind} {name} to reach {sorted(phases)}",
             interval=0.5)
    return seen


def host_processes(pattern: str) -> list[tuple[int, str]]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if re.search(pattern, command):
            found.append((int(proc.name), command))
    return found


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def root_is_read_only(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return "ro" in fields[5].split(",")
    return False


COMPONENT_PROCESSES = {
    "exporter": r"/opt/exo-gpu/bin/exo-gpu exporter ",
    "controller": r"/opt/exo-gpu/bin/exo-gpu controller ",
    "scheduler": r"^kube-scheduler --config=/etc/exo-gpu-scheduler/",
}


# ------------------------------------------------------------------------------- install
def test_install_on_a_node_without_the_gpu_label_says_so(installed: Installed) -> None:
    """Bad input: no node carries the exporter's label. The install succeeds (the label may
    come later), NOTES says why no device will appear and how to fix it, and no exporter runs
    until the node is labelled."""
    notes = installed.notes.split("NOTES:", 1)[1]
    assert "WARNING: no node matches exporter.nodeSelector" in notes
    assert f"kubectl label node {NODE_NAME} {GPU_LABEL}" in notes
    assert installed.exporters_before_label == 0


def test_every_component_is_running_and_ready(installed: Installed) -> None:
    exporter = installed.json("-n", NAMESPACE, "get", "daemonset", f"{RELEASE}-exporter")
    assert exporter["status"]["desiredNumberScheduled"] == 1
    assert exporter["status"]["numberReady"] == 1
    for name in ("controller", "scheduler"):
        deployment = installed.json("-n", NAMESPACE, "get", "deployment", f"{RELEASE}-{name}")
        assert deployment["status"].get("readyReplicas") == 1, name
    pods = installed.json("-n", NAMESPACE, "get", "pods")["items"]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert set(COMPONENTS) <= components
    for pod in pods:
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
        assert pod["spec"]["nodeName"] == NODE_NAME


def test_components_run_as_non_root_on_a_read_only_root(installed: Installed) -> None:
    """Checked on the host, in the processes the kubelet started from the image."""
    for component, pattern in COMPONENT_PROCESSES.items():
        processes = host_processes(pattern)
        assert len(processes) == 1, (component, processes)
        pid, _command = processes[0]
        assert uid_of(pid) == 65532, component
        assert root_is_read_only(pid), component


def test_helm_test_passes(installed: Installed) -> None:
    result = installed.helm("test", RELEASE, "-n", NAMESPACE, "--timeout", "3m")
    assert re.search(r"TEST SUITE:\s+exo-gpu-test-extender", result.stdout)
    assert re.search(r"Phase:\s+Succeeded", result.stdout), result.stdout


def test_gpudevices_are_written_by_the_exporter_pod(installed: Installed) -> None:
    fleet = yaml.safe_load(VALUES.read_text())["exporter"]["fleet"]["nodes"]
    (node,) = fleet
    wanted = len(node["devices"])

    def listed() -> list[str]:
        out = installed.kubectl("get", "gpudevices").stdout.splitlines()
        return [line for line in out[1:] if line.split()[1] == NODE_NAME]

    wait_for(lambda: len(listed()) == wanted, timeout=60, what="every device to be listed")
    devices = installed.json("get", "gpudevices", "--show-managed-fields")["items"]
    ours = [d for d in devices if d["spec"]["node"] == NODE_NAME]
    assert len(ours) == wanted
    for device in ours:
        managers = {e["manager"] for e in device["metadata"]["managedFields"]}
        assert "exo-gpu-exporter" in managers, device["metadata"]["name"]
        assert {c["type"]: c["status"] for c in device["status"]["conditions"]}["Ready"] == "True"
    # The only exporter is the pod's: no exporter process outside the node's pod cgroups.
    (exporter,) = host_processes(COMPONENT_PROCESSES["exporter"])
    assert "kubepods" in Path(f"/proc/{exporter[0]}/cgroup").read_text()


# ------------------------------------------------------------------------------- examples
def apply_example(it: Installed, section: int, name: str) -> None:
    command = f"kubectl apply -f manifests/examples/{name}"
    assert command in [c for c, _ in documented(section)]
    it.kubectl("apply", "-f", str(ROOT / command.split()[-1]))


def test_example_0_the_devices(installed: Installed) -> None:
    check_section(installed, 0)


def test_example_1_a_gpu_pod_is_bound_by_the_extender(installed: Installed) -> None:
    apply_example(installed, 1, "01-gpu-pod.yaml")
    pod = wait_phase(installed, "pod", "gpu-smoke", {"Running", "Succeeded"})
    annotations = pod["metadata"]["annotations"]
    device = installed.json("get", "gpudevice", annotations["gpu.exo.dev/device"])
    assert device["spec"]["vendor"] == "nvidia"
    assert annotations["gpu.exo.dev/device-uuid"] == device["spec"]["uuid"]
    assert pod["spec"]["nodeName"] == NODE_NAME
    wait_for(lambda: "Started" in installed.kubectl(
        "get", "events", "--field-selector", "involvedObject.name=gpu-smoke").stdout,
        timeout=30, what="the kubelet's Started event")
    check_section(installed, 1)
    installed.kubectl("delete", "pod", "gpu-smoke", "--grace-period=1")


def test_example_2_a_uniform_gpuworkload(installed: Installed) -> None:
    apply_example(installed, 2, "02-gpuworkload-uniform.yaml")
    wait_phase(installed, "gpuworkload", "batch-uniform", {"Placed"})
    wait_for(lambda: "Placed" in installed.kubectl("describe", "gpuworkload",
                                                    "batch-uniform").stdout,
             timeout=30, what="the Placed event")
    check_section(installed, 2)


def test_example_3_a_capacity_weighted_gpuworkload_with_a_cap(installed: Installed) -> None:
    apply_example(installed, 3, "03-gpuworkload-capacity.yaml")
    wait_phase(installed, "gpuworkload", "shards-capacity", {"Placed"})
    check_section(installed, 3)


def test_example_4_a_gpuworkload_that_runs_pods(installed: Installed) -> None:
    apply_example(installed, 4, "04-gpuworkload-template.yaml")
    wait_phase(installed, "gpuworkload", "pipeline", {"Running"})

    def all_running() -> bool:
        pods = installed.json("get", "pods", "-l", "gpu.exo.dev/workload=pipeline")["items"]
        return len(pods) == 7 and all(p["status"]["phase"] == "Running" for p in pods)

    wait_for(all_running, timeout=120, what="the pipeline's 7 pods to run")
    check_section(installed, 4)
    installed.kubectl("delete", "gpuworkload", "pipeline", "batch-uniform", "shards-capacity",
                      "--wait=false")


def test_example_5_a_device_registered_by_hand(installed: Installed) -> None:
    apply_example(installed, 5, "05-gpudevice-by-hand.yaml")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"status": {
        "lastHeartbeatTime": now,
        "metrics": {"timestamp": now, "memoryUsedBytes": 34359738368,
                    "computeUtilizationPercent": 12, "temperatureCelsius": 41,
                    "powerWatts": 60, "clockRateMHz": 1398},
        "display": {"memory": "32.0/192.0 GiB"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "ReportedByHand",
                        "message": "fed by a script", "lastTransitionTime": now}]}}
    installed.kubectl("patch", "gpudevice", "studio-1-apple-0", "--subresource=status",
                      "--type=merge", "-p", json.dumps(status))
    check_section(installed, 5)
    installed.kubectl("delete", "gpudevice", "studio-1-apple-0")


def test_example_6_a_pod_that_fits_nowhere(installed: Installed) -> None:
    apply_example(installed, 6, "06-gpu-pod-too-big.yaml")

    def refused() -> bool:
        events = installed.kubectl("get", "events", "--field-selector",
                                   "involvedObject.name=gpu-too-big").stdout
        return "FailedScheduling" in events

    wait_for(refused, timeout=60, what="the extender's refusal")
    check_section(installed, 6)
    installed.kubectl("delete", "pod", "gpu-too-big", "--wait=false")


# ------------------------------------------------------------------------------- real work
def test_gpuworkload_pods_run_the_image_on_their_planned_devices_and_succeed(
        installed: Installed) -> None:
    workload = {
        "apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUWorkload",
        "metadata": {"name": "image-run", "namespace": "default"},
        "spec": {"tasks": 6, "strategy": "uniform", "maxTasksPerDevice": 2,
                 "minMemoryBytes": "8Gi", "deviceSelector": {"matchLabels": {
                     "gpu.exo.dev/vendor": "nvidia"}},
                 "template": {"spec": {
                     "schedulerName": "exo-gpu-scheduler", "restartPolicy": "Never",
                     "containers": [{
                         "name": "task", "image": installed.image.reference,
                         "command": ["python", "-c",
                                     "import os; print(os.environ['EXO_GPU_DEVICE'], "
                                     "os.environ['EXO_GPU_TASKS'], "
                                     "os.environ['NVIDIA_VISIBLE_DEVICES'])"],
                         "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                       "limits": {"memory": "128Mi"}},
                         "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                             "readOnlyRootFilesystem": True,
                                             "allowPrivilegeEscalation": False}}]}}}}
    installed.kubectl("apply", "-f", "-", input=json.dumps(workload))
    done = wait_phase(installed, "gpuworkload", "image-run", {"Succeeded", "Failed"},
                      timeout=180)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    planned = {p["device"]: p for p in done["status"]["placements"]}
    pods = installed.json("get", "pods", "-l", "gpu.exo.dev/workload=image-run")["items"]
    assert len(pods) == len(planned)
    for pod in pods:
        annotations = pod["metadata"]["annotations"]
        assert pod["status"]["phase"] == "Succeeded"
        assert pod["spec"]["nodeName"] == NODE_NAME
        device = annotations["gpu.exo.dev/device"]
        assert device in planned
        log = installed.kubectl("logs", pod["metadata"]["name"]).stdout.split()
        # The annotation holds a run of task ids ("2-3"); the env lists them ("2,3").
        first, _, last = annotations["gpu.exo.dev/tasks"].partition("-")
        tasks = [str(t) for t in range(int(first), int(last or first) + 1)]
        assert log[0] == device and log[1].split(",") == tasks, (log, annotations)
        uuid = installed.json("get", "gpudevice", device)["spec"]["uuid"]
        assert log[2] == uuid
    installed.kubectl("delete", "gpuworkload", "image-run")


# ------------------------------------------------------------------------------- upgrade
def test_helm_upgrade_with_changed_values_rolls_out(installed: Installed) -> None:
    before = {p["metadata"]["uid"] for p in installed.json("-n", NAMESPACE, "get", "pods")[
        "items"]}
    installed.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values",
                   "--set", "exporter.pollInterval=3", "--set", "logLevel=debug",
                   "--wait", "--timeout", "5m")
    history = installed.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout
    assert [r["status"] for r in json.loads(history)][-1] == "deployed"
    for component in ("exporter", "controller"):
        (_pid, command) = host_processes(COMPONENT_PROCESSES[component])[0]
        assert "--log-level=debug" in command, command
    (_, exporter) = host_processes(COMPONENT_PROCESSES["exporter"])[0]
    assert "--poll-interval=3" in exporter
    after = installed.json("-n", NAMESPACE, "get", "pods")["items"]
    rolled = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in after
              if p["metadata"]["uid"] not in before}
    assert {"exporter", "controller"} <= rolled
    assert all(c["ready"] for p in after for c in p["status"]["containerStatuses"])


# ------------------------------------------------------------------------------- bad input
def _nothing_of(it: Installed, release: str, namespace: str) -> list[str]:
    """Every object still labelled with ``release``, and its Helm record."""
    left = it.kubectl("get", "all,configmaps,secrets,serviceaccounts,roles,rolebindings,leases,"
                      "jobs,networkpolicies",
                      "-n", namespace, "-l", f"app.kubernetes.io/instance={release}",
                      "-o", "name", check=False).stdout.split()
    left += it.kubectl("get", "clusterroles,clusterrolebindings,validatingadmissionpolicies,"
                       "validatingadmissionpolicybindings", "-l",
                       f"app.kubernetes.io/instance={release}", "-o", "name").stdout.split()
    records = it.helm("list", "-a", "-n", namespace, "-o", "json").stdout
    left += [f"release {r['name']}" for r in json.loads(records) if r["name"] == release]
    return left


def test_a_values_typo_is_refused_by_the_schema_and_installs_nothing(installed: Installed
                                                                       ) -> None:
    result = installed.helm(*installed.install_args("typo", "exo-gpu-typo",
                                                    "--set", "exporter.pollIntervall=5"),
                            check=False)
    assert result.returncode != 0
    assert "pollIntervall" in result.stderr and "exporter" in result.stderr, result.stderr
    assert "additional properties" in result.stderr.lower(), result.stderr
    assert _nothing_of(installed, "typo", "exo-gpu-typo") == []


def test_an_unknown_pull_policy_is_refused_by_the_schema(installed: Installed) -> None:
    result = installed.helm(*installed.install_args("policy", "exo-gpu-policy",
                                                    "--set", "image.pullPolicy=Sometimes"),
                            check=False)
    assert result.returncode != 0
    assert "/image/pullPolicy" in result.stderr, result.stderr
    assert "must be one of 'Always', 'IfNotPresent', 'Never'" in result.stderr, result.stderr
    assert _nothing_of(installed, "policy", "exo-gpu-policy") == []


@pytest.mark.parametrize(("case", "sets", "hooks"), [
    # The whole user path: the rollback's uninstall runs the cleanup Job, which cannot start
    # either, gives up, and is removed with the rest.
    ("missing-image", ("image.tag=0.0.0-missing",), True),
    # The image is only on the node: a policy that always pulls cannot start it. Without hooks
    # (nothing ran, so nothing to clean), as docs/install.md suggests.
    ("always-pull", ("image.pullPolicy=Always",), False),
], ids=["missing-image", "wrong-pull-policy"])
def test_an_image_the_node_cannot_run_fails_the_install_and_leaves_nothing(
        installed: Installed, case: str, sets: tuple[str, ...], hooks: bool) -> None:
    """``helm install --wait --atomic``: the pods' Events say why, and the atomic rollback
    removes everything of the release. The exporter and the scheduler are left out: the
    exporter would share the node's devices with the installed release; without the
    scheduler, the chart asks who may reach the extender, so its NetworkPolicies are off."""
    namespace = f"exo-gpu-{case}"
    args = installed.install_args(case, namespace, "--wait", "--atomic", "--timeout", "30s",
                                  "--set", "exporter.enabled=false",
                                  "--set", "scheduler.enabled=false",
                                  "--set", "networkPolicy.enabled=false")
    if not hooks:
        args.append("--no-hooks")
    for item in sets:
        args += ["--set", item]
    result = installed.helm(*args, check=False, timeout=300)
    assert result.returncode != 0
    assert "INSTALLATION FAILED" in result.stderr, result.stderr
    # It failed on the node, not while rendering: the pods were created and could not start.
    assert "execution error" not in result.stderr, result.stderr
    events = installed.kubectl("-n", namespace, "get", "events", "-o",
                               "custom-columns=REASON:.reason,MESSAGE:.message").stdout
    image = f"localhost/exo-gpu:{'0.0.0-missing' if case == 'missing-image' else installed.tag}"
    assert f'Failed to pull image "{image}"' in events, events
    # The objects are deleted; their pods end through garbage collection just after.
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not _nothing_of(installed, case, namespace), timeout=60,
                 what="the release's objects to go")
    assert _nothing_of(installed, case, namespace) == []
    installed.kubectl("delete", "namespace", namespace, "--wait=false")


# ------------------------------------------------------------------------------- uninstall
def test_helm_uninstall_leaves_no_object_and_no_process(installed: Installed) -> None:
    installed.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "3m")

    def pods_gone() -> bool:
        return not installed.json("-n", NAMESPACE, "get", "pods")["items"]

    wait_for(pods_gone, timeout=90, what="the release's pods to end")
    assert _nothing_of(installed, RELEASE, NAMESPACE) == []
    leases = installed.json("-n", NAMESPACE, "get", "leases")["items"]
    assert leases == [], [lease["metadata"]["name"] for lease in leases]
    devices = installed.json("get", "gpudevices")["items"]
    assert devices == [], [d["metadata"]["name"] for d in devices]
    objects = installed.kubectl("get", "all,serviceaccounts,configmaps,secrets,roles,rolebindings,"
                                "networkpolicies", "-n", NAMESPACE, "-o", "name").stdout.split()
    assert sorted(objects) == ["configmap/kube-root-ca.crt", "serviceaccount/default"]
    for component, pattern in COMPONENT_PROCESSES.items():
        assert host_processes(pattern) == [], component
    # Only CoreDNS still runs on the node: its sandbox and its container.
    node = installed.cluster.node
    assert node is not None
    assert len(node.ctr("tasks", "list", "--quiet").stdout.split()) == 2
