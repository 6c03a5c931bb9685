"""HTTP endpoints of the exporter: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the poll loop keeps completing cycles (a wedged loop makes the
kubelet restart the pod); ``/readyz`` answers 200 once the backend discovered its devices and the
API objects were listed. A scrape renders the latest samples from memory and never calls the
backend, so Prometheus can scrape as often as it likes without touching the hardware.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .agent import DeviceAgent


def make_app(agent: DeviceAgent) -> web.Application:
    registry = agent.metrics.registry

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if agent.alive():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="poll loop stalled\n")

    async def readyz(_: web.Request) -> web.Response:
        if agent.ready:
            return web.Response(text="ok\n")
        missing = []
        if agent.present is None:
            missing.append("no successful device discovery yet")
        if not agent.listed:
            missing.append("GPUDevice objects not listed yet")
        return web.Response(status=503, text="; ".join(missing) + "\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_server(agent: DeviceAgent, host: str, port: int) -> web.AppRunner:
    """Start serving; the caller awaits ``runner.cleanup()`` on shutdown."""
    runner = web.AppRunner(make_app(agent), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
