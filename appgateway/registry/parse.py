"""Manifest text -> typed Application and Secret documents, plus the problems found.

Validation happens here, once, so the snapshot builder and the request path never meet a
value of the wrong type. A document with any problem is rejected as a whole (registry.md §6):
half an Application could route requests differently from what its author intended.
`merge` then combines the files in load order and keeps the last valid version of rejected
objects, so an editing mistake never takes a working API away.

A manifest is untrusted input to a long-running process, so what parsing one may cost is bounded
(README "Run it on a folder of YAML"): YAML nests at most MAX_DEPTH collections deep, uses no
aliases, and a file holds at most MAX_DOCUMENTS documents and List items. Anything beyond fails
the file as a whole, like a syntax error. (The folder source bounds the file size.)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import yaml

from appgateway.registry.manifest_yaml import (
    MAX_DOCUMENTS,
    Refused,
    documents,
    too_many,
    yaml_reason,
)

APPLICATION_API_VERSION = "applicationconnector.kyma-project.io/v1alpha1"
APPLICATION = "Application"
SECRET = "Secret"

Severity = Literal["error", "warning"]

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ENTRY_TYPES = ("API", "Events")


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem, printed as `{location}: {Kind}/{name}: {field}: {message}`.

    Empty parts are left out, so a file-level problem reads `apps.yaml: invalid YAML …`.
    """

    location: str
    kind: str
    name: str
    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        parts = [self.location]
        if self.kind:
            parts.append(f"{self.kind}/{self.name}" if self.name else self.kind)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


@dataclass(frozen=True, slots=True)
class CredentialsDoc:
    type: str = ""
    secret_name: str = ""
    authentication_url: str = ""
    csrf_url: str | None = None
    """`csrfInfo.tokenEndpointURL`; None when `csrfInfo` is absent, "" when it is empty."""

    @property
    def empty(self) -> bool:
        """Empty credentials mean no auth and no Secret lookup (registry.md §1)."""
        return (
            not self.type
            and not self.secret_name
            and not self.authentication_url
            and self.csrf_url is None
        )


@dataclass(frozen=True, slots=True)
class EntryDoc:
    field: str  # `spec.services[i].entries[j]`, the prefix of this entry's issue fields
    type: str
    name: str
    target_url: str
    credentials: CredentialsDoc
    request_parameters_secret_name: str


@dataclass(frozen=True, slots=True)
class ServiceDoc:
    field: str  # `spec.services[i]`
    id: str
    name: str
    display_name: str
    entries: tuple[EntryDoc, ...]


CONFINE_PATH = "appgateway.io/confine-path"
"""Application annotation: "true" answers 400 to a request whose path would resolve outside
each API's target base path (a dot-segment is otherwise forwarded as sent, as in Kyma)."""


@dataclass(frozen=True, slots=True)
class AppDoc:
    location: str
    name: str
    skip_verify: bool
    encode_url: bool
    services: tuple[ServiceDoc, ...]
    confine_path: bool = False

    @property
    def kind(self) -> str:
        return APPLICATION


@dataclass(frozen=True, slots=True)
class SecretDoc:
    """Secret values as bytes: PEM and JSON are parsed from them, text keys decoded later."""

    location: str
    name: str
    namespace: str | None  # None: no `metadata.namespace` (the folder source counts it)
    data: Mapping[str, bytes]

    @property
    def kind(self) -> str:
        return SECRET


Document = AppDoc | SecretDoc
ObjectKey = tuple[str, str, str]
"""(kind, namespace, name); the namespace is "" for Applications, which are cluster-scoped."""


def object_key(doc: Document) -> ObjectKey:
    if isinstance(doc, AppDoc):
        return (APPLICATION, "", doc.name)
    return (SECRET, doc.namespace or "", doc.name)


@dataclass(frozen=True, slots=True)
class ParseResult:
    objects: tuple[Document, ...]
    issues: tuple[Issue, ...]
    rejected: tuple[ObjectKey, ...] = ()
    """Objects whose document was invalid: their previous valid version is kept."""
    failed: bool = False
    """The file as a whole could not be read: everything it defined before is kept."""


def file_error(name: str, message: str) -> ParseResult:
    return ParseResult((), (Issue(name, "", "", "", message),), failed=True)


def parse_file(name: str, data: bytes) -> ParseResult:
    """Parse one manifest file; `name` (the path shown to users) decides YAML or JSON."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return file_error(name, f"not UTF-8 text: invalid byte at offset {exc.start}")
    try:
        loaded: list[tuple[int, object]] = []
        for number, doc in documents(name, text, data):
            if number > MAX_DOCUMENTS:
                raise Refused(too_many())
            loaded.append((number, doc))
    except Refused as exc:
        return file_error(name, str(exc))
    except json.JSONDecodeError as exc:
        return file_error(name, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
    except yaml.YAMLError as exc:
        return file_error(name, yaml_reason(exc))
    except RecursionError:
        return file_error(name, "nested too deeply")
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        # An explicit tag the value does not fit (`!!int abc`, `!!timestamp x`) fails in
        # PyYAML's constructor, outside its own error type. The value is not echoed.
        return file_error(name, "invalid YAML: a value does not fit its explicit tag")
    out = _Output(len(loaded))
    try:
        for number, doc in loaded:
            if doc is not None:
                _document(doc, f"{name}#{number}", out)
    except Refused as exc:
        return file_error(name, str(exc))
    except RecursionError:  # JSON Lists nested hundreds deep
        return file_error(name, "nested too deeply")
    return ParseResult(tuple(out.objects), tuple(out.issues), tuple(out.rejected))


class _Output:
    def __init__(self, documents: int) -> None:
        self.objects: list[Document] = []
        self.issues: list[Issue] = []
        self.rejected: list[ObjectKey] = []
        self.count = documents  # documents and List items so far, up to MAX_DOCUMENTS


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


class _Fields:
    """Typed field access that records every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, field: str, problem: str) -> None:
        self.errors.append((field, problem))

    def string(self, m: Mapping[object, object], key: str, field: str) -> str:
        value = m.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.fail(field, f"must be a string, not {_type_name(value)}")
            return ""
        return value

    def required(self, m: Mapping[object, object], key: str, field: str) -> str:
        value = m.get(key)
        if value is None or value == "":
            self.fail(field, "is required")
            return ""
        return self.string(m, key, field)

    def boolean(self, m: Mapping[object, object], key: str, field: str, default: bool) -> bool:
        value = m.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(field, f"must be a boolean, not {_type_name(value)}")
            return default
        return value

    def mapping(self, m: Mapping[object, object], key: str, field: str) -> dict[object, object]:
        value = m.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field, f"must be a mapping, not {_type_name(value)}")
            return {}
        return value

    def items(self, m: Mapping[object, object], key: str, field: str) -> list[object]:
        value = m.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(field, f"must be a list, not {_type_name(value)}")
            return []
        return value


def _document(doc: object, location: str, out: _Output) -> None:
    if not isinstance(doc, dict):
        out.issues.append(
            Issue(location, "", "", "", f"document must be a mapping, not {_type_name(doc)}")
        )
        return
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    raw_name = metadata.get("name") if isinstance(metadata, dict) else None
    name = raw_name if isinstance(raw_name, str) else ""
    if not isinstance(kind, str) or not kind:
        problem = "is required" if kind is None or kind == "" else "must be a string"
        out.issues.append(Issue(location, "", name, "kind", problem))
        return
    api_version = doc.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        problem = "is required" if api_version is None or api_version == "" else "must be a string"
        out.issues.append(Issue(location, kind, name, "apiVersion", problem))
        return
    if kind.endswith("List"):
        _list(doc, location, kind, name, out)
    elif kind == APPLICATION:
        if api_version != APPLICATION_API_VERSION:
            problem = f"unsupported apiVersion '{api_version}', want '{APPLICATION_API_VERSION}'"
            _reject(out, location, APPLICATION, "", name, [("apiVersion", problem)])
            return
        _application(doc, location, name, out)
    elif kind == SECRET and api_version == "v1":
        _secret(doc, location, name, out)


def _list(doc: dict[object, object], location: str, kind: str, name: str, out: _Output) -> None:
    items = doc.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        problem = f"must be a list, not {_type_name(items)}"
        out.issues.append(Issue(location, kind, name, "items", problem))
        return
    out.count += len(items)
    if out.count > MAX_DOCUMENTS:
        raise Refused(too_many())
    for index, item in enumerate(items):
        _document(item, f"{location}.items[{index}]", out)


def _reject(
    out: _Output,
    location: str,
    kind: str,
    namespace: str,
    name: str,
    errors: list[tuple[str, str]],
) -> None:
    out.issues.extend(Issue(location, kind, name, f, problem) for f, problem in errors)
    if name:
        out.rejected.append((kind, namespace, name))


def _metadata(doc: dict[object, object], f: _Fields) -> tuple[str, str | None]:
    metadata = f.mapping(doc, "metadata", "metadata")
    name = f.required(metadata, "name", "metadata.name")
    if name and (len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name)):
        f.fail(
            "metadata.name",
            "must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')",
        )
    namespace = metadata.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        f.fail("metadata.namespace", f"must be a string, not {_type_name(namespace)}")
        namespace = None
    return name, namespace or None


def _application(doc: dict[object, object], location: str, name: str, out: _Output) -> None:
    f = _Fields()
    _metadata(doc, f)
    confine_path = _confine_path(doc, f)
    spec = f.mapping(doc, "spec", "spec")
    skip_verify = f.boolean(spec, "skipVerify", "spec.skipVerify", False)
    encode_url = f.boolean(spec, "encodeUrl", "spec.encodeUrl", True)
    services: list[ServiceDoc] = []
    for i, raw in enumerate(f.items(spec, "services", "spec.services")):
        service = _service(raw, f"spec.services[{i}]", f)
        if service is not None:
            services.append(service)
    if f.errors:
        _reject(out, location, APPLICATION, "", name, f.errors)
        return
    out.objects.append(
        AppDoc(location, name, skip_verify, encode_url, tuple(services), confine_path)
    )


def _confine_path(doc: dict[object, object], f: _Fields) -> bool:
    """The opt-in CONFINE_PATH annotation: "true" or "false". Anything else is an error, as
    a security setting that silently does nothing would be worse than a rejected object."""
    metadata = doc.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return False
    value = annotations.get(CONFINE_PATH)
    if value is None or value == "false":
        return False
    if value != "true":
        f.fail(f"metadata.annotations[{CONFINE_PATH}]", 'must be "true" or "false"')
        return False
    return True


def _service(raw: object, field: str, f: _Fields) -> ServiceDoc | None:
    if not isinstance(raw, dict):
        f.fail(field, f"must be a mapping, not {_type_name(raw)}")
        return None
    service_id = f.string(raw, "id", f"{field}.id")
    name = f.string(raw, "name", f"{field}.name")
    display_name = f.required(raw, "displayName", f"{field}.displayName")
    entries: list[EntryDoc] = []
    for j, item in enumerate(f.items(raw, "entries", f"{field}.entries")):
        entry = _entry(item, f"{field}.entries[{j}]", f)
        if entry is not None:
            entries.append(entry)
    return ServiceDoc(field, service_id, name, display_name, tuple(entries))


def _entry(raw: object, field: str, f: _Fields) -> EntryDoc | None:
    if not isinstance(raw, dict):
        f.fail(field, f"must be a mapping, not {_type_name(raw)}")
        return None
    entry_type = raw.get("type")
    if entry_type is None or entry_type == "":
        f.fail(f"{field}.type", "is required")
    elif entry_type not in _ENTRY_TYPES:
        f.fail(f"{field}.type", "must be API or Events")
    name = f.string(raw, "name", f"{field}.name")
    target_url = f.string(raw, "targetUrl", f"{field}.targetUrl")
    params = f.string(raw, "requestParametersSecretName", f"{field}.requestParametersSecretName")
    creds = f.mapping(raw, "credentials", f"{field}.credentials")
    prefix = f"{field}.credentials"
    csrf_url: str | None = None
    if creds.get("csrfInfo") is not None:
        csrf = f.mapping(creds, "csrfInfo", f"{prefix}.csrfInfo")
        csrf_url = f.string(csrf, "tokenEndpointURL", f"{prefix}.csrfInfo.tokenEndpointURL")
    credentials = CredentialsDoc(
        type=f.string(creds, "type", f"{prefix}.type"),
        secret_name=f.string(creds, "secretName", f"{prefix}.secretName"),
        authentication_url=f.string(creds, "authenticationUrl", f"{prefix}.authenticationUrl"),
        csrf_url=csrf_url,
    )
    return EntryDoc(field, str(entry_type or ""), name, target_url, credentials, params)


def _secret(doc: dict[object, object], location: str, name: str, out: _Output) -> None:
    f = _Fields()
    _, namespace = _metadata(doc, f)
    values: dict[str, bytes] = {}
    for key, text in _string_map(doc, "data", f).items():
        try:
            values[key] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            f.fail(f"data.{key}", "invalid base64")
    for key, text in _string_map(doc, "stringData", f).items():
        values[key] = text.encode()
    if f.errors:
        _reject(out, location, SECRET, namespace or "", name, f.errors)
        return
    out.objects.append(SecretDoc(location, name, namespace, MappingProxyType(values)))


def _string_map(doc: dict[object, object], key: str, f: _Fields) -> dict[str, str]:
    raw = f.mapping(doc, key, key)
    out: dict[str, str] = {}
    for k, v in raw.items():
        if not isinstance(k, str):
            f.fail(key, f"keys must be strings, not {_type_name(k)}")
        elif not isinstance(v, str):
            f.fail(f"{key}.{k}", f"must be a string, not {_type_name(v)}")
        else:
            out[k] = v
    return out


@dataclass(frozen=True, slots=True)
class Merged:
    objects: tuple[Document, ...]
    issues: tuple[Issue, ...]

    @property
    def by_key(self) -> dict[ObjectKey, Document]:
        return {object_key(doc): doc for doc in self.objects}


def merge(results: Iterable[ParseResult], previous: Mapping[ObjectKey, Document]) -> Merged:
    """Combine files in load order: the first of two same-named objects wins (the later one is
    an error), and a rejected object falls back to its version in `previous`, if any."""
    objects: dict[ObjectKey, Document] = {}
    issues: list[Issue] = []
    rejected: list[ObjectKey] = []
    for result in results:
        issues.extend(result.issues)
        rejected.extend(result.rejected)
        for doc in result.objects:
            key = object_key(doc)
            first = objects.get(key)
            if first is None:
                objects[key] = doc
                continue
            problem = f"duplicate name, first defined in {first.location}"
            issues.append(Issue(doc.location, doc.kind, doc.name, "metadata.name", problem))
    for key in rejected:
        if key not in objects and key in previous:
            objects[key] = previous[key]
    return Merged(tuple(objects.values()), tuple(issues))
