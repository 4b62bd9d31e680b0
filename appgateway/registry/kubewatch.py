"""LIST + WATCH of one Kubernetes resource, keeping the last valid document of every object.

The loop follows registry.md §5: a paginated LIST, then a WATCH from its resourceVersion with
bookmarks, resumed after a normal end, LISTed again after 410 Gone (as a status or as an ERROR
event), and retried with jittered backoff after anything else. Objects seen so far stay in
memory meanwhile, so the last snapshot keeps serving while the API server is away. Objects go
through the same parser as files, with the location `cluster`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from appgateway.registry.kubeclient import ApiError, Backoff, Json, KubeClient, status_error
from appgateway.registry.parse import (
    APPLICATION,
    APPLICATION_API_VERSION,
    SECRET,
    Document,
    Issue,
    parse_file,
)

log = logging.getLogger("appgateway.registry")

LOCATION = "cluster"
PAGE_SIZE = 500
WATCH_TIMEOUT = (240, 300)
"""Server-side watch duration, randomised so replicas do not reconnect in step."""
QUICK_END = 1.0
"""A watch that ends sooner than this, empty, counts as a failure (no busy loop)."""


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    api_version: str
    path: str
    label: str
    """What RBAC calls it, for log lines: `applications.applicationconnector.kyma-project.io`."""


APPLICATIONS = Resource(
    APPLICATION,
    APPLICATION_API_VERSION,
    "/apis/applicationconnector.kyma-project.io/v1alpha1/applications",
    "applications.applicationconnector.kyma-project.io (cluster-wide)",
)


def secrets_resource(namespace: str) -> Resource:
    return Resource(
        SECRET, "v1", f"/api/v1/namespaces/{namespace}/secrets", f"secrets in {namespace}"
    )


class Gone(Exception):
    """410: the resourceVersion is too old, so the objects must be LISTed again."""


def parse_object(obj: Json, resource: Resource) -> tuple[str, Document | None, tuple[Issue, ...]]:
    """(name, the valid document or None, issues) for one object from the API."""
    obj.setdefault("apiVersion", resource.api_version)  # LIST items of core kinds omit them
    obj.setdefault("kind", resource.kind)
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    result = parse_file("cluster.json", json.dumps(obj).encode())
    issues = tuple(dataclasses.replace(i, location=LOCATION) for i in result.issues)
    docs = [dataclasses.replace(d, location=LOCATION) for d in result.objects]
    return (name if isinstance(name, str) else ""), (docs[0] if docs else None), issues


class Watcher:
    """LIST + WATCH of one resource, keeping the last valid document of every object."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        changed: Callable[[], None],
        *,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.client = client
        self.page_size = str(page_size)
        self.resource = resource
        self.docs: dict[str, Document] = {}
        self.issues: dict[str, tuple[Issue, ...]] = {}
        self.listed = asyncio.Event()
        self.version: str | None = None
        """The last resourceVersion seen; a watch resumes there. None: LIST first."""
        self._changed = changed

    async def run(self) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                if self.version is None:
                    self.version = await self._list()
                    self.listed.set()
                    backoff.reset()
                    started = loop.time()
                events = await self._watch(self.version)
                if events or loop.time() - started >= QUICK_END:
                    backoff.reset()
                    continue
                delay = backoff.next()
                log.debug("watch ended at once", extra={"fields": self._fields(delay)})
            except Gone:
                log.info("resource version too old, listing again", extra=self._extra())
                self.version = None
                if loop.time() - started >= QUICK_END:
                    continue
                delay = backoff.next()  # Gone again at once: do not hammer the server
            except ApiError as exc:
                delay = backoff.next()
                self._log_api_error(exc, delay, "watch" if self.version is not None else "list")
                if exc.status == 401:
                    self.client.token_expired()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                delay = backoff.next()
                fields = {**self._fields(delay), "error": str(exc) or type(exc).__name__}
                log.warning("kubernetes API unreachable", extra={"fields": fields})
            await asyncio.sleep(delay)

    async def _list(self) -> str:
        docs: dict[str, Document] = {}
        issues: dict[str, tuple[Issue, ...]] = {}
        params = {"limit": self.page_size}
        while True:
            page = await self.client.get(self.resource.path, params)
            items = page.get("items") or []
            if not isinstance(items, list):
                raise ApiError(200, "", "LIST response without items")
            for item in items:
                if isinstance(item, dict):
                    self._update(item, docs, issues)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
            params = {"limit": self.page_size, "continue": str(token)}
        self.docs, self.issues = docs, issues
        self._changed()
        return str(metadata.get("resourceVersion") or "")

    async def _watch(self, version: str) -> int:
        count = 0

        def on_event(event: Json) -> None:
            nonlocal count
            kind, obj = event.get("type"), event["object"]
            if kind == "ERROR":
                error = status_error(500, obj)
                raise Gone() if error.status == 410 else error
            metadata = obj.get("metadata")
            if isinstance(metadata, dict) and metadata.get("resourceVersion"):
                self.version = str(metadata["resourceVersion"])
            if kind in ("ADDED", "MODIFIED"):
                self._update(obj, self.docs, self.issues)
            elif kind == "DELETED" and isinstance(metadata, dict):
                self.docs.pop(str(metadata.get("name")), None)
                self.issues.pop(str(metadata.get("name")), None)
            else:
                return  # BOOKMARK, or a type from the future
            count += 1
            self._changed()

        seconds = random.randint(*WATCH_TIMEOUT)
        params = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        try:
            await self.client.watch(self.resource.path, params, on_event, read_timeout=seconds + 30)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
        return count

    def _update(
        self, obj: Json, docs: dict[str, Document], issues: dict[str, tuple[Issue, ...]]
    ) -> None:
        name, doc, found = parse_object(obj, self.resource)
        if not name:
            return
        if doc is not None:
            docs[name] = doc
        elif name in self.docs:
            docs[name] = self.docs[name]  # invalid: keep the previous valid version
        issues[name] = found

    def _fields(self, delay: float) -> dict[str, Any]:
        return {"resource": self.resource.label, "retry_in_s": round(delay, 2)}

    def _extra(self) -> dict[str, Any]:
        return {"fields": {"resource": self.resource.label}}

    def _log_api_error(self, exc: ApiError, delay: float, verb: str) -> None:
        fields = {**self._fields(delay), "verb": verb, "status": exc.status, "error": str(exc)}
        if exc.status in (401, 403):
            fields["hint"] = (
                f"the gateway's identity needs get, list and watch on {self.resource.label}"
                if exc.status == 403
                else "the token or client certificate was rejected"
            )
            message = "kubernetes API denied " + verb
        elif exc.status == 404:
            fields["hint"] = "is the Application CRD installed?"
            message = "kubernetes resource not found"
        else:
            message = f"kubernetes {verb} failed"
        log.error(message, extra={"fields": fields})
