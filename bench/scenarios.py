"""Per-core throughput of the gateway against the Go reference, one scenario per kind of route work.

Run by hand (after `bash bench/setup.sh`), never by the test suite. Each scenario is run.py's
method applied to one route: the proxy under test alone on one core, wrk (`-t1 -c64`) and the
upstream on the other, the two proxies alternating round by round, and the ratio gateway/Go of
wall-clock req/s and of requests per CPU-second. The upstream checks the credentials of every
request (`/verify/KIND`), so a misconfigured route shows up as non-2xx answers, not as a fast one.

This module also holds what the other benchmarks share: a throwaway PKI, the mock upstream with
its token, CSRF and TLS endpoints, the registry manifests per kind of credentials, and the
matching Go proxy command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from run import (
    APPGATEWAY,
    BIN,
    DEFAULT_GATEWAY_CMD,
    HEADER,
    PASSWORD,
    USER,
    Proc,
    Round,
    Summary,
    WrkResult,
    add_json_arg,
    add_proxy_args,
    check_cores,
    check_tools,
    clean_env,
    format_round,
    free_port,
    json_target,
    parse_wrk,
    pinned,
    proxy_order,
    running,
    start,
    stop,
    summarize,
    timed_round,
    wait_http_ok,
)

APP = "bench"
SECRETS_NAMESPACE = "kyma-system"
CSRF_TOKEN, CSRF_COOKIE = "csrf-token-1", "sap-XSRF=c1"  # what goupstream's /csrf hands out
PARAM_HEADER, PARAM_VALUE = "X-Api-Key", "k-123"
PARAM_QUERY = "sap-language=EN"
KIB = 1024

# A gateway command with an admin port the benchmark knows, for those that scrape /metrics or
# wait on /v1/ready. Unused placeholders are fine: str.format ignores extra keywords.
GATEWAY_CMD_ADMIN = (
    f"{APPGATEWAY} serve --registry {{registry}} --proxy-port {{port}} "
    "--proxy-port-compass 0 --admin-port {admin} --workers {workers} --log-level info"
)

# The credentials kinds a route can have, and the /verify/KIND check goupstream applies to it.
VERIFY_KIND = {
    "none": "none",
    "basic": "basic",
    "oauth": "bearer",
    "oauth-csrf": "csrf",
    "cert": "cert",
    "params": "params",
}


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_crt(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def client_crt(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client-key.pem"


def make_pki(folder: Path) -> Pki:
    """Generated per run, so no key material lives in the repository. EC keys: fast to make."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=2)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("appgateway bench CA"))
        .issuer_name(name("appgateway bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: x509.ObjectIdentifier, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        if server:
            alt = x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
            builder = builder.add_extension(alt, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    pki = Pki(folder)
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    crt, key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, server=True)
    pki.server_crt.write_bytes(crt)
    pki.server_key.write_bytes(key)
    crt, key = leaf("bench-client", ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
    pki.client_crt.write_bytes(crt)
    pki.client_key.write_bytes(key)
    return pki


# --------------------------------------------------------------------------- upstream


@dataclass(frozen=True)
class Upstream:
    proc: Proc
    port: int
    tls_port: int | None

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            if self.tls_port is None:
                raise RuntimeError("the upstream was started without TLS")
            return f"https://127.0.0.1:{self.tls_port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self) -> dict[str, int]:
        """Counts of token, CSRF and all requests the upstream has seen."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/stats")
            data: dict[str, int] = json.loads(conn.getresponse().read())
            return data
        finally:
            conn.close()


def start_upstream(
    work: Path,
    core: int | None,
    *,
    size: int = KIB,
    pki: Pki | None = None,
    token_delay_ms: int = 0,
    token_ttl: int = 3600,
    fault_sleep_s: float = 15.0,
    name: str = "upstream",
) -> Upstream:
    port = free_port()
    tls_port = free_port() if pki is not None else None
    argv = [
        str(BIN / "goupstream"),
        f"-addr=127.0.0.1:{port}",
        f"-size={size}",
        f"-token-delay={token_delay_ms}ms",
        f"-token-ttl={token_ttl}",
        f"-fault-sleep={int(fault_sleep_s * 1000)}ms",
        f"-basic={USER}:{PASSWORD}",
    ]
    if pki is not None:
        argv += [
            f"-tls-addr=127.0.0.1:{tls_port}",
            f"-cert={pki.server_crt}",
            f"-key={pki.server_key}",
            f"-client-ca={pki.ca}",
        ]
    proc = start(name, argv if core is None else pinned(core, argv), work, clean_env())
    try:
        wait_http_ok(proc, port, "/data")
    except BaseException:
        stop(proc)
        raise
    return Upstream(proc, port, tls_port)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ApiSpec:
    """One service of the bench Application: `/{app}/{service}/...` with `auth` credentials.

    `auth` is a key of VERIFY_KIND. `path` is the target path on the upstream; None means
    `/verify/KIND`, so the upstream checks what the gateway added.
    """

    service: str
    auth: str
    path: str | None = None

    def target_path(self) -> str:
        return self.path if self.path is not None else f"/verify/{VERIFY_KIND[self.auth]}"


def _q(value: str) -> str:
    """A YAML scalar: JSON strings are valid double-quoted YAML, newlines included."""
    return json.dumps(value)


def application_yaml(app: str, apis: Sequence[ApiSpec], upstream: Upstream, pki: Pki | None) -> str:
    """An Application with one service per spec, plus the Secrets its credentials name."""
    services: list[str] = []
    secrets: dict[str, dict[str, str]] = {}
    for index, api in enumerate(apis):
        target = upstream.url(api.target_path(), tls=api.auth == "cert")
        lines = [
            f"    - id: {_q(f'{api.service}-{index}')}",
            f"      displayName: {_q(api.service)}",
            "      entries:",
            "        - type: API",
            f"          name: {_q(api.service)}",
            f"          targetUrl: {_q(target)}",
        ]
        if api.auth == "basic":
            secret = f"{app}-basic"
            secrets[secret] = {"username": USER, "password": PASSWORD}
            lines.append(f"          credentials: {{type: Basic, secretName: {secret}}}")
        elif api.auth in ("oauth", "oauth-csrf"):
            secret = f"{app}-oauth"
            secrets[secret] = {"clientId": "bench-client", "clientSecret": "bench-secret"}
            lines += [
                "          credentials:",
                "            type: OAuth",
                f"            secretName: {secret}",
                f"            authenticationUrl: {_q(upstream.url('/token'))}",
            ]
            if api.auth == "oauth-csrf":
                lines.append(
                    f"            csrfInfo: {{tokenEndpointURL: {_q(upstream.url('/csrf'))}}}"
                )
        elif api.auth == "cert":
            if pki is None:
                raise RuntimeError("a cert route needs a PKI")
            secret = f"{app}-cert"
            secrets[secret] = {
                "crt": pki.client_crt.read_text(),
                "key": pki.client_key.read_text(),
            }
            lines.append(f"          credentials: {{type: CertificateGen, secretName: {secret}}}")
        elif api.auth == "params":
            secret = f"{app}-params"
            name, _, value = PARAM_QUERY.partition("=")
            secrets[secret] = {
                "headers": json.dumps({PARAM_HEADER: [PARAM_VALUE]}),
                "queryParameters": json.dumps({name: [value]}),
            }
            lines.append(f"          requestParametersSecretName: {secret}")
        elif api.auth != "none":
            raise ValueError(f"unknown auth kind {api.auth!r}")
        services.append("\n".join(lines))
    docs = [
        "apiVersion: applicationconnector.kyma-project.io/v1alpha1\n"
        "kind: Application\n"
        f"metadata: {{name: {app}}}\n"
        "spec:\n"
        "  services:\n" + "\n".join(services) + "\n"
    ]
    for secret, values in secrets.items():
        body = "".join(f"  {key}: {_q(value)}\n" for key, value in values.items())
        docs.append(
            "apiVersion: v1\nkind: Secret\n"
            f"metadata: {{name: {secret}, namespace: {SECRETS_NAMESPACE}}}\n"
            f"stringData:\n{body}"
        )
    return "---\n".join(docs)


def write_apis(
    folder: Path, apis: Sequence[ApiSpec], upstream: Upstream, pki: Pki | None, app: str = APP
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{app}.yaml").write_text(application_yaml(app, apis, upstream, pki))
    return folder


def gateway_env(pki: Pki | None) -> dict[str, str]:
    """The gateway checks the upstream's certificate against the bench CA, like Go does."""
    return clean_env(SSL_CERT_FILE=str(pki.ca)) if pki is not None else clean_env()


def gateway_argv(
    template: str, registry: Path, port: int, target: str, admin: int = 0, workers: int = 1
) -> list[str]:
    return [
        part.format(registry=registry, port=port, target=target, admin=admin, workers=workers)
        for part in shlex.split(template)
    ]


def go_proxy_argv(api: ApiSpec, port: int, upstream: Upstream, pki: Pki | None) -> list[str]:
    """goproxy doing the route work of `api`; cached OAuth/CSRF tokens become static headers."""
    argv = [
        str(BIN / "goproxy"),
        f"-addr=127.0.0.1:{port}",
        f"-app={APP}",
        f"-service={api.service}",
        f"-target={upstream.url(api.target_path(), tls=api.auth == 'cert')}",
    ]
    if api.auth == "basic":
        argv += ["-auth=basic", f"-user={USER}", f"-pass={PASSWORD}"]
    elif api.auth == "oauth":
        argv += ["-auth=bearer", "-bearer=tok-1"]
    elif api.auth == "oauth-csrf":
        argv += ["-auth=bearer", "-bearer=tok-1"]
        argv += [f"-csrf-token={CSRF_TOKEN}", f"-csrf-cookie={CSRF_COOKIE}"]
    elif api.auth == "cert":
        if pki is None:
            raise RuntimeError("a cert route needs a PKI")
        argv += ["-auth=none", f"-ca={pki.ca}", f"-cert={pki.client_crt}"]
        argv.append(f"-key={pki.client_key}")
    elif api.auth == "params":
        argv += ["-auth=none", f"-header={PARAM_HEADER}: {PARAM_VALUE}", f"-query={PARAM_QUERY}"]
    else:
        argv.append("-auth=none")
    return argv


def launch(
    name: str,
    api: ApiSpec,
    work: Path,
    upstream: Upstream,
    pki: Pki | None,
    *,
    core: int | str | None,
    gateway_cmd: str = DEFAULT_GATEWAY_CMD,
    workers: int = 1,
    admin: int = 0,
    go_procs: int = 1,
) -> tuple[Proc, int]:
    """Starts the gateway or the Go proxy for `api` and waits until its route answers 200."""
    port = free_port()
    if name == "go":
        argv = go_proxy_argv(api, port, upstream, pki)
        env = clean_env(GOMAXPROCS=str(go_procs))
    else:
        registry = write_apis(work / "registry", [api], upstream, pki)
        target = upstream.url(api.target_path(), tls=api.auth == "cert")
        argv = gateway_argv(gateway_cmd, registry, port, target, admin=admin, workers=workers)
        env = gateway_env(pki)
    # `core` is one core or a taskset list such as "0,1"; None inherits this process's.
    proc = start(name, argv if core is None else ["taskset", "-c", str(core), *argv], work, env)
    try:
        wait_http_ok(proc, port, f"/{APP}/{api.service}/item")
    except BaseException:
        stop(proc)
        raise
    return proc, port


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    api: ApiSpec
    target: float  # the ratio gateway/Go the issue asks for
    size: int = KIB  # response body bytes
    post: int = 0  # request body bytes (0: GET)
    note: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("no-auth", ApiSpec("none", "none"), 1.5),
        Scenario("basic", ApiSpec("basic", "basic"), 1.5),
        Scenario("oauth", ApiSpec("oauth", "oauth"), 1.5, note="token cached"),
        Scenario("oauth-csrf", ApiSpec("oauth-csrf", "oauth-csrf"), 1.5, note="cached"),
        Scenario("client-cert", ApiSpec("cert", "cert"), 1.5, note="TLS upstream"),
        Scenario("params", ApiSpec("params", "params"), 1.5, note="header + query"),
        Scenario("body-64k", ApiSpec("basic", "basic"), 1.0, size=64 * KIB),
        Scenario("body-1m", ApiSpec("basic", "basic"), 1.0, size=1024 * KIB),
        Scenario("post-4k", ApiSpec("basic", "basic"), 1.0, post=4 * KIB),
    )
}


def route_path(api: ApiSpec) -> str:
    return f"/{APP}/{api.service}/item"


def post_script(work: Path, size: int) -> Path:
    """wrk sends a fixed POST body through a Lua script; the upstream answers its length."""
    path = work / f"post-{size}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {size})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return path


def run_wrk_script(
    core: int, url: str, connections: int, seconds: int, script: Path | None
) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    done = subprocess.run(
        pinned(core, [*argv, url]), capture_output=True, text=True, timeout=seconds + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


@dataclass(frozen=True)
class Options:
    scenarios: list[Scenario]
    rounds: int
    duration: int
    warmup: int
    connections: int
    only: str
    gateway_cmd: str
    proxy_core: int
    load_core: int


@dataclass
class ScenarioResult:
    scenario: str
    target: float
    rounds: list[Round] = field(default_factory=list)
    medians: list[Summary] = field(default_factory=list)
    ratio_rps: float | None = None
    ratio_req_per_cpu_s: float | None = None
    met: bool | None = None


@dataclass
class Report:
    started: str
    settings: dict[str, object]
    scenarios: list[ScenarioResult] = field(default_factory=list)


def measure(
    name: str, index: int, sc: Scenario, opts: Options, work: Path, up: Upstream, pki: Pki
) -> Round:
    proc, port = launch(
        name, sc.api, work, up, pki, core=opts.proxy_core, gateway_cmd=opts.gateway_cmd
    )
    script = post_script(work, sc.post) if sc.post else None
    url = f"http://127.0.0.1:{port}{route_path(sc.api)}"
    return timed_round(
        name,
        index,
        proc,
        lambda seconds: run_wrk_script(opts.load_core, url, opts.connections, seconds, script),
        warmup=opts.warmup,
        duration=opts.duration,
        proxy_core=opts.proxy_core,
        load_core=opts.load_core,
    )


def run_scenario(sc: Scenario, opts: Options, work: Path, pki: Pki) -> ScenarioResult:
    out = ScenarioResult(scenario=sc.name, target=sc.target)
    upstream = start_upstream(work, opts.load_core, size=sc.size, pki=pki)
    with running(upstream.proc):
        for index in range(1, opts.rounds + 1):
            for name in proxy_order(opts.only, index):
                result = measure(name, index, sc, opts, work, upstream, pki)
                out.rounds.append(result)
                print(f"{sc.name:<12}{format_round(result)}", flush=True)
    out.medians = summarize(out.rounds, ["gateway", "go"])
    by_name = {s.proxy: s for s in out.medians}
    if "gateway" in by_name and "go" in by_name:
        gw, go = by_name["gateway"], by_name["go"]
        out.ratio_rps = gw.rps / go.rps
        out.ratio_req_per_cpu_s = gw.req_per_cpu_s / go.req_per_cpu_s
        out.met = min(out.ratio_rps, out.ratio_req_per_cpu_s) >= sc.target
    return out


def benchmark(opts: Options) -> Report:
    report = Report(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "scenarios": [s.name for s in opts.scenarios],
            "rounds": opts.rounds,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "connections": opts.connections,
            "wrk_threads": 1,
            "proxy_core": opts.proxy_core,
            "load_core": opts.load_core,
            "gateway_cmd": opts.gateway_cmd,
        },
    )
    with tempfile.TemporaryDirectory(prefix="appgateway-scenarios-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        print(f"{'scenario':<12}{HEADER}", flush=True)
        for sc in opts.scenarios:
            report.scenarios.append(run_scenario(sc, opts, work, pki))
    return report


def print_summary(report: Report) -> None:
    print(
        f"\n{'scenario':<12} {'gw req/s':>9} {'go req/s':>9} {'ratio':>6} "
        f"{'gw req/cpu-s':>12} {'go req/cpu-s':>12} {'ratio':>6} {'target':>6}  verdict"
    )
    for res in report.scenarios:
        by_name = {s.proxy: s for s in res.medians}
        gw, go = by_name.get("gateway"), by_name.get("go")

        def cell(s: Summary | None, attr: str, width: int) -> str:
            return f"{getattr(s, attr):>{width}.0f}" if s is not None else f"{'-':>{width}}"

        ratio = f"{res.ratio_rps:>6.2f}" if res.ratio_rps is not None else f"{'-':>6}"
        cpu_ratio = (
            f"{res.ratio_req_per_cpu_s:>6.2f}" if res.ratio_req_per_cpu_s is not None else "     -"
        )
        verdict = "-" if res.met is None else ("met" if res.met else "NOT met")
        print(
            f"{res.scenario:<12} {cell(gw, 'rps', 9)} {cell(go, 'rps', 9)} {ratio} "
            f"{cell(gw, 'req_per_cpu_s', 12)} {cell(go, 'req_per_cpu_s', 12)} {cpu_ratio} "
            f"{res.target:>6.1f}  {verdict}"
        )
    sys.stdout.flush()
    rounds = [r for res in report.scenarios for r in res.rounds]
    busy = [r for r in rounds if r.other_cpu_s > 0.05 * r.cpu_s]
    if busy:
        print(
            f"WARNING: other processes used CPU during {len(busy)} round(s) ('other s'); "
            "the machine was not idle",
            file=sys.stderr,
        )
    if any(r.errors or r.non_2xx for r in rounds):
        print("WARNING: some rounds had socket errors or non-2xx answers", file=sys.stderr)


def parse_scenarios(value: str) -> list[Scenario]:
    if value == "all":
        return list(SCENARIOS.values())
    out = []
    for name in value.split(","):
        if name not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {name!r} (have {', '.join(SCENARIOS)}, all)"
            )
        out.append(SCENARIOS[name])
    return out


def write_json(value: str | None, prefix: str, data: object) -> None:
    if value is None:
        return
    path = json_target(value, prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--scenario",
        type=parse_scenarios,
        default="all",
        help=f"comma-separated: {', '.join(SCENARIOS)}; or all (default)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per round")
    parser.add_argument("--warmup", type=int, default=3, help="whole seconds of warm-up per round")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    add_proxy_args(parser)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.warmup < 0:
        parser.error("--rounds, --duration and --connections must be positive")
    check_cores(parser, args.proxy_core, args.load_core)
    opts = Options(
        scenarios=args.scenario,
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        only=args.only,
        gateway_cmd=args.gateway_cmd,
        proxy_core=args.proxy_core,
        load_core=args.load_core,
    )
    return opts, args.json


def main(argv: Sequence[str] | None = None) -> int:
    opts, json_arg = parse_args(argv)
    check_tools()
    try:
        report = benchmark(opts)
    except (RuntimeError, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_summary(report)
    write_json(json_arg, "scenarios", asdict(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
