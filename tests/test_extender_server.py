"""The extender's HTTP server: exact verbs, health, metrics, and no crash on any input.

Every test here talks to the server over mutual TLS with kube-scheduler's client certificate,
as the chart deploys it (the ``client`` fixture); the transport's own refusals are in
``TestMutualTLS``, the body limit in ``TestBodyLimit``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exo.gpu.devcluster.pki import ExtenderPki, make_extender_pki
from exo.gpu.extender.server import ExtenderServer, ServingTLS, require_client_certificates
from test_extender_policy import NOW, device, view_of

GIB = 1024**3


def pod_json(min_memory: str | None = "8Gi", uid: str = "u1") -> dict[str, Any]:
    annotations = {"gpu.exo.dev/min-memory": min_memory} if min_memory else {}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": uid,
                         "annotations": annotations},
            "spec": {"containers": [{"name": "c", "resources": {
                "limits": {"gpu.exo.dev/gpu": "1"}}}]}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ExtenderPki:
    return make_extender_pki(tmp_path_factory.mktemp("extender-pki"))


def scheduler_ssl(pki: ExtenderPki, certificate: bool = True) -> Any:
    """The TLS of kube-scheduler's extender client: trusts the CA, presents its certificate."""
    import ssl

    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if certificate:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


@contextlib.asynccontextmanager
async def mutual_tls_client(server: ExtenderServer, pki: ExtenderPki | None = None,
                            client_ssl: Any = None, tls: ServingTLS | None = None
                            ) -> AsyncIterator[TestClient[Any, Any]]:
    """A test client of ``server`` over mutual TLS (kube-scheduler's certificate by default),
    served with ``tls`` or ``pki``'s serving certificate."""
    app = server.app()
    if tls is None:
        assert pki is not None
        tls = ServingTLS(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
    require_client_certificates(app, tls)
    test_server = TestServer(app)
    await test_server.start_server(ssl=tls.context)
    assert pki is not None or client_ssl is not None
    connector = aiohttp.TCPConnector(ssl=client_ssl or scheduler_ssl(pki))  # type: ignore[arg-type]
    async with TestClient(test_server, connector=connector) as test_client:
        yield test_client


def first_reply(context: Any, port: int, path: str = "/healthz") -> bytes:
    """The first bytes the server answers to ``GET path`` over a connection made with
    ``context``; b"" when it closed the connection instead. (A TLS 1.3 server judges the
    client's certificate after the client's side of the handshake is done, so a refusal shows
    on the first read, as kube-scheduler's "EOF" or "connection reset by peer".)"""
    import socket
    import ssl

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: extender\r\n\r\n".encode())
            return bytes(tls.recv(64))
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""


@pytest.fixture
async def client(pki: ExtenderPki) -> AsyncIterator[TestClient[Any, Any]]:
    view = view_of(device("busy", 0, util=95, used=60 * GIB), device("idle", 0, util=5),
                   device("hot", 0, temp=93))
    server = ExtenderServer(view, binder=None, clock=lambda: NOW)
    async with mutual_tls_client(server, pki) as test_client:
        yield test_client


async def post(client: TestClient[Any, Any], verb: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await client.post(f"/{verb}", data=data,
                                 headers={"Content-Type": "application/json"})
    return response.status, orjson.loads(await response.read())


class TestVerbs:
    async def test_filter(self, client: TestClient[Any, Any]) -> None:
        status, result = await post(client, "filter", {
            "Pod": pod_json(), "Nodes": None, "NodeNames": ["busy", "idle", "hot", "cpu"]})
        assert status == 200
        assert result["NodeNames"] == ["busy", "idle"]
        assert set(result["FailedAndUnresolvableNodes"]) == {"hot", "cpu"}
        assert "TooHot" in result["FailedAndUnresolvableNodes"]["hot"]
        assert result["Error"] == ""

    async def test_prioritize_prefers_the_idle_node(self, client: TestClient[Any, Any]) -> None:
        status, result = await post(client, "prioritize", {
            "Pod": pod_json(), "NodeNames": ["busy", "idle"]})
        assert status == 200
        scores = {entry["Host"]: entry["Score"] for entry in result}
        assert scores["idle"] > scores["busy"]
        assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())

    async def test_preempt_answers_with_meta_victims(self, client: TestClient[Any, Any]) -> None:
        status, result = await post(client, "preempt", {
            "Pod": pod_json(), "NodeNameToMetaVictims": {
                "idle": {"Pods": [{"UID": "v"}], "NumPDBViolations": 0},
                "hot": {"Pods": [{"UID": "w"}], "NumPDBViolations": 0}}})
        assert status == 200
        # The idle node has room without evicting anything; the hot one never will.
        assert result == {"NodeNameToMetaVictims": {
            "idle": {"Pods": [{"UID": "v"}], "NumPDBViolations": 0}}}

    async def test_bind_without_api_access_is_a_clear_error(
            self, client: TestClient[Any, Any]) -> None:
        status, result = await post(client, "bind", {"PodName": "p", "PodNamespace": "ns",
                                                      "PodUID": "u", "Node": "idle"})
        assert status == 200
        assert "without API access" in result["Error"]

    async def test_health_and_metrics(self, client: TestClient[Any, Any]) -> None:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        await post(client, "filter", {"Pod": pod_json(), "NodeNames": ["idle"]})
        await post(client, "prioritize", b"{not json")
        text = await (await client.get("/metrics")).text()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("exo_gpu_extender_request_duration_seconds_count",
                        (("verb", "filter"),))] == 1
        assert samples[("exo_gpu_extender_errors_total",
                        (("reason", "bad_request"), ("verb", "prioritize")))] == 1


class TestBadInput:
    @pytest.mark.parametrize("verb", ["filter", "prioritize", "bind"])
    async def test_malformed_json_is_a_400(self, client: TestClient[Any, Any], verb: str) -> None:
        status, result = await post(client, verb, b"{\"Pod\": ")
        assert status == 400
        assert "not JSON" in result["Error"]

    @pytest.mark.parametrize(("body", "needle"), [
        ({"NodeNames": ["idle"]}, "Pod: must be an object"),
        ({"Pod": pod_json(), "NodeNames": 7}, "NodeNames: must be a list"),
        ({"Pod": pod_json("lots"), "NodeNames": ["idle"]}, "min-memory"),
        ([1, 2], "ExtenderArgs: must be an object"),
    ])
    async def test_wrong_shape_gets_a_filter_error_result(
            self, client: TestClient[Any, Any], body: Any, needle: str) -> None:
        status, result = await post(client, "filter", body)
        assert status == 200
        assert needle in result["Error"]
        assert result["NodeNames"] is None

    async def test_wrong_shape_prioritize_is_a_400(self, client: TestClient[Any, Any]) -> None:
        status, result = await post(client, "prioritize", {"Pod": None})
        assert status == 400
        assert "Pod" in result["Error"]

    async def test_empty_and_huge_node_lists(self, client: TestClient[Any, Any]) -> None:
        status, result = await post(client, "filter", {"Pod": pod_json(), "NodeNames": []})
        assert (status, result["NodeNames"], result["Error"]) == (200, [], "")
        names = [f"n{i}" for i in range(20_000)] + ["idle"]
        status, result = await post(client, "filter", {"Pod": pod_json(), "NodeNames": names})
        assert status == 200
        assert result["NodeNames"] == ["idle"]
        assert len(result["FailedAndUnresolvableNodes"]) == 20_000


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
_mutated_requests = st.fixed_dictionaries({}, optional={
    "Pod": st.one_of(_json_values, st.just(pod_json()), st.builds(
        lambda m: pod_json(m), st.text(max_size=6))),
    "NodeNames": st.one_of(_json_values, st.lists(st.sampled_from(["idle", "busy", "x", ""]))),
    "Nodes": _json_values,
    "PodName": _json_values, "PodNamespace": _json_values, "PodUID": _json_values,
    "Node": _json_values,
    "NodeNameToMetaVictims": st.one_of(_json_values, st.just({"idle": {"Pods": [{"UID": "x"}]}})),
})


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verb=st.sampled_from(["filter", "prioritize", "bind", "preempt"]),
       body=st.one_of(_mutated_requests, _json_values, st.binary(max_size=40)))
async def test_fuzz_never_breaks_the_server(client: TestClient[Any, Any], verb: str,
                                            body: Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(f"/{verb}", data=data)
    assert response.status in (200, 400)
    reply = orjson.loads(await response.read())
    assert isinstance(reply, dict | list)
    # ...and a valid request right after still gets the right answer.
    status, result = await post(client, "filter", {"Pod": pod_json(), "NodeNames": ["idle"]})
    assert (status, result["NodeNames"]) == (200, ["idle"])


async def test_nothing_is_decided_before_the_first_listing() -> None:
    """A restarted extender must not place pods before it knows what bound pods hold."""
    view = view_of(device("idle", 0))
    server = ExtenderServer(view, binder=None, ready=lambda: False, clock=lambda: NOW)
    async with TestClient(TestServer(server.app())) as test_client:
        status, result = await post(test_client, "filter",
                                    {"Pod": pod_json(), "NodeNames": ["idle"]})
        assert (status, result["NodeNames"]) == (200, None)
        assert "still reading the cluster" in result["Error"]
        status, result = await post(test_client, "prioritize",
                                    {"Pod": pod_json(), "NodeNames": ["idle"]})
        assert status == 503
        status, result = await post(test_client, "bind", {
            "PodName": "p", "PodNamespace": "ns", "PodUID": "u1", "Node": "idle"})
        assert "still reading the cluster" in result["Error"]
        assert (await test_client.get("/readyz")).status == 503


def largest_filter_request(nodes: int = 20_000) -> bytes:
    """The largest filter body kube-scheduler sends at ``nodes`` nodes with nodeCacheCapable:
    every node name at the longest length the API server accepts (253) and a pod at the API
    server's object size limit (1.5 MiB, etcd's request limit); one node is a real one."""
    names = [f"{i:05d}-" + "n" * 247 for i in range(nodes - 1)] + ["idle"]
    pod = pod_json()
    container = pod["spec"]["containers"][0]
    container["args"] = ["a" * 1022] * 1536  # 1.5 MiB of arguments
    return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})


class TestBodyLimit:
    async def test_the_largest_20000_node_request_is_answered(
            self, client: TestClient[Any, Any]) -> None:
        from exo.gpu.extender.server import MAX_BODY_BYTES

        body = largest_filter_request()
        assert 6_000_000 < len(body) < MAX_BODY_BYTES
        status, result = await post(client, "filter", body)
        assert status == 200, result
        assert result["NodeNames"] == ["idle"]
        assert len(result["FailedAndUnresolvableNodes"]) == 19_999

    async def test_a_declared_body_over_the_limit_is_refused_unread(self, pki: ExtenderPki
                                                                     ) -> None:
        server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW,
                                max_body_bytes=64 * 1024)
        async with mutual_tls_client(server, pki) as test_client:
            status, result = await post(test_client, "filter", b" " * (64 * 1024 + 1))
            assert status == 413
            assert result["Error"] == ("exo-gpu: the filter request body (65537 bytes) is over "
                                       "the limit of 65536 bytes (--max-request-bytes)")
            status, result = await post(test_client, "filter",
                                        {"Pod": pod_json(), "NodeNames": ["idle"]})
            assert (status, result["NodeNames"]) == (200, ["idle"])  # the server carries on
            metrics = await (await test_client.get("/metrics")).text()
            assert 'exo_gpu_extender_errors_total{reason="too_large",verb="filter"} 1.0' \
                in metrics

    async def test_a_chunked_body_over_the_limit_is_refused(self, pki: ExtenderPki) -> None:
        server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW,
                                max_body_bytes=64 * 1024)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b" " * 8192

        async with mutual_tls_client(server, pki) as test_client:
            response = await test_client.post("/prioritize", data=chunks())
            assert response.status == 413
            assert "(chunked, more than that) is over the limit of 65536 bytes" in \
                (await response.json())["Error"]

    def test_the_limit_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="max_body_bytes: must be positive"):
            ExtenderServer(view_of(), binder=None, max_body_bytes=0)


class TestMutualTLS:
    async def test_without_a_client_certificate_only_health_is_served(
            self, pki: ExtenderPki) -> None:
        server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW)
        async with mutual_tls_client(server, pki, scheduler_ssl(pki, certificate=False)) as c:
            assert (await c.get("/healthz")).status == 200  # the kubelet's probes
            assert (await c.get("/readyz")).status == 200
            for verb in ("filter", "prioritize", "bind", "preempt"):
                status, result = await post(c, verb, {"Pod": pod_json(), "NodeNames": ["idle"]})
                assert status == 403, verb
                assert result["Error"] == (
                    "exo-gpu: a client certificate signed by the extender's client CA is "
                    "required (kube-scheduler's tlsConfig certFile and keyFile)")
            assert (await c.get("/metrics")).status == 403
            assert (await c.get("/nothing-here")).status == 403
        assert server.metrics.errors.labels("filter", "no_client_certificate")._value.get() == 1
        assert server.metrics.errors.labels("other", "no_client_certificate")._value.get() == 1

    async def test_a_certificate_from_another_ca_fails_the_handshake(
            self, pki: ExtenderPki, tmp_path: Path) -> None:
        import asyncio
        import ssl

        stranger = make_extender_pki(tmp_path / "other-ca")
        context = ssl.create_default_context(cafile=str(pki.ca_cert))  # trusts the server...
        context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
        server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW)
        async with mutual_tls_client(server, pki) as c:
            port = c.server.port
            assert port is not None
            # Even the open health path: the handshake itself is refused.
            assert await asyncio.to_thread(first_reply, context, port) == b""
            assert (await asyncio.to_thread(first_reply, scheduler_ssl(pki), port)
                    ).startswith(b"HTTP/1.1 200")

    async def test_only_the_named_client_is_admitted(self, pki: ExtenderPki,
                                                     tmp_path: Path) -> None:
        """A CA that signs other workloads' certificates too: --tls-client-name narrows."""
        tls = ServingTLS(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert),
                         client_names=["kube-scheduler"])
        server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW)
        async with mutual_tls_client(server, pki, tls=tls) as c:  # CN exo-gpu-scheduler
            status, result = await post(c, "filter", {"Pod": pod_json(), "NodeNames": ["idle"]})
            assert status == 403
            assert result["Error"] == ("exo-gpu: the client certificate's common name "
                                       "'exo-gpu-scheduler' is not one of kube-scheduler "
                                       "(--tls-client-name)")
        named = make_extender_pki(tmp_path / "named", client_name="kube-scheduler")
        tls = ServingTLS(str(named.server_cert), str(named.server_key), str(named.ca_cert),
                         client_names=["kube-scheduler"])
        async with mutual_tls_client(server, named, tls=tls) as c:
            status, result = await post(c, "filter", {"Pod": pod_json(), "NodeNames": ["idle"]})
            assert (status, result["NodeNames"]) == (200, ["idle"])

    async def test_start_site_serves_mutual_tls_and_no_plain_http(self, pki: ExtenderPki
                                                                  ) -> None:
        from exo.gpu.devcluster.cluster import free_port
        from exo.gpu.extender.server import start_site

        server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW)
        port = free_port()
        tls = ServingTLS(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
        runner = await start_site(server.app(), "127.0.0.1", port, tls)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"https://127.0.0.1:{port}/filter",
                                        ssl=scheduler_ssl(pki),
                                        json={"Pod": pod_json(), "NodeNames": ["idle"]}) as r:
                    assert r.status == 200
                    assert (await r.json())["NodeNames"] == ["idle"]
                async with session.post(f"https://127.0.0.1:{port}/filter",
                                        ssl=scheduler_ssl(pki, certificate=False),
                                        json={"Pod": pod_json(), "NodeNames": ["idle"]}) as r:
                    assert r.status == 403
                with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                    await session.get(f"http://127.0.0.1:{port}/healthz")
        finally:
            await runner.cleanup()

    async def test_a_renewed_certificate_is_served_without_a_restart(
            self, tmp_path: Path) -> None:
        import shutil
        import ssl

        served, renewal = tmp_path / "served", tmp_path / "renewal"
        first = make_extender_pki(served)
        second = make_extender_pki(renewal)  # what cert-manager or helm upgrade writes next
        tls = ServingTLS(str(first.server_cert), str(first.server_key), str(first.ca_cert))
        assert tls.reload_if_changed() is False  # nothing changed yet
        # A half-written renewal (new certificate, old key) is refused; the old one stays.
        shutil.copy(second.server_cert, first.server_cert)
        assert tls.reload_if_changed() is False
        for source, target in [(second.server_key, first.server_key),
                               (second.ca_cert, first.ca_cert)]:
            shutil.copy(source, target)
        assert tls.reload_if_changed() is True
        server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW)
        only_new = ssl.create_default_context(cafile=str(second.ca_cert))
        only_new.load_cert_chain(str(second.client_cert), str(second.client_key))
        async with mutual_tls_client(server, client_ssl=only_new, tls=tls) as c:
            status, result = await post(c, "filter", {"Pod": pod_json(), "NodeNames": ["idle"]})
            assert (status, result["NodeNames"]) == (200, ["idle"])


@pytest.mark.parametrize(("files", "plain", "message"), [
    ((None, None, None), False, "the extender serves mutual TLS: give --tls-cert, --tls-key "
                                "and --tls-client-ca"),
    (("c", None, None), False, "--tls-key, --tls-client-ca: required with --tls-cert"),
    (("c", "k", None), False, "--tls-client-ca: required with --tls-cert, --tls-key"),
    ((None, None, "ca"), False, "--tls-cert, --tls-key: required with --tls-client-ca"),
    (("c", "k", "ca"), True, "--plain-http: cannot be combined with --tls-cert, --tls-key, "
                             "--tls-client-ca"),
    ((None, None, None, ("exo-gpu-scheduler",)), True,
     "--plain-http: cannot be combined with --tls-client-name"),
    ((None, None, None, ("exo-gpu-scheduler",)), False,
     "the extender serves mutual TLS: give --tls-cert"),
])
def test_tls_flags_need_all_three_files_or_plain_http_by_name(
        files: tuple[Any, ...], plain: bool, message: str) -> None:
    from exo.gpu.extender.server import serving_tls

    names = files[3] if len(files) > 3 else ()
    with pytest.raises(ValueError) as raised:
        serving_tls(*files[:3], plain, names)
    assert str(raised.value).startswith(message)
    assert serving_tls(None, None, None, True) is None


@pytest.mark.parametrize("command", [["extender"], ["controller", "--extender-port", "9999"]])
def test_commands_refuse_to_serve_plain_http_unless_asked(command: list[str]) -> None:
    from click.testing import CliRunner

    from exo.gpu.cli import main

    result = CliRunner().invoke(main, [*command, "--kubeconfig", "/nonexistent"])
    assert result.exit_code == 2, result.output
    assert "the extender serves mutual TLS" in result.output
    result = CliRunner().invoke(main, [*command, "--tls-cert", "/nonexistent/c", "--tls-key",
                                       "/nonexistent/k", "--tls-client-ca", "/nonexistent/ca"])
    assert result.exit_code == 2, result.output
    assert "cannot load the TLS files" in result.output
