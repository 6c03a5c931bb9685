"""The extender's HTTP server: exact verbs, health, metrics, and no crash on any input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exo.gpu.extender.server import ExtenderServer
from test_extender_policy import NOW, device, view_of

GIB = 1024**3


def pod_json(min_memory: str | None = "8Gi", uid: str = "u1") -> dict[str, Any]:
    annotations = {"gpu.exo.dev/min-memory": min_memory} if min_memory else {}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": uid,
                         "annotations": annotations},
            "spec": {"containers": [{"name": "c", "resources": {
                "limits": {"gpu.exo.dev/gpu": "1"}}}]}}


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    view = view_of(device("busy", 0, util=95, used=60 * GIB), device("idle", 0, util=5),
                   device("hot", 0, temp=93))
    server = ExtenderServer(view, binder=None, clock=lambda: NOW)
    async with TestClient(TestServer(server.app())) as test_client:
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


async def test_serves_https_when_given_a_certificate(tmp_path: Path) -> None:
    import ssl

    import aiohttp

    from exo.gpu.devcluster.cluster import free_port
    from exo.gpu.devcluster.pki import make_pki
    from exo.gpu.extender.server import ssl_context, start_site

    pki = make_pki(tmp_path)  # a CA and a serving certificate for 127.0.0.1
    server = ExtenderServer(view_of(device("idle", 0)), binder=None, clock=lambda: NOW)
    port = free_port()
    runner = await start_site(server.app(), "127.0.0.1", port,
                              ssl_context(str(pki.server_cert), str(pki.server_key)))
    try:
        trusted = ssl.create_default_context(cafile=str(pki.ca_cert))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://127.0.0.1:{port}/filter", ssl=trusted,
                                    json={"Pod": pod_json(), "NodeNames": ["idle"]}) as reply:
                assert reply.status == 200
                assert (await reply.json())["NodeNames"] == ["idle"]
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                await session.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        await runner.cleanup()


def test_tls_needs_both_files() -> None:
    from exo.gpu.extender.server import ssl_context

    assert ssl_context(None, None) is None
    with pytest.raises(ValueError, match="--tls-key"):
        ssl_context("cert.pem", None)
