"""The exporter's only contact with the Kubernetes API: GPUDevice CRUD.

The exporter needs six requests on one resource, spoken directly over the project's small
aiohttp client (``exo.gpu.k8s.aioclient``) rather than the generated ``kubernetes`` client, which
would add about 13 MiB to an agent that runs on every GPU node under a 60 MiB budget: list by node
label, get, create, merge-patch of the spec, replace of ``/status`` with the resourceVersion the
caller read (so a concurrent writer causes a 409 instead of a lost update) and delete with a UID
precondition (so a re-created object is never deleted by mistake).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from exo.gpu.k8s.aioclient import (
    ApiError,
    AsyncKubeClient,
    Conflict,
    KubeConfig,
    NotFound,
)
from exo.gpu.k8s.models import API_VERSION, LABEL_NODE, GPUDevice

__all__ = ["ApiError", "Conflict", "GPUDeviceAPI", "KubeConfig", "NotFound"]

FIELD_MANAGER = "exo-gpu-exporter"


class GPUDeviceAPI:
    """GPUDevice requests for one exporter. Every method raises :class:`ApiError` on failure."""

    def __init__(self, config: KubeConfig, timeout_s: float = 10.0) -> None:
        self.config = config
        self._client = AsyncKubeClient(config, timeout_s)
        self._base = f"/apis/{API_VERSION}/gpudevices"

    async def close(self) -> None:
        await self._client.close()

    async def _request(self, method: str, path: str, body: Any = None,
                       content_type: str = "application/json",
                       params: Mapping[str, str] | None = None) -> Any:
        return await self._client.request(method, path, body, content_type, params)

    def _url(self, name: str = "", sub: str = "") -> str:
        url = self._base
        if name:
            url += "/" + quote(name, safe="")
        if sub:
            url += "/" + sub
        return url

    async def list(self, node: str) -> list[GPUDevice]:
        doc = await self._request(
            "GET", self._url(), params={"labelSelector": f"{LABEL_NODE}={node}"}
        )
        return [GPUDevice.model_validate(item) for item in doc.get("items", [])]

    async def get(self, name: str) -> GPUDevice | None:
        try:
            return GPUDevice.model_validate(await self._request("GET", self._url(name)))
        except NotFound:
            return None

    async def create(self, device: GPUDevice) -> GPUDevice:
        doc = await self._request(
            "POST", self._url(), device.to_api(), params={"fieldManager": FIELD_MANAGER}
        )
        return GPUDevice.model_validate(doc)

    async def patch(self, name: str, patch: Mapping[str, Any]) -> GPUDevice:
        """JSON merge patch of the main resource (spec and metadata; status is ignored there)."""
        doc = await self._request(
            "PATCH",
            self._url(name),
            dict(patch),
            content_type="application/merge-patch+json",
            params={"fieldManager": FIELD_MANAGER},
        )
        return GPUDevice.model_validate(doc)

    async def replace_status(self, device: GPUDevice) -> GPUDevice:
        """PUT ``/status`` with the object's resourceVersion: 409 if it changed meanwhile."""
        doc = await self._request(
            "PUT",
            self._url(device.metadata.name, "status"),
            device.to_api(),
            params={"fieldManager": FIELD_MANAGER},
        )
        return GPUDevice.model_validate(doc)

    async def delete(self, name: str, uid: str | None = None) -> None:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", self._url(name), body)
        except NotFound:
            return
