"""Keep a ``ClusterView`` in step with the API server: list, then watch, in background threads.

Scoring must never wait on the network, so the extender and the controller read the view and this
module refreshes it: one thread per resource (GPUDevices, Pods) lists everything (rebuilding the
view, including the allocation ledger, from the API), then watches from that resource version.
A lost or expired watch (410 Gone, a dropped connection, the API server restarting) is answered
by a fresh list, so the view converges whatever happened in between. ``synced`` is set once both
first listings are in: nothing may be bound before the ledger has been rebuilt.

A third thread follows the Nodes' labels (their network domains: zone, rack, block). It is not
part of ``synced``: without it (no RBAC to list nodes) every decision but topology packing works.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .models import GROUP, VERSION
from .view import ClusterView

log = logging.getLogger(__name__)

#: Server-side watch timeout: long enough to avoid churn, short enough that a silently dead
#: connection is noticed within minutes (kopf's most reported failure is a watch that stopped).
WATCH_TIMEOUT_S = 300
#: Client-side read timeout, a little above the server's.
CLIENT_TIMEOUT_S = WATCH_TIMEOUT_S + 30
RETRY_DELAY_S = 1.0


def freeze_long_lived() -> None:
    """Move what the first listing built out of the garbage collector's sight.

    A full collection over the objects of thousands of devices pauses the process for tens of
    milliseconds, which would land on some scheduler request; frozen objects are never scanned.
    Call once, after the first sync.
    """
    gc.collect()
    gc.freeze()


class Informer:
    """Feeds ``view`` from GPUDevice and Pod watches until ``stop()``."""

    def __init__(self, view: ClusterView, api_client: Any) -> None:
        self.view = view
        self.api_client = api_client
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._listed: set[str] = set()
        self._threads: list[threading.Thread] = []
        self.restarts = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Informer:
        for name, target in (("gpudevices", self._run_devices), ("pods", self._run_pods),
                             ("nodes", self._run_nodes)):
            thread = threading.Thread(target=target, name=f"informer-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    def _mark_listed(self, what: str) -> None:
        self._listed.add(what)
        if self._listed >= {"gpudevices", "pods"}:
            self.synced.set()

    # ------------------------------------------------------------------ resources
    def _run_devices(self) -> None:
        from kubernetes import client

        api = client.CustomObjectsApi(self.api_client)

        def list_all(**kw: Any) -> Any:
            return api.list_cluster_custom_object(GROUP, VERSION, "gpudevices", **kw)

        def on_list(items: Iterable[Mapping[str, Any]]) -> None:
            items = list(items)
            names = {item["metadata"]["name"] for item in items}
            for gone in [n for n in self.view.devices if n not in names]:
                self.view.remove_device(gone)
            for item in items:
                self.view.apply_device(item)

        def on_event(kind: str, obj: Mapping[str, Any]) -> None:
            if kind == "DELETED":
                self.view.remove_device(obj["metadata"]["name"])
            else:
                self.view.apply_device(obj)

        self._loop("gpudevices", list_all, on_list, on_event)

    def _run_pods(self) -> None:
        from kubernetes import client

        api = client.CoreV1Api(self.api_client)

        def list_all(**kw: Any) -> Any:
            return api.list_pod_for_all_namespaces(**kw)

        def on_event(kind: str, obj: Mapping[str, Any]) -> None:
            if kind == "DELETED":
                self.view.remove_pod(obj)
            else:
                self.view.apply_pod(obj)

        self._loop("pods", list_all, self.view.resync_pods, on_event)

    def _run_nodes(self) -> None:
        from kubernetes import client

        api = client.CoreV1Api(self.api_client)

        def list_all(**kw: Any) -> Any:
            return api.list_node(**kw)

        def on_event(kind: str, obj: Mapping[str, Any]) -> None:
            if kind == "DELETED":
                self.view.remove_node((obj.get("metadata") or {}).get("name", ""))
            else:
                self.view.apply_node(obj)

        self._loop("nodes", list_all, self.view.resync_nodes, on_event)

    # ------------------------------------------------------------------ list + watch
    def _loop(
        self,
        what: str,
        list_all: Callable[..., Any],
        on_list: Callable[[Iterable[Mapping[str, Any]]], None],
        on_event: Callable[[str, Mapping[str, Any]], None],
    ) -> None:
        import json

        from kubernetes import watch

        while not self._stop.is_set():
            try:
                # Read as plain JSON: no client model objects are built for thousands of items.
                response = list_all(_preload_content=False, _request_timeout=CLIENT_TIMEOUT_S)
                listing = json.loads(response.data)
                on_list(listing.get("items") or [])
                self._mark_listed(what)
                version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    list_all,
                    resource_version=version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    allow_watch_bookmarks=True,
                    _request_timeout=CLIENT_TIMEOUT_S,
                    deserialize=False,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    kind, obj = event["type"], event["object"]  # plain dicts (deserialize=False)
                    if kind == "ERROR":
                        break  # usually 410 Gone: list again
                    if kind != "BOOKMARK":
                        on_event(kind, obj)
            except Exception as error:  # a dropped connection, the API server restarting
                self.restarts += 1
                log.warning("%s watch failed (%s); listing again", what, error)
                self._stop.wait(RETRY_DELAY_S)
                continue
            time.sleep(0)  # watch ended normally (server timeout): list again
