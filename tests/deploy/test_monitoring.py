"""deploy/monitoring against Prometheus itself: the alert rules pass `promtool check rules`,
promtool's unit tests show each alert firing and resolving on synthetic series, and a real
Prometheus server scraping real gateways under a short load returns data for every dashboard
query and every alert expression.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize import dashboard
from tests.deploy.prometheus import Prometheus, prometheus_bin_dir, rule_groups, write_rules
from tests.e2e.conftest import (
    Doc,
    Gateway,
    MockUpstream,
    api,
    application,
    closed_port,
    request,
    secret,
    service,
    write_manifest,
)
from tests.e2e.credentials_api import BASIC_PASSWORD, BASIC_USER, CredentialsAPI, make_pki
from tests.kube import free_port

pytestmark = pytest.mark.timeout(300)  # the first test may download Prometheus


def rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rule_groups() for rule in group["rules"]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(prometheus_bin_dir() / "promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(write_rules(tmp_path / "rules.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


# -- unit tests: each alert fires, then resolves --------------------------------------------------

POD = 'job="appgateway", namespace="kyma-system", pod="appgateway-a", instance="10.0.0.1:8081"'
POD_B = 'job="appgateway", namespace="kyma-system", pod="appgateway-b", instance="10.0.0.2:8081"'
API = 'listener="proxy", app="shop", service="orders"'
ORDERS = {"namespace": "kyma-system", "app": "shop", "service": "orders"}
SYNCED = "1700000000"
LAST_SYNC = f"appgateway_registry_last_sync_timestamp_seconds{{{POD}}}"
ANSWERED = f'appgateway_requests_total{{{POD}, {API}, method="GET", code="200", class="2xx"}}'
FAILED = f'appgateway_requests_total{{{POD}, {API}, method="GET", code="502", class="5xx"}}'
STEADY = "0+60x60"
"""One request a second for an hour."""
FAILING = "0+12x30 360x30"
"""0.2 a second for half an hour, then none."""


def upstream_errors(kind: str) -> str:
    return f'appgateway_upstream_errors_total{{{POD}, app="shop", service="orders", kind="{kind}"}}'


def fetches(metric: str, result: str, flavour: str = "") -> str:
    extra = f', flavour="{flavour}"' if flavour else ""
    return f'appgateway_{metric}_fetches_total{{{POD}{extra}, result="{result}"}}'


@dataclass(frozen=True)
class Case:
    """Series (1-minute samples, promtool's notation) under which `alert` is quiet at `quiet`,
    firing with `labels` at `fires`, and resolved again at `resolved`."""

    alert: str
    series: dict[str, str]
    labels: dict[str, str]
    fires: str
    resolved: str
    quiet: str = "5m"


CASES = [
    Case(
        "AppGatewayHighErrorRatio",
        {ANSWERED: STEADY, FAILED: FAILING},
        ORDERS,
        fires="20m",
        resolved="45m",
    ),
    Case(
        "AppGatewayUpstreamErrors",
        {ANSWERED: STEADY, upstream_errors("connect"): FAILING},
        {**ORDERS, "kind": "connect"},
        fires="20m",
        resolved="45m",
    ),
    Case(
        "AppGatewayUpstreamTimeouts",
        {ANSWERED: STEADY, upstream_errors("timeout"): FAILING},
        ORDERS,
        fires="20m",
        resolved="45m",
    ),
    Case(
        "AppGatewayTokenFetchFailures",
        {
            fetches("token", "ok", "oauth"): "0+1x60",
            fetches("token", "error", "oauth"): "0+1x30 30x30",
        },
        {"namespace": "kyma-system", "flavour": "oauth"},
        fires="20m",
        resolved="45m",
    ),
    Case(
        "AppGatewayCsrfFetchFailures",
        {fetches("csrf", "ok"): "0+1x60", fetches("csrf", "error"): "0+1x30 30x30"},
        {"namespace": "kyma-system"},
        fires="20m",
        resolved="45m",
    ),
    Case(
        "AppGatewayRegistryNotSynced",
        {LAST_SYNC: f"0x20 {SYNCED}x40"},
        {
            "job": "appgateway",
            "namespace": "kyma-system",
            "pod": "appgateway-a",
            "instance": "10.0.0.1:8081",
        },
        fires="10m",
        resolved="30m",
        quiet="2m",
    ),
    Case(
        # Replica b misses a new Application for 30 minutes, then catches up.
        "AppGatewayRegistryStale",
        {
            LAST_SYNC: f"{SYNCED}x70",
            f"appgateway_registry_last_sync_timestamp_seconds{{{POD_B}}}": f"{SYNCED}x70",
            f"appgateway_registry_applications{{{POD}}}": "4x10 5x60",
            f"appgateway_registry_applications{{{POD_B}}}": "4x40 5x30",
            f"appgateway_registry_apis{{{POD}}}": "9x70",
            f"appgateway_registry_apis{{{POD_B}}}": "9x70",
        },
        {"namespace": "kyma-system"},
        fires="30m",
        resolved="50m",
        quiet="20m",
    ),
    Case(
        # The only replica cannot be scraped for 20 minutes (its series go stale).
        "AppGatewayNoReadyReplica",
        {
            f"up{{{POD}}}": "1x10 0x20 1x30",
            LAST_SYNC: f"{SYNCED}x10 _x20 {SYNCED}x30",
        },
        {"namespace": "kyma-system"},
        fires="25m",
        resolved="45m",
        quiet="12m",
    ),
    Case(
        # No target at all for 10 minutes (nothing deployed, or every pod gone).
        "AppGatewayNoReadyReplica",
        {
            f"up{{{POD}}}": "_x10 1x30",
            LAST_SYNC: f"_x10 {SYNCED}x30",
        },
        {"job": "appgateway"},
        fires="8m",
        resolved="30m",
        quiet="2m",
    ),
]


def expand(template: str, labels: dict[str, str]) -> str:
    """Prometheus' expansion of the only template form the rules use, {{ $labels.NAME }}."""
    assert re.sub(r"\{\{ \$labels\.\w+ \}\}", "", template).count("{{") == 0, template
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)


def unit_tests(rules_file: str) -> dict[str, Any]:
    alerts = rules()
    tests = []
    for case in CASES:
        rule = alerts[case.alert]
        labels = {**rule["labels"], **case.labels}
        annotations = {k: expand(v, labels) for k, v in rule["annotations"].items()}
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [
                    {"eval_time": case.quiet, "alertname": case.alert, "exp_alerts": []},
                    {
                        "eval_time": case.fires,
                        "alertname": case.alert,
                        "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                    },
                    {"eval_time": case.resolved, "alertname": case.alert, "exp_alerts": []},
                ],
            }
        )
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_case() -> None:
    assert {case.alert for case in CASES} == set(rules())


def test_every_alert_fires_and_resolves(tmp_path: Path) -> None:
    write_rules(tmp_path / "rules.yaml")
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump(unit_tests("rules.yaml"), sort_keys=False))
    result = promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The same file with one expected label wrong fails: promtool compares what fired."""
    write_rules(tmp_path / "rules.yaml")
    spec = unit_tests("rules.yaml")
    spec["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["app"] = "other"
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode != 0
    assert "AppGatewayHighErrorRatio" in result.stdout + result.stderr


# -- a real Prometheus scraping real gateways --------------------------------------------------

PROXY_TIMEOUT = 0.5
LOAD_SECONDS = 8.0


class UnsyncedGateway(Gateway):
    """`serve --kubernetes` against an API server address where nothing listens: it serves its
    admin port but never loads its registry."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--registry")
        command[at : at + 2] = ["--kubernetes", "--kubeconfig", str(self.registry)]
        return command


def kubeconfig_to_nowhere(path: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def registry_docs(upstream: MockUpstream, mock: CredentialsAPI) -> list[Doc]:
    """One Application whose services make every metric and every alert condition appear."""
    plain = mock.url("plain", "")
    basic = {"type": "Basic", "secretName": "basic-good"}

    def oauth(tag: str) -> Doc:
        return {
            "type": "OAuth",
            "secretName": "oauth-main",
            "authenticationUrl": f"{plain}/token/{tag}",
        }

    def csrf(tag: str) -> Doc:
        return {**basic, "csrfInfo": {"tokenEndpointURL": f"{plain}/csrf/{tag}/token"}}

    services = [
        service("Orders", [api(f"{upstream.base}/v1")]),
        service("Broken", [api(f"{upstream.base}/status/500")]),
        service("Down", [api(f"http://127.0.0.1:{closed_port()}")]),
        service("Slow", [api(f"{upstream.base}/hang")]),
        service("Tokens", [api(f"{plain}/bearer/mon-ok", credentials=oauth("mon-ok"))]),
        service("Bad tokens", [api(f"{plain}/bearer/mon-bad", credentials=oauth("mon-bad"))]),
        service("Csrf", [api(f"{plain}/csrf/mon-csrf/res", credentials=csrf("mon-csrf"))]),
        service("Bad csrf", [api(f"{plain}/csrf/mon-nocsrf/res", credentials=csrf("mon-nocsrf"))]),
    ]
    return [
        application("shop", services),
        secret("basic-good", string_data={"username": BASIC_USER, "password": BASIC_PASSWORD}),
        secret("oauth-main", string_data={"clientId": "mon-client", "clientSecret": "mon-secret"}),
    ]


@dataclass
class Stand:
    """Three gateways as Prometheus sees three pods of one Deployment."""

    loaded: Gateway
    """Under load: every service of registry_docs()."""
    smaller: Gateway
    """A replica that serves fewer APIs (as one whose watch stopped would)."""
    unsynced: Gateway
    prometheus: Prometheus


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    upstream = MockUpstream().start()
    mock = CredentialsAPI(make_pki(tmp_path), tmp_path).start()
    mock.token("mon-bad", status=500)
    mock.csrf_endpoint("mon-nocsrf", status=500)
    started: list[Gateway] = []
    prometheus: Prometheus | None = None
    try:
        folders = [tmp_path / "loaded", tmp_path / "smaller"]
        for folder in folders:
            folder.mkdir()
        docs = registry_docs(upstream, mock)
        write_manifest(folders[0], "apps.yaml", docs)
        write_manifest(
            folders[1],
            "apps.yaml",
            [application("shop", [service("Orders", [api(f"{upstream.base}/v1")])])],
        )
        args = ["--proxy-timeout", str(PROXY_TIMEOUT)]
        for gateway in (
            Gateway(folders[0], args),
            Gateway(folders[1], args),
            UnsyncedGateway(kubeconfig_to_nowhere(tmp_path / "kubeconfig"), args),
        ):
            started.append(gateway.start())
        # What the ServiceMonitor makes of three pods: job "appgateway", namespace and pod labels.
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(write_rules(tmp_path / "rules.yaml"))],
            "scrape_configs": [
                {
                    "job_name": "appgateway",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{gateway.admin_port}"],
                            "labels": {"namespace": "kyma-system", "pod": f"appgateway-{name}"},
                        }
                        for name, gateway in zip("abc", started, strict=True)
                    ],
                }
            ],
        }
        folder = tmp_path / "prometheus"
        folder.mkdir()
        prometheus = Prometheus(folder, config, free_port()).start()
        loaded, smaller, unsynced = started
        yield Stand(loaded, smaller, unsynced, prometheus)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for gateway in started:
            gateway.close()
        mock.stop()
        upstream.stop()


def load(gateway: Gateway, seconds: float) -> dict[str, list[int]]:
    """Calls every service for `seconds` (the slow one in its own thread): statuses per path."""
    paths = [
        "/shop/orders/items",
        "/shop/broken/x",
        "/shop/down/x",
        "/shop/tokens/x",
        "/shop/bad-tokens/x",
        "/shop/csrf/x",
        "/shop/bad-csrf/x",
        "/nowhere/at-all/x",
    ]
    seen: dict[str, list[int]] = {path: [] for path in [*paths, "/shop/slow/x"]}
    deadline = time.monotonic() + seconds

    def run(targets: list[str], pause: float) -> None:
        for _ in range(2000):  # bounded, whatever the machine's speed
            if time.monotonic() > deadline:
                return
            for path in targets:
                seen[path].append(request(gateway.proxy_port, "GET", path).status)
            time.sleep(pause)

    slow = threading.Thread(target=run, args=(["/shop/slow/x"], 0.0))
    slow.start()
    run(paths, 0.05)
    slow.join(30)
    return seen


def ready(prometheus: Prometheus, count: int) -> bool:
    return list(prometheus.targets_up().values()).count("up") == count


def wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, with the variables as "All" selects them."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            expr = expr.replace("$namespace", ".*").replace("$app", ".*")
            out.append((f"{panel['title']} {target['refId']}", expr))
    return out


def test_prometheus_scrapes_gateways_and_every_query_has_data(stand: Stand) -> None:
    prometheus = stand.prometheus
    assert wait_for(lambda: ready(prometheus, 3), 20), prometheus.targets_up()
    statuses = load(stand.loaded, LOAD_SECONDS)
    assert set(statuses["/shop/orders/items"]) == {200}
    assert set(statuses["/shop/tokens/x"]) == {200} and set(statuses["/shop/csrf/x"]) == {200}
    assert set(statuses["/shop/broken/x"]) == {502}
    assert set(statuses["/shop/slow/x"]) == {504}
    assert set(statuses["/shop/bad-tokens/x"]) == {502}
    time.sleep(2.5)  # two more scrapes and rule evaluations after the load

    empty = [title for title, expr in dashboard_queries() if not prometheus.query(expr)]
    assert empty == [], "dashboard queries without data"
    alerts = rules()
    quiet = [name for name, rule in alerts.items() if not prometheus.query(rule["expr"])]
    assert quiet == ["AppGatewayNoReadyReplica"], "alert expressions without data"
    # Prometheus itself runs the rules: all but that one are pending (their `for` has not run).
    states = prometheus.alert_states()
    assert states == {name: "inactive" if name in quiet else "pending" for name in alerts}

    # Every replica goes away: no ready replica.
    for gateway in (stand.loaded, stand.smaller, stand.unsynced):
        assert gateway.stop() == 0
    assert wait_for(lambda: ready(prometheus, 0), 10)
    time.sleep(2.5)
    fired = prometheus.query(alerts["AppGatewayNoReadyReplica"]["expr"])
    assert [sample["metric"] for sample in fired] == [{"namespace": "kyma-system"}]
    assert prometheus.alert_states()["AppGatewayNoReadyReplica"] == "pending"
