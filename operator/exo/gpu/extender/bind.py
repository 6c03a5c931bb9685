"""Bind: choose the device on the chosen node, reserve it, record it on the pod, then bind.

The choice and the reservation happen in one critical section of the view's lock (read, select,
commit), so two pods racing for the last free memory of a device can never both get it. Only
then does the API see anything, in one call: the Binding carries the device annotations
(``gpu.exo.dev/device``, ``gpu.exo.dev/device-uuid``, ``gpu.exo.dev/reserved-memory``) and the
API server copies a Binding's annotations onto the pod as it sets ``spec.nodeName``, so a pod is
never bound without its device nor annotated without its node, and the pod's uid is checked as a
precondition.

Bind is exact: a Binding the API server refused is undone (the reservation released, or a
planned pod's pending hold restored) and the error goes back to kube-scheduler, which retries
the pod. A failure that may hide an applied Binding (the answer lost: no answer, a timeout, a
5xx, or 409 because the pod is already bound) is settled by reading the pod back
(:meth:`Binder.settle`): bound where this bind put it, the reservation is kept and the bind
reported done; bound elsewhere, what the pod's annotations say is held instead; not bound, it is
undone. If the pod cannot be read back either, the reservation is kept: holding memory a pod may
not use never over-commits a device, and the pod's next bind (its own reservation is its to take,
``filter.own_hold``) or its deletion settles it. Which pods may be bound at all is
``judged.bind_refusal``'s decision, asked by the server before :meth:`Binder.bind`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from exo.gpu.k8s.aioclient import ApiError, AsyncKubeClient
from exo.gpu.k8s.view import ANNOTATION_LINKS, ClusterView, Reservation
from exo.gpu.topology import SetScore

from .filter import fit_request, own_hold
from .wire import (
    ANNOTATION_DEVICE,
    ANNOTATION_DEVICE_UUID,
    ANNOTATION_RESERVED,
    BindArgs,
    PodRequest,
    parse_pod,
)

log = logging.getLogger(__name__)


#: Attempts and seconds per attempt to read a pod back after a bind whose answer was lost.
READ_BACK_ATTEMPTS = 3
READ_BACK_TIMEOUT_S = 2.0


class BindError(RuntimeError):
    """A bind that cannot go ahead; the message is returned to kube-scheduler."""


class BindRefused(BindError):
    """A bind of a pod exo-gpu must not bind (``judged.bind_refusal``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    reservation: Reservation
    uuids: tuple[str, ...]
    #: A set's links (several devices): written as ``gpu.exo.dev/device-links``.
    links: SetScore | None = None

    def annotations(self) -> dict[str, str]:
        out = {
            ANNOTATION_DEVICE: ",".join(self.reservation.devices),
            ANNOTATION_DEVICE_UUID: ",".join(self.uuids),
            ANNOTATION_RESERVED: str(self.reservation.bytes_per_device),
        }
        if self.links is not None:
            out[ANNOTATION_LINKS] = self.links.describe()[:4096]
        return out


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
        choice = view.state.choose(node, request, now, without=own_hold(view, pod))
        if len(choice.devices) < request.devices:
            reasons = "; ".join(r.describe() for r in choice.rejections[:3]) or "no devices"
            raise BindError(f"no eligible GPU left on {node} for {pod.key}: {reasons}")
        chosen = choice.devices
        per_device = max(request.reserves(slot.total) for slot in chosen)
        reservation = Reservation(pod_uid=pod.uid, pod_key=pod.key, node=node,
                                  devices=tuple(slot.name for slot in chosen),
                                  bytes_per_device=per_device, workload=request.workload)
        view.commit(reservation)
        return Decision(reservation, tuple(_uuid(slot, slot.name) for slot in chosen),
                        choice.links)


def maybe_applied(error: ApiError) -> bool:
    """Whether a failed Binding may have been applied all the same: no answer (0), the server's
    trouble (5xx), or 409 (the pod is already bound, perhaps by this very bind's lost answer).
    Other refusals (403, 404, 422, 429) are final."""
    return error.status == 0 or error.status >= 500 or error.status == 409


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
            pod = await self.read(args)
        before = self.view.reservations.get(pod.uid)
        decision = reserve(self.view, pod, args.node, now)
        path = (f"/api/v1/namespaces/{quote(args.pod_namespace, safe='')}/pods/"
                f"{quote(args.pod_name, safe='')}/binding")
        # Cancelled mid-call, the Binding may or may not be applied: the reservation stays (see
        # the module docstring) and the pod's next bind or its deletion settles it.
        try:
            await self.client.request("POST", path, {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": args.pod_name, "namespace": args.pod_namespace,
                             "uid": args.pod_uid, "annotations": decision.annotations()},
                "target": {"apiVersion": "v1", "kind": "Node", "name": args.node}})
        except ApiError as error:
            if not maybe_applied(error):
                self._undo(pod.uid, before)
                raise BindError(f"binding {pod.key} to {args.node}: {error}") from None
            return await self.settle(args, pod, decision, before, error)
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

    async def settle(self, args: BindArgs, pod: PodRequest, decision: Decision,
                     before: Reservation | None, error: ApiError) -> Decision:
        """After a Binding whose answer was lost: read the pod back and keep what is true."""
        failed = f"binding {pod.key} to {args.node}: {error}"
        try:
            body = await self._get_pod(args, READ_BACK_ATTEMPTS)
        except ApiError as read_error:
            if read_error.status == 404:
                self._undo(pod.uid, before)
                raise BindError(f"{failed}; the pod is gone") from None
            log.warning("%s; reading it back failed (%s): its reservation is kept until the pod "
                        "is bound again or gone", failed, read_error)
            raise BindError(f"{failed}; reading it back failed ({read_error}): the reservation "
                            "is kept until the pod is bound again or gone") from None
        metadata = body.get("metadata") or {}
        node = (body.get("spec") or {}).get("nodeName")
        devices = (metadata.get("annotations") or {}).get(ANNOTATION_DEVICE)
        if metadata.get("uid") == pod.uid and node == args.node and \
                devices == ",".join(decision.reservation.devices):
            log.warning("binding %s to %s: the answer was lost (%s) but the API server applied "
                        "it; reservation kept", pod.key, args.node, error)
            return decision
        with self.view.lock:
            self._undo(pod.uid, before)
            if node and metadata.get("uid") == pod.uid:
                self.view.apply_pod(body)  # bound by another bind: hold what the pod says
        where = f"; the pod is bound to {node}" if node else "; the pod is not bound"
        raise BindError(failed + where)

    async def _get_pod(self, args: BindArgs, attempts: int = 1) -> Mapping[str, Any]:
        path = (f"/api/v1/namespaces/{quote(args.pod_namespace, safe='')}/pods/"
                f"{quote(args.pod_name, safe='')}")
        for attempt in range(attempts):
            try:
                body = await asyncio.wait_for(self.client.request("GET", path),
                                              READ_BACK_TIMEOUT_S)
                return dict(body)
            except TimeoutError:
                error = ApiError(0, "Timeout", f"GET {path}: no answer within "
                                               f"{READ_BACK_TIMEOUT_S} s")
            except ApiError as failure:
                if not failure.retriable:
                    raise
                error = failure
            if attempt + 1 < attempts:
                await asyncio.sleep(0.1 * 3**attempt)
        raise error

    async def read(self, args: BindArgs) -> PodRequest:
        """The pod named by a bind request, read from the API (its uid checked)."""
        try:
            body = await self._get_pod(args)
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
