"""The extender's HTTP server (aiohttp + orjson).

``POST /filter``, ``/prioritize``, ``/bind`` and ``/preempt`` speak the kube-scheduler extender
protocol; ``GET /healthz``, ``/readyz`` (ready once the view's first listing, and so the ledger,
is in) and ``/metrics``. A request that is not JSON gets HTTP 400 with ``{"Error": ...}``; a JSON
request of the wrong shape gets the verb's own error result (filter, bind) or 400 (prioritize and
preempt, whose replies have no error field), and the error is counted. Nothing a client sends can
crash or hang the server.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from exo.gpu.k8s.view import ClusterView

from .bind import Binder, BindError
from .filter import NodeVerdict, filter_nodes
from .metrics import ExtenderMetrics
from .preempt import preempt_nodes
from .prioritize import prioritize_nodes
from .wire import (
    PodRequest,
    WireError,
    binding_result,
    error_filter_result,
    filter_result,
    parse_bind_args,
    parse_filter_args,
    parse_preempt_args,
    preemption_result,
    priority_list,
)

log = logging.getLogger(__name__)

#: Largest request body accepted. A 5,000-node NodeList with full Node objects is a few MiB.
MAX_BODY_BYTES = 64 * 1024**2
#: Above Go's default idle-connection timeout (90 s): kube-scheduler reuses keep-alive
#: connections and does not retry a POST on a connection the server closed.
KEEPALIVE_TIMEOUT_S = 120.0
#: Verdicts kept from filter for the prioritize call that follows it, per pod.
VERDICT_CACHE_SIZE = 256

VIEW_KEY = web.AppKey("view", ClusterView)
METRICS_KEY = web.AppKey("metrics", ExtenderMetrics)


class NotSynced(RuntimeError):
    """The view has not finished its first listing."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class ExtenderServer:
    """Handlers bound to one view, one binder and one metrics registry."""

    def __init__(self, view: ClusterView, binder: Binder | None,
                 metrics: ExtenderMetrics | None = None,
                 ready: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.binder = binder
        self.metrics = metrics or ExtenderMetrics()
        self.ready = ready
        self.clock = clock
        #: What the filter saw of recent pods, by uid: the parsed request (so that bind needs
        #: no API read) and the verdicts with the view's generation (reused by prioritize while
        #: nothing changed).
        self._filtered: OrderedDict[str, tuple[PodRequest, int, dict[str, NodeVerdict]]] = \
            OrderedDict()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app[VIEW_KEY] = self.view
        app[METRICS_KEY] = self.metrics
        app.router.add_post("/filter", self.filter)
        app.router.add_post("/prioritize", self.prioritize)
        app.router.add_post("/bind", self.bind)
        app.router.add_post("/preempt", self.preempt)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_endpoint)
        return app

    # ------------------------------------------------------------------ verbs
    async def _serve(self, request: web.Request, verb: str,
                     decide: Callable[[Any], Awaitable[web.Response]],
                     error_reply: Callable[[str, int], web.Response]) -> web.Response:
        """Decode, decide, and turn every failure into the verb's own error reply, counted.

        ``error_reply(message, http_status)``: filter and bind answer 200 with their ``Error``
        field; prioritize, whose reply has no such field, answers ``http_status``.
        """
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            self.metrics.errors.labels(verb, "bad_request").inc()
            return _json({"Error": f"exo-gpu: request body is not JSON: {error}"}, 400)
        started = time.perf_counter()
        try:
            self._require_synced()
            response = await decide(body)
        except NotSynced as error:
            response = self._failed(verb, "not_synced", error_reply, str(error), 503)
        except WireError as error:
            response = self._failed(verb, "bad_request", error_reply,
                                    f"exo-gpu: bad {verb} request: {error}", 400)
        except BindError as error:
            response = self._failed(verb, "bind", error_reply, f"exo-gpu: {error}", 500)
        except Exception as error:  # never let one request take the server down
            log.exception("%s failed", verb)
            response = self._failed(verb, "internal", error_reply,
                                    f"exo-gpu: internal error: {error}", 500)
        self.metrics.latency.labels(verb).observe(time.perf_counter() - started)
        return response

    def _failed(self, verb: str, reason: str, error_reply: Callable[[str, int], web.Response],
                message: str, status: int) -> web.Response:
        self.metrics.errors.labels(verb, reason).inc()
        if verb == "bind":
            self.metrics.binds.labels("error").inc()
        return error_reply(message, status)

    async def filter(self, request: web.Request) -> web.Response:
        return await self._serve(request, "filter", self._filter,
                                 lambda message, _: _json(error_filter_result(message)))

    async def prioritize(self, request: web.Request) -> web.Response:
        return await self._serve(request, "prioritize", self._prioritize,
                                 lambda message, status: _json({"Error": message}, status))

    async def bind(self, request: web.Request) -> web.Response:
        return await self._serve(request, "bind", self._bind,
                                 lambda message, _: _json(binding_result(message)))

    async def preempt(self, request: web.Request) -> web.Response:
        return await self._serve(request, "preempt", self._preempt,
                                 lambda message, status: _json({"Error": message}, status))

    async def _preempt(self, body: Any) -> web.Response:
        args = parse_preempt_args(body)
        with self.view.lock:
            kept = preempt_nodes(self.view, args.pod, args.victims, self.clock())
        return _json(preemption_result(kept))

    async def _filter(self, body: Any) -> web.Response:
        args = parse_filter_args(body)
        with self.view.lock:
            outcome = filter_nodes(self.view, args.pod, args.node_names, self.clock())
            self._remember(args.pod, outcome.verdicts)
        self.metrics.nodes.labels("passed").inc(len(outcome.passed))
        self.metrics.nodes.labels("failed").inc(len(outcome.failed))
        self.metrics.nodes.labels("unresolvable").inc(len(outcome.unresolvable))
        return _json(filter_result(args, outcome.passed, outcome.failed, outcome.unresolvable))

    async def _prioritize(self, body: Any) -> web.Response:
        args = parse_filter_args(body)
        with self.view.lock:
            known = self._recall(args.pod.uid or args.pod.key)
            scores = prioritize_nodes(self.view, args.pod, args.node_names, self.clock(), known)
        return _json(priority_list(scores))

    async def _bind(self, body: Any) -> web.Response:
        args = parse_bind_args(body)
        if self.binder is None:
            raise BindError("this extender was started without API access: cannot bind")
        await self.binder.bind(args, self.clock(), self._filtered_pod(args.pod_uid))
        self.metrics.binds.labels("bound").inc()
        return _json(binding_result())

    def _require_synced(self) -> None:
        # Until the first listing is in, the ledger does not know what bound pods hold: a
        # device would look free that is not. Refuse rather than guess; kube-scheduler retries.
        if not self.ready():
            raise NotSynced("exo-gpu: the extender is still reading the cluster (devices and "
                            "bound pods); try again shortly")

    # ------------------------------------------------------------------ health
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ok")
        return web.Response(text="view not synced yet", status=503)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        self.metrics.reservations.set(len(self.view.reservations))
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------------ verdict cache
    def _remember(self, pod: PodRequest, verdicts: dict[str, NodeVerdict]) -> None:
        key = pod.uid or pod.key
        self._filtered[key] = (pod, self.view.generation, verdicts)
        self._filtered.move_to_end(key)
        while len(self._filtered) > VERDICT_CACHE_SIZE:
            self._filtered.popitem(last=False)

    def _recall(self, key: str) -> dict[str, NodeVerdict] | None:
        entry = self._filtered.get(key)
        if entry is None or entry[1] != self.view.generation:
            return None  # something changed since the filter: judge again
        return entry[2]

    def _filtered_pod(self, uid: str) -> PodRequest | None:
        entry = self._filtered.get(uid)
        return entry[0] if entry is not None else None


def ssl_context(cert_file: str | None, key_file: str | None) -> ssl.SSLContext | None:
    if not cert_file:
        return None
    if not key_file:
        raise ValueError("--tls-key: required with --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def start_site(app: web.Application, host: str, port: int,
                     tls: ssl.SSLContext | None = None) -> web.AppRunner:
    """Serve ``app`` on host:port; returns the runner (``await runner.cleanup()`` to stop)."""
    runner = web.AppRunner(app, keepalive_timeout=KEEPALIVE_TIMEOUT_S, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    return runner
