"""LIST + WATCH of one Kubernetes resource, keeping the last valid document of every object.

The loop follows registry.md §5: a paginated LIST, then a WATCH from its resourceVersion with
bookmarks, resumed after a normal end, LISTed again after 410 Gone (as a status or as an ERROR
event), and retried with jittered backoff after anything else. Objects seen so far stay in
memory meanwhile, so the last snapshot keeps serving while the API server is away. Objects go
through the same parser as files, with the location `cluster`.

The backoff starts again from its first step only after a watch has proved the server healthy
(delivered an event, or stayed open STEADY_WATCH seconds); a successful LIST is not enough. A
server or proxy answering every watch with 410 would otherwise be LISTed and watched every
half second forever (a full LIST of every object each time), where now it settles at the
backoff's cap, with one log line per attempt.
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
STEADY_WATCH = 10.0
"""A watch open this long, or one that delivered an event, resets the backoff. One that ends
sooner, empty, counts as a failure (no busy loop)."""


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
        backoff: Backoff | None = None,
        steady: float = STEADY_WATCH,
    ) -> None:
        self.client = client
        self.page_size = str(page_size)
        self.backoff = backoff or Backoff()
        self.steady = steady
        self.resource = resource
        self.docs: dict[str, Document] = {}
        self.issues: dict[str, tuple[Issue, ...]] = {}
        self.listed = asyncio.Event()
        self.version: str | None = None
        """The last resourceVersion seen; a watch resumes there. None: LIST first."""
        self._changed = changed
        self._opened: float | None = None
        """When the current watch was sent; None while LISTing."""
        self._delivered = 0
        """Events (bookmarks included) the current watch delivered."""

    async def run(self) -> None:
        backoff = self.backoff
        while True:
            self._opened = None
            self._delivered = 0
            fresh = False  # whether this watch starts from a LIST made just now
            try:
                if self.version is None:
                    self.version = await self._list()
                    self.listed.set()
                    fresh = True
                self._opened = asyncio.get_running_loop().time()
                await self._watch(self.version)
                if self._steady():
                    backoff.reset()
                    continue
                delay = backoff.next()
                log.debug("watch ended at once", extra={"fields": self._fields(delay)})
            except Gone:
                self.version = None
                if self._steady() or not fresh:
                    if self._steady():
                        backoff.reset()
                    log.info("resource version too old, listing again", extra=self._extra())
                    continue
                # Gone at once from the version of a LIST made just now: the server (or
                # something in front of it) answers every watch so. Wait before LISTing again.
                delay = backoff.next()
                log.warning(
                    "resource version too old right after a list; listing again later",
                    extra={"fields": self._fields(delay)},
                )
            except ApiError as exc:
                delay = self._failed(backoff)
                self._log_api_error(exc, delay, "watch" if self._opened is not None else "list")
                if exc.status == 401:
                    self.client.token_expired()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                delay = self._failed(backoff)
                fields = {**self._fields(delay), "error": str(exc) or type(exc).__name__}
                log.warning("kubernetes API unreachable", extra={"fields": fields})
            await asyncio.sleep(delay)

    def _steady(self) -> bool:
        """Whether the watch just ended proved the server healthy."""
        if self._opened is None:
            return False
        opened_for = asyncio.get_running_loop().time() - self._opened
        return self._delivered > 0 or opened_for >= self.steady

    def _failed(self, backoff: Backoff) -> float:
        """The delay after a failure: from the first step if the watch had been healthy."""
        if self._steady():
            backoff.reset()
        return backoff.next()

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

    async def _watch(self, version: str) -> None:
        def on_event(event: Json) -> None:
            kind, obj = event.get("type"), event["object"]
            if kind == "ERROR":
                error = status_error(500, obj)
                raise Gone() if error.status == 410 else error
            self._delivered += 1
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
