"""A small asynchronous Kubernetes API client over aiohttp: credentials and one request method.

The exporter (on every GPU node, under a 60 MiB budget) and the extender's bind (on the
scheduling path, where a thread per call would compete with filter and prioritize) make a
handful of requests each; importing the generated ``kubernetes`` client and running it in threads
costs memory and time that these few requests do not need.

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

import aiohttp
import orjson
import yaml

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


class AsyncKubeClient:
    """Requests to one API server. Every request raises :class:`ApiError` on failure."""

    def __init__(self, config: KubeConfig, timeout_s: float = 10.0, connections: int = 4
                 ) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self.config.ssl_context,
                                               limit=self._connections),
            )
        url = self.config.server + path
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
