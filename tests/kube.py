"""A real etcd and kube-apiserver on loopback for the Kubernetes tests.

The binaries come from scripts/build-kube.sh (Debian's Kubernetes 1.20.2 source, cached under
~/.cache/appgateway). One cluster serves the whole pytest session: `shared_cluster()` starts
it on first use and an atexit hook stops it, so both test folders share it. `KubeCluster`
also speaks just enough REST for the tests: server-side apply (optionally dry-run), patch,
delete, and writing kubeconfig files. `FaultProxy` sits in front of the real server to add
what it cannot be made to do on demand: 410 Gone, dropped watches, 403. `ConnectProxy` is an
outbound HTTP proxy (HTTPS_PROXY) on loopback that records what passes through it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import ctypes
import datetime
import http.client
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from aiohttp import ClientError, ClientSession, TCPConnector, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
NAMESPACE = "kyma-system"
ADMIN_TOKEN = "admin-token"
NOWATCH_TOKEN = "nowatch-token"
"""User `nowatch`: the tests bind it to get and list only."""
SA_USER = f"system:serviceaccount:{NAMESPACE}:appgateway"
SA_TOKEN = "sa-token"
"""A static token for the gateway's ServiceAccount identity, bound by deploy/base/rbac.yaml."""
APPS_PATH = "/apis/applicationconnector.kyma-project.io/v1alpha1/applications"
SECRETS_PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets"

Json = dict[str, Any]

_bin_dir: Path | None = None


def kube_bin_dir() -> Path:
    """Build (first time on a machine) or find the cached binaries."""
    global _bin_dir
    if _bin_dir is None:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "build-kube.sh")],
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"scripts/build-kube.sh failed:\n{result.stderr[-5000:]}")
        _bin_dir = Path(result.stdout.strip().splitlines()[-1])
    return _bin_dir


def _die_with_parent() -> None:
    """SIGTERM the server if pytest dies without running its atexit hooks (a kill -9)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- certificates ------------------------------------------------------------------------------


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Pki:
    """A CA, the API server's serving certificate, one client certificate (user `cert-user`,
    group system:masters) and the service-account signing key pair, as files in `folder`."""

    folder: Path

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appgateway-test-ca")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(subject: x509.Name, server: bool) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=2))
            )
            if server:
                names: list[x509.GeneralName] = [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.server_crt, self.server_key = leaf(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), True
        )
        self.client_crt, self.client_key = leaf(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "cert-user"),
                ]
            ),
            False,
        )
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key = _pem_key(sa_key)
        self.sa_pub = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for name in ("ca_pem", "server_crt", "server_key", "client_crt", "client_key"):
            (self.folder / name).write_bytes(getattr(self, name))
        (self.folder / "sa.key").write_bytes(self.sa_key)
        (self.folder / "sa.pub").write_bytes(self.sa_pub)

    def path(self, name: str) -> Path:
        return self.folder / name

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.path("server_crt"), self.path("server_key"))
        return context


# -- the cluster -------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


@dataclass
class KubeCluster:
    bin_dir: Path
    folder: Path
    pki: Pki = field(init=False)
    etcd_port: int = 0
    port: int = 0
    _etcd: subprocess.Popen[bytes] | None = None
    _apiserver: subprocess.Popen[bytes] | None = None
    _resources: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pki_dir = self.folder / "pki"
        pki_dir.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(pki_dir)
        (self.folder / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},admin,uid-admin,"system:masters"\n'
            f"{NOWATCH_TOKEN},nowatch,uid-nowatch\n"
            f'{SA_TOKEN},{SA_USER},uid-sa,"system:serviceaccounts,system:serviceaccounts:{NAMESPACE}"\n'
        )

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> KubeCluster:
        self.etcd_port = free_port()
        peer = free_port()
        self._etcd = self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=test",
                f"--data-dir={self.folder / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        self.port = free_port()
        self.start_apiserver()
        self.setup()
        return self

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
            )

    def start_apiserver(self, timeout: float = 60.0) -> float:
        """Start (or restart, on the same port) kube-apiserver; seconds until ready."""
        started = time.monotonic()
        p = self.pki.path
        self._apiserver = self._spawn(
            "apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--cert-dir={self.folder / 'certs'}",
                f"--tls-cert-file={p('server_crt')}",
                f"--tls-private-key-file={p('server_key')}",
                f"--client-ca-file={p('ca_pem')}",
                f"--token-auth-file={self.folder / 'tokens.csv'}",
                f"--service-account-key-file={p('sa.pub')}",
                f"--service-account-signing-key-file={p('sa.key')}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--enable-priority-and-fairness=false",
                "--logtostderr=true",
                "--v=0",
            ],
        )
        deadline = started + timeout
        while True:
            if self._apiserver.poll() is not None:
                raise RuntimeError("kube-apiserver exited:\n" + self.log_tail("apiserver"))
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return time.monotonic() - started
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("kube-apiserver not ready:\n" + self.log_tail("apiserver"))
            time.sleep(0.1)

    def stop_apiserver(self) -> None:
        proc, self._apiserver = self._apiserver, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # with watches open it may linger: then kill it, as in a crash
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def close(self) -> None:
        self.stop_apiserver()
        proc, self._etcd = self._etcd, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def setup(self) -> None:
        """The namespace, the CRD and the RBAC of deploy/, and a get+list-only user."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        for name in ("crd/application.yaml", "base/serviceaccount.yaml", "base/rbac.yaml"):
            for doc in load_manifests(DEPLOY / name):
                self.apply(doc)
        self.wait_for(lambda: self.request("GET", APPS_PATH)[0] == 200, 30)
        rules = [
            {
                "apiGroups": ["applicationconnector.kyma-project.io"],
                "resources": ["applications"],
                "verbs": ["get", "list"],
            },
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
        ]
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole"}
        self.apply({**role, "metadata": {"name": "test-nowatch"}, "rules": rules})
        self.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "test-nowatch"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "test-nowatch",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "nowatch"}
                ],
            }
        )

    @staticmethod
    def wait_for(check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met")
            time.sleep(0.05)

    # -- REST --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        token: str = ADMIN_TOKEN,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.pki.client_context(), timeout=30
        )
        try:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            target = path + ("?" + urlencode(params) if params else "")
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode(errors="replace")

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Json:
        raw = (
            json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        )
        status, doc = self.request(method, path, raw, **kw)
        if status >= 300:
            raise ApiError(status, doc)
        assert isinstance(doc, dict)
        return doc

    def resource_path(self, doc: Mapping[str, Any], *, named: bool = True) -> str:
        api_version, kind = doc["apiVersion"], doc["kind"]
        plural, namespaced = self._resource(api_version, kind)
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            prefix += f"/namespaces/{doc['metadata'].get('namespace', NAMESPACE)}"
        path = f"{prefix}/{plural}"
        return f"{path}/{doc['metadata']['name']}" if named else path

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        key = (api_version, kind)
        if key not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            for item in self.call("GET", base)["resources"]:
                if "/" not in item["name"]:
                    self._resources[(api_version, item["kind"])] = (
                        item["name"],
                        item["namespaced"],
                    )
        return self._resources[key]

    def apply(
        self, doc: Mapping[str, Any], *, dry_run: bool = False, token: str = ADMIN_TOKEN
    ) -> Json:
        """Server-side apply (what `kubectl apply --server-side --force-conflicts` does)."""
        params = {"fieldManager": "appgateway-tests", "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        return self.call(
            "PATCH",
            self.resource_path(doc),
            json.dumps(doc).encode(),
            content_type="application/apply-patch+yaml",
            params=params,
            token=token,
        )

    def merge_patch(self, doc: Mapping[str, Any], patch: Mapping[str, Any]) -> Json:
        return self.call(
            "PATCH",
            self.resource_path(doc),
            json.dumps(patch).encode(),
            content_type="application/merge-patch+json",
        )

    def delete(self, doc: Mapping[str, Any]) -> None:
        status, body = self.request("DELETE", self.resource_path(doc))
        if status not in (200, 202, 404):
            raise ApiError(status, body)

    def service_account_token(
        self,
        name: str = "appgateway",
        seconds: int = 3600,
        *,
        namespace: str = NAMESPACE,
        audiences: Sequence[str] = (),
    ) -> str:
        """A bound token from the TokenRequest API, as the kubelet projects into pods (or
        `kubectl create token NAME --audience A` makes); no `audiences`: the API server's."""
        spec: Json = {"expirationSeconds": seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        token: str = self.call("POST", path, body)["status"]["token"]
        return token

    def kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        client_cert: bool = False,
        server: str | None = None,
        ca_inline: bool = True,
    ) -> Path:
        cluster: Json = {"server": server or self.server}
        if ca_inline:
            cluster["certificate-authority-data"] = base64.b64encode(self.pki.ca_pem).decode()
        else:
            cluster["certificate-authority"] = str(self.pki.path("ca_pem"))
        user: Json = {}
        if token is not None:
            user["token"] = token
        if token_file is not None:
            user["tokenFile"] = str(token_file)
        if client_cert:
            user["client-certificate"] = str(self.pki.path("client_crt"))
            user["client-key-data"] = base64.b64encode(self.pki.client_key).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user}],
        }
        path.write_text(yaml.safe_dump(config))
        return path


def load_manifests(path: Path) -> list[Json]:
    """The objects of a YAML file, `kind: List` expanded."""
    out: list[Json] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc.get("kind") == "List":
            out.extend(doc.get("items") or [])
        else:
            out.append(doc)
    return out


def missing_fields(sent: Any, stored: Any, prefix: str = "") -> list[str]:
    """Fields of `sent` that the API server dropped: 1.20 prunes unknown fields silently, so a
    typo in a manifest shows up only here."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [prefix or "."]
        out: list[str] = []
        for key, value in sent.items():
            if key not in stored:
                out.append(f"{prefix}.{key}")
            else:
                out.extend(missing_fields(value, stored[key], f"{prefix}.{key}"))
        return out
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [prefix]
        return [
            m for i, v in enumerate(sent) for m in missing_fields(v, stored[i], f"{prefix}[{i}]")
        ]
    return []


_cluster: KubeCluster | None = None


def shared_cluster() -> KubeCluster:
    """The session's cluster, started on first use and stopped when the interpreter exits."""
    global _cluster
    if _cluster is None:
        folder = Path(tempfile.mkdtemp(prefix="appgateway-kube-"))
        cluster = KubeCluster(kube_bin_dir(), folder)
        try:
            cluster.start()
        except BaseException:
            cluster.close()
            raise
        atexit.register(cluster.close)
        _cluster = cluster
    return _cluster


# -- objects -----------------------------------------------------------------------------------

_names = itertools.count()


def unique(prefix: str) -> str:
    """A fresh object name: tests share one cluster, and a run may follow an aborted one."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


class Objects:
    """Applies objects for one test and deletes them afterwards."""

    def __init__(self, cluster: KubeCluster) -> None:
        self.cluster = cluster
        self.docs: list[Json] = []

    def apply(self, doc: Json) -> Json:
        self.docs.append(doc)
        return self.cluster.apply(doc)

    def delete(self, doc: Json) -> None:
        self.cluster.delete(doc)

    def cleanup(self) -> None:
        for doc in reversed(self.docs):
            self.cluster.delete(doc)
        self.docs.clear()


def application(name: str, services: Sequence[Json]) -> Json:
    return {
        "apiVersion": "applicationconnector.kyma-project.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name},
        "spec": {"services": list(services)},
    }


def api_service(
    display_name: str, target: str, *, id: str = "", credentials: Json | None = None
) -> Json:
    entry: Json = {"type": "API", "name": "api", "targetUrl": target}
    if credentials is not None:
        entry["credentials"] = credentials
    service: Json = {"displayName": display_name, "entries": [entry]}
    if id:
        service["id"] = id
    return service


def secret(name: str, values: Mapping[str, str]) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


# -- the fault-injecting proxy -----------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    authorization: str
    at: float = field(default_factory=time.monotonic)
    proxy_authorization: str | None = None
    """A Proxy-Authorization that reached the server (it should stop at the proxy)."""

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("1", "true")


def status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    ).encode()


class FaultProxy:
    """A TLS reverse proxy to the real API server that streams watches through and, on demand,
    answers a request itself or cuts the open watches."""

    def __init__(self, cluster: KubeCluster) -> None:
        self.cluster = cluster
        self.seen: list[Seen] = []
        self.faults: list[tuple[Callable[[Seen], bool], int, bytes, bool]] = []
        self.port = 0
        self._runner: web.BaseRunner | None = None
        self._session: ClientSession | None = None
        self._watches: dict[int, tuple[web.BaseRequest, asyncio.Event]] = {}

    async def start(self) -> FaultProxy:
        self._session = ClientSession(
            connector=TCPConnector(ssl=self.cluster.pki.client_context()), auto_decompress=False
        )
        server = web.Server(self._handle)
        runner = self._runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.cluster.pki.server_context())
        await site.start()
        self.port = runner.addresses[0][1]
        return self

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def down(self) -> None:
        """Stop listening and cut every connection, as if the API server had stopped: new
        connections are refused. The real server, which other tests share, runs on."""
        self.drop_watches()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def close(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        await asyncio.sleep(0.1)  # let TLS transports finish closing

    def fail(
        self,
        match: Callable[[Seen], bool],
        status: int,
        reason: str = "",
        message: str = "injected",
        *,
        times: int = 1,
        as_event: bool = False,
    ) -> None:
        """Answer the next `times` matching requests with a Status; `as_event`: as a 200 watch
        stream holding one ERROR event, as the watch cache reports an expired version."""
        body = status_body(status, reason, message)
        self.faults.append((match, times, body, as_event))

    def clear_faults(self) -> None:
        """Forget the faults not used up yet: requests reach the real server again."""
        self.faults.clear()

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-stream; the number cut."""
        count = 0
        for request, end in list(self._watches.values()):
            if request.transport is not None:
                request.transport.abort()
                count += 1
            end.set()
        self._watches.clear()
        return count

    def end_watches(self) -> int:
        """End every open watch cleanly, as the server does when `timeoutSeconds` is up."""
        for _, end in self._watches.values():
            end.set()
        return len(self._watches)

    def open_watches(self) -> int:
        """Watch connections relayed to the real server right now."""
        return len(self._watches)

    def watches(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.watch and s.path == path]

    def lists(self, path: str) -> list[Seen]:
        return [s for s in self.seen if not s.watch and s.path == path]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            request.headers.get("Authorization", ""),
            proxy_authorization=request.headers.get("Proxy-Authorization"),
        )
        self.seen.append(seen)
        for index, (match, times, body, as_event) in enumerate(self.faults):
            if times > 0 and match(seen):
                self.faults[index] = (match, times - 1, body, as_event)
                if as_event:
                    event = json.dumps({"type": "ERROR", "object": json.loads(body)}) + "\n"
                    return web.Response(body=event.encode(), content_type="application/json")
                code = json.loads(body)["code"]
                return web.Response(status=code, body=body, content_type="application/json")
        assert self._session is not None
        end = asyncio.Event()
        if seen.watch:  # from the start, so that a test can end or cut it once it is seen
            self._watches[id(request)] = (request, end)
        try:
            return await self._forward(request, end)
        finally:
            self._watches.pop(id(request), None)

    async def _forward(self, request: web.BaseRequest, end: asyncio.Event) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        async with self._session.request(
            request.method,
            self.cluster.server + request.path_qs,
            headers=headers,
            data=await request.read(),
            timeout=None,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            try:
                await self._relay(upstream.content.iter_any(), response, end)
                await response.write_eof()
            except (ConnectionError, ClientError):
                pass  # cut by drop_watches(), or the client went away
            return response

    @staticmethod
    async def _relay(
        chunks: AsyncIterator[bytes], response: web.StreamResponse, end: asyncio.Event
    ) -> None:
        ended = asyncio.ensure_future(end.wait())
        try:
            while True:
                chunk = asyncio.ensure_future(anext(chunks, b""))
                await asyncio.wait([chunk, ended], return_when=asyncio.FIRST_COMPLETED)
                if not chunk.done():
                    chunk.cancel()
                    return
                data = chunk.result()
                if not data:
                    return
                await response.write(data)
        finally:
            ended.cancel()


_FORWARDED = frozenset(("authorization", "accept", "content-type", "user-agent"))


class ConnectProxy:
    """An HTTP proxy for https targets on 127.0.0.1, on its own event loop in a thread (so
    blocking and async tests can both use it): CONNECT opens a tunnel, anything else gets 405.
    Each request line and Proxy-Authorization value (None when absent) is recorded."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.authorizations: list[str | None] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> ConnectProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        line, *fields = head.decode("latin-1").split("\r\n")
        self.lines.append(line)
        found = [
            f.split(":", 1)[1].strip()
            for f in fields
            if ":" in f and f.split(":", 1)[0].strip().lower() == "proxy-authorization"
        ]
        self.authorizations.append(found[0] if found else None)
        method, target, _ = line.split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def iter_docs(paths: Sequence[Path]) -> Iterator[tuple[str, Json]]:
    for path in paths:
        for doc in load_manifests(path):
            yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc
