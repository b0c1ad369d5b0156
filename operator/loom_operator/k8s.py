"""The one module that talks to the Kubernetes API (besides Kopf's own watching).

An async httpx client built from a kubeconfig (or the in-cluster ServiceAccount):
server-side apply with field manager ``loom-operator``, status merge patches, the
Deployment scale subresource with manager ``loom-autoscaler``, Warning Events, and
CRD existence checks. The same credentials feed Kopf's login, so the operator and
its watches always act as one identity.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from loom.api.kinds import KINDS

FIELD_MANAGER = "loom-operator"
SCALER_MANAGER = "loom-autoscaler"

log = logging.getLogger(__name__)

#: (apiVersion, kind) → plural, for every kind the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("v1", "Pod"): "pods",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    **{(k.api_version, k.kind): k.plural for k in KINDS},
    ("kopf.dev/v1", "ClusterKopfPeering"): "clusterkopfpeerings",
    ("kopf.dev/v1", "KopfPeering"): "kopfpeerings",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "customresourcedefinitions",
}


class KubeError(Exception):
    """A failed API call, with the server's status code and message."""

    def __init__(self, status: int, message: str, reason: str = ""):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")


class NotFound(KubeError):
    """404: the object (or its kind) does not exist."""


def namespace_terminating(exc: KubeError) -> bool:
    """A write refused because the namespace is being deleted (not an RBAC problem; nothing to do)."""
    return exc.status == 403 and "because it is being terminated" in str(exc)


def resource_path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str = ""
) -> str:
    """The REST path of a (namespaced) resource, its collection, or a subresource."""
    try:
        plural = PLURALS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unknown kind {api_version} {kind}") from None
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    path = f"{base}/{plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


#: What the chart's admission policy (templates/writepolicy.yaml) says when it refuses a write.
POLICY_REFUSAL = "writes only objects it manages"


def transient(exc: KubeError) -> bool:
    """A conflict, throttling or a server-side failure: the same request may succeed later."""
    return exc.status in (409, 429) or exc.status >= 500


def refused(exc: KubeError) -> bool:
    """The server refused the write itself (invalid, too large, or an object of the child's name
    that the operator does not manage, refused by the chart's admission policy): retrying the
    same write cannot help."""
    if exc.status == 403 and POLICY_REFUSAL in str(exc):
        return True
    return exc.status in (400, 413, 422) or "request is too large" in str(exc)


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate (what Kopf's login needs too)."""

    server: str
    ca_path: str | None
    insecure: bool
    cert_path: str | None
    key_path: str | None
    token: str | None
    default_namespace: str | None = None

    @classmethod
    def load(cls, kubeconfig: str | None = None) -> Credentials:
        """From a kubeconfig file (``kubeconfig``, then $KUBECONFIG, ~/.kube/config) or in-cluster."""
        from kubernetes import client, config

        cfg = client.Configuration()
        namespace = None
        path = kubeconfig or os.environ.get("KUBECONFIG")
        if path or os.path.exists(os.path.expanduser("~/.kube/config")):
            config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
            try:
                _, active = config.list_kube_config_contexts(config_file=path)
                namespace = active.get("context", {}).get("namespace")
            except config.ConfigException:
                namespace = None
        else:
            config.load_incluster_config(client_configuration=cfg)
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token and token.lower().startswith("bearer "):
            token = token[7:]
        return cls(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            cert_path=cfg.cert_file,
            key_path=cfg.key_file,
            token=token,
            default_namespace=namespace,
        )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_path)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_path:
            ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


class Kube:
    """Async Kubernetes API client for the operator's writes and point reads."""

    def __init__(self, credentials: Credentials, *, max_connections: int = 20, timeout: float = 30.0):
        self.credentials = credentials
        headers = {"Accept": "application/json", "User-Agent": "loom-operator"}
        if credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        self._http = httpx.AsyncClient(
            base_url=credentials.server,
            headers=headers,
            verify=credentials.ssl_context() if credentials.server.startswith("https") else False,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Any:
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": content_type} if content is not None else None
        resp = await self._http.request(method, path, content=content, headers=headers, params=params)
        if resp.status_code >= 400:
            try:
                status = resp.json()
                message, reason = status.get("message", resp.text), status.get("reason", "")
            except ValueError:
                message, reason = resp.text, ""
            cls = NotFound if resp.status_code == 404 else KubeError
            raise cls(resp.status_code, f"{method} {path}: {message}", reason)
        return resp.json() if resp.content else None

    async def apply(
        self, obj: dict[str, Any], *, manager: str = FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply ``obj``; ``force`` takes fields back from hand edits."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": manager, "fieldValidation": "Strict"}
        if force:
            params["force"] = "true"
        return await self._request(
            "PATCH", path, body=obj, content_type="application/apply-patch+yaml", params=params
        )

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._request("GET", resource_path(api_version, kind, namespace, name))
        except NotFound:
            return None

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._request("GET", resource_path(api_version, kind, namespace), params=params)
        items: list[dict[str, Any]] = result.get("items", [])
        for item in items:  # list items omit these
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def delete(
        self, api_version: str, kind: str, namespace: str | None, name: str, uid: str | None = None
    ) -> bool:
        """Delete (background propagation), only if the uid still matches; False when already gone."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
        except KubeError as exc:
            # 404: already gone; 409: uid precondition failed, someone recreated it, not ours to delete.
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def patch_status(
        self, api_version: str, kind: str, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch ``status`` through the status subresource; None when the object is gone."""
        try:
            return await self._request(
                "PATCH",
                resource_path(api_version, kind, namespace, name, "status"),
                body={"status": status},
                content_type="application/merge-patch+json",
                params={"fieldManager": FIELD_MANAGER},
            )
        except NotFound:
            return None

    async def scale(self, namespace: str, deployment: str, replicas: int) -> int:
        """Set a Deployment's replicas through the scale subresource as ``loom-autoscaler``."""
        result = await self._request(
            "PATCH",
            resource_path("apps/v1", "Deployment", namespace, deployment, "scale"),
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
            params={"fieldManager": SCALER_MANAGER},
        )
        return int(result["spec"].get("replicas", 0))

    async def crd_exists(self, name: str) -> bool:
        """Whether a CustomResourceDefinition is installed (e.g. ``scaledobjects.keda.sh``)."""
        return await self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name) is not None

    async def post_event(
        self,
        involved: dict[str, Any],
        event_type: str,
        reason: str,
        message: str,
        *,
        now: datetime | None = None,
    ) -> None:
        """Post a core/v1 Event about ``involved`` (a body with apiVersion, kind and metadata)."""
        meta = involved["metadata"]
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": f"loom.dev/{FIELD_MANAGER}",
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._request("POST", resource_path("v1", "Event", meta["namespace"]), body=event)
