"""The kopf wiring of the controller, and nothing else.

:func:`build_registry` connects kopf's events to a :class:`~.controller.Controller` on an explicit
``kopf.OperatorRegistry`` (nothing is registered globally, so two controllers can run in one test
process). Decisions are made in :mod:`.reconcile`, :mod:`.planning` and :mod:`.health`, and
performed by :class:`~.controller.Controller`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..k8s.models import GROUP, VERSION
from ..k8s.view import workload_key
from ..k8s.workload import PLURAL
from .controller import Controller
from .pods import LABEL_WORKLOAD

log = logging.getLogger(__name__)

__all__ = ["build_registry", "connection_info"]


def build_registry(controller: Controller) -> Any:
    """A ``kopf.OperatorRegistry`` with the controller's handlers (nothing global)."""
    import kopf

    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.event(*resource, registry=registry, id="workloads")
    def workloads(body: Mapping[str, Any], type: str | None, **_: Any) -> None:
        # Level-triggered: create (ADDED), resume (the initial listing, type None) and update
        # (MODIFIED with a new generation) all arrive here; the echo of our own status write is
        # skipped. No diff-base or progress annotations are written, and no finalizer is added:
        # pods go with the workload through their owner references.
        metadata = body.get("metadata") or {}
        uid = metadata.get("uid", "")
        if type == "DELETED":
            controller.forget_workload(uid, workload_key(metadata.get("namespace"),
                                                         metadata.get("name", "")))
            return
        controller.observe_workload(body)
        if controller.is_echo(body):
            return
        try:
            controller.reconcile(body)
        except Exception as error:  # the resync loop retries; other workloads go on
            log.warning("reconcile of %s failed (retried on resync): %s",
                        (body.get("metadata") or {}).get("name"), error)

    @kopf.on.event("", "v1", "pods", registry=registry, id="pods",
                   labels={LABEL_WORKLOAD: kopf.PRESENT})
    def pods(body: Mapping[str, Any], type: str | None, **_: Any) -> None:
        owner = controller.observe_pod(body, deleted=type == "DELETED")
        if owner is None:
            return
        workload = controller.workloads.get(owner)
        if workload is not None:
            try:
                controller.reconcile(workload)
            except Exception as error:
                log.warning("reconcile after a pod event failed: %s", error)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        return connection_info(controller.api.api_client)

    @kopf.on.startup(registry=registry)
    def startup(**_: Any) -> None:
        controller.start_loops()

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        controller.stop_loops()

    @kopf.on.probe(registry=registry, id="devices")
    def devices(**_: Any) -> int:
        return len(controller.view.devices)

    return registry


def connection_info(api_client: Any) -> Any:
    """kopf credentials from a ``kubernetes.client.ApiClient`` (one login for both clients)."""
    import kopf

    cfg = api_client.configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    token = auth.split(" ", 1)[1] if auth and auth.lower().startswith("bearer ") else auth
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file, token=token,
        scheme="Bearer" if token else None)
