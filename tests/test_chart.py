"""The Helm chart, rendered without a cluster: lint, schema, security, drift of its copies.

The chart is the install contract for platform engineers, so these tests pin what a render
must promise: every values key is checked by the schema (a typo fails), every container runs
non-root on a read-only root filesystem with no capabilities, each component's command line is
one the CLI accepts, the CRDs and ``manifests/install.yaml`` are exact copies of their sources,
and the second scheduler's configuration says what ``manifests/scheduler-config.yaml`` says.

Regenerate the copies after a chart or CRD change with
``.venv/bin/python tests/test_chart.py --write``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "exo-gpu"
INSTALL_YAML = ROOT / "manifests" / "install.yaml"
SCHEDULER_CONFIG = ROOT / "manifests" / "scheduler-config.yaml"
RELEASE = "exo-gpu"
NAMESPACE = "exo-gpu-system"
KUBE_VERSION = "1.37.2"
CERT_MANAGER = "cert-manager.io/v1"
INSTALL_HEADER = """\
# exo-gpu install manifest: the Helm chart charts/exo-gpu rendered with its default values
# (release "exo-gpu", namespace "exo-gpu-system", CRDs included, chart tests left out), for a
# cluster with cert-manager: cert-manager issues the certificates of the mutual TLS between
# kube-scheduler and the extender. Without cert-manager, install with Helm (which generates them).
# Do not edit: regenerate with `.venv/bin/python tests/test_chart.py --write`
# (tests/test_chart.py fails when this file and the chart disagree).
# Apply with: kubectl apply --server-side -f manifests/install.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: exo-gpu-system
  labels:
    app.kubernetes.io/part-of: exo-gpu
    # Every exo-gpu pod meets the restricted Pod Security Standard with the default values.
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
"""


# ------------------------------------------------------------------------------- helpers
@cache
def helm_binary() -> str:
    from exo.gpu.devcluster import ensure_helm

    return str(ensure_helm())


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template_text(*sets: str, namespace: str = NAMESPACE, release: str = RELEASE,
                  extra: tuple[str, ...] = (), check: bool = True
                  ) -> subprocess.CompletedProcess[str]:
    args = ["template", release, str(CHART), "--namespace", namespace,
            "--kube-version", KUBE_VERSION, *extra]
    for item in sets:
        args += ["--set-json" if item.startswith("json:") else "--set",
                 item.removeprefix("json:")]
    return helm(*args, check=check)


def render(*sets: str, namespace: str = NAMESPACE, release: str = RELEASE,
           extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    text = template_text(*sets, namespace=namespace, release=release, extra=extra).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_install() -> str:
    """manifests/install.yaml as the chart renders it now: no hooks (the uninstall cleanup Job is
    Helm's to run), and with cert-manager (a render that generated certificates would differ
    every time and carry private keys)."""
    body = template_text(extra=("--include-crds", "--skip-tests", "--no-hooks",
                                "--api-versions", CERT_MANAGER)).stdout
    return INSTALL_HEADER + body


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None
                                                          or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("DaemonSet", "Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield f"Pod/{doc['metadata']['name']}", doc["spec"]


def scheduler_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = next(d for d in docs if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"].endswith("-scheduler"))
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    return config


# ------------------------------------------------------------------------------- lint, render
def test_helm_lint_strict() -> None:
    result = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    assert "0 chart(s) failed" in result.stdout


def test_lint_with_every_option_on() -> None:
    result = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART),
                  "--set", "serviceMonitor.enabled=true",
                  "--set", "controller.extender.tls.source=secrets",
                  "--set", "controller.extender.tls.secretName=tls",
                  "--set", "controller.extender.tls.clientSecretName=client-tls",
                  "--set", "exporter.backend=simulated",
                  "--set-json", 'exporter.fleet={"nodes":[]}',
                  "--set", "exporter.runtimeClassName=nvidia")
    assert "0 chart(s) failed" in result.stdout


def test_default_render_has_every_component() -> None:
    docs = render()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("DaemonSet", "exo-gpu-exporter"),
        ("Deployment", "exo-gpu-controller"),
        ("Deployment", "exo-gpu-scheduler"),
        ("Service", "exo-gpu-extender"),
        ("Service", "exo-gpu-controller"),
        ("Service", "exo-gpu-exporter"),
        ("ConfigMap", "exo-gpu-scheduler"),
        ("ServiceAccount", "exo-gpu-exporter"),
        ("ServiceAccount", "exo-gpu-controller"),
        ("ServiceAccount", "exo-gpu-scheduler"),
        ("ClusterRole", "exo-gpu-exporter"),
        ("ClusterRole", "exo-gpu-controller"),
        ("ValidatingAdmissionPolicy", "exo-gpu-exporter-own-node"),
        ("ValidatingAdmissionPolicyBinding", "exo-gpu-exporter-own-node"),
        ("Pod", "exo-gpu-test-extender"),
        ("Secret", "exo-gpu-extender-ca"),
        ("Secret", "exo-gpu-extender-tls"),
        ("Secret", "exo-gpu-scheduler-tls"),
        ("NetworkPolicy", "exo-gpu-controller"),
        ("NetworkPolicy", "exo-gpu-exporter"),
        ("NetworkPolicy", "exo-gpu-scheduler"),
    ]:
        assert expected in kinds, expected
    assert not any(d["kind"] == "ServiceMonitor" for d in docs)


def test_namespaced_objects_land_in_the_release_namespace() -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding", "CustomResourceDefinition"}
    docs = render(namespace="gpu-team")
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in meta, doc["kind"]
        elif (doc["kind"], meta["name"]) == ("RoleBinding", "exo-gpu-scheduler-auth-reader"):
            assert meta["namespace"] == "kube-system"
        else:
            assert meta["namespace"] == "gpu-team", (doc["kind"], meta["name"])


def test_release_name_prefixes_every_object() -> None:
    docs = render(release="gpu")
    for doc in docs:
        name = doc["metadata"]["name"]
        assert name.startswith("gpu-exo-gpu-"), (doc["kind"], name)


# ------------------------------------------------------------------------------- schema
@pytest.mark.parametrize(("setting", "path"), [
    ("imag.repository=x", "additional properties 'imag'"),
    ("exporter.backnd=nvml", "'backnd'"),
    ("exporter.nodeselector.a=b", "'nodeselector'"),
    ("controller.extender.tls.enabeld=true", "'enabeld'"),
    ("controller.leaderElecton=false", "'leaderElecton'"),
    ("scheduler.image.tg=v1", "'tg'"),
    ("serviceMonitor.enable=true", "'enable'"),
    ("rbac.crate=false", "'crate'"),
])
def test_schema_refuses_a_typo(setting: str, path: str) -> None:
    result = template_text(setting, check=False)
    assert result.returncode != 0
    assert "additional properties" in result.stderr and path in result.stderr, result.stderr


@pytest.mark.parametrize(("setting", "field"), [
    ("exporter.backend=cuda", "/exporter/backend"),
    ("exporter.hostSysfs=yes", "/exporter/hostSysfs"),
    ("exporter.pollInterval=0", "/exporter/pollInterval"),
    ("json:exporter.pollInterval=\"fast\"", "/exporter/pollInterval"),
    ("controller.replicas=0", "/controller/replicas"),
    ("controller.extender.port=70000", "/controller/extender/port"),
    ("scheduler.httpTimeout=five", "/scheduler/httpTimeout"),
    ("logLevel=loud", "/logLevel"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("json:exporter.nodeSelector={\"a\":1}", "/exporter/nodeSelector/a"),
    ("scheduler.schedulerName=Bad_Name", "/scheduler/schedulerName"),
    ("reportingInterval=0", "/reportingInterval"),
    ("reportingInterval=4", "/reportingInterval"),
    ("reportingInterval=7200", "/reportingInterval"),
    ("json:reportingInterval=\"30s\"", "/reportingInterval"),
    ("controller.extender.tls.source=vault", "/controller/extender/tls/source"),
    ("controller.extender.tls.certificateDays=0", "/controller/extender/tls/certificateDays"),
    ("controller.extender.tls.issuerRef.kind=Secret", "/controller/extender/tls/issuerRef/kind"),
    ("controller.extender.maxRequestBytes=100", "/controller/extender/maxRequestBytes"),
    ("controller.extender.schedulerNames={Bad_Name}", "/controller/extender/schedulerNames/0"),
    ("networkPolicy.prometheusNamespace=Mon_itoring", "/networkPolicy/prometheusNamespace"),
    ("json:networkPolicy.extenderPeers={\"ipBlock\":1}", "/networkPolicy/extenderPeers"),
])
def test_schema_refuses_a_bad_value(setting: str, field: str) -> None:
    result = template_text(setting, check=False)
    assert result.returncode != 0
    assert f"at '{field}'" in result.stderr, result.stderr


@pytest.mark.parametrize(("sets", "message"), [
    (("exporter.backend=simulated",), "exporter.fleet: required"),
    (("controller.replicas=2", "controller.leaderElection=false"),
     "controller.leaderElection: must be true"),
    (("controller.extender.tls.source=secrets",),
     "controller.extender.tls.secretName: required with source secrets"),
    (("controller.extender.tls.source=secrets", "controller.extender.tls.secretName=s"),
     "controller.extender.tls.clientSecretName: required with source secrets"),
    (("controller.extender.tls.secretName=s",),
     "controller.extender.tls.secretName, clientSecretName: only with source secrets"),
    (("controller.extender.tls.source=helm", "controller.extender.tls.issuerRef.name=ca"),
     "controller.extender.tls.issuerRef.name: only with source certManager or auto"),
    (("scheduler.enabled=false",), "networkPolicy.extenderPeers: required when "
                                   "scheduler.enabled is false"),
])
def test_inconsistent_values_fail_with_the_field(sets: tuple[str, ...], message: str) -> None:
    result = template_text(*sets, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# Keys whose value is a Kubernetes or user structure the chart passes through unchanged.
FREE_FORM = {
    "commonLabels", "exporter.fleet", "exporter.nodeSelector", "exporter.affinity",
    "exporter.podSecurityContext", "exporter.securityContext", "exporter.podAnnotations",
    "exporter.resources.requests", "exporter.resources.limits", "controller.resources.requests",
    "controller.resources.limits", "controller.securityContext", "controller.nodeSelector",
    "controller.affinity", "controller.podAnnotations", "scheduler.resources.requests",
    "scheduler.resources.limits", "scheduler.securityContext", "scheduler.nodeSelector",
    "scheduler.affinity", "serviceMonitor.labels",
}


def _schema_objects(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    types = node.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _schema_objects(child, f"{path}.{key}".lstrip("."))
    if isinstance(node.get("items"), dict):
        yield from _schema_objects(node["items"], f"{path}[]")


def test_schema_is_closed_everywhere_but_pass_through_maps() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    seen_free = set()
    for path, node in _schema_objects(schema, ""):
        if path in FREE_FORM:
            seen_free.add(path)
            assert "properties" not in node, path
        elif path.endswith("[]") and "properties" not in node:
            continue  # lists of Kubernetes objects (tolerations, volumes)
        else:
            assert node.get("additionalProperties") is False, f"{path or '<root>'} is open"
    assert seen_free == FREE_FORM


def _value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict) and path not in FREE_FORM:
            yield from _value_paths(value, path + ".")


def test_values_and_schema_name_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    schema_paths = {p for p, _ in _schema_objects(schema, "") if p and not p.endswith("[]")}

    def leaves(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, child in (node.get("properties") or {}).items():
            yield f"{prefix}{key}"
            if f"{prefix}{key}" not in FREE_FORM:
                yield from leaves(child, f"{prefix}{key}.")

    assert set(_value_paths(values)) == set(leaves(schema)) - {
        p for p in set(leaves(schema)) if p.endswith(".claims")}
    assert schema_paths <= set(leaves(schema))


def _documented_keys(lines: list[str]) -> dict[str, str]:
    """Dotted path of every mapping key of values.yaml -> the comment block just above it."""
    key = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(\s|$)")
    stack: list[tuple[int, str]] = []
    found: dict[str, str] = {}
    for number, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [match.group(2)])
        stack.append((indent, match.group(2)))
        comments = []
        back = number - 1
        while back >= 0 and lines[back].strip().startswith("#"):
            comments.append(lines[back])
            back -= 1
        found.setdefault(path, "\n".join(comments))
    return found


def test_every_values_key_is_documented_with_an_example() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    documented = _documented_keys(text.splitlines())

    def leaf_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for name, value in node.items():
            path = f"{prefix}{name}"
            if isinstance(value, dict) and value and path not in FREE_FORM \
                    and not path.endswith(("resources", "securityContext")):
                yield from leaf_paths(value, path + ".")
            else:
                yield path

    missing = [path for path in leaf_paths(values)
               if "# --" not in documented.get(path, "") or "Example" not in documented[path]]
    assert not missing, f"values without a '# --' description and an Example: {missing}"


# ------------------------------------------------------------------------------- security
SECURITY_VARIANTS = [
    (),
    ("controller.extender.tls.enabled=false", "exporter.backend=simulated",
     'json:exporter.fleet={"nodes":[]}'),
]


@pytest.mark.parametrize("sets", SECURITY_VARIANTS, ids=["defaults", "plain-simulated"])
def test_every_container_is_locked_down(sets: tuple[str, ...]) -> None:
    docs = render(*sets)
    checked = 0
    for where, spec in pod_specs(docs):
        assert not spec.get("hostNetwork") and not spec.get("hostPID") \
            and not spec.get("hostIPC"), where
        pod_seccomp = (spec.get("securityContext") or {}).get("seccompProfile", {}).get("type")
        for container in spec["containers"] + spec.get("initContainers", []):
            name = f"{where}/{container['name']}"
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] != 0 and sc["runAsGroup"] != 0, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert not sc.get("privileged"), name
            assert "RuntimeDefault" in (sc.get("seccompProfile", {}).get("type"), pod_seccomp)
            assert "resources" in container and container["resources"].get("limits"), name
            checked += 1
    # exporter, controller (serving the extender), kube-scheduler, helm test, uninstall cleanup
    assert checked == 5


def test_no_host_paths_or_privileges_by_default() -> None:
    for where, spec in pod_specs(render()):
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, where


def test_image_user_matches_the_chart() -> None:
    user = re.search(r"^USER\s+(\d+):(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user is not None
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in ("exporter", "controller"):
        sc = values[component]["securityContext"]
        assert (str(sc["runAsUser"]), str(sc["runAsGroup"])) == user.groups(), component


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("rules") or [])


def test_rbac_has_no_wildcards_and_no_secrets() -> None:
    for doc in render():
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in _rules(doc):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), (doc["metadata"]["name"], rule)
            assert "secrets" not in rule["resources"], doc["metadata"]["name"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_rbac_disabled_renders_no_accounts_but_keeps_their_names() -> None:
    docs = render("rbac.create=false")
    assert not [d for d in docs if d["kind"] in
                ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    accounts = {spec.get("serviceAccountName") for _, spec in pod_specs(docs)}
    assert {"exo-gpu-exporter", "exo-gpu-controller", "exo-gpu-scheduler"} <= accounts


def test_each_workload_runs_as_its_own_account_bound_to_its_roles() -> None:
    docs = render()
    bound: dict[str, set[str]] = {}
    for doc in docs:
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            for subject in doc["subjects"]:
                assert subject["namespace"] == NAMESPACE
                bound.setdefault(subject["name"], set()).add(doc["roleRef"]["name"])
    assert bound["exo-gpu-exporter"] == {"exo-gpu-exporter"}
    assert bound["exo-gpu-controller"] == {"exo-gpu-controller", "exo-gpu-controller-leader"}
    assert bound["exo-gpu-scheduler"] == {
        "system:kube-scheduler", "system:volume-scheduler",
        "extension-apiserver-authentication-reader", "exo-gpu-scheduler-leader"}
    accounts = {where: spec.get("serviceAccountName") for where, spec in pod_specs(docs)}
    assert accounts["DaemonSet/exo-gpu-exporter"] == "exo-gpu-exporter"
    assert accounts["Deployment/exo-gpu-controller"] == "exo-gpu-controller"
    assert accounts["Deployment/exo-gpu-scheduler"] == "exo-gpu-scheduler"
    assert bound["exo-gpu-cleanup"] == {"exo-gpu-cleanup"}
    assert accounts["Job/exo-gpu-cleanup"] == "exo-gpu-cleanup"


def test_admission_policy_targets_this_releases_exporter() -> None:
    docs = render(namespace="gpu-ops", release="prod")
    policy = find(docs, "ValidatingAdmissionPolicy")
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == \
        "request.userInfo.username == 'system:serviceaccount:gpu-ops:prod-exo-gpu-exporter'"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    assert set(rule["resources"]) == {"gpudevices", "gpudevices/status"}
    binding = find(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert not [d for d in render("admissionPolicy.enabled=false")
                if d["kind"].startswith("ValidatingAdmissionPolicy")]


# ------------------------------------------------------------------------------- command lines
def _click_command(subcommand: str) -> click.Command:
    from exo.gpu.cli import main

    ctx = click.Context(main)
    command = main.get_command(ctx, subcommand)
    assert command is not None, f"exo-gpu has no subcommand {subcommand!r}"
    return command


@pytest.mark.parametrize("sets", [
    *SECURITY_VARIANTS,
    ("controller.leaderElection=false", 'json:controller.watchNamespaces=["a","b"]')],
    ids=["defaults", "plain-simulated", "no-leader-namespaces"])
def test_container_command_lines_are_accepted_by_the_cli(sets: tuple[str, ...]) -> None:
    docs = render(*sets)
    seen = set()
    for _where, spec in pod_specs(docs):
        for container in spec["containers"]:
            if container["image"].startswith("registry.k8s.io/") or container.get("command"):
                continue  # kube-scheduler, and the helm test's python one-liner
            subcommand, *args = container["args"]
            command = _click_command(subcommand)
            # Parsing checks every option name, choice and range without running anything.
            command.make_context(subcommand, list(args), resilient_parsing=False)
            seen.add(subcommand)
    assert seen == {"exporter", "controller", "cleanup"}


@pytest.mark.parametrize(("sets", "seconds"), [((), "30"), (("reportingInterval=45",), "45")])
def test_one_reporting_interval_feeds_the_exporter_and_the_controller(
        sets: tuple[str, ...], seconds: str) -> None:
    """The exporter's heartbeat and the controller's staleness limit are one value."""
    flags = {}
    for where, spec in pod_specs(render(*sets)):
        for container in spec["containers"]:
            for arg in container.get("args") or []:
                for flag in ("--report-interval=", "--reporting-interval="):
                    if arg.startswith(flag):
                        flags[(where.split("/")[0], flag)] = arg[len(flag):]
    assert flags == {("DaemonSet", "--report-interval="): seconds,
                     ("Deployment", "--reporting-interval="): seconds}


def test_probes_and_services_point_at_declared_ports() -> None:
    docs = render()
    ports_by_component: dict[str, set[str | int]] = {}
    for doc in docs:
        if doc["kind"] not in ("DaemonSet", "Deployment"):
            continue
        component = doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        names: set[str | int] = set()
        for container in doc["spec"]["template"]["spec"]["containers"]:
            declared = {p["name"] for p in container.get("ports", [])}
            names |= declared | {p["containerPort"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                action = container.get(probe, {})
                port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if port is not None:
                    assert port in declared, (container["name"], probe, port)
        ports_by_component[component] = names
    for doc in docs:
        if doc["kind"] != "Service":
            continue
        component = doc["spec"]["selector"]["app.kubernetes.io/component"]
        for port in doc["spec"]["ports"]:
            assert port["targetPort"] in ports_by_component[component], doc["metadata"]["name"]


def test_simulated_exporter_reads_the_fleet_it_is_given() -> None:
    from exo.gpu.exporter.fleet import parse_fleet

    fleet = yaml.safe_load((ROOT / "operator/exo/gpu/data/fleet-demo.yaml").read_text())
    docs = render("exporter.backend=simulated", "json:exporter.fleet=" + json.dumps(fleet))
    configmap = find(docs, "ConfigMap", "exo-gpu-exporter-fleet")
    daemonset = find(docs, "DaemonSet", "exo-gpu-exporter")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    (fleet_arg,) = [a for a in container["args"] if a.startswith("--fleet=")]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "fleet")
    assert fleet_arg == f"--fleet={mount['mountPath']}/fleet.yaml"
    assert yaml.safe_load(configmap["data"]["fleet.yaml"]) == fleet
    assert "checksum/fleet" in daemonset["spec"]["template"]["metadata"]["annotations"]
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in container["env"]}
    parsed = parse_fleet(yaml.safe_load(configmap["data"]["fleet.yaml"]), "fleet ConfigMap")
    assert parsed.node_names() == [n["name"] for n in fleet["nodes"]]


def test_nvml_backend_asks_the_nvidia_runtime_for_the_management_library() -> None:
    daemonset = find(render("exporter.runtimeClassName=nvidia"), "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert spec["nodeSelector"] == {"gpu.exo.dev/gpu-node": "true"}
    assert "runtimeClassName" not in find(render(), "DaemonSet")["spec"]["template"]["spec"]


def test_exporter_defaults_to_auto_and_reads_the_containers_own_sys() -> None:
    daemonset = find(render(), "DaemonSet", "exo-gpu-exporter")
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "--backend=auto" in container["args"]
    assert not [a for a in container["args"] if a.startswith("--sysfs-root")]
    # auto tries NVML first: the NVIDIA runtime is asked for the management library.
    assert {e["name"] for e in container["env"]} >= {"NVIDIA_VISIBLE_DEVICES",
                                                      "NVIDIA_DRIVER_CAPABILITIES"}


def test_host_sysfs_mounts_the_nodes_sys_read_only_and_points_the_exporter_at_it() -> None:
    daemonset = find(render("exporter.hostSysfs=true", "exporter.backend=drm"), "DaemonSet",
                     "exo-gpu-exporter")
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volume = next(v for v in spec["volumes"] if v["name"] == "host-sys")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "host-sys")
    assert volume["hostPath"] == {"path": "/sys", "type": "Directory"}
    assert mount["readOnly"] is True
    assert f"--sysfs-root={mount['mountPath']}" in container["args"]
    assert "--backend=drm" in container["args"]
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in container.get("env", [])}


# ------------------------------------------------------------------------------- scheduler
def test_scheduler_configmap_says_what_the_shipped_config_says() -> None:
    assert scheduler_config(render()) == yaml.safe_load(SCHEDULER_CONFIG.read_text())


def _mounted(spec: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The Secret a file path of ``container`` comes from (the volume mounted above it)."""
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return str(volume["secret"]["secretName"])


def test_scheduler_and_extender_speak_mutual_tls_by_default() -> None:
    docs = render("controller.extender.port=8443", namespace="ops", release="gpu")
    (extender,) = scheduler_config(docs)["extenders"]
    service = find(docs, "Service", "gpu-exo-gpu-extender")
    assert extender["urlPrefix"] == "https://gpu-exo-gpu-extender.ops.svc:8443"
    assert service["spec"]["ports"][0]["port"] == 8443
    assert extender["enableHTTPS"] is True
    client = extender["tlsConfig"]
    assert client["serverName"] == "gpu-exo-gpu-extender.ops.svc"
    scheduler = find(docs, "Deployment", "gpu-exo-gpu-scheduler")["spec"]["template"]["spec"]
    for key in ("caFile", "certFile", "keyFile"):
        assert _mounted(scheduler, scheduler["containers"][0], client[key]) == \
            "gpu-exo-gpu-scheduler-tls"
    controller = find(docs, "Deployment", "gpu-exo-gpu-controller")["spec"]["template"]["spec"]
    (container,) = controller["containers"]  # the controller process serves the extender
    args = dict(a.split("=", 1) for a in container["args"] if a.startswith("--") and "=" in a)
    assert args["--extender-port"] == "8443"
    assert args["--tls-client-name"] == "exo-gpu-scheduler"
    assert "--plain-http" not in container["args"]
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca"):
        assert _mounted(controller, container, args[flag]) == "gpu-exo-gpu-extender-tls"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    test_pod = find(docs, "Pod")
    script = test_pod["spec"]["containers"][0]["args"][0]
    assert 'url = "https://gpu-exo-gpu-extender.ops.svc:8443"' in script
    assert "error.code == 403" in script  # a caller without a certificate is refused
    assert not [v for v in test_pod["spec"]["volumes"] if v["secret"].get("items") !=
                [{"key": "ca.crt", "path": "ca.crt"}]], "the test pod holds no client key"


def _secret_files(doc: dict[str, Any], folder: Path) -> dict[str, Path]:
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, value in doc["data"].items():
        files[key] = folder / key
        files[key].write_bytes(base64.b64decode(value))
    return files


async def test_generated_certificates_work_together(tmp_path: Path) -> None:
    """The Secrets Helm generates, used as the pods use them: the extender serves with its
    Secret, kube-scheduler's client (its Secret, the Service name as serverName) gets an
    answer, and a caller without a certificate gets only the refusal."""
    import ssl

    import aiohttp
    from cryptography import x509

    from exo.gpu.devcluster.cluster import free_port
    from exo.gpu.extender.server import ExtenderServer, ServingTLS, start_site
    from exo.gpu.k8s.view import ClusterView

    docs = render(namespace="ops", release="gpu")
    served = _secret_files(find(docs, "Secret", "gpu-exo-gpu-extender-tls"), tmp_path / "ext")
    client = _secret_files(find(docs, "Secret", "gpu-exo-gpu-scheduler-tls"), tmp_path / "sch")
    ca = _secret_files(find(docs, "Secret", "gpu-exo-gpu-extender-ca"), tmp_path / "ca")
    assert served["ca.crt"].read_bytes() == client["ca.crt"].read_bytes() == \
        ca["tls.crt"].read_bytes()
    leaf = x509.load_pem_x509_certificate(client["tls.crt"].read_bytes())
    assert leaf.subject.rfc4514_string() == "CN=exo-gpu-scheduler"
    serving = x509.load_pem_x509_certificate(served["tls.crt"].read_bytes())
    assert "gpu-exo-gpu-extender.ops.svc" in serving.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)

    tls = ServingTLS(str(served["tls.crt"]), str(served["tls.key"]), str(served["ca.crt"]),
                     client_names=["exo-gpu-scheduler"])
    port = free_port()
    runner = await start_site(ExtenderServer(ClusterView(), binder=None).app(), "127.0.0.1",
                              port, tls)
    try:
        scheduler = ssl.create_default_context(cafile=str(client["ca.crt"]))
        scheduler.load_cert_chain(str(client["tls.crt"]), str(client["tls.key"]))
        anonymous = ssl.create_default_context(cafile=str(client["ca.crt"]))
        resolver = {"gpu-exo-gpu-extender.ops.svc": "127.0.0.1"}

        class Pinned(aiohttp.abc.AbstractResolver):
            async def resolve(self, host: str, port: int = 0, family: int = 0
                              ) -> list[dict[str, Any]]:
                return [{"hostname": host, "host": resolver[host], "port": port,
                         "family": family, "proto": 0, "flags": 0}]

            async def close(self) -> None:
                return None

        url = f"https://gpu-exo-gpu-extender.ops.svc:{port}/filter"
        body = {"Pod": {"metadata": {"name": "p", "namespace": "n", "uid": "u"},
                        "spec": {"containers": []}}, "NodeNames": []}
        for context, status in ((scheduler, 200), (anonymous, 403)):
            connector = aiohttp.TCPConnector(ssl=context, resolver=Pinned())
            async with aiohttp.ClientSession(connector=connector) as session, \
                    session.post(url, json=body) as reply:
                assert reply.status == status, await reply.text()
    finally:
        await runner.cleanup()


def test_cert_manager_issues_the_same_secrets_when_present() -> None:
    docs = render(namespace="ops", release="gpu", extra=("--api-versions", CERT_MANAGER))
    assert not [d for d in docs if d["kind"] == "Secret"]  # no key in the manifest
    certificates = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
    assert issuers["gpu-exo-gpu-selfsigned"] == {"selfSigned": {}}
    assert issuers["gpu-exo-gpu-extender-ca"] == {"ca": {"secretName": "gpu-exo-gpu-extender-ca"}}
    assert certificates["gpu-exo-gpu-extender-ca"]["isCA"] is True
    serving, client = certificates["gpu-exo-gpu-extender"], certificates["gpu-exo-gpu-scheduler"]
    assert serving["secretName"] == "gpu-exo-gpu-extender-tls"
    assert "gpu-exo-gpu-extender.ops.svc" in serving["dnsNames"]
    assert "server auth" in serving["usages"] and "client auth" not in serving["usages"]
    assert client["secretName"] == "gpu-exo-gpu-scheduler-tls"
    assert client["commonName"] == "exo-gpu-scheduler"
    assert client["usages"] == ["client auth", "digital signature"]
    assert serving["issuerRef"] == client["issuerRef"] == {"name": "gpu-exo-gpu-extender-ca",
                                                           "kind": "Issuer"}
    assert serving["duration"] == "8760h"
    # The pods mount exactly the Secrets cert-manager writes.
    mounted = {v["secret"]["secretName"] for d in docs if d["kind"] == "Deployment"
               for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert mounted == {"gpu-exo-gpu-extender-tls", "gpu-exo-gpu-scheduler-tls"}
    # Another issuer replaces the chart's CA.
    docs = render("controller.extender.tls.issuerRef.name=platform-ca",
                  "controller.extender.tls.issuerRef.kind=ClusterIssuer",
                  extra=("--api-versions", CERT_MANAGER))
    assert not [d for d in docs if d["kind"] == "Issuer"]
    refs = [d["spec"]["issuerRef"] for d in docs if d["kind"] == "Certificate"]
    assert refs == [{"name": "platform-ca", "kind": "ClusterIssuer",
                     "group": "cert-manager.io"}] * 2


def test_user_secrets_are_mounted_and_nothing_is_generated() -> None:
    docs = render("controller.extender.tls.source=secrets",
                  "controller.extender.tls.secretName=mine-server",
                  "controller.extender.tls.clientSecretName=mine-client",
                  extra=("--api-versions", CERT_MANAGER))
    assert not [d for d in docs if d["kind"] in ("Secret", "Certificate", "Issuer")]
    mounted = {v["secret"]["secretName"] for d in docs if d["kind"] == "Deployment"
               for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert mounted == {"mine-server", "mine-client"}


def test_plain_http_only_by_name() -> None:
    docs = render("controller.extender.tls.enabled=false")
    (extender,) = scheduler_config(docs)["extenders"]
    assert extender["urlPrefix"].startswith("http://")
    assert "tlsConfig" not in extender and "enableHTTPS" not in extender
    controller = find(docs, "Deployment", "exo-gpu-controller")["spec"]["template"]["spec"]
    assert "--plain-http" in controller["containers"][0]["args"]
    assert not [a for a in controller["containers"][0]["args"] if a.startswith("--tls-")]
    assert not [d for d in docs if d["kind"] == "Secret"]
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "WARNING: controller.extender.tls.enabled is false" in notes


def test_request_limit_reaches_the_extender() -> None:
    docs = render("controller.extender.maxRequestBytes=16777216")
    controller = find(docs, "Deployment", "exo-gpu-controller")["spec"]["template"]["spec"]
    assert "--max-request-bytes=16777216" in controller["containers"][0]["args"]


@pytest.mark.parametrize(("sets", "names"), [
    ((), ["exo-gpu-scheduler"]),
    (("scheduler.schedulerName=gpu-scheduler",), ["gpu-scheduler"]),
    (("scheduler.enabled=false", "networkPolicy.enabled=false",
      "controller.extender.schedulerNames={default-scheduler,batch}"),
     ["default-scheduler", "batch"]),
])
def test_the_extender_binds_the_pods_of_the_named_schedulers(sets: tuple[str, ...],
                                                              names: list[str]) -> None:
    docs = render(*sets)
    controller = find(docs, "Deployment", "exo-gpu-controller")["spec"]["template"]["spec"]
    args = controller["containers"][0]["args"]
    assert [a.split("=", 1)[1] for a in args if a.startswith("--scheduler-name=")] == names


# ------------------------------------------------------------------------------- network
def _pod_labels(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    if kind == "Pod":
        return dict(find(docs, kind, name)["metadata"]["labels"])
    return dict(find(docs, kind, name)["spec"]["template"]["metadata"]["labels"])


def _admits(policy: dict[str, Any], labels: dict[str, str], namespace: str,
            namespace_labels: dict[str, str], port: str) -> bool:
    """Whether ``policy`` admits a pod with ``labels`` in ``namespace`` to ``port`` (the parts
    of NetworkPolicy semantics the chart uses: podSelector and namespaceSelector peers)."""
    for rule in policy["spec"]["ingress"]:
        if port not in [p["port"] for p in rule["ports"]]:
            continue
        for peer in rule["from"]:
            pod_ok = peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
            if "namespaceSelector" in peer:
                ns_ok = peer["namespaceSelector"]["matchLabels"].items() <= \
                    namespace_labels.items()
            else:
                ns_ok = namespace == policy["metadata"]["namespace"]
            if pod_ok and ns_ok and ("podSelector" in peer or "namespaceSelector" in peer):
                return True
    return False


def test_network_policies_admit_only_the_scheduler_and_prometheus() -> None:
    docs = render("networkPolicy.prometheusNamespace=observability")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    controller = policies["exo-gpu-controller"]
    here = {"kubernetes.io/metadata.name": NAMESPACE}
    prometheus = {"kubernetes.io/metadata.name": "observability"}
    scheduler = _pod_labels(docs, "Deployment", "exo-gpu-scheduler")
    exporter = _pod_labels(docs, "DaemonSet", "exo-gpu-exporter")
    test_pod = _pod_labels(docs, "Pod", "exo-gpu-test-extender")
    assert controller["spec"]["podSelector"]["matchLabels"].items() <= \
        _pod_labels(docs, "Deployment", "exo-gpu-controller").items()
    assert controller["spec"]["policyTypes"] == ["Ingress"]
    assert _admits(controller, scheduler, NAMESPACE, here, "extender")
    assert _admits(controller, test_pod, NAMESPACE, here, "extender")
    assert not _admits(controller, exporter, NAMESPACE, here, "extender")
    assert not _admits(controller, {"app": "prometheus"}, "observability", prometheus,
                       "extender")
    assert not _admits(controller, scheduler, "other", {"kubernetes.io/metadata.name": "other"},
                       "extender")
    assert _admits(controller, {"app": "prometheus"}, "observability", prometheus, "metrics")
    assert not _admits(controller, {"app": "prometheus"}, "default",
                       {"kubernetes.io/metadata.name": "default"}, "metrics")
    assert not _admits(controller, scheduler, NAMESPACE, here, "metrics")
    for name, port in (("exo-gpu-exporter", "metrics"), ("exo-gpu-scheduler", "https")):
        policy = policies[name]
        assert _admits(policy, {}, "observability", prometheus, port), name
        assert not _admits(policy, scheduler, NAMESPACE, here, port), name
    # The ports named in the policies are ports the pods declare.
    for kind, name, port in (("Deployment", "exo-gpu-controller", "extender"),
                             ("Deployment", "exo-gpu-controller", "metrics"),
                             ("DaemonSet", "exo-gpu-exporter", "metrics"),
                             ("Deployment", "exo-gpu-scheduler", "https")):
        containers = find(docs, kind, name)["spec"]["template"]["spec"]["containers"]
        assert port in {p["name"] for c in containers for p in c.get("ports", [])}, name


def test_own_scheduler_needs_peers_and_gets_them() -> None:
    peers = [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    docs = render("scheduler.enabled=false", "json:networkPolicy.extenderPeers=" +
                  json.dumps(peers))
    controller = find(docs, "NetworkPolicy", "exo-gpu-controller")
    (extender_rule, _metrics) = controller["spec"]["ingress"]
    assert extender_rule["from"][-1] == peers[0]
    assert not [p for p in extender_rule["from"] if "podSelector" in p
                and p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") ==
                "scheduler"]
    assert not [d for d in render("networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]


def test_scheduler_disabled_leaves_only_the_extender() -> None:
    docs = render("scheduler.enabled=false", "networkPolicy.enabled=false")
    # Only the client certificate stays, for the cluster's own kube-scheduler to present.
    assert [(d["kind"], d["metadata"]["name"]) for d in docs
            if d["metadata"]["name"].startswith("exo-gpu-scheduler")] == \
        [("Secret", "exo-gpu-scheduler-tls")]
    find(docs, "Service", "exo-gpu-extender")


def test_service_monitors_select_services_with_those_ports() -> None:
    docs = render("serviceMonitor.enabled=true", "json:serviceMonitor.labels={\"release\":\"p\"}")
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    # The extender's metrics are served on the controller's metrics port.
    assert {m["metadata"]["name"] for m in monitors} == {"exo-gpu-controller", "exo-gpu-exporter"}
    services = [d for d in docs if d["kind"] == "Service"]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "p"
        wanted = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services
                  if wanted.items() <= s["metadata"]["labels"].items()]
        assert len(chosen) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in chosen[0]["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in port_names


# ------------------------------------------------------------------------------- copies
def test_chart_crds_are_exact_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    assert sorted(copy) == sorted(source), "charts/exo-gpu/crds/ and crds/ hold different files"
    stale = [name for name in source if copy[name] != source[name]]
    assert not stale, f"charts/exo-gpu/crds/ is stale ({stale}): cp crds/*.yaml " \
        "charts/exo-gpu/crds/"


def test_install_yaml_is_the_default_render() -> None:
    assert INSTALL_YAML.read_text() == render_install(), \
        "manifests/install.yaml is stale: .venv/bin/python tests/test_chart.py --write"


def test_install_yaml_holds_the_namespace_crds_and_no_test_pod() -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL_YAML.read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == NAMESPACE
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {yaml.safe_load(p.read_text())["metadata"]["name"]
                    for p in (ROOT / "crds").glob("*.yaml")}
    assert not [d for d in docs if d["kind"] == "Pod"]


def test_examples_are_numbered_and_each_has_a_readme_section() -> None:
    folder = ROOT / "manifests" / "examples"
    files = sorted(p.name for p in folder.glob("*.yaml"))
    assert files, "no examples"
    numbers = [int(name.split("-", 1)[0]) for name in files]
    assert numbers == list(range(1, len(files) + 1)), files
    readme = (folder / "README.md").read_text()
    for name in files:
        assert f"(`{name}`)" in readme, f"{name} has no README section"
        assert f"kubectl apply -f manifests/examples/{name}" in readme, name
    for doc in (d for name in files for d in yaml.safe_load_all((folder / name).read_text())):
        assert doc["kind"] in {"Pod", "GPUWorkload", "GPUDevice"}, doc["kind"]
        if doc["kind"] == "Pod" or (doc["kind"] == "GPUWorkload" and "template" in doc["spec"]):
            spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
            assert spec["schedulerName"] == "exo-gpu-scheduler"


def main(argv: list[str]) -> int:
    if argv[1:] != ["--write"]:
        print("usage: tests/test_chart.py --write   (refresh the chart's CRDs and install.yaml)")
        return 2
    for source in (ROOT / "crds").glob("*.yaml"):
        (CHART / "crds" / source.name).write_bytes(source.read_bytes())
    for stale in (CHART / "crds").glob("*.yaml"):
        if not (ROOT / "crds" / stale.name).exists():
            stale.unlink()
    INSTALL_YAML.write_text(render_install())
    print(f"wrote {CHART / 'crds'} and {INSTALL_YAML}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
