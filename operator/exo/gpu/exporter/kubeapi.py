"""The exporter's only contact with the Kubernetes API: GPUDevice CRUD over aiohttp.

Why not the ``kubernetes`` client: the exporter runs on every GPU node under a 60 MiB budget, and
importing the generated client costs about 13 MiB on top of aiohttp, which the metrics server needs
anyway. The exporter needs six requests on one resource, so this thin layer speaks them directly:
list by node label, get, create, merge-patch of the spec, replace of ``/status`` with the
resourceVersion the caller read (so a concurrent writer causes a 409 instead of a lost update) and
delete with a UID precondition (so a re-created object is never deleted by mistake).

Credentials come from a kubeconfig (client certificate or token, files or inline data) or, in a
pod, from the mounted service-account token, which is re-read as it rotates.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import yaml

from exo.gpu.k8s.models import API_VERSION, LABEL_NODE, GPUDevice

FIELD_MANAGER = "exo-gpu-exporter"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REFRESH_S = 60.0


class ApiError(Exception):
    """A failed API request; ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retriable(self) -> bool:
        """Worth retrying later (server trouble), as opposed to a request the server refused."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class Conflict(ApiError):
    """409: the object changed since it was read (or already exists, on create)."""


class NotFound(ApiError):
    """404: the object does not exist (any more)."""


@dataclass
class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None = None
    token_file: Path | None = None
    _token_read_at: float = field(default=0.0, repr=False)

    def headers(self) -> dict[str, str]:
        if self.token_file is not None and time.monotonic() - self._token_read_at > TOKEN_REFRESH_S:
            self.token = self.token_file.read_text().strip()
            self._token_read_at = time.monotonic()
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @classmethod
    def load(cls, kubeconfig: str | Path | None = None) -> KubeConfig:
        """From ``kubeconfig``, else ``$KUBECONFIG``, else in-cluster, else ``~/.kube/config``."""
        path = kubeconfig or os.environ.get("KUBECONFIG")
        if path:
            return cls.from_kubeconfig(Path(str(path).split(os.pathsep)[0]))
        if (SA_DIR / "token").is_file() and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster()
        return cls.from_kubeconfig(Path.home() / ".kube" / "config")

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        return cls(
            server=f"https://{host}:{port}", ssl_context=context, token_file=SA_DIR / "token"
        )

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeConfig:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ValueError(f"kubeconfig {path}: cannot read ({exc.strerror or exc})") from exc
        base = path.parent

        def named(kind: str, name: str) -> dict[str, Any]:
            for entry in doc.get(f"{kind}s", []) or []:
                if entry.get("name") == name:
                    return dict(entry.get(kind) or {})
            raise ValueError(f"kubeconfig {path}: no {kind} named {name!r}")

        current = doc.get("current-context")
        if not current:
            raise ValueError(f"kubeconfig {path}: no current-context")
        context = named("context", current)
        cluster = named("cluster", context.get("cluster", ""))
        user = named("user", context.get("user", ""))
        server = str(cluster.get("server", "")).rstrip("/")
        if not server:
            raise ValueError(f"kubeconfig {path}: cluster has no server")
        ssl_context: ssl.SSLContext | bool = True
        if server.startswith("https://"):
            if cluster.get("insecure-skip-tls-verify"):
                ssl_context = ssl.create_default_context()
                ssl_context.check_hostname = False
                ssl_context.verify_mode = ssl.CERT_NONE
            else:
                ssl_context = ssl.create_default_context()
                if cluster.get("certificate-authority-data"):
                    ssl_context.load_verify_locations(
                        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
                    )
                elif cluster.get("certificate-authority"):
                    ssl_context.load_verify_locations(
                        cafile=str(base / cluster["certificate-authority"])
                    )
            if isinstance(ssl_context, ssl.SSLContext):
                _load_client_cert(ssl_context, user, base)
        token = user.get("token")
        token_file = Path(base / user["tokenFile"]) if user.get("tokenFile") else None
        return cls(server=server, ssl_context=ssl_context, token=token, token_file=token_file)


def _load_client_cert(context: ssl.SSLContext, user: Mapping[str, Any], base: Path) -> None:
    if user.get("client-certificate"):
        key = user.get("client-key")
        context.load_cert_chain(
            str(base / user["client-certificate"]), str(base / key) if key else None
        )
    elif user.get("client-certificate-data"):
        # ssl only loads certificates from files: write them to a private temp file briefly.
        cert = base64.b64decode(user["client-certificate-data"])
        key_data = base64.b64decode(user.get("client-key-data", ""))
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert_path.write_bytes(cert)
            key_path.write_bytes(key_data)
            os.chmod(key_path, 0o600)
            context.load_cert_chain(str(cert_path), str(key_path) if key_data else None)


class GPUDeviceAPI:
    """GPUDevice requests for one exporter. Every method raises :class:`ApiError` on failure."""

    def __init__(self, config: KubeConfig, timeout_s: float = 10.0) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._base = f"{config.server}/apis/{API_VERSION}/gpudevices"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        url: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self.config.ssl_context, limit=4),
            )
        headers = {"Accept": "application/json", **self.config.headers()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, params=params
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, "Unreachable", f"{method} {url}: {exc!r}") from exc
        parsed: Any = orjson.loads(payload) if payload else None
        if status >= 400:
            reason = message = ""
            if isinstance(parsed, dict):
                reason = str(parsed.get("reason", ""))
                message = str(parsed.get("message", ""))
            error_type = {409: Conflict, 404: NotFound}.get(status, ApiError)
            raise error_type(status, reason or "Error", message or payload.decode(errors="replace"))
        return parsed

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
