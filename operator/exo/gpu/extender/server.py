"""The extender's HTTP server (aiohttp + orjson).

``POST /filter``, ``/prioritize``, ``/bind`` and ``/preempt`` speak the kube-scheduler extender
protocol; ``GET /healthz``, ``/readyz`` (ready once the view's first listing, and so the ledger,
is in) and ``/metrics``. A request that is not JSON gets HTTP 400 with ``{"Error": ...}``; a JSON
request of the wrong shape gets the verb's own error result (filter, bind) or 400 (prioritize and
preempt, whose replies have no error field), and the error is counted. Nothing a client sends can
crash or hang the server.

Served with :class:`ServingTLS` (the default of every command that starts it), the extender speaks
mutual TLS: a caller presenting a certificate that its client CA did not sign fails the handshake,
and a caller presenting none gets only ``/healthz`` and ``/readyz`` (kubelet probes carry no
certificate); every other path answers 403. A body over ``max_body_bytes`` answers 413 before it is
read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from exo.gpu.k8s.view import ClusterView

from .bind import Binder, BindError, BindRefused
from .filter import NodeVerdict, filter_nodes
from .judged import SCHEDULER_NAME, Judged, bind_refusal
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

#: Largest request body accepted by default, in bytes (``--max-request-bytes``). The largest
#: filter or prioritize request kube-scheduler sends at 20,000 nodes with ``nodeCacheCapable`` is
#: 6,691,152 bytes (20,000 node names of the longest legal length, 253 characters, and a pod at
#: the API server's 1.5 MiB object limit; benchmarks/bench_request_size.py, docs/extender.md
#: "Request size"); 8 MiB leaves room above it.
MAX_BODY_BYTES = 8 * 1024**2
#: Paths answered to a caller without a client certificate: the kubelet's probes carry none.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: Seconds between checks of the certificate files for a renewal (cert-manager, helm upgrade).
TLS_RELOAD_INTERVAL_S = 30.0
#: Above Go's default idle-connection timeout (90 s): kube-scheduler reuses keep-alive
#: connections and does not retry a POST on a connection the server closed.
KEEPALIVE_TIMEOUT_S = 120.0
#: Verdicts kept from filter for the prioritize call that follows it, per pod.
VERDICT_CACHE_SIZE = 256

VIEW_KEY = web.AppKey("view", ClusterView)
METRICS_KEY = web.AppKey("metrics", ExtenderMetrics)


class NotSynced(RuntimeError):
    """The view has not finished its first listing."""


class BodyTooLarge(ValueError):
    """A request body over ``max_body_bytes`` (answered 413)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class ExtenderServer:
    """Handlers bound to one view, one binder and one metrics registry."""

    def __init__(self, view: ClusterView, binder: Binder | None,
                 metrics: ExtenderMetrics | None = None,
                 ready: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.time,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 scheduler_names: Collection[str] = (SCHEDULER_NAME,)) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes: must be positive, got {max_body_bytes}")
        if not scheduler_names:
            raise ValueError("scheduler_names: name at least one scheduler")
        self.view = view
        self.binder = binder
        self.metrics = metrics or ExtenderMetrics()
        self.ready = ready
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        #: What the filter saw of recent pods, by uid: the parsed request (so that bind needs
        #: no API read) and the verdicts with the view's generation (reused by prioritize while
        #: nothing changed).
        self._filtered: OrderedDict[str, tuple[PodRequest, int, dict[str, NodeVerdict]]] = \
            OrderedDict()
        #: The schedulers whose pods ``/bind`` binds (``--scheduler-name``).
        self.scheduler_names = frozenset(scheduler_names)
        #: What the filter judged, per pod (``/bind`` admission, preemption).
        self.judged = Judged()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
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
        try:
            raw = await self._read_body(request)
        except BodyTooLarge as error:
            self.metrics.errors.labels(verb, "too_large").inc()
            return _json({"Error": f"exo-gpu: the {verb} request body ({error}) is over the "
                                   f"limit of {self.max_body_bytes} bytes "
                                   "(--max-request-bytes)"}, 413)
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
        except BindRefused as error:
            response = self._failed(verb, "refused", error_reply, f"exo-gpu: {error}", 403)
        except BindError as error:
            response = self._failed(verb, "bind", error_reply, f"exo-gpu: {error}", 500)
        except Exception as error:  # never let one request take the server down
            log.exception("%s failed", verb)
            response = self._failed(verb, "internal", error_reply,
                                    f"exo-gpu: internal error: {error}", 500)
        self.metrics.latency.labels(verb).observe(time.perf_counter() - started)
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        """The body; refused unread when its declared length is over the limit."""
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise BodyTooLarge(f"{declared} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:  # no Content-Length: stopped at the limit
            raise BodyTooLarge("chunked, more than that") from None

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
        self.judged.remember(args.pod, outcome.passed, outcome.failed)
        self.metrics.nodes.labels("passed").inc(len(outcome.passed))
        self.metrics.nodes.labels("failed").inc(len(outcome.failed))
        self.metrics.nodes.labels("unresolvable").inc(len(outcome.unresolvable))
        # kube-scheduler's preemption cannot see GPU memory (docs/extender.md, "Preempt"): every
        # GPU failure is unresolvable to it, and exo-gpu's own preemption starts from `failed`.
        unresolvable = {**outcome.failed, **outcome.unresolvable} if outcome.failed else \
            outcome.unresolvable
        return _json(filter_result(args, outcome.passed, {}, unresolvable))

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
        judgement = self.judged.get(args.pod_uid)
        pod = judgement.pod if judgement is not None else await self.binder.read(args)
        refusal = bind_refusal(pod, self.scheduler_names, judgement is not None)
        if refusal is not None:
            raise BindRefused(refusal)
        await self.binder.bind(args, self.clock(), pod)
        self.judged.forget(args.pod_uid)  # bound: a second bind of it is refused
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


class ServingTLS:
    """The extender's side of mutual TLS: serving certificate, key and the client CA.

    Callers must present a certificate signed by ``client_ca_file`` to use anything but
    ``OPEN_PATHS``, and, when ``client_names`` is given, one whose subject common name is among
    them (a CA that signs for other workloads too then still admits kube-scheduler alone). The
    three files are read again when their content changes (checked every
    ``TLS_RELOAD_INTERVAL_S`` while serving), so a renewed certificate (cert-manager, or the
    chart's on ``helm upgrade``) is served without a restart; a renewal that fails to load is
    logged and the previous certificate kept. OpenSSL only adds CAs to a live context: a replaced
    client CA stays trusted until the process restarts (docs/security.md: rotating the CA).
    """

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str,
                 client_names: Iterable[str] = ()) -> None:
        self.files = (Path(cert_file), Path(key_file), Path(client_ca_file))
        self.client_names = frozenset(client_names)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # Optional at the TLS layer so that kubelet probes reach OPEN_PATHS; a certificate that
        # is presented must chain to the client CA, and require_client_certificates refuses
        # every other path without one.
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self._digest = ""
        self._load(self.context)

    def _read(self) -> tuple[bytes, ...]:
        return tuple(path.read_bytes() for path in self.files)

    def _load(self, context: ssl.SSLContext) -> None:
        cert, key, client_ca = self.files
        digest = hashlib.sha256(b"".join(self._read())).hexdigest()
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(cafile=str(client_ca))
        self._digest = digest

    def reload_if_changed(self) -> bool:
        """Load the files again if their content changed; True when it did and loaded."""
        try:
            if hashlib.sha256(b"".join(self._read())).hexdigest() == self._digest:
                return False
            # Check the new files on a scratch context first: a certificate whose key does not
            # match would otherwise leave the live context half-updated.
            self._load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
            self._load(self.context)
        except (OSError, ssl.SSLError, ValueError) as error:
            log.warning("extender TLS files changed but cannot be loaded (%s); keeping the "
                        "previous certificate", error)
            return False
        log.info("extender TLS certificate reloaded from %s", self.files[0])
        return True


def serving_tls(cert_file: str | None, key_file: str | None, client_ca_file: str | None,
                plain_http: bool, client_names: Iterable[str] = ()) -> ServingTLS | None:
    """The TLS of the command-line flags: all three files, or plain HTTP asked for by name."""
    given = {"--tls-cert": cert_file, "--tls-key": key_file, "--tls-client-ca": client_ca_file,
             "--tls-client-name": ",".join(client_names)}
    if plain_http:
        if any(given.values()):
            raise ValueError("--plain-http: cannot be combined with "
                             + ", ".join(flag for flag, value in given.items() if value))
        return None
    missing = [flag for flag, value in given.items()
               if not value and flag != "--tls-client-name"]
    if len(missing) == 3:
        raise ValueError("the extender serves mutual TLS: give --tls-cert, --tls-key and "
                         "--tls-client-ca (the CA of kube-scheduler's client certificate), or "
                         "--plain-http to serve unauthenticated HTTP")
    if missing:
        raise ValueError(f"{', '.join(missing)}: required with "
                         + ", ".join(flag for flag, value in given.items() if value))
    assert cert_file and key_file and client_ca_file
    return ServingTLS(cert_file, key_file, client_ca_file, client_names)


def _common_name(certificate: dict[str, Any]) -> str:
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _client_certificate_gate(metrics: ExtenderMetrics, tls: ServingTLS) -> Any:
    known = {"/filter", "/prioritize", "/bind", "/preempt", "/metrics"}

    @web.middleware
    async def require_client_certificate(request: web.Request, handler: Any) -> Any:
        if request.path in OPEN_PATHS:
            return await handler(request)
        ssl_object = request.transport.get_extra_info("ssl_object") \
            if request.transport is not None else None
        certificate = ssl_object.getpeercert() if ssl_object is not None else None
        verb = request.path.strip("/") if request.path in known else "other"
        if not certificate:
            metrics.errors.labels(verb, "no_client_certificate").inc()
            return _json({"Error": "exo-gpu: a client certificate signed by the extender's "
                                   "client CA is required (kube-scheduler's tlsConfig certFile "
                                   "and keyFile)"}, 403)
        name = _common_name(certificate)
        if tls.client_names and name not in tls.client_names:
            metrics.errors.labels(verb, "client_not_allowed").inc()
            return _json({"Error": f"exo-gpu: the client certificate's common name {name!r} "
                                   "is not one of "
                                   f"{', '.join(sorted(tls.client_names))} (--tls-client-name)"},
                         403)
        return await handler(request)

    return require_client_certificate


def require_client_certificates(app: web.Application, tls: ServingTLS) -> None:
    """Make ``app`` refuse callers without a client certificate (all but ``OPEN_PATHS``) and
    reload ``tls``'s files while it runs. Call before the app is served."""
    app.middlewares.append(_client_certificate_gate(app[METRICS_KEY], tls))

    async def watch_certificates(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(TLS_RELOAD_INTERVAL_S)
                tls.reload_if_changed()

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()

    app.cleanup_ctx.append(watch_certificates)


async def start_site(app: web.Application, host: str, port: int,
                     tls: ServingTLS | None = None) -> web.AppRunner:
    """Serve ``app`` on host:port; returns the runner (``await runner.cleanup()`` to stop).

    With ``tls``: mutual TLS (:func:`require_client_certificates`); without: plain HTTP.
    """
    if tls is not None:
        require_client_certificates(app, tls)
    runner = web.AppRunner(app, keepalive_timeout=KEEPALIVE_TIMEOUT_S, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.context if tls else None)
    await site.start()
    return runner
