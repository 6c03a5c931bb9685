"""Bind: choose the device on the chosen node, reserve it, record it on the pod, then bind.

The choice and the reservation happen in one critical section of the view's lock (read, select,
commit), so two pods racing for the last free memory of a device can never both get it. Only
then does the API see anything, in one call: the Binding carries the device annotations
(``gpu.exo.dev/device``, ``gpu.exo.dev/device-uuid``, ``gpu.exo.dev/reserved-memory``) and the
API server copies a Binding's annotations onto the pod as it sets ``spec.nodeName``, so a pod is
never bound without its device nor annotated without its node, and the pod's uid is checked as a
precondition. If the call fails the reservation is released and the error goes back to
kube-scheduler, which retries the pod.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from exo.gpu.k8s.aioclient import ApiError, AsyncKubeClient
from exo.gpu.k8s.view import ClusterView, Reservation

from .filter import fit_request
from .wire import (
    ANNOTATION_DEVICE,
    ANNOTATION_DEVICE_UUID,
    ANNOTATION_RESERVED,
    BindArgs,
    PodRequest,
    parse_pod,
)

log = logging.getLogger(__name__)


class BindError(RuntimeError):
    """A bind that cannot go ahead; the message is returned to kube-scheduler."""


@dataclass(frozen=True, slots=True)
class Decision:
    reservation: Reservation
    uuids: tuple[str, ...]

    def annotations(self) -> dict[str, str]:
        return {
            ANNOTATION_DEVICE: ",".join(self.reservation.devices),
            ANNOTATION_DEVICE_UUID: ",".join(self.uuids),
            ANNOTATION_RESERVED: str(self.reservation.bytes_per_device),
        }


def reserve(view: ClusterView, pod: PodRequest, node: str, now: float) -> Decision:
    """Pick the pod's devices on ``node`` and commit their reservation, atomically.

    The choice is the core's (``ClusterState.choose``, as in the filter); the reservation takes
    over what the pod's workload planned for it there and what the pod held while pending.
    """
    request = fit_request(pod)
    with view.lock:
        held = view.reservations.get(pod.uid)
        if held is not None and held.bound:
            if held.node == node:  # a retried bind: keep what was chosen
                slots = view.node_slots(node)
                return Decision(held, tuple(_uuid(slots.get(d), d) for d in held.devices))
            view.release(pod.uid)
        choice = view.state.choose(node, request, now)
        if len(choice.devices) < request.devices:
            reasons = "; ".join(r.describe() for r in choice.rejections[:3]) or "no devices"
            raise BindError(f"no eligible GPU left on {node} for {pod.key}: {reasons}")
        chosen = choice.devices
        per_device = max(request.reserves(slot.total) for slot in chosen)
        reservation = Reservation(pod_uid=pod.uid, pod_key=pod.key, node=node,
                                  devices=tuple(slot.name for slot in chosen),
                                  bytes_per_device=per_device, workload=request.workload)
        view.commit(reservation)
        return Decision(reservation, tuple(_uuid(slot, slot.name) for slot in chosen))


def _uuid(slot: Any, fallback: str) -> str:
    return str(slot.uuid) if slot is not None and slot.uuid else fallback


class Binder:
    """The one place the extender writes to the API (asynchronously, on the server's loop)."""

    def __init__(self, view: ClusterView, client: AsyncKubeClient) -> None:
        self.view = view
        self.client = client

    async def bind(self, args: BindArgs, now: float, pod: PodRequest | None = None) -> Decision:
        """Reserve, then bind with the device annotations.

        ``pod`` is the request the filter already parsed for this pod; without it (the
        extender restarted between filter and bind) the pod is read from the API first.
        """
        if pod is None or pod.uid != args.pod_uid:
            pod = await self._read(args)
        before = self.view.reservations.get(pod.uid)
        decision = reserve(self.view, pod, args.node, now)
        path = (f"/api/v1/namespaces/{quote(args.pod_namespace, safe='')}/pods/"
                f"{quote(args.pod_name, safe='')}/binding")
        try:
            await self.client.request("POST", path, {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": args.pod_name, "namespace": args.pod_namespace,
                             "uid": args.pod_uid, "annotations": decision.annotations()},
                "target": {"apiVersion": "v1", "kind": "Node", "name": args.node}})
        except ApiError as error:
            self._undo(pod.uid, before)
            raise BindError(f"binding {pod.key} to {args.node}: {error}") from None
        except BaseException:
            self._undo(pod.uid, before)
            raise
        log.info("bound %s to %s on %s (%d bytes reserved per device)", pod.key,
                 ",".join(decision.reservation.devices), args.node,
                 decision.reservation.bytes_per_device)
        return decision

    def _undo(self, uid: str, before: Reservation | None) -> None:
        """The bind failed: the pod holds again what it held before (its planned memory while
        pending), or nothing."""
        with self.view.lock:
            if before is not None and not before.bound:
                self.view.commit(before)
            else:
                self.view.release(uid)

    async def _read(self, args: BindArgs) -> PodRequest:
        path = (f"/api/v1/namespaces/{quote(args.pod_namespace, safe='')}/pods/"
                f"{quote(args.pod_name, safe='')}")
        try:
            body = await self.client.request("GET", path)
        except ApiError as error:
            raise BindError(f"reading pod {args.pod_namespace}/{args.pod_name}: {error}"
                            ) from None
        pod = parse_pod(body)
        if pod.uid != args.pod_uid:
            raise BindError(f"pod {pod.key} has uid {pod.uid}, the scheduler asked to bind "
                            f"{args.pod_uid} (the pod was recreated)")
        return pod

    async def close(self) -> None:
        await self.client.close()
