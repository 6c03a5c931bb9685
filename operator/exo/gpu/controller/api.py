"""The controller's only contact with the API server: status writes, pods, Events and the Lease.

Everything here is a thin, synchronous wrapper over ``kubernetes.client`` (kopf runs synchronous
handlers in its thread pool), with the rules of DESIGN.md section 11 applied once:

- status writes that share an object with another writer (GPUDevice conditions, which the
  exporter writes too) read fresh, compute, and write with the ``resourceVersion`` as a
  precondition; a 409 means someone wrote in between, so the next attempt starts from a fresh read;
- pod creation is idempotent (names are deterministic; 409 AlreadyExists is success), deletion is
  guarded by the pod's uid so a newer pod of the same name is never removed by mistake;
- one controller replica acts: :class:`LeaseElector` holds a ``coordination.k8s.io/v1`` Lease and
  says ``is_leader`` only while its last successful renewal is younger than the lease duration
  minus a safety margin, measured on the local monotonic clock (so a paused or partitioned
  replica stops acting before another one can take over).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..k8s.models import GROUP, VERSION
from ..k8s.workload import PLURAL

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5
EVENT_COMPONENT = "exo-gpu-controller"


def _api_exception() -> type[Exception]:
    from kubernetes.client.rest import ApiException

    return ApiException  # type: ignore[no-any-return]


def _status(error: Exception) -> int | None:
    return getattr(error, "status", None)


class ControllerAPI:
    """Requests the controller makes, over one ``kubernetes.client.ApiClient``."""

    def __init__(self, api_client: Any, instance: str = "controller") -> None:
        from kubernetes import client

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.instance = instance
        self.writes = 0
        self.conflicts = 0

    # ------------------------------------------------------------------ GPUWorkload
    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name)
            return obj
        except _api_exception() as error:
            if _status(error) == 404:
                return None
            raise

    def patch_workload_status(self, namespace: str, name: str, status: Mapping[str, Any],
                              uid: str | None = None) -> dict[str, Any] | None:
        """Merge-patch ``status`` (lists are replaced whole). Returns the object, None if gone.

        With ``uid`` the patch applies only to that incarnation of the object.
        """
        body: dict[str, Any] = {"status": dict(status)}
        if uid:
            body["metadata"] = {"uid": uid}
        try:
            obj: dict[str, Any] = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body)
            self.writes += 1
            return obj
        except _api_exception() as error:
            if _status(error) in (404, 409):  # gone, or replaced by a new object of that name
                return None
            raise

    # ------------------------------------------------------------------ GPUDevice
    def update_device_status(
        self, name: str,
        compute: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Read the device, let ``compute`` return its new ``status`` (None: nothing to do), and
        write it with the read ``resourceVersion``; on 409 start again from a fresh read."""
        for _ in range(CONFLICT_RETRIES):
            try:
                obj: dict[str, Any] = self.custom.get_cluster_custom_object(
                    GROUP, VERSION, "gpudevices", name)
            except _api_exception() as error:
                if _status(error) == 404:
                    return None
                raise
            status = compute(obj)
            if status is None:
                return None
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "status": status}
            try:
                written: dict[str, Any] = self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, "gpudevices", name, body)
                self.writes += 1
                return written
            except _api_exception() as error:
                if _status(error) == 409:
                    self.conflicts += 1
                    continue
                if _status(error) == 404:
                    return None
                raise
        log.warning("GPUDevice %s: gave up after %d conflicting writes", name, CONFLICT_RETRIES)
        return None

    def patch_device_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the controller's own status fields (score, allocation) of a device."""
        try:
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, "gpudevices", name, {"status": dict(status)})
            self.writes += 1
        except _api_exception() as error:
            if _status(error) != 404:  # the device went away meanwhile
                raise

    # ------------------------------------------------------------------ pods
    def create_pod(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a pod; False when one of that name already exists (idempotent create)."""
        try:
            self.core.create_namespaced_pod(namespace, body)
            self.writes += 1
            return True
        except _api_exception() as error:
            if _status(error) == 409:
                return False
            raise

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        from kubernetes import client

        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
            propagation_policy="Background")
        try:
            self.core.delete_namespaced_pod(name, namespace, body=options)
            self.writes += 1
        except _api_exception() as error:
            if _status(error) not in (404, 409):
                raise

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        import json

        response = self.core.list_namespaced_pod(namespace, label_selector=label_selector,
                                                 _preload_content=False)
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        return items

    # ------------------------------------------------------------------ events
    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        """A core/v1 Event about ``involved`` (an object with apiVersion, kind, metadata).

        Best effort: an Event that cannot be written is logged, never raised.
        """
        from kubernetes import client

        metadata = involved.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{metadata.get('name', 'x')[:200]}."),
            involved_object=client.V1ObjectReference(
                api_version=involved.get("apiVersion"), kind=involved.get("kind"),
                name=metadata.get("name"), namespace=metadata.get("namespace"),
                uid=metadata.get("uid"), resource_version=metadata.get("resourceVersion")),
            type=type_, reason=reason, message=message[:1024],
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component=EVENT_COMPONENT),
            reporting_component=EVENT_COMPONENT, reporting_instance=self.instance)
        try:
            self.core.create_namespaced_event(namespace, event)
        except Exception as error:  # events are advisory
            log.warning("event %s on %s not written: %s", reason, metadata.get("name"), error)


# --------------------------------------------------------------------------------------------
# leader election
# --------------------------------------------------------------------------------------------


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Holds a ``coordination.k8s.io/v1`` Lease; only the holder acts.

    ``is_leader`` is True only while the last successful acquire/renew is younger than
    ``lease_duration - renew_margin`` on the monotonic clock. A candidate takes an expired Lease
    over with an update carrying the resourceVersion it read, so two candidates racing for it
    cannot both win (one gets 409).
    """

    def __init__(self, api_client: Any, namespace: str, name: str, identity: str, *,
                 lease_duration: float = 15.0, renew_interval: float = 5.0,
                 renew_margin: float = 3.0,
                 on_lost: Callable[[], None] | None = None) -> None:
        from kubernetes import client

        if not renew_interval + renew_margin < lease_duration:
            raise ValueError("renew_interval + renew_margin must be below lease_duration")
        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration = lease_duration
        self.renew_interval = renew_interval
        self.renew_margin = renew_margin
        self.on_lost = on_lost
        self._held_since: float | None = None  # monotonic time of the last successful write
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.transitions = 0

    @property
    def is_leader(self) -> bool:
        held = self._held_since
        return held is not None and \
            time.monotonic() - held < self.lease_duration - self.renew_margin

    # ------------------------------------------------------------------ one attempt
    def try_acquire(self) -> bool:
        """One acquire-or-renew attempt; True when this identity holds the Lease now."""
        from kubernetes import client

        ApiException = _api_exception()
        started = time.monotonic()
        now = datetime.now(UTC)
        spec = {"holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.lease_duration),
                "renewTime": _micro_time(now)}
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if _status(error) != 404:
                self._lost()
                return False
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name),
                                  spec={**spec, "acquireTime": _micro_time(now),
                                        "leaseTransitions": 0})
            try:
                self.api.create_namespaced_lease(self.namespace, body)
            except ApiException:
                self._lost()
                return False
            self._won(started)
            return True
        except Exception:
            self._lost()
            return False
        holder = lease.spec.holder_identity if lease.spec else None
        renew = lease.spec.renew_time if lease.spec else None
        duration = (lease.spec.lease_duration_seconds if lease.spec else None) or \
            self.lease_duration
        expired = renew is None or (now - renew).total_seconds() > duration
        if holder != self.identity and holder and not expired:
            self._lost()
            return False
        transitions = (lease.spec.lease_transitions or 0) if lease.spec else 0
        body_spec = dict(spec)
        if holder != self.identity:
            body_spec["acquireTime"] = _micro_time(now)
            body_spec["leaseTransitions"] = transitions + 1
        body = {"metadata": {"resourceVersion": lease.metadata.resource_version},
                "spec": body_spec}
        try:
            self.api.patch_namespaced_lease(self.name, self.namespace, body)
        except Exception:
            self._lost()
            return False
        self._won(started)
        return True

    def _won(self, started: float) -> None:
        if self._held_since is None:
            self.transitions += 1
            log.info("leader: %s holds Lease %s/%s", self.identity, self.namespace, self.name)
        self._held_since = started  # measured from before the request: conservative

    def _lost(self) -> None:
        """A failed attempt: leadership lasts until the last renewal runs out, then ends."""
        if self._held_since is not None and not self.is_leader:
            self._held_since = None
            log.warning("leader: %s lost Lease %s/%s", self.identity, self.namespace, self.name)
            if self.on_lost is not None:
                self.on_lost()

    def release(self) -> None:
        """Give the Lease up (on a clean stop) so another replica takes over at once."""
        if self._held_since is None:
            return
        self._held_since = None
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                self.api.patch_namespaced_lease(self.name, self.namespace, {
                    "metadata": {"resourceVersion": lease.metadata.resource_version},
                    "spec": {"holderIdentity": None, "renewTime": None}})
        except Exception as error:
            log.warning("Lease %s/%s not released: %s", self.namespace, self.name, error)

    # ------------------------------------------------------------------ background
    def start(self) -> LeaseElector:
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_interval + 5)
        if release:
            self.release()

    def wait_leader(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if self.is_leader:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._stop.wait(0.2)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.try_acquire()
            self._stop.wait(self.renew_interval if self.is_leader else
                            min(self.renew_interval, 2.0))
